"""Covariance structures: unconstrained parameters -> covariance matrices, and the registry.

The protocol every residual (R-side) structure follows is in :mod:`jaxlmm.structure`; this
module holds the basic structures and :data:`STRUCTURES`, the table of all of them (the serial
ones of :mod:`jaxlmm.serial` and the spatial ones of :mod:`jaxlmm.spatial` included).

Parameterisations (SAS name, nlme/mmrm equivalent):

=======  =========================================  ===============================================
name     matrix                                     unconstrained parameters
=======  =========================================  ===============================================
id       sigma^2 I (no covariance term)             log sigma
diag     diag(sd_t^2)  (SAS UN(1)/VC by visit)      log sd_t
cs       sigma^2 [(1-rho) I + rho J]  (corCompSymm) log sigma, rho = l + (1-l) logistic(z), l=-1/(T-1)
csh      D [(1-rho) I + rho J] D                    log sd_t, z as for cs
ar1      sigma^2 rho^|i-j|           (corAR1)       log sigma, rho = tanh(z)
arh1     D rho^|i-j| D                              log sd_t, rho = tanh(z)
ad, adh, toep, toeph, arma11                        :mod:`jaxlmm.serial`
sp_exp, sp_gau, sp_pow                              :mod:`jaxlmm.spatial`
un       L L' (corSymm + varIdent)                  log-Cholesky: log L_tt, L_ts (t > s)
=======  =========================================  ===============================================

Powers ``rho^|i-j|`` are built by repeated multiplication over integer lags, so the gradient at
``rho = 0`` is finite.  Random-effect (G-side) blocks are in :class:`RandomBlock`.

Closed-form inverses.  ``inverse(theta, m)`` of the structures with one gives the inverse of
the covariance restricted to the observed visits (mask ``m`` [..., T]; zero rows and columns
elsewhere) and its log-determinant without a factorisation, used by the likelihood when no
level-1 random effects are added (:meth:`jaxlmm.spec.ModelSpec.level1_inverse`):

* ``ar1``/``arh1`` (and ``ad``/``adh``, ``sp_exp``/``sp_pow`` in one coordinate): the observed
  visits form a Markov chain (:func:`jaxlmm.structure.markov_inverse`, tridiagonal);
* ``cs``/``csh``: with ``n`` observed visits (Sherman-Morrison)
  ``C^-1 = [I - rho / (1 + (n - 1) rho) J] / (1 - rho)`` and
  ``log|C| = (n - 1) log(1 - rho) + log(1 + (n - 1) rho)``;
* ``id``/``diag``: ``diag(m / sd^2)``.

The scales enter as ``D^-1 C^-1 D^-1`` and ``2 sum log sd`` over the observed visits.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .serial import AD, ADH, ARMA11, TOEP, TOEPH
from .spatial import SpExp, SpGau, SpPow
from .structure import (CORR, POS, SD_FLOOR, Structure, lag1_corr, lag_powers, logit, markov_inverse, safe_sd, scale,
                        scaled_inverse, sd_collapsed, sigmoid)

__all__ = ["STRUCTURES", "SPATIAL", "make_structure", "RandomBlock", "Identity", "Diag", "CS", "CSH", "AR1", "ARH1",
           "AD", "ADH", "TOEP", "TOEPH", "ARMA11", "SpExp", "SpGau", "SpPow", "UN"]



def _cs_inverse(rho, m):
    """(C^-1 masked, log|C|) of the CS correlation on the visits with ``m = 1`` (Sherman-Morrison)."""
    T = m.shape[-1]
    n = jnp.sum(m, axis=-1)
    a = 1.0 + (n - 1.0) * rho
    mm = m[..., :, None] * m[..., None, :]
    Cinv = (jnp.eye(T, dtype=m.dtype) - (rho / a)[..., None, None]) * mm / (1.0 - rho)
    return Cinv, (n - 1.0) * jnp.log1p(-rho) + jnp.log(a)


def _cs_corr(rho, T: int):
    return (1 - rho) * jnp.eye(T) + rho


def _corr_from_upper(vals, k: int):
    """Correlation matrix from its upper-triangle entries (row by row)."""
    iu = np.triu_indices(k, 1)
    C = jnp.zeros((k, k), dtype=vals.dtype).at[iu].set(vals)
    return C + C.T + jnp.eye(k, dtype=vals.dtype)


def _mean_offdiag_corr(S):
    sd = safe_sd(S)
    C = S / np.outer(sd, sd)
    T = len(sd)
    if T < 2:
        return 0.0
    return float((C.sum() - np.trace(C)) / (T * (T - 1)))


@dataclass(frozen=True)
class Identity(Structure):
    name = "id"
    sas = "VC (sigma^2 I)"

    def scale_kinds(self):
        return (1,)

    @property
    def n_params(self):
        return 1

    def natural_matrix(self, v):
        return v[0] ** 2 * jnp.eye(self.T, dtype=v.dtype)

    def natural_bounds(self):
        return [POS]

    def names(self, visits):
        return ["sigma"]

    def matrix(self, theta):
        return jnp.exp(2 * theta[0]) * jnp.eye(self.T)

    def inverse(self, theta, m):
        return scaled_inverse(m[..., :, None] * jnp.eye(self.T, dtype=m.dtype), 0.0, theta[0], m)

    def natural(self, theta):
        return jnp.exp(theta[:1])

    def from_natural(self, v):
        return np.log(np.asarray(v[:1], dtype=float))

    def start(self, S):
        return np.array([0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8))])

    # SAS-style covariance parameters (used by Kenward-Roger): sigma^2
    def sas_names(self):
        return ["Residual"]

    def sas_params(self, theta):
        return jnp.exp(2 * theta[:1])

    def sas_matrix(self, phi):
        return phi[0] * jnp.eye(self.T)


@dataclass(frozen=True)
class Diag(Structure):
    name = "diag"
    sas = "UN(1)"

    def scale_kinds(self):
        return (1,) * self.T

    def is_boundary(self, theta):
        return sd_collapsed(theta)

    @property
    def n_params(self):
        return self.T

    def natural_matrix(self, v):
        return jnp.diag(v**2)

    def natural_bounds(self):
        return [POS] * self.T

    def names(self, visits):
        return [f"sd[{v}]" for v in visits]

    def matrix(self, theta):
        return jnp.diag(jnp.exp(2 * theta))

    def inverse(self, theta, m):
        return scaled_inverse(m[..., :, None] * jnp.eye(self.T, dtype=m.dtype), 0.0, theta, m)

    def natural(self, theta):
        return jnp.exp(theta)

    def from_natural(self, v):
        return np.log(np.asarray(v, dtype=float))

    def start(self, S):
        return np.log(safe_sd(S))

    def sas_names(self):
        return [f"UN({i + 1},{i + 1})" for i in range(self.T)]

    def sas_params(self, theta):
        return jnp.exp(2 * theta)

    def sas_matrix(self, phi):
        return jnp.diag(phi)


def _cs_lower(T):
    return -1.0 / (T - 1) if T > 1 else -1.0


def _cs_rho(z, T):
    """CS correlation from its unconstrained parameter: in (-1/(T-1), 1)."""
    lo = _cs_lower(T)
    return lo + (1 - lo) * sigmoid(z)


@dataclass(frozen=True)
class CS(Structure):
    name = "cs"
    sas = "CS"

    def scale_kinds(self):
        return (1, 0)

    @property
    def n_params(self):
        return 2

    def natural_matrix(self, v):
        return v[0] ** 2 * _cs_corr(v[1], self.T)

    def natural_bounds(self):
        return [POS, (_cs_lower(self.T), 1.0)]

    def names(self, visits):
        return ["sigma", "rho"]


    def matrix(self, theta):
        rho = _cs_rho(theta[1], self.T)
        C = (1 - rho) * jnp.eye(self.T) + rho
        return jnp.exp(2 * theta[0]) * C

    def inverse(self, theta, m):
        return scaled_inverse(*_cs_inverse(_cs_rho(theta[1], self.T), m), theta[0], m)

    def natural(self, theta):
        return jnp.stack([jnp.exp(theta[0]), _cs_rho(theta[1], self.T)])

    def from_natural(self, v):
        lo = _cs_lower(self.T)
        return np.array([np.log(v[0]), logit((v[1] - lo) / (1 - lo))])

    def start(self, S):
        lo = _cs_lower(self.T)
        r = float(np.clip(_mean_offdiag_corr(S), lo + 0.05 * (1 - lo), 0.95))
        return np.array([0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8)), logit((r - lo) / (1 - lo))])

    def is_boundary(self, theta):
        rho = _cs_rho(theta[1], self.T)
        lo = _cs_lower(self.T)
        return (rho > 1 - 1e-6) | (rho < lo + 1e-6)

    def sas_names(self):
        return ["CS", "Residual"]

    def sas_params(self, theta):  # SAS CS: common covariance, Residual
        v = jnp.exp(2 * theta[0])
        rho = _cs_rho(theta[1], self.T)
        return jnp.stack([v * rho, v * (1 - rho)])

    def sas_matrix(self, phi):
        return phi[1] * jnp.eye(self.T) + phi[0]


@dataclass(frozen=True)
class CSH(Structure):
    name = "csh"
    sas = "CSH"

    @property
    def n_params(self):
        return self.T + 1

    def natural_matrix(self, v):
        return scale(_cs_corr(v[self.T], self.T), v[: self.T])

    def natural_bounds(self):
        return [POS] * self.T + [(_cs_lower(self.T), 1.0)]

    def names(self, visits):
        return [f"sd[{v}]" for v in visits] + ["rho"]

    def matrix(self, theta):
        sd = jnp.exp(theta[: self.T])
        rho = _cs_rho(theta[self.T], self.T)
        C = (1 - rho) * jnp.eye(self.T) + rho
        return C * sd[:, None] * sd[None, :]

    def inverse(self, theta, m):
        return scaled_inverse(*_cs_inverse(_cs_rho(theta[self.T], self.T), m), theta[: self.T], m)

    def natural(self, theta):
        return jnp.concatenate([jnp.exp(theta[: self.T]), _cs_rho(theta[self.T], self.T)[None]])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        lo = _cs_lower(self.T)
        return np.concatenate([np.log(v[: self.T]), [logit((v[self.T] - lo) / (1 - lo))]])

    def start(self, S):
        return np.concatenate([np.log(safe_sd(S)), CS(self.T).start(S)[1:]])

    def is_boundary(self, theta):
        return CS(self.T).is_boundary(jnp.stack([theta[0], theta[self.T]])) | sd_collapsed(theta[: self.T])

    def sas_names(self):
        return [f"Var({i + 1})" for i in range(self.T)] + ["CSH"]

    def sas_params(self, theta):  # Var(i), CSH
        return jnp.concatenate([jnp.exp(2 * theta[: self.T]), _cs_rho(theta[self.T], self.T)[None]])

    def sas_matrix(self, phi):
        sd = jnp.sqrt(phi[: self.T])
        rho = phi[self.T]
        return ((1 - rho) * jnp.eye(self.T) + rho) * sd[:, None] * sd[None, :]


@dataclass(frozen=True)
class AR1(Structure):
    name = "ar1"
    sas = "AR(1)"

    def scale_kinds(self):
        return (1, 0)

    @property
    def n_params(self):
        return 2

    def natural_matrix(self, v):
        return v[0] ** 2 * lag_powers(v[1], self.T)

    def natural_bounds(self):
        return [POS, CORR]

    def names(self, visits):
        return ["sigma", "rho"]

    def matrix(self, theta):
        return jnp.exp(2 * theta[0]) * lag_powers(jnp.tanh(theta[1]), self.T)

    def inverse(self, theta, m):
        return scaled_inverse(*markov_inverse(lag_powers(jnp.tanh(theta[1]), self.T), m), theta[0], m)

    def natural(self, theta):
        return jnp.stack([jnp.exp(theta[0]), jnp.tanh(theta[1])])

    def from_natural(self, v):
        return np.array([np.log(v[0]), np.arctanh(v[1])])

    def start(self, S):
        r = float(np.clip(lag1_corr(S), -0.9, 0.9))
        return np.array([0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8)), np.arctanh(r)])

    def is_boundary(self, theta):
        return jnp.abs(jnp.tanh(theta[1])) > 1 - 1e-6

    def sas_names(self):
        return ["Residual", "AR(1)"]

    def sas_params(self, theta):  # Residual, AR(1)
        return jnp.stack([jnp.exp(2 * theta[0]), jnp.tanh(theta[1])])

    def sas_matrix(self, phi):
        return phi[0] * lag_powers(phi[1], self.T)


@dataclass(frozen=True)
class ARH1(Structure):
    name = "arh1"
    sas = "ARH(1)"

    @property
    def n_params(self):
        return self.T + 1

    def natural_matrix(self, v):
        return scale(lag_powers(v[self.T], self.T), v[: self.T])

    def natural_bounds(self):
        return [POS] * self.T + [CORR]

    def names(self, visits):
        return [f"sd[{v}]" for v in visits] + ["rho"]

    def matrix(self, theta):
        sd = jnp.exp(theta[: self.T])
        return lag_powers(jnp.tanh(theta[self.T]), self.T) * sd[:, None] * sd[None, :]

    def inverse(self, theta, m):
        return scaled_inverse(*markov_inverse(lag_powers(jnp.tanh(theta[self.T]), self.T), m), theta[: self.T], m)

    def natural(self, theta):
        return jnp.concatenate([jnp.exp(theta[: self.T]), jnp.tanh(theta[self.T])[None]])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        return np.concatenate([np.log(v[: self.T]), [np.arctanh(v[self.T])]])

    def start(self, S):
        return np.concatenate([np.log(safe_sd(S)), AR1(self.T).start(S)[1:]])

    def is_boundary(self, theta):
        return (jnp.abs(jnp.tanh(theta[self.T])) > 1 - 1e-6) | sd_collapsed(theta[: self.T])

    def sas_names(self):
        return [f"Var({i + 1})" for i in range(self.T)] + ["ARH(1)"]

    def sas_params(self, theta):  # Var(i), ARH(1)
        return jnp.concatenate([jnp.exp(2 * theta[: self.T]), jnp.tanh(theta[self.T])[None]])

    def sas_matrix(self, phi):
        sd = jnp.sqrt(phi[: self.T])
        return lag_powers(phi[self.T], self.T) * sd[:, None] * sd[None, :]


@dataclass(frozen=True)
class UN(Structure):
    name = "un"
    sas = "UN"

    def scale_kinds(self):
        kinds = [2] * self.n_params
        for i in _diag_positions(self.T):
            kinds[i] = 1
        return tuple(kinds)

    @property
    def n_params(self):
        return self.T * (self.T + 1) // 2

    def natural_matrix(self, v):
        return scale(_corr_from_upper(v[self.T :], self.T), v[: self.T])

    def natural_bounds(self):
        return [POS] * self.T + [CORR] * (self.T * (self.T - 1) // 2)

    def names(self, visits):
        T = self.T
        return [f"sd[{v}]" for v in visits] + [
            f"corr[{visits[i]},{visits[j]}]" for i in range(T) for j in range(i + 1, T)
        ]

    def is_boundary(self, theta):
        """A per-visit SD collapsed, or a visit (almost) a linear function of the earlier ones:
        its conditional SD ``L_tt`` below :data:`SD_FLOOR` of its SD (a correlation ~ +-1)."""
        L = self._chol(theta)
        sd = jnp.sqrt(jnp.sum(L * L, axis=1))
        return sd_collapsed(jnp.log(sd)) | (jnp.min(jnp.diag(L) / sd) < SD_FLOOR)

    def _chol(self, theta):
        T = self.T
        rows, cols = np.tril_indices(T)
        L = jnp.zeros((T, T), dtype=theta.dtype).at[rows, cols].set(theta)
        d = np.arange(T)
        return L.at[d, d].set(jnp.exp(theta[_diag_positions(T)]))

    def matrix(self, theta):
        L = self._chol(theta)
        return L @ L.T

    def natural(self, theta):
        S = self.matrix(theta)
        sd = jnp.sqrt(jnp.diag(S))
        C = S / (sd[:, None] * sd[None, :])
        iu = np.triu_indices(self.T, 1)
        return jnp.concatenate([sd, C[iu]])

    def from_natural(self, v):
        T = self.T
        v = np.asarray(v, dtype=float)
        sd = v[:T]
        C = np.eye(T)
        iu = np.triu_indices(T, 1)
        C[iu] = v[T:]
        C.T[iu] = v[T:]
        return self._theta_from_cov(C * np.outer(sd, sd))

    def _theta_from_cov(self, S):
        L = np.linalg.cholesky(S)
        rows, cols = np.tril_indices(self.T)
        th = L[rows, cols].copy()
        th[_diag_positions(self.T)] = np.log(np.diag(L))
        return th

    def start(self, S):
        S = np.asarray(S, dtype=float)
        sd = safe_sd(S)
        C = S / np.outer(sd, sd)
        C = 0.9 * C + 0.1 * np.eye(self.T)  # shrink towards I: PD even for pairwise estimates
        w, Q = np.linalg.eigh(C)
        C = (Q * np.clip(w, 0.05, None)) @ Q.T
        d = np.sqrt(np.diag(C))
        C = C / np.outer(d, d)
        return self._theta_from_cov(C * np.outer(sd, sd))

    def sas_names(self):
        rows, cols = np.tril_indices(self.T)
        return [f"UN({i + 1},{j + 1})" for i, j in zip(rows, cols)]

    def sas_params(self, theta):  # UN(i,j), lower triangle row by row
        rows, cols = np.tril_indices(self.T)
        return self.matrix(theta)[rows, cols]

    def sas_matrix(self, phi):
        return _sym_from_tril(phi, self.T)


def _sym_from_tril(phi, n):
    rows, cols = np.tril_indices(n)
    M = jnp.zeros((n, n), dtype=phi.dtype).at[rows, cols].set(phi)
    return M + M.T - jnp.diag(jnp.diag(M))


def _diag_positions(T):
    """Positions of the diagonal entries in the row-major lower-triangle vector."""
    rows, cols = np.tril_indices(T)
    return np.nonzero(rows == cols)[0]


STRUCTURES = {"id": Identity, "diag": Diag, "cs": CS, "csh": CSH, "ar1": AR1, "arh1": ARH1, "ad": AD, "adh": ADH,
              "toep": TOEP, "toeph": TOEPH, "arma11": ARMA11, "sp_exp": SpExp, "sp_gau": SpGau, "sp_pow": SpPow,
              "un": UN}

#: structures of distances between coordinates (no visit grid)
SPATIAL = ("sp_exp", "sp_gau", "sp_pow")


def make_structure(name: str, T: int, coords: tuple = ()):
    """The structure ``name`` over ``T`` positions; ``coords`` (one tuple per position) for the
    spatial ones (positions 0..T-1 when empty)."""
    if name in SPATIAL:
        return STRUCTURES[name](T, tuple(tuple(float(x) for x in c) for c in coords))
    return STRUCTURES[name](T)


@dataclass(frozen=True)
class RandomBlock:
    """Covariance of the random effects of one random term, ``G_k = L L'``.

    Correlated terms use a lower-triangular ``L`` whose entries are all unconstrained,
    diagonal included (as lme4's relative factor, but without the bound): the sign of a column
    does not change ``L L'``, so a zero variance is an interior point that Newton's method
    reaches directly.  Uncorrelated terms (``||``) use a diagonal ``L``.
    """

    columns: tuple[str, ...]
    group: str
    correlated: bool

    @property
    def k(self):
        return len(self.columns)

    @property
    def n_params(self):
        k = self.k
        return k * (k + 1) // 2 if self.correlated else k

    common_scale = False  # each column keeps its own scale (fitting.column_log_scales)

    def unit_scaling(self, log_sy, log_sz, xp):
        """``(mult, shift)`` of the parameters when the response moves by ``log s_y`` and the
        block's columns by ``log_sz`` [k] (:meth:`jaxlmm.spec.ModelSpec.unit_scaling`)."""
        return xp.exp(log_sy - log_sz[self.scale_rows()]), xp.zeros(self.n_params) * log_sy

    def scale_rows(self):
        """The column of ``L`` whose scale each parameter carries: an entry ``L_ij`` (row ``i``)
        is multiplied by ``s_y / s_i`` when the response is multiplied by ``s_y`` and column
        ``i`` of the block's design by ``s_i``."""
        if not self.correlated:
            return np.arange(self.k)
        return np.tril_indices(self.k)[0]

    def natural_matrix(self, v):
        if not self.correlated:
            return jnp.diag(v**2)
        return scale(_corr_from_upper(v[self.k :], self.k), v[: self.k])

    def natural_bounds(self):
        k = self.k
        return [POS] * k + ([CORR] * (k * (k - 1) // 2) if self.correlated else [])

    def names(self):
        g = self.group
        out = [f"sd[{c}|{g}]" for c in self.columns]
        if self.correlated:
            k = self.k
            out += [f"corr[{self.columns[i]},{self.columns[j]}|{g}]" for i in range(k) for j in range(i + 1, k)]
        return out

    def natural_chol(self, v):
        """A factor of ``natural_matrix(v)``: ``diag(sd) chol(C)`` (exact when an SD is 0)."""
        if not self.correlated:
            return jnp.diag(v)
        k = self.k
        return v[:k, None] * jnp.linalg.cholesky(_corr_from_upper(v[k:], k))

    def chol(self, theta):
        k = self.k
        if not self.correlated:
            return jnp.diag(theta)
        rows, cols = np.tril_indices(k)
        return jnp.zeros((k, k), dtype=theta.dtype).at[rows, cols].set(theta)

    def matrix(self, theta):
        L = self.chol(theta)
        return L @ L.T

    def natural(self, theta):
        G = self.matrix(theta)
        sd = jnp.sqrt(jnp.diag(G))
        if not self.correlated:
            return sd
        denom = sd[:, None] * sd[None, :]
        pos = denom > 0  # exactly 0 only where an SD is exactly 0 (any units)
        C = jnp.where(pos, G / jnp.where(pos, denom, 1.0), 0.0)
        iu = np.triu_indices(self.k, 1)
        return jnp.concatenate([sd, C[iu]])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        k = self.k
        sd = v[:k]
        if not self.correlated:
            return sd.copy()
        C = np.eye(k)
        iu = np.triu_indices(k, 1)
        C[iu] = v[k:]
        C.T[iu] = v[k:]
        G = C * np.outer(sd, sd)
        L = _psd_cholesky(G)
        rows, cols = np.tril_indices(k)
        return L[rows, cols]

    def start(self, var_cols):
        sd = np.sqrt(np.clip(np.asarray(var_cols, dtype=float), 1e-8, None))
        if not self.correlated:
            return sd
        L = np.diag(sd)
        rows, cols = np.tril_indices(self.k)
        return L[rows, cols]

    def sas_names(self):
        """SAS's names of :meth:`sas_params`: ``UN(i,j)`` of ``RANDOM / TYPE=UN`` for a correlated
        term, the effect's name (a variance component) for each column of an uncorrelated one."""
        if not self.correlated or self.k == 1:
            return ["Intercept" if c == "(Intercept)" else c for c in self.columns]
        rows, cols = np.tril_indices(self.k)
        return [f"UN({i + 1},{j + 1})" for i, j in zip(rows, cols)]

    def sas_params(self, theta):
        """Variances and covariances of G (lower triangle row by row; variances only for ``||``)."""
        G = self.matrix(theta)
        if not self.correlated:
            return jnp.diag(G)
        rows, cols = np.tril_indices(self.k)
        return G[rows, cols]

    def sas_matrix(self, phi):
        return _sym_from_tril(phi, self.k) if self.correlated else jnp.diag(phi)

    def is_boundary(self, theta, scale):
        """Singular fit: a diagonal entry of the Cholesky factor below 1e-4 times the residual
        SD (lme4's ``isSingular`` criterion on the relative factor)."""
        return jnp.min(jnp.abs(jnp.diag(self.chol(theta)))) < 1e-4 * scale


def _psd_cholesky(G):
    """Cholesky factor of a positive semi-definite matrix (zero columns where singular)."""
    k = G.shape[0]
    L = np.zeros_like(G)
    for j in range(k):
        s = G[j, j] - L[j, :j] @ L[j, :j]
        L[j, j] = np.sqrt(max(s, 0.0))
        for i in range(j + 1, k):
            if L[j, j] > 1e-12:
                L[i, j] = (G[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
    return L
