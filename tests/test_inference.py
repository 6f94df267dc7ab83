"""Degrees of freedom and Kenward-Roger against lmerTest, pbkrtest and mmrm
(tests/reference/inference/, made by make_inference.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm

HERE = Path(__file__).parent / "reference"
CASES = {c["case"]: c for c in json.loads((HERE / "inference" / "inference.json").read_text())["cases"]}


def data(case):
    name = case["dataset"]
    return pd.read_csv(HERE / "data" / (name if name.endswith(".csv") else name + ".csv"))


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def r_order(res, names):
    """Our coefficient table reordered to R's coefficient names."""
    ct = res.coef_table
    ct.index = [n.replace("[T.", "").replace("]", "") for n in ct.index]
    return ct.loc[names]


LMERTEST = [k for k, c in CASES.items() if c["group"] == "lmertest"]


@pytest.mark.parametrize("name", LMERTEST)
def test_satterthwaite_and_kr_against_lmertest_pbkrtest(name):
    c = CASES[name]
    res = lmm.fit(c["jaxlmm_formula"], data(c), reml=c["reml"])
    names = c["coef_names"]
    sat = r_order(res, names)
    ref = c["coef_satterthwaite"]
    assert rel(sat.df, ref["df"]) < 1e-3  # lmerTest: numerical Hessian; ours exact
    assert rel(sat.std_error, ref["se"]) < 1e-4
    kr = r_order(res.with_ddf("kenward-roger"), names)
    ref = c["coef_kenward_roger"]
    assert rel(kr.df, ref["df"]) < 1e-5
    assert rel(kr.std_error, ref["se"]) < 1e-5  # KR-adjusted SEs
    np.testing.assert_allclose(res.with_ddf("kenward-roger").vcov.to_numpy(), np.asarray(c["vcov_kenward_roger"])[
        np.ix_(*[[names.index(n) for n in kr.index]] * 2)], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", [k for k, c in CASES.items() if c["group"] == "mmrm"])
def test_against_mmrm(name):
    c = CASES[name]
    res = lmm.fit(c["jaxlmm_formula"], data(c), reml=True)
    names = c["coef_names"]
    for variant, method in [("satterthwaite", "satterthwaite"), ("kenward_roger_linear", "kenward-roger-linear")]:
        ref = c["variants"][variant]["coef"]
        ct = r_order(res.with_ddf(method), names)
        assert rel(ct.df, ref["df"]) < 1e-4, variant
        assert rel(ct.std_error, ref["se"]) < 1e-5, variant
    # mmrm's KR df (observed information) equals its linear variant's
    ct = r_order(res.with_ddf("kenward-roger"), names)
    assert rel(ct.df, c["variants"]["kenward_roger"]["coef"]["df"]) < 1e-4


def test_kr_information_choice():
    c = CASES["lmertest_corr_re_slope"]
    res = lmm.fit(c["jaxlmm_formula"], data(c))
    a = res.with_ddf("kenward-roger").coef_table.df
    b = res.with_ddf("kenward-roger", kr_information="observed").coef_table.df
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="kr_information"):
        res.with_ddf("kenward-roger", kr_information="fisher")
    assert "Kenward-Roger" in res.with_ddf("kenward-roger").summary()


def test_fit_chooses_ddf_up_front():
    c = CASES["lmertest_int_re_slope"]
    res = lmm.fit(c["jaxlmm_formula"], data(c), ddf="kenward-roger")
    assert res.ddf_method == "kenward-roger"
    np.testing.assert_allclose(res.coef_table.df, res.with_ddf("kenward-roger").coef_table.df)


@pytest.mark.parametrize("name", LMERTEST)
def test_contrasts_against_lmertest(name):
    c = CASES[name]
    res = lmm.fit(c["jaxlmm_formula"], data(c), reml=c["reml"])
    order = [n.replace("[T.", "").replace("]", "") for n in res.fixef.index]
    for cname, con in c["contrasts"].items():
        Lr = np.atleast_2d(np.asarray(con["L"], dtype=float))
        L = np.zeros((Lr.shape[0], len(order)))
        for j, n in enumerate(con.get("L_colnames", c["coef_names"])):
            L[:, order.index(n)] = Lr[:, j]
        for method, key in [("satterthwaite", "satterthwaite_F"), ("kenward-roger", "kenward_roger_F")]:
            out = res.with_ddf(method).test(L)
            ref = con[key]
            tol = 1e-3 if method == "satterthwaite" else 1e-5  # lmerTest's Hessian is numerical
            assert abs(out["F"] - ref["F"]) / ref["F"] < tol, (cname, method)
            assert abs(out["den_df"] - ref["den_df"]) / ref["den_df"] < tol, (cname, method)
            assert out["num_df"] == ref["num_df"]
            if "p" in ref and ref["p"] > 1e-12:
                assert abs(out["p_value"] - ref["p"]) / ref["p"] < 1e-2


def test_test_accepts_names_and_rejects_bad_input():
    c = CASES["lmertest_int_re_slope"]
    res = lmm.fit(c["jaxlmm_formula"], data(c))
    a = res.test({"time": 1.0})
    b = res.test(np.eye(len(res.fixef))[1])
    assert a["t_value"] == pytest.approx(b["t_value"]) and a["F"] == pytest.approx(a["t_value"] ** 2)
    assert a["den_df"] == pytest.approx(res.coef_table.loc["time", "df"])
    with pytest.raises(ValueError, match="Unknown fixed effects"):
        res.test({"tme": 1.0})
    with pytest.raises(ValueError, match="columns"):
        res.test([1.0, 0.0])


LRT = [k for k, c in CASES.items() if c["group"] == "lrt"]


@pytest.mark.parametrize("name", LRT)
def test_lrt_and_boundary_mixtures(name):
    c = CASES[name]
    d = data(c)
    small = lmm.fit(c["jaxlmm_formula_null"], d, reml=c["reml"], warn=False)
    big = lmm.fit(c["jaxlmm_formula_alt"], d, reml=c["reml"], warn=False)
    table = lmm.compare(small, big, names=["null", "alt"])
    row = table.loc["alt"]
    ref = c["lrt"]
    assert row.LRT == pytest.approx(ref["chisq"], abs=2e-5 * max(1.0, ref["chisq"]))
    assert row.df == ref["df"]
    expected_p = ref.get("p_mixture", ref["p_naive"])
    assert row.p_value == pytest.approx(expected_p, rel=1e-3, abs=1e-6)
    if "mixture" in ref:
        assert row.reference == ref["mixture"]
    for col in ["npar", "logLik", "AIC", "AICc", "BIC"]:
        assert np.isfinite(table[col]).all()


def test_compare_refuses_reml_with_different_fixed_effects():
    c = CASES["lmertest_int_re_slope"]
    d = data(c)
    a = lmm.fit("y ~ time + (1 | subject)", d)
    b = lmm.fit("y ~ time + arm + (1 | subject)", d)
    with pytest.raises(lmm.LMMError, match="reml=False"):
        lmm.compare(a, b)
    table = lmm.compare(a.model.fit(reml=False), b.model.fit(reml=False))
    assert table["reference"].iloc[1] == "chi2(1)"


def test_select_covariance_ranks_and_tests_nested_pairs():
    c = CASES["lrt_gls_cs_vs_un_balanced_reml"]
    sel = lmm.select_covariance("y ~ time * arm + x", data(c), visit="visit", subject="subject")
    assert set(sel.table.index) == {"un", "cs", "csh", "ar1", "arh1"}
    assert list(sel.table.AIC) == sorted(sel.table.AIC)
    assert sel.best is sel.fits[sel.best_name]
    row = sel.lrt.set_index(["null", "alternative"]).loc[("cs", "un")]
    assert row.LRT == pytest.approx(c["lrt"]["chisq"], rel=1e-5) and row.df == c["lrt"]["df"]
    assert len(sel.lrt) == 6 and "Chosen" in sel.summary()
    bic = lmm.select_covariance("y ~ time * arm + x", data(c), visit="visit", subject="subject",
                                structures=("cs", "ar1"), criterion="bic")
    assert list(bic.table.BIC) == sorted(bic.table.BIC)
    with pytest.raises(lmm.LMMError, match="criterion"):
        lmm.select_covariance("y ~ time", data(c), visit="visit", subject="subject", structures=("cs",),
                              criterion="dic")


def test_select_random_uses_mixtures():
    c = CASES["lrt_lmer_int_vs_corr_re_boundary_reml"]
    sel = lmm.select_random("y ~ time + arm + x", data(c), group="subject", slope="time")
    lr = sel.lrt.set_index(["null", "alternative"])
    row = lr.loc[("intercept", "intercept+slope")]
    assert row.reference == "0.5*chi2(1) + 0.5*chi2(2)"
    assert row.p_value == pytest.approx(c["lrt"]["p_mixture"], rel=1e-3)
    assert lr.loc[("intercept+slope (uncorrelated)", "intercept+slope")].reference == "chi2(1)"
    assert lr.loc[("slope", "intercept+slope (uncorrelated)")].reference == "0.5*chi2(0) + 0.5*chi2(1)"
    assert sel.best_name == "intercept"  # the slope variance is 0 in truth


@pytest.mark.parametrize("name", [k for k, c in CASES.items() if c["group"] in ("mmrm", "sandwich")])
def test_sandwich_against_mmrm_and_manual(name):
    c = CASES[name]
    res = lmm.fit(c["jaxlmm_formula"], data(c))
    order = [n.replace("[T.", "").replace("]", "") for n in res.fixef.index]
    idx = [order.index(n) for n in c["coef_names"]]
    for kind in ("CR0", "CR2"):
        se = np.sqrt(np.diag(res.vcov_sandwich(kind).to_numpy()))[idx]
        if c["group"] == "mmrm":
            key = "empirical_residual" if kind == "CR0" else "empirical_bias_reduced_residual"
            ref = c["variants"][key]["coef"]["se"]
        else:
            ref = c["cr_manual"]["se_CR0" if kind == "CR0" else "se_CR2_whitened"]
        assert rel(se, ref) < 1e-5, kind
    if c["group"] == "sandwich":  # CR0 also equals clubSandwich's
        assert rel(np.sqrt(np.diag(res.vcov_sandwich("CR0").to_numpy()))[idx], c["cr"]["CR0"]["se"]) < 1e-5
    with pytest.raises(ValueError, match="CR0"):
        res.vcov_sandwich("HC3")


@pytest.mark.parametrize("name", ["intervals_gls_ar1_monotone_reml", "intervals_gls_ar1_monotone_ml"])
def test_wald_intervals_of_covariance_parameters_against_nlme(name):
    c = CASES[name]
    res = lmm.fit(c["jaxlmm_formula"], data(c), reml=c["reml"])
    tt = res.theta_table
    iv = c["intervals"]
    for ours, ref in [("rho", "phi"), ("sigma", "sigma")]:
        assert tt.loc[ours, "estimate"] == pytest.approx(iv[ref]["est"], rel=1e-5)
        # nlme: numerical Hessian of its own parameterisation; ours exact
        assert tt.loc[ours, "ci_lower"] == pytest.approx(iv[ref]["lower"], rel=2e-3)
        assert tt.loc[ours, "ci_upper"] == pytest.approx(iv[ref]["upper"], rel=2e-3)
    assert (tt.std_error > 0).all()


def test_bootstrap_lrt_runs_and_agrees_with_mixture():
    c = CASES["lrt_lmer_int_vs_corr_re_slope_ml"]
    d = data(c)
    small = lmm.fit(c["jaxlmm_formula_null"], d, reml=False)
    big = lmm.fit(c["jaxlmm_formula_alt"], d, reml=False)
    out = lmm.bootstrap_lrt(small, big, n=40, seed=3)
    assert out["statistic"] == pytest.approx(c["lrt"]["chisq"], rel=1e-5)
    assert out["p_value"] == pytest.approx(1 / (out["n_ok"] + 1))  # a huge statistic: no T* exceeds it
    assert out["n_ok"] >= 36


def test_between_within_df():
    df = lmm.simulate_longitudinal(30, 4, seed=5, cov="cs", rho=0.4)
    res = lmm.fit("y ~ time * arm + x + cs(visit | subject)", df).with_ddf("between-within")
    ct = res.coef_table
    N, S, p = res.n_obs, 30, len(ct)
    # between-subject columns: intercept, arm, x (rank 3): S - 3; within: time, time:arm
    assert ct.loc["(Intercept)", "df"] == S - 3 and ct.loc["x", "df"] == S - 3
    assert ct.loc["time", "df"] == N - p - (S - 3) and ct.loc["time:arm[T.B]", "df"] == N - p - (S - 3)
    assert "BETWITHIN" in res.summary()
    assert res.test({"x": 1.0})["den_df"] == S - 3


@pytest.mark.parametrize("method,key", [("satterthwaite", "satterthwaite"), ("kenward-roger", "kenward_roger")])
def test_emmeans_against_r(method, key):
    c = CASES["lmertest_int_factor3"]
    res = lmm.fit(c["jaxlmm_formula"], data(c)).with_ddf(method)
    ref = c["emmeans"]["arm_by_visit"][key]
    em = res.emmeans("arm", by="visit").set_index(["arm", "visit"])
    for i, (a, v) in enumerate(zip(ref["grid"]["arm"], ref["grid"]["visit"])):
        row = em.loc[(a, v)]
        assert row.emmean == pytest.approx(ref["emmean"][i], rel=1e-6)
        assert row.std_error == pytest.approx(ref["se"][i], rel=1e-5)
        assert row.df == pytest.approx(ref["df"][i], rel=1e-3)
    pr = ref["pairs"]
    pairs = res.emmeans("arm", by="visit", pairs=True).set_index(["contrast", "visit"])
    for i, (con, v) in enumerate(zip(pr["grid"]["contrast"], pr["grid"]["visit"])):
        row = pairs.loc[(con, v)]
        assert row.estimate == pytest.approx(pr["estimate"][i], rel=1e-6, abs=1e-9)
        assert row.std_error == pytest.approx(pr["se"][i], rel=1e-5)
        assert row.p_value == pytest.approx(pr["p_tukey"][i], rel=1e-3)
    raw = res.emmeans("arm", by="visit", pairs=True, adjust="none").set_index(["contrast", "visit"])
    bonf = res.emmeans("arm", by="visit", pairs=True, adjust="bonferroni").set_index(["contrast", "visit"])
    for i, (con, v) in enumerate(zip(pr["grid"]["contrast"], pr["grid"]["visit"])):
        assert raw.loc[(con, v)].p_value == pytest.approx(pr["p_none"][i], rel=1e-3)
        assert bonf.loc[(con, v)].p_value == pytest.approx(min(1.0, 3 * pr["p_none"][i]), rel=1e-3)
    # Tukey intervals are wider than unadjusted ones and narrower than Bonferroni's
    w = {k: (t.ci_upper - t.ci_lower).iloc[0] for k, t in (("none", raw), ("tukey", pairs), ("bonf", bonf))}
    assert w["none"] < w["tukey"] < w["bonf"]
    marg = c["emmeans"]["arm"][key]["pairs"]
    mp = res.emmeans("arm", pairs=True).set_index("contrast")
    for i, con in enumerate(marg["grid"]["contrast"]):
        assert mp.loc[con].p_value == pytest.approx(marg["p_tukey"][i], rel=1e-3)
    with pytest.raises(ValueError, match="adjust must be"):
        res.emmeans("arm", pairs=True, adjust="holm")
    with pytest.raises(ValueError, match="numeric covariate"):
        res.emmeans("x")


@pytest.mark.parametrize("name", LMERTEST)
@pytest.mark.parametrize("method,key", [("satterthwaite", "anova_type3_satterthwaite"),
                                        ("kenward-roger", "anova_type3_kenward_roger")])
def test_type3_anova_against_lmertest(name, method, key):
    c = CASES[name]
    res = lmm.fit(c["jaxlmm_formula"], data(c)).with_ddf(method)
    ours = res.anova()
    ref = c[key]
    ours.index = [t.replace("[T.", "").replace("]", "") for t in ours.index]
    for i, term in enumerate(ref["terms"]):
        row = ours.loc[term]
        assert row.num_df == ref["num_df"][i]
        assert row.F == pytest.approx(ref["F"][i], rel=1e-4), term
        assert row.den_df == pytest.approx(ref["den_df"][i], rel=1e-3), term


def test_compare_marks_pairs_that_do_not_nest():
    from jaxlmm.compare import nested

    df = lmm.simulate_longitudinal(30, 4, seed=2, cov="ar1")
    ar1 = lmm.fit("y ~ time + ar1(visit | subject)", df)
    csh = lmm.fit("y ~ time + csh(visit | subject)", df)
    un = lmm.fit("y ~ time + un(visit | subject)", df)
    table = lmm.compare(ar1, csh, un, names=["ar1", "csh", "un"])
    assert table.loc["csh", "reference"] == "not nested" and np.isnan(table.loc["csh", "LRT"])
    assert table.loc["un", "reference"] == "chi2(5)"  # un (10 parameters) against csh (5)
    assert nested(ar1, un) is True and nested(csh, ar1) is False and nested(ar1, csh) is False
