"""A separate residual covariance per group of subjects (mmrm ``un(visit | arm / subject)``,
SAS ``REPEATED / TYPE=UN SUBJECT=subject GROUP=arm``).

With groups ``g = 1..G`` (a factor constant within each subject) the residual covariance of
subject ``i`` is ``R_i = R_{g(i)}(theta_g)``: one copy of a base structure per group, with its own
parameters; ``theta = (theta_1, ..., theta_G)``.  The fixed effects and the random effects stay
shared.  Subject ``i`` carries a *key* per pair of its cells ``(a, b)`` at visit positions
``(t_a, t_b)``, ``K_i[a, b] = g(i) T^2 + t_a T + t_b`` (``ModelData.D``), and the covariance of
the pair is entry ``K_i[a, b]`` of the stacked group matrices ``[G, T, T]``.  The key survives
every gather of cell pairs (Kenward-Roger's cluster layout, predictions for new rows), so the
per-subject code path of the spatial structures serves these models unchanged.

Nesting: the shared structure is the special case ``theta_1 = ... = theta_G`` (a likelihood
ratio test with ``(G - 1) n_params`` degrees of freedom).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

__all__ = ["PerGroup", "group_keys"]


def group_keys(group_of_subject, t_of_cell, T: int):
    """Keys ``g T^2 + t_a T + t_b`` [S, n, n] of subjects with group codes ``group_of_subject`` [S]
    and the visit positions ``t_of_cell`` [S, n] of their cells (numpy, float)."""
    g = np.asarray(group_of_subject, dtype=np.int64)[:, None, None]
    t = np.asarray(t_of_cell, dtype=np.int64)
    return (g * T * T + t[:, :, None] * T + t[:, None, :]).astype(float)


@dataclass(frozen=True)
class PerGroup:
    """``G`` copies of the residual structure ``base``, one per level of the column ``group``."""

    base: object
    group: str
    levels: tuple  # the group labels (strings), in code order

    @property
    def T(self):
        return self.base.T

    @property
    def G(self):
        return len(self.levels)

    @property
    def name(self):
        return self.base.name

    @property
    def sas(self):
        return f"{self.base.sas} by {self.group}"

    @property
    def coords(self):
        return getattr(self.base, "coords", ())

    @property
    def n_params(self):
        return self.G * self.base.n_params

    def _split(self, theta):
        k = self.base.n_params
        return [theta[g * k : (g + 1) * k] for g in range(self.G)]

    def _suffix(self, names):
        return [f"{n} [{self.group}={lev}]" for lev in self.levels for n in names]

    # ---- names and parameter maps ----------------------------------------------------------
    def names(self, visits):
        return self._suffix(self.base.names(visits))

    def sas_names(self):
        return self._suffix(self.base.sas_names())

    def scale_kinds(self):
        return tuple(self.base.scale_kinds()) * self.G

    def natural(self, theta):
        return jnp.concatenate([self.base.natural(t) for t in self._split(theta)])

    def from_natural(self, values):
        return np.concatenate([self.base.from_natural(v) for v in self._split(np.asarray(values, dtype=float))])

    def natural_bounds(self):
        return list(self.base.natural_bounds()) * self.G

    def sas_params(self, theta):
        return jnp.concatenate([self.base.sas_params(t) for t in self._split(theta)])

    def start(self, S):
        return np.tile(self.base.start(S), self.G)

    def is_boundary(self, theta):
        flag = jnp.asarray(False)
        for t in self._split(theta):
            flag = flag | self.base.is_boundary(t)
        return flag

    inverse = None  # one covariance per group: no shared closed form per visit pattern

    # ---- matrices ----------------------------------------------------------------------------
    def group_matrices(self, theta):
        """[G, T, T]: the covariance of each group."""
        return jnp.stack([self.base.matrix(t) for t in self._split(theta)])

    def matrix(self, theta):
        """The mean of the groups' covariances (a summary for scale and degeneracy checks; the
        likelihood uses :meth:`matrix_at`)."""
        return jnp.mean(self.group_matrices(theta), axis=0)

    @staticmethod
    def _take(stack, K):
        return stack.reshape(-1)[jnp.asarray(K).astype(jnp.int32)]

    def matrix_at(self, theta, K):
        """Covariances at keys ``K`` (module docstring)."""
        return self._take(self.group_matrices(theta), K)

    def natural_matrix(self, values):
        return jnp.mean(jnp.stack([self.base.natural_matrix(v) for v in self._split(values)]), axis=0)

    def natural_matrix_at(self, values, K):
        return self._take(jnp.stack([self.base.natural_matrix(v) for v in self._split(values)]), K)

    def sas_matrix(self, phi):
        return jnp.mean(jnp.stack([self.base.sas_matrix(p) for p in self._split(phi)]), axis=0)

    def sas_matrix_at(self, phi, K):
        return self._take(jnp.stack([self.base.sas_matrix(p) for p in self._split(phi)]), K)
