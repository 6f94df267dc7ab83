"""Conditional modes (BLUPs) of the random effects and their conditional covariances.

Level 1 only: ``b_i = G Z_i' V_i^-1 r_i``, ``Var(b_i | y) = G - G Z_i' V_i^-1 Z_i G`` with
``r = y - X beta_hat`` (:func:`jaxlmm.likelihood.blups`, beta treated as known, as lme4's
``condVar``).

With level-2 factors (host side, sparse): whiten the residuals and the level-2 design by level 1,
``r~ = V1^-1/2 r`` and ``Z~ = V1^-1/2 Z2`` (per subject), and solve the penalised system

    M u = Lambda' Z~' r~,   M = Lambda' Z~' Z~ Lambda + I,   b2 = Lambda u,
    Var(b2 | y) = Lambda M^-1 Lambda'   (diagonal blocks per level),

then the level-1 effects from the residual left by level 2:
``b1_i = G1 Z1_i' V1_i^-1 (r_i - Z2_i b2)`` and ``Var(b1_i | y) = G1 - G1 Z1_i' W_i Z1_i G1`` with
``W_i = V1_i^-1 - V1_i^-1 Z2_i Lambda M^-1 Lambda' Z2_i' V1_i^-1`` the subject's block of ``V^-1``.
The sparse factorisation of ``M`` (SuperLU) uses the nesting and crossing of the factors as
they are; it is an implementation independent of the blocked Cholesky of :mod:`jaxlmm.pls`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .likelihood import blups
from .spec import marginal_cov

__all__ = ["RandomEffects", "random_effects", "level2_system"]


@dataclass(frozen=True)
class RandomEffects:
    """``b1`` [S, q1] and ``cv1`` [S, q1, q1]: level-1 modes and conditional covariances per
    subject; ``b2`` / ``cv2``: per level-2 factor (plan order) [n_levels, k] and [n_levels, k, k]."""

    b1: np.ndarray
    cv1: np.ndarray
    b2: list
    cv2: list


def level2_system(theta, beta, data, spec):
    """Sparse whitened level-2 design and residuals."""
    from scipy import sparse

    th = jnp.asarray(theta)
    m = np.asarray(data.m)
    D = None if data.D is None else jnp.asarray(data.D)
    V = np.asarray(marginal_cov(th, jnp.asarray(m), jnp.asarray(data.Z), spec, D))
    L = np.linalg.cholesky(V)
    S, T = m.shape
    r = (np.asarray(data.y) - np.asarray(data.X) @ np.asarray(beta)) * m
    rw = np.linalg.solve(L, r[..., None])[..., 0]
    Z2w = np.linalg.solve(L, np.asarray(data.Z2))
    plan = spec.plan
    lev = np.asarray(data.idx.lev)
    offs, o = [], 0
    for f in plan.factors:
        offs.append(o)
        o += f.n_levels * f.k
    q2 = o
    rows, cols, vals = [], [], []
    cell = np.arange(S * T).reshape(S, T)
    for fi, f in enumerate(plan.factors):
        zo = plan.z_offsets[fi]
        for j in range(f.k):
            c = offs[fi] + lev[:, fi] * f.k + j  # [S]
            rows.append(cell.reshape(-1))
            cols.append(np.repeat(c, T))
            vals.append(Z2w[..., zo + j].reshape(-1))
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    keep = (vals != 0) & (cols < q2)
    Zs = sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(S * T, q2))
    lam_blocks = []
    for fi, (f, Lf) in enumerate(zip(plan.factors, spec.lambdas(th))):
        lam_blocks.append(sparse.kron(sparse.identity(f.n_levels), sparse.csr_matrix(np.asarray(Lf))))
    Lam = sparse.block_diag(lam_blocks, format="csr")
    ZL = (Zs @ Lam).tocsr()
    M = (ZL.T @ ZL + sparse.identity(q2)).tocsc()
    return L, rw, Z2w, ZL, Lam, M, offs


def random_effects(theta, beta, data, spec, cond_var: bool = True) -> RandomEffects:
    """Modes and conditional covariances of every random effect (module docstring)."""
    th, bt = jnp.asarray(theta), jnp.asarray(beta)
    if spec.plan is None:
        b, cv = blups(th, bt, data.to_jax(), spec)
        return RandomEffects(np.asarray(b), np.asarray(cv), [], [])
    from scipy.sparse.linalg import splu

    L, rw, Z2w, ZL, Lam, M, offs = level2_system(theta, beta, data, spec)
    lu = splu(M)
    u = lu.solve(np.asarray(ZL.T @ rw.reshape(-1)))
    b2_all = Lam @ u
    plan = spec.plan
    b2 = [b2_all[o : o + f.n_levels * f.k].reshape(f.n_levels, f.k) for f, o in zip(plan.factors, offs)]
    q2 = M.shape[0]
    lams = [np.asarray(x) for x in spec.lambdas(th)]
    if cond_var:
        cv2 = []
        for f, o, Lf in zip(plan.factors, offs, lams):
            blk = _diag_blocks(lu, q2, o, f.n_levels, f.k)
            cv2.append(np.einsum("ij,njk,lk->nil", Lf, blk, Lf))
    else:
        cv2 = [np.full((f.n_levels, f.k, f.k), np.nan) for f in plan.factors]
    # level 1 from what level 2 leaves
    S, T = np.asarray(data.m).shape
    q1 = spec.q
    if not q1:
        return RandomEffects(np.zeros((S, 0)), np.zeros((S, 0, 0)), b2, cv2)
    G1 = np.asarray(spec.G(th))
    Z1 = np.asarray(data.Z)
    e2 = np.zeros((S, T))
    lev = np.asarray(data.idx.lev)
    Z2 = np.asarray(data.Z2)
    for fi, f in enumerate(plan.factors):
        zo = plan.z_offsets[fi]
        bf = np.zeros((f.n_pad, f.k))
        bf[: f.n_levels] = b2[fi]
        e2 += np.einsum("stk,sk->st", Z2[..., zo : zo + f.k], bf[lev[:, fi]])
    r = (np.asarray(data.y) - np.asarray(data.X) @ np.asarray(beta)) * np.asarray(data.m)
    res1 = np.linalg.solve(L, (r - e2 * np.asarray(data.m))[..., None])
    Z1w = np.linalg.solve(L, Z1 @ G1)  # L^-1 Z1 G1 [S, T, q1]
    b1 = np.einsum("stk,st->sk", Z1w, res1[..., 0])
    if not cond_var:
        return RandomEffects(b1, np.full((S, q1, q1), np.nan), b2, cv2)
    # W_i: V1_i^-1 minus the level-2 correction on the subject's cells
    if q2 > 6000:
        return RandomEffects(b1, np.full((S, q1, q1), np.nan), b2, cv2)
    Minv = lu.solve(np.eye(q2))
    Zcells = ZL.toarray().reshape(S, T, q2)
    cv1 = np.empty((S, q1, q1))
    for i in range(S):
        a = Z1w[i]  # [T, q1]  (whitened)
        base = G1 - a.T @ a
        zi = Zcells[i]  # whitened Z2 Lambda rows of subject i [T, q2]
        nz = np.nonzero(np.any(zi != 0, axis=0))[0]
        if len(nz):
            w = a.T @ zi[:, nz]  # [q1, |nz|]
            base = base + w @ Minv[np.ix_(nz, nz)] @ w.T
        cv1[i] = base
    return RandomEffects(b1, cv1, b2, cv2)


def _diag_blocks(lu, q, offset, n, k, chunk: int = 512):
    """The ``n`` diagonal ``k x k`` blocks of ``M^-1`` for the columns ``offset + l k + j``."""
    out = np.empty((n, k, k))
    per = max(1, chunk // k)
    for a in range(0, n, per):
        b = min(n, a + per)
        cols = offset + np.arange(a * k, b * k)
        E = np.zeros((q, len(cols)))
        E[cols, np.arange(len(cols))] = 1.0
        X = lu.solve(E)[cols]  # [(b-a) k, (b-a) k]
        X = X.reshape(b - a, k, b - a, k)
        out[a:b] = X[np.arange(b - a), :, np.arange(b - a), :]
    return out
