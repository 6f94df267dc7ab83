"""One table of all covariance structures drives these tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlmm.covariance import STRUCTURES, RandomBlock, make_structure

ALL = sorted(STRUCTURES)


@pytest.mark.parametrize("T", [2, 4, 7])
@pytest.mark.parametrize("name", ALL)
def test_positive_definite_for_random_theta(name, T):
    st = make_structure(name, T)
    rng = np.random.default_rng(T)
    for _ in range(20):
        th = jnp.asarray(rng.normal(scale=1.5, size=st.n_params))
        S = np.asarray(st.matrix(th))
        assert S.shape == (T, T)
        np.testing.assert_allclose(S, S.T, atol=1e-12)
        assert np.linalg.eigvalsh(S).min() > 0


@pytest.mark.parametrize("name", ALL)
def test_natural_round_trip(name):
    st = make_structure(name, 5)
    rng = np.random.default_rng(1)
    th = rng.normal(scale=0.7, size=st.n_params)
    nat = np.asarray(st.natural(jnp.asarray(th)))
    assert len(nat) == len(st.names([f"v{i}" for i in range(5)]))
    np.testing.assert_allclose(st.from_natural(nat), th, rtol=1e-9, atol=1e-9)
    # the matrix from natural parameters is the same matrix
    np.testing.assert_allclose(st.matrix(jnp.asarray(st.from_natural(nat))), st.matrix(jnp.asarray(th)), rtol=1e-10)


def test_csh_with_equal_sds_is_cs():
    T = 4
    cs, csh = make_structure("cs", T), make_structure("csh", T)
    for sigma, rho in [(1.3, 0.4), (0.7, -0.2)]:
        a = cs.matrix(jnp.asarray(cs.from_natural([sigma, rho])))
        b = csh.matrix(jnp.asarray(csh.from_natural([sigma] * T + [rho])))
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_arh1_with_equal_sds_is_ar1():
    T = 6
    ar1, arh1 = make_structure("ar1", T), make_structure("arh1", T)
    for sigma, rho in [(2.0, 0.9), (0.5, -0.3)]:
        a = ar1.matrix(jnp.asarray(ar1.from_natural([sigma, rho])))
        b = arh1.matrix(jnp.asarray(arh1.from_natural([sigma] * T + [rho])))
        np.testing.assert_allclose(a, b, rtol=1e-12)
        lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
        np.testing.assert_allclose(a, sigma**2 * rho**lag, rtol=1e-12)


def test_cs_correlation_range():
    T = 5
    cs = make_structure("cs", T)
    lo = np.asarray(cs.natural(jnp.asarray([0.0, -50.0])))[1]
    hi = np.asarray(cs.natural(jnp.asarray([0.0, 50.0])))[1]
    assert lo == pytest.approx(-1 / (T - 1), abs=1e-12) and hi == pytest.approx(1.0, abs=1e-12)


def test_ar1_gradient_finite_at_rho_zero():
    st = make_structure("ar1", 5)
    g = jax.grad(lambda th: jnp.sum(st.matrix(th) ** 2))(jnp.asarray([0.1, 0.0]))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("k,correlated", [(1, True), (2, True), (3, True), (2, False)])
def test_random_block(k, correlated):
    b = RandomBlock(tuple(f"c{i}" for i in range(k)), "g", correlated)
    rng = np.random.default_rng(k)
    th = rng.normal(size=b.n_params)
    if correlated:  # positive diagonal of the factor: the canonical representative
        rows, cols = np.tril_indices(k)
        th[rows == cols] = np.abs(th[rows == cols]) + 0.1
    else:
        th = np.abs(th) + 0.1
    G = np.asarray(b.matrix(jnp.asarray(th)))
    assert np.linalg.eigvalsh(G).min() > 0
    nat = np.asarray(b.natural(jnp.asarray(th)))
    assert len(nat) == len(b.names())
    np.testing.assert_allclose(b.from_natural(nat), th, rtol=1e-9, atol=1e-12)
    # the factor's sign does not matter: a zero variance is an interior point
    if correlated:
        np.testing.assert_allclose(b.matrix(jnp.asarray(-th)), G, rtol=1e-12)
