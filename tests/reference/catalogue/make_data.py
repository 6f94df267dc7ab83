"""Write the datasets of the covariance-catalogue references (make_reference.R).

* ``arma``: ``jaxlmm.datasets.simulate_longitudinal`` with an ARMA(1,1) residual correlation
  (phi 0.7, theta 0.4) over 6 visits, intermittent missing visits;
* ``ctime``: 100 subjects measured 4 to 8 times at irregular times in [0, 10] (one decimal),
  exponential correlation ``exp(-d / 2.5)``, SD 2, plus a random intercept of SD 1
  (continuous time, no visit grid);
* ``space``: 60 fields of 6 plots at integer positions (px, py) in a 10 x 10 grid, exponential
  correlation in the Euclidean distance, range 3, SD 1.5;
* ``ordered``: 40 subjects x 5 doses of an ordered factor (polynomial contrasts in R), random
  intercept.

Run from the repository root: ``python tests/reference/catalogue/make_data.py``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..")))

from jaxlmm.datasets import simulate_longitudinal  # noqa: E402

DATA = os.path.join(HERE, "data")


def arma_corr(T, phi, theta):
    g = (1 + phi * theta) * (phi + theta) / (1 + 2 * phi * theta + theta**2)
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    return np.where(lag == 0, 1.0, g * phi ** np.maximum(lag - 1, 0))


def arma():
    df = simulate_longitudinal(120, 6, seed=201, cov="un", corr=arma_corr(6, 0.7, 0.4), sd=np.full(6, 1.5),
                               missing="intermittent", missing_rate=0.15)
    # observation weights in (0.5, 3) for the weighted fits (the response is not re-simulated)
    df["w"] = np.round(np.random.default_rng(205).uniform(0.5, 3.0, len(df)), 3)
    return df


def _gp(rng, P, sd, rng_range, kind="exp"):
    D = np.sqrt(((P[:, None, :] - P[None, :, :]) ** 2).sum(-1))
    C = np.exp(-D / rng_range) if kind == "exp" else np.exp(-(D / rng_range) ** 2)
    return sd * np.linalg.cholesky(C + 1e-12 * np.eye(len(P))) @ rng.normal(size=len(P))


def ctime():
    rng = np.random.default_rng(202)
    rows = []
    for s in range(100):
        n = int(rng.integers(4, 9))
        t = np.sort(rng.choice(101, size=n, replace=False)) / 10.0
        arm = "B" if s % 2 else "A"
        e = _gp(rng, t[:, None], 2.0, 2.5) + rng.normal(scale=1.0)
        y = 10 + 0.5 * t + (0.8 if arm == "B" else 0.0) + 0.3 * t * (arm == "B") + e
        rows += [{"subject": f"S{s + 1:03d}", "arm": arm, "time": ti, "y": round(float(yi), 6)} for ti, yi in zip(t, y)]
    return pd.DataFrame(rows)


def space():
    rng = np.random.default_rng(203)
    rows = []
    for f in range(60):
        cells = rng.choice(100, size=6, replace=False)
        P = np.column_stack([cells // 10, cells % 10]).astype(float)
        trt = "B" if f % 2 else "A"
        e = _gp(rng, P, 1.5, 3.0)
        y = 5 + (1.0 if trt == "B" else 0.0) + 0.2 * P[:, 0] + e
        rows += [{"field": f"F{f + 1:02d}", "trt": trt, "px": int(p[0]), "py": int(p[1]), "y": round(float(yi), 6)}
                 for p, yi in zip(P, y)]
    return pd.DataFrame(rows)


def ordered():
    """40 subjects x 5 ordered doses (random intercept SD 1, residual SD 0.8), a curved dose
    response and an arm effect."""
    rng = np.random.default_rng(204)
    rows = []
    for s in range(40):
        arm = "B" if s % 2 else "A"
        b = rng.normal()
        for k in range(5):
            mu = 3 + 0.8 * k - 0.15 * k * k + (0.5 if arm == "B" else 0.0) + (0.1 * k if arm == "B" else 0.0)
            rows.append({"subject": f"S{s + 1:02d}", "arm": arm, "dose": f"d{k + 1}",
                         "y": round(float(mu + b + 0.8 * rng.normal()), 6)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    os.makedirs(DATA, exist_ok=True)
    for name, make in (("arma", arma), ("ctime", ctime), ("space", space), ("ordered", ordered)):
        make().to_csv(os.path.join(DATA, f"{name}.csv"), index=False)
