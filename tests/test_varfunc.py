"""Variance functions (var_ident, var_power, var_exp) against nlme (tests/reference/varfunc),
with AR(1), CS, UN and continuous-time correlation and a random intercept, REML and ML; the
other consumers of the engine (Kenward-Roger, predictions, batches) against dense and
special-case checks; errors."""

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm
from helpers import assert_gradient
from jaxlmm.covariance import make_structure
from jaxlmm.errors import DataError, FormulaError
from jaxlmm.varfunc import VarFunction, pair_data

HERE = Path(__file__).resolve().parent / "reference" / "varfunc"
REF = json.loads((HERE / "reference.json").read_text())["cases"]
DATA = HERE / "data" / "varfunc.csv"
#: nlme's name of a variance-function parameter -> ours
VAR = {"M": "varIdent[sex=M]", "B.M": "varIdent[sex=M]", "power": "varPower[dose]", "B.power": "varPower[dose]",
       "A.expon": "varExp[dose]"}
CORR = {"Phi1": "rho", "Rho": "rho", "range": "range"}


@pytest.mark.parametrize("key", sorted(REF))
def test_against_nlme(key):
    case = REF[key]
    df = pd.read_csv(DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lmm.fit(case["jaxlmm_formula"], df, reml=case["reml"])
    assert res.converged and res.n_obs == case["n_obs"]
    assert abs(res.deviance - case["deviance"]) <= 1e-6 * abs(case["deviance"])
    ours = {n.replace("[T.", "").replace("]", ""): row for n, row in res.coef_table.iterrows()}
    for name, b in case["fixef"].items():
        se = case["se_dense"][name]
        assert abs(ours[name].estimate - b) <= 1e-4 * max(abs(b), se), name
        assert abs(ours[name].std_error - se) <= 1e-3 * se, name
    th = res.theta
    sd1 = th["sigma"] if "sigma" in th else th["sd[V1]"]
    assert abs(sd1 - case["sigma"]) <= 1e-4 * case["sigma"]
    for rname, v in case["varfunc"].items():
        if rname in VAR:
            assert abs(th[VAR[rname]] - v) <= 1e-4 * max(abs(v), 0.1), rname
        else:  # varIdent by visit in nlme = UN's per-visit SDs relative to the first
            assert abs(th[f"sd[V{rname[2:]}]"] / th["sd[V1]"] - v) <= 1e-4 * v, rname
    corr = case["corr"] or {}
    if isinstance(corr, list):  # corSymm: the correlations of the upper triangle, row by row
        ours_c = th[[n for n in th.index if n.startswith("corr[")]].to_numpy()
        np.testing.assert_allclose(ours_c, corr, rtol=1e-4, atol=1e-5)
        corr = {}
    for rname, v in corr.items():
        assert abs(th[CORR[rname]] - v) <= 1e-4 * abs(v), rname
    if "re_sd" in case:
        assert abs(th["sd[(Intercept)|subject]"] - case["re_sd"]) <= 1e-4 * case["re_sd"] + 1e-3 * \
            res.theta_table.std_error["sd[(Intercept)|subject]"]


def test_zero_delta_is_the_base_structure_and_nesting():
    df = pd.read_csv(DATA)
    base = lmm.fit("y ~ arm * visit + x + (1 | subject) + ar1(visit | subject)", df)
    m = lmm.Model("y ~ arm * visit + x + (1 | subject) + ar1(visit | subject) + var_power(dose) + var_ident(sex)", df)
    from jaxlmm.fitting import make_payload
    _, payload = make_payload(m.arrays, m.spec)
    th = np.concatenate([np.asarray(base.theta_unconstrained), [0.0, 0.0]])
    assert float(lmm.deviance(jnp.asarray(th), payload, m.spec, True)) == pytest.approx(base.deviance, rel=1e-11)
    full = m.fit()
    t = lmm.compare(base, full)
    assert t["df"].iloc[1] == 2 and full.deviance < base.deviance


def test_engine_consumers_with_a_variance_function():
    """Kenward-Roger and the sandwich through the cluster layout, profiles, batches and
    predictions give the same numbers as the same model written with observation weights at
    the fitted parameters (weights exp(-2 f' delta) are the variance function frozen)."""
    df = pd.read_csv(DATA).dropna(subset=["y"]).reset_index(drop=True)
    f = "y ~ arm * visit + x + (1 | subject) + var_power(dose) + ar1(visit | subject)"
    res = lmm.fit(f, df)
    delta = res.theta["varPower[dose]"]
    frozen = lmm.fit("y ~ arm * visit + x + (1 | subject) + ar1(visit | subject)",
                     df.assign(w=df["dose"] ** (-2 * delta)), weights="w")
    # at the fitted delta the weighted model's optimum is the same point (two fits: optimiser precision)
    np.testing.assert_allclose(frozen.fixef, res.fixef, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(frozen.theta["sigma"], res.theta["sigma"], rtol=1e-5)
    nd = df.iloc[[0, 5, 11]].assign(subject=["S001", "new", "S003"])
    for cond in (False, True, "observed"):
        a = res.predict(nd.assign(w=nd["dose"] ** (-2 * delta)), conditional=cond, interval="prediction")
        b = frozen.predict(nd.assign(w=nd["dose"] ** (-2 * delta)), conditional=cond, interval="prediction")
        np.testing.assert_allclose(a["fit"], b["fit"], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(a["se"], b["se"], rtol=1e-4, atol=1e-7)
    s1, s2 = res.vcov_sandwich("CR2").to_numpy(), frozen.vcov_sandwich("CR2").to_numpy()
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5 * np.abs(s2).max())
    kr = res.with_ddf("kenward-roger").coef_table
    assert np.all(np.isfinite(kr["df"])) and np.all(kr["std_error"] >= res.coef_table["std_error"] - 1e-12)
    sims = res.simulate(3, seed=2)
    batch = lmm.fit_many(f, [df.assign(y=sims[c].to_numpy()) for c in sims])
    np.testing.assert_allclose(batch.deviance, [lmm.fit(f, df.assign(y=sims[c].to_numpy())).deviance for c in sims],
                               rtol=1e-8)
    ci = res.conf_int(method="profile", which=["varPower[dose]"])
    lo, hi = ci.loc["varPower[dose]", ["lower", "upper"]]
    se = res.theta_table.std_error["varPower[dose]"]
    assert lo < delta < hi and abs((hi - lo) / (2 * 1.96 * se) - 1) < 0.1


@pytest.mark.parametrize("name", ["ar1", "un", "sp_exp"])
def test_wrapper_table_checks(name):
    T = 4
    st = VarFunction(make_structure(name, T), (("ident", "varIdent[g=b]"), ("power", "varPower[x]")))
    rng = np.random.default_rng(3)
    th = rng.normal(scale=0.6, size=st.n_params)
    F = rng.normal(size=(2, T, 2))
    keys = np.broadcast_to(np.arange(T)[:, None] * T + np.arange(T)[None, :], (2, T, T))
    P = jnp.asarray(pair_data(keys, F))
    R = np.asarray(st.matrix_at(jnp.asarray(th), P))
    base = np.asarray(st.base.matrix(jnp.asarray(th[: st.base.n_params])))
    s = np.exp(F @ th[st.base.n_params:])
    np.testing.assert_allclose(R, base[None] * s[:, :, None] * s[:, None, :], rtol=1e-12)
    assert all(np.linalg.eigvalsh(r).min() > 0 for r in R)
    nat = np.asarray(st.natural(jnp.asarray(th)))
    np.testing.assert_allclose(st.from_natural(nat), th, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st.natural_matrix_at(jnp.asarray(nat), P), R, rtol=1e-10)
    np.testing.assert_allclose(st.sas_matrix_at(st.sas_params(jnp.asarray(th)), P), R, rtol=1e-9)
    f = lambda t: jnp.sum(jnp.sin(st.matrix_at(t, P)))
    assert_gradient(f, th)


def test_errors_name_the_term():
    df = pd.read_csv(DATA)
    with pytest.raises(DataError, match="var_power.*positive|<= 0"):
        lmm.fit("y ~ visit + var_power(x) + ar1(visit | subject)", df)
    with pytest.raises(DataError, match="not numeric"):
        lmm.fit("y ~ visit + var_exp(sex) + ar1(visit | subject)", df)
    with pytest.raises(DataError, match="one level"):
        lmm.fit("y ~ visit + var_ident(sex) + ar1(visit | subject)", df[df.sex == "M"])
    with pytest.raises(FormulaError, match="not identifiable"):
        lmm.fit("y ~ visit + var_ident(visit) + un(visit | subject)", df)
    with pytest.raises(FormulaError, match="one column"):
        lmm.fit("y ~ visit + var_exp(x + dose) + ar1(visit | subject)", df)
    with pytest.raises(DataError, match="'nope'"):
        lmm.fit("y ~ visit + var_exp(nope) + ar1(visit | subject)", df)
    res = lmm.fit("y ~ visit + var_ident(sex) + ar1(visit | subject)", df)
    with pytest.raises(DataError, match="no SD ratio"):
        res.predict(df.head(2).assign(sex="X"), interval="prediction")
    with pytest.raises(lmm.LMMError, match="residual_covariance_of"):
        res.residual_covariance


@pytest.mark.parametrize("term", ["ar1(visit | arm / subject)", "var_power(dose) + ar1(visit | subject)"])
def test_implicit_derivatives(term):
    """lmm.solve on a per-group or variance-function model: the deviance of the fit and
    d beta / d y against central differences of re-solves."""
    d = pd.read_csv(DATA).dropna(subset=["y"]).reset_index(drop=True)
    d = d[d.subject.isin(d.subject.unique()[:40])]
    model = lmm.Model(f"y ~ arm + visit + {term}", d)
    data, spec = model.arrays, model.spec
    sol = lmm.solve(data, spec)
    assert float(sol.deviance) == pytest.approx(model.fit().deviance, rel=1e-9)
    beta1 = lambda y: lmm.solve(data._replace(y=y), spec).beta[1]  # noqa: E731
    g = np.asarray(jax.grad(beta1)(jnp.asarray(data.y)))
    y0 = np.asarray(data.y)
    for s, t in np.argwhere(np.asarray(data.m) > 0)[[3, 50]]:
        e = 1e-5
        up, dn = y0.copy(), y0.copy()
        up[s, t] += e
        dn[s, t] -= e
        fd = (float(beta1(jnp.asarray(up))) - float(beta1(jnp.asarray(dn)))) / (2 * e)
        assert g[s, t] == pytest.approx(fd, rel=1e-5, abs=1e-9)
