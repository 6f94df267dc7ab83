"""The protocol of residual (R-side) covariance structures, and the pieces they share.

A structure describes the T x T covariance of one subject's errors over the visit positions
0..T-1.  Each is a small frozen (hashable, static under jit) dataclass with

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
                                entry), 0 does not move (a correlation),
* ``sas_names()``, ``sas_params(theta)`` / ``sas_matrix(phi)``  the parameters as SAS PROC MIXED prints them
                                (variances, covariances, correlations, ranges) and the matrix
                                from them (Kenward-Roger is defined in these),
* ``inverse(theta, m)``         ``(V^-1, log|V|)`` on the observed visits in closed form, where
                                one is known (None or absent otherwise).

:class:`Correlated` is a structure ``sigma^2 C(c)`` (one variance) or ``D C(c) D`` with
``D = diag(sd_t)`` (a variance per visit, ``hetero = True``): a correlation model ``C`` with
natural parameters ``c`` and unconstrained ones ``z`` is all a subclass defines.  When the
correlation of the observed visits is that of a Markov chain (AR(1), ante-dependence, the
exponential correlation in one coordinate), ``markov = True`` gives the closed-form inverse of
:func:`markov_inverse`: with ``r`` the correlation of consecutive observed visits the inverse
correlation is tridiagonal over those pairs, ``-r / (1 - r^2)`` off the diagonal,
``1 + sum (1 / (1 - r^2) - 1)`` over a visit's observed neighbours on it, and
``log|C| = sum log(1 - r^2)``.  Scales enter as ``D^-1 C^-1 D^-1`` and ``2 sum log sd``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

__all__ = ["Structure", "Correlated", "POS", "CORR", "SD_FLOOR", "logit", "sigmoid", "lag_powers",
           "markov_inverse", "scaled_inverse", "scale", "sd_collapsed", "safe_sd", "lag1_corr", "log_mean_sd"]

POS = (0.0, float("inf"))
CORR = (-1.0, 1.0)

#: a per-visit residual SD below this fraction of the largest one is on its boundary (0)
SD_FLOOR = 1e-3


def logit(p):
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(np.log(p / (1 - p)))


def sigmoid(z):
    return 0.5 * (jnp.tanh(0.5 * z) + 1.0)


def lag_powers(rho, T: int):
    """Matrix rho^|i-j| from integer lags (gradient-safe at rho = 0)."""
    powers = [jnp.ones_like(rho)]
    for _ in range(T - 1):
        powers.append(powers[-1] * rho)
    pw = jnp.stack(powers)
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    return pw[lag]


def markov_inverse(r_lag, m):
    """(C^-1 masked, log|C|) of a Markov correlation ``r_lag`` [T, T] (``C[t, u]`` for every pair)
    on the visits with ``m = 1`` (module docstring: tridiagonal over consecutive observed visits)."""
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


def scaled_inverse(Cinv, logdet_C, log_sd, m):
    """``(D^-1 C^-1 D^-1, log|D C D|)`` over the observed visits, ``log_sd`` [T] or a scalar."""
    inv_sd = jnp.exp(-log_sd) * jnp.ones(m.shape[-1], Cinv.dtype)
    return Cinv * inv_sd[:, None] * inv_sd[None, :], logdet_C + 2.0 * jnp.sum(m * log_sd, axis=-1)


def scale(C, sd):
    """D C D with D = diag(sd)."""
    return C * sd[:, None] * sd[None, :]


def sd_collapsed(log_sd):
    """A per-visit SD has collapsed towards 0 relative to the largest one (a boundary fit)."""
    return jnp.min(log_sd) < jnp.max(log_sd) + np.log(SD_FLOOR)


def safe_sd(S):
    return np.sqrt(np.clip(np.diag(S), 1e-8, None))


def log_mean_sd(S):
    """log of the root mean variance of ``S`` (the start of a common log SD)."""
    return 0.5 * np.log(max(float(np.mean(np.diag(S))), 1e-8))


def lag1_corr(S):
    sd = safe_sd(S)
    C = S / np.outer(sd, sd)
    if len(sd) < 2:
        return 0.0
    return float(np.mean(np.diag(C, 1)))


@dataclass(frozen=True)
class Structure:
    T: int

    name = "?"
    sas = "?"

    def is_boundary(self, theta):
        return jnp.asarray(False)

    def scale_kinds(self):
        # every structure with T standard deviations first and one correlation parameter last
        return (1,) * self.T + (0,)


@dataclass(frozen=True)
class Correlated(Structure):
    """``sigma^2 C(c)`` or ``D C(c) D`` (``hetero``) for a correlation model ``C``.

    A subclass defines ``n_corr``, ``corr(c)`` (T x T, jax), ``to_c(z)`` (jax) and ``from_c(c)``
    (numpy) between unconstrained and natural correlation parameters, ``c_bounds()``,
    ``c_names(visits)`` and ``c_start(S)`` (natural, numpy); ``z_boundary(z)`` (on its boundary:
    by default a ``tanh(z)`` within 1e-6 of +-1); optionally
    ``c_sas_names()``, ``sas_c(c)`` / ``c_from_sas(phi)`` (SAS's correlation parameters, identity by
    default) and
    ``sas_var_last`` (SAS prints the correlation parameters before the variance)."""

    hetero = False
    markov = False
    sas_var_last = False

    @property
    def n_sd(self):
        return self.T if self.hetero else 1

    @property
    def n_params(self):
        return self.n_sd + self.n_corr

    def scale_kinds(self):
        return (1,) * self.n_sd + (0,) * self.n_corr

    def z_boundary(self, z):
        return jnp.any(jnp.abs(jnp.tanh(z)) > 1 - 1e-6)

    def sas_c(self, c):
        return c

    def c_from_sas(self, phi):
        return phi

    def _scaled(self, C, log_sd):
        if self.hetero:
            return scale(C, jnp.exp(log_sd))
        return jnp.exp(2 * log_sd[0]) * C

    def natural_matrix(self, v):
        k = self.n_sd
        C = self.corr(v[k:])
        return scale(C, v[:k]) if self.hetero else v[0] ** 2 * C

    def natural_bounds(self):
        return [POS] * self.n_sd + list(self.c_bounds())

    def names(self, visits):
        sds = [f"sd[{v}]" for v in visits] if self.hetero else ["sigma"]
        return sds + list(self.c_names(visits))

    def matrix(self, theta):
        k = self.n_sd
        return self._scaled(self.corr(self.to_c(theta[k:])), theta[:k])

    @property
    def inverse(self):
        """``(V^-1, log|V|)`` on the observed visits (:func:`markov_inverse`), or None when the
        correlation is not Markov."""
        return self._markov_inverse if self.markov else None

    def _markov_inverse(self, theta, m):
        k = self.n_sd
        C = self.corr(self.to_c(theta[k:]))
        return scaled_inverse(*markov_inverse(C, m), theta[:k] if self.hetero else theta[0], m)

    def natural(self, theta):
        k = self.n_sd
        return jnp.concatenate([jnp.exp(theta[:k]), self.to_c(theta[k:])])

    def from_natural(self, v):
        v = np.asarray(v, dtype=float)
        k = self.n_sd
        return np.concatenate([np.log(v[:k]), self.from_c(v[k:])])

    def start(self, S):
        sd = np.log(safe_sd(S)) if self.hetero else np.array([log_mean_sd(S)])
        return np.concatenate([sd, self.from_c(self.c_start(S))])

    def is_boundary(self, theta):
        k = self.n_sd
        flag = self.z_boundary(theta[k:])
        return flag | sd_collapsed(theta[:k]) if self.hetero else flag

    def sas_names(self):
        var = [f"Var({i + 1})" for i in range(self.T)] if self.hetero else ["Residual"]
        c = list(self.c_sas_names())
        return c + var if self.sas_var_last else var + c

    def sas_params(self, theta):
        k = self.n_sd
        var = jnp.exp(2 * theta[:k])
        c = self.sas_c(self.to_c(theta[k:]))
        return jnp.concatenate([c, var] if self.sas_var_last else [var, c])

    def sas_matrix(self, phi):
        k, n = self.n_sd, self.n_corr
        var, c = (phi[n:], phi[:n]) if self.sas_var_last else (phi[:k], phi[k:])
        C = self.corr(self.c_from_sas(c))
        return scale(C, jnp.sqrt(var)) if self.hetero else var[0] * C
