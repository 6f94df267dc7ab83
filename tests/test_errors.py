"""Every error jaxlmm raises to a user: a ``LMMError`` subclass (``FormulaError`` or
``DataError``, both ``ValueError``) raised on the host, whose message names the column or term
at fault and says what to do; plus the documented warnings (aliased columns, non-convergence)
and the counting of rows dropped for missing values.

Most tests only build the design (``lmm.Model``), which compiles nothing; the few that fit use
tiny data."""

import re
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm
from jaxlmm import DataError, FormulaError, LMMError


@pytest.fixture(scope="module")
def df():
    return lmm.simulate_longitudinal(30, 4, seed=1)


def caret_col(err) -> tuple[str, int]:
    """(formula line, caret column) of a FormulaError with a caret marker."""
    lines = str(err.value).splitlines()
    return lines[-2], lines[-1].index("^")


# ---------------------------------------------------------------------------------------
# the exception hierarchy


def test_error_classes_are_value_errors():
    assert issubclass(FormulaError, LMMError) and issubclass(DataError, LMMError)
    assert issubclass(LMMError, ValueError)
    assert issubclass(lmm.ConvergenceWarning, UserWarning)


# ---------------------------------------------------------------------------------------
# arguments


def test_data_not_a_dataframe(df):
    with pytest.raises(lmm.ArgumentError, match=r"data must be a pandas DataFrame \(or a polars frame, or a dict of "
                                                 r"columns\), not list"):
        lmm.Model("y ~ time", df.to_numpy().tolist())
    # a dict of columns and anything with to_pandas() are accepted
    assert lmm.Model("y ~ time", df.to_dict("list")).info.n_obs == len(df)

    class Polarsish:
        def to_pandas(self):
            return df

    assert lmm.Model("y ~ time", Polarsish()).info.n_obs == len(df)


@pytest.mark.parametrize("formula", ["", "   ", None])
def test_empty_formula(df, formula):
    with pytest.raises(FormulaError, match=r"non-empty string like 'y ~ x \+ \(1 \| subject\)'"):
        lmm.Model(formula, df)


def test_empty_dataframe(df):
    with pytest.raises(DataError, match=r"The data have no rows; pass a DataFrame with one row per observation"):
        lmm.Model("y ~ time + (1 | subject)", df.iloc[:0])


# ---------------------------------------------------------------------------------------
# formula syntax


def test_no_tilde(df):
    with pytest.raises(FormulaError, match=r"Formula 'y time' has no '~': write it as 'response ~ terms'"):
        lmm.Model("y time", df)


def test_two_tildes(df):
    with pytest.raises(FormulaError, match=r"more than one '~'") as e:
        lmm.Model("y ~ x ~ time", df)
    line, col = caret_col(e)
    assert line.strip() == "y ~ x ~ time" and line[col] == "~" and col > line.index("~")


def test_no_response(df):
    with pytest.raises(FormulaError, match=r"no response left of '~': write 'y ~ \.\.\.'"):
        lmm.Model("~ time", df)


def test_response_must_be_a_column_name(df):
    with pytest.raises(FormulaError, match=r"response 'log\(y\)' must be a column name \(transform the column"):
        lmm.Model("log(y) ~ time", df)


def test_nothing_right_of_tilde(df):
    with pytest.raises(FormulaError, match=r"nothing right of '~': add terms, or '1'"):
        lmm.Model("y ~  ", df)


def test_unclosed_parenthesis(df):
    with pytest.raises(FormulaError, match=r"unclosed '\(': add the missing '\)'") as e:
        lmm.Model("y ~ time + (1 | subject", df)
    line, col = caret_col(e)
    assert line[col:] == "(1 | subject"


def test_unmatched_closing_parenthesis(df):
    with pytest.raises(FormulaError, match=r"unmatched '\)'") as e:
        lmm.Model("y ~ time + 1 | subject)", df)
    line, col = caret_col(e)
    assert line[col] == ")" and col == len(line) - 1


def test_unclosed_brace(df):
    with pytest.raises(FormulaError, match=r"unclosed '\{': add the missing '\}'"):
        lmm.Model("y ~ {x + 1", df)


@pytest.mark.parametrize(
    "formula, where",
    [("y ~ time + + arm", "+ arm"), ("y ~ time +", ""), ("y ~ + time", "+ time")],
)
def test_empty_term(df, formula, where):
    with pytest.raises(FormulaError, match=r"empty term \(two '\+' in a row or a trailing '\+'\)") as e:
        lmm.Model(formula, df)
    line, col = caret_col(e)
    assert line.strip() == formula and line[col:].strip() == where


def test_formulaic_syntax_error_shows_position(df):
    pattern = r"Cannot parse the fixed-effects term 'time \* \* arm'.*marked position"
    with pytest.raises(FormulaError, match=pattern) as e:
        lmm.Model("y ~ time * * arm + (1 | subject)", df)
    msg = str(e.value)
    assert "\x1b[" not in msg and "⧛" not in msg  # no terminal colour codes or formulaic markers
    line, col = caret_col(e)
    assert line[col:].startswith("arm") and str(e.value).splitlines()[-1].strip() == "^^^"


def test_formulaic_missing_operator(df):
    with pytest.raises(FormulaError, match=r"Missing operator between `time` and `arm`") as e:
        lmm.Model("y ~ x + time arm", df)
    line, col = caret_col(e)
    assert line[col:].startswith("time arm")


def test_formulaic_syntax_error_in_random_term(df):
    with pytest.raises(FormulaError, match=r"Cannot parse '1 \+ \* time' \(left of '\|' in random term") as e:
        lmm.Model("y ~ x + (1 + * time | subject)", df)
    line, col = caret_col(e)
    assert line[col] == "+" and line[col:].startswith("+ * time")


def test_bar_outside_random_term(df):
    with pytest.raises(FormulaError, match=r"Term '\(1\|subject\) - 1' has a '\|' but is not a random term.*'0 \+'"):
        lmm.Model("y ~ time + (1|subject) - 1", df)


def test_random_term_without_left_side(df):
    pattern = r"Random term '\( \| subject\)' has nothing left of '\|': write \(1 \| subject\)"
    with pytest.raises(FormulaError, match=pattern):
        lmm.Model("y ~ time + ( | subject)", df)


def test_random_term_grouping_must_be_one_column(df):
    with pytest.raises(FormulaError, match=r"'\(1 \| subject \+ arm\)': the grouping factor right of '\|' must be a column"):
        lmm.Model("y ~ time + (1 | subject + arm)", df)


def test_random_term_without_columns(df):
    with pytest.raises(FormulaError, match=r"Random term \(0 \| subject\) has no columns; write \(1 \| subject\)"):
        lmm.Model("y ~ time + (0 | subject)", df)


def test_unknown_covariance_name(df):
    with pytest.raises(FormulaError, match=r"Unknown covariance structure 'ar2'\. Valid names: ad, adh, ar1, .*cs, .*un") as e:
        lmm.Model("y ~ time + ar2(visit | subject)", df)
    msg = str(e.value)
    for name in lmm.COVARIANCE_NAMES:
        assert name in msg
    line, col = caret_col(e)
    assert line[col:].startswith("ar2(")


def test_covariance_term_with_double_bar(df):
    with pytest.raises(FormulaError, match=r"'ar1\(visit \|\| subject\)' uses '\|\|'; write ar1\(visit \| subject\)"):
        lmm.Model("y ~ time + ar1(visit || subject)", df)


def test_covariance_term_same_column_twice(df):
    with pytest.raises(FormulaError, match=r"uses 'subject' as both visit and subject.*two different columns"):
        lmm.Model("y ~ time + ar1(subject | subject)", df)


def test_two_covariance_terms(df):
    with pytest.raises(FormulaError, match=r"more than one covariance term; keep one"):
        lmm.Model("y ~ time + ar1(visit | subject) + cs(visit | subject)", df)


# ---------------------------------------------------------------------------------------
# columns


@pytest.mark.parametrize(
    "formula, bad, good, role",
    [
        ("y ~ tme + arm", "tme", "time", "fixed effects"),
        ("y ~ arm + center(tme)", "tme", "time", "fixed effects"),  # inside a stateful transform
        ("y ~ time + (1 + tme | subject)", "tme", "time", "random term (1 + tme | subject)"),
        ("y ~ time + (1 | subjct)", "subjct", "subject", "grouping factor of (1 | subjct)"),
        ("y ~ time + ar1(vist | subject)", "vist", "visit", "visit of ar1(vist | subject)"),
        ("y ~ time + ar1(visit | subjet)", "subjet", "subject", "subject of ar1(visit | subjet)"),
        ("y ~ Time", "Time", "time", "fixed effects"),
    ],
)
def test_unknown_column(df, formula, bad, good, role):
    pattern = rf"Column '{bad}' \({re.escape(role)}\) is not in the data\. Did you mean '{good}'\? Fix the formula"
    with pytest.raises(DataError, match=pattern) as e:
        lmm.Model(formula, df)
    assert "columns are: ['subject', 'arm', 'sex', 'x', 'visit', 'time', 'y']" in str(e.value)


@pytest.mark.parametrize(
    "drop, formula, role",
    [
        ("visit", "y ~ time + ar1(visit | subject)", "visit of ar1(visit | subject)"),
        ("subject", "y ~ time + cs(visit | subject)", "subject of cs(visit | subject)"),
    ],
)
def test_covariance_column_absent(df, drop, formula, role):
    with pytest.raises(DataError, match=rf"Column '{drop}' \({re.escape(role)}\) is not in the data\.") as e:
        lmm.Model(formula, df.drop(columns=drop))
    assert "Did you mean" not in str(e.value) and "Fix the formula or add the column" in str(e.value)


def test_unknown_function(df):
    with pytest.raises(FormulaError, match=r"Unknown function 'foo' in the fixed-effects formula.*center.*np\.<name>"):
        lmm.Model("y ~ time + foo(x)", df)


def test_unknown_function_close_match(df):
    with pytest.raises(FormulaError, match=r"Unknown function 'centre'.*Did you mean 'center'\?"):
        lmm.Model("y ~ time + centre(x)", df)


def test_column_called_like_a_function(df):
    with pytest.raises(FormulaError, match=r"column 'x' is called like a function; remove the '\(\.\.\.\)'"):
        lmm.Model("y ~ time + x(time)", df)


def test_duplicate_column_names(df):
    d = df.copy()
    d.columns = ["subject", "arm", "sex", "x", "visit", "x", "y"]
    with pytest.raises(DataError, match=r"Column 'x' \(fixed effects\) appears 2 times in the data; rename or drop"):
        lmm.Model("y ~ x + (1 | subject)", d)


def test_response_on_both_sides(df):
    with pytest.raises(FormulaError, match=r"The response 'y' also appears on the right of '~' \(in the fixed part\)"):
        lmm.Model("y ~ time + log(y)", df)


@pytest.mark.parametrize("resp, dtype", [("arm", "str|object"), ("sex", "str|object")])
def test_non_numeric_response(df, resp, dtype):
    pattern = (
        rf"The response '{resp}' is not numeric \(dtype ({dtype})\); "
        rf"convert it, e\.g\. df\['{resp}'\] = pd\.to_numeric"
    )
    with pytest.raises(DataError, match=pattern):
        lmm.Model(f"{resp} ~ time + (1 | subject)", df)


def test_boolean_response(df):
    with pytest.raises(DataError, match=r"The response 'y' is not numeric \(dtype bool\)"):
        lmm.Model("y ~ time", df.assign(y=df.y > 11))


def test_absent_response_is_a_data_error(df):
    model = lmm.Model("yy ~ time + (1 | subject)", df)  # allowed: a design for simulation
    with pytest.raises(DataError, match=r"'yy'.*Did you mean 'y'"):
        model.fit()


# ---------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize(
    "col, formula", [("y", "y ~ time + (1 | subject)"), ("x", "y ~ time + x + ar1(visit | subject)")]
)
def test_infinite_values(df, col, formula):
    d = df.copy()
    d.loc[7, col] = -np.inf if col == "x" else np.inf
    pattern = rf"Column '{col}' has 1 infinite value\(s\), first at row 7; replace them with NaN"
    with pytest.raises(DataError, match=pattern):
        lmm.Model(formula, d)


def test_non_finite_after_transform(df):
    with pytest.raises(
        DataError,
        match=r"fixed-effects column 'log\(x\)' has \d+ non-finite value\(s\).*first at data row \d+.*log of a value <= 0",
    ):
        lmm.Model("y ~ time + log(x) + (1 | subject)", df)
    pattern = r"random term \(0 \+ I\(1/time\) \| subject\) column 'I\(1 / time\)' has 30 non-finite"
    with pytest.raises(DataError, match=pattern):
        lmm.Model("y ~ time + (0 + I(1/time) | subject)", df)


def test_no_rows_after_dropping_missing(df):
    d = df.copy()
    d["y"] = np.nan
    pattern = r"No rows left after dropping rows with missing values.*'y' \(120 of 120\).*Fill in or drop"
    with pytest.raises(DataError, match=pattern):
        lmm.Model("y ~ time + (1 | subject)", d)


def test_fewer_than_two_subjects(df):
    d = df.copy()
    d.loc[d.subject != "S01", "y"] = np.nan
    pattern = r"Only 1 subject \(column 'subject'\) has usable rows; .*at least two subjects"
    with pytest.raises(DataError, match=pattern):
        lmm.Model("y ~ time + ar1(visit | subject)", d)
    with pytest.raises(DataError, match=r"grouping factor 'subject' of \(1 \| subject\) has only 1 level"):
        lmm.Model("y ~ time + (1 | subject)", df[df.subject == "S01"])


def test_constant_response(df):
    pattern = r"The response 'y' is fitted exactly by the fixed effects \(e\.g\. it is constant\)"
    with pytest.raises(DataError, match=pattern):
        lmm.Model("y ~ time + (1 | subject)", df.assign(y=3.0))


# ---------------------------------------------------------------------------------------
# covariance terms and random effects vs the data


def test_two_rows_at_same_visit(df):
    d = pd.concat([df, df.iloc[[5]]], ignore_index=True)  # S02 at V2 twice
    with pytest.raises(
        DataError,
        match=r"Subject 'S02' \(column 'subject'\) has more than one row at visit 'V2' \(column 'visit'\); .*"
        r"one row per subject and visit\. Aggregate or remove duplicates",
    ):
        lmm.Model("y ~ time + ar1(visit | subject)", d)


def test_one_visit_level(df):
    pattern = r"ar1\(visit \| subject\) needs at least two visit levels in column 'visit'; found 1"
    with pytest.raises(DataError, match=pattern):
        lmm.Model("y ~ 1 + ar1(visit | subject)", df[df.visit == "V1"])


def test_un_more_parameters_than_data(df):
    # 3 subjects, 9 rows, 4 visits: UN has 10 parameters, 8 residual degrees of freedom
    d = df[df.subject.isin(["S01", "S02", "S03"])].iloc[[0, 1, 2, 3, 4, 5, 6, 8, 11]]
    with pytest.raises(
        DataError,
        match=r"10 covariance parameters \(10 in un\(visit \| subject\)\) but only 8 residual degrees of freedom \(9 rows, 1 fixed effects\).*"
        r"Use a simpler structure, e.g. cs\(visit \| subject\)",
    ):
        lmm.Model("y ~ 1 + un(visit | subject)", d)


def test_un_visit_pair_never_observed_together(df):
    num = df.subject.str[1:].astype(int)
    d = df[~((num % 2 == 0) & (df.visit == "V2")) & ~((num % 2 == 1) & (df.visit == "V3"))]
    with pytest.raises(
        DataError,
        match=r"No subject has both visit 'V2' and 'V3' \(column 'visit'\).*un\(visit \| subject\).*"
        r"structured covariance",
    ):
        lmm.Model("y ~ time + un(visit | subject)", d)


def test_random_intercept_with_cs(df):
    pattern = r"random intercept together with cs\(visit \| subject\) is not identifiable.*Drop one"
    with pytest.raises(FormulaError, match=pattern):
        lmm.Model("y ~ time + (1 | subject) + cs(visit | subject)", df)


def test_random_terms_with_un(df):
    pattern = r"Random terms together with un\(visit \| subject\) are not identifiable.*Drop the random terms"
    with pytest.raises(FormulaError, match=pattern):
        lmm.Model("y ~ time + (1 | subject) + un(visit | subject)", df)


def test_random_term_on_a_factor_crossed_with_the_residual_subject(df):
    d = df.copy()
    d["rater"] = np.tile(["R1", "R2", "R3", "R4"], len(d) // 4 + 1)[: len(d)]  # varies within subject
    with pytest.raises(FormulaError, match=r"'rater' of \(1 \| rater\) varies within the subjects of ar1\(visit "
                                           r"\| subject\).*not supported with a covariance term yet"):
        lmm.Model("y ~ time + (1 | rater) + ar1(visit | subject)", d)


def test_random_effects_not_fewer_than_rows(df):
    with pytest.raises(
        DataError, match=r"30 random effects \(1 per level of 'subject' x 30 levels\) but there are only 30 usable rows"
    ):
        lmm.Model("y ~ x + (1 | subject)", df[df.visit == "V1"])


def test_visit_levels_sorted_as_text_warns(df):
    d = df.assign(visit=df.visit.map({"V1": "V1", "V2": "V5", "V3": "V10", "V4": "V15"}))
    with pytest.warns(UserWarning, match=r"visit levels of column 'visit' are ordered as text \(V1, V10, V15, V5\)"):
        lmm.Model("y ~ time + ar1(visit | subject)", d)
    with warnings.catch_warnings():  # an ordered categorical is taken as given
        warnings.simplefilter("error")
        d["visit"] = pd.Categorical(d.visit, categories=["V1", "V5", "V10", "V15"], ordered=True)
        lmm.Model("y ~ time + ar1(visit | subject)", d)


# ---------------------------------------------------------------------------------------
# documented warnings and bookkeeping of a fit


def test_rank_deficient_fixed_effects_dropped_with_warning(df):
    d = df.assign(t2=2 * df.time)
    with pytest.warns(UserWarning, match=r"rank deficient: dropping 1 aliased column\(s\) \['t2'\]"):
        res = lmm.fit("y ~ time + t2 + x + (1 | subject)", d)
    assert res.converged
    assert list(res.fixef.index) == ["(Intercept)", "time", "x"]
    assert np.all(np.isfinite(res.fixef.to_numpy()))
    assert "Aliased fixed-effect columns dropped: t2" in res.summary()


def test_non_convergence_returns_result_and_warns(df):
    model = lmm.Model("y ~ time * arm + un(visit | subject)", df)
    with pytest.warns(lmm.ConvergenceWarning, match=r"did not converge: maximum iterations reached after 1 iterations"):
        res = model.fit(max_iter=1)
    assert res.converged is False
    summary = res.summary()
    assert f"Convergence: {res.status_message}" in summary and "maximum iterations" in summary
    assert np.all(np.isfinite(res.fixef.to_numpy()))
    assert np.all(np.isfinite(res.theta.to_numpy()))
    assert np.isfinite(res.deviance)


def test_missing_values_dropped_and_counted(df):
    d = df.copy()
    d.loc[[0, 5, 9], "x"] = np.nan
    d.loc[[2], "y"] = np.nan
    d.loc[[20], "visit"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropping missing rows is silent, not a warning
        res = lmm.fit("y ~ time + x + ar1(visit | subject)", d)
    assert res.info.n_dropped == 5
    assert res.info.n_obs == len(d) - 5
    assert res.info.dropped_by_column == {"y": 1, "x": 3, "visit": 1}
    assert "Rows dropped for missing values: 5 (missing per column: y: 1, x: 3, visit: 1)" in res.summary()
    f = res.fitted()  # indexed like the input, NaN on the dropped rows
    assert f.index.equals(d.index) and np.isnan(f.loc[20]) and f.notna().sum() == len(d) - 5


# ---------------------------------------------------------------------------------------
# prediction on new data


@pytest.fixture(scope="module")
def small_fit(df):
    return lmm.fit("y ~ time + center(x) + (1 | subject)", df)


def test_predict_newdata_missing_column(small_fit, df):
    with pytest.raises(DataError, match=r"Column 'x' \(.*needed for prediction\) is not in the data"):
        small_fit.predict(df.drop(columns="x"))


def test_predict_newdata_not_a_dataframe(small_fit, df):
    with pytest.raises(lmm.ArgumentError, match=r"newdata must be a pandas DataFrame .*not list"):
        small_fit.predict(df.to_numpy().tolist())
