"""ARMA(1,1), continuous-time and spatial correlation against nlme, and an ordered factor
against lme4 (tests/reference/catalogue).

nlme ``gls`` with ``corARMA(p = 1, q = 1)``, ``corExp``, ``corGaus``, ``corCAR1`` (one time
coordinate, irregular times) and ``corExp(form = ~ px + py | field)`` (Euclidean distance in two
coordinates), ``lme`` with a random intercept and ``corExp``, and observation weights
(``weights = varFixed(~ 1 / w)``, jaxlmm ``weights="w"``) with AR(1) and with a random intercept;
REML and ML; TOEPH against glmmTMB's ``toep``.  The deviance is
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


@pytest.mark.parametrize("key", sorted(k for k in CASES if not k.startswith(("ordered", "toeph"))))
def test_against_nlme(key):
    case = CASES[key]
    df = pd.read_csv(HERE / "data" / case["dataset"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lmm.fit(case["jaxlmm_formula"], df, reml=case["reml"], weights=case.get("weights"))
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
    for rname, v in (case["corr"] or {}).items():
        name = NAMES[rname] if NAMES[rname] in th else "rho"  # nlme's corAR1 with gaps is corARMA(p = 1)
        assert abs(th[name] - v) <= 1e-4 * abs(v) + 1e-3 * tab.std_error[name], name
    if "re_sd" in case:
        assert abs(th["sd[(Intercept)|subject]"] - case["re_sd"]) <= 1e-3 * tab.std_error["sd[(Intercept)|subject]"]


@pytest.mark.parametrize("key", ["toeph_glmmTMB_reml", "toeph_glmmTMB_ml"])
def test_toeph_against_glmmtmb(key):
    """TOEPH against glmmTMB's toep() on the visit indicators with dispformula = ~ 0 (its residual
    variance fixed at a negligible value): -2 log L, fixed effects, per-visit SDs and the
    correlation at each lag."""
    case = CASES[key]
    df = pd.read_csv(HERE / "data" / case["dataset"])
    res = lmm.fit(case["jaxlmm_formula"], df, reml=case["reml"])
    assert res.converged and res.n_obs == case["n_obs"]
    assert abs(res.deviance - case["deviance_reported"]) <= 1e-6 * abs(case["deviance_reported"])
    fe = {n.replace("[T.", "").replace("]", ""): v for n, v in res.fixef.items()}
    for name, b in case["fixef"].items():
        assert abs(fe[name] - b) <= 1e-4 * max(abs(b), 1.0), name
    th = res.theta
    np.testing.assert_allclose(th[[n for n in th.index if n.startswith("sd[")]], case["sd"], rtol=1e-4)
    np.testing.assert_allclose(th[[n for n in th.index if n.startswith("rho[")]], case["lag_corr"], atol=1e-4)


def test_spatial_layouts(monkeypatch):
    """Few distinct points: they are the positions of one shared covariance, with their
    coordinates in the structure; many (98 plots of 6 per field): each field's covariance from
    its own coordinates.  Both: the correlation is exp(-Euclidean distance / range), and the two
    layouts give the same likelihood on the same data."""
    df = pd.read_csv(HERE / "data" / "space.csv")
    df["gx"], df["gy"] = df.px // 4, df.py // 4  # a 3 x 3 grid of blocks
    df = df.drop_duplicates(["field", "gx", "gy"]).reset_index(drop=True)
    grid = lmm.fit("y ~ trt + gx + sp_exp(gx, gy | field)", df)
    st = grid.model.spec.resid
    pts = np.asarray(st.coords)
    assert not grid.info.per_subject_cov and pts.shape == (grid.info.T, 2) == (9, 2)
    C = grid.residual_correlation.to_numpy()
    D = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    np.testing.assert_allclose(C, np.exp(-D / grid.theta["range"]), rtol=1e-12)
    assert list(grid.residual_covariance.index) == [f"({int(a)}, {int(b)})" for a, b in pts]

    full = lmm.fit("y ~ trt + px + sp_exp(px, py | field)", pd.read_csv(HERE / "data" / "space.csv"))
    assert full.info.per_subject_cov and full.info.T == 6
    f0 = full.info.subjects[0]
    R = full.residual_covariance_of(f0)
    P = pd.read_csv(HERE / "data" / "space.csv").iloc[list(R.index)][["px", "py"]].to_numpy(float)
    D = np.sqrt(((P[:, None] - P[None]) ** 2).sum(-1))
    np.testing.assert_allclose(R.to_numpy(), full.theta["sigma"] ** 2 * np.exp(-D / full.theta["range"]), rtol=1e-12)

    # the per-subject payload on the grid data gives the grid fit's deviance
    from jaxlmm import visits

    monkeypatch.setattr(visits, "MIN_GRID", 0)
    monkeypatch.setattr(visits, "GRID_FACTOR", 0)
    per = lmm.fit("y ~ trt + gx + sp_exp(gx, gy | field)", df)
    assert per.info.per_subject_cov
    assert abs(per.deviance - grid.deviance) < 1e-8 * abs(grid.deviance)
    np.testing.assert_allclose(per.coef_table.std_error, grid.coef_table.std_error, rtol=1e-6)
    np.testing.assert_allclose(per.vcov_sandwich("CR2"), grid.vcov_sandwich("CR2"), rtol=1e-6)
    kg, kp = grid.kenward_roger, per.kenward_roger
    np.testing.assert_allclose(np.asarray(kp.PhiA), np.asarray(kg.PhiA), rtol=1e-5)


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
def test_ordered_factor_polynomial_contrasts(reml):
    """An ordered pandas Categorical gets R's default polynomial contrasts (contr.poly): the same
    columns, R's names (``dose[.L]`` = R's ``dose.L``, ``dose[^4]`` = ``dose^4``), estimates and
    SEs as lme4; an unordered copy gets treatment contrasts and the same covariance estimates."""
    case = CASES[f"ordered_{'reml' if reml else 'ml'}"]
    df = pd.read_csv(HERE / "data" / case["dataset"])
    df["dose"] = pd.Categorical(df["dose"], categories=case["ordered"]["dose"], ordered=True)
    res = lmm.fit(case["jaxlmm_formula"], df, reml=reml)
    assert abs(res.deviance - case["deviance_reported"]) / case["deviance_reported"] < 1e-8
    names = [n.replace("[T.", "").replace("[", "").replace("]", "") for n in res.info.fixed_names]
    assert names == list(case["fixef"])
    ct = res.coef_table
    for ours, (name, b) in zip(ct.itertuples(), case["fixef"].items()):
        se = case["se"][name]
        assert abs(ours.estimate - b) <= 1e-4 * max(abs(b), se) and abs(ours.std_error - se) <= 1e-3 * se, name
    X = np.asarray(res.model.arrays.X)[res.info.row_s, res.info.row_t]
    lev = df["dose"].cat.codes.to_numpy()[res.info.row_index]
    np.testing.assert_allclose(X[:, 1:5], np.asarray(case["contrasts"])[lev], atol=1e-12)
    # explicit C(dose, Poly) on the unordered column: the same columns; treatment contrasts: the same fit
    plain = df.assign(dose=df["dose"].astype(str))
    poly = lmm.fit("y ~ C(dose, Poly) * arm + (1 | subject)", plain, reml=reml)
    np.testing.assert_allclose(poly.coef_table.estimate.to_numpy(), ct.estimate.to_numpy(), rtol=1e-7, atol=1e-9)
    treat = lmm.fit(case["jaxlmm_formula"], plain, reml=reml)
    assert "dose[T.d2]" in treat.info.fixed_names
    # REML's log|X'V^-1X| moves with the coding by a constant; the estimates do not
    np.testing.assert_allclose(treat.theta.to_numpy(), res.theta.to_numpy(), rtol=1e-6)
    if not reml:
        assert abs(treat.deviance - res.deviance) < 1e-9 * abs(res.deviance)


def test_observation_weights():
    """Weights w: the same fit as the data with y, X and Z scaled by sqrt(w) (whose residual
    covariance is R) plus -sum(log w) in the deviance; constant weights c: the residual variance
    divided by c and nothing else; fitted values, residuals and simulations in the data's units;
    fit_batch and refit of the data give the fit's numbers."""
    df = pd.read_csv(HERE / "data" / "arma.csv")
    f = "y ~ time * arm + x + ar1(time | subject)"
    res = lmm.fit(f, df, weights="w")
    used = df.dropna(subset=["y"])
    np.testing.assert_allclose(res.fitted().dropna(), (used["y"] - res.residuals().dropna()), rtol=1e-12)
    X = np.asarray(res.model.arrays.X)[res.info.row_s, res.info.row_t]
    np.testing.assert_allclose(res.fitted(conditional=False).dropna().to_numpy(),
                               X @ res.fixef.to_numpy() / np.sqrt(used["w"].to_numpy()), rtol=1e-10)
    const = lmm.fit(f, df.assign(w=4.0), weights="w")
    plain = lmm.fit(f, df)
    np.testing.assert_allclose(const.fixef, plain.fixef, rtol=1e-8)
    assert abs(const.theta["sigma"] - 2 * plain.theta["sigma"]) < 1e-6 * plain.theta["sigma"]
    assert abs(const.deviance - plain.deviance) < 1e-7 * plain.deviance
    sims = res.simulate(2, seed=3)
    assert sims["sim_1"].notna().sum() == res.n_obs
    batch = res.model.fit_batch(df[["y"]].T.to_numpy())
    assert abs(batch.deviance[0] - res.deviance) < 1e-7 * abs(res.deviance)
    np.testing.assert_allclose(batch.fixef[0], res.fixef, rtol=1e-7, atol=1e-9)
    again = res.refit(df["y"].to_numpy())
    assert abs(again.deviance - res.deviance) < 1e-9 * abs(res.deviance)
    with pytest.raises(lmm.DataError, match="weights"):
        lmm.fit(f, df.assign(w=df["w"] - 1.0), weights="w")
    with pytest.raises(lmm.DataError, match="'wt'"):
        lmm.fit(f, df, weights="wt")
