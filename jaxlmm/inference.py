"""Small-sample inference for fixed effects: denominator degrees of freedom.

Satterthwaite
-------------
For a contrast ``c`` the variance of ``c' beta_hat`` is ``f(theta) = c' Phi(theta) c`` with
``Phi = (X' V^-1 X)^-1``.  With ``g = d f / d theta`` (autodiff) and the covariance of
``theta_hat`` from the exact Hessian of the objective, ``Cov(theta_hat) = 2 H^-1`` (``H`` the
Hessian of -2 log L, REML or ML as fitted),

    df = 2 f(theta_hat)^2 / (g' Cov(theta_hat) g).

The value does not depend on how ``theta`` is parameterised (a delta method at the optimum),
so the optimiser's unconstrained parameters are used directly.  For a q-row hypothesis ``L``
the per-direction df ``nu_m`` of the eigenvectors of ``L Phi L'`` are combined as
``E = sum nu_m / (nu_m - 2)``, ``df = 2 E / (E - q)`` (as lmerTest and SAS).

Residual: ``N - p``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .likelihood import beta_vcov

__all__ = ["DDF_METHODS", "satterthwaite_pieces", "satterthwaite_df", "satterthwaite_df_multi"]

DDF_METHODS = ("satterthwaite", "residual")


@partial(jax.jit, static_argnames=("spec",))
def _phi_and_jacobian(theta, data, spec):
    phi = lambda th: beta_vcov(th, data, spec)[1]  # noqa: E731
    return phi(theta), jax.jacfwd(phi)(theta)


def satterthwaite_pieces(result):
    """(Phi, dPhi/dtheta [p, p, k], Cov(theta_hat) [k, k]) at the estimate (cached on the result)."""
    cache = result.__dict__.setdefault("_cache", {})
    if "satt" not in cache:
        from .model import _to_jax

        phi, jac = _phi_and_jacobian(jnp.asarray(result._theta_u), _to_jax(result.model.arrays), result.model.spec)
        H = np.asarray(result._opt.hess)
        H = 0.5 * (H + H.T)
        cov_theta = 2.0 * np.linalg.pinv(H, rcond=1e-10, hermitian=True)
        cache["satt"] = (np.asarray(phi), np.asarray(jac), cov_theta)
    return cache["satt"]


def satterthwaite_df(result, c) -> float:
    """Satterthwaite df for one contrast vector ``c`` (length p)."""
    phi, jac, cov = satterthwaite_pieces(result)
    c = np.asarray(c, dtype=float)
    f = c @ phi @ c
    g = np.einsum("i,ijk,j->k", c, jac, c)
    v = g @ cov @ g
    return float(2 * f * f / v) if v > 0 else float("inf")


def satterthwaite_df_multi(result, L) -> float:
    """Satterthwaite denominator df for an F test of the q-row hypothesis ``L beta = 0``."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    q = L.shape[0]
    phi, _, _ = satterthwaite_pieces(result)
    if q == 1:
        return satterthwaite_df(result, L[0])
    w, P = np.linalg.eigh(L @ phi @ L.T)
    nus = np.array([satterthwaite_df(result, P[:, m] @ L) for m in range(q)])
    E = np.sum(np.where(nus > 2, nus / np.maximum(nus - 2, 1e-12), 0.0))
    if E <= q:
        return float("nan")
    return float(2 * E / (E - q))
