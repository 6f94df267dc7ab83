"""The log-likelihood of a Gaussian linear mixed model as pure JAX functions.

For subject i with its rows in the padded arrays (visit position t in column t, mask m_it):

    V_i = Z_i G Z_i' + R_i,      V*_i = (m m') * V_i + diag(1 - m)

Masked cells have zero rows in X, Z and y, so they add exactly nothing below.  With the
Cholesky factor V*_i = L_i L_i' and whitened data X~ = L^-1 X, y~ = L^-1 y:

    A = sum_i X~_i' X~_i,   b = sum_i X~_i' y~_i,   c = sum_i y~_i' y~_i,   beta_hat = A^-1 b
    -2 log L_ML   = sum_i log|V_i| + (c - b' beta_hat) + N log(2 pi)
    -2 log L_REML = -2 log L_ML + log|A| - p log(2 pi)

These are the constants of SAS PROC MIXED, mmrm, nlme and lme4 (``deviance`` is comparable
directly).  beta is profiled out; the covariance parameters ``theta`` are unconstrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from .covariance import RandomBlock

__all__ = ["ModelData", "ModelSpec", "deviance", "gls_pieces", "LOG2PI"]

LOG2PI = float(np.log(2 * np.pi))


class ModelData(NamedTuple):
    """Padded model arrays (a pytree).  S subjects (padded), T visit positions, p fixed, q random."""

    y: jax.Array  # [S, T]   response, 0 where masked
    m: jax.Array  # [S, T]   1 observed, 0 missing / padding
    X: jax.Array  # [S, T, p]
    Z: jax.Array  # [S, T, q]


@dataclass(frozen=True)
class ModelSpec:
    """Static description of the covariance model (hashable: a jit static argument)."""

    blocks: tuple[RandomBlock, ...]
    resid: object  # a covariance structure from jaxlmm.covariance
    T: int

    @property
    def q(self):
        return sum(b.k for b in self.blocks)

    @property
    def n_theta(self):
        return sum(b.n_params for b in self.blocks) + self.resid.n_params

    def _slices(self):
        out, i = [], 0
        for b in self.blocks:
            out.append(slice(i, i + b.n_params))
            i += b.n_params
        return out, slice(i, i + self.resid.n_params)

    def G(self, theta):
        sl, _ = self._slices()
        q = self.q
        G = jnp.zeros((q, q), dtype=theta.dtype)
        i = 0
        for b, s in zip(self.blocks, sl):
            G = G.at[i : i + b.k, i : i + b.k].set(b.matrix(theta[s]))
            i += b.k
        return G

    def R(self, theta):
        _, s = self._slices()
        return self.resid.matrix(theta[s])

    def natural(self, theta):
        sl, sr = self._slices()
        parts = [b.natural(theta[s]) for b, s in zip(self.blocks, sl)]
        parts.append(self.resid.natural(theta[sr]))
        return jnp.concatenate(parts)

    def from_natural(self, values):
        values = np.asarray(values, dtype=float)
        sl, sr = self._slices()
        parts = [b.from_natural(values[s]) for b, s in zip(self.blocks, sl)]
        parts.append(self.resid.from_natural(values[sr]))
        return np.concatenate(parts)

    def names(self, visits):
        out = []
        for b in self.blocks:
            out += b.names()
        return out + self.resid.names(visits)

    def is_boundary(self, theta):
        sl, sr = self._slices()
        flag = self.resid.is_boundary(theta[sr])
        scale = jnp.sqrt(jnp.mean(jnp.diagonal(self.resid.matrix(theta[sr]))))
        for b, s in zip(self.blocks, sl):
            flag = flag | b.is_boundary(theta[s], scale)
        return flag


def marginal_cov(theta, data: ModelData, spec: ModelSpec):
    """V*_i for every subject: [S, T, T]."""
    R = spec.R(theta)
    V = jnp.broadcast_to(R, data.m.shape + (spec.T,))
    if spec.q:
        G = spec.G(theta)
        V = V + jnp.einsum("stk,kl,sul->stu", data.Z, G, data.Z)
    mm = data.m[:, :, None] * data.m[:, None, :]
    eye = jnp.eye(spec.T, dtype=V.dtype)
    return mm * V + eye * (1.0 - data.m)[:, :, None]


def _whiten(theta, data: ModelData, spec: ModelSpec):
    V = marginal_cov(theta, data, spec)
    L = jnp.linalg.cholesky(V)
    Xw = solve_triangular(L, data.X, lower=True)
    yw = solve_triangular(L, data.y[..., None], lower=True)[..., 0]
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))
    return L, Xw, yw, logdet


def gls_pieces(theta, data: ModelData, spec: ModelSpec):
    """Return (A, b, c, logdet V, L) with A = X'V^-1X, b = X'V^-1y, c = y'V^-1y."""
    L, Xw, yw, logdet = _whiten(theta, data, spec)
    A = jnp.einsum("stp,stq->pq", Xw, Xw)
    b = jnp.einsum("stp,st->p", Xw, yw)
    c = jnp.sum(yw * yw)
    return A, b, c, logdet, L


def deviance(theta, data: ModelData, spec: ModelSpec, reml: bool = True):
    """-2 log-likelihood (ML) or -2 restricted log-likelihood (REML) at ``theta``, beta profiled.

    Pure and differentiable in ``theta`` and in every array of ``data``.
    """
    A, b, c, logdet, _ = gls_pieces(theta, data, spec)
    LA = jnp.linalg.cholesky(A)
    u = solve_triangular(LA, b, lower=True)
    n = jnp.sum(data.m)
    dev = logdet + c - jnp.dot(u, u) + n * LOG2PI
    p = A.shape[0]
    # ``reml`` may be a Python bool or a traced flag (one compiled program serves both)
    return dev + jnp.where(reml, 2.0 * jnp.sum(jnp.log(jnp.diagonal(LA))) - p * LOG2PI, 0.0)


def beta_vcov(theta, data: ModelData, spec: ModelSpec):
    """GLS estimate beta_hat = A^-1 b and its model-based covariance A^-1."""
    A, b, _, _, _ = gls_pieces(theta, data, spec)
    LA = jnp.linalg.cholesky(A)
    Ainv = jax.scipy.linalg.cho_solve((LA, True), jnp.eye(A.shape[0], dtype=A.dtype))
    return Ainv @ b, Ainv


def blups(theta, beta, data: ModelData, spec: ModelSpec):
    """BLUPs b_i = G Z_i' V_i^-1 (y_i - X_i beta) and Var(b_i | y) = G - G Z_i' V_i^-1 Z_i G
    (beta treated as known, as lme4's condVar).  Returns ([S, q], [S, q, q])."""
    G = spec.G(theta)
    V = marginal_cov(theta, data, spec)
    L = jnp.linalg.cholesky(V)
    r = (data.y - jnp.einsum("stp,p->st", data.X, beta)) * data.m
    Vr = jax.scipy.linalg.cho_solve((L, True), r[..., None])[..., 0]
    ZG = jnp.einsum("stk,kl->stl", data.Z, G)
    b = jnp.einsum("stl,st->sl", ZG, Vr)
    Wz = solve_triangular(L, ZG, lower=True)
    cv = G[None] - jnp.einsum("stk,stl->skl", Wz, Wz)
    return b, cv
