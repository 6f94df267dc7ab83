"""Serial correlation over the visit positions: ante-dependence, Toeplitz and ARMA(1,1).

Each is a :class:`~jaxlmm.structure.Correlated` structure: ``sigma^2 C`` (homogeneous) or
``D C D`` with a SD per visit (heterogeneous).

=======  ==========================================  =============================================
name     correlation ``C[i, j]``                     unconstrained parameters
=======  ==========================================  =============================================
ad/adh   ``prod_{k=i}^{j-1} rho_k`` (SAS ANTE(1))    ``rho_k = tanh(z_k)``, k = 1..T-1
toep/    ``r_|i-j|`` (SAS TOEP, TOEPH)               partial autocorrelations ``tanh(z_k)``
toeph
arma11   ``gamma rho^(|i-j|-1)``, i != j             ``phi = tanh(z_1)``, ``theta = tanh(z_2)``
         (SAS ARMA(1,1), nlme corARMA(1, 1))
=======  ==========================================  =============================================

Toeplitz structures are parameterised by the partial autocorrelations ``pi_k`` of the lags:
the Durbin-Levinson recursion maps every point of ``(-1, 1)^(T-1)`` to the lag correlations
``r_1 .. r_(T-1)`` of a positive-definite Toeplitz matrix and back, one to one (a map of each
lag correlation to ``(-1, 1)`` alone would not keep the matrix positive definite).

ARMA(1,1) is parameterised as nlme's ``corARMA``: the autocorrelation of the stationary,
invertible process ``e_t = phi e_(t-1) + u_t + theta u_(t-1)``,
``r_k = phi^(k-1) gamma`` with ``gamma = (1 + phi theta)(phi + theta) / (1 + 2 phi theta + theta^2)``;
every ``(phi, theta)`` in ``(-1, 1)^2`` gives a positive-definite matrix.  SAS prints
``Rho = phi`` and ``Gamma = gamma``; ``theta = 0`` (or ``gamma = rho``) is AR(1).  From SAS's
``(rho, gamma)`` back: ``theta`` is the root inside the unit interval of
``(gamma - phi) theta^2 + (2 gamma phi - 1 - phi^2) theta + (gamma - phi) = 0`` (the roots'
product is 1).

The observed visits of an ante-dependence process form a Markov chain (closed-form inverse,
:func:`jaxlmm.structure.markov_inverse`); Toeplitz and ARMA(1,1) are factored.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .structure import CORR, Correlated, lag1_corr, safe_sd

__all__ = ["AD", "ADH", "TOEP", "TOEPH", "ARMA11"]


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


def _corr(S):
    sd = safe_sd(S)
    return np.asarray(S, dtype=float) / np.outer(sd, sd)


@dataclass(frozen=True)
class AD(Correlated):
    """First-order ante-dependence with a common variance (mmrm ``ad``)."""

    name = "ad"
    sas = "ANTE(1), common variance"
    markov = True

    @property
    def n_corr(self):
        return self.T - 1

    def corr(self, c):
        return _ante_corr(c, self.T)

    def to_c(self, z):
        return jnp.tanh(z)

    def from_c(self, c):
        return np.arctanh(np.asarray(c, dtype=float))

    def c_bounds(self):
        return [CORR] * (self.T - 1)

    def c_names(self, visits):
        return [f"rho[{visits[k]},{visits[k + 1]}]" for k in range(self.T - 1)]

    def c_sas_names(self):
        return [f"Rho({k + 1})" for k in range(self.T - 1)]

    def c_start(self, S):  # correlations of consecutive visits
        return np.clip(np.diag(_corr(S), 1), -0.9, 0.9)


@dataclass(frozen=True)
class ADH(AD):
    """First-order ante-dependence with a variance per visit (SAS ``ANTE(1)``, mmrm ``adh``)."""

    name = "adh"
    sas = "ANTE(1)"
    hetero = True


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


@dataclass(frozen=True)
class TOEP(Correlated):
    """Toeplitz: a common variance and a correlation per lag (SAS ``TOEP``, mmrm ``toep``).
    Natural parameters: the lag correlations; unconstrained: arctanh of their partial
    autocorrelations."""

    name = "toep"
    sas = "TOEP"

    @property
    def n_corr(self):
        return self.T - 1

    def corr(self, c):
        return _toeplitz(c, self.T)

    def to_c(self, z):
        return _pacf_to_acf(jnp.tanh(z))

    def from_c(self, c):
        return np.arctanh(_acf_to_pacf(c))

    def c_bounds(self):
        return [CORR] * (self.T - 1)

    def c_names(self, visits):
        return [f"rho[lag {k}]" for k in range(1, self.T)]

    def c_start(self, S):
        """Lag-averaged correlations of ``S``, shrunk until their partial autocorrelations are
        within (-0.9, 0.9)."""
        C = _corr(S)
        r = np.array([np.mean(np.diag(C, k)) for k in range(1, self.T)])
        for shrink in (1.0, 0.8, 0.5, 0.2, 0.0):
            pi = _acf_to_pacf(shrink * r)
            if np.all(np.isfinite(pi)) and np.all(np.abs(pi) < 1):
                break
        return _pacf_to_acf_np(np.clip(pi, -0.9, 0.9))

    def c_sas_names(self):
        return [f"TOEPH({k})" for k in range(1, self.T)]

    def sas_names(self):
        if self.hetero:
            return super().sas_names()
        return [f"TOEP({k + 1})" for k in range(1, self.T)] + ["Residual"]

    def sas_params(self, theta):
        if self.hetero:  # Var(1..T), TOEPH(1..T-1): the correlation at lags 1..T-1
            return super().sas_params(theta)
        # TOEP(2..T): the covariance at lags 1..T-1, then Residual (the variance)
        v = jnp.exp(2 * theta[:1])
        return jnp.concatenate([v * self.to_c(theta[1:]), v])

    def sas_matrix(self, phi):
        if self.hetero:
            return super().sas_matrix(phi)
        return _toeplitz(phi[:-1] / phi[-1], self.T) * phi[-1]


def _pacf_to_acf_np(pi):
    return np.asarray(_pacf_to_acf(jnp.asarray(pi, dtype=jnp.float64)))


@dataclass(frozen=True)
class TOEPH(TOEP):
    """Heterogeneous Toeplitz: a variance per visit and a correlation per lag (SAS ``TOEPH``)."""

    name = "toeph"
    sas = "TOEPH"
    hetero = True


def _arma_gamma(phi, theta):
    return (1.0 + phi * theta) * (phi + theta) / (1.0 + 2.0 * phi * theta + theta * theta)


@dataclass(frozen=True)
class ARMA11(Correlated):
    """ARMA(1,1) correlation with a common variance (SAS ``ARMA(1,1)``, nlme ``corARMA(p = 1,
    q = 1)``); natural parameters ``phi`` and ``theta`` as nlme's (module docstring)."""

    name = "arma11"
    sas = "ARMA(1,1)"
    sas_var_last = True  # SAS: Rho, Gamma, Residual

    @property
    def n_corr(self):
        return 2

    def corr(self, c):
        lag = np.abs(np.subtract.outer(np.arange(self.T), np.arange(self.T)))
        return jnp.where(lag == 0, 1.0, _arma_gamma(c[0], c[1]) * _lag_powers_minus_one(c[0], self.T))

    def to_c(self, z):
        return jnp.tanh(z)

    def from_c(self, c):
        return np.arctanh(np.asarray(c, dtype=float))

    def c_bounds(self):
        return [CORR, CORR]

    def c_names(self, visits):
        return ["phi", "theta"]

    def c_start(self, S):
        """AR(1) (theta = 0) at the lag-1 correlation."""
        return np.array([float(np.clip(lag1_corr(S), -0.9, 0.9)), 0.0])

    def c_sas_names(self):
        return ["Rho", "Gamma"]

    def sas_c(self, c):  # Rho, Gamma
        return jnp.stack([c[0], _arma_gamma(c[0], c[1])])

    def c_from_sas(self, p):
        phi, g = p[0], p[1]
        a = g - phi
        b = 2.0 * g * phi - 1.0 - phi * phi
        disc = jnp.sqrt(jnp.maximum(b * b - 4.0 * a * a, 0.0))
        # the root of a t^2 + b t + a with |t| <= 1 (b < 0 inside the region): 2a / (-b + disc)
        theta = 2.0 * a / (-b + disc)
        return jnp.stack([phi, theta])


def _lag_powers_minus_one(rho, T: int):
    """Matrix rho^(|i-j|-1) off the diagonal (1 on it), from integer lags (gradient-safe)."""
    powers = [jnp.ones_like(rho), jnp.ones_like(rho)]
    for _ in range(T - 2):
        powers.append(powers[-1] * rho)
    pw = jnp.stack(powers[:T])
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    return pw[lag]
