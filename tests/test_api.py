"""The public result object and the user-facing behaviour of a single fit."""

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm


@pytest.fixture(scope="module")
def trial():
    return lmm.example_trial()


@pytest.fixture(scope="module")
def un_fit(trial):
    return lmm.fit("CHG ~ ARMCD * AVISIT + BASE + un(AVISIT | USUBJID)", trial)


@pytest.fixture(scope="module")
def re_data():
    return lmm.simulate_longitudinal(40, 6, seed=5, cov="id", sd=1.0, re_sd=(2.0, 0.5), re_corr=0.3,
                                     missing="intermittent", missing_rate=0.1)


@pytest.fixture(scope="module")
def re_fit(re_data):
    return lmm.fit("y ~ time + arm + (time | subject)", re_data)


def test_example_trial_is_deterministic():
    a, b = lmm.example_trial(), lmm.example_trial()
    pd.testing.assert_frame_equal(a, b)
    assert a.CHG.isna().sum() > 0  # dropout
    # monotone dropout: once missing, missing for the rest of the visits
    wide = a.pivot(index="USUBJID", columns="AVISIT", values="CHG").notna().to_numpy()
    assert np.all(np.diff(wide.astype(int), axis=1) <= 0)


def test_result_attributes(un_fit, trial):
    r = un_fit
    assert r.converged and r.status == 0 and r.n_iter >= 1
    assert r.loglik == pytest.approx(-0.5 * r.deviance)
    assert r.n_obs == int(trial.CHG.notna().sum()) and r.n_groups == 150
    assert r.n_params == 15  # REML: covariance parameters only (SAS)
    assert r.aic == pytest.approx(r.deviance + 2 * 15)
    assert r.bic == pytest.approx(r.deviance + 15 * np.log(150))
    ct = r.coef_table
    assert list(ct.columns) == ["estimate", "std_error", "df", "t_value", "p_value", "ci_lower", "ci_upper"]
    assert list(ct.index) == list(r.fixef.index) == list(r.vcov.index)
    np.testing.assert_allclose(ct.std_error, np.sqrt(np.diag(r.vcov)))
    np.testing.assert_allclose(r.with_ddf("residual").coef_table.df, r.n_obs - len(ct))
    assert (ct.df < r.n_obs - len(ct)).all() and (ct.df > 50).all()  # Satterthwaite by default
    assert ct.loc["(Intercept)", "ci_lower"] < ct.loc["(Intercept)", "estimate"] < ct.loc["(Intercept)", "ci_upper"]
    assert list(r.theta.index[:5]) == [f"sd[VIS{i}]" for i in range(1, 6)]
    assert "corr[VIS1,VIS2]" in r.theta.index
    R = r.residual_covariance
    assert list(R.index) == [f"VIS{i}" for i in range(1, 6)]
    np.testing.assert_allclose(np.sqrt(np.diag(R)), r.theta.iloc[:5])
    assert r.random_covariance == {}
    assert r.ranef.shape == (150, 0)


def test_ml_counts_fixed_effects_in_aic(trial):
    r = lmm.fit("CHG ~ ARMCD * AVISIT + BASE + ar1(AVISIT | USUBJID)", trial, reml=False)
    assert r.n_params == 2 + 11
    assert r.aic == pytest.approx(r.deviance + 2 * 13)


def test_fitted_plus_residuals_is_response(un_fit, trial, re_fit, re_data):
    for r, df, y in [(un_fit, trial, "CHG"), (re_fit, re_data, "y")]:
        f, e = r.fitted(), r.residuals()
        assert f.index.equals(df.index) and e.index.equals(df.index)  # aligned with the input rows
        np.testing.assert_allclose((f + e).dropna(), df[y].loc[f.dropna().index], rtol=1e-12)
    # R-side only: conditional == marginal
    np.testing.assert_allclose(un_fit.fitted(), un_fit.fitted(conditional=False))


def test_normalized_residuals_are_whitened(un_fit):
    z = un_fit.residuals("normalized")
    assert abs(z.std() - 1) < 0.1 and abs(z.mean()) < 0.1
    p = un_fit.residuals("pearson")
    assert len(p) == len(un_fit.model.data) and p.notna().sum() == un_fit.n_obs
    with pytest.raises(ValueError, match="kind"):
        un_fit.residuals("studentized")


def test_random_effects_results(re_fit, re_data):
    r = re_fit
    assert list(r.theta.index) == ["sd[(Intercept)|subject]", "sd[time|subject]", "corr[(Intercept),time|subject]", "sigma"]
    G = r.random_covariance["subject"]
    assert list(G.columns) == ["(Intercept)", "time"]
    assert G.loc["(Intercept)", "(Intercept)"] == pytest.approx(r.theta["sd[(Intercept)|subject]"] ** 2)
    assert r.ranef.shape == (40, 2) and list(r.ranef.index[:2]) == ["S01", "S02"]
    assert (r.ranef_sd.to_numpy() > 0).all()
    assert (r.ranef_sd.to_numpy() < np.sqrt(np.diag(G))).all()  # shrinkage: less than the prior SD


def test_predict(re_fit, re_data):
    r = re_fit
    rows = re_data.dropna().head(4)
    np.testing.assert_allclose(r.predict(rows), r.fitted().loc[rows.index], rtol=1e-12)
    new = rows.assign(subject="NEW")
    np.testing.assert_allclose(r.predict(new), r.fitted(conditional=False).loc[rows.index], rtol=1e-12)
    np.testing.assert_allclose(r.predict(rows, conditional=False), r.predict(new), rtol=1e-12)
    with pytest.raises(lmm.DataError, match="time"):
        r.predict(rows.drop(columns="time"))


def test_summary_text(un_fit, re_fit):
    s = un_fit.summary()
    for piece in ["REML", "UN", "-2 Res Log Likelihood", "AIC", "BIC", "sd[VIS1]", "ARMCD[T.TRT]",
                  "Satterthwaite", "Rows dropped for missing values", "converged"]:
        assert piece in s, piece
    assert "sd[(Intercept)|subject]" in re_fit.summary()
    assert "REML" in repr(un_fit)


def test_numeric_visit_equals_categorical():
    df = lmm.simulate_longitudinal(30, 5, seed=8, cov="ar1", rho=0.6, missing="intermittent", missing_rate=0.3)
    a = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    b = lmm.fit("y ~ time + arm + ar1(time | subject)", df)
    assert a.deviance == pytest.approx(b.deviance, rel=1e-12)
    assert list(b.residual_covariance.index) == ["0", "1", "2", "3", "4"]


def test_ar1_gap_gives_rho_squared():
    df = lmm.simulate_longitudinal(30, 5, seed=9, cov="ar1", rho=0.6)
    res = lmm.fit("y ~ time + ar1(visit | subject)", df)
    R = res.residual_covariance.to_numpy()
    rho = res.theta["rho"]
    assert R[0, 2] / R[0, 0] == pytest.approx(rho**2)
    # dropping visit V2 everywhere keeps V3 two positions from V1 only if the level still exists;
    # a subject missing V2 has lag 2 between its V1 and V3 rows: check on the dense block
    df2 = df[~((df.subject == "S01") & (df.visit == "V2"))]
    res2 = lmm.fit("y ~ time + ar1(visit | subject)", df2)
    assert res2.info.T == 5 and res2.n_obs == res.n_obs - 1


def test_categorical_reference_level(trial):
    d = trial.copy()
    r1 = lmm.fit("CHG ~ ARMCD + ar1(AVISIT | USUBJID)", d)
    assert "ARMCD[T.TRT]" in r1.fixef.index  # first sorted level is the reference
    r2 = lmm.fit("CHG ~ C(ARMCD, Treatment('TRT')) + ar1(AVISIT | USUBJID)", d)
    assert r2.fixef.iloc[1] == pytest.approx(-r1.fixef.iloc[1], rel=1e-8)
    assert r1.deviance - r2.deviance == pytest.approx(0, abs=1e-6)


def test_transforms_and_interactions(trial):
    r = lmm.fit("CHG ~ ARMCD:AVISIT + np.log(BASE) + I(VISITN ** 2) + ar1(AVISIT | USUBJID)", trial)
    assert "np.log(BASE)" in r.fixef.index and r.converged


def test_singletons_and_unequal_clusters():
    df = lmm.simulate_longitudinal(50, 6, seed=12, cov="id", re_sd=(1.0, 0.0), missing="unequal")
    sizes = df.dropna().groupby("subject").size()
    assert (sizes == 1).any() and sizes.nunique() > 2
    r = lmm.fit("y ~ time + (1 | subject)", df)
    assert r.converged and r.n_groups == len(sizes)


def test_two_random_terms_on_one_factor(re_data):
    r = lmm.fit("y ~ time + arm + (1 | subject) + (0 + time | subject)", re_data)
    r2 = lmm.fit("y ~ time + arm + (time || subject)", re_data)
    assert r.deviance == pytest.approx(r2.deviance, rel=1e-9)


def test_boundary_fit_is_flagged():
    df = lmm.simulate_longitudinal(40, 5, seed=13, cov="id", sd=1.0, re_sd=(0.0, 0.0))
    with pytest.warns(lmm.ConvergenceWarning, match="boundary"):
        r = lmm.fit("y ~ time + arm + x + (1 | subject)", df)
    assert r.converged and r.boundary and r.theta.iloc[0] < 1e-4 and "boundary" in r.summary()


def test_plain_linear_model_matches_ols():
    df = lmm.simulate_longitudinal(30, 3, seed=14, cov="id")
    r = lmm.fit("y ~ time + x", df, reml=False)
    X = np.column_stack([np.ones(len(df)), df.time, df.x])
    beta, *_ = np.linalg.lstsq(X, df.y, rcond=None)
    np.testing.assert_allclose(r.fixef, beta, rtol=1e-9)


def test_model_without_response_cannot_fit():
    df = lmm.example_trial().drop(columns="CHG")
    m = lmm.Model("CHG ~ ARMCD + ar1(AVISIT | USUBJID)", df)
    with pytest.raises(ValueError, match="response"):
        m.fit()


def test_demo_cli(capsys):
    from jaxlmm.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for piece in ["UN", "CS", "CSH", "AR(1)", "ARH(1)", "AIC", "BIC", "logLik", "Best by AIC", "Fixed effects"]:
        assert piece in out


def test_cli_fit_json(tmp_path, capsys):
    import json

    from jaxlmm.cli import main

    path = tmp_path / "d.csv"
    lmm.simulate_longitudinal(20, 4, seed=2).to_csv(path, index=False)
    assert main(["fit", str(path), "y ~ time + ar1(visit | subject)", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "REML" and out["converged"]
    assert main(["fit", str(path), "y ~ tme + ar1(visit | subject)"]) == 2
    assert "tme" in capsys.readouterr().err


def test_with_ddf_switches_without_refit(un_fit):
    r = un_fit.with_ddf("residual")
    assert r is not un_fit and r.deviance == un_fit.deviance
    assert "residual df" in r.summary() and un_fit.ddf_method == "satterthwaite"
    with pytest.raises(ValueError, match="ddf"):
        un_fit.with_ddf("containment")


def test_memory_map_guard_releases_programs():
    from jaxlmm.fitting import guard_memory_maps

    assert guard_memory_maps(every=1, fraction=0.0) is True  # forced: clears the caches
    assert guard_memory_maps(every=1, fraction=1.0) is False
    lmm.fit("y ~ time + ar1(visit | subject)", lmm.simulate_longitudinal(20, 4, seed=1))  # recompiles fine
