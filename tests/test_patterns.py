"""The per-pattern payload against the per-subject one: the same deviance, gradient and
Hessian (the pattern sums, their column supports and the derivative rule of the pattern
factorisation are each checked against the plain per-subject likelihood)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlmm as lmm
from jaxlmm import fitting, likelihood

CASES = [
    # formula, missing, expect column supports
    ("y ~ arm * visit + x + un(visit | subject)", "monotone", True),
    ("y ~ arm * visit + x + cs(visit | subject)", "intermittent", True),
    ("y ~ arm * visit + x + (1 | subject) + ar1(visit | subject)", "intermittent", True),
    ("y ~ time * arm + x + (time | subject)", "monotone", False),
    # no random effects: the closed-form inverses of jaxlmm.covariance
    ("y ~ arm * visit + x + ar1(visit | subject)", "intermittent", True),
    ("y ~ arm * visit + x + arh1(visit | subject)", "monotone", True),
    ("y ~ arm * visit + x + csh(visit | subject)", "intermittent", True),
    ("y ~ arm * visit + x + diag(visit | subject)", "intermittent", True),
]


def _payloads(formula, missing):
    df = lmm.simulate_longitudinal(120, 5, seed=3, cov="un", missing=missing, missing_rate=0.3,
                                   re_sd=(1.0, 0.3))
    m = lmm.Model(formula, df)
    name, pat = fitting.make_payload(m.arrays, m.spec)
    assert name == "patterns"
    theta = jnp.asarray(fitting.start_values(m.arrays, m.spec)) + 0.05
    return m, pat, m.arrays.to_jax(), theta


@pytest.mark.parametrize("formula,missing,supports", CASES)
def test_patterns_equal_subjects(formula, missing, supports):
    m, pat, subj, theta = _payloads(formula, missing)
    assert (pat.design.E is not None) == supports
    for reml in (True, False):
        f = lambda t, P: likelihood.deviance(t, P, m.spec, reml)  # noqa: E731
        d_p, d_s = f(theta, pat), f(theta, subj)
        np.testing.assert_allclose(d_p, d_s, rtol=1e-12)
        g_p, g_s = jax.grad(f)(theta, pat), jax.grad(f)(theta, subj)
        np.testing.assert_allclose(g_p, g_s, rtol=1e-9, atol=1e-9 * np.abs(g_s).max())
    h_p = jax.jit(jax.hessian(f))(theta, pat)
    h_s = jax.jit(jax.hessian(f))(theta, subj)
    np.testing.assert_allclose(h_p, h_s, rtol=1e-8, atol=1e-9 * np.abs(h_s).max())


def test_pattern_hessian_matches_finite_differences():
    m, pat, _, theta = _payloads(CASES[0][0], "monotone")
    f = lambda t: likelihood.deviance(t, pat, m.spec, True)  # noqa: E731
    g = jax.jit(jax.grad(f))
    H = np.asarray(jax.jit(jax.hessian(f))(theta))
    h = 1e-5
    for j in (0, 3, 7, len(theta) - 1):
        e = jnp.zeros_like(theta).at[j].set(h)
        fd = (np.asarray(g(theta + e)) - np.asarray(g(theta - e))) / (2 * h)
        np.testing.assert_allclose(H[:, j], fd, rtol=1e-5, atol=1e-6 * np.abs(H).max())
