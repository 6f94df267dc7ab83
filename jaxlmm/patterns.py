"""Per-pattern sufficient statistics of the level-1 likelihood.

Subjects with the same visit pattern (mask row), the same random-effects rows ``Z_i`` and the
same per-pair residual data (a residual group, variance-function features; ``ModelData.D``)
share ``V*_i``, so the likelihood depends on the data only through per-pattern sums

    XX_k[t,u] = sum_{i in k} x_it x_iu',  Xy_k[t,u] = sum_{i in k} x_it y_iu  (stored [p, K, T, T]),
    yy_k[t,u] = sum_{i in k} y_it y_iu,   n_k = #subjects in k.

With ``W_k = V*_k^-1`` on the observed cells: ``A = sum_k <W_k, XX_k>``, ``b = sum_k <W_k, Xy_k>``,
``c = sum_k <W_k, yy_k>`` and ``sum_i log|V_i| = sum_k n_k log|V*_k|``.  One evaluation costs
O(K T^2 p^2) instead of O(S T^3), and the X-only sums are shared by every replicate of a batch.
``V*_k`` comes from :func:`jaxlmm.spec.marginal_cov`, as for subjects.

Column supports.  In a model with visit-specific fixed effects (``arm * visit``) a row at
visit ``t`` is non-zero in only ``c_t`` of the ``p`` columns.  When every ``c_t <= p / 2`` the
sums are kept on those columns only (``cols[t]``, padded to ``c = max c_t``, with a one-hot map
``E_t`` [c, p] back to the columns): ``A = sum_tu E_t' (sum_k W_k[t,u] XX_k[t,u]) E_u``, which
cuts an evaluation and each direction of its Hessian by ``(p / c)^2`` (about 10x for an MMRM
with treatment by visit).

Without level-1 random effects, structures with a closed-form inverse (AR(1), CS, their
heterogeneous versions, diagonal; :mod:`jaxlmm.covariance`) give ``W_k`` and ``log|V*_k|``
directly.  Otherwise ``W_k`` and ``log|V*_k|`` come from one Cholesky factorisation with its own derivative rule
(``dW = -W dV W``, ``d log|V| = <W, dV>``), so Hessians by forward-over-reverse differentiate
batched matrix products, not one LAPACK call per pattern and direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from . import linalg as small
from .spec import marginal_cov

__all__ = ["PatternDesign", "PatternResponse", "PatternLayout", "Patterns", "pattern_design", "pattern_response",
           "pattern_response_np", "pattern_pieces"]


class PatternDesign(NamedTuple):
    """The design part of the per-pattern statistics (shared across replicates)."""

    m: jax.Array  # [K, T] pattern masks
    Z: jax.Array  # [K, T, q] random-effects rows of the pattern
    n: jax.Array  # [K] subjects per pattern (0 for padding)
    XX: jax.Array  # [K, T, T, p, p], or [K, T, T, c, c] on the column supports
    Xs: jax.Array | None  # [S_used, T, p or c] masked X of the subjects with data, sorted by pattern
    E: jax.Array | None = None  # [T, c, p] one-hot map of the column supports (None: all columns)
    D: jax.Array | None = None  # [K, T, T(, c)] per-pattern residual data (ModelData.D; None without)


class PatternResponse(NamedTuple):
    """The response part of the per-pattern statistics (one per replicate)."""

    Xy: jax.Array  # [p (or c), K, T, T]: columns first, the layout its products read without a copy
    yy: jax.Array  # [K, T, T]


class Patterns(NamedTuple):
    """A likelihood payload: per-pattern design and response statistics."""

    design: PatternDesign
    response: PatternResponse


@dataclass(frozen=True)
class PatternLayout:
    """Static layout: subject order (sorted by pattern) and each pattern's [start, stop)."""

    order: tuple[int, ...]
    bounds: tuple[tuple[int, int], ...]
    K_pad: int


def pattern_design(data, m: np.ndarray) -> tuple[PatternDesign, PatternLayout, int]:
    """Group subjects by (mask row, masked Z rows, masked per-pair residual data ``D``): the
    pattern design, its layout and K (host side)."""
    X = np.asarray(data.X) * m[..., None]
    Z = np.asarray(data.Z) * m[..., None]
    S, T, p = X.shape
    has = np.nonzero(m.sum(axis=1) > 0)[0]
    parts = [m, Z.reshape(S, -1)]
    Dm = None
    if data.D is not None:  # e.g. group keys or variance-function features of the observed pairs
        D = np.asarray(data.D)
        mm = m[:, :, None] * m[:, None, :]
        Dm = D * (mm if D.ndim == 3 else mm[..., None])
        parts.append(Dm.reshape(S, -1))
    key = np.ascontiguousarray(np.concatenate(parts, axis=1)[has])
    # unique rows through a byte view (much faster than np.unique(axis=0))
    _, first, inv = np.unique(key.view(np.dtype((np.void, key.dtype.itemsize * key.shape[1]))).ravel(),
                              return_index=True, return_inverse=True)
    uniq = key[first]
    inv = np.asarray(inv).reshape(-1)
    K = len(uniq)
    K_pad = max(8, int(math.ceil(K / 8) * 8))
    order = has[np.argsort(inv, kind="stable")]
    counts = np.bincount(inv, minlength=K)
    stops = np.cumsum(counts)
    bounds = tuple((int(e - c), int(e)) for c, e in zip(counts, stops))
    mK = np.zeros((K_pad, T))
    mK[:K] = uniq[:, :T]
    ZK = np.zeros((K_pad, T, Z.shape[2]))
    ZK[:K] = uniq[:, T : T + T * Z.shape[2]].reshape(K, T, Z.shape[2])
    n = np.zeros(K_pad)
    n[:K] = counts
    DK = None
    if Dm is not None:
        DK = np.zeros((K_pad,) + Dm.shape[1:])
        DK[:K] = uniq[:, T + T * Z.shape[2]:].reshape((K,) + Dm.shape[1:])
    Xs = X[order]
    Xs, E = _supports(Xs)
    c = Xs.shape[2]
    XX = np.zeros((K_pad, T, T, c, c))
    for k, (a, b) in enumerate(bounds):
        Xk = Xs[a:b].reshape(b - a, T * c)
        XX[k] = (Xk.T @ Xk).reshape(T, c, T, c).transpose(0, 2, 1, 3)
    layout = PatternLayout(order=tuple(int(i) for i in order), bounds=bounds, K_pad=K_pad)
    return PatternDesign(m=mK, Z=ZK, n=n, XX=XX, Xs=Xs, E=E, D=DK), layout, K


def _supports(Xs: np.ndarray):
    """``(Xs on the column supports, E)`` when every visit's rows use at most half of the
    columns, else ``(Xs, None)`` (module docstring)."""
    S, T, p = Xs.shape
    used = np.any(Xs != 0, axis=0)  # [T, p]
    c = max(int(used.sum(axis=1).max()), 1)
    if 2 * c > p:
        return Xs, None
    E = np.zeros((T, c, p))
    Xc = np.zeros((S, T, c))
    for t in range(T):
        cols = np.nonzero(used[t])[0]
        E[t, np.arange(len(cols)), cols] = 1.0
        Xc[:, t, : len(cols)] = Xs[:, t, cols]
    return Xc, E


def _inverse_logdet_fwd(V, unroll):
    """``(V^-1, log|V|)`` of a batch of SPD matrices [..., T, T] by one Cholesky factorisation
    (written out in plain arithmetic when ``unroll``, :mod:`jaxlmm.linalg`)."""
    eye = jnp.broadcast_to(jnp.eye(V.shape[-1], dtype=V.dtype), V.shape)
    if unroll:
        L = small.cholesky(V)
        W = small.matmul(Li := small.solve_lower(L, eye), Li, transpose_a=True)
    else:
        L = jnp.linalg.cholesky(V)
        Li = solve_triangular(L, eye, lower=True)
        W = jnp.einsum("...st,...su->...tu", Li, Li)
    return W, 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _inverse_logdet(V, unroll=False):
    """:func:`_inverse_logdet_fwd` with the derivative rule ``dW = -W dV W``,
    ``d log|V| = <W, dV>`` (module docstring): gradients and Hessians never differentiate the
    factorisation itself."""
    return _inverse_logdet_fwd(V, unroll)


@_inverse_logdet.defjvp
def _inverse_logdet_jvp(unroll, primals, tangents):
    (V,), (dV,) = primals, tangents
    W, logdet = _inverse_logdet(V, unroll)
    mm = small.matmul if unroll else partial(jnp.einsum, "...ij,...jl->...il")
    WdV = mm(W, dV)
    return (W, logdet), (-mm(WdV, W), jnp.einsum("...ii->...", WdV))


def pattern_response_np(y, m, pdes: PatternDesign, layout: PatternLayout) -> PatternResponse:
    """numpy version of :func:`pattern_response` (one response, host side)."""
    ys = (np.asarray(y) * m)[np.asarray(layout.order, dtype=int)]
    T, p = pdes.XX.shape[1], pdes.XX.shape[-1]  # p: the columns kept (c on the supports)
    Xy = np.zeros((p, layout.K_pad, T, T))
    yy = np.zeros((layout.K_pad, T, T))
    for k, (a, b) in enumerate(layout.bounds):
        Xk = pdes.Xs[a:b].reshape(b - a, T * p)
        Xy[:, k] = (Xk.T @ ys[a:b]).reshape(T, p, T).transpose(1, 0, 2)
        yy[k] = ys[a:b].T @ ys[a:b]
    return PatternResponse(Xy, yy)


def pattern_response(y, m, pd_: PatternDesign, layout: PatternLayout) -> PatternResponse:
    """Per-pattern response statistics for a response ``y`` [S, T] (cells with m = 0 ignored)."""
    ys = (y * m)[np.asarray(layout.order)]
    Xy, yy = [], []
    for a, b in layout.bounds:
        Xy.append(jnp.einsum("stp,su->ptu", pd_.Xs[a:b], ys[a:b]))
        yy.append(jnp.einsum("st,su->tu", ys[a:b], ys[a:b]))
    pad = layout.K_pad - len(layout.bounds)
    Xy, yy = jnp.stack(Xy, axis=1), jnp.stack(yy)
    if pad:
        Xy = jnp.concatenate([Xy, jnp.zeros((Xy.shape[0], pad) + Xy.shape[2:], Xy.dtype)], axis=1)
        yy = jnp.concatenate([yy, jnp.zeros((pad,) + yy.shape[1:], yy.dtype)])
    return PatternResponse(Xy, yy)


def _pattern_weights(theta, pd_: PatternDesign, spec, unroll: bool = False):
    """W_k = V*_k^-1 on the observed cells of each pattern, and log|V*_k|.

    ``unroll=True`` writes the T x T factorisations out in plain arithmetic (faster for big
    vmapped batches of value-and-gradient evaluations; slower to compile under a Hessian)."""
    closed = None if pd_.D is not None else spec.level1_inverse(theta, pd_.m)  # AR(1), CS, ... in closed form
    if closed is not None:
        return closed
    V = marginal_cov(theta, pd_.m, pd_.Z, spec, pd_.D)
    mm = pd_.m[:, :, None] * pd_.m[:, None, :]
    W, logdet = _inverse_logdet(V, unroll)
    return W * mm, logdet


def pattern_pieces(theta, pat: Patterns, spec, unroll: bool = False):
    """(A, b, c, sum_i log|V_i|, N) from per-pattern statistics."""
    pd_, pr = pat
    W, logdet = _pattern_weights(theta, pd_, spec, unroll)
    if pd_.E is None:
        A = jnp.einsum("ktu,ktupq->pq", W, pd_.XX)
        b = jnp.einsum("ktu,pktu->p", W, pr.Xy)
    else:
        C = jnp.einsum("ktu,ktuab->tuab", W, pd_.XX)
        A = jnp.einsum("tai,tuab,ubj->ij", pd_.E, C, pd_.E)
        b = jnp.einsum("tai,tua->i", pd_.E, jnp.einsum("ktu,aktu->tua", W, pr.Xy))
    c = jnp.einsum("ktu,ktu->", W, pr.yy)
    n = jnp.sum(pd_.n * jnp.sum(pd_.m, axis=-1))
    return A, b, c, jnp.sum(pd_.n * logdet), n
