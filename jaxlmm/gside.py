"""Structured covariance of the random effects of one term (G side), as glmmTMB's and lme4 2.x's
``cs(...)``, ``ar1(...)``, ``diag(...)``, ``us(...)`` and SAS ``RANDOM ... / TYPE=CS`` etc.

A term ``re_cs(0 + visit | subject)`` has ``k`` random effects per level of its factor (one
per column of its design, here one per visit) whose ``k x k`` covariance is a residual-type
structure over the positions ``0..k-1`` of the columns: ``G = R_struct(theta)`` with the
structure's own parameters (log SDs, ``tanh`` / logistic correlations; :mod:`jaxlmm.structure`).
Every unconstrained value is a positive-definite ``G``; ``L = chol(G)`` enters the likelihood
exactly as the factor of an unstructured block.  A variance on its boundary (0) is approached
as ``log sd -> -inf`` (reported as a boundary fit), unlike the unstructured blocks whose
Cholesky entries pass through 0.

Units: all columns of a structured block share one scale (the mean log RMS of its columns),
so a common variance stays common when the optimiser works in unit-free parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

__all__ = ["StructuredBlock"]


@dataclass(frozen=True)
class StructuredBlock:
    """Random effects ``columns`` per level of ``group`` with covariance ``structure.matrix``."""

    columns: tuple[str, ...]
    group: str
    structure: object  # a residual structure over k positions (jaxlmm.covariance)

    correlated = True  # the block's effects may correlate (its parameters say how)

    @property
    def k(self):
        return len(self.columns)

    @property
    def kind(self):
        return self.structure.name

    @property
    def n_params(self):
        return self.structure.n_params

    def _names(self, names):
        g = self.group
        names = ["sd" if n == "sigma" else n for n in names]
        return [f"{n[:-1]}|{g}]" if n.endswith("]") else f"{n}[{g}]" for n in names]

    def names(self):
        return self._names(self.structure.names(list(self.columns)))

    def sas_names(self):
        return self._names(self.structure.sas_names())

    # ---- units -------------------------------------------------------------------------------
    common_scale = True  # one scale for all its columns (fitting.column_log_scales)

    def unit_scaling(self, log_sy, log_sz, xp):
        """``(mult, shift)`` of the parameters when the response moves by ``log s_y`` and the
        block's (common) column scale is ``log_sz`` [k]."""
        d = log_sy - log_sz[0]
        kinds = np.asarray(self.structure.scale_kinds())
        return xp.where(kinds == 2, xp.exp(d), 1.0) + 0.0 * d, xp.where(kinds == 1, d, 0.0) + 0.0 * d

    # ---- matrices ----------------------------------------------------------------------------
    def matrix(self, theta):
        return self.structure.matrix(theta)

    def chol(self, theta):
        return jnp.linalg.cholesky(self.matrix(theta))

    def natural(self, theta):
        return self.structure.natural(theta)

    def from_natural(self, v):
        return self.structure.from_natural(v)

    def natural_matrix(self, v):
        return self.structure.natural_matrix(v)

    def natural_chol(self, v):
        return jnp.linalg.cholesky(self.natural_matrix(v))

    def natural_bounds(self):
        return list(self.structure.natural_bounds())

    def start(self, var_cols):
        return self.structure.start(np.diag(np.clip(np.asarray(var_cols, dtype=float), 1e-8, None)))

    def sas_params(self, theta):
        return self.structure.sas_params(theta)

    def sas_matrix(self, phi):
        return self.structure.sas_matrix(phi)

    def is_boundary(self, theta, scale):
        """A correlation on its bound, or an SD below 1e-4 times the residual SD."""
        sd = jnp.sqrt(jnp.diagonal(self.matrix(theta)))
        return self.structure.is_boundary(theta) | (jnp.min(sd) < 1e-4 * scale)
