"""Nested and crossed random effects against lme4, lmerTest, pbkrtest and nlme.

The datasets are made by jaxlmm's simulators (``tests/reference/multilevel/make_data.py``), the
references by ``make_reference.R`` beside them (``reference.json``).  Tolerances: deviance 1e-6
relative and never higher than R's by more than that; fixed effects 1e-4, SEs and variance
components 1e-3 (relative), BLUPs and conditional SDs 1e-3 (relative to the largest), df and F
1e-4 (relative), profile limits 1e-3.
"""

import json
import re
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm

HERE = Path(__file__).parent / "reference" / "multilevel"
REF = json.loads((HERE / "reference.json").read_text())
CASES = REF["cases"]
IDS = [f"{c['case']}-{'reml' if c['reml'] else 'ml'}" for c in CASES]


@lru_cache(maxsize=None)
def data(name):
    return pd.read_csv(HERE / "data" / f"{name}.csv")


@lru_cache(maxsize=None)
def fitted(formula, dataset, reml):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmm.fit(formula, data(dataset), reml=reml)


def ours(case):
    return fitted(case["jaxlmm_formula"], case["dataset"], case["reml"])


def our_name(r_name, fixed_names):
    """lme4 coefficient name -> jaxlmm's (``armB`` -> ``arm[T.B]``)."""
    if r_name in fixed_names:
        return r_name
    m = re.match(r"^(arm)(.+)$", r_name)
    return f"{m.group(1)}[T.{m.group(2)}]"


def group_name(g):
    return g.replace("(", "").replace(")", "")


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_deviance_and_fixed_effects(case):
    res = ours(case)
    assert res.converged, res.status_message
    assert res.n_obs == case["n_obs"]
    assert res.deviance == pytest.approx(case["deviance"], rel=1e-6)
    assert res.deviance <= case["deviance"] + 1e-6 * abs(case["deviance"])
    names = list(res.fixef.index)
    fx = {our_name(k, names): v for k, v in case["fixef"].items()}
    se = {our_name(k, names): v for k, v in case["se"].items()}
    est = res.fixef[list(fx)]
    scale = np.maximum(np.abs(list(fx.values())), np.asarray(list(se.values())))
    assert np.max(np.abs(est.to_numpy() - np.array(list(fx.values()))) / scale) < 1e-4
    assert rel(res.coef_table.loc[list(se), "std_error"], list(se.values())) < 1e-3


LMER = [c for c in CASES if c["engine"] == "lmer"]
LMER_IDS = [f"{c['case']}-{'reml' if c['reml'] else 'ml'}" for c in LMER]


@pytest.mark.parametrize("case", LMER, ids=LMER_IDS)
def test_variance_components_lme4(case):
    res = ours(case)
    th = res.theta
    for row in case["varcorr"]:
        g = group_name(row["grp"])
        if g == "Residual":
            assert th["sigma"] == pytest.approx(row["sdcor"], rel=1e-3)
        elif row.get("var2") is None:
            v = th[f"sd[{row['var1']}|{g}]"]
            assert abs(v - row["sdcor"]) <= 1e-3 * max(row["sdcor"], 1e-2 * th["sigma"]), (g, row)
        else:
            sd1, sd2 = th[f"sd[{row['var1']}|{g}]"], th[f"sd[{row['var2']}|{g}]"]
            if min(sd1, sd2) > 1e-3 * th["sigma"]:
                assert th[f"corr[{row['var1']},{row['var2']}|{g}]"] == pytest.approx(row["sdcor"], abs=2e-3)
    assert res.boundary == case["singular"]


@pytest.mark.parametrize("case", LMER, ids=LMER_IDS)
def test_blups_and_conditional_sds_lme4(case):
    res = ours(case)
    re_ = res.ranef if isinstance(res.ranef, dict) else {res.grouping_factors[0]: res.ranef}
    sd_ = res.ranef_sd if isinstance(res.ranef_sd, dict) else {res.grouping_factors[0]: res.ranef_sd}
    for blk in case["blups"]:
        g = group_name(blk["group"])
        ref = np.array(blk["values"])
        ref_sd = np.array(blk["condsd"])
        mine = re_[g].loc[blk["levels"], blk["columns"]].to_numpy()
        mine_sd = sd_[g].loc[blk["levels"], blk["columns"]].to_numpy()
        scale = max(np.max(np.abs(ref)), 1e-3 * res.theta["sigma"])
        assert np.max(np.abs(mine - ref)) <= 1e-3 * scale, g
        scale_sd = max(np.max(ref_sd), 1e-3 * res.theta["sigma"])
        assert np.max(np.abs(mine_sd - ref_sd)) <= 1e-3 * scale_sd, g


REML_LMER = [c for c in LMER if c["reml"]]


@pytest.mark.parametrize("case", REML_LMER, ids=[c["case"] for c in REML_LMER])
def test_satterthwaite_against_lmertest(case):
    res = ours(case)
    names = list(res.fixef.index)
    ref = case["satterthwaite"]["df"]
    ct = res.coef_table
    for k, v in ref.items():
        assert ct.loc[our_name(k, names), "df"] == pytest.approx(v, rel=1e-4), k
    an = res.anova() if len(names) > 1 else None
    for row in case.get("anova_satterthwaite", []):
        assert an.loc[row["term"], "F"] == pytest.approx(row["F"], rel=1e-4)
        assert an.loc[row["term"], "den_df"] == pytest.approx(row["den_df"], rel=1e-4)


KR = [c for c in REML_LMER if "kenward_roger" in c]


@pytest.mark.parametrize("case", KR, ids=[c["case"] for c in KR])
def test_kenward_roger_against_pbkrtest(case):
    res = ours(case).with_ddf("kenward-roger")
    names = list(res.fixef.index)
    ref = case["kenward_roger"]
    ct = res.coef_table
    for k in ref["df"]:
        j = our_name(k, names)
        assert ct.loc[j, "df"] == pytest.approx(ref["df"][k], rel=1e-4), k
        assert ct.loc[j, "std_error"] == pytest.approx(ref["se"][k], rel=1e-4), k
    if len(names) > 1:
        an = res.anova()
        for row in case["anova_kenward_roger"]:
            assert an.loc[row["term"], "F"] == pytest.approx(row["F"], rel=1e-4)
            assert an.loc[row["term"], "den_df"] == pytest.approx(row["den_df"], rel=1e-4)


PROFILE = [c for c in LMER if "profile" in c]


@pytest.mark.parametrize("case", PROFILE, ids=[c["case"] for c in PROFILE])
def test_profile_intervals_against_lme4(case):
    res = ours(case)
    ci = res.conf_int(method="profile")
    for row in case["profile"]:
        p = row["parameter"]
        if p == "sigma":
            name = "sigma"
        elif p.startswith("sd_"):
            var, g = p[3:].split("|")
            name = f"sd[{var}|{group_name(g)}]"
        else:
            name = p
        for side in ("lower", "upper"):
            assert ci.loc[name, side] == pytest.approx(row[side], rel=1e-3, abs=1e-4), (name, side)


LRT = [c for c in LMER if "lrt" in c]


@pytest.mark.parametrize("case", LRT, ids=[c["case"] for c in LRT])
def test_lrt_against_lme4(case):
    big = ours(case)
    small = fitted(case["lrt"]["jaxlmm_small"], case["dataset"], False)
    assert small.deviance == pytest.approx(case["lrt"]["small_deviance"], rel=1e-6)
    out = lmm.lrt(small, big)
    assert out["statistic"] == pytest.approx(case["lrt"]["statistic"], rel=1e-4, abs=1e-5)
    assert out["reference"] == "0.5*chi2(0) + 0.5*chi2(1)"  # one more variance, on its boundary


LME = [c for c in CASES if c["engine"] == "lme"]


@pytest.mark.parametrize("case", LME, ids=[f"{c['case']}-{'reml' if c['reml'] else 'ml'}" for c in LME])
def test_sites_ar1_against_nlme(case):
    res = ours(case)
    th = res.theta
    assert th["sigma"] == pytest.approx(case["sigma"], rel=1e-3)
    assert th["rho"] == pytest.approx(case["phi"], abs=1e-3)
    cov = res.random_covariance

    def ours_group(g):  # nlme's innermost level "subject" is our "subject:site" for site/subject
        return g if g in cov else next(k for k in cov if k.startswith(g + ":"))

    for blk in case["G"]:
        g = ours_group(blk["group"])
        G = np.array(blk["matrix"])
        mine = cov[g].loc[blk["names"], blk["names"]].to_numpy()
        assert np.max(np.abs(mine - G)) <= 1e-3 * max(np.max(np.abs(G)), 1e-3 * th["sigma"] ** 2)
    re_ = res.ranef
    for blk in case["blups"]:
        g = ours_group(blk["group"])
        # nlme's "T1/S01" is our "S01:T1" (subject:site) or "S01" (subject)
        levels = [":".join(reversed(lv.split("/"))) if ":" in g else lv.split("/")[-1] for lv in blk["levels"]]
        mine = re_[g].loc[levels, blk["columns"]].to_numpy()
        ref = np.array(blk["values"])
        assert np.max(np.abs(mine - ref)) <= 1e-3 * max(np.max(np.abs(ref)), 1e-3 * th["sigma"])
