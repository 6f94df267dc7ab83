"""Profile likelihoods and profile-likelihood intervals.

Against lme4's ``confint(fit, method = "profile")`` (tests/reference/inference, an ML-based
profile: a REML fit is profiled on the ML deviance, which ``criterion="ml"`` reproduces), and
against an independent check: at each end point an L-BFGS-B (scipy) minimisation over the other
parameters must give ``d - d_min = z^2``.  lme4 finds its end points by spline interpolation of
a coarse profile, which is accurate to a few 1e-6 relative in the interior and to ~3e-5 next to
a singular fit; the independent check holds ours to 1e-6 in the deviance.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

import jaxlmm as lmm
from jaxlmm.errors import LMMError
from jaxlmm.likelihood import deviance
from jaxlmm.spec import NaturalSpec

REF = Path(__file__).parent / "reference"
CASES = [c for c in json.loads((REF / "inference" / "inference.json").read_text())["cases"] if "profile" in c]
LME4_NAMES = {
    "corr": {".sig01": "sd[(Intercept)|subject]", ".sig02": "corr[(Intercept),time|subject]",
             ".sig03": "sd[time|subject]", ".sigma": "sigma"},
    "int": {".sig01": "sd[(Intercept)|subject]", ".sigma": "sigma"},
    "uncorr": {".sig01": "sd[(Intercept)|subject]", ".sig02": "sd[time|subject]", ".sigma": "sigma"},
}


def _data(name):
    return pd.read_csv(REF / "data" / f"{name}.csv")


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_profile_intervals_match_lme4(case):
    res = lmm.fit(case["jaxlmm_formula"], _data(case["dataset"]), reml=case["reml"], warn=False)
    ci = res.conf_int(method="profile", criterion="ml")
    tag = case["case"].split("_")[2]
    names = {**LME4_NAMES[tag], **dict(zip(case["coef_names"], res.info.fixed_names))}
    prof = case["profile"]
    tol = 5e-5 if "boundary" in case["dataset"] else 1e-5
    for nm, lo, hi in zip(prof["names"], prof["lower"], prof["upper"]):
        ours = ci.loc[names[nm]]
        for a, b in ((ours["lower"], lo), (ours["upper"], hi)):
            if b == 0:
                assert a == 0, nm
            else:
                assert abs(a - b) <= tol * abs(b), (nm, a, b)


def _independent_delta(res, name, value, reml):
    """min over the other natural parameters of the deviance at ``name = value``, minus d_min,
    by L-BFGS-B with box bounds (SDs >= 0, |correlations| < 1) from two starts."""
    nspec = NaturalSpec(res.model.spec)
    data = res.model.arrays.to_jax()
    f = jax.jit(lambda phi: deviance(phi, data, nspec, reml))
    g = jax.jit(jax.grad(lambda phi: deviance(phi, data, nspec, reml)))
    phi0 = res.theta.to_numpy()
    j = list(res.theta.index).index(name)
    free = [i for i in range(len(phi0)) if i != j]
    bounds = [(0.0, None) if (lo == 0 and np.isinf(hi)) else (lo + 1e-9, hi - 1e-9)
              for i, (lo, hi) in enumerate(nspec.bounds()) if i != j]

    def full(v):
        phi = phi0.copy()
        phi[free], phi[j] = v, value
        return jnp.asarray(phi)

    best = np.inf
    for start in (phi0[free], np.clip(phi0[free], 0.05, None)):  # a singular fit starts on the bound
        o = optimize.minimize(lambda v: float(f(full(v))), start, jac=lambda v: np.asarray(g(full(v)))[free],
                              method="L-BFGS-B", bounds=bounds, options=dict(ftol=1e-15, gtol=1e-9, maxiter=2000))
        best = min(best, o.fun)
    return best - res.deviance


@pytest.mark.parametrize("formula,dataset,reml", [
    ("y ~ time + arm + x + (time | subject)", "re_slope", True),
    ("y ~ time + arm + x + (time || subject)", "re_boundary", False),
    ("y ~ time * arm + x + ar1(visit | subject)", "monotone", True),
])
def test_profile_end_points_solve_the_likelihood_ratio_equation(formula, dataset, reml):
    res = lmm.fit(formula, _data(dataset), reml=reml, warn=False)
    ci = res.conf_int(method="profile", which=list(res.theta.index))
    z2 = stats.chi2.ppf(0.95, 1)
    checked = 0
    for name, row in ci.iterrows():
        for side in ("lower", "upper"):
            v = row[side]
            lo, hi = NaturalSpec(res.model.spec).bounds()[list(res.theta.index).index(name)]
            if v in (lo, hi):
                continue
            assert _independent_delta(res, name, v, reml) == pytest.approx(z2, abs=1e-6), (name, side)
            checked += 1
    assert checked >= 3


def test_profile_grid_and_fixed_effects():
    df = lmm.simulate_longitudinal(n_subjects=40, n_visits=4, cov="ar1", seed=3)
    res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    pr = res.profile(n_points=7)
    assert set(pr["parameter"]) == set(res.theta.index) | set(res.fixef.index)
    assert (pr["status"] == 0).all()
    for name, g in pr.groupby("parameter"):
        z = g["zeta"].to_numpy()
        assert np.all(np.diff(z) > 0), name  # zeta increases through the estimate
        assert z[3] ** 2 < 1e-9  # d - d_min at the estimate
    # a fixed effect's profile interval: the ML LRT of beta_j = b at the end points equals z^2
    ci = res.conf_int(method="profile", which="time")
    ml = res.model.fit(reml=False, warn=False)
    for side in ("lower", "upper"):
        b = ci.loc["time", side]
        off = df.assign(y_off=df["y"] - b * df["time"])
        r0 = lmm.fit("y_off ~ arm + ar1(visit | subject)", off, reml=False, warn=False)
        assert r0.deviance - ml.deviance == pytest.approx(stats.chi2.ppf(0.95, 1), abs=1e-6)
    # Wald and profile agree roughly for a well-determined fixed effect
    w = res.conf_int(method="wald", which="time")
    assert w.loc["time", "lower"] == pytest.approx(ci.loc["time", "lower"], rel=0.05)


def test_profile_errors():
    df = lmm.simulate_longitudinal(n_subjects=20, n_visits=3, cov="ar1", seed=3)
    res = lmm.fit("y ~ time + ar1(visit | subject)", df)
    with pytest.raises(LMMError, match="Unknown parameter 'tme'"):
        res.conf_int(method="profile", which="tme")
    with pytest.raises(LMMError, match="level must be in"):
        res.conf_int(method="profile", level=95)
    with pytest.raises(LMMError, match="method must be"):
        res.conf_int(method="likelihood")
    ml = lmm.fit("y ~ time + ar1(visit | subject)", df, reml=False)
    with pytest.raises(LMMError, match="needs a REML fit"):
        ml.profile(criterion="reml")
