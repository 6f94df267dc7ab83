"""Small dense linear algebra written out in plain ``jnp`` arithmetic.

For the tiny matrices of mixed models (visits x visits, fixed effects x fixed effects), batched
over thousands of replicates, an unrolled Cholesky factorisation and triangular solves are
several times faster on CPU than LAPACK calls per matrix, and their derivatives are ordinary
elementwise arithmetic.  Above ``UNROLL_MAX`` the ``jnp.linalg`` routines are used.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

__all__ = ["cholesky", "solve_lower", "matmul", "UNROLL_MAX"]

UNROLL_MAX = 12


def cholesky(A):
    """Lower Cholesky factor of the symmetric positive-definite ``A`` [..., n, n]."""
    n = A.shape[-1]
    if n > UNROLL_MAX:
        return jnp.linalg.cholesky(A)
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        s = A[..., j, j]
        for k in range(j):
            s = s - L[j][k] * L[j][k]
        d = jnp.sqrt(s)
        L[j][j] = d
        inv = 1.0 / d
        for i in range(j + 1, n):
            s = A[..., i, j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i][j] = s * inv
    zero = jnp.zeros_like(A[..., 0, 0])
    rows = [jnp.stack([L[i][j] if j <= i else zero for j in range(n)], axis=-1) for i in range(n)]
    return jnp.stack(rows, axis=-2)


def solve_lower(L, B):
    """Solve ``L X = B`` for lower-triangular ``L`` [..., n, n] and ``B`` [..., n, m]."""
    n = L.shape[-1]
    if n > UNROLL_MAX:
        return solve_triangular(L, B, lower=True)
    X = []
    for i in range(n):
        s = B[..., i, :]
        for k in range(i):
            s = s - L[..., i, k, None] * X[k]
        X.append(s / L[..., i, i, None])
    return jnp.stack(X, axis=-2)


def matmul(A, B, transpose_a: bool = False):
    """``A @ B`` (or ``A' @ B``) of batches of small matrices [..., n, k] as a broadcast product
    summed over ``k``: XLA fuses it into one elementwise loop, where a batched ``dot`` of many
    tiny matrices costs several times more on CPU."""
    if transpose_a:
        return jnp.sum(A[..., :, :, None] * B[..., :, None, :], axis=-3)
    return jnp.sum(A[..., :, :, None] * B[..., None, :, :], axis=-2)
