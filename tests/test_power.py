"""Power analysis by simulation (jaxlmm.power): analytic power, type I error, reproducibility,
batched Satterthwaite df, sample size, errors.

Every test uses the same analysis model and template size, so the compiled program is shared
(one compile for the module, one more for the chunk-size check)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import jaxlmm as lmm
from jaxlmm.errors import DataError, FormulaError, LMMError
from jaxlmm.inference import satterthwaite_df_batch

VISITS = ("V1", "V2", "V3")
SD = (1.0, 1.2, 1.5)
CORR = {"corr[V1,V2]": 0.5, "corr[V1,V3]": 0.4, "corr[V2,V3]": 0.6}
THETA = {**{f"sd[{v}]": s for v, s in zip(VISITS, SD)}, **CORR}
FORMULA = "y ~ arm * visit + un(visit | subject)"
# treatment difference at the last visit: arm main effect + its interaction with V3
HYP = {"arm[T.TRT]": 1.0, "arm[T.TRT]:visit[T.V3]": 1.0}
N = 20
DESIGN = lmm.Design(N, visits=VISITS, dropout=lmm.Dropout.mar(0.15, slope=-1.0))
TRUTH = lmm.Truth({"(Intercept)": 1.0}, THETA)
DELTA = 1.0
NSIM = 1000


def mc_tol(p, n):
    return 3 * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def study():
    grid = [
        {"dropout": 0.0, "effect": 0.0},
        {"dropout": 0.0, "effect": DELTA},
        {"dropout": 0.15, "effect": 0.0},  # MAR dropout depending on the last value
    ]
    return lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid=grid, nsim=NSIM, seed=11, replicates=True)


def test_power_matches_noncentral_t(study):
    """Complete data, saturated means, UN: the estimate is the difference of the two arms' V3
    means, t = est / se ~ noncentral t with 2n - 2 df and ncp delta / sqrt(2 sigma3^2 / n)."""
    out, _ = study
    row = out.iloc[1]
    df = 2 * N - 2
    ncp = DELTA / np.sqrt(2 * SD[2] ** 2 / N)
    q = stats.t.ppf(0.975, df)
    analytic = stats.nct.sf(q, df, ncp) + stats.nct.cdf(-q, df, ncp)
    assert row.n_ok == NSIM and row.n_failed == 0
    assert abs(row.power - analytic) < mc_tol(analytic, row.n_ok), (row.power, analytic)
    assert row.power_lower < row.power < row.power_upper
    assert row.rejections == round(row.power * row.n_ok)
    # Satterthwaite df of a single-visit contrast with complete balanced data: 2n - 2
    assert abs(row.mean_df - df) < 0.5
    # operating characteristics of the same scenario
    assert abs(row.bias) < 3 * row.empirical_se / np.sqrt(row.n_ok)
    assert abs(row.empirical_se / np.sqrt(2 * SD[2] ** 2 / N) - 1) < 0.1
    assert np.isnan(row.type1_error) and row.true_value == DELTA


@pytest.mark.parametrize("scenario", [0, 2])
def test_type1_error_and_coverage_near_nominal(study, scenario):
    out, per = study
    row = out.iloc[scenario]
    assert row.true_value == 0.0 and row.type1_error == row.power
    assert abs(row.type1_error - 0.05) < mc_tol(0.05, row.n_ok)
    assert abs(row.coverage - 0.95) < mc_tol(0.05, row.n_ok)
    if scenario == 2:
        assert 0.6 < row.observed_fraction < 0.9  # dropout happened
        assert row.n_ok >= NSIM - 5
    else:
        assert row.observed_fraction == 1.0
    sel = per[per.scenario == scenario]
    np.testing.assert_allclose(sel.reject.mean(), row.power)


def test_bit_identical_whatever_chunking():
    grid = {"n_per_arm": [12, N], "effect": [0.5]}
    a, ra = lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid=grid, nsim=40, seed=3, replicates=True)
    b, rb = lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid=grid, nsim=40, seed=3, replicates=True, chunk_size=128)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    # a shorter run: the same trials, fitted in other positions of other chunks
    c, rc = lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid=grid, nsim=25, seed=3, replicates=True)
    pd.testing.assert_frame_equal(rc.reset_index(drop=True),
                                  ra[ra.replicate < 25].reset_index(drop=True), check_exact=True)
    d = lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid=grid, nsim=40, seed=4)
    assert not np.array_equal(a.mean_estimate, d.mean_estimate)


def test_batched_satterthwaite_df_equals_single_fit():
    sim = lmm.simulate_trials(FORMULA, DESIGN, TRUTH, grid={"dropout": [0.3]}, replicates=[0, 1], seed=5)
    frames = [g.drop(columns="replicate").reset_index(drop=True) for _, g in sim.groupby("replicate")]
    fits = [lmm.fit(FORMULA, f) for f in frames]
    assert all(r.converged for r in fits)
    model = lmm.Model(FORMULA, frames[0].drop(columns="y"))  # every row: Y carries each trial's NaNs
    theta = np.stack([r.theta_unconstrained for r in fits])
    Y = np.stack([f["y"].to_numpy() for f in frames])
    c = np.array([HYP.get(n, 0.0) for n in fits[0].fixef.index])
    L = np.vstack([np.eye(fits[0].p), c])
    dfs = satterthwaite_df_batch(model, theta, Y, L)
    for i, r in enumerate(fits):
        np.testing.assert_allclose(dfs[i, :-1], r.coef_table["df"], rtol=1e-8)
        np.testing.assert_allclose(dfs[i, -1], r.test(dict(zip(r.fixef.index, c)))["den_df"], rtol=1e-8)
    # the power program's own fits and df on the same trials
    _, per = lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid={"dropout": [0.3]}, nsim=2, seed=5, replicates=True)
    for i, r in enumerate(fits):
        t = r.test(dict(zip(r.fixef.index, c)))
        # BFGS stops at a deviance decrement of 1e-11 (1 + |f|): estimates agree to ~1e-6 of their SE
        assert abs(per.estimate[i] - t["estimate"]) < 1e-5 * t["std_error"]
        np.testing.assert_allclose(per.std_error[i], t["std_error"], rtol=1e-5)
        np.testing.assert_allclose(per.df[i], t["den_df"], rtol=1e-4)
        assert per.n_obs[i] == r.n_obs


def test_residual_and_between_within_df():
    out, per = lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid={"dropout": [0.0]}, nsim=8, ddf="residual", replicates=True)
    # complete data: N - p = 2 n T - 6
    assert (per.df == 2 * N * 3 - 6).all() and out.ddf[0] == "residual"
    out = lmm.power(FORMULA, DESIGN, TRUTH, "arm[T.TRT]", grid={"dropout": [0.0]}, nsim=8, ddf="between-within")
    assert out.mean_df[0] == 2 * N - 2  # arm is between subjects: S - rank(X_between) = 40 - 2


def test_sample_size_finds_the_smallest_n():
    ss = lmm.sample_size(FORMULA, DESIGN, TRUTH, HYP, target_power=0.8, n_range=(4, N), nsim=200,
                         scenario={"effect": 1.4, "dropout": 0.0}, seed=2)
    assert ss.n_per_arm is not None and 4 < ss.n_per_arm <= N
    tab = ss.table.set_index("n_per_arm")
    assert tab.loc[ss.n_per_arm, "power"] >= 0.8
    below = tab.index[tab.index < ss.n_per_arm]
    assert len(below) and tab.loc[below.max(), "power"] < 0.8
    assert ss.power_lower <= ss.power <= ss.power_upper
    assert "n_per_arm=" in repr(ss)


def test_wilson_interval():
    from jaxlmm.power import wilson_interval

    lo, hi = wilson_interval(0, 50)
    assert abs(lo) < 1e-15 and 0 < hi < 0.08
    lo, hi = wilson_interval(25, 50)
    np.testing.assert_allclose(0.5 - lo, hi - 0.5)


def test_design_frame_and_dropout():
    d = lmm.Design(4, visits=("a", "b"), times=(0, 2.5), arms=("C", "T", "U"), covariates={"BASE": (50, 8)},
                   subject="USUBJID", arm="ARMCD", visit="AVISIT", time="TIME")
    f = d.frame()
    assert list(f.columns) == ["USUBJID", "ARMCD", "AVISIT", "TIME", "BASE"]
    assert len(f) == 4 * 2 * 3 and list(f.ARMCD.cat.categories) == ["C", "T", "U"]
    # covariate values of subject i do not depend on n
    g = d.frame(6)
    np.testing.assert_array_equal(f[f.USUBJID == "T-000003"].BASE.to_numpy(),
                                  g[g.USUBJID == "T-000003"].BASE.to_numpy())
    assert lmm.Dropout.mcar(0.2, monotone=False).logits(3)[0] == -np.inf


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, "arm[T.TRT]:visit[T.V9]"), FormulaError, "hypothesis"),
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, [1.0, 2.0]), LMMError, "hypothesis: a contrast vector needs 6"),
        (lambda: lmm.Truth({}, THETA, structure="toeplitz"), LMMError, r"Truth\(structure='toeplitz'\)"),
        (lambda: lmm.Dropout.mcar(1.5), LMMError, r"Dropout\(rate=...\) must be a probability in \[0, 1\]"),
        (lambda: lmm.Dropout.mcar(-0.1), LMMError, "Dropout"),
        (lambda: lmm.Dropout(0.1, slope=1.0, monotone=False), LMMError, "must be MCAR"),
        (lambda: lmm.Design(0), LMMError, "n_per_arm"),
        (lambda: lmm.Design(5, visits=("V1", "V1")), LMMError, "visits"),
        (lambda: lmm.Design(5, visits=("V1", "V2"), dropout=lmm.Dropout.mcar((0.1, 0.2))), LMMError,
         "one per post-baseline visit"),
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid={"n_per_armm": [5]}), LMMError, "grid: 'n_per_armm'"),
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid={"dropout": [1.2]}), LMMError, "grid: dropout"),
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, HYP, ddf="kenward-roger"), LMMError, "ddf="),
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, HYP, nsim=1), LMMError, "nsim"),
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, HYP, alpha=5), LMMError, "alpha"),
        (lambda: lmm.power(FORMULA, DESIGN, lmm.Truth({}, {"sigma": 1.0}), HYP), DataError, r"Truth\(theta=...\)"),
        (lambda: lmm.power(FORMULA, DESIGN, lmm.Truth({"armTRT": 1.0}, THETA), HYP), DataError,
         r"Truth\(fixef=...\).*Did you mean 'arm\[T.TRT\]'"),
        (lambda: lmm.power("y ~ ARMCD + un(visit | subject)", DESIGN, TRUTH, HYP), LMMError, "design's columns"),
        (lambda: lmm.power(FORMULA, lmm.Design(5, visits=("V1", "V2")), TRUTH, HYP, grid={"effect": [1.0]}),
         LMMError, r"Truth\(theta=...\).*expected exactly the names"),
        (lambda: lmm.sample_size(FORMULA, DESIGN, TRUTH, HYP, target_power=1.2), LMMError, "target_power"),
        (lambda: lmm.sample_size(FORMULA, DESIGN, TRUTH, HYP, n_range=(10, 5)), LMMError, "n_range"),
        (lambda: lmm.power(FORMULA, lmm.Design(5, visits=VISITS), TRUTH, HYP, grid={"dropout": [0.1]}), LMMError,
         "the design has none"),
        (lambda: lmm.power(FORMULA, DESIGN, lmm.Truth({}, THETA, formula="arm + visit"), HYP, grid={"effect": [1.0]}),
         LMMError, "grid: 'effect' sets the true value of the hypothesis"),
        (lambda: lmm.simulate_trials(FORMULA, DESIGN, TRUTH, grid={"effect": [1.0]}), LMMError, "pass hypothesis="),
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, HYP, grid=[1, 2]), LMMError, "grid must be"),
        (lambda: lmm.power(FORMULA, DESIGN, TRUTH, HYP, chunk_size=0), LMMError, "chunk_size"),
        (lambda: lmm.power(FORMULA, "design", TRUTH, HYP), LMMError, "design must be"),
    ],
)
def test_errors_name_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_intermittent_dropout_and_random_effects_agree_with_single_fits():
    """Intermittent MCAR (up to 2^(T-1) visit patterns) with a random-intercept analysis model:
    the power program's estimates, SEs and df equal single fits of the same simulated trials."""
    formula = "y ~ arm * visit + (1 | subject)"
    design = lmm.Design(12, visits=VISITS, dropout=lmm.Dropout.mcar(0.3, monotone=False))
    truth = lmm.Truth({"(Intercept)": 1.0}, {"sd[(Intercept)|subject]": 1.0, "sigma": 0.8}, structure="id",
                      random="(1 | subject)")
    sim = lmm.simulate_trials(formula, design, truth, grid={"effect": [0.5]}, replicates=[0, 1], seed=9,
                              hypothesis=HYP)
    _, per = lmm.power(formula, design, truth, HYP, grid={"effect": [0.5]}, nsim=2, seed=9, replicates=True)
    for i, (_, g) in enumerate(sim.groupby("replicate")):
        d = g.drop(columns="replicate").reset_index(drop=True)
        obs = d.dropna(subset=["y"])
        assert obs.groupby("subject").size().min() >= 1 and d["y"].isna().any()
        seen = d.pivot(index="subject", columns="visit", values="y").notna().to_numpy()
        assert np.any(~seen[:, :-1] & seen[:, 1:]), "no intermittent gap (a missing visit before an observed one)"
        r = lmm.fit(formula, d, warn=False)
        t = r.test(dict(zip(r.fixef.index, [HYP.get(n, 0.0) for n in r.fixef.index])))
        assert abs(per.estimate[i] - t["estimate"]) < 1e-5 * t["std_error"]
        np.testing.assert_allclose(per.std_error[i], t["std_error"], rtol=1e-5)
        np.testing.assert_allclose(per.df[i], t["den_df"], rtol=1e-4)
        assert per.n_obs[i] == r.n_obs
