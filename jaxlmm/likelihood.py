"""The log-likelihood of a Gaussian linear mixed model as pure JAX functions: one assembly of
the deviance from the GLS pieces, whatever layout computed them.

Every layout returns the pieces ``A = X'V^-1X``, ``b = X'V^-1y``, ``c = y'V^-1y``,
``log|V|`` and ``N`` (:func:`gls_pieces`); :func:`assemble` turns them into

    -2 log L_ML   = log|V| + (c - b' A^-1 b) + N log(2 pi)
    -2 log L_REML = -2 log L_ML + log|A| - p log(2 pi),

the constants of SAS PROC MIXED, mmrm, nlme and lme4 (``deviance`` is comparable directly);
beta is profiled out, the covariance parameters ``theta`` are unconstrained.

Layouts (payloads):

* :class:`~jaxlmm.spec.ModelData`, per subject: ``V*_i = L_i L_i'`` (level 1,
  :func:`~jaxlmm.spec.marginal_cov`), whitened ``X~ = L^-1 X``, ``y~ = L^-1 y`` summed over
  subjects, optionally with subject weights ``w_i``; level-2 factors are then integrated out
  by :mod:`jaxlmm.pls` on the whitened rows;
* :class:`~jaxlmm.patterns.Patterns`: per-pattern sufficient statistics (level 1 only);
* :class:`FlatData`: ``sigma^2 I`` residuals and level-2 factors only; the cross-products of
  the rows are summed once and every evaluation scales them by ``Lambda / sigma``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve, solve_triangular

from .errors import LMMError
from .patterns import Patterns, pattern_pieces
from .pls import Level2Blocks, aggregate, eliminate, response_blocks
from .spec import LOG2PI, ModelData, ModelSpec, NaturalSpec, marginal_cov

__all__ = ["ModelData", "ModelSpec", "NaturalSpec", "Pieces", "FlatData", "ClusterLayout", "LOG2PI",
           "gls_pieces", "gls_factor", "gls_beta", "assemble", "deviance", "beta_vcov", "blups", "flat_payload", "flat_response",
           "cluster_layout", "marginal_cov"]


class Pieces(NamedTuple):
    """GLS pieces at one ``theta``: A = X'V^-1X, b = X'V^-1y, c = y'V^-1y, log|V|, N."""

    A: jax.Array
    b: jax.Array
    c: jax.Array
    logdet: jax.Array
    n: jax.Array


class FlatData(NamedTuple):
    """Payload of a model with ``sigma^2 I`` residuals and level-2 factors only: the summed
    cross-products of ``[Z2 | X y]`` (:func:`jaxlmm.pls.aggregate` of the raw rows), the
    index arrays, and the number of observed rows."""

    blocks: Level2Blocks
    idx: object
    n: jax.Array


# ------------------------------------------------------------------------------------------
# pieces per layout
# ------------------------------------------------------------------------------------------


def _subject_pieces(theta, data: ModelData, spec, weights=None):
    V = marginal_cov(theta, data.m, data.Z, spec, data.D)
    L = jnp.linalg.cholesky(V)
    Xw = solve_triangular(L, data.X, lower=True)
    yw = solve_triangular(L, data.y[..., None], lower=True)[..., 0]
    logdet_i = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    n_i = jnp.sum(data.m, axis=-1)
    if spec.plan is not None:
        if weights is not None:
            raise LMMError(
                "Subject weights need independent subjects; with nested or crossed random effects the subjects are "
                "correlated through the other factors, so weights are not supported for this model."
            )
        Z2w = solve_triangular(L, data.Z2, lower=True)
        Dt = jnp.concatenate([Xw, yw[..., None]], axis=-1)
        S, logM = eliminate(spec.lambdas(theta), aggregate(Z2w, Dt, data.idx, spec.plan), data.idx, spec.plan)
        p = data.X.shape[-1]
        return Pieces(S[:p, :p], S[:p, p], S[p, p], jnp.sum(logdet_i) + logM, jnp.sum(n_i))
    w = jnp.ones(data.y.shape[:1], data.y.dtype) if weights is None else weights
    A = jnp.einsum("s,stp,stq->pq", w, Xw, Xw)
    b = jnp.einsum("s,stp,st->p", w, Xw, yw)
    c = jnp.einsum("s,st,st->", w, yw, yw)
    return Pieces(A, b, c, jnp.dot(w, logdet_i), jnp.dot(w, n_i))


def _flat_pieces(theta, fd: FlatData, spec):
    sig2 = spec.R(theta)[0, 0]
    scale = jnp.sqrt(sig2)
    S, logM = eliminate([L / scale for L in spec.lambdas(theta)], fd.blocks, fd.idx, spec.plan)
    p = S.shape[0] - 1
    return Pieces(S[:p, :p] / sig2, S[:p, p] / sig2, S[p, p] / sig2, fd.n * jnp.log(sig2) + logM, fd.n)


def gls_pieces(theta, payload, spec, weights=None, unroll: bool = False) -> Pieces:
    """The GLS pieces of ``payload`` (:class:`ModelData`, :class:`~jaxlmm.patterns.Patterns` or
    :class:`FlatData`) at ``theta``.  ``weights`` [S] multiply each subject's log-likelihood
    (per-subject layout, level 1 only); ``unroll`` writes the per-pattern T x T factorisations
    out in plain arithmetic (faster in large vmapped batches)."""
    if isinstance(payload, Patterns):
        return Pieces(*pattern_pieces(theta, payload, spec, unroll))
    if isinstance(payload, FlatData):
        return _flat_pieces(theta, payload, spec)
    return _subject_pieces(theta, payload, spec, weights)


def gls_factor(A):
    """``(L, d)`` with ``A = D L L' D``, ``D = diag(d)``, ``d = sqrt(diag A)``: the Cholesky factor
    of ``A`` equilibrated to a unit diagonal, so that fixed-effect columns on very different
    scales (a covariate in grams next to one in tonnes) do not spoil the factorisation."""
    d = jnp.sqrt(jnp.diagonal(A))
    d = jnp.where(d > 0, d, 1.0)
    return jnp.linalg.cholesky(A / (d[:, None] * d[None, :])), d


def gls_beta(A, b):
    """``A^-1 b`` (``b`` a vector or a matrix of columns) through :func:`gls_factor`."""
    L, d = gls_factor(A)
    dd = d if b.ndim == 1 else d[:, None]
    return cho_solve((L, True), b / dd) / dd


def assemble(pieces: Pieces, reml) -> jax.Array:
    """The deviance (``-2 log L``, or ``-2 log L_R`` when ``reml``) from the GLS pieces.

    ``reml`` may be a Python bool or a traced flag (one compiled program serves both)."""
    A, b, c, logdet, n = pieces
    LA, d = gls_factor(A)
    u = solve_triangular(LA, b / d, lower=True)
    dev = logdet + c - jnp.dot(u, u) + n * LOG2PI
    p = A.shape[0]
    logdet_A = 2.0 * jnp.sum(jnp.log(jnp.diagonal(LA))) + 2.0 * jnp.sum(jnp.log(d))
    return dev + jnp.where(reml, logdet_A - p * LOG2PI, 0.0)


def deviance(theta, payload, spec, reml=True, weights=None, unroll: bool = False):
    """-2 log-likelihood (ML) or -2 restricted log-likelihood (REML) at ``theta``, beta profiled.

    Pure and differentiable in ``theta`` and in every array of the payload.
    """
    return assemble(gls_pieces(theta, payload, spec, weights, unroll), reml)


def beta_vcov(theta, payload, spec, weights=None, unroll: bool = False):
    """GLS estimate beta_hat = A^-1 b and its model-based covariance A^-1 (``unroll`` as in
    :func:`gls_pieces`)."""
    A, b = gls_pieces(theta, payload, spec, weights, unroll)[:2]
    LA, d = gls_factor(A)
    Ainv = cho_solve((LA, True), jnp.eye(A.shape[0], dtype=A.dtype)) / (d[:, None] * d[None, :])
    return Ainv @ b, Ainv


def blups(theta, beta, data: ModelData, spec):
    """Level-1 BLUPs b_i = G Z_i' V_i^-1 (y_i - X_i beta) and Var(b_i | y) = G - G Z_i' V_i^-1 Z_i G
    (beta treated as known, as lme4's condVar).  Returns ([S, q], [S, q, q])."""
    G = spec.G(theta)
    L = jnp.linalg.cholesky(marginal_cov(theta, data.m, data.Z, spec, data.D))
    r = (data.y - jnp.einsum("stp,p->st", data.X, beta)) * data.m
    Vr = jax.scipy.linalg.cho_solve((L, True), r[..., None])[..., 0]
    ZG = jnp.einsum("stk,kl->stl", data.Z, G)
    b = jnp.einsum("stl,st->sl", ZG, Vr)
    Wz = solve_triangular(L, ZG, lower=True)
    cv = G[None] - jnp.einsum("stk,stl->skl", Wz, Wz)
    return b, cv


# ------------------------------------------------------------------------------------------
# flat rows
# ------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("plan",))
def _aggregate_raw(Z2, X, y, idx, plan):
    return aggregate(Z2, jnp.concatenate([X, y[..., None]], axis=-1), idx, plan)


def flat_payload(data: ModelData, spec) -> FlatData:
    """The :class:`FlatData` of a model whose rows are its super-rows (T = 1), from its arrays."""
    d = data.to_jax()
    blocks = _aggregate_raw(d.Z2 * d.m[..., None], d.X * d.m[..., None], d.y * d.m, d.idx, spec.plan)
    return FlatData(blocks, d.idx, jnp.sum(d.m))


def flat_response(fd: FlatData, data: ModelData, y, m, spec, shared: bool = True) -> FlatData:
    """``fd`` with a new response ``y`` [S, 1] and mask ``m``.  ``shared``: the mask is the one
    ``fd`` was built with, so only the response columns are recomputed."""
    mm = m[..., None]
    if shared:
        blocks = response_blocks(fd.blocks, data.Z2 * mm, data.X * mm, y * m, fd.idx, spec.plan)
    else:
        blocks = aggregate(data.Z2 * mm, jnp.concatenate([data.X * mm, (y * m)[..., None]], axis=-1), fd.idx,
                           spec.plan)
    return FlatData(blocks, fd.idx, jnp.sum(m))


# ------------------------------------------------------------------------------------------
# independent clusters (dense uses: Kenward-Roger, sandwich SEs, checks)
# ------------------------------------------------------------------------------------------


class ClusterLayout(NamedTuple):
    """Observed cells grouped into independent clusters, padded to [C, n] (numpy):
    super-row ``sub``, visit position ``t``, mask ``m``, rows ``X``, ``y``, ``Z``, ``Z2`` and
    level-2 levels ``lev``; ``cell`` holds each cell's (super-row, visit) position."""

    sub: np.ndarray
    t: np.ndarray
    m: np.ndarray
    X: np.ndarray
    y: np.ndarray
    Z: np.ndarray
    Z2: np.ndarray
    lev: np.ndarray
    cell: np.ndarray
    D: np.ndarray | None = None  # [C, n, n] distances of cell pairs (per-subject spatial structures)


def cluster_of_subjects(data: ModelData, spec) -> np.ndarray:
    """The independent cluster of each (padded) subject: subjects linked by a shared level of a
    level-2 factor are in one cluster (connected components); without level 2, each subject is
    its own cluster."""
    S = np.asarray(data.m).shape[0]
    if spec.plan is None:
        return np.arange(S)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    lev = np.asarray(data.idx.lev)
    offs = np.cumsum([0] + [f.n_pad for f in spec.plan.factors])
    rows = np.repeat(np.arange(S), lev.shape[1])
    cols = S + (lev + offs[:-1][None, :]).reshape(-1)
    has = np.asarray(data.m).sum(axis=1) > 0
    keep = np.repeat(has, lev.shape[1])
    n = S + offs[-1]
    adj = coo_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n))
    _, lab = connected_components(adj, directed=False)
    return lab[:S]


def cluster_layout(data: ModelData, spec, max_cells: int | None = None) -> ClusterLayout:
    """Group the observed cells of ``data`` into independent clusters (host side).  Raises
    :class:`LMMError` when a cluster has more than ``max_cells`` cells."""
    m = np.asarray(data.m)
    S, T = m.shape
    clus = cluster_of_subjects(data, spec)
    s_idx, t_idx = np.nonzero(m > 0)
    cl = clus[s_idx]
    uniq, cl = np.unique(cl, return_inverse=True)
    C = len(uniq)
    order = np.lexsort((t_idx, s_idx, cl))
    s_idx, t_idx, cl = s_idx[order], t_idx[order], cl[order]
    counts = np.bincount(cl, minlength=C)
    n = int(counts.max())
    if max_cells is not None and n > max_cells:
        raise LMMError(
            f"The largest independent cluster of this model has {n} observations (crossed or nested random effects "
            f"link them), more than the {max_cells} this computation handles as one dense matrix."
        )
    pos = np.arange(len(cl)) - np.repeat(np.cumsum(counts) - counts, counts)
    X, y, Z = np.asarray(data.X), np.asarray(data.y), np.asarray(data.Z)
    Z2 = np.zeros((S, T, 0)) if data.Z2 is None else np.asarray(data.Z2)
    lev = np.zeros((S, 0), np.int32) if data.idx is None else np.asarray(data.idx.lev)

    def put(src, fill=0.0, dtype=float):
        out = np.full((C, n) + src.shape[1:], fill, dtype=dtype)
        out[cl, pos] = src
        return out

    sub = put(s_idx, -1, np.int64)
    t = put(t_idx, 0, np.int64)
    Dc = None
    if data.D is not None:  # distances within a subject (other pairs are not used)
        sc = np.maximum(sub, 0)
        Dc = np.asarray(data.D)[sc[:, :, None], t[:, :, None], t[:, None, :]]
    sub[sub < 0] = -1 - np.arange(int((sub < 0).sum()))  # padding cells: a subject of their own
    return ClusterLayout(sub=sub, t=t, m=put(np.ones(len(cl))), X=put(X[s_idx, t_idx]),
                         y=put(y[s_idx, t_idx]), Z=put(Z[s_idx, t_idx]), Z2=put(Z2[s_idx, t_idx]),
                         lev=put(lev[s_idx], 0, np.int64), cell=put(np.stack([s_idx, t_idx], 1), -1, np.int64), D=Dc)
