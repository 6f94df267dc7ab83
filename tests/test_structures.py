"""One table of all covariance structures drives these tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_gradient
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


CLOSED_FORM = {"id", "diag", "cs", "csh", "ar1", "arh1", "ad", "adh", "sp_exp", "sp_pow"}  # structures with ``inverse`` (covariance.py)


@pytest.mark.parametrize("name", ALL)
def test_closed_form_inverse_matches_dense(name):
    """``inverse(theta, m)`` equals the inverse and log-determinant of the covariance restricted to
    the observed visits (zero elsewhere), for random masks (gaps, single visits, none), and its
    gradient equals the one through a Cholesky factorisation."""
    T = 7
    st = make_structure(name, T)
    assert (getattr(st, "inverse", None) is not None) == (name in CLOSED_FORM)
    if name not in CLOSED_FORM:
        return
    rng = np.random.default_rng(3)
    m = (rng.random((40, T)) > 0.45).astype(float)
    m[0], m[1], m[2, :] = 0.0, 1.0, 0.0
    m[2, 3] = 1.0
    m = jnp.asarray(m)
    for scale in (0.5, 1.5):
        th = jnp.asarray(rng.normal(scale=scale, size=st.n_params))
        W, logdet = st.inverse(th, m)
        V = np.asarray(st.matrix(th))
        for k in range(m.shape[0]):
            idx = np.nonzero(np.asarray(m[k]))[0]
            dense = np.zeros((T, T))
            ld = 0.0
            if len(idx):
                Vo = V[np.ix_(idx, idx)]
                dense[np.ix_(idx, idx)] = np.linalg.inv(Vo)
                ld = np.linalg.slogdet(Vo)[1]
            np.testing.assert_allclose(np.asarray(W[k]), dense, rtol=1e-10, atol=1e-10 * np.abs(dense).max(initial=1))
            np.testing.assert_allclose(float(logdet[k]), ld, rtol=1e-12, atol=1e-12)

    def via_inverse(t):
        W, ld = st.inverse(t, m)
        return jnp.sum(W * jnp.arange(T * T).reshape(T, T)) + jnp.sum(ld)

    def via_cholesky(t):
        mm = m[:, :, None] * m[:, None, :]
        V = mm * st.matrix(t) + jnp.eye(T) * (1 - m)[:, :, None]
        L = jnp.linalg.cholesky(V)
        Li = jax.scipy.linalg.solve_triangular(L, jnp.broadcast_to(jnp.eye(T), V.shape), lower=True)
        W = jnp.einsum("kst,ksu->ktu", Li, Li) * mm
        ld = 2 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
        return jnp.sum(W * jnp.arange(T * T).reshape(T, T)) + jnp.sum(ld)

    np.testing.assert_allclose(jax.grad(via_inverse)(th), jax.grad(via_cholesky)(th), rtol=1e-9, atol=1e-9)


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


def test_ante_dependence_special_cases():
    """AD with equal correlations is AR(1); ADH with equal SDs is AD."""
    T = 5
    ad, adh, ar1 = make_structure("ad", T), make_structure("adh", T), make_structure("ar1", T)
    for sigma, rho in [(1.7, 0.6), (0.4, -0.35)]:
        a = ad.matrix(jnp.asarray(ad.from_natural([sigma] + [rho] * (T - 1))))
        np.testing.assert_allclose(a, ar1.matrix(jnp.asarray(ar1.from_natural([sigma, rho]))), rtol=1e-12)
        b = adh.matrix(jnp.asarray(adh.from_natural([sigma] * T + [rho, 0.1, -0.2, 0.3])))
        np.testing.assert_allclose(b, ad.matrix(jnp.asarray(ad.from_natural([sigma, rho, 0.1, -0.2, 0.3]))),
                                   rtol=1e-12)


def test_toeplitz_special_cases():
    """TOEPH with equal SDs is TOEP; TOEP with partial autocorrelations (rho, 0, ...) is AR(1);
    with two visits TOEP is CS; the lag correlations round-trip through Durbin-Levinson."""
    T = 5
    toep, toeph, ar1 = make_structure("toep", T), make_structure("toeph", T), make_structure("ar1", T)
    for sigma, r in [(1.3, [0.5, 0.2, -0.1, 0.05]), (0.6, [-0.4, 0.3, -0.2, 0.1])]:
        a = toep.matrix(jnp.asarray(toep.from_natural([sigma] + r)))
        b = toeph.matrix(jnp.asarray(toeph.from_natural([sigma] * T + r)))
        np.testing.assert_allclose(a, b, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(a)[0, 1:] / sigma**2, r, rtol=1e-10)
    z = jnp.asarray([np.log(1.7), np.arctanh(0.6), 0.0, 0.0, 0.0])
    np.testing.assert_allclose(toep.matrix(z), ar1.matrix(jnp.asarray(ar1.from_natural([1.7, 0.6]))), rtol=1e-12)
    cs2, toep2 = make_structure("cs", 2), make_structure("toep", 2)
    np.testing.assert_allclose(toep2.matrix(jnp.asarray(toep2.from_natural([1.1, 0.35]))),
                               cs2.matrix(jnp.asarray(cs2.from_natural([1.1, 0.35]))), rtol=1e-12)


def test_arma_and_spatial_special_cases():
    """ARMA(1,1) with theta = 0 (SAS: Gamma = Rho) is AR(1); SAS's (Rho, Gamma) map back to
    (phi, theta); sp_pow over integer times is AR(1) with rho > 0, and sp_exp with range d is
    sp_pow with rho = exp(-1/d); in one coordinate both have the Markov inverse."""
    T = 6
    arma, ar1 = make_structure("arma11", T), make_structure("ar1", T)
    th = jnp.asarray([0.3, np.arctanh(0.6), 0.0])
    np.testing.assert_allclose(arma.matrix(th), ar1.matrix(th[:2]), rtol=1e-13)
    rng = np.random.default_rng(5)
    for _ in range(10):
        th = jnp.asarray(rng.normal(size=3))
        phi = arma.sas_params(th)  # Rho, Gamma, Residual
        np.testing.assert_allclose(arma.sas_matrix(phi), arma.matrix(th), rtol=1e-10, atol=1e-12)
        assert abs(float(phi[1]) - float(np.asarray(arma.matrix(th))[0, 1] / np.exp(2 * float(th[0])))) < 1e-12
    coords = tuple((float(t),) for t in range(T))
    spow, sexp = make_structure("sp_pow", T, coords), make_structure("sp_exp", T, coords)
    rho = 0.7
    np.testing.assert_allclose(spow.matrix(jnp.asarray([0.2, np.log(rho / (1 - rho))])),
                               ar1.matrix(jnp.asarray([0.2, np.arctanh(rho)])), rtol=1e-12)
    np.testing.assert_allclose(sexp.matrix(jnp.asarray([0.2, np.log(-1 / np.log(rho))])),
                               ar1.matrix(jnp.asarray([0.2, np.arctanh(rho)])), rtol=1e-12)
    # irregular times and two coordinates: the correlation is the function of the distance
    t = (0.0, 0.35, 1.2, 4.0)
    st = make_structure("sp_gau", 4, tuple((x,) for x in t))
    C = np.asarray(st.matrix(jnp.asarray([0.0, np.log(1.5)])))
    np.testing.assert_allclose(C, np.exp(-((np.subtract.outer(t, t) / 1.5) ** 2)), rtol=1e-13)
    pts = ((0.0, 0.0), (3.0, 4.0), (1.0, 1.0))
    st = make_structure("sp_exp", 3, pts)
    assert getattr(st, "inverse", None) is None  # two coordinates: not Markov
    C = np.asarray(st.matrix(jnp.asarray([0.0, np.log(2.0)])))
    assert abs(C[0, 1] - np.exp(-5.0 / 2.0)) < 1e-14 and abs(C[0, 2] - np.exp(-np.sqrt(2.0) / 2.0)) < 1e-14


@pytest.mark.parametrize("name", ALL)
def test_gradient_matches_finite_differences(name):
    """d/dtheta of a generic scalar of the matrix (and of the log-determinant) against central
    finite differences, at a random point."""
    T = 5
    st = make_structure(name, T)
    rng = np.random.default_rng(11)
    th = rng.normal(scale=0.6, size=st.n_params)
    W = jnp.asarray(rng.normal(size=(T, T)))

    def f(t):
        M = st.matrix(t)
        return jnp.sum(W * M) + jnp.linalg.slogdet(M)[1]

    assert_gradient(f, th, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_sas_parameters_round_trip(name):
    """SAS's parameters (Kenward-Roger's and ``res.covparms``'): one name each, and the matrix
    from them is the matrix."""
    T = 5
    st = make_structure(name, T)
    rng = np.random.default_rng(12)
    for _ in range(5):
        th = jnp.asarray(rng.normal(scale=0.6, size=st.n_params))
        phi = st.sas_params(th)
        assert len(st.sas_names()) == len(phi) == st.n_params
        np.testing.assert_allclose(st.sas_matrix(phi), st.matrix(th), rtol=1e-10, atol=1e-12)
