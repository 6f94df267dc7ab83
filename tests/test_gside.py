"""Structured covariances of random-effect terms (G side: re_cs, re_csh, re_ar1, re_diag,
re_us) against glmmTMB and nlme (tests/reference/gside), REML and ML; special cases (re_us =
the plain term, re_diag = the || term); the table checks of the block; errors."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm
from helpers import assert_gradient
from jaxlmm.covariance import make_structure
from jaxlmm.errors import FormulaError
from jaxlmm.gside import StructuredBlock

HERE = Path(__file__).resolve().parent / "reference" / "gside"
REF = json.loads((HERE / "reference.json").read_text())["cases"]
DATA = HERE / "data" / "gside.csv"


@pytest.mark.parametrize("key", sorted(REF))
def test_against_glmmtmb_and_nlme(key):
    case = REF[key]
    df = pd.read_csv(DATA)
    res = lmm.fit(case["jaxlmm_formula"], df, reml=case["reml"])
    assert res.converged and res.n_obs == case["n_obs"]
    assert abs(res.deviance - case["deviance"]) <= 1e-6 * abs(case["deviance"])
    ours = {n.replace("[T.", "").replace("]", ""): row for n, row in res.coef_table.iterrows()}
    for name, b in case["fixef"].items():
        se = case["se"][name]
        assert abs(ours[name].estimate - b) <= 1e-4 * max(abs(b), se), name
        assert abs(ours[name].std_error - se) <= 1e-3 * se, name
    G = res.random_covariance["subject"].to_numpy()
    sd = np.sqrt(np.diag(G))
    np.testing.assert_allclose(sd, case["sd"], rtol=1e-4)
    np.testing.assert_allclose(G / np.outer(sd, sd), np.asarray(case["corr"]), atol=1e-4)
    assert abs(res.theta["sigma"] - case["sigma"]) <= 1e-4 * case["sigma"]


def test_special_cases_and_nesting():
    df = pd.read_csv(DATA)
    us = lmm.fit("y ~ arm + cond + x + re_us(0 + cond | subject)", df)
    plain = lmm.fit("y ~ arm + cond + x + (0 + cond | subject)", df)
    assert us.deviance == pytest.approx(plain.deviance, rel=1e-10)
    diag = lmm.fit("y ~ arm + cond + x + re_diag(0 + cond | subject)", df)
    unc = lmm.fit("y ~ arm + cond + x + (0 + cond || subject)", df)
    assert diag.deviance == pytest.approx(unc.deviance, rel=1e-8)
    cs = lmm.fit("y ~ arm + cond + x + re_cs(0 + cond | subject)", df)
    csh = lmm.fit("y ~ arm + cond + x + re_csh(0 + cond | subject)", df)
    ar1 = lmm.fit("y ~ arm + cond + x + re_ar1(0 + cond | subject)", df)
    assert cs.deviance >= csh.deviance - 1e-6 >= plain.deviance - 2e-6
    t = lmm.compare(cs, csh, plain)
    assert list(t["df"].iloc[1:]) == [3, 5]
    assert lmm.compare(ar1, plain)["df"].iloc[1] == 8
    # a structured block with other terms, a covariance term, KR, profiles and simulation
    both = lmm.fit("y ~ arm + cond + x + re_ar1(0 + cond | subject) + (1 | subject)", df)
    assert both.converged
    kr = ar1.with_ddf("kenward-roger").coef_table
    assert np.all(np.isfinite(kr["df"]))
    ci = ar1.conf_int(method="profile", which=["rho[subject]"])
    assert ci.loc["rho[subject]", "lower"] < ar1.theta["rho[subject]"] < ci.loc["rho[subject]", "upper"]
    sims = ar1.simulate(2, seed=1)
    batch = ar1.model.fit_batch(sims.to_numpy().T)
    np.testing.assert_allclose(batch.deviance, [ar1.refit(sims[c]).deviance for c in sims], rtol=1e-8)


@pytest.mark.parametrize("name", ["diag", "cs", "csh", "ar1", "arh1", "toep", "un"])
def test_block_table_checks(name):
    b = StructuredBlock(tuple(f"c{i}" for i in range(4)), "g", make_structure(name, 4))
    rng = np.random.default_rng(2)
    th = rng.normal(scale=0.6, size=b.n_params)
    G = np.asarray(b.matrix(jnp.asarray(th)))
    L = np.asarray(b.chol(jnp.asarray(th)))
    np.testing.assert_allclose(L @ L.T, G, rtol=1e-12)
    assert np.linalg.eigvalsh(G).min() > 0
    assert len(b.names()) == b.n_params == len(b.natural_bounds())
    nat = np.asarray(b.natural(jnp.asarray(th)))
    np.testing.assert_allclose(b.from_natural(nat), th, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(b.natural_chol(jnp.asarray(nat)), L, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.sas_matrix(b.sas_params(jnp.asarray(th))), G, rtol=1e-9, atol=1e-12)
    # unit scaling: the response x s_y and the columns x s_z move the parameters to the same G
    ly, lz = 0.7, np.full(4, -0.3)
    mult, shift = b.unit_scaling(ly, lz, np)
    G2 = np.asarray(b.matrix(jnp.asarray(mult * th + shift)))
    np.testing.assert_allclose(G2, G * np.exp(2 * (ly - lz[0])), rtol=1e-10)
    f = lambda t: jnp.sum(jnp.sin(b.chol(t)))
    assert_gradient(f, th)


def test_errors_name_the_term():
    df = pd.read_csv(DATA)
    with pytest.raises(FormulaError, match="re_cs.*re_diag|valid"):
        lmm.fit("y ~ cond + re_xx(0 + cond | subject)", df)
    with pytest.raises(FormulaError, match="one random effect"):
        lmm.fit("y ~ cond + re_cs(1 | subject)", df)
    with pytest.raises(FormulaError, match="one '\\|'"):
        lmm.fit("y ~ cond + re_cs(0 + cond || subject)", df)
