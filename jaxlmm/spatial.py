"""Continuous-time and spatial correlation: exponential, Gaussian and power.

The residual correlation of two observations of a subject depends on the distance ``d`` of
their coordinates (one coordinate, e.g. a time, or several, with Euclidean distance), not on
visit positions:

=======  =============================  =====================  ====================================
name     correlation                    natural parameter      SAS / nlme
=======  =============================  =====================  ====================================
sp_exp   ``exp(-d / range)``            range > 0              SP(EXP)(c); corExp, corCAR1 (1 time:
                                                               ``phi = exp(-1 / range)``)
sp_gau   ``exp(-(d / range)^2)``        range > 0              SP(GAU)(c); corGaus
sp_pow   ``rho^d``                      0 < rho < 1            SP(POW)(c); corCAR1 ``Phi = rho``
=======  =============================  =====================  ====================================

with a common variance ``sigma^2`` (SAS ``Residual``).  Unconstrained parameters: ``log range``,
``logit rho``.  Times need not be integers or equally spaced.  Two layouts: when the data have
few distinct coordinate points, those points are the positions of one covariance (``coords``,
one tuple per position, sorted), shared by the subjects as a visit structure; otherwise each
subject's observations fill its columns and ``matrix_at(theta, D)`` builds one covariance per
subject from the distances ``D`` [S, T, T] of its own coordinates (``ModelData.D``).  In
one coordinate the exponential and power correlations are Markov (a continuous-time AR(1)): the
observed times of a subject form a Markov chain and the closed-form inverse of
:func:`jaxlmm.structure.markov_inverse` applies.  No nugget effect is modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .structure import POS, Correlated, logit, safe_sd, sigmoid

__all__ = ["SpExp", "SpGau", "SpPow"]


@dataclass(frozen=True)
class _Spatial(Correlated):
    coords: tuple = ()

    @property
    def points(self) -> np.ndarray:
        """[T, dims] coordinates (0, 1, ..., T-1 when none are given)."""
        if not self.coords:
            return np.arange(self.T, dtype=float)[:, None]
        return np.asarray(self.coords, dtype=float).reshape(self.T, -1)

    @property
    def dist(self) -> np.ndarray:
        P = self.points
        return np.sqrt(np.sum((P[:, None, :] - P[None, :, :]) ** 2, axis=-1))

    def corr(self, c):
        return self.corr_at(c, jnp.asarray(self.dist))

    def matrix_at(self, theta, D):
        """The covariance ``sigma^2 C(D)`` at distances ``D`` [..., n, n] (one matrix per subject
        when each subject has its own coordinates)."""
        return jnp.exp(2 * theta[0]) * self.corr_at(self.to_c(theta[1:]), D)

    def natural_matrix_at(self, v, D):
        return v[0] ** 2 * self.corr_at(v[1:], D)

    def sas_matrix_at(self, phi, D):
        return phi[1] * self.corr_at(self.c_from_sas(phi[:1]), D)

    @property
    def markov(self):
        return self.one_dim_markov and self.points.shape[1] == 1

    one_dim_markov = False
    sas_var_last = True  # SAS: SP(...), Residual

    @property
    def n_corr(self):
        return 1

    def c_sas_names(self):
        return [self.sas]

    def _pair_stats(self, S):
        """(distances, correlations) of the pairs of ``S`` with a usable correlation."""
        sd = safe_sd(S)
        C = np.asarray(S, dtype=float) / np.outer(sd, sd)
        iu = np.triu_indices(self.T, 1)
        d, r = self.dist[iu], C[iu]
        ok = (r > 0.05) & (r < 0.95) & (d > 0)
        return d[ok], r[ok]

    def _range_start(self, S, power):
        d, r = self._pair_stats(S)
        pos = self.dist[self.dist > 0]
        if len(d) == 0:
            return float(np.median(pos)) if len(pos) else 1.0
        return float(np.median(d / (-np.log(r)) ** (1.0 / power)))

    def z_boundary(self, z):
        """The correlation of the closest pair below 1e-6 or that of the farthest above 1 - 1e-6."""
        pos = self.dist[self.dist > 0]
        if len(pos) == 0:
            return jnp.asarray(False)
        C = self.corr(self.to_c(z))
        r_near = jnp.max(jnp.where(self.dist > 0, C, 0.0))
        r_far = jnp.min(C)
        return (r_near < 1e-6) | (r_far > 1 - 1e-6)


@dataclass(frozen=True)
class SpExp(_Spatial):
    """Exponential correlation ``exp(-d / range)`` (SAS ``SP(EXP)``, nlme ``corExp``)."""

    name = "sp_exp"
    sas = "SP(EXP)"
    one_dim_markov = True

    def corr_at(self, c, D):
        return jnp.exp(-D / c[0])

    def to_c(self, z):
        return jnp.exp(z)

    def from_c(self, c):
        return np.log(np.asarray(c, dtype=float))

    def c_bounds(self):
        return [POS]

    def c_names(self, visits):
        return ["range"]

    def c_start(self, S):
        return np.array([self._range_start(S, 1.0)])


@dataclass(frozen=True)
class SpGau(SpExp):
    """Gaussian correlation ``exp(-(d / range)^2)`` (SAS ``SP(GAU)``, nlme ``corGaus``)."""

    name = "sp_gau"
    sas = "SP(GAU)"
    one_dim_markov = False

    def corr_at(self, c, D):
        return jnp.exp(-((D / c[0]) ** 2))

    def c_start(self, S):
        return np.array([self._range_start(S, 2.0)])


@dataclass(frozen=True)
class SpPow(_Spatial):
    """Power correlation ``rho^d`` (SAS ``SP(POW)``; nlme ``corCAR1`` in one time coordinate)."""

    name = "sp_pow"
    sas = "SP(POW)"
    one_dim_markov = True

    def corr_at(self, c, D):
        return jnp.exp(D * jnp.log(c[0]))

    def to_c(self, z):
        return sigmoid(z)

    def from_c(self, c):
        return np.array([logit(float(np.asarray(c, dtype=float)[0]))])

    def c_bounds(self):
        return [(0.0, 1.0)]

    def c_names(self, visits):
        return ["rho"]

    def c_start(self, S):
        return np.array([float(np.clip(np.exp(-1.0 / self._range_start(S, 1.0)), 0.05, 0.95))])
