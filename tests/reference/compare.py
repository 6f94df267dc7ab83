"""Compare jaxlmm fits with the R reference fits in reference.json.

Used by tests/test_reference.py; run directly (``python tests/reference/compare.py``) to print
the worst relative difference per quantity over all cases.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def load_cases():
    return json.loads((HERE / "reference.json").read_text())["cases"]


def r_name(name: str) -> str:
    """formulaic column name -> R coefficient name ('arm[T.B]' -> 'armB')."""
    return name.replace("[T.", "").replace("]", "")


def fit_case(case):
    import jaxlmm as lmm

    df = pd.read_csv(HERE / "data" / case["dataset"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmm.fit(case["jaxlmm_formula"], df, reml=case["reml"])


def differences(case, res) -> dict:
    """Relative differences of every compared quantity (max over elements)."""
    out = {}
    ref_dev = case["deviance_reported"]
    out["deviance"] = abs(res.deviance - ref_dev) / abs(ref_dev)
    out["deviance_signed"] = (res.deviance - ref_dev) / abs(ref_dev)  # > 0: ours is worse
    ct = res.coef_table
    ours = {r_name(n): row for n, row in ct.iterrows()}
    assert set(ours) == set(case["fixef"]), (sorted(ours), sorted(case["fixef"]))
    se_ref = case.get("se_unscaled") or case["se"]  # gls ML inflates SEs by sqrt(N/(N-p))
    fe, se = [], []
    for name, b in case["fixef"].items():
        row = ours[name]
        # relative to the estimate, or to its SE when the estimate is near zero
        fe.append(abs(row.estimate - b) / max(abs(b), se_ref[name]))
        se.append(abs(row.std_error - se_ref[name]) / se_ref[name])
    out["fixef"], out["se"] = max(fe), max(se)
    R_ref = np.asarray(case["residual_cov"], dtype=float)
    R = res.residual_covariance.to_numpy()
    if res.info.visit is None:  # sigma^2 I: compare sigma^2
        out["cov"] = abs(R[0, 0] - R_ref[0, 0]) / R_ref[0, 0]
    else:
        assert list(res.residual_covariance.index) == [str(v) for v in case["visits"]]
        sd = np.sqrt(np.diag(R_ref))
        out["cov"] = float(np.max(np.abs(R - R_ref) / np.outer(sd, sd)))
    if "G" in case:
        G_ref = np.asarray(case["G"], dtype=float)
        G = next(iter(res.random_covariance.values())).to_numpy()
        scale = np.sqrt(np.outer(np.diag(G_ref), np.diag(G_ref)))
        # boundary fits have zero variances: measure against the largest variance instead
        scale = np.maximum(scale, 1e-2 * np.max(np.diag(G_ref)))
        out["G"] = float(np.max(np.abs(G - G_ref) / scale))
        if "rho" in case:
            out["cov"] = max(out["cov"], abs(res.theta["rho"] - case["rho"]))
    if "ranef" in case:
        re, sd = res.ranef, res.ranef_sd
        G_ref = np.asarray(case["G"], dtype=float)
        unit = np.sqrt(np.maximum(np.diag(G_ref), 1e-2 * np.max(np.diag(G_ref))))
        db, ds = [], []
        for subj, vals in case["ranef"].items():
            db.append(np.max(np.abs(re.loc[subj].to_numpy() - np.asarray(vals)) / unit))
            if "ranef_condsd" in case:
                ref_sd = np.asarray(case["ranef_condsd"][subj])
                ds.append(np.max(np.abs(sd.loc[subj].to_numpy() - ref_sd) / np.maximum(ref_sd, 1e-2 * unit)))
        out["blup"] = max(db)
        if ds:
            out["blup_sd"] = max(ds)
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.path.insert(0, str(HERE.parents[1]))
    worst: dict = {}
    rows = []
    for case in load_cases():
        res = fit_case(case)
        d = differences(case, res)
        d["case"] = case["case"]
        d["converged"] = res.converged
        rows.append(d)
        for k, v in d.items():
            if isinstance(v, float) and (k not in worst or v > worst[k][0]):
                worst[k] = (v, case["case"])
    print(f"{len(rows)} reference fits compared")
    for k, (v, c) in sorted(worst.items()):
        print(f"  worst {k:<16} {v:10.2e}  ({c})")
