"""Property-based checks of invariants that no single example covers (issue 11), on small random
designs drawn by hypothesis: cluster sizes, missing cells, response and covariate scales,
shifts, row orders, subject labels and index types.

* equivariance: fitting ``c y + a + b x`` gives ``c`` times the SDs and the fixed effects moved
  accordingly, the same correlations, and the deviance plus ``2 (N - p) log |c|``;
* invariance to the order of the rows and to relabelling the subjects;
* results assigned back to the input frame land on the right rows, whatever its index;
* every replicate of a batch has a status, and good replicates are bit-identical with or
  without bad ones beside them; nothing converged is NaN.

CI runs the ``ci`` profile (a few examples per property); ``HYPOTHESIS_PROFILE=long`` runs many
more (run it before a release).
"""

import os
import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import jaxlmm as lmm
from jaxlmm.optimize import INVALID

settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("long", max_examples=80, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

T = 4
FORMULAS = ["y ~ time + x + ar1(visit | subject)", "y ~ time + x + (1 | subject)"]


@st.composite
def designs(draw):
    """A small longitudinal dataset: 8 to 24 subjects, up to 4 visits each, random gaps."""
    n = draw(st.integers(8, 24))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        keep = rng.random(T) < 0.8
        keep[rng.integers(T)] = True  # at least one row per subject
        xi = rng.normal()
        b = rng.normal() * 0.8
        for t in range(T):
            if keep[t]:
                rows.append({"subject": f"S{i:02d}", "visit": f"V{t + 1}", "time": float(t), "x": xi + 0.3 * t,
                             "y": 10 + t + 0.5 * xi + b + rng.normal()})
    df = pd.DataFrame(rows)
    # at least two subjects with two rows, so every model is identified
    if (df.groupby("subject").size() >= 2).sum() < 2:
        df = pd.concat([df, df.assign(visit="V4", time=3.0, subject=df["subject"].iloc[0])]).drop_duplicates(
            ["subject", "visit"])
    return df.reset_index(drop=True)


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


def _sd(names):
    return np.array([n.startswith("sd[") or n == "sigma" for n in names])


@given(df=designs(), formula=st.sampled_from(FORMULAS), log_c=st.integers(-9, 9), sign=st.sampled_from([1, -1]),
       shift=st.floats(-1e3, 1e3), slope=st.floats(-50, 50))
def test_affine_equivariance_of_the_response(df, formula, log_c, sign, shift, slope):
    c = sign * 10.0**log_c
    # a shift of more than 1e6 residual SDs leaves fewer than 10 of float64's digits to the
    # residual variation before any fit starts: equivariance holds to the precision the data carry
    assume((abs(shift) + abs(slope) * df["x"].abs().max()) <= 1e6 * abs(c))
    r0 = quiet(lmm.fit, formula, df)
    r = quiet(lmm.fit, formula, df.assign(y=c * df["y"] + shift + slope * df["x"]))
    assert r.status == r0.status
    expect = c * r0.fixef.to_numpy()
    expect[0] += shift
    expect[list(r0.fixef.index).index("x")] += slope
    se0 = r0.coef_table["std_error"].to_numpy()
    np.testing.assert_allclose(r.fixef.to_numpy(), expect, rtol=0, atol=1e-4 * abs(c) * se0.max() + 1e-9 * abs(shift))
    sd = _sd(r0.theta.index)
    th, th0 = r.theta.to_numpy(), r0.theta.to_numpy()
    np.testing.assert_allclose(th[sd], abs(c) * th0[sd], rtol=1e-4, atol=1e-5 * abs(c) * th0[sd].max())
    np.testing.assert_allclose(th[~sd], th0[~sd], atol=1e-4)
    shift_dev = 2 * (r0.n_obs - r0.p) * np.log(abs(c))
    assert abs(r.deviance - shift_dev - r0.deviance) < 1e-6 * (1 + abs(r0.deviance))


@given(df=designs(), log_c=st.integers(-6, 6))
def test_covariate_scale_equivariance(df, log_c):
    c = 10.0**log_c
    f = "y ~ time + x + (1 | subject)"
    r0 = quiet(lmm.fit, f, df)
    r = quiet(lmm.fit, f, df.assign(x=c * df["x"]))
    b, b0 = r.fixef.to_numpy(), r0.fixef.to_numpy()
    i = list(r0.fixef.index).index("x")
    b = b.copy()
    b[i] *= c
    np.testing.assert_allclose(b, b0, rtol=0, atol=1e-4 * r0.coef_table["std_error"].max())
    assert abs(r.deviance - 2 * np.log(c) - r0.deviance) < 1e-6 * (1 + abs(r0.deviance))


@given(df=designs(), formula=st.sampled_from(FORMULAS), seed=st.integers(0, 1000))
def test_row_order_and_subject_labels_do_not_matter(df, formula, seed):
    rng = np.random.default_rng(seed)
    r0 = quiet(lmm.fit, formula, df)
    perm = df.iloc[rng.permutation(len(df))]
    names = {s: f"P{j}" for j, s in enumerate(rng.permutation(df["subject"].unique()))}
    relabelled = perm.assign(subject=perm["subject"].map(names))
    r = quiet(lmm.fit, formula, relabelled)
    assert r.status == r0.status
    assert abs(r.deviance - r0.deviance) < 1e-8 * (1 + abs(r0.deviance))
    # two optimisations stop at the tolerance: estimates agree to 1e-4 of their SE (as test_batch)
    np.testing.assert_allclose(r.fixef, r0.fixef, rtol=0, atol=1e-4 * r0.coef_table["std_error"].max())
    # fitted values follow their rows (conditional ones through the BLUPs, to optimiser precision)
    np.testing.assert_allclose(r.fitted(conditional=False).loc[df.index], r0.fitted(conditional=False), rtol=0,
                               atol=1e-5 * r0.coef_table["std_error"].max())
    np.testing.assert_allclose(r.fitted().loc[df.index], r0.fitted(), rtol=0, atol=1e-4 * df["y"].std())


@given(df=designs(), kind=st.sampled_from(["strings", "shuffled", "offset"]), seed=st.integers(0, 1000),
       drop=st.integers(0, 3))
def test_assignment_back_aligns_whatever_the_index(df, kind, seed, drop):
    rng = np.random.default_rng(seed)
    g = df.iloc[rng.permutation(len(df))].copy()
    if kind == "strings":
        g.index = [f"row{j}" for j in range(len(g))]
    elif kind == "offset":
        g.index = np.arange(len(g)) * 7 + 1000
    g.loc[g.index[:drop], "y"] = np.nan  # rows without a response
    r = quiet(lmm.fit, "y ~ time + x + (1 | subject)", g)
    out = g.assign(fit=r.fitted(), res=r.residuals())
    ok = out["y"].notna()
    assert out.loc[~ok, "fit"].isna().all()
    np.testing.assert_allclose(out.loc[ok, "fit"] + out.loc[ok, "res"], out.loc[ok, "y"], rtol=1e-12)
    pred = r.predict(g)
    np.testing.assert_allclose(pred[ok], out.loc[ok, "fit"], rtol=1e-10)


@given(df=designs(), n_bad=st.integers(1, 3), seed=st.integers(0, 1000))
def test_batch_replicates_do_not_depend_on_their_neighbours(df, n_bad, seed):
    rng = np.random.default_rng(seed)
    model = lmm.Model("y ~ time + x + ar1(visit | subject)", df)
    Y = rng.normal(size=(6, len(df))) + df["y"].to_numpy()
    good = model.fit_batch(Y)
    bad_rows = []
    for k in range(n_bad):
        row = np.full(len(df), np.nan) if k % 2 == 0 else Y[0].copy()
        if k % 2:
            row[rng.integers(len(df))] = np.inf
        bad_rows.append(row)
    pos = np.sort(rng.choice(len(Y) + n_bad, n_bad, replace=False))
    mixed, it = [], iter(Y)
    for i in range(len(Y) + n_bad):
        mixed.append(bad_rows.pop(0) if i in pos else next(it))
    out = model.fit_batch(np.vstack(mixed))
    keep = [i for i in range(len(mixed)) if i not in pos]
    assert (out.status[pos] == INVALID).all()
    for name in ("fixef", "theta", "deviance", "status"):
        assert np.array_equal(getattr(out, name)[keep], getattr(good, name)), name
    conv = good.converged
    assert np.isfinite(good.fixef[conv]).all() and np.isfinite(good.theta[conv]).all()

