"""Compare jaxlmm with the lme4 / lmerTest / pbkrtest / nlme fits in reference.json.

Used by tests/test_multilevel_reference.py; run directly (``python
tests/reference/multilevel/multilevel_compare.py``) to print the worst difference per quantity over all
cases.  Differences are relative (to the reference value; SDs and BLUPs relative to the
largest of their kind, with a floor of 1e-3 sigma for values at zero; correlations absolute).
"""

from __future__ import annotations

import json
import re
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def load_cases():
    return json.loads((HERE / "reference.json").read_text())["cases"]


@lru_cache(maxsize=None)
def data(name):
    return pd.read_csv(HERE / "data" / f"{name}.csv")


@lru_cache(maxsize=None)
def fitted(formula, dataset, reml):
    import jaxlmm as lmm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lmm.fit(formula, data(dataset), reml=reml)


def fit_case(case):
    return fitted(case["jaxlmm_formula"], case["dataset"], case["reml"])


def our_name(r_name, fixed_names):
    """lme4 coefficient name -> jaxlmm's (``armB`` -> ``arm[T.B]``)."""
    if r_name in fixed_names:
        return r_name
    m = re.match(r"^(arm)(.+)$", r_name)
    return f"{m.group(1)}[T.{m.group(2)}]"


def group_name(g):
    """lme4 ``class:(school:district)`` -> jaxlmm ``class:school:district``."""
    return g.replace("(", "").replace(")", "")


def _rel(a, b, floor=0.0):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), max(floor, 1e-300))))


def _nlme_group(g, cov):
    return g if g in cov else next(k for k in cov if k.startswith(g + ":"))


def differences(case) -> dict:
    """Worst difference per quantity for one case (keys only for what the case has)."""
    res = fit_case(case)
    out = {"deviance": abs(res.deviance - case["deviance"]) / abs(case["deviance"]),
           "deviance_signed": (res.deviance - case["deviance"]) / abs(case["deviance"])}
    names = list(res.fixef.index)
    fx = {our_name(k, names): v for k, v in case["fixef"].items()}
    se = {our_name(k, names): v for k, v in case["se"].items()}
    scale = np.maximum(np.abs(list(fx.values())), np.asarray(list(se.values())))
    out["fixef"] = float(np.max(np.abs(res.fixef[list(fx)].to_numpy() - np.array(list(fx.values()))) / scale))
    out["se"] = _rel(res.coef_table.loc[list(se), "std_error"], list(se.values()))
    th = res.theta
    sigma = th["sigma"]
    if case["engine"] == "lmer":
        sd, corr = [], []
        for row in case["varcorr"]:
            g = group_name(row["grp"])
            if g == "Residual":
                sd.append(abs(sigma - row["sdcor"]) / row["sdcor"])
            elif row.get("var2") is None:
                sd.append(abs(th[f"sd[{row['var1']}|{g}]"] - row["sdcor"]) / max(row["sdcor"], 1e-2 * sigma))
            else:
                sd1, sd2 = th[f"sd[{row['var1']}|{g}]"], th[f"sd[{row['var2']}|{g}]"]
                if min(sd1, sd2) > 1e-3 * sigma:
                    corr.append(abs(th[f"corr[{row['var1']},{row['var2']}|{g}]"] - row["sdcor"]))
        out["variance_sd"] = max(sd)
        if corr:
            out["correlation_abs"] = max(corr)
        re_ = res.ranef if isinstance(res.ranef, dict) else {res.grouping_factors[0]: res.ranef}
        sd_ = res.ranef_sd if isinstance(res.ranef_sd, dict) else {res.grouping_factors[0]: res.ranef_sd}
        b, bs = [], []
        for blk in case["blups"]:
            g = group_name(blk["group"])
            ref, ref_sd = np.array(blk["values"]), np.array(blk["condsd"])
            mine = re_[g].loc[blk["levels"], blk["columns"]].to_numpy()
            mine_sd = sd_[g].loc[blk["levels"], blk["columns"]].to_numpy()
            b.append(np.max(np.abs(mine - ref)) / max(np.max(np.abs(ref)), 1e-3 * sigma))
            bs.append(np.max(np.abs(mine_sd - ref_sd)) / max(np.max(ref_sd), 1e-3 * sigma))
        out["blup"], out["blup_condsd"] = float(max(b)), float(max(bs))
        out["singular_matches"] = float(res.boundary == case["singular"])
        if "satterthwaite" in case:
            ct = res.coef_table
            out["satterthwaite_df"] = max(abs(ct.loc[our_name(k, names), "df"] - v) / v
                                          for k, v in case["satterthwaite"]["df"].items())
            if case.get("anova_satterthwaite"):
                an = res.anova()
                out["anova_F_satterthwaite"] = max(abs(an.loc[r["term"], "F"] - r["F"]) / r["F"]
                                                   for r in case["anova_satterthwaite"])
                out["anova_den_df_satterthwaite"] = max(abs(an.loc[r["term"], "den_df"] - r["den_df"]) / r["den_df"]
                                                        for r in case["anova_satterthwaite"])
        if "kenward_roger" in case:
            kr = res.with_ddf("kenward-roger")
            ct = kr.coef_table
            ref = case["kenward_roger"]
            out["kr_df"] = max(abs(ct.loc[our_name(k, names), "df"] - v) / v for k, v in ref["df"].items())
            out["kr_se"] = max(abs(ct.loc[our_name(k, names), "std_error"] - v) / v for k, v in ref["se"].items())
            if case.get("anova_kenward_roger"):
                an = kr.anova()
                out["anova_F_kr"] = max(abs(an.loc[r["term"], "F"] - r["F"]) / r["F"] for r in case["anova_kenward_roger"])
                out["anova_den_df_kr"] = max(abs(an.loc[r["term"], "den_df"] - r["den_df"]) / r["den_df"]
                                             for r in case["anova_kenward_roger"])
        if "profile" in case:
            ci = res.conf_int(method="profile")
            worst = 0.0
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
                    worst = max(worst, abs(ci.loc[name, side] - row[side]) / max(abs(row[side]), 0.1))
            out["profile_limit"] = worst
        if "lrt" in case:
            import jaxlmm as lmm

            small = fitted(case["lrt"]["jaxlmm_small"], case["dataset"], False)
            out["lrt_statistic"] = abs(lmm.lrt(small, res)["statistic"] - case["lrt"]["statistic"]) / \
                max(case["lrt"]["statistic"], 1e-3)
    else:  # nlme::lme
        out["variance_sd"] = abs(sigma - case["sigma"]) / case["sigma"]
        out["ar1_rho_abs"] = abs(th["rho"] - case["phi"])
        cov = res.random_covariance
        G = []
        for blk in case["G"]:
            Gr = np.array(blk["matrix"])
            mine = cov[_nlme_group(blk["group"], cov)].loc[blk["names"], blk["names"]].to_numpy()
            G.append(np.max(np.abs(mine - Gr)) / max(np.max(np.abs(Gr)), 1e-3 * sigma**2))
        out["G"] = float(max(G))
        b = []
        for blk in case["blups"]:
            g = _nlme_group(blk["group"], cov)
            levels = [":".join(reversed(lv.split("/"))) if ":" in g else lv.split("/")[-1] for lv in blk["levels"]]
            mine = res.ranef[g].loc[levels, blk["columns"]].to_numpy()
            ref = np.array(blk["values"])
            b.append(np.max(np.abs(mine - ref)) / max(np.max(np.abs(ref)), 1e-3 * sigma))
        out["blup"] = float(max(b))
    return out


#: the test's tolerance per quantity (docs/nested_crossed.md)
TOLERANCE = {"deviance": 1e-6, "deviance_signed": 1e-6, "fixef": 1e-4, "se": 1e-3, "variance_sd": 1e-3,
             "correlation_abs": 2e-3, "blup": 1e-3, "blup_condsd": 1e-3, "satterthwaite_df": 1e-4,
             "anova_F_satterthwaite": 1e-4, "anova_den_df_satterthwaite": 1e-4, "kr_df": 1e-4, "kr_se": 1e-4,
             "anova_F_kr": 1e-4, "anova_den_df_kr": 1e-4, "profile_limit": 1e-3, "lrt_statistic": 1e-4,
             "ar1_rho_abs": 1e-3, "G": 1e-3}


def main():
    cases = load_cases()
    worst: dict[str, tuple[float, str]] = {}
    for c in cases:
        tag = f"{c['case']}-{'reml' if c['reml'] else 'ml'}"
        for k, v in differences(c).items():
            if k == "singular_matches":
                continue
            if k not in worst or v > worst[k][0]:
                worst[k] = (v, tag)
    print(f"{len(cases)} reference fits\n")
    print("| quantity | worst difference | case | tolerance |")
    print("|---|---|---|---|")
    for k, (v, tag) in worst.items():
        print(f"| {k} | {v:.1e} | {tag} | {TOLERANCE.get(k, float('nan')):.0e} |")


if __name__ == "__main__":
    main()
