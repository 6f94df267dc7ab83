"""Covariance structures: unconstrained parameters -> covariance matrices.

Residual (R-side) structures describe the T x T covariance of one subject's errors over the
visit positions 0..T-1.  Each is a small frozen (hashable, static under jit) dataclass with

* ``n_params``                  number of unconstrained parameters,
* ``names(visits)``             readable names of the natural parameters,
* ``matrix(theta)``             T x T covariance (jax),
* ``natural(theta)``            natural parameters (SDs, correlations; jax),
* ``from_natural(values)``      the inverse map (numpy, host side),
* ``natural_matrix(values)``    T x T covariance from natural parameters (jax; used by profiles),
* ``natural_bounds()``          (lower, upper) of each natural parameter,
* ``start(S)``                  unconstrained start from an empirical covariance ``S`` (numpy),
* ``scale_kinds()``             how each parameter moves when the response is multiplied by s:
                                1 shifts by log s (a log SD), 2 is multiplied by s (a Cholesky
                                entry), 0 does not move (a correlation).

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
ad       sigma^2 prod_{k=i}^{j-1} rho_k  (ANTE(1))  log sigma, rho_k = tanh(z_k), k = 1..T-1
adh      D [prod_{k=i}^{j-1} rho_k] D  (SAS ANTE(1)) log sd_t, rho_k = tanh(z_k)
toep     sigma^2 r_|i-j|  (SAS TOEP)                log sigma, partial autocorrelations tanh(z_k)
toeph    D r_|i-j| D  (SAS TOEPH)                   log sd_t, partial autocorrelations tanh(z_k)
un       L L' (corSymm + varIdent)                  log-Cholesky: log L_tt, L_ts (t > s)
=======  =========================================  ===============================================

Toeplitz structures are parameterised by the partial autocorrelations ``pi_k = tanh(z_k)`` of
the lags: the Durbin-Levinson recursion maps every point of ``(-1, 1)^(T-1)`` to the lag
correlations ``r_1 .. r_(T-1)`` of a positive-definite Toeplitz matrix and back, one to one
(a map of each lag correlation to ``(-1, 1)`` alone would not keep the matrix positive definite).

Powers ``rho^|i-j|`` are built by repeated multiplication over integer lags, so the gradient at
``rho = 0`` is finite.  Random-effect (G-side) blocks are in :class:`RandomBlock`.

Closed-form inverses.  ``inverse(theta, m)`` of the structures with one gives the inverse of
the covariance restricted to the observed visits (mask ``m`` [..., T]; zero rows and columns
elsewhere) and its log-determinant without a factorisation, used by the likelihood when no
level-1 random effects are added (:meth:`jaxlmm.spec.ModelSpec.level1_inverse`):

* ``ar1``/``arh1``/``ad``/``adh``: the observed visits of an AR(1) or first-order
  ante-dependence process form a Markov chain, so with ``r`` the correlation of consecutive
  observed visits ``t < u`` (``rho^(u-t)``, or ``prod rho_k`` over the visits between) the inverse correlation is
  tridiagonal over those pairs: ``-r / (1 - r^2)`` off the diagonal, ``1 + sum (1 / (1 - r^2) - 1)``
  over a visit's observed neighbours on it, and ``log|C| = sum log(1 - r^2)``;
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

__all__ = ["STRUCTURES", "make_structure", "RandomBlock", "Identity", "Diag", "CS", "CSH", "AR1", "ARH1", "AD", "ADH",
           "TOEP", "TOEPH", "UN"]



def _logit(p):
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(np.log(p / (1 - p)))


def _lag_powers(rho, T: int):
    """Matrix rho^|i-j| from integer lags (gradient-safe at rho = 0)."""
    powers = [jnp.ones_like(rho)]
    for _ in range(T - 1):
        powers.append(powers[-1] * rho)
    pw = jnp.stack(powers)
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    return pw[lag]


def _markov_inverse(r_lag, m):
    """(C^-1 masked, log|C|) of the correlation ``r_lag`` = rho^|t-u| [T, T] on the visits with
    ``m = 1`` (module docstring: tridiagonal over consecutive observed visits)."""
    T = m.shape[-1]
    cnt = jnp.cumsum(m, axis=-1)
    between = (cnt - m)[..., None, :] - cnt[..., :, None]  # observed visits strictly between t < u
    upper = np.triu(np.ones((T, T)), 1)
    adj = upper * m[..., :, None] * m[..., None, :] * (between == 0)
    sym = adj + jnp.swapaxes(adj, -1, -2)
    one_m = jnp.where(sym > 0, 1.0 - r_lag * r_lag, 1.0)
    e = 1.0 / one_m
    diag = m + jnp.sum(sym * (e - 1.0), axis=-1)
    Cinv = -sym * r_lag * e + diag[..., :, None] * jnp.eye(T, dtype=r_lag.dtype)
    return Cinv, jnp.sum(adj * jnp.log(one_m), axis=(-2, -1))


def _cs_inverse(rho, m):
    """(C^-1 masked, log|C|) of the CS correlation on the visits with ``m = 1`` (Sherman-Morrison)."""
    T = m.shape[-1]
    n = jnp.sum(m, axis=-1)
    a = 1.0 + (n - 1.0) * rho
    mm = m[..., :, None] * m[..., None, :]
    Cinv = (jnp.eye(T, dtype=m.dtype) - (rho / a)[..., None, None]) * mm / (1.0 - rho)
    return Cinv, (n - 1.0) * jnp.log1p(-rho) + jnp.log(a)


def _scaled_inverse(Cinv, logdet_C, log_sd, m):
    """``(D^-1 C^-1 D^-1, log|D C D|)`` over the observed visits, ``log_sd`` [T] or a scalar."""
    inv_sd = jnp.exp(-log_sd) * jnp.ones(m.shape[-1], Cinv.dtype)
    return Cinv * inv_sd[:, None] * inv_sd[None, :], logdet_C + 2.0 * jnp.sum(m * log_sd, axis=-1)


def _scale(C, sd):
    """D C D with D = diag(sd)."""
    return C * sd[:, None] * sd[None, :]


def _cs_corr(rho, T: int):
    return (1 - rho) * jnp.eye(T) + rho


def _corr_from_upper(vals, k: int):
    """Correlation matrix from its upper-triangle entries (row by row)."""
    iu = np.triu_indices(k, 1)
    C = jnp.zeros((k, k), dtype=vals.dtype).at[iu].set(vals)
    return C + C.T + jnp.eye(k, dtype=vals.dtype)


_POS = (0.0, float("inf"))
_CORR = (-1.0, 1.0)


#: a per-visit residual SD below this fraction of the largest one is on its boundary (0)
SD_FLOOR = 1e-3


def _sd_collapsed(log_sd):
    """A per-visit SD has collapsed towards 0 relative to the largest one (a boundary fit)."""
    return jnp.min(log_sd) < jnp.max(log_sd) + np.log(SD_FLOOR)


def _safe_sd(S):
    return np.sqrt(np.clip(np.diag(S), 1e-8, None))


def _mean_offdiag_corr(S):
    sd = _safe_sd(S)
    C = S / np.outer(sd, sd)
    T = len(sd)
    if T < 2:
        return 0.0
    return float((C.sum() - np.trace(C)) / (T * (T - 1)))


def _lag1_corr(S):
    sd = _safe_sd(S)
    C = S / np.outer(sd, sd)
    if len(sd) < 2:
        return 0.0
    return float(np.mean(np.diag(C, 1)))


@dataclass(frozen=True)
class _Structure:
    T: int

    name = "?"
    sas = "?"

    def is_boundary(self, theta):
        return jnp.asarray(False)

    def scale_kinds(self):
        # every structure with T standard deviations first and one correlation parameter last
        return (1,) * self.T + (0,)


@dataclass(frozen=True)
class Identity(_Structure):
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
        return [_POS]

    def names(self, visits):
        return ["sigma"]

    def matrix(self, theta):
        return jnp.exp(2 * theta[0]) * jnp.eye(self.T)

    def inverse(self, theta, m):
        return _scaled_inverse(m[..., :, None] * jnp.eye(self.T, dtype=m.dtype), 0.0, theta[0], m)

    def natural(self, theta):
        return jnp.exp(theta[:1])

    def from_natural(self, v):
        return np.log(np.asarray(v[:1], dtype=float))

    def start(self, S):
        return np.array([0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8))])

    # SAS-style covariance parameters (used by Kenward-Roger): sigma^2
    def sas_params(self, theta):
        return jnp.exp(2 * theta[:1])

    def sas_matrix(self, phi):
        return phi[0] * jnp.eye(self.T)


@dataclass(frozen=True)
class Diag(_Structure):
    name = "diag"
    sas = "UN(1)"

    def scale_kinds(self):
        return (1,) * self.T

    def is_boundary(self, theta):
        return _sd_collapsed(theta)

    @property
    def n_params(self):
        return self.T

    def natural_matrix(self, v):
        return jnp.diag(v**2)

    def natural_bounds(self):
        return [_POS] * self.T

    def names(self, visits):
        return [f"sd[{v}]" for v in visits]

    def matrix(self, theta):
        return jnp.diag(jnp.exp(2 * theta))

    def inverse(self, theta, m):
        return _scaled_inverse(m[..., :, None] * jnp.eye(self.T, dtype=m.dtype), 0.0, theta, m)

    def natural(self, theta):
        return jnp.exp(theta)

    def from_natural(self, v):
        return np.log(np.asarray(v, dtype=float))

    def start(self, S):
        return np.log(_safe_sd(S))

    def sas_params(self, theta):
        return jnp.exp(2 * theta)

    def sas_matrix(self, phi):
        return jnp.diag(phi)


def _cs_lower(T):
    return -1.0 / (T - 1) if T > 1 else -1.0


def _cs_rho(z, T):
    """CS correlation from its unconstrained parameter: in (-1/(T-1), 1)."""
    lo = _cs_lower(T)
    return lo + (1 - lo) * jax_sigmoid(z)


@dataclass(frozen=True)
class CS(_Structure):
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
        return [_POS, (_cs_lower(self.T), 1.0)]

    def names(self, visits):
        return ["sigma", "rho"]


    def matrix(self, theta):
        rho = _cs_rho(theta[1], self.T)
        C = (1 - rho) * jnp.eye(self.T) + rho
        return jnp.exp(2 * theta[0]) * C

    def inverse(self, theta, m):
        return _scaled_inverse(*_cs_inverse(_cs_rho(theta[1], self.T), m), theta[0], m)

    def natural(self, theta):
        return jnp.stack([jnp.exp(theta[0]), _cs_rho(theta[1], self.T)])

    def from_natural(self, v):
        lo = _cs_lower(self.T)
        return np.array([np.log(v[0]), _logit((v[1] - lo) / (1 - lo))])

    def start(self, S):
        lo = _cs_lower(self.T)
        r = float(np.clip(_mean_offdiag_corr(S), lo + 0.05 * (1 - lo), 0.95))
        return np.array([0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8)), _logit((r - lo) / (1 - lo))])

    def is_boundary(self, theta):
        rho = _cs_rho(theta[1], self.T)
        lo = _cs_lower(self.T)
        return (rho > 1 - 1e-6) | (rho < lo + 1e-6)

    def sas_params(self, theta):  # SAS CS: common covariance, Residual
        v = jnp.exp(2 * theta[0])
        rho = _cs_rho(theta[1], self.T)
        return jnp.stack([v * rho, v * (1 - rho)])

    def sas_matrix(self, phi):
        return phi[1] * jnp.eye(self.T) + phi[0]


@dataclass(frozen=True)
class CSH(_Structure):
    name = "csh"
    sas = "CSH"

    @property
    def n_params(self):
        return self.T + 1

    def natural_matrix(self, v):
        return _scale(_cs_corr(v[self.T], self.T), v[: self.T])

    def natural_bounds(self):
        return [_POS] * self.T + [(_cs_lower(self.T), 1.0)]

    def names(self, visits):
        return [f"sd[{v}]" for v in visits] + ["rho"]

    def matrix(self, theta):
        sd = jnp.exp(theta[: self.T])
        rho = _cs_rho(theta[self.T], self.T)
        C = (1 - rho) * jnp.eye(self.T) + rho
        return C * sd[:, None] * sd[None, :]

    def inverse(self, theta, m):
        return _scaled_inverse(*_cs_inverse(_cs_rho(theta[self.T], self.T), m), theta[: self.T], m)

    def natural(self, theta):
        return jnp.concatenate([jnp.exp(theta[: self.T]), _cs_rho(theta[self.T], self.T)[None]])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        lo = _cs_lower(self.T)
        return np.concatenate([np.log(v[: self.T]), [_logit((v[self.T] - lo) / (1 - lo))]])

    def start(self, S):
        return np.concatenate([np.log(_safe_sd(S)), CS(self.T).start(S)[1:]])

    def is_boundary(self, theta):
        return CS(self.T).is_boundary(jnp.stack([theta[0], theta[self.T]])) | _sd_collapsed(theta[: self.T])

    def sas_params(self, theta):  # Var(i), CSH
        return jnp.concatenate([jnp.exp(2 * theta[: self.T]), _cs_rho(theta[self.T], self.T)[None]])

    def sas_matrix(self, phi):
        sd = jnp.sqrt(phi[: self.T])
        rho = phi[self.T]
        return ((1 - rho) * jnp.eye(self.T) + rho) * sd[:, None] * sd[None, :]


@dataclass(frozen=True)
class AR1(_Structure):
    name = "ar1"
    sas = "AR(1)"

    def scale_kinds(self):
        return (1, 0)

    @property
    def n_params(self):
        return 2

    def natural_matrix(self, v):
        return v[0] ** 2 * _lag_powers(v[1], self.T)

    def natural_bounds(self):
        return [_POS, _CORR]

    def names(self, visits):
        return ["sigma", "rho"]

    def matrix(self, theta):
        return jnp.exp(2 * theta[0]) * _lag_powers(jnp.tanh(theta[1]), self.T)

    def inverse(self, theta, m):
        return _scaled_inverse(*_markov_inverse(_lag_powers(jnp.tanh(theta[1]), self.T), m), theta[0], m)

    def natural(self, theta):
        return jnp.stack([jnp.exp(theta[0]), jnp.tanh(theta[1])])

    def from_natural(self, v):
        return np.array([np.log(v[0]), np.arctanh(v[1])])

    def start(self, S):
        r = float(np.clip(_lag1_corr(S), -0.9, 0.9))
        return np.array([0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8)), np.arctanh(r)])

    def is_boundary(self, theta):
        return jnp.abs(jnp.tanh(theta[1])) > 1 - 1e-6

    def sas_params(self, theta):  # Residual, AR(1)
        return jnp.stack([jnp.exp(2 * theta[0]), jnp.tanh(theta[1])])

    def sas_matrix(self, phi):
        return phi[0] * _lag_powers(phi[1], self.T)


@dataclass(frozen=True)
class ARH1(_Structure):
    name = "arh1"
    sas = "ARH(1)"

    @property
    def n_params(self):
        return self.T + 1

    def natural_matrix(self, v):
        return _scale(_lag_powers(v[self.T], self.T), v[: self.T])

    def natural_bounds(self):
        return [_POS] * self.T + [_CORR]

    def names(self, visits):
        return [f"sd[{v}]" for v in visits] + ["rho"]

    def matrix(self, theta):
        sd = jnp.exp(theta[: self.T])
        return _lag_powers(jnp.tanh(theta[self.T]), self.T) * sd[:, None] * sd[None, :]

    def inverse(self, theta, m):
        return _scaled_inverse(*_markov_inverse(_lag_powers(jnp.tanh(theta[self.T]), self.T), m), theta[: self.T], m)

    def natural(self, theta):
        return jnp.concatenate([jnp.exp(theta[: self.T]), jnp.tanh(theta[self.T])[None]])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        return np.concatenate([np.log(v[: self.T]), [np.arctanh(v[self.T])]])

    def start(self, S):
        return np.concatenate([np.log(_safe_sd(S)), AR1(self.T).start(S)[1:]])

    def is_boundary(self, theta):
        return (jnp.abs(jnp.tanh(theta[self.T])) > 1 - 1e-6) | _sd_collapsed(theta[: self.T])

    def sas_params(self, theta):  # Var(i), ARH(1)
        return jnp.concatenate([jnp.exp(2 * theta[: self.T]), jnp.tanh(theta[self.T])[None]])

    def sas_matrix(self, phi):
        sd = jnp.sqrt(phi[: self.T])
        return _lag_powers(phi[self.T], self.T) * sd[:, None] * sd[None, :]


def _ante_corr(rho, T: int):
    """First-order ante-dependence correlation: ``C[i, j] = prod_{k=i}^{j-1} rho_k`` (``rho`` [T-1])."""
    rows = []
    for i in range(T):
        row = [None] * T
        row[i] = jnp.ones_like(rho[0]) if T > 1 else jnp.ones((), rho.dtype)
        for j in range(i + 1, T):
            row[j] = row[j - 1] * rho[j - 1]
        rows.append(row)
    for i in range(T):
        for j in range(i):
            rows[i][j] = rows[j][i]
    return jnp.stack([jnp.stack(r) for r in rows])


def _adjacent_corr(S):
    """Correlations of consecutive visits of an empirical covariance, clipped to (-0.9, 0.9)."""
    sd = _safe_sd(S)
    C = np.asarray(S, dtype=float) / np.outer(sd, sd)
    return np.clip(np.diag(C, 1), -0.9, 0.9)


@dataclass(frozen=True)
class AD(_Structure):
    """First-order ante-dependence with a common variance (mmrm ``ad``)."""

    name = "ad"
    sas = "ANTE(1), common variance"

    def scale_kinds(self):
        return (1,) + (0,) * (self.T - 1)

    @property
    def n_params(self):
        return self.T

    def natural_matrix(self, v):
        return v[0] ** 2 * _ante_corr(v[1:], self.T)

    def natural_bounds(self):
        return [_POS] + [_CORR] * (self.T - 1)

    def names(self, visits):
        return ["sigma"] + [f"rho[{visits[k]},{visits[k + 1]}]" for k in range(self.T - 1)]

    def matrix(self, theta):
        return jnp.exp(2 * theta[0]) * _ante_corr(jnp.tanh(theta[1:]), self.T)

    def inverse(self, theta, m):
        return _scaled_inverse(*_markov_inverse(_ante_corr(jnp.tanh(theta[1:]), self.T), m), theta[0], m)

    def natural(self, theta):
        return jnp.concatenate([jnp.exp(theta[:1]), jnp.tanh(theta[1:])])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        return np.concatenate([np.log(v[:1]), np.arctanh(v[1:])])

    def start(self, S):
        return np.concatenate([[0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8))], np.arctanh(_adjacent_corr(S))])

    def is_boundary(self, theta):
        return jnp.any(jnp.abs(jnp.tanh(theta[1:])) > 1 - 1e-6)

    def sas_params(self, theta):  # Residual (the common variance), Rho(1..T-1)
        return jnp.concatenate([jnp.exp(2 * theta[:1]), jnp.tanh(theta[1:])])

    def sas_matrix(self, phi):
        return phi[0] * _ante_corr(phi[1:], self.T)


@dataclass(frozen=True)
class ADH(_Structure):
    """First-order ante-dependence with a variance per visit (SAS ``ANTE(1)``, mmrm ``adh``)."""

    name = "adh"
    sas = "ANTE(1)"

    def scale_kinds(self):
        return (1,) * self.T + (0,) * (self.T - 1)

    @property
    def n_params(self):
        return 2 * self.T - 1

    def natural_matrix(self, v):
        return _scale(_ante_corr(v[self.T :], self.T), v[: self.T])

    def natural_bounds(self):
        return [_POS] * self.T + [_CORR] * (self.T - 1)

    def names(self, visits):
        return [f"sd[{v}]" for v in visits] + [f"rho[{visits[k]},{visits[k + 1]}]" for k in range(self.T - 1)]

    def matrix(self, theta):
        sd = jnp.exp(theta[: self.T])
        return _ante_corr(jnp.tanh(theta[self.T :]), self.T) * sd[:, None] * sd[None, :]

    def inverse(self, theta, m):
        C = _ante_corr(jnp.tanh(theta[self.T :]), self.T)
        return _scaled_inverse(*_markov_inverse(C, m), theta[: self.T], m)

    def natural(self, theta):
        return jnp.concatenate([jnp.exp(theta[: self.T]), jnp.tanh(theta[self.T :])])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        return np.concatenate([np.log(v[: self.T]), np.arctanh(v[self.T :])])

    def start(self, S):
        return np.concatenate([np.log(_safe_sd(S)), np.arctanh(_adjacent_corr(S))])

    def is_boundary(self, theta):
        return jnp.any(jnp.abs(jnp.tanh(theta[self.T :])) > 1 - 1e-6) | _sd_collapsed(theta[: self.T])

    def sas_params(self, theta):  # Var(1..T), Rho(1..T-1)
        return jnp.concatenate([jnp.exp(2 * theta[: self.T]), jnp.tanh(theta[self.T :])])

    def sas_matrix(self, phi):
        sd = jnp.sqrt(phi[: self.T])
        return _ante_corr(phi[self.T :], self.T) * sd[:, None] * sd[None, :]


def _pacf_to_acf(pi):
    """Lag correlations ``r_1..r_n`` from partial autocorrelations ``pi_1..pi_n`` (Durbin-Levinson)."""
    n = pi.shape[0]
    if n == 0:
        return pi
    phi, rho = [pi[0]], [pi[0]]
    for k in range(1, n):
        p = pi[k]
        s1 = sum(phi[j] * rho[k - 1 - j] for j in range(k))
        s2 = sum(phi[j] * rho[j] for j in range(k))
        rho.append(s1 + p * (1.0 - s2))
        phi = [phi[j] - p * phi[k - 1 - j] for j in range(k)] + [p]
    return jnp.stack(rho)


def _acf_to_pacf(r):
    """The inverse map (numpy; host side): partial autocorrelations of lag correlations ``r``."""
    r = np.asarray(r, dtype=float)
    n = len(r)
    pi, phi = np.zeros(n), np.zeros(0)
    for k in range(n):
        den = 1.0 - float(np.dot(phi, r[:k]))
        p = (r[k] - float(np.dot(phi, r[:k][::-1]))) / den
        pi[k] = p
        phi = np.concatenate([phi - p * phi[::-1], [p]])
    return pi


def _toeplitz(r, T: int):
    """Correlation matrix with 1 on the diagonal and ``r[k-1]`` at lag k."""
    full = jnp.concatenate([jnp.ones((1,), r.dtype), r])
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    return full[lag]


def _toep_start(S, T):
    """z of the partial autocorrelations of the lag-averaged correlations of ``S`` (shrunk to |pi| <= 0.9)."""
    sd = _safe_sd(S)
    C = np.asarray(S, dtype=float) / np.outer(sd, sd)
    r = np.array([np.mean(np.diag(C, k)) for k in range(1, T)])
    for shrink in (1.0, 0.8, 0.5, 0.2, 0.0):
        pi = _acf_to_pacf(shrink * r)
        if np.all(np.isfinite(pi)) and np.all(np.abs(pi) < 1):
            break
    return np.arctanh(np.clip(pi, -0.9, 0.9))


@dataclass(frozen=True)
class TOEP(_Structure):
    """Toeplitz: a common variance and a correlation per lag (SAS ``TOEP``, mmrm ``toep``)."""

    name = "toep"
    sas = "TOEP"

    def scale_kinds(self):
        return (1,) + (0,) * (self.T - 1)

    @property
    def n_params(self):
        return self.T

    def natural_matrix(self, v):
        return v[0] ** 2 * _toeplitz(v[1:], self.T)

    def natural_bounds(self):
        return [_POS] + [_CORR] * (self.T - 1)

    def names(self, visits):
        return ["sigma"] + [f"rho[lag {k}]" for k in range(1, self.T)]

    def matrix(self, theta):
        return jnp.exp(2 * theta[0]) * _toeplitz(_pacf_to_acf(jnp.tanh(theta[1:])), self.T)

    def natural(self, theta):
        return jnp.concatenate([jnp.exp(theta[:1]), _pacf_to_acf(jnp.tanh(theta[1:]))])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        return np.concatenate([np.log(v[:1]), np.arctanh(_acf_to_pacf(v[1:]))])

    def start(self, S):
        return np.concatenate([[0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8))], _toep_start(S, self.T)])

    def is_boundary(self, theta):
        return jnp.any(jnp.abs(jnp.tanh(theta[1:])) > 1 - 1e-6)

    def sas_params(self, theta):  # TOEP(2..T): the covariance at lags 1..T-1, then Residual (the variance)
        v = jnp.exp(2 * theta[:1])
        return jnp.concatenate([v * _pacf_to_acf(jnp.tanh(theta[1:])), v])

    def sas_matrix(self, phi):
        return _toeplitz(phi[:-1] / phi[-1], self.T) * phi[-1]


@dataclass(frozen=True)
class TOEPH(_Structure):
    """Heterogeneous Toeplitz: a variance per visit and a correlation per lag (SAS ``TOEPH``)."""

    name = "toeph"
    sas = "TOEPH"

    def scale_kinds(self):
        return (1,) * self.T + (0,) * (self.T - 1)

    @property
    def n_params(self):
        return 2 * self.T - 1

    def natural_matrix(self, v):
        return _scale(_toeplitz(v[self.T :], self.T), v[: self.T])

    def natural_bounds(self):
        return [_POS] * self.T + [_CORR] * (self.T - 1)

    def names(self, visits):
        return [f"sd[{v}]" for v in visits] + [f"rho[lag {k}]" for k in range(1, self.T)]

    def matrix(self, theta):
        sd = jnp.exp(theta[: self.T])
        return _toeplitz(_pacf_to_acf(jnp.tanh(theta[self.T :])), self.T) * sd[:, None] * sd[None, :]

    def natural(self, theta):
        return jnp.concatenate([jnp.exp(theta[: self.T]), _pacf_to_acf(jnp.tanh(theta[self.T :]))])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        return np.concatenate([np.log(v[: self.T]), np.arctanh(_acf_to_pacf(v[self.T :]))])

    def start(self, S):
        return np.concatenate([np.log(_safe_sd(S)), _toep_start(S, self.T)])

    def is_boundary(self, theta):
        return jnp.any(jnp.abs(jnp.tanh(theta[self.T :])) > 1 - 1e-6) | _sd_collapsed(theta[: self.T])

    def sas_params(self, theta):  # Var(1..T), TOEPH(1..T-1): the correlation at lags 1..T-1
        return jnp.concatenate([jnp.exp(2 * theta[: self.T]), _pacf_to_acf(jnp.tanh(theta[self.T :]))])

    def sas_matrix(self, phi):
        sd = jnp.sqrt(phi[: self.T])
        return _toeplitz(phi[self.T :], self.T) * sd[:, None] * sd[None, :]


@dataclass(frozen=True)
class UN(_Structure):
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
        return _scale(_corr_from_upper(v[self.T :], self.T), v[: self.T])

    def natural_bounds(self):
        return [_POS] * self.T + [_CORR] * (self.T * (self.T - 1) // 2)

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
        return _sd_collapsed(jnp.log(sd)) | (jnp.min(jnp.diag(L) / sd) < SD_FLOOR)

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
        sd = _safe_sd(S)
        C = S / np.outer(sd, sd)
        C = 0.9 * C + 0.1 * np.eye(self.T)  # shrink towards I: PD even for pairwise estimates
        w, Q = np.linalg.eigh(C)
        C = (Q * np.clip(w, 0.05, None)) @ Q.T
        d = np.sqrt(np.diag(C))
        C = C / np.outer(d, d)
        return self._theta_from_cov(C * np.outer(sd, sd))

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


def jax_sigmoid(z):
    return 0.5 * (jnp.tanh(0.5 * z) + 1.0)


STRUCTURES = {"id": Identity, "diag": Diag, "cs": CS, "csh": CSH, "ar1": AR1, "arh1": ARH1, "ad": AD, "adh": ADH,
              "toep": TOEP, "toeph": TOEPH, "un": UN}


def make_structure(name: str, T: int):
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
        return _scale(_corr_from_upper(v[self.k :], self.k), v[: self.k])

    def natural_bounds(self):
        k = self.k
        return [_POS] * k + ([_CORR] * (k * (k - 1) // 2) if self.correlated else [])

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
