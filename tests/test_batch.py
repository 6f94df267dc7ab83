"""Batched fitting, simulation and the parametric bootstrap."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm as lmm

MODELS = [
    "y ~ time * arm + x + un(visit | subject)",
    "y ~ time * arm + x + cs(visit | subject)",
    "y ~ time * arm + x + csh(visit | subject)",
    "y ~ time * arm + x + ar1(visit | subject)",
    "y ~ time * arm + x + arh1(visit | subject)",
    "y ~ time + arm + x + (time | subject)",
    "y ~ time + arm + x + (1 | subject) + ar1(visit | subject)",
]


@pytest.fixture(scope="module")
def data():
    return lmm.simulate_longitudinal(40, 4, seed=21, cov="arh1", rho=0.5, re_sd=(0.8, 0.3), missing="monotone", missing_rate=0.4)


def refit_deviances(model, Y, reml=True):
    out = []
    for y in Y:
        df = model.data.copy()
        df["y"] = y
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(lmm.fit(model.formula, df, reml=reml))
    return out


@pytest.mark.parametrize("formula", MODELS)
def test_batch_equals_single_fits(data, formula):
    model = lmm.Model(formula, data)
    res = model.fit()
    Y = res.simulate(n=5, seed=2).to_numpy().T.copy()
    batch = model.fit_batch(Y, start=res)
    assert batch.path == "patterns" and batch.converged.all()
    for i, r in enumerate(refit_deviances(model, Y)):
        assert abs(batch.deviance[i] - r.deviance) / abs(r.deviance) < 1e-8
        # both stop at the optimizer tolerance: estimates agree to 1e-4 of their SE
        assert np.all(np.abs(batch.fixef[i] - r.fixef.to_numpy()) < 1e-4 * r.coef_table.std_error.to_numpy())
        np.testing.assert_allclose(batch.se[i], r.coef_table.std_error, rtol=1e-4)


@pytest.mark.parametrize("formula", [MODELS[0], MODELS[3], MODELS[5]])
def test_each_replicate_its_own_missing_cells(data, formula):
    model = lmm.Model(formula, data)
    res = model.fit()
    Y = res.simulate(n=4, seed=5).to_numpy().T.copy()
    rng = np.random.default_rng(0)
    Y[rng.uniform(size=Y.shape) < 0.15] = np.nan  # different cells per replicate
    batch = model.fit_batch(Y, start=res, reml=False)
    assert batch.path == "general" and batch.converged.all()
    for i, r in enumerate(refit_deviances(model, Y, reml=False)):
        assert abs(batch.deviance[i] - r.deviance) / abs(r.deviance) < 1e-8


def test_failing_replicate_does_not_spoil_others(data):
    model = lmm.Model(MODELS[3], data)
    res = model.fit()
    Y = res.simulate(n=4, seed=8).to_numpy().T.copy()
    Y[1] = 0.0 * Y[1]  # zero variance: no finite optimum
    batch = model.fit_batch(Y, start=res)
    assert not batch.converged[1]
    assert batch.converged[[0, 2, 3]].all()
    for i, r in zip([0, 2, 3], refit_deviances(model, Y[[0, 2, 3]])):
        assert abs(batch.deviance[i] - r.deviance) / abs(r.deviance) < 1e-8
    frame = batch.to_frame()
    assert frame.loc[1, "status"] != "converged" and frame.converged.sum() == 3


def test_batch_result_layout(data):
    model = lmm.Model(MODELS[5], data)
    res = model.fit()
    batch = model.fit_batch(res.simulate(n=3, seed=1), start=res)
    assert batch.fixef.shape == (3, len(res.fixef)) and batch.theta.shape == (3, len(res.theta))
    assert batch.loglik.shape == (3,) and batch.status.dtype == np.int32 and batch.n_iter.shape == (3,)
    frame = batch.to_frame()
    assert list(frame.columns[:6]) == ["replicate", "status", "converged", "n_iter", "deviance", "loglik"]
    assert set(res.fixef.index) <= set(frame.columns) and set(res.theta.index) <= set(frame.columns)
    assert "3 fits" in batch.summary()


def test_pilot_start_when_no_fit_given(data):
    model = lmm.Model(MODELS[1], data)
    res = model.fit()
    Y = res.simulate(n=3, seed=4).to_numpy().T.copy()
    a, b = model.fit_batch(Y), model.fit_batch(Y, start=res)
    np.testing.assert_allclose(a.deviance, b.deviance, rtol=1e-9)


def test_simulation_is_counter_based(data):
    res = lmm.fit(MODELS[5], data)
    a = res.simulate(n=10, seed=3).to_numpy().T.copy()
    b = res.simulate(n=25, seed=3).to_numpy().T.copy()
    np.testing.assert_array_equal(a, b[:10])
    assert not np.array_equal(a, res.simulate(n=10, seed=4).to_numpy().T.copy())
    # NaN exactly where the data had no response
    np.testing.assert_array_equal(np.isnan(a[0]), data.y.isna().to_numpy())


def test_bootstrap_is_bit_identical_whatever_the_chunking_or_batch_size(data):
    res = lmm.fit(MODELS[3], data)
    b1 = res.bootstrap(n=70, seed=7)
    b2 = res.bootstrap(n=70, seed=7, chunk_size=40)  # two chunks of 64
    b3 = res.bootstrap(n=20, seed=7)  # the first 20 replicates, in a smaller batch
    pd.testing.assert_frame_equal(b1.estimates, b2.estimates, check_exact=True)
    pd.testing.assert_frame_equal(b1.estimates.iloc[:20], b3.estimates, check_exact=True)
    ci = b1.conf_int()
    assert list(ci.columns) == ["estimate", "lower", "upper", "boot_se"]
    assert set(ci.index) == set(res.fixef.index) | set(res.theta.index)
    assert (ci.lower <= ci.upper).all()
    basic = b1.conf_int("basic")
    np.testing.assert_allclose(basic.lower, 2 * ci.estimate - ci.upper)
    assert "Parametric bootstrap" in b1.summary()


def test_bootstrap_distribution_is_centred():
    df = lmm.simulate_longitudinal(60, 4, seed=30, cov="ar1", rho=0.5)
    res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    boot = res.bootstrap(n=300, seed=1)
    assert boot.n_failed == 0
    est = boot.estimates.mean()
    se = boot.estimates.std()
    for name in res.fixef.index:  # fixed effects are unbiased: mean within 4 MC SEs
        assert abs(est[name] - res.fixef[name]) < 4 * se[name] / np.sqrt(300)
    # bootstrap SE of beta close to the model-based SE
    np.testing.assert_allclose(se[res.fixef.index], res.coef_table.std_error, rtol=0.15)


def test_simulate_from_given_parameters():
    design = lmm.simulate_longitudinal(50, 5, seed=9).drop(columns="y")
    model = lmm.Model("y ~ time + arm + ar1(visit | subject)", design)
    params = {"fixef": {"(Intercept)": 1.0, "time": 0.5, "arm[T.B]": 2.0}, "theta": {"sigma": 2.0, "rho": 0.6}}
    Y = model.simulate(params, n=400, seed=0).to_numpy().T.copy()
    assert Y.shape == (400, len(design)) and not np.isnan(Y).any()
    wide = Y.reshape(400, 50, 5)
    wide = wide - wide.mean(axis=0)  # remove X beta (cell means over replicates)
    C = np.cov(wide.transpose(2, 0, 1).reshape(5, -1))
    assert C[0, 0] == pytest.approx(4.0, rel=0.1)
    assert C[0, 1] / C[0, 0] == pytest.approx(0.6, abs=0.05)
    assert C[0, 2] / C[0, 0] == pytest.approx(0.36, abs=0.05)
    with pytest.raises(lmm.DataError, match="rho"):
        model.simulate({"fixef": params["fixef"], "theta": {"sigma": 2.0, "rho": 1.5}})
    with pytest.raises(lmm.DataError, match="missing"):
        model.simulate({"fixef": {"time": 1.0}, "theta": params["theta"]})
    batch = model.fit_batch(Y[:20])
    assert batch.converged.all()


def test_simulated_random_effects_have_their_variance():
    design = lmm.simulate_longitudinal(300, 4, seed=3).drop(columns="y")
    model = lmm.Model("y ~ time + (time | subject)", design)
    params = {"fixef": [0.0, 0.0], "theta": {"sd[(Intercept)|subject]": 2.0, "sd[time|subject]": 0.0,
                                             "corr[(Intercept),time|subject]": 0.0, "sigma": 0.1}}
    Y = model.simulate(params, n=3, seed=1).to_numpy().T.reshape(3, 300, 4)
    assert Y[..., 0].std() == pytest.approx(2.0, rel=0.1)  # the intercept spread
    assert np.abs(np.diff(Y, axis=-1)).max() < 1.0  # no slope variation, small noise


def test_second_batch_does_not_recompile(data, compiled):
    import jax

    jax.clear_caches()
    model = lmm.Model(MODELS[3], data)
    res = model.fit()
    model.fit_batch(res.simulate(n=4, seed=1), start=res)
    n = len([c for c in compiled if c.startswith("_batch")])
    model.fit_batch(res.simulate(n=4, seed=2), start=res)
    res.bootstrap(n=4, seed=3)
    assert n >= 1 and len([c for c in compiled if c.startswith("_batch")]) == n


def test_float32_option(data):
    model = lmm.Model(MODELS[3], data)
    res = model.fit()
    Y = res.simulate(n=8, seed=6).to_numpy().T.copy()
    b64 = model.fit_batch(Y, start=res)
    b32 = model.fit_batch(Y, start=res, dtype="float32")
    assert b32.converged.mean() >= 0.75
    ok = b32.converged
    np.testing.assert_allclose(b32.deviance[ok], b64.deviance[ok], rtol=1e-5)
    np.testing.assert_allclose(b32.fixef[ok], b64.fixef[ok], rtol=1e-3, atol=1e-3)


def test_bad_batch_shape(data):
    model = lmm.Model(MODELS[3], data)
    with pytest.raises(lmm.DataError, match="shape"):
        model.fit_batch(np.zeros((3, 7)))


def test_fit_many_equals_single_fits():
    sets = [lmm.simulate_longitudinal(20 + 5 * s, 4, seed=40 + s, cov="csh", rho=0.3) for s in range(3)]
    batch = lmm.fit_many("y ~ time + arm + csh(visit | subject)", sets, reml=False)
    assert batch.converged.all()
    for d, dev in zip(sets, batch.deviance):
        assert lmm.fit("y ~ time + arm + csh(visit | subject)", d, reml=False).deviance == pytest.approx(dev, rel=1e-8)
    with pytest.raises(lmm.DataError, match="different model"):
        lmm.fit_many("y ~ visit + csh(visit | subject)", [sets[0], lmm.simulate_longitudinal(20, 5, seed=1)])


SHARD_SCRIPT = r"""
import numpy as np, jax, jaxlmm as lmm
assert len(jax.devices()) == 4
df = lmm.simulate_longitudinal(30, 4, seed=1, cov="ar1")
res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
a = res.bootstrap(n=10, seed=5, devices=jax.devices()[:1])
b = res.bootstrap(n=10, seed=5, devices=jax.devices())
np.testing.assert_array_equal(a.batch.deviance, b.batch.deviance)  # bit-identical on 1 or 4 devices
np.testing.assert_array_equal(a.batch.fixef, b.batch.fixef)
print("SHARDED-OK")
"""


def test_sharded_over_four_cpu_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert "SHARDED-OK" in out.stdout, out.stderr[-3000:]
