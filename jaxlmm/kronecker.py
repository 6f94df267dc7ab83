"""Kronecker (direct-product) residual structures for multivariate repeated measures, SAS
``REPEATED type visit / TYPE=UN@AR(1)``, ``UN@CS``, ``UN@UN``: ``A`` responses (the levels of a
type column) measured at ``V`` visits, positions ``a V + t``,

    R = U (x) C,        R[(a, t), (b, u)] = U[a, b] C[t, u]

with ``U`` an unstructured ``A x A`` covariance of the responses (log-Cholesky parameters, as
``un``) and ``C`` over the visits: an AR(1) correlation ``rho^|t-u|`` (``rho = tanh z``), a
compound-symmetry correlation (``rho = l + (1 - l) logistic(z)``, ``l = -1/(V-1)``), or an
unstructured covariance whose first variance is 1 (SAS's constraint; log-Cholesky with
``L_11 = 1``).  Every unconstrained value is positive definite (a Kronecker product of
positive-definite factors).  Natural parameters: ``sd[a]`` and ``corr[a,b]`` of the responses,
then ``rho`` (or ``sd2[v]`` for ``v > 1`` and ``corr2[v,w]`` of ``C``).  SAS prints ``U`` as
``UN(i,j)`` and the second factor as ``AR(1)`` / ``Corr`` / ``UN(i,j)`` without ``UN(1,1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .structure import CORR, POS, Structure, lag_powers, logit, sigmoid

__all__ = ["Kronecker", "KRONECKER"]

#: term name -> the second (visit) factor
KRONECKER = {"un_ar1": "ar1", "un_cs": "cs", "un_un": "un"}


def _tril_params(n):
    return n * (n + 1) // 2


def _chol(theta, n, fixed_first=False):
    """Lower-triangular factor with ``exp`` on the diagonal from log-Cholesky parameters (the
    first diagonal entry 1 and not a parameter when ``fixed_first``)."""
    if fixed_first:
        theta = jnp.concatenate([jnp.zeros(1, theta.dtype), theta])
    rows, cols = np.tril_indices(n)
    L = jnp.zeros((n, n), dtype=theta.dtype).at[rows, cols].set(theta)
    d = np.arange(n)
    diag = np.nonzero(rows == cols)[0]
    return L.at[d, d].set(jnp.exp(theta[diag]))


def _log_chol(S, fixed_first=False):
    L = np.linalg.cholesky(S)
    rows, cols = np.tril_indices(len(S))
    th = L[rows, cols].copy()
    diag = rows == cols
    th[diag] = np.log(np.diag(L))
    return th[1:] if fixed_first else th


def _natural_cov(S):
    sd = np.sqrt(np.diag(S)) if isinstance(S, np.ndarray) else jnp.sqrt(jnp.diag(S))
    C = S / (sd[:, None] * sd[None, :])
    iu = np.triu_indices(S.shape[0], 1)
    return sd, C[iu]


def _cov_from_natural(sd, c, n, xp=np):
    C = xp.eye(n)
    iu = np.triu_indices(n, 1)
    if xp is np:
        C[iu] = c
        C.T[iu] = c
    else:
        C = C.at[iu].set(c)
        C = C.at[(iu[1], iu[0])].set(c)
    return C * sd[:, None] * sd[None, :]


@dataclass(frozen=True)
class Kronecker(Structure):
    """``U (x) C`` over ``A`` responses x ``V`` visits (``T = A V``); ``second`` is ``ar1``,
    ``cs`` or ``un``."""

    A: int = 2
    second: str = "ar1"
    labels: tuple = ()  # (response labels, visit labels) for names

    @property
    def V(self):
        return self.T // self.A

    @property
    def name(self):
        return f"un_{self.second}"

    @property
    def sas(self):
        return {"ar1": "UN@AR(1)", "cs": "UN@CS", "un": "UN@UN"}[self.second]

    @property
    def n_u(self):
        return _tril_params(self.A)

    @property
    def n_c(self):
        return 1 if self.second != "un" else _tril_params(self.V) - 1

    @property
    def n_params(self):
        return self.n_u + self.n_c

    def scale_kinds(self):
        rows, cols = np.tril_indices(self.A)
        return tuple(np.where(rows == cols, 1, 2)) + (0,) * self.n_c

    # ---- the two factors ---------------------------------------------------------------------
    def _lower(self):
        return -1.0 / (self.V - 1)

    def _rho(self, z):
        return jnp.tanh(z) if self.second == "ar1" else self._lower() + (1 - self._lower()) * sigmoid(z)

    def _z(self, rho):
        if self.second == "ar1":
            return float(np.arctanh(np.clip(rho, -0.999999, 0.999999)))
        return logit((rho - self._lower()) / (1 - self._lower()))

    def _corr(self, rho):
        V = self.V
        if self.second == "ar1":
            return lag_powers(rho, V)
        return (1 - rho) * jnp.eye(V) + rho * jnp.ones((V, V))

    def factors(self, theta):
        """``(U, C)``."""
        Lu = _chol(theta[: self.n_u], self.A)
        if self.second == "un":
            Lc = _chol(theta[self.n_u :], self.V, fixed_first=True)
            return Lu @ Lu.T, Lc @ Lc.T
        return Lu @ Lu.T, self._corr(self._rho(theta[self.n_u]))

    def matrix(self, theta):
        U, C = self.factors(theta)
        return jnp.kron(U, C)

    # ---- natural parameters --------------------------------------------------------------------
    def _labels(self, visits):
        if self.labels:
            return list(self.labels[0]), list(self.labels[1])
        return [f"y{a + 1}" for a in range(self.A)], [f"v{t + 1}" for t in range(self.V)]

    def names(self, visits):
        ty, vi = self._labels(visits)
        A = self.A
        out = [f"sd[{t}]" for t in ty] + [f"corr[{ty[i]},{ty[j]}]" for i in range(A) for j in range(i + 1, A)]
        if self.second != "un":
            return out + ["rho"]
        V = self.V
        return out + [f"sd2[{v}]" for v in vi[1:]] + [f"corr2[{vi[i]},{vi[j]}]" for i in range(V)
                                                       for j in range(i + 1, V)]

    def natural(self, theta):
        U, C = self.factors(theta)
        sd, c = _natural_cov(U)
        if self.second != "un":
            return jnp.concatenate([sd, c, self._rho(theta[self.n_u])[None]])
        sd2, c2 = _natural_cov(C)
        return jnp.concatenate([sd, c, sd2[1:], c2])

    def _split_natural(self, v):
        A = self.A
        return v[:A], v[A : self.n_u], v[self.n_u :]

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        sd, c, rest = self._split_natural(v)
        tu = _log_chol(_cov_from_natural(sd, c, self.A))
        if self.second != "un":
            return np.concatenate([tu, [self._z(rest[0])]])
        V = self.V
        sd2 = np.concatenate([[1.0], rest[: V - 1]])
        return np.concatenate([tu, _log_chol(_cov_from_natural(sd2, rest[V - 1 :], V), fixed_first=True)])

    def natural_matrix(self, v):
        sd, c, rest = self._split_natural(v)
        U = _cov_from_natural(sd, c, self.A, jnp)
        if self.second != "un":
            return jnp.kron(U, self._corr(rest[0]))
        V = self.V
        sd2 = jnp.concatenate([jnp.ones(1, v.dtype), rest[: V - 1]])
        return jnp.kron(U, _cov_from_natural(sd2, rest[V - 1 :], V, jnp))

    def natural_bounds(self):
        A, V = self.A, self.V
        out = [POS] * A + [CORR] * (A * (A - 1) // 2)
        if self.second == "ar1":
            return out + [CORR]
        if self.second == "cs":
            return out + [(self._lower(), 1.0)]
        return out + [POS] * (V - 1) + [CORR] * (V * (V - 1) // 2)

    def start(self, S):
        S = np.asarray(S, dtype=float)
        A, V = self.A, self.V
        blocks = S.reshape(A, V, A, V)
        U = np.einsum("atbt->ab", blocks) / V
        sd = np.sqrt(np.clip(np.diag(U), 1e-8, None))
        Cu = U / np.outer(sd, sd)
        Cu = 0.9 * np.clip(Cu, -0.95, 0.95) + 0.1 * np.eye(A)
        np.fill_diagonal(Cu, 1.0)
        w, Q = np.linalg.eigh(Cu)
        Cu = (Q * np.clip(w, 0.05, None)) @ Q.T
        d = np.sqrt(np.diag(Cu))
        tu = _log_chol(Cu / np.outer(d, d) * np.outer(sd, sd))
        within = sum(blocks[a, :, a, :] / U[a, a] for a in range(A)) / A  # the visits' correlation
        if self.second != "un":
            r = float(np.mean(np.diag(within, 1))) if V > 1 else 0.0
            return np.concatenate([tu, [self._z(np.clip(r, self._lower() + 0.05, 0.9))]])
        w, Q = np.linalg.eigh(0.5 * (within + within.T))
        Cw = (Q * np.clip(w, 0.05, None)) @ Q.T
        return np.concatenate([tu, _log_chol(Cw / Cw[0, 0], fixed_first=True)])

    def is_boundary(self, theta):
        U, _ = self.factors(theta)
        Lu = _chol(theta[: self.n_u], self.A)
        sd = jnp.sqrt(jnp.diag(U))
        flag = jnp.min(jnp.diag(Lu) / sd) < 1e-3  # a response (almost) a function of the others
        if self.second == "un":
            return flag
        rho = self._rho(theta[self.n_u])
        return flag | (rho > 1 - 1e-6) | (rho < self._lower() + 1e-6 if self.second == "cs" else rho < -1 + 1e-6)

    # ---- SAS's parameters ----------------------------------------------------------------------
    def sas_names(self):
        rows, cols = np.tril_indices(self.A)
        out = [f"UN({i + 1},{j + 1})" for i, j in zip(rows, cols)]
        if self.second == "ar1":
            return out + ["AR(1)"]
        if self.second == "cs":
            return out + ["Corr"]
        r2, c2 = np.tril_indices(self.V)
        return out + [f"UN2({i + 1},{j + 1})" for i, j in list(zip(r2, c2))[1:]]

    def sas_params(self, theta):
        U, C = self.factors(theta)
        rows, cols = np.tril_indices(self.A)
        u = U[rows, cols]
        if self.second != "un":
            return jnp.concatenate([u, self._rho(theta[self.n_u])[None]])
        r2, c2 = np.tril_indices(self.V)
        return jnp.concatenate([u, C[r2, c2][1:]])

    def sas_matrix(self, phi):
        A, V = self.A, self.V
        rows, cols = np.tril_indices(A)
        U = jnp.zeros((A, A), phi.dtype).at[rows, cols].set(phi[: self.n_u])
        U = U + U.T - jnp.diag(jnp.diag(U))
        if self.second != "un":
            return jnp.kron(U, self._corr(phi[self.n_u]))
        r2, c2 = np.tril_indices(V)
        c = jnp.concatenate([jnp.ones(1, phi.dtype), phi[self.n_u :]])
        C = jnp.zeros((V, V), phi.dtype).at[r2, c2].set(c)
        return jnp.kron(U, C + C.T - jnp.diag(jnp.diag(C)))
