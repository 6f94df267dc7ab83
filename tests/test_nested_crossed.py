"""Nested and crossed random effects: the engine against dense likelihoods and the single-factor
engine, and everything else in the package on such models (batches, bootstrap, prediction,
simulation, derivatives, CLI, errors).  Agreement with R is in test_multilevel_reference.py."""

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

import jaxlmm as lmm
from jaxlmm.errors import DataError, FormulaError, LMMError
from jaxlmm.design import FLAT_ROWS
from jaxlmm.likelihood import cluster_layout, deviance
from jaxlmm.pls import aggregate, eliminate
from jaxlmm.spec import cluster_covariance
from jaxlmm.terms import plan_level2

REF = Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def nested():
    return lmm.simulate_nested((("school", 10), ("class", 3)), n_rows=4, sd=(1.0, 0.7), unbalanced=0.1, seed=5)


@pytest.fixture(scope="module")
def crossed():
    return lmm.simulate_crossed(16, 10, fraction=0.8, seed=6)


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


def dense_deviance(model, theta, reml):
    """-2 log L from the dense N x N marginal covariance (scipy), for any random-effects model."""
    spec = model.spec
    th = jnp.asarray(theta)
    cl = cluster_layout(model.arrays, spec)
    V = np.asarray(cluster_covariance(spec.G(th), spec.R(th), spec.level2_G(th), cl))
    dev, A = 0.0, 0.0
    blocks = []
    for c in range(V.shape[0]):
        obs = cl.m[c] > 0
        blocks.append((V[c][np.ix_(obs, obs)], cl.X[c][obs], cl.y[c][obs]))
    A = sum(X.T @ np.linalg.solve(Vc, X) for Vc, X, _ in blocks)
    b = sum(X.T @ np.linalg.solve(Vc, y) for Vc, X, y in blocks)
    beta = np.linalg.solve(A, b)
    for Vc, X, y in blocks:
        dev -= 2 * multivariate_normal(mean=X @ beta, cov=Vc).logpdf(y)
    if reml:
        dev += np.linalg.slogdet(A)[1] - len(beta) * np.log(2 * np.pi)
    return dev


MODELS = [
    ("nested", "y ~ x + trt + (1 | school/class)"),
    ("nested", "y ~ x + trt + (1 + x | school) + (1 | school:class)"),
    ("nested", "y ~ x + (x || school/class)"),
    ("crossed", "y ~ cond + (1 | subject) + (1 | item)"),
    ("crossed", "y ~ cond + (1 + cond | subject) + (1 + cond | item)"),
]


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
@pytest.mark.parametrize("which,formula", MODELS)
def test_deviance_matches_dense_likelihood(which, formula, reml, nested, crossed):
    df = nested if which == "nested" else crossed
    model = lmm.Model(formula, df)
    th = np.random.default_rng(1).normal(scale=0.4, size=model.spec.n_theta)
    ours = float(deviance(jnp.asarray(th), model.payload[1], model.spec, reml))
    assert ours == pytest.approx(dense_deviance(model, th, reml), rel=1e-10)
    # the per-row layout (subjects of one row) computes the same
    other = float(deviance(jnp.asarray(th), model.arrays.to_jax(), model.spec, reml))
    assert other == pytest.approx(ours, rel=1e-11)


@pytest.mark.parametrize("chain", [True, False], ids=["chain", "dense"])
def test_storage_kinds_give_the_same_system(chain):
    """Chained (nested, no fill-in) and dense (crossed, fill-in) storage of one system: a chain
    of classes in schools with a crossed rater factor, against the dense N x N formulas."""
    rng = np.random.default_rng(3)
    N = 300
    cls = rng.integers(0, 40, N)
    school = cls // 5
    rater = rng.integers(0, 9, N)
    Z = {"cls": np.ones((N, 1)), "school": np.column_stack([np.ones(N), rng.normal(size=N)]), "rater": np.ones((N, 1))}
    codes = {"cls": cls, "school": school, "rater": rater}
    factors = [(nm, codes[nm], int(codes[nm].max()) + 1, [j], Z[nm].shape[1]) for j, nm in enumerate(codes)]
    plan, idx = plan_level2(factors, N, chain=chain)
    assert (plan.n_chain == 2) == chain  # cls nested in school: a chain of two, rater in the tail
    X = np.column_stack([np.ones(N), rng.normal(size=N)])
    y = rng.normal(size=N)
    lams = [np.tril(rng.normal(size=(f.k, f.k))) for f in plan.factors]
    Z2 = np.concatenate([Z[f.name] for f in plan.factors], axis=1)
    sig = 0.9
    idx_j = jax.tree.map(jnp.asarray, idx)
    B = aggregate(jnp.asarray(Z2[:, None] / sig), jnp.asarray(np.column_stack([X, y])[:, None] / sig), idx_j, plan)
    S, logM = eliminate([jnp.asarray(L) for L in lams], B, idx_j, plan)
    V = sig**2 * np.eye(N)
    for f, L in zip(plan.factors, lams):
        V += (codes[f.name][:, None] == codes[f.name][None, :]) * (Z[f.name] @ L @ L.T @ Z[f.name].T)
    W = np.linalg.inv(V)
    np.testing.assert_allclose(np.asarray(S[:2, :2]), X.T @ W @ X, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(S[:2, 2]), X.T @ W @ y, rtol=1e-10)
    assert float(S[2, 2]) == pytest.approx(y @ W @ y, rel=1e-10)
    assert N * np.log(sig**2) + float(logM) == pytest.approx(np.linalg.slogdet(V)[1], rel=1e-10)


def _single_factor_cases():
    cases = json.loads((REF / "reference.json").read_text())["cases"]
    return [c for c in cases if c["engine"] != "nlme::gls"]


@pytest.mark.parametrize("case", _single_factor_cases(), ids=lambda c: c["case"])
def test_general_engine_equals_single_factor_engine(case):
    """Every single-factor reference model computed by the nested/crossed engine (its factor as
    a level-2 factor): the same deviance function to 1e-10 and the same fit."""
    df = pd.read_csv(REF / "data" / case["dataset"])
    f, reml = case["jaxlmm_formula"], case["reml"]
    a, b = lmm.Model(f, df, engine="subjects"), lmm.Model(f, df, engine="general")
    assert a.spec.plan is None and b.spec.plan is not None
    th = np.random.default_rng(2).normal(scale=0.3, size=a.spec.n_theta)
    da = float(deviance(jnp.asarray(th), a.payload[1], a.spec, reml))
    db = float(deviance(jnp.asarray(th), b.payload[1], b.spec, reml))
    assert db == pytest.approx(da, rel=1e-10)
    ra, rb = quiet(a.fit, reml=reml), quiet(b.fit, reml=reml)
    assert rb.deviance == pytest.approx(ra.deviance, rel=1e-10)
    np.testing.assert_allclose(rb.fixef, ra.fixef, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rb.theta, ra.theta, rtol=1e-3, atol=1e-4)


def test_large_groups_go_to_the_level2_engine():
    """One grouping factor, no covariance term, groups of more than FLAT_ROWS rows: "auto"
    computes it by the level-2 engine (k x k per level), with the same fit as per subject;
    groups of at most FLAT_ROWS rows stay per subject; "subjects" forces the per-subject layout."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 40, size=60)
    g = np.repeat(np.arange(60), sizes)
    n = len(g)
    x = rng.normal(size=n)
    y = 2 + 0.5 * x + rng.normal(size=60)[g] + 0.4 * rng.normal(size=60)[g] * x + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g]})
    f = "y ~ x + (x | g)"
    auto, subj = lmm.Model(f, df), lmm.Model(f, df, engine="subjects")
    assert auto.payload[0] == "flat" and subj.spec.plan is None
    ra, rs = quiet(auto.fit), quiet(subj.fit)
    assert ra.deviance == pytest.approx(rs.deviance, rel=1e-10)
    np.testing.assert_allclose(ra.fixef, rs.fixef, rtol=1e-6)
    np.testing.assert_allclose(ra.coef_table["std_error"], rs.coef_table["std_error"], rtol=1e-5)
    np.testing.assert_allclose(ra.coef_table["df"], rs.coef_table["df"], rtol=1e-4)
    ba, bs = ra.ranef, rs.ranef
    assert list(ba.columns) == list(bs.columns) and len(ba) == 60
    np.testing.assert_allclose(ba.loc[bs.index].to_numpy(), bs.to_numpy(), rtol=1e-4, atol=1e-6)
    small = df[df.groupby("g").cumcount() < FLAT_ROWS]
    assert lmm.Model(f, small).spec.plan is None
    with pytest.raises(LMMError, match="engine='subjects'"):
        lmm.influence(ra)


def test_nested_batch_equals_single_fits_and_is_bit_identical_whatever_the_chunks(nested):
    res = quiet(lmm.fit, "y ~ x + trt + (1 | school/class)", nested)
    Y = res.simulate(n=40, seed=3).to_numpy().T.copy()
    Y[5, :7] = np.nan  # replicate 5 has its own missing cells
    batch = res.model.fit_batch(Y, start=res)
    assert batch.path == "flat" and batch.converged.all()
    for i in (0, 5):
        d = nested.copy()
        d["y"] = Y[i]
        single = quiet(lmm.fit, "y ~ x + trt + (1 | school/class)", d)
        assert batch.deviance[i] == pytest.approx(single.deviance, rel=1e-8)
        np.testing.assert_allclose(batch.fixef[i], single.fixef, rtol=1e-6)
    again = res.model.fit_batch(Y, start=res, chunk_size=33)
    np.testing.assert_array_equal(again.deviance, batch.deviance)
    np.testing.assert_array_equal(again.theta, batch.theta)


def test_bootstrap_of_crossed_model_recovers_spread(crossed):
    res = quiet(lmm.fit, "y ~ cond + (1 | subject) + (1 | item)", crossed)
    boot = res.bootstrap(n=96, seed=4)
    assert boot.n_failed == 0
    ci = boot.conf_int()
    for name in ("sd[(Intercept)|subject]", "sd[(Intercept)|item]", "sigma", "cond"):
        assert ci.loc[name, "lower"] < res.theta.get(name, res.fixef.get(name)) < ci.loc[name, "upper"]
    a, b = res.bootstrap(n=40, seed=9), res.bootstrap(n=96, seed=9)  # replicate r: the same draws
    np.testing.assert_array_equal(a.batch.deviance, b.batch.deviance[:40])


def test_simulation_draws_every_factor():
    design = lmm.simulate_nested((("school", 40), ("class", 5)), n_rows=4, seed=1).drop(columns="y")
    model = lmm.Model("y ~ 1 + (1 | school/class)", design)
    params = {"fixef": [10.0], "theta": {"sd[(Intercept)|school]": 2.0, "sd[(Intercept)|class:school]": 1.0,
                                         "sigma": 0.5}}
    Y = model.simulate(params, n=200, seed=2).to_numpy().T.copy()
    d = design.assign(y=Y[0])
    fits = [quiet(lmm.fit, "y ~ 1 + (1 | school/class)", design.assign(y=Y[i])) for i in range(3)]
    sds = np.mean([[f.theta.iloc[0], f.theta.iloc[1], f.theta.iloc[2]] for f in fits], axis=0)
    np.testing.assert_allclose(sds, [2.0, 1.0, 0.5], rtol=0.25)
    # total variance of a row: 4 + 1 + 0.25
    assert np.var(Y[:, 0]) == pytest.approx(5.25, rel=0.25)
    assert d.shape[0] == design.shape[0]


def test_ranef_fitted_predict_per_factor(nested, crossed):
    res = quiet(lmm.fit, "y ~ cond + (1 | subject) + (1 | item)", crossed)
    re = res.ranef
    assert set(re) == {"subject", "item"} and set(res.ranef_sd) == {"subject", "item"}
    assert re["subject"].shape == (16, 1) and re["item"].index.name == "item"
    # fitted = X beta + b_subject + b_item, and predict on the data gives the same
    X = np.column_stack([np.ones(len(crossed)), crossed["cond"]])
    manual = X @ res.fixef.to_numpy() + re["subject"].loc[crossed["subject"]].to_numpy()[:, 0] + \
        re["item"].loc[crossed["item"]].to_numpy()[:, 0]
    np.testing.assert_allclose(res.fitted().to_numpy(), manual, rtol=1e-10)
    np.testing.assert_allclose(res.predict(crossed), manual, rtol=1e-10)
    np.testing.assert_allclose(res.residuals().to_numpy(), crossed["y"] - manual, rtol=1e-8, atol=1e-10)
    # a new item gets the population prediction for the item factor only
    new = pd.DataFrame({"subject": ["S01", "S01"], "item": ["I01", "NEW"], "cond": [0.5, 0.5]})
    p = res.predict(new)
    base = res.fixef["(Intercept)"] + 0.5 * res.fixef["cond"] + re["subject"].loc["S01", "(Intercept)"]
    assert p[1] == pytest.approx(base) and p[0] == pytest.approx(base + re["item"].loc["I01", "(Intercept)"])
    # nested: interaction levels are "class:school"
    rn = quiet(lmm.fit, "y ~ x + trt + (1 | school/class)", nested)
    assert list(rn.ranef) == ["school", "class:school"]
    assert rn.ranef["class:school"].index[0] == "1:S01"
    cov = rn.random_covariance
    assert set(cov) == {"school", "class:school"}
    assert rn.group_counts() == {"school": 10, "class:school": 30}


def test_summary_names_groups_and_compiles_no_other_layout(nested, compiled):
    model = lmm.Model("y ~ x + trt + (1 | school/class)", nested)
    res = quiet(model.fit)
    before = list(compiled)
    text = res.summary()
    after = compiled[len(before):]
    assert "groups: school, 10, class:school, 30" in text and "Random effects" in text
    assert "class:school  (Intercept)" in text
    # only the Satterthwaite pieces (derivatives of (X'V^-1X)^-1) were compiled, on the fit's payload
    assert not any(n in after for n in ("_fit_compiled", "_value_and_grad")), after
    assert any("_phi_and_jacobian" in n for n in after), after


def test_inference_on_nested_and_crossed(nested, crossed):
    rn = quiet(lmm.fit, "y ~ x + trt + (1 | school/class)", nested)
    kr = rn.with_ddf("kenward-roger")
    assert kr.coef_table.loc["trt", "df"] < 12  # trt varies between schools
    assert rn.test({"trt": 1.0})["den_df"] == pytest.approx(rn.coef_table.loc["trt", "df"])
    V = rn.vcov_sandwich("CR2")  # clusters: the schools
    assert V.shape == (3, 3) and np.all(np.diag(V) > 0)
    rc = quiet(lmm.fit, "y ~ cond + (1 | subject) + (1 | item)", crossed)
    with pytest.raises(LMMError, match="one cluster"):
        rc.vcov_sandwich()
    with pytest.raises(LMMError, match="no subject"):
        rc.with_ddf("between-within").coef_table
    # LS-means of a categorical condition: the two cell means of the crossed model
    cat = crossed.assign(c=np.where(crossed["cond"] > 0, "hi", "lo"))
    rcat = quiet(lmm.fit, "y ~ c + (1 | subject) + (1 | item)", cat)
    em = rcat.emmeans("c").set_index("c")
    b = rcat.fixef
    assert em.loc["hi", "emmean"] == pytest.approx(b["(Intercept)"], rel=1e-10)
    assert em.loc["lo", "emmean"] == pytest.approx(b["(Intercept)"] + b["c[T.lo]"], rel=1e-10)
    assert em.loc["hi", "std_error"] == pytest.approx(rcat.coef_table.loc["(Intercept)", "std_error"], rel=1e-10)
    assert 0 < em.loc["hi", "df"] < len(cat)
    tab = rc.theta_table
    assert list(tab.index) == ["sd[(Intercept)|subject]", "sd[(Intercept)|item]", "sigma"]
    assert np.all(tab["ci_lower"] < tab["estimate"])


def test_compare_nested_models_uses_the_boundary_mixture(nested):
    a = quiet(lmm.fit, "y ~ x + trt + (1 | school)", nested, reml=False)
    b = quiet(lmm.fit, "y ~ x + trt + (1 | school/class)", nested, reml=False)
    t = lmm.compare(a, b)
    assert t.iloc[1]["reference"] == "0.5*chi2(0) + 0.5*chi2(1)"
    assert t.iloc[1]["LRT"] == pytest.approx(2 * (b.loglik - a.loglik))


def test_solve_and_implicit_derivatives_on_a_nested_model(nested):
    model = lmm.Model("y ~ x + trt + (1 | school/class)", nested)
    res = quiet(model.fit)
    data, spec = model.arrays.to_jax(), model.spec
    sol = lmm.solve(data, spec)
    assert float(sol.deviance) == pytest.approx(res.deviance, rel=1e-9)
    np.testing.assert_allclose(sol.beta, res.fixef, rtol=1e-5)  # two optimisers, each to 1e-11
    # d beta / d y against finite differences of refits
    g = jax.jacfwd(lambda y: lmm.solve(data._replace(y=y), spec, tol=1e-20).beta[1])(data.y)
    i = 3
    h = 1e-4
    up = lmm.solve(data._replace(y=data.y.at[i, 0].add(h)), spec, tol=1e-20).beta[1]
    dn = lmm.solve(data._replace(y=data.y.at[i, 0].add(-h)), spec, tol=1e-20).beta[1]
    assert float(g[i, 0]) == pytest.approx(float((up - dn) / (2 * h)), rel=1e-5, abs=1e-9)
    with pytest.raises(LMMError, match="weights are not supported"):
        lmm.solve(data, spec, weights=np.ones(data.y.shape[0]))
    with pytest.raises(LMMError, match="not available for this model"):
        res.influence()
    assert abs(float(lmm.loglik(lmm.params_from_result(quiet(model.fit, reml=False)), model)) + 0.5 *
               quiet(model.fit, reml=False).deviance) < 1e-7


def test_cli_fits_a_nested_model(nested, tmp_path, capsys):
    from jaxlmm.cli import main

    path = tmp_path / "d.csv"
    nested.to_csv(path, index=False)
    assert main(["fit", str(path), "y ~ x + trt + (1 | school/class)"]) == 0
    out = capsys.readouterr().out
    assert "class:school" in out and "sd[(Intercept)|school]" in out


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


def test_errors_name_the_term_and_the_fix(nested, crossed):
    with pytest.raises(DataError, match=r"Column 'klass' \(grouping factor of \(1 \| school/klass\)\) is not in the data"):
        lmm.Model("y ~ x + (1 | school/klass)", nested)
    with pytest.raises(DataError, match=r"Column 'sku' \(grouping factor of \(1 \| subject:sku\)\)"):
        lmm.Model("y ~ cond + (1 | subject:sku)", crossed)
    one = nested.assign(region="R1")
    with pytest.raises(DataError, match=r"grouping factor 'region' of \(1 \| region\) has only 1 level"):
        lmm.Model("y ~ x + (1 | school) + (1 | region)", one)
    with pytest.raises(DataError, match=r"'school' has 4 levels in the usable rows but 4 correlated random effects.*"
                                        r"needs at least 5 levels"):
        lmm.Model("y ~ x + (1 + x + trt + I(x**2) | school) + (1 | school:class)", nested.iloc[:35])
    few = pd.DataFrame({"g": ["a", "a", "b", "b", "c", "c"], "h": ["u", "v", "w", "x", "y", "z"],
                        "y": [1.0, 2.0, 0.5, 1.5, 2.5, 0.0]})
    with pytest.raises(DataError, match=r"grouping factor 'h' has 6 levels x 1 random effects.*not fewer than the 6 usable "
                                        r"rows"):
        lmm.Model("y ~ 1 + (1 | g) + (1 | h)", few)
    with pytest.raises(FormulaError, match=r"group the rows identically"):
        lmm.Model("y ~ x + (1 | school:class) + (1 | class:school)", nested)


def test_dense_limit_error_says_the_limit_and_what_to_do():
    rng = np.random.default_rng(0)
    n = 14000
    d = pd.DataFrame({"a": rng.integers(0, 7000, n).astype(str), "b": rng.integers(0, 7000, n).astype(str),
                      "y": rng.normal(size=n)})
    with pytest.raises(DataError, match=r"dense block of \d+ x \d+.*up to 6000.*Drop or coarsen"):
        lmm.Model("y ~ 1 + (1 | a) + (1 | b)", d)


def test_covariance_term_absorbs_a_subject_term_from_nested_syntax():
    d = lmm.simulate_longitudinal(40, 4, cov="un", n_sites=5, seed=3)
    with pytest.warns(UserWarning, match=r"\(1 \| subject:site\) \(from \(1 \| site/subject\)\) is a random effect per "
                                         r"subject, which un\(visit \| subject\) already contains"):
        res = lmm.fit("y ~ time + (1 | site/subject) + un(visit | subject)", d)
    assert list(res.random_covariance) == ["site"]
    with pytest.raises(FormulaError, match="not identifiable"):
        lmm.Model("y ~ time + (1 | site) + (1 | subject) + un(visit | subject)", d)
    with pytest.raises(FormulaError, match="varies within the subjects"):
        lmm.Model("y ~ time + (1 | visit) + ar1(visit | subject)", d)


def test_fit_many_refuses_level2_models(nested):
    with pytest.raises(DataError, match="fit_many stacks datasets with one grouping factor"):
        lmm.fit_many("y ~ x + (1 | school/class)", [nested, nested])
