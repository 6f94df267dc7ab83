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
