"""Prediction intervals against an independent dense computation.

The reference builds the full covariance V of the fitted rows from the printed estimates
(random-effect covariances, residual covariance), writes each prediction as a linear predictor
``h'y`` (unbiased, ``h'X = x'``) and takes ``Var(target - h'y) = Var(target) + h'Vh - 2 h'Cov(y,
target)`` for the target of each kind of interval."""

import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm
from jaxlmm.design import new_design_rows
from jaxlmm.errors import ArgumentError, DataError


def _data(seed=1, S=36, T=5, weights=False):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(S):
        b0, b1 = rng.normal() * 0.8, rng.normal() * 0.3
        site = s % 6
        e = 0.0
        for t in range(T):
            e = 0.6 * e + rng.normal() * 0.8
            if rng.random() < 0.15:
                continue
            x = rng.normal()
            rows.append(dict(id=f"s{s}", site=f"k{site}", grp="a" if s % 3 else "b", visit=t, time=t + rng.uniform(-0.3, 0.3), x=x,
                             w=rng.uniform(0.5, 2.0), y=1 + 0.5 * t + 0.3 * x + b0 + b1 * t + 0.4 * (site - 2.5) + e))
    return pd.DataFrame(rows)


def _dense_reference(res, newdata, mode):
    """(fit, conf var, pred var) per row of newdata, from dense matrices."""
    info, model = res.info, res.model
    train = model.data.iloc[info.row_index]
    y = train[info.formula.response].to_numpy(float)
    Xt, Zt = new_design_rows(info, train)
    Xn, Zn = new_design_rows(info, newdata)
    blocks = model.spec.blocks
    offs = np.cumsum([0] + [b.k for b in blocks])
    cov = info.formula.cov
    wt = train[info.weights].to_numpy(float) if info.weights else np.ones(len(train))
    wn = newdata[info.weights].to_numpy(float) if info.weights else np.ones(len(newdata))

    def key(frame, g):
        cols = info.factors[g].columns
        return list(zip(*(frame[c].tolist() for c in cols)))

    def rcov(fa, fb, wa, wb):
        """Residual covariance between rows of frames fa and fb (same subject only)."""
        out = np.zeros((len(fa), len(fb)))
        if cov is None:
            return out  # only the diagonal of the training rows (added below)
        sa, sb = fa[cov.subject].to_numpy(), fb[cov.subject].to_numpy()
        if cov.structure == "sp_exp":
            phi = res.covparms["estimate"].to_numpy()
            rng_, var = phi[-2], phi[-1]
            ta, tb = fa[cov.columns[0]].to_numpy(float), fb[cov.columns[0]].to_numpy(float)
            C = var * np.exp(-np.abs(ta[:, None] - tb[None, :]) / rng_)
        else:
            pos = {v: i for i, v in enumerate(info.visit_levels)}
            ia = np.array([pos[v] for v in fa[cov.visit]])
            ib = np.array([pos[v] for v in fb[cov.visit]])
            if cov.group is None:
                C = res.residual_covariance.to_numpy()[np.ix_(ia, ib)]
            else:  # one covariance per group (rows of one subject share its group)
                Rg = res.residual_covariance
                ga = fa[cov.group].to_numpy()
                C = np.stack([Rg.loc[g].to_numpy()[ia[i], ib] for i, g in enumerate(ga)])
        return C * (sa[:, None] == sb[None, :]) / np.sqrt(np.outer(wa, wb))

    def zcov(Za, fa, Zb, fb):
        out = np.zeros((len(fa), len(fb)))
        for g, G in res.random_covariance.items():
            js = [j for j, b in enumerate(blocks) if b.group == g]
            cols = np.concatenate([np.arange(offs[j], offs[j + 1]) for j in js])
            ka, kb = key(fa, g), key(fb, g)
            same = np.array([[a == b for b in kb] for a in ka])
            out += same * (Za[:, cols] @ G.to_numpy() @ Zb[:, cols].T)
        return out

    V = zcov(Zt, train, Zt, train) + rcov(train, train, wt, wt)
    if cov is None:
        V += np.diag(res.residual_covariance.iloc[0, 0] / wt)
    Vi = np.linalg.inv(V)
    Vb = np.linalg.inv(Xt.T @ Vi @ Xt)
    np.testing.assert_allclose(Vb, res.record.vcov, rtol=1e-6)
    c = zcov(Zt, train, Zn, newdata)  # Cov(y, z'b_new)  [n_train, n_new]
    zGz = np.diag(zcov(Zn, newdata, Zn, newdata))
    if cov is None:
        rjj = res.residual_covariance.iloc[0, 0] / wn
        r_new = np.zeros_like(c)
    else:
        rjj = np.diag(rcov(newdata, newdata, wn, wn))
        r_new = rcov(train, newdata, wt, wn)
    fit, conf, pred = [], [], []
    for j in range(len(newdata)):
        x = Xn[j]
        if mode == "marginal":
            h = Vi @ Xt @ Vb @ x
            fit.append(h @ y)
            conf.append(h @ V @ h)
            pred.append(conf[-1] + zGz[j] + rjj[j])
            continue
        k = c[:, j] if mode == "conditional" else c[:, j] + r_new[:, j]
        a = x - Xt.T @ Vi @ k
        h = Vi @ k + Vi @ Xt @ Vb @ a
        fit.append(h @ y)
        if mode == "conditional":
            pev = zGz[j] + h @ V @ h - 2 * h @ k
            conf.append(pev)
            pred.append(pev + rjj[j])
        else:
            conf.append(a @ Vb @ a)
            pred.append(max(zGz[j] + rjj[j] + h @ V @ h - 2 * h @ k, 0.0))
    return np.array(fit), np.array(conf), np.array(pred)


def _newdata(df):
    """Fitted rows, missed visits of fitted subjects, a new subject, a new site."""
    seen = set(zip(df["id"], df["visit"]))
    missed = [dict(id=i, site=df.loc[df["id"] == i, "site"].iloc[0], grp=df.loc[df["id"] == i, "grp"].iloc[0], visit=t,
                   time=t + 0.1, x=0.2, w=1.5)
              for i in ("s0", "s1", "s2", "s3", "s5", "s7") for t in range(5) if (i, t) not in seen][:5]
    new = [dict(id="new", site="k1", grp="b", visit=2, time=2.2, x=-0.4, w=0.8),
           dict(id="s3", site="k_new", grp="b", visit=1, time=1.0, x=0.1, w=1.0)]
    return pd.concat([df.iloc[[0, 3, 7, 20]], pd.DataFrame(missed + new)], ignore_index=True)


CASES = [
    ("y ~ x + visit + (1 | id) + ar1(visit | id)", False),
    ("y ~ x + visit + (1 | id) + (1 | site) + ar1(visit | id)", False),
    ("y ~ x + C(visit) + us(visit | id)", False),
    ("y ~ x + visit + (1 + visit | id) + (1 | site)", False),
    ("y ~ x + visit + (1 | id) + cs(visit | id)", True),
    ("y ~ x + visit + (1 | site) + sp_exp(time | id)", False),
    ("y ~ x + visit + (1 | id) + sp_exp(time | id)", True),
    ("y ~ x + visit + (1 + visit | id)", True),
    ("y ~ x + visit + (1 | site) + ar1(visit | grp / id)", True),
    ("y ~ x + C(visit) + us(visit | grp / id)", False),
]


@pytest.mark.parametrize("formula,weights", CASES, ids=[f for f, _ in CASES])
def test_intervals_match_dense_reference(formula, weights):
    df = _data()
    if "(1 | id) + cs" in formula:
        formula = formula.replace("(1 | id) + ", "(1 | site) + ")
    res = lmm.fit(formula, df, weights="w" if weights else None)
    nd = _newdata(df)
    for mode, cond in (("marginal", False), ("conditional", True), ("observed", "observed")):
        fit, conf, pred = _dense_reference(res, nd, mode)
        ci = res.predict(nd, conditional=cond, interval="confidence", level=0.9)
        pi = res.predict(nd, conditional=cond, interval="prediction", level=0.9)
        np.testing.assert_allclose(ci["fit"], fit, rtol=1e-8, atol=1e-8, err_msg=mode)
        np.testing.assert_allclose(ci["se"] ** 2, conf, rtol=1e-7, atol=1e-10, err_msg=mode)
        np.testing.assert_allclose(pi["se"] ** 2, pred, rtol=1e-7, atol=1e-10, err_msg=mode)
        z = 1.6448536269514722
        np.testing.assert_allclose(pi["upper"] - pi["fit"], z * pi["se"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ci["fit"] - ci["lower"], z * ci["se"], rtol=1e-12, atol=1e-12)
        if mode != "observed":  # the point predictions of predict() without an interval
            np.testing.assert_allclose(ci["fit"], res.predict(nd, conditional=cond), rtol=1e-8, atol=1e-8)


def test_observed_gives_back_observed_outcomes():
    df = _data()
    res = lmm.fit("y ~ x + C(visit) + us(visit | id)", df)
    out = res.predict(df.head(6), conditional="observed", interval="prediction")
    np.testing.assert_allclose(out["fit"], df["y"].head(6), rtol=1e-8)
    assert np.all(out["se"] < 1e-6)
    # without random effects, the conditional prediction is the marginal one
    np.testing.assert_allclose(res.predict(df.head(6), conditional=True), res.predict(df.head(6), conditional=False))


def test_new_subject_intervals_and_bad_input():
    df = _data()
    res = lmm.fit("y ~ x + visit + (1 | id) + ar1(visit | id)", df)
    nd = pd.DataFrame(dict(id=["new"], visit=[2], x=[0.0]))
    m = res.predict(nd, conditional=False, interval="prediction")
    c = res.predict(nd, conditional=True, interval="prediction")
    o = res.predict(nd, conditional="observed", interval="prediction")
    # a new subject: every kind is the population prediction with the full variance
    np.testing.assert_allclose(c.to_numpy(), m.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(o.to_numpy(), m.to_numpy(), rtol=1e-10)
    nan = res.predict(pd.DataFrame(dict(id=["s0"], visit=[1], x=[np.nan])), interval="confidence")
    assert nan.isna().all(axis=None)
    with pytest.raises(ArgumentError, match="interval"):
        res.predict(nd, interval="credible")
    with pytest.raises(ArgumentError, match="level"):
        res.predict(nd, interval="confidence", level=95)
    with pytest.raises(ArgumentError, match="conditional"):
        res.predict(nd, conditional="yes")
    with pytest.raises(DataError, match="visit 9"):
        res.predict(pd.DataFrame(dict(id=["s0"], visit=[9], x=[0.0])), interval="prediction")
    with pytest.raises(DataError, match="'visit'"):
        res.predict(pd.DataFrame(dict(id=["s0"], x=[0.0])), interval="prediction")
