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
