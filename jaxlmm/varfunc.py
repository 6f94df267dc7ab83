"""Variance functions (nlme's ``weights = varIdent / varPower / varExp``; SAS ``LOCAL=EXP()``):
the residual SD of each observation is multiplied by a function of a column.

For observation ``j`` with features ``f_j`` [k] and parameters ``delta`` [k]

    Var(e_j) = s_j^2 R_base[t_j, t_j],      Cov(e_a, e_b) = s_a s_b R_base[t_a, t_b],
    s_j = exp(f_j' delta)

with the features of each term

* ``var_ident(g)``: one indicator per level of ``g`` but the first, ``s = exp(delta_l)`` is the
  ratio of the level's SD to the first level's (nlme's ``varIdent`` parameters);
* ``var_power(x)``: ``f = log x``, ``s = x^delta`` (nlme ``varPower(form = ~ x)``; ``x > 0``);
* ``var_exp(x)``: ``f = x``, ``s = exp(delta x)`` (nlme ``varExp(form = ~ x)``).

Several terms multiply (nlme ``varComb``).  ``R_base`` is any residual structure, per group
or spatial too.  Each subject carries, per pair of its cells ``(a, b)``, the base structure's
own datum (a key into the visit grid, a group key, or a distance) followed by ``f_a`` and
``f_b`` (``ModelData.D`` [S, T, T, 1 + 2k]); the pair survives every gather of cell pairs, so
these models run on the per-subject layout of :mod:`jaxlmm.pergroup` and the spatial structures.
The base structure's parameters come first in ``theta``, then ``delta``.  ``delta = 0`` is the
base structure (a likelihood-ratio test with ``k`` degrees of freedom).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .structure import POS

__all__ = ["VarFunction", "pair_data"]

KINDS = ("ident", "power", "exp")


def pair_data(base_data, F):
    """``[S, T, T, 1 + 2k]`` from the base datum of each pair ``base_data`` [S, T, T] and the
    features of each cell ``F`` [S, T, k] (numpy)."""
    S, T, k = F.shape
    fa = np.broadcast_to(F[:, :, None, :], (S, T, T, k))
    fb = np.broadcast_to(F[:, None, :, :], (S, T, T, k))
    return np.concatenate([np.asarray(base_data, dtype=float)[..., None], fa, fb], axis=-1)


@dataclass(frozen=True)
class VarFunction:
    """The residual structure ``base`` with its SDs scaled by ``exp(f' delta)``.

    ``features``: one ``(kind, label)`` per feature (``label`` the parameter's name, e.g.
    ``varIdent[sex=M]``); ``own_data``: channel 0 of the pair data is the base structure's own
    datum for ``matrix_at`` (per-group keys, per-subject distances) rather than a key
    ``t_a T + t_b`` into ``base.matrix``."""

    base: object
    features: tuple
    own_data: bool = False

    @property
    def T(self):
        return self.base.T

    @property
    def k(self):
        return len(self.features)

    @property
    def name(self):
        return self.base.name

    @property
    def sas(self):
        return self.base.sas

    @property
    def group(self):
        return getattr(self.base, "group", None)

    @property
    def coords(self):
        return getattr(self.base, "coords", ())

    @property
    def n_params(self):
        return self.base.n_params + self.k

    def split(self, theta):
        """(base parameters, delta)."""
        n = self.base.n_params
        return theta[:n], theta[n:]

    def _is_ratio(self):
        return np.array([kind == "ident" for kind, _ in self.features])

    # ---- names and parameter maps ----------------------------------------------------------
    def names(self, visits):
        return list(self.base.names(visits)) + [lab for _, lab in self.features]

    def sas_names(self):
        return list(self.base.sas_names()) + [lab for _, lab in self.features]

    def scale_kinds(self):
        return tuple(self.base.scale_kinds()) + (0,) * self.k

    def _delta_natural(self, d):
        return jnp.where(self._is_ratio(), jnp.exp(d), d)

    def _delta_from_natural(self, v):
        return jnp.where(self._is_ratio(), jnp.log(jnp.where(self._is_ratio(), v, 1.0)), v)

    def natural(self, theta):
        b, d = self.split(theta)
        return jnp.concatenate([self.base.natural(b), self._delta_natural(d)])

    def from_natural(self, values):
        v = np.asarray(values, dtype=float)
        b, d = self.split(v)
        ratio = self._is_ratio()
        return np.concatenate([self.base.from_natural(b), np.where(ratio, np.log(np.where(ratio, d, 1.0)), d)])

    def natural_bounds(self):
        return list(self.base.natural_bounds()) + [POS if r else (-np.inf, np.inf) for r in self._is_ratio()]

    def sas_params(self, theta):
        b, d = self.split(theta)
        return jnp.concatenate([self.base.sas_params(b), self._delta_natural(d)])

    def start(self, S):
        return np.concatenate([self.base.start(S), np.zeros(self.k)])

    def is_boundary(self, theta):
        return self.base.is_boundary(self.split(theta)[0])

    inverse = None  # the scales differ per observation: no closed form per visit pattern

    # ---- matrices ----------------------------------------------------------------------------
    def matrix(self, theta):
        """The base structure's covariance (at features 0: the reference level, x = 1 for
        ``var_power``, x = 0 for ``var_exp``)."""
        return self.base.matrix(self.split(theta)[0])

    def natural_matrix(self, values):
        return self.base.natural_matrix(self.split(values)[0])

    def sas_matrix(self, phi):
        return self.base.sas_matrix(self.split(phi)[0])

    def _at(self, R_of, R_at, b, delta, P):
        P = jnp.asarray(P)
        k = self.k
        base = R_at(b, P[..., 0]) if self.own_data else R_of(b).reshape(-1)[P[..., 0].astype(jnp.int32)]
        log_s = P[..., 1 : 1 + k] @ delta + P[..., 1 + k :] @ delta
        return base * jnp.exp(log_s)

    def matrix_at(self, theta, P):
        b, d = self.split(theta)
        return self._at(self.base.matrix, getattr(self.base, "matrix_at", None), b, d, P)

    def natural_matrix_at(self, values, P):
        b, d = self.split(values)
        return self._at(self.base.natural_matrix, getattr(self.base, "natural_matrix_at", None), b,
                        self._delta_from_natural(d), P)

    def sas_matrix_at(self, phi, P):
        b, d = self.split(phi)
        return self._at(self.base.sas_matrix, getattr(self.base, "sas_matrix_at", None), b,
                        self._delta_from_natural(d), P)
