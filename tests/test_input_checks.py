"""Awkward but ordinary input (issue 11): each case returned wrong numbers silently or ended
in a raw Python error before; now it is right, or refused with the package's own message.

References: ``tests/reference/inputs/`` (``make_data.py``, nlme by ``make_reference.R``).
"""

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm
from jaxlmm import ArgumentError, DataError, LMMError

REF = Path(__file__).parent / "reference" / "inputs"


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@pytest.fixture(scope="module")
def d():
    return lmm.simulate_longitudinal(30, 4, cov="ar1", re_sd=(0.8, 0.0), seed=41)


@pytest.fixture(scope="module")
def fit(d):
    return quiet(lmm.fit, "y ~ time + arm + (1 | subject)", d)


# ---- visit positions ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaps():
    return pd.read_csv(REF / "gaps.csv")


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
def test_numeric_visits_keep_their_spacing_as_nlme(gaps, reml):
    ref = json.loads((REF / "reference.json").read_text())["reml" if reml else "ml"]
    r = lmm.fit("y ~ time + arm + ar1(visit_no | subject)", gaps, reml=reml)
    assert r.info.visit_levels == [1, 2, 3, 4, 5]  # visit 3 has no rows: a gap, not a neighbour
    assert r.deviance == pytest.approx(ref["deviance"], rel=1e-9)
    np.testing.assert_allclose(r.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-5)
    assert r.theta["rho"] == pytest.approx(ref["rho"], rel=1e-5)
    assert r.theta["sigma"] == pytest.approx(ref["sigma"], rel=1e-5)
    R = r.residual_covariance.to_numpy()
    rho = r.theta["rho"]
    assert R[1, 3] / R[1, 1] == pytest.approx(rho**2, rel=1e-10)  # visits 2 and 4: two lags


def test_a_declared_category_without_rows_stays_a_position(gaps):
    cat = gaps.assign(v=pd.Categorical(gaps["visit_no"].map(lambda v: f"V{v}"), categories=[f"V{i}" for i in range(1, 6)]))
    a = lmm.fit("y ~ time + arm + ar1(visit_no | subject)", gaps)
    b = lmm.fit("y ~ time + arm + ar1(v | subject)", cat)
    assert b.info.visit_levels == ["V1", "V2", "V3", "V4", "V5"]
    assert b.deviance == pytest.approx(a.deviance, rel=1e-12)
    with pytest.raises(DataError, match=r"'V3'.*no rows.*SD per visit"):
        lmm.fit("y ~ time + arm + arh1(v | subject)", cat)
    with pytest.raises(DataError, match=r"visit\(s\) 3 .*no rows.*SD per visit"):
        lmm.fit("y ~ time + arm + arh1(visit_no | subject)", gaps)
    with pytest.warns(UserWarning, match=r"'V3'.*no rows and are left out"):
        r = lmm.fit("y ~ time + arm + cs(v | subject)", cat)
    assert r.info.visit_levels == ["V1", "V2", "V4", "V5"]


def test_non_integer_times_are_refused_under_ar1(gaps):
    g = gaps.assign(t=gaps["visit_no"] + 0.25 * (gaps["visit_no"] == 4))
    with pytest.raises(DataError, match=r"non-integer times.*sp_exp"):
        lmm.fit("y ~ time + arm + ar1(t | subject)", g)
    # unstructured: the distinct values are just levels
    assert lmm.fit("y ~ time + arm + un(t | subject)", g).converged


def test_irregular_times_are_refused_quickly():
    rng = np.random.default_rng(1)
    n = 600
    df = pd.DataFrame({"subject": rng.integers(0, 120, n), "y": rng.normal(size=n)})
    df["day"] = rng.integers(0, 2000, n)  # irregular days: hundreds of distinct times
    df = df.drop_duplicates(["subject", "day"])
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"irregular measurement times.*explicit visit factor"):
        lmm.fit("y ~ 1 + ar1(day | subject)", df)
    assert time.perf_counter() - t0 < 10


def test_a_visit_column_of_mixed_types_is_refused(d):
    mixed = d.assign(visit=[1 if v == "V1" else v for v in d["visit"]]).astype({"visit": object})
    with pytest.raises(DataError, match=r"mixes numbers and strings"):
        lmm.fit("y ~ time + ar1(visit | subject)", mixed)


# ---- arguments ------------------------------------------------------------------------


def test_arguments_are_checked(d, fit):
    with pytest.raises(ArgumentError, match=r"reml must be True or False, got 'no'"):
        lmm.fit("y ~ time + (1 | subject)", d, reml="no")
    with pytest.raises(ArgumentError, match=r"start must be 2 finite numbers.*theta_unconstrained"):
        fit.model.fit(start=[0.1, 0.2, 0.3])
    with pytest.raises(ArgumentError, match=r"n must be an integer >= 1, got -1"):
        fit.simulate(n=-1)
    with pytest.raises(ArgumentError, match=r"seed must be an integer >= 0, got 'a'"):
        fit.simulate(seed="a")
    with pytest.raises(ArgumentError, match=r"n must be an integer >= 1, got 0"):
        fit.bootstrap(n=0)
    with pytest.raises(DataError, match=r"Y must be numeric"):
        fit.model.fit_batch([["a"] * len(d)])
    with pytest.raises(ArgumentError, match=r"model2 is a str, not a fitted model"):
        lmm.compare(fit, "fit")
    with pytest.raises(ArgumentError, match=r"ddf must be one of"):
        lmm.fit("y ~ time + (1 | subject)", d, ddf="wrong")
    assert issubclass(ArgumentError, TypeError) and issubclass(ArgumentError, LMMError)


def test_compare_refuses_fits_to_different_data(d, fit):
    other = quiet(lmm.fit, "y ~ time + arm + (1 | subject)", d.assign(y=d["y"] + np.arange(len(d)) % 3))
    with pytest.raises(LMMError, match=r"other data than the first"):
        lmm.compare(fit, other)
    with pytest.raises(LMMError, match=r"other data"):
        lmm.lrt(fit, other)


@pytest.mark.parametrize("kw,hint", [("correlation", "ar1\\(visit"), ("method", "reml=True"), ("REML", "reml=True")])
def test_r_style_keywords_point_to_the_jaxlmm_way(d, kw, hint):
    with pytest.raises(ArgumentError, match=rf"unexpected keyword argument '{kw}'.*In jaxlmm use .*{hint}"):
        lmm.fit("y ~ time + (1 | subject)", d, **{kw: "x"})


def test_weights_not_a_column_name_points_to_covariance_terms(d):
    """nlme's weights = varIdent(...) is a covariance term here; weights= takes a column name."""
    with pytest.raises(ArgumentError, match=r"observation weights.*covariance term.*diag\(visit \| subject\)"):
        lmm.fit("y ~ time + (1 | subject)", d, weights=object())


def test_predict_refuses_an_unseen_level_of_a_fixed_factor(fit, d):
    with pytest.raises(DataError, match=r"never saw.*'Z'"):
        fit.predict(d.head(3).assign(arm="Z"))


# ---- alignment ------------------------------------------------------------------------


def test_results_align_with_the_input_rows(d):
    # a filtered, shuffled frame with a non-default index and a missing response
    sub = d[d["visit"] != "V2"].sample(frac=1.0, random_state=3)
    sub.index = [f"r{i}" for i in range(len(sub))]
    sub.loc["r5", "y"] = np.nan
    r = quiet(lmm.fit, "y ~ time + arm + (1 | subject)", sub)
    f, e = r.fitted(), r.residuals()
    assert f.index.equals(sub.index) and np.isnan(f["r5"]) and np.isnan(e["r5"])
    out = sub.copy()
    out["fit"] = f
    out["res"] = e
    ok = out["y"].notna()
    np.testing.assert_allclose(out.loc[ok, "fit"] + out.loc[ok, "res"], out.loc[ok, "y"], rtol=1e-12)
    p = r.predict(sub.iloc[::-1])
    assert p.index.equals(sub.index[::-1])
    np.testing.assert_allclose(p.drop("r5"), f.drop("r5").loc[p.drop("r5").index], rtol=1e-12)
    sims = r.simulate(n=2, seed=1)
    assert sims.index.equals(sub.index) and list(sims.columns) == ["sim_1", "sim_2"]
    assert np.isnan(sims.loc["r5"]).all() and sims.drop("r5").notna().all().all()
    b = r.model.fit_batch(sims)  # simulate's frame goes straight into a batch
    assert b.n == 2 and b.converged.all()


# ---- formulas from R ------------------------------------------------------------------


def test_caret_inside_a_call_is_a_power(d):
    g = d.assign(age=(d["time"] * 2 + 8).astype(int))
    a = lmm.fit("y ~ age + I(age^2) + ar1(visit | subject)", g)
    b = lmm.fit("y ~ age + I(age**2) + ar1(visit | subject)", g)
    assert a.deviance == b.deviance
    explicit = g.assign(age2=g["age"] ** 2)
    c = lmm.fit("y ~ age + age2 + ar1(visit | subject)", explicit)
    assert a.deviance == pytest.approx(c.deviance, rel=1e-10)


def test_backtick_and_unicode_column_names(d):
    e = d.rename(columns={"y": "change from baseline", "visit": "visite n°", "subject": "Patiënt"})
    r = lmm.fit("`change from baseline` ~ time + ar1(`visite n°` | Patiënt)", e)
    s = lmm.fit("y ~ time + ar1(visit | subject)", d)
    assert r.deviance == pytest.approx(s.deviance, rel=1e-12)


def test_frames_with_to_pandas_are_accepted(d):
    class Frame:  # a polars-like frame
        def to_pandas(self):
            return d

    r = quiet(lmm.fit, "y ~ time + (1 | subject)", Frame())
    assert r.n_obs == len(d)


# ---- the command line -----------------------------------------------------------------


def test_cli_help_does_not_import_jax():
    code = "import sys, jaxlmm.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\nprint('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


# ---- identifiability and boundaries ---------------------------------------------------


def test_correlation_without_pairs_is_refused(d):
    # every subject has one row, at visits that differ between subjects
    one = d[d["visit"].str[1:].astype(int) - 1 == d["subject"].str[1:].astype(int) % 4]
    assert one["subject"].is_unique and one["visit"].nunique() == 4
    for s in ("cs", "ar1", "csh"):
        with pytest.raises(DataError, match=rf"No subject .* more than one usable row.*{s}\(visit"):
            lmm.fit(f"y ~ time + {s}(visit | subject)", one)


def test_random_slope_on_a_between_subject_factor_is_refused(d):
    with pytest.raises(DataError, match=r"\(1 \+ arm \| subject\): 'arm\[T.B\]' is constant within every level of "
                                        r"'subject'.*cannot be estimated.*\(1 \| subject\)"):
        lmm.fit("y ~ time + arm + (1 + arm | subject)", d)
    # uncorrelated, the two variances are identified (from subjects of either arm)
    assert quiet(lmm.fit, "y ~ time + arm + (1 + arm || subject)", d).n_theta == 3


def test_collinear_random_columns_are_refused(d):
    g = d.assign(t2=2 * d["time"] + 1)
    with pytest.raises(DataError, match=r"collinear within every level"):
        lmm.fit("y ~ time + (1 + time + t2 | subject)", g)


def test_a_continuous_between_subject_slope_warns(d):
    with pytest.warns(UserWarning, match=r"'x' is constant within every level of 'subject'"):
        quiet_fit = lmm.fit("y ~ time + x + (1 + x | subject)", d, warn=False)
    assert quiet_fit.n_theta == 4


def test_a_collapsed_residual_sd_is_a_boundary_fit(d):
    # at V1 the response is an exact function of the fixed effects: its SD goes to 0
    g = d.copy()
    v1 = g["visit"] == "V1"
    g.loc[v1, "y"] = 10.0 + 0.5 * (g.loc[v1, "arm"] == "B")
    for s in ("diag", "csh", "un"):
        with pytest.warns(lmm.ConvergenceWarning, match=r"residual SD is ~0"):
            r = lmm.fit(f"y ~ visit * arm + {s}(visit | subject)", g)
        assert r.status == 1, (s, r.status_message)
        assert r.theta.filter(like="sd[V1]").iloc[0] < 1e-3 * r.theta.filter(like="sd[V2]").iloc[0]


def test_over_parameterised_un_names_the_term_and_what_to_try():
    df = lmm.simulate_longitudinal(3, 6, seed=2)
    with pytest.raises(DataError, match=r"21 in un\(visit \| subject\).*cs\(visit \| subject\) or ar1\(visit \| "
                                        r"subject\) \(6-visit UN has 21\)"):
        lmm.fit("y ~ time + un(visit | subject)", df)
