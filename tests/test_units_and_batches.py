"""Results do not depend on the units of the data, and a batch replicate's result does not
depend on the replicates beside it (issue 11).

* Fitting ``c y`` gives ``c beta``, ``c`` times every SD, the same correlations and the
  deviance plus ``2 (N - p) log c`` (REML; ``2 N log c`` for ML), for ``c`` from 1e-12 to 1e12,
  with the same status; a covariate multiplied by ``c`` divides its coefficient by ``c``.
* A replicate of ``fit_batch`` that cannot be fitted (all NaN, an infinite value) gets the
  status "invalid data" and NaN; the good ones are bit-identical with and without it.
"""

import warnings

import numpy as np
import pytest

import jaxlmm as lmm
from jaxlmm.optimize import INVALID

SCALES = [1e-12, 1e-6, 1e6, 1e12]


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@pytest.fixture(scope="module")
def long():
    return lmm.simulate_longitudinal(40, 4, cov="un", re_sd=(0.0, 0.0), seed=11)


@pytest.fixture(scope="module")
def slopes():
    return lmm.simulate_longitudinal(40, 5, cov="id", re_sd=(1.0, 0.4), re_corr=0.3, seed=12)


@pytest.fixture(scope="module")
def nested():
    return lmm.simulate_nested((("school", 8), ("class", 3)), n_rows=4, sd=(1.0, 0.6), seed=13)


CASES = [
    ("long", "y ~ time + arm + un(visit | subject)"),
    ("long", "y ~ time + arm + cs(visit | subject)"),
    ("long", "y ~ time + arm + arh1(visit | subject)"),
    ("slopes", "y ~ time + arm + (1 + time | subject)"),
    ("nested", "y ~ x + trt + (1 | school/class)"),
]


def _sd_mask(names):
    return np.array([n.startswith("sd[") or n == "sigma" for n in names])


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
@pytest.mark.parametrize("data_name,formula", CASES, ids=[f for _, f in CASES])
def test_response_scale_equivariance(request, data_name, formula, reml):
    d = request.getfixturevalue(data_name)
    r0 = quiet(lmm.fit, formula, d, reml=reml)
    assert r0.converged
    sd = _sd_mask(r0.theta.index)
    for c in SCALES:
        r = quiet(lmm.fit, formula, d.assign(y=d["y"] * c), reml=reml)
        assert r.status == r0.status, (c, r.status_message)
        np.testing.assert_allclose(r.fixef.to_numpy() / c, r0.fixef.to_numpy(), rtol=1e-6,
                                   atol=1e-6 * r0.coef_table["std_error"].min())
        np.testing.assert_allclose(r.coef_table["std_error"].to_numpy() / c, r0.coef_table["std_error"], rtol=1e-5)
        th, th0 = r.theta.to_numpy(), r0.theta.to_numpy()
        np.testing.assert_allclose(th[sd] / c, th0[sd], rtol=1e-5, atol=1e-6 * th0[sd].max())
        np.testing.assert_allclose(th[~sd], th0[~sd], atol=1e-5)
        shift = 2 * (r0.n_obs - (r0.p if reml else 0)) * np.log(c)
        assert r.deviance - shift == pytest.approx(r0.deviance, abs=1e-6 * abs(r0.deviance))
        np.testing.assert_allclose(r.coef_table["df"], r0.coef_table["df"], rtol=1e-4)


@pytest.mark.parametrize("c", SCALES)
def test_covariate_scale_equivariance(slopes, c):
    f = "y ~ time + x + arm + (1 + time | subject)"
    r0 = quiet(lmm.fit, f, slopes)
    r = quiet(lmm.fit, f, slopes.assign(x=slopes["x"] * c, time=slopes["time"] * c))
    assert r.status == r0.status
    b, b0 = r.fixef.copy(), r0.fixef
    b["x"] *= c
    b["time"] *= c
    np.testing.assert_allclose(b.to_numpy(), b0.to_numpy(), rtol=1e-6, atol=1e-6 * r0.coef_table["std_error"].min())
    sd, sd0 = r.theta.to_numpy().copy(), r0.theta.to_numpy()
    names = list(r0.theta.index)
    slope = names.index("sd[time|subject]")
    sd[slope] *= c
    np.testing.assert_allclose(sd, sd0, rtol=1e-5, atol=1e-6)
    # the REML criterion has log|X'V^-1X|: two columns multiplied by c add 4 log c
    assert r.deviance - 4 * np.log(c) == pytest.approx(r0.deviance, abs=1e-6 * abs(r0.deviance))


# ---- batches -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_model():
    d = lmm.simulate_longitudinal(50, 4, cov="ar1", seed=21)
    model = lmm.Model("y ~ time + arm + ar1(visit | subject)", d)
    res = model.fit()
    Y = model.simulate({"fixef": res.fixef, "theta": res.theta}, n=40, seed=3).to_numpy().T.copy()
    return model, Y


def test_bad_replicates_get_their_own_status_and_leave_the_others_bit_identical(batch_model):
    model, Y = batch_model
    good = model.fit_batch(Y)
    assert good.converged.all()
    nan_row = np.full(Y.shape[1], np.nan)
    inf_row = Y[5].copy()
    inf_row[3] = np.inf
    few = np.full(Y.shape[1], np.nan)
    few[:2] = 1.0
    Yb = np.vstack([nan_row, Y[:20], inf_row, few, Y[20:]])
    with_bad = model.fit_batch(Yb)
    bad_rows = [0, 21, 22]
    keep = [i for i in range(len(Yb)) if i not in bad_rows]
    assert list(with_bad.status[bad_rows]) == [INVALID] * 3
    assert np.isnan(with_bad.fixef[bad_rows]).all() and np.isnan(with_bad.deviance[bad_rows]).all()
    for name in ("fixef", "se", "theta", "deviance", "status", "n_iter"):
        assert np.array_equal(getattr(with_bad, name)[keep], getattr(good, name)), name
    assert "invalid data: 3" in with_bad.summary()


def test_a_scaled_or_constant_replicate_does_not_disturb_the_others(batch_model):
    model, Y = batch_model
    good = model.fit_batch(Y)
    const = np.full(Y.shape[1], 2.5)
    Yb = np.vstack([Y[0] * 1e8, const, Y])
    out = quiet(model.fit_batch, Yb)
    assert out.status[1] == INVALID and np.isnan(out.fixef[1]).all()  # a constant response: nothing to fit
    np.testing.assert_allclose(out.fixef[2:], good.fixef, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(out.deviance[2:], good.deviance, rtol=1e-10)
    # the scaled replicate is the first replicate in other units
    np.testing.assert_allclose(out.fixef[0] / 1e8, good.fixef[0], rtol=1e-6)
    n, p = np.isfinite(Y[0]).sum(), good.fixef.shape[1]
    assert out.deviance[0] - 2 * (n - p) * np.log(1e8) == pytest.approx(good.deviance[0], abs=1e-6)


def test_a_batch_with_no_good_replicate_is_refused(batch_model):
    model, Y = batch_model
    with pytest.raises(lmm.DataError, match="No replicate"):
        model.fit_batch(np.full((3, Y.shape[1]), np.nan))
