"""Kronecker structures un_ar1 / un_cs / un_un (SAS UN@AR(1), UN@CS, UN@UN) for two responses
measured at each visit.  No R package fits them: the deviance is checked against an
independent dense multivariate-normal likelihood built from the natural parameters, the fit
against that likelihood maximised by scipy, the structure against the table checks, and the
special cases (UN@UN nests UN@AR(1) and UN@CS; a diagonal U with equal SDs is the visit
structure alone)."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

import jaxlmm as lmm
from helpers import assert_gradient, dense_deviance
from jaxlmm.errors import DataError, FormulaError
from jaxlmm.fitting import make_payload
from jaxlmm.kronecker import Kronecker


def _data(seed=1, S=60, V=4):
    rng = np.random.default_rng(seed)
    U = np.array([[1.0, 0.6], [0.6, 2.0]])
    lag = np.abs(np.subtract.outer(np.arange(V), np.arange(V)))
    L = np.linalg.cholesky(np.kron(U, 0.7 ** lag))
    rows = []
    for s in range(S):
        e = L @ rng.normal(size=2 * V)
        arm = "A" if s % 2 else "B"
        for a in range(2):
            for t in range(V):
                if rng.random() < 0.12:
                    continue
                rows.append(dict(subject=f"s{s:02d}", arm=arm, type=["fev", "pef"][a], visit=f"V{t + 1}",
                                 y=3 + a + 0.3 * t + (arm == "B") * 0.5 + e[a * V + t]))
    return pd.DataFrame(rows)


def _R_dense(kind, nat, V):
    """R from the natural parameters, written out independently of kronecker.py."""
    s1, s2, c12 = nat[0], nat[1], nat[2]
    U = np.array([[s1 * s1, c12 * s1 * s2], [c12 * s1 * s2, s2 * s2]])
    if kind == "un_ar1":
        C = nat[3] ** np.abs(np.subtract.outer(np.arange(V), np.arange(V)))
    elif kind == "un_cs":
        C = np.full((V, V), nat[3]) + (1 - nat[3]) * np.eye(V)
    else:
        sd = np.concatenate([[1.0], nat[3 : 3 + V - 1]])
        corr = np.eye(V)
        iu = np.triu_indices(V, 1)
        corr[iu] = nat[3 + V - 1 :]
        corr.T[iu] = nat[3 + V - 1 :]
        C = corr * np.outer(sd, sd)
    R = np.zeros((2 * V, 2 * V))
    for a in range(2):
        for b in range(2):
            R[a * V:(a + 1) * V, b * V:(b + 1) * V] = U[a, b] * C
    return R


def _dense_dev(d, kind, nat, reml, V=4):
    X = pd.get_dummies(d[["type", "arm", "visit"]], drop_first=True).astype(float)
    X["pef_arm"] = X["type_pef"] * X["arm_B"]
    for t in range(2, V + 1):
        X[f"pef_V{t}"] = X["type_pef"] * X[f"visit_V{t}"]
    X.insert(0, "one", 1.0)
    X = X.to_numpy()
    pos = (d["type"] == "pef").to_numpy() * V + d["visit"].str[1:].astype(int).to_numpy() - 1
    R = _R_dense(kind, nat, V)
    V_ = np.zeros((len(d), len(d)))
    for _, rows in d.groupby("subject").indices.items():
        V_[np.ix_(rows, rows)] = R[np.ix_(pos[rows], pos[rows])]
    return dense_deviance(X, d["y"].to_numpy(), V_, reml)


F = "y ~ type * (arm + visit) + {}(type, visit | subject)"


@pytest.mark.parametrize("kind", ["un_ar1", "un_cs", "un_un"])
def test_deviance_matches_dense(kind):
    d = _data()
    m = lmm.Model(F.format(kind), d)
    _, payload = make_payload(m.arrays, m.spec)
    rng = np.random.default_rng(4)
    for reml in (True, False):
        th = rng.normal(scale=0.4, size=m.spec.n_theta)
        nat = np.asarray(m.spec.natural(jnp.asarray(th)))
        ours = float(lmm.deviance(jnp.asarray(th), payload, m.spec, reml))
        assert ours == pytest.approx(_dense_dev(d, kind, nat, reml), rel=1e-10)


@pytest.mark.parametrize("kind", ["un_ar1", "un_cs"])
def test_fit_is_the_dense_maximum(kind):
    d = _data(seed=2)
    res = lmm.fit(F.format(kind), d, reml=False)
    assert res.converged
    nat = res.theta.to_numpy()
    assert _dense_dev(d, kind, nat, False) == pytest.approx(res.deviance, rel=1e-10)
    lo = -1.0 / 3 if kind == "un_cs" else -1.0

    def f(z):
        v = np.array([np.exp(z[0]), np.exp(z[1]), np.tanh(z[2]), lo + (1 - lo) / (1 + np.exp(-z[3]))])
        return _dense_dev(d, kind, v, False)

    z0 = np.array([np.log(nat[0]), np.log(nat[1]), np.arctanh(nat[2]), np.log((nat[3] - lo) / (1 - nat[3]))])
    opt = minimize(f, z0 + 0.15, method="BFGS", options={"gtol": 1e-6})
    assert res.deviance <= opt.fun + 1e-6 and opt.fun == pytest.approx(res.deviance, rel=1e-7)


def test_special_cases_nesting_and_analyses():
    d = _data(seed=3)
    fits = {k: lmm.fit(F.format(k), d) for k in ("un_ar1", "un_cs", "un_un")}
    assert fits["un_un"].deviance <= min(fits["un_ar1"].deviance, fits["un_cs"].deviance) + 1e-6
    t = lmm.compare(fits["un_ar1"], fits["un_un"])
    assert t["df"].iloc[1] == 12 - 4
    # U diagonal with equal SDs: the AR(1) of the visits alone, shared by the two responses
    m = lmm.Model(F.format("un_ar1"), d)
    shared = lmm.fit("y ~ type * (arm + visit) + ar1(visit | tv)", d.assign(tv=d["subject"] + d["type"]))
    nat = np.array([shared.theta["sigma"], shared.theta["sigma"], 0.0, shared.theta["rho"]])
    _, payload = make_payload(m.arrays, m.spec)
    th = m.spec.from_natural(nat)
    assert float(lmm.deviance(jnp.asarray(th), payload, m.spec, True)) == pytest.approx(shared.deviance, rel=1e-9)
    r = fits["un_ar1"]
    kr = r.with_ddf("kenward-roger").coef_table
    assert np.all(np.isfinite(kr["df"]))
    nd = d.head(3).assign(subject="new")
    p = r.predict(nd, interval="prediction")
    R = r.residual_covariance.to_numpy()
    pos = [0 if t == "fev" else 4 for t in nd["type"]]
    pos = [a + int(v[1:]) - 1 for a, v in zip(pos, nd["visit"])]
    assert np.all(p["se"] ** 2 > np.diag(R)[pos])
    ci = r.conf_int(method="profile", which=["corr[fev,pef]"])
    assert ci.loc["corr[fev,pef]", "lower"] < r.theta["corr[fev,pef]"] < ci.loc["corr[fev,pef]", "upper"]
    assert list(r.covparms["cov_parm"]) == ["UN(1,1)", "UN(2,1)", "UN(2,2)", "AR(1)"]


@pytest.mark.parametrize("second", ["ar1", "cs", "un"])
@pytest.mark.parametrize("A,V", [(2, 3), (3, 4)])
def test_structure_table_checks(second, A, V):
    st = Kronecker(A * V, A=A, second=second)
    rng = np.random.default_rng(A * V)
    for _ in range(10):
        th = rng.normal(scale=1.2, size=st.n_params)
        R = np.asarray(st.matrix(jnp.asarray(th)))
        assert np.linalg.eigvalsh(R).min() > 0
    th = rng.normal(scale=0.5, size=st.n_params)
    nat = np.asarray(st.natural(jnp.asarray(th)))
    assert len(nat) == len(st.names(None)) == len(st.natural_bounds()) == len(st.sas_names())
    np.testing.assert_allclose(st.from_natural(nat), th, rtol=1e-9, atol=1e-10)
    R = np.asarray(st.matrix(jnp.asarray(th)))
    np.testing.assert_allclose(st.natural_matrix(jnp.asarray(nat)), R, rtol=1e-10)
    np.testing.assert_allclose(st.sas_matrix(st.sas_params(jnp.asarray(th))), R, rtol=1e-9, atol=1e-12)
    S = R + 0.1 * np.eye(A * V)
    assert np.all(np.isfinite(st.start(S)))
    f = lambda t: jnp.sum(jnp.sin(st.matrix(t)))
    assert_gradient(f, th)


def test_errors():
    d = _data()
    with pytest.raises(DataError, match="one level"):
        lmm.fit(F.format("un_ar1"), d[d.type == "fev"].assign(y2=1).drop(columns="y2"))
    with pytest.raises(FormulaError, match="type, visit"):
        lmm.fit("y ~ visit + un_ar1(visit | subject)", d)


def test_with_groups_and_variance_functions():
    """un_ar1 per group equals separate fits with the mean crossed with the group; a variance
    function of the response type is refused (U has a variance per type); one of a subject-level
    factor is not."""
    d = _data(seed=5, S=80)
    both = lmm.fit("y ~ arm * type * visit + un_ar1(type, visit | arm / subject)", d)
    dev = sum(lmm.fit("y ~ type * visit + un_ar1(type, visit | subject)", d[d.arm == a]).deviance for a in ("A", "B"))
    assert both.deviance == pytest.approx(dev, rel=1e-8)
    with pytest.raises(FormulaError, match="response type"):
        lmm.fit(F.format("un_ar1") + " + var_ident(type)", d)
    d["site"] = np.where(d["subject"].str[-1].astype(int) % 3 == 0, "s1", "s2")
    res = lmm.fit(F.format("un_cs") + " + var_ident(site)", d)
    assert res.converged and "varIdent[site=s2]" in res.theta.index
