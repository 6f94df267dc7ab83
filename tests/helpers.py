"""Checks shared by the test modules."""

import jax
import jax.numpy as jnp
import numpy as np


def assert_gradient(f, theta, rtol=1e-5, atol=1e-7, h=1e-6):
    """``jax.grad(f)`` at ``theta`` equals central finite differences of ``f``."""
    th = np.asarray(theta, dtype=float)
    g = np.asarray(jax.grad(f)(jnp.asarray(th)))
    fd = np.array([(float(f(jnp.asarray(th + h * e))) - float(f(jnp.asarray(th - h * e)))) / (2 * h)
                   for e in np.eye(len(th))])
    np.testing.assert_allclose(g, fd, rtol=rtol, atol=atol)


def dense_deviance(X, y, V, reml):
    """-2 log L (ML, or REML with SAS's constant) of ``y ~ N(X beta, V)`` at the GLS estimate,
    by scipy's multivariate normal on the stacked data (no masks, no padding)."""
    from scipy.stats import multivariate_normal

    W = np.linalg.inv(V)
    A = X.T @ W @ X
    beta = np.linalg.solve(A, X.T @ W @ y)
    dev = -2 * multivariate_normal(mean=X @ beta, cov=V).logpdf(y)
    if reml:
        dev += np.linalg.slogdet(A)[1] - X.shape[1] * np.log(2 * np.pi)
    return dev
