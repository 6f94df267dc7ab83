"""The likelihood against a dense multivariate-normal reference; gradients; jit; recompiles."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlmm as lmm
from helpers import dense_deviance
from jaxlmm.likelihood import deviance

MODELS = [
    "y ~ time * arm + x + un(visit | subject)",
    "y ~ time * arm + x + cs(visit | subject)",
    "y ~ time * arm + x + csh(visit | subject)",
    "y ~ time * arm + x + ar1(visit | subject)",
    "y ~ time * arm + x + arh1(visit | subject)",
    "y ~ time * arm + x + diag(visit | subject)",
    "y ~ time + arm + x + (time | subject)",
    "y ~ time + arm + x + (time || subject)",
    "y ~ time + arm + x + (1 | subject) + ar1(visit | subject)",
    "y ~ time + arm + x",
]


@pytest.fixture(scope="module")
def data():
    # intermittent gaps and singletons: the masks must handle both
    df = lmm.simulate_longitudinal(25, 5, seed=3, cov="ar1", rho=0.5, re_sd=(1.0, 0.3), missing="intermittent", missing_rate=0.3)
    df.loc[df.subject == "S01", "y"] = [1.0, np.nan, np.nan, np.nan, np.nan]
    return df


def model_dense_deviance(model, theta, reml):
    """-2 log L from the stacked data with scipy's multivariate normal (no masks, no padding)."""
    info, spec, a = model.info, model.spec, model.arrays
    th = jnp.asarray(theta)
    R = np.asarray(spec.R(th))
    G = np.asarray(spec.G(th)) if spec.q else np.zeros((0, 0))
    Vs, Xs, ys = [], [], []
    for s in range(info.S):
        obs = np.nonzero(a.m[s] > 0)[0]
        Z = a.Z[s, obs]
        Vs.append(R[np.ix_(obs, obs)] + Z @ G @ Z.T)
        Xs.append(a.X[s, obs])
        ys.append(a.y[s, obs])
    N = sum(len(y) for y in ys)
    V = np.zeros((N, N))
    i = 0
    for Vi in Vs:
        k = Vi.shape[0]
        V[i : i + k, i : i + k] = Vi
        i += k
    return dense_deviance(np.vstack(Xs), np.concatenate(ys), V, reml)


def random_theta(spec, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.4, size=spec.n_theta)


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
@pytest.mark.parametrize("formula", MODELS)
def test_deviance_matches_dense_reference(data, formula, reml):
    model = lmm.Model(formula, data)
    th = random_theta(model.spec, 0)
    ours = float(deviance(jnp.asarray(th), model.arrays.to_jax(), model.spec, reml))
    ref = model_dense_deviance(model, th, reml)
    assert ours == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("formula", MODELS)
def test_gradient_matches_finite_differences(data, formula):
    model = lmm.Model(formula, data)
    d = model.arrays.to_jax()
    f = lambda th: deviance(th, d, model.spec, True)  # noqa: E731
    th = jnp.asarray(random_theta(model.spec, 1))
    g = np.asarray(jax.grad(f)(th))
    h = 1e-5
    fd = np.array(
        [(float(f(th.at[i].add(h))) - float(f(th.at[i].add(-h)))) / (2 * h) for i in range(th.shape[0])]
    )
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * max(1.0, np.max(np.abs(fd))))


def test_jit_equals_no_jit(data):
    model = lmm.Model(MODELS[8], data)
    d = model.arrays.to_jax()
    th = jnp.asarray(random_theta(model.spec, 2))
    jitted = jax.jit(deviance, static_argnames=("spec", "reml"))(th, d, spec=model.spec, reml=True)
    with jax.disable_jit():
        plain = deviance(th, d, model.spec, True)
    assert float(jitted) == pytest.approx(float(plain), rel=1e-13)


def test_fit_jit_equals_no_jit(data):
    model = lmm.Model(MODELS[3], data)
    res = model.fit()
    with jax.disable_jit():
        res2 = model.fit()
    assert res2.deviance == pytest.approx(res.deviance, rel=1e-12)
    np.testing.assert_allclose(res2.fixef, res.fixef, rtol=1e-9)


def test_same_padded_shape_does_not_recompile(compiled):
    f = "y ~ time * arm + x + ar1(visit | subject)"
    a = lmm.simulate_longitudinal(40, 5, seed=10, cov="ar1", missing="monotone")
    b = lmm.simulate_longitudinal(37, 5, seed=11, cov="ar1", missing="intermittent")  # same bucket (40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lmm.fit(f, a)
        n0 = compiled.count("_fit_compiled")
        res = lmm.fit(f, b)
        lmm.fit(f, b, reml=False)  # REML and ML share one program
    assert n0 >= 1
    assert res.info.S_pad == lmm.Model(f, a).info.S_pad
    assert compiled.count("_fit_compiled") == n0


def test_deviance_is_differentiable_in_data(data):
    model = lmm.Model(MODELS[3], data)
    d = model.arrays.to_jax()
    th = jnp.asarray(random_theta(model.spec, 4))
    gy = jax.grad(lambda y: deviance(th, d._replace(y=y), model.spec, True))(d.y)
    assert np.all(np.isfinite(gy))
    assert np.all(np.asarray(gy)[np.asarray(d.m) == 0] == 0)  # masked cells do not matter
