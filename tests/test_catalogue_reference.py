"""ARMA(1,1), continuous-time and spatial correlation against nlme (tests/reference/catalogue).

nlme ``gls`` with ``corARMA(p = 1, q = 1)``, ``corExp``, ``corGaus``, ``corCAR1`` (one time
coordinate, irregular times) and ``corExp(form = ~ px + py | field)`` (Euclidean distance in two
coordinates), and ``lme`` with a random intercept and ``corExp``; REML and ML.  The deviance is
compared with R's recomputed dense -2 log L (SAS's constants, which are jaxlmm's)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm

HERE = Path(__file__).resolve().parent / "reference" / "catalogue"
CASES = json.loads((HERE / "reference.json").read_text())["cases"]
#: nlme's name of a correlation parameter -> ours
NAMES = {"Phi1": "phi", "Theta1": "theta", "range": "range", "Phi": "rho"}


@pytest.mark.parametrize("key", sorted(CASES))
def test_against_nlme(key):
    case = CASES[key]
    df = pd.read_csv(HERE / "data" / case["dataset"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lmm.fit(case["jaxlmm_formula"], df, reml=case["reml"])
    assert res.converged and res.n_obs == case["n_obs"]
    assert abs(res.deviance - case["deviance_dense"]) / case["deviance_dense"] < 1e-8
    assert abs(case["deviance_reported"] - case["deviance_dense"]) < 1e-6  # nlme's constants are these
    ct = res.coef_table
    ours = {n.replace("[T.", "").replace("]", ""): row for n, row in ct.iterrows()}
    for name, b in case["fixef"].items():
        se = case["se_dense"][name]
        assert abs(ours[name].estimate - b) <= 1e-4 * max(abs(b), se), name
        assert abs(ours[name].std_error - se) <= 1e-3 * se, name
    th, tab = res.theta, res.theta_table
    assert abs(th["sigma"] - case["sigma"]) <= 1e-4 * case["sigma"]
    for rname, v in case["corr"].items():
        name = NAMES[rname]
        assert abs(th[name] - v) <= 1e-4 * abs(v) + 1e-3 * tab.std_error[name], name
    if "re_sd" in case:
        assert abs(th["sd[(Intercept)|subject]"] - case["re_sd"]) <= 1e-3 * tab.std_error["sd[(Intercept)|subject]"]


def test_spatial_layout():
    """The distinct coordinate points are the positions, with their coordinates in the
    structure; the correlation is a function of the Euclidean distance only."""
    df = pd.read_csv(HERE / "data" / "space.csv")
    res = lmm.fit("y ~ trt + px + sp_exp(px, py | field)", df)
    st = res.model.spec.resid
    pts = np.asarray(st.coords)
    assert pts.shape == (res.info.T, 2)
    assert len({tuple(p) for p in pts}) == len(pts) == len(df[["px", "py"]].drop_duplicates())
    C = res.residual_correlation.to_numpy()
    D = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    np.testing.assert_allclose(C, np.exp(-D / res.theta["range"]), rtol=1e-12)
    assert list(res.residual_covariance.index) == [f"({int(a)}, {int(b)})" for a, b in pts]
