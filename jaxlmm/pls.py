"""Nested and crossed random effects by penalised least squares (pure JAX).

With the level-1 covariance ``V1`` (``R_i``, plus the random effects on the residual subject)
and the level-2 random effects ``b2 = Lambda u``, ``u ~ N(0, I)``, the marginal covariance is
``V = V1 + Z2 Lambda Lambda' Z2'``.  Whitening by ``V1`` (``X~ = V1^-1/2 X`` and so on, per
subject) and writing ``W = [Z2~ Lambda, X~, y~]``,

    Omega = W' W + diag(I_q, 0, 0) = [[M, .], [., D]],      M = Lambda' Z2~' Z2~ Lambda + I,

the Schur complement of ``M`` in ``Omega`` is ``[[A, b], [b', c]]`` with ``A = X'V^-1X``,
``b = X'V^-1y``, ``c = y'V^-1y`` (Woodbury), and ``log|V| = log|V1| + log|M|`` (the matrix
determinant lemma).  So the level-2 terms change only the pieces ``(A, b, c, log|V|)`` that
:func:`jaxlmm.likelihood.assemble` turns into the deviance: the constants stay those of SAS,
nlme and lme4 (Bates, Maechler, Bolker and Walker 2015, JSS 67(1), section 3).

``aggregate`` sums the (whitened) cross-products of the super-rows (subjects, or rows when the
residuals are ``sigma^2 I``) into the blocks of :mod:`jaxlmm.terms`; ``eliminate`` scales them
by ``Lambda``, factors the chained factors level by level (batched ``k x k`` Cholesky factors,
their fill-in scattered into the parents, the pair tables and the dense tail), then the dense
tail, and returns the Schur complement on ``[X y]`` and ``log|M|``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from . import linalg as small
from .terms import Level2Index, Level2Plan

__all__ = ["Level2Blocks", "aggregate", "response_blocks", "eliminate"]


class Level2Blocks(NamedTuple):
    """Cross-product blocks of ``[Z2 | X y]`` (before scaling by Lambda).

    ``D`` per chained factor [n_c, k_c, k_c]; ``anc`` per chained factor, per later chained
    factor [n_c, k_c, k_d]; ``P`` per ``"c.r"`` [n_pairs, k_c, k_r]; ``XD`` per chained factor
    [n_c, k_c, p+1]; ``TZZ`` [m, m] and ``TZD`` [m, p+1] the dense tail; ``DD`` [p+1, p+1]."""

    D: tuple
    anc: tuple
    P: dict
    XD: tuple
    TZZ: jax.Array
    TZD: jax.Array
    DD: jax.Array


def _seg(x, ids, n):
    return jax.ops.segment_sum(x, ids, num_segments=n)


def _tm(a, b):
    """``a' b`` over the second-to-last axis for stacks of tiny matrices ([..., k, i], [..., k, j]
    -> [..., i, j]), in broadcast arithmetic: XLA's batched dot of tiny matrices is several
    times slower on CPU, and more so under derivatives."""
    return jnp.sum(a[..., :, :, None] * b[..., :, None, :], axis=-3)


def _cols(Z, plan: Level2Plan, f: int):
    o = plan.z_offsets[f]
    return Z[..., o : o + plan.factors[f].k]


def _tail_rows(idx: Level2Index, plan: Level2Plan, r: int):
    """Rows of the dense tail [S, k_r] of each super-row's level of tail factor r."""
    fp = plan.factors[r]
    off = plan.tail_offsets[r - plan.n_chain]
    return off + idx.lev[:, r, None] * fp.k + jnp.arange(fp.k)


def aggregate(Zt, Dt, idx: Level2Index, plan: Level2Plan) -> Level2Blocks:
    """Sum the super-rows' cross-products ``Zt' Zt``, ``Zt' Dt``, ``Dt' Dt`` into blocks.

    ``Zt`` [S, T, q2] and ``Dt`` [S, T, p+1] (``[X y]``) are whitened by level 1 (for
    ``sigma^2 I`` residuals: the raw rows with T = 1)."""
    a = plan.n_chain
    F = len(plan.factors)
    Zf = [_cols(Zt, plan, f) for f in range(F)]

    def K(f, g):
        return _tm(Zf[f], Zf[g])

    D, anc, XD = [], [], []
    for c in range(a):
        n = plan.factors[c].n_pad
        lv = idx.lev[:, c]
        D.append(_seg(K(c, c), lv, n))
        anc.append(tuple(_seg(K(c, d), lv, n) for d in range(c + 1, a)))
        XD.append(_seg(_tm(Zf[c], Dt), lv, n))
    P = {}
    for c in range(a):
        for r in plan.tail:
            key = f"{c}.{r}"
            P[key] = _seg(K(c, r), idx.pid[key], idx.plev[key].shape[0])
    m = plan.m_tail
    TZZ = jnp.zeros((m, m), Zt.dtype)
    TZD = jnp.zeros((m, Dt.shape[-1]), Zt.dtype)
    for r in plan.tail:
        rows = _tail_rows(idx, plan, r)
        TZD = TZD.at[rows].add(_tm(Zf[r], Dt))
        for s in plan.tail:
            if s < r:
                continue
            cols = _tail_rows(idx, plan, s)
            blk = K(r, s)
            TZZ = TZZ.at[rows[:, :, None], cols[:, None, :]].add(blk)
            if s != r:
                TZZ = TZZ.at[cols[:, :, None], rows[:, None, :]].add(jnp.swapaxes(blk, 1, 2))
    DD = jnp.einsum("stj,stk->jk", Dt, Dt)
    return Level2Blocks(tuple(D), tuple(anc), P, tuple(XD), TZZ, TZD, DD)


def response_blocks(design: Level2Blocks, Z2, X, y, idx: Level2Index, plan: Level2Plan) -> Level2Blocks:
    """``design`` (blocks of ``[Z2 | X 0]``) with the columns of a response ``y`` filled in:
    ``Z2'y`` per level, ``X'y`` and ``y'y`` (rows with T = 1: Z2 [S, 1, q2], X [S, 1, p], y [S, 1])."""
    p = X.shape[-1]
    yc = y[..., None]
    Dt = jnp.concatenate([X, yc], axis=-1)
    a = plan.n_chain
    XD = []
    for c in range(a):
        zy = _tm(_cols(Z2, plan, c), yc)
        XD.append(design.XD[c].at[..., p:].set(_seg(zy, idx.lev[:, c], plan.factors[c].n_pad)))
    TZD = design.TZD
    if plan.m_tail:
        col = jnp.zeros((plan.m_tail, 1), y.dtype)
        for r in plan.tail:
            col = col.at[_tail_rows(idx, plan, r)].add(_tm(_cols(Z2, plan, r), yc))
        TZD = TZD.at[:, p:].set(col)
    dy = jnp.einsum("stj,st->j", Dt, y)
    DD = design.DD.at[:, p].set(dy).at[p, :].set(dy)
    return design._replace(XD=tuple(XD), TZD=TZD, DD=DD)


def _lam_rows(M, lams, plan: Level2Plan):
    """``Lambda_t' M`` for the dense tail's rows (block diagonal per tail factor and level)."""
    parts = []
    for j, r in enumerate(plan.tail):
        fp = plan.factors[r]
        o = plan.tail_offsets[j]
        blk = M[o : o + fp.n_pad * fp.k].reshape((fp.n_pad, fp.k) + M.shape[1:])
        parts.append(jnp.einsum("ji,nj...->ni...", lams[r], blk).reshape((fp.n_pad * fp.k,) + M.shape[1:]))
    return jnp.concatenate(parts, axis=0)


def eliminate(lams, B: Level2Blocks, idx: Level2Index, plan: Level2Plan):
    """Factor ``Omega`` of the module docstring for factors ``Lambda_f = lams[f]`` (elimination
    order).  Returns ``(S, log|M|)`` with ``S`` [p+1, p+1] the Schur complement on ``[X y]``."""
    a = plan.n_chain
    dtype = B.DD.dtype
    D = [jnp.einsum("ji,njk,kl->nil", lams[c], B.D[c], lams[c]) + jnp.eye(plan.factors[c].k, dtype=dtype)
         for c in range(a)]
    anc = [[jnp.einsum("ji,njk,kl->nil", lams[c], B.anc[c][d - c - 1], lams[d]) for d in range(c + 1, a)]
           for c in range(a)]
    P = {}
    for c in range(a):
        for r in plan.tail:
            key = f"{c}.{r}"
            P[key] = jnp.einsum("ji,njk,kl->nil", lams[c], B.P[key], lams[r])
    XD = [jnp.einsum("ji,njk->nik", lams[c], B.XD[c]) for c in range(a)]
    DD = B.DD
    m = plan.m_tail
    if m:
        TZZ = _lam_rows(_lam_rows(B.TZZ, lams, plan).T, lams, plan).T + jnp.eye(m, dtype=dtype)
        TZD = _lam_rows(B.TZD, lams, plan)
    logdet = jnp.zeros((), dtype)

    for c in range(a):
        # one small k x k factor per level, written out in plain arithmetic (LAPACK per tiny
        # matrix, and per tangent under a Hessian, costs far more than the arithmetic)
        L = small.cholesky(D[c])
        logdet = logdet + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))
        Ba = [small.solve_lower(L, A_) for A_ in anc[c]]  # to later chained factors
        Bd = small.solve_lower(L, XD[c])  # to [X y]
        Bp = {}
        for r in plan.tail:
            key = f"{c}.{r}"
            Bp[r] = small.solve_lower(L[idx.plev[key][:, 0]], P[key])
        # fill-in of the later chained factors (nested: one parent per level, no new blocks)
        for i, d in enumerate(range(c + 1, a)):
            up = idx.anc[c][:, i]
            nd = plan.factors[d].n_pad
            D[d] = D[d] - _seg(_tm(Ba[i], Ba[i]), up, nd)
            for j, e in enumerate(range(d + 1, a)):
                anc[d][e - d - 1] = anc[d][e - d - 1] - _seg(_tm(Ba[i], Ba[i + 1 + j]), up, nd)
            XD[d] = XD[d] - _seg(_tm(Ba[i], Bd), up, nd)
            for r in plan.tail:
                key, tgt = f"{c}.{r}", f"{d}.{r}"
                upd = _tm(Ba[i][idx.plev[key][:, 0]], Bp[r])
                P[tgt] = P[tgt] - _seg(upd, idx.pmap[key][:, i], P[tgt].shape[0])
        DD = DD - jnp.einsum("nki,nkj->ij", Bd, Bd)
        # fill-in of the dense tail: pairs of pairs on one level of c (upper triangle and
        # diagonal of each diagonal block, summed into U and symmetrised)
        U = jnp.zeros_like(TZZ) if m else None
        for r in plan.tail:
            key = f"{c}.{r}"
            rows_r = _pair_rows(idx, plan, key, r)
            upd = _tm(Bp[r], Bd[idx.plev[key][:, 0]])
            TZD = TZD.at[rows_r].add(-upd)
            for s in plan.tail:
                if s < r:
                    continue
                q = idx.quad[f"{c}.{r}.{s}"]
                rows_s = _pair_rows(idx, plan, f"{c}.{s}", s)
                blk = _tm(Bp[r][q[:, 0]], Bp[s][q[:, 1]])
                ri, ci = rows_r[q[:, 0]], rows_s[q[:, 1]]
                U = U.at[ri[:, :, None], ci[:, None, :]].add(blk, mode="promise_in_bounds")
        if m:
            # U holds each off-diagonal fill once (blocks r < s, and a < b within r = s) and the
            # diagonal blocks' own pairs (a = b) once
            TZZ = TZZ - (U + U.T - _diag_blocks_once(U, plan))
    if m:
        lt, Q = tail_schur(TZZ, TZD)
        logdet = logdet + lt
        DD = DD - Q
    return DD, logdet


def _diag_blocks_once(U, plan: Level2Plan):
    """The part of ``U`` that ``U + U'`` counts twice: the k x k blocks on the diagonal of each
    tail factor's diagonal block (a level with itself), kept as they are."""
    out = jnp.zeros_like(U)
    for j, r in enumerate(plan.tail):
        fp = plan.factors[r]
        o = plan.tail_offsets[j]
        lv = jnp.arange(fp.n_pad)[:, None, None] * fp.k
        i = o + lv + jnp.arange(fp.k)[None, :, None]
        jj = o + lv + jnp.arange(fp.k)[None, None, :]
        out = out.at[i, jj].set(U[i, jj])
    return out


#: from this size on, the inverse of the dense tail is computed by LAPACK's Cholesky inverse
#: (``dpotrf`` + ``dpotri``) on the host: half the flops of a triangular solve with the identity
HOST_INVERSE_MIN = 256


def _host_inverse_from_factor(L):
    import numpy as np
    from scipy.linalg import lapack

    inv, info = lapack.dpotri(np.asarray(L, dtype=np.float64), lower=1)
    if info != 0:
        return np.full(L.shape, np.nan)
    return np.tril(inv) + np.tril(inv, -1).T


@jax.custom_jvp
def spd_inverse(T, L):
    """``T^-1`` of a symmetric positive-definite ``T`` [m, m] from its lower Cholesky factor
    ``L``; ``d(T^-1) = -T^-1 dT T^-1`` (the factor's own tangent is not needed).  From
    ``HOST_INVERSE_MIN`` on, LAPACK's ``dpotri`` on the host (half the flops of a triangular
    solve with the identity)."""
    if L.ndim == 2 and L.shape[0] >= HOST_INVERSE_MIN and L.dtype == jnp.float64:
        return jax.pure_callback(_host_inverse_from_factor, jax.ShapeDtypeStruct(L.shape, L.dtype), L,
                                 vmap_method="sequential")
    Linv = solve_triangular(L, jnp.eye(L.shape[-1], dtype=L.dtype), lower=True)
    return jnp.swapaxes(Linv, -1, -2) @ Linv


@spd_inverse.defjvp
def _spd_inverse_jvp(primals, tangents):
    T, L = primals
    dT, _ = tangents
    Ti = spd_inverse(T, L)
    return Ti, -Ti @ dT @ Ti


@jax.custom_jvp
def tail_schur(T, B):
    """``(log|T|, B' T^-1 B)`` for the dense tail ``T`` [m, m] (SPD) and its coupling ``B`` [m, r].

    Its derivative rule, ``d log|T| = <T^-1, dT>`` and ``d(B'T^-1B) = dB'K + K'dB - K'dT K`` with
    ``K = T^-1 B``, costs one inverse (:func:`spd_inverse`) instead of differentiating the
    Cholesky factorisation (a third to a sixth of the cost of JAX's own rule)."""
    L = jnp.linalg.cholesky(T)
    W = solve_triangular(L, B, lower=True)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))), W.T @ W


@tail_schur.defjvp
def _tail_schur_jvp(primals, tangents):
    T, B = primals
    dT, dB = tangents
    L = jnp.linalg.cholesky(T)
    W = solve_triangular(L, B, lower=True)
    K = solve_triangular(L.T, W, lower=False)
    Tinv = spd_inverse(T, L)
    out = (2.0 * jnp.sum(jnp.log(jnp.diagonal(L))), W.T @ W)
    dK = dT @ K
    return out, (jnp.sum(Tinv * dT), dB.T @ K + K.T @ dB - K.T @ dK)


def _pair_rows(idx: Level2Index, plan: Level2Plan, key: str, r: int):
    """Dense-tail rows [n_pairs, k_r] of the tail level of each pair of table ``key``."""
    fp = plan.factors[r]
    off = plan.tail_offsets[r - plan.n_chain]
    return off + idx.plev[key][:, 1, None] * fp.k + jnp.arange(fp.k)
