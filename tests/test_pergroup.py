"""A residual covariance per group, ``struct(visit | group / subject)`` (SAS ``GROUP=``, mmrm).

Checks: (1) with the fixed effects fully crossed with the group, the likelihood, the estimates,
their SEs and df are those of separate fits per group (REML and ML; the groups share no
parameter); (2) with shared fixed effects and random effects, the deviance equals an
independent dense multivariate-normal likelihood built from the printed parameters, and that
likelihood is maximised there (scipy from a perturbed start); (3) equal parameters in every
group give the shared structure's deviance; (4) the structure wrapper passes the table checks
(positive definite, natural round trip, SAS parameters, gradients); (5) bad input errors."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

import jaxlmm as lmm
from helpers import assert_gradient, dense_deviance
from jaxlmm.covariance import STRUCTURES, make_structure
from jaxlmm.errors import DataError, FormulaError
from jaxlmm.fitting import make_payload
from jaxlmm.pergroup import PerGroup, group_keys


def _data(seed=2, S=60, T=4):
    d = lmm.simulate_longitudinal(S, T, re_sd=(0.8, 0.2), seed=seed)
    d = d.drop(index=d.sample(frac=0.15, random_state=seed).index).reset_index(drop=True)
    return d


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
@pytest.mark.parametrize("st", ["un", "ar1", "toeph", "csh", "sp_exp"])
def test_separate_groups_equal_separate_fits(st, reml):
    d = _data()
    vis = "time" if st == "sp_exp" else "visit"
    both = lmm.fit(f"y ~ arm * visit + {st}({vis} | arm / subject)", d, reml=reml)
    assert both.converged
    dev = 0.0
    for a in ("A", "B"):
        one = lmm.fit(f"y ~ visit + {st}({vis} | subject)", d[d.arm == a], reml=reml)
        dev += one.deviance
        if a == "A":  # the reference arm's coefficients are its own fit's
            names = ["(Intercept)"] + [c for c in one.fixef.index if c.startswith("visit")]
            ct, ct1 = both.coef_table.loc[names], one.coef_table.loc[names]
            np.testing.assert_allclose(ct["estimate"], ct1["estimate"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ct["std_error"], ct1["std_error"], rtol=1e-4)
            np.testing.assert_allclose(ct["df"], ct1["df"], rtol=1e-3)
            kr, kr1 = both.with_ddf("kenward-roger").coef_table.loc[names], one.with_ddf("kenward-roger").coef_table
            np.testing.assert_allclose(kr["df"], kr1.loc[names, "df"], rtol=1e-3)
            np.testing.assert_allclose(kr["std_error"], kr1.loc[names, "std_error"], rtol=1e-4)
            th = both.theta[[n for n in both.theta.index if n.endswith("[arm=A]")]].to_numpy()
            np.testing.assert_allclose(th, one.theta.to_numpy(), rtol=1e-4, atol=1e-5)
    assert both.deviance == pytest.approx(dev, rel=1e-8)


def _ar1(sigma, rho, T):
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    return sigma ** 2 * rho ** lag


def _dense(d, params, reml):
    """-2 log L of y ~ arm + visit + x, (1 | subject), ar1(visit | sex / subject) from the natural
    parameters (sd of the intercept, then sigma, rho per sex)."""
    X = pd.get_dummies(d[["arm", "visit"]], drop_first=True).astype(float)
    X.insert(0, "one", 1.0)
    X["x"] = d["x"]
    X = X.to_numpy()
    y = d["y"].to_numpy()
    t = d["visit"].str[1:].astype(int).to_numpy() - 1
    sd0, sig = params[0], {"F": params[1:3], "M": params[3:5]}
    V = np.zeros((len(d), len(d)))
    for s, rows in d.groupby("subject").indices.items():
        sex = d["sex"].iloc[rows[0]]
        R = _ar1(*sig[sex], 10)
        V[np.ix_(rows, rows)] = R[np.ix_(t[rows], t[rows])] + sd0 ** 2
    return dense_deviance(X, y, V, reml)


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
def test_shared_fixed_effects_match_dense_likelihood(reml):
    d = _data(seed=5, S=50, T=5)
    res = lmm.fit("y ~ arm + visit + x + (1 | subject) + ar1(visit | sex / subject)", d, reml=reml)
    assert res.converged
    th = res.theta
    nat = np.array([th["sd[(Intercept)|subject]"], th["sigma [sex=F]"], th["rho [sex=F]"], th["sigma [sex=M]"], th["rho [sex=M]"]])
    assert _dense(d, nat, reml) == pytest.approx(res.deviance, rel=1e-9)
    # the dense likelihood has its maximum there
    z0 = np.array([np.log(nat[0]), np.log(nat[1]), np.arctanh(nat[2]), np.log(nat[3]), np.arctanh(nat[4])])
    f = lambda z: _dense(d, np.array([np.exp(z[0]), np.exp(z[1]), np.tanh(z[2]), np.exp(z[3]), np.tanh(z[4])]), reml)
    opt = minimize(f, z0 + 0.1, method="BFGS", options={"gtol": 1e-7})
    assert opt.fun == pytest.approx(res.deviance, rel=1e-7)
    assert res.deviance <= opt.fun + 1e-6


def test_equal_groups_give_the_shared_structure():
    d = _data(seed=3)
    shared = lmm.fit("y ~ arm * visit + (1 | subject) + ar1(visit | subject)", d)
    grp = lmm.Model("y ~ arm * visit + (1 | subject) + ar1(visit | arm / subject)", d)
    th = np.asarray(shared.theta_unconstrained)
    nb = th.size - 2
    th2 = np.concatenate([th[:nb], th[nb:], th[nb:]])
    _, payload = make_payload(grp.arrays, grp.spec)
    dev = float(lmm.deviance(jnp.asarray(th2), payload, grp.spec, True)) + grp.info.deviance_offset()
    assert dev == pytest.approx(shared.deviance, rel=1e-10)
    # and the per-group fit is at least as good, nested in the LRT table
    res = grp.fit()
    assert res.deviance <= shared.deviance + 1e-6
    assert lmm.compare(shared, res)["df"].iloc[1] == 2


GRID = sorted(n for n in STRUCTURES if n != "id")


@pytest.mark.parametrize("name", GRID)
def test_wrapper_table_checks(name):
    T = 4
    st = PerGroup(make_structure(name, T), "g", ("a", "b", "c"))
    rng = np.random.default_rng(7)
    th = rng.normal(scale=0.7, size=st.n_params)
    mats = np.asarray(st.group_matrices(jnp.asarray(th)))
    for g in range(3):
        assert np.linalg.eigvalsh(mats[g]).min() > 0
        k = st.base.n_params
        np.testing.assert_allclose(mats[g], st.base.matrix(jnp.asarray(th[g * k:(g + 1) * k])), rtol=1e-12)
    # keys of every pair of a subject's cells pick its group's matrix
    K = group_keys(np.array([2, 0]), np.array([[3, 0, 1], [1, 2, 3]]), T)
    R = np.asarray(st.matrix_at(jnp.asarray(th), jnp.asarray(K)))
    np.testing.assert_allclose(R[0], mats[2][np.ix_([3, 0, 1], [3, 0, 1])])
    np.testing.assert_allclose(R[1], mats[0][np.ix_([1, 2, 3], [1, 2, 3])])
    nat = np.asarray(st.natural(jnp.asarray(th)))
    assert len(nat) == len(st.names([f"v{i}" for i in range(T)])) == st.n_params
    np.testing.assert_allclose(st.from_natural(nat), th, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(st.natural_matrix_at(jnp.asarray(nat), jnp.asarray(K)), R, rtol=1e-10)
    phi = st.sas_params(jnp.asarray(th))
    assert len(phi) == len(st.sas_names())
    np.testing.assert_allclose(st.sas_matrix_at(phi, jnp.asarray(K)), R, rtol=1e-9, atol=1e-12)
    # gradient of a scalar of the keyed matrices against central differences
    f = lambda t: jnp.sum(jnp.sin(st.matrix_at(t, jnp.asarray(K))))
    assert_gradient(f, th)


def test_simulate_batches_and_selection():
    d = _data(seed=4)
    f = "y ~ arm * visit + cs(visit | arm / subject)"
    res = lmm.fit(f, d)
    sims = [lmm.simulate_longitudinal(30, 4, seed=s) for s in range(3)]
    batch = lmm.fit_many(f, sims)
    np.testing.assert_allclose(batch.deviance, [lmm.fit(f, x).deviance for x in sims], rtol=1e-8)
    Y = res.simulate(4, seed=1)
    fits = lmm.Model(f, d).fit_batch(Y.to_numpy().T)
    np.testing.assert_allclose(fits.deviance[0], res.refit(Y.iloc[:, 0]).deviance, rtol=1e-8)
    R = res.residual_covariance
    assert list(R.index.get_level_values(0).unique()) == ["A", "B"]
    sel = lmm.select_covariance("y ~ arm * visit", d, visit="visit", subject="subject",
                                structures=("cs", "cs / arm", "un / arm"))
    assert {("cs", "cs / arm"), ("cs", "un / arm"), ("cs / arm", "un / arm")} == set(
        zip(sel.lrt["null"], sel.lrt["alternative"]))


def test_errors_name_the_term():
    d = _data()
    bad = d.copy()
    bad.loc[bad.index[1], "arm"] = "B" if bad.loc[bad.index[1], "arm"] == "A" else "A"
    with pytest.raises(DataError, match="varies within subject"):
        lmm.fit("y ~ visit + un(visit | arm / subject)", bad)
    with pytest.raises(DataError, match="one level"):
        lmm.fit("y ~ visit + un(visit | arm / subject)", d[d.arm == "A"])
    with pytest.raises(FormulaError, match="group / subject"):
        lmm.fit("y ~ visit + un(visit | subject / subject)", d)
    with pytest.raises(FormulaError, match="more than one '/'"):
        lmm.fit("y ~ visit + un(visit | sex / arm / subject)", d)
    cont = d.assign(t2=d["time"] + np.random.default_rng(1).uniform(0, 0.5, len(d)))
    with pytest.raises(FormulaError, match="grid shared"):
        lmm.fit("y ~ visit + sp_exp(t2 | arm / subject)", cont)
    res = lmm.fit("y ~ visit + ar1(visit | arm / subject)", d)
    nd = pd.DataFrame({"subject": ["new"], "visit": ["V2"], "arm": ["C"]})
    with pytest.raises(DataError, match="not a group"):
        res.predict(nd, interval="prediction")
    with pytest.raises(DataError, match="group of"):
        res.predict(nd.drop(columns="arm"), interval="prediction")


@pytest.mark.parametrize("term", ["un(visit | arm / subject)", "ar1(visit | subject) + var_ident(sex)",
                                  "(1 | subject) + ar1(visit | arm / subject) + var_ident(sex)"])
def test_patterns_payload_equals_subjects(term):
    """Subjects sharing a visit pattern and their residual data (group, variance-function level)
    share one covariance: the per-pattern payload gives the per-subject likelihood."""
    d = _data(seed=6, S=80)
    m = lmm.Model(f"y ~ arm * visit + {term}", d)
    layout, payload = make_payload(m.arrays, m.spec)
    assert layout == "patterns"
    th = jnp.asarray(np.random.default_rng(1).normal(scale=0.3, size=m.spec.n_theta))
    for reml in (True, False):
        a = float(lmm.deviance(th, payload, m.spec, reml))
        b = float(lmm.deviance(th, m.arrays.to_jax(), m.spec, reml))
        assert a == pytest.approx(b, rel=1e-11)
