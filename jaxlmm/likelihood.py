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

from . import linalg as small
from .covariance import RandomBlock

__all__ = ["ModelData", "ModelSpec", "NaturalSpec", "deviance", "gls_pieces", "LOG2PI"]

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

    def _block_diag(self, mats):
        """The q x q block-diagonal matrix with the blocks' k x k matrices on its diagonal."""
        q = self.q
        out = jnp.zeros((q, q), dtype=mats[0].dtype) if mats else jnp.zeros((0, 0))
        i = 0
        for b, M in zip(self.blocks, mats):
            out = out.at[i : i + b.k, i : i + b.k].set(M)
            i += b.k
        return out

    def G(self, theta):
        sl, _ = self._slices()
        return self._block_diag([b.matrix(theta[s]) for b, s in zip(self.blocks, sl)])

    def G_chol(self, theta):
        """A factor L with L L' = G (block diagonal of the blocks' factors; exact at a boundary)."""
        sl, _ = self._slices()
        return self._block_diag([b.chol(theta[s]) for b, s in zip(self.blocks, sl)])

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

    # SAS-style (variance-covariance) parameters, linear for UN, CS and random effects: the
    # parameterisation in which Kenward-Roger is defined (as SAS and pbkrtest)
    def _sas_slices(self):
        out, i = [], 0
        for b in self.blocks:
            n = b.k * (b.k + 1) // 2 if b.correlated else b.k
            out.append(slice(i, i + n))
            i += n
        n = self.resid.n_params
        return out, slice(i, i + n)

    def sas_params(self, theta):
        sl, sr = self._slices()
        parts = [b.sas_params(theta[s]) for b, s in zip(self.blocks, sl)]
        return jnp.concatenate(parts + [self.resid.sas_params(theta[sr])])

    def sas_matrices(self, phi):
        """(G, R) from SAS-style parameters."""
        sl, sr = self._sas_slices()
        G = self._block_diag([b.sas_matrix(phi[s]) for b, s in zip(self.blocks, sl)])
        return G, self.resid.sas_matrix(phi[sr])

    def is_degenerate(self, theta, theta0):
        """The residual variance collapsed (below 1e-12 of where the fit started): the
        likelihood is unbounded, e.g. the fixed effects fit the response exactly."""
        _, sr = self._slices()
        v = jnp.mean(jnp.diagonal(self.resid.matrix(theta[sr])))
        v0 = jnp.mean(jnp.diagonal(self.resid.matrix(theta0[sr])))
        return ~(v > 1e-12 * v0)

    def is_boundary(self, theta):
        sl, sr = self._slices()
        flag = self.resid.is_boundary(theta[sr])
        scale = jnp.sqrt(jnp.mean(jnp.diagonal(self.resid.matrix(theta[sr]))))
        for b, s in zip(self.blocks, sl):
            flag = flag | b.is_boundary(theta[s], scale)
        return flag


@dataclass(frozen=True)
class NaturalSpec:
    """The covariance model of ``base`` with its natural parameters (SDs, correlations, in the
    order of ``base.names``) as the parameter vector.  Accepted wherever a :class:`ModelSpec`
    is (``deviance(phi, data, NaturalSpec(spec))``); used by likelihood profiles, which fix
    one natural parameter and optimise the others."""

    base: ModelSpec

    @property
    def T(self):
        return self.base.T

    @property
    def q(self):
        return self.base.q

    # natural parameters come in the same counts and order as the unconstrained ones
    def G(self, phi):
        sl, _ = self.base._slices()
        return self.base._block_diag([b.natural_matrix(phi[s]) for b, s in zip(self.base.blocks, sl)])

    def R(self, phi):
        _, sr = self.base._slices()
        return self.base.resid.natural_matrix(phi[sr])

    def bounds(self):
        """(lower, upper) of every natural parameter."""
        out = []
        for b in self.base.blocks:
            out += b.natural_bounds()
        return out + self.base.resid.natural_bounds()


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


# ---------------------------------------------------------------------------------------
# Sufficient statistics per pattern (used by batched fits sharing one design)
# ---------------------------------------------------------------------------------------
#
# Subjects with the same visit pattern (mask row) and the same random-effects rows Z_i share
# V_i, so the likelihood depends on the data only through per-pattern sums
#
#     XX_k[t,u] = sum_{i in k} x_it x_iu',  Xy_k[t,u] = sum_{i in k} x_it y_iu,
#     yy_k[t,u] = sum_{i in k} y_it y_iu,   n_k = #subjects in k.
#
# With W_k = V*_k^-1:  A = sum_k <W_k, XX_k>,  b = sum_k <W_k, Xy_k>,  c = sum_k <W_k, yy_k>,
# sum_i log|V_i| = sum_k n_k log|V*_k|.  One evaluation then costs O(K T^2 p^2) instead of
# O(S T^3), and the X-only sums are shared by every replicate of a batch.


class PatternDesign(NamedTuple):
    """The design part of the per-pattern statistics (shared across replicates)."""

    m: jax.Array  # [K, T] pattern masks
    Z: jax.Array  # [K, T, q] random-effects rows of the pattern
    n: jax.Array  # [K] subjects per pattern (0 for padding)
    XX: jax.Array  # [K, T, T, p, p]
    Xs: jax.Array  # [S_used, T, p] masked X of the subjects with data, sorted by pattern


class PatternResponse(NamedTuple):
    """The response part of the per-pattern statistics (one per replicate)."""

    Xy: jax.Array  # [K, T, T, p]
    yy: jax.Array  # [K, T, T]


@dataclass(frozen=True)
class PatternLayout:
    """Static layout: subject order (sorted by pattern) and each pattern's [start, stop)."""

    order: tuple[int, ...]
    bounds: tuple[tuple[int, int], ...]
    K_pad: int


def pattern_response(y, m, pd_: PatternDesign, layout: PatternLayout) -> PatternResponse:
    """Per-pattern response statistics for a response ``y`` [S, T] (cells with m = 0 ignored)."""
    ys = (y * m)[np.asarray(layout.order)]
    Xy, yy = [], []
    for a, b in layout.bounds:
        Xy.append(jnp.einsum("stp,su->tup", pd_.Xs[a:b], ys[a:b]))
        yy.append(jnp.einsum("st,su->tu", ys[a:b], ys[a:b]))
    pad = layout.K_pad - len(layout.bounds)
    Xy, yy = jnp.stack(Xy), jnp.stack(yy)
    if pad:
        Xy = jnp.concatenate([Xy, jnp.zeros((pad,) + Xy.shape[1:], Xy.dtype)])
        yy = jnp.concatenate([yy, jnp.zeros((pad,) + yy.shape[1:], yy.dtype)])
    return PatternResponse(Xy, yy)


def _pattern_weights(theta, pd_: PatternDesign, spec: ModelSpec, unroll: bool = False):
    """W_k = V*_k^-1 on the observed cells of each pattern, and log|V*_k|.

    ``unroll=True`` writes the T x T factorisations out in plain arithmetic (faster for big
    vmapped batches of value-and-gradient evaluations; slower to compile under a Hessian)."""
    R = spec.R(theta)
    V = jnp.broadcast_to(R, pd_.m.shape + (spec.T,))
    if spec.q:
        V = V + jnp.einsum("kta,ab,kub->ktu", pd_.Z, spec.G(theta), pd_.Z)
    mm = pd_.m[:, :, None] * pd_.m[:, None, :]
    eye = jnp.eye(spec.T, dtype=V.dtype)
    V = mm * V + eye * (1.0 - pd_.m)[:, :, None]
    if unroll:
        L = small.cholesky(V)
        Linv = small.solve_lower(L, jnp.broadcast_to(eye, V.shape))
    else:
        L = jnp.linalg.cholesky(V)
        Linv = solve_triangular(L, jnp.broadcast_to(eye, V.shape), lower=True)
    W = jnp.einsum("kst,ksu->ktu", Linv, Linv) * mm
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    return W, logdet


def pattern_gls(theta, pd_: PatternDesign, pr: PatternResponse, spec: ModelSpec, unroll: bool = False):
    """(A, b, c, sum_i log|V_i|) from per-pattern statistics."""
    W, logdet = _pattern_weights(theta, pd_, spec, unroll)
    A = jnp.einsum("ktu,ktupq->pq", W, pd_.XX)
    b = jnp.einsum("ktu,ktup->p", W, pr.Xy)
    c = jnp.einsum("ktu,ktu->", W, pr.yy)
    return A, b, c, jnp.sum(pd_.n * logdet)


def deviance_patterns(theta, pd_: PatternDesign, pr: PatternResponse, spec: ModelSpec, reml=True, unroll=False):
    """Same value as :func:`deviance`, computed from per-pattern statistics."""
    A, b, c, logdet = pattern_gls(theta, pd_, pr, spec, unroll)
    LA = jnp.linalg.cholesky(A)
    u = solve_triangular(LA, b, lower=True)
    n_obs = jnp.sum(pd_.n * jnp.sum(pd_.m, axis=-1))
    dev = logdet + c - jnp.dot(u, u) + n_obs * LOG2PI
    p = A.shape[0]
    return dev + jnp.where(reml, 2.0 * jnp.sum(jnp.log(jnp.diagonal(LA))) - p * LOG2PI, 0.0)


def beta_vcov_patterns(theta, pd_: PatternDesign, pr: PatternResponse, spec: ModelSpec):
    """GLS beta_hat and A^-1 from per-pattern statistics."""
    A, b, _, _ = pattern_gls(theta, pd_, pr, spec)
    LA = jnp.linalg.cholesky(A)
    Ainv = jax.scipy.linalg.cho_solve((LA, True), jnp.eye(A.shape[0], dtype=A.dtype))
    return Ainv @ b, Ainv
