"""The model's arrays, its static covariance description, and the one builder of the marginal
covariance of a subject.

Level 1 (per subject i, visit positions 0..T-1 in the padded columns, mask m_it):

    V_i = Z_i G Z_i' + R_i,      V*_i = (m m') * V_i + diag(1 - m)

with ``G`` block diagonal over the random-effect blocks on the subject and ``R_i`` the
residual structure.  Masked cells have zero rows in X, Z and y, so ``V*_i`` adds exactly
nothing for them.  Level 2 (the nested and crossed factors of a :class:`~jaxlmm.terms.Level2Plan`)
adds ``Z2 Lambda Lambda' Z2'`` across subjects; it is never formed in the likelihood (see
:mod:`jaxlmm.pls`), only for dense uses (Kenward-Roger, sandwich, tests) by
:func:`cluster_covariance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .covariance import RandomBlock

__all__ = ["ModelData", "ModelSpec", "NaturalSpec", "covariance_blocks", "marginal_cov", "cluster_covariance", "LOG2PI"]

LOG2PI = float(np.log(2 * np.pi))


class ModelData(NamedTuple):
    """Padded model arrays (a pytree).  S subjects (padded), T visit positions, p fixed, q level-1
    random effects; ``Z2`` [S, T, q2] and ``idx`` (a :class:`~jaxlmm.terms.Level2Index`) hold the
    level-2 factors (None without them).  ``D`` [S, T, T] (or [S, T, T, c]) holds per pair of a
    subject's cells what its residual covariance needs when that differs between subjects: the
    distances of a spatial structure with one covariance per subject (its rows fill the
    columns), the keys of a covariance per group (:mod:`jaxlmm.pergroup`), or those with the
    features of variance functions (:mod:`jaxlmm.varfunc`); None otherwise.  Without a covariance term and with several grouping
    factors, every row is its own "subject" (T = 1)."""

    y: jax.Array  # [S, T]   response, 0 where masked
    m: jax.Array  # [S, T]   1 observed, 0 missing / padding
    X: jax.Array  # [S, T, p]
    Z: jax.Array  # [S, T, q]
    Z2: jax.Array | None = None
    idx: object = None
    D: jax.Array | None = None  # [S, T, T(, c)] per-pair residual data (distances, group keys, features)

    def to_jax(self, dtype=jnp.float64) -> "ModelData":
        """The arrays as JAX arrays of ``dtype`` (index arrays as int32)."""
        f = (lambda a: None if a is None else jnp.asarray(a, dtype))
        idx = None if self.idx is None else jax.tree.map(lambda a: jnp.asarray(a, jnp.int32), self.idx)
        return ModelData(f(self.y), f(self.m), f(self.X), f(self.Z), f(self.Z2), idx, f(self.D))

    def masked(self, m) -> "ModelData":
        """The same design with mask ``m`` [S, T] (y, X, Z, Z2 zeroed where ``m`` is 0)."""
        mm = m[..., None]
        Z2 = None if self.Z2 is None else self.Z2 * mm
        return self._replace(y=self.y * m, m=m, X=self.X * mm, Z=self.Z * mm, Z2=Z2)


def _block_diag(blocks, mats, dtype=None):
    q = sum(b.k for b in blocks)
    if not mats:
        return jnp.zeros((0, 0), dtype=dtype or jnp.float64)
    out = jnp.zeros((q, q), dtype=mats[0].dtype)
    i = 0
    for b, M in zip(blocks, mats):
        out = out.at[i : i + b.k, i : i + b.k].set(M)
        i += b.k
    return out


@dataclass(frozen=True)
class ModelSpec:
    """Static description of the covariance model (hashable: a jit static argument).

    ``blocks`` are all random-effect blocks in formula order (their parameters come first in
    ``theta``, then the residual structure's).  Blocks listed in ``plan`` (a
    :class:`~jaxlmm.terms.Level2Plan`) are level 2; the others are on the residual subject."""

    blocks: tuple[RandomBlock, ...]
    resid: object  # a covariance structure from jaxlmm.covariance
    T: int
    plan: object = None

    # ---- parameter layout ---------------------------------------------------------------
    @property
    def n_theta(self):
        return sum(b.n_params for b in self.blocks) + self.resid.n_params

    def param_slices(self):
        """(slice of theta per block, slice of the residual structure)."""
        out, i = [], 0
        for b in self.blocks:
            out.append(slice(i, i + b.n_params))
            i += b.n_params
        return out, slice(i, i + self.resid.n_params)

    @property
    def level1(self) -> tuple[int, ...]:
        """Indices of the blocks on the residual subject (level 1)."""
        l2 = set() if self.plan is None else {j for f in self.plan.factors for j in f.blocks}
        return tuple(j for j in range(len(self.blocks)) if j not in l2)

    @property
    def q(self):
        """Number of level-1 random effects per subject."""
        return sum(self.blocks[j].k for j in self.level1)

    def unit_scaling(self, log_sy, log_sz):
        """``(mult, shift)`` with ``theta = mult * theta_u + shift``: ``theta_u`` parameterises the
        same model for the response divided by ``exp(log_sy)`` and every random-effect column
        divided by its scale ``exp(log_sz)`` (one entry per column, blocks in order).  The
        optimiser works on ``theta_u``, so its steps, tolerances and boundary checks do not
        depend on the units of the data.  ``log_sy`` may be traced."""
        xp = jnp if isinstance(log_sy, jax.Array) or isinstance(log_sz, jax.Array) else np
        mult, shift, o = [], [], 0
        for b in self.blocks:
            mu, sh = b.unit_scaling(log_sy, log_sz[o : o + b.k], xp)
            mult.append(mu)
            shift.append(sh)
            o += b.k
        kinds = np.asarray(self.resid.scale_kinds())
        mult.append(xp.where(kinds == 2, xp.exp(log_sy), 1.0) + 0.0 * log_sy)
        shift.append(xp.where(kinds == 1, log_sy, 0.0))
        return xp.concatenate(mult), xp.concatenate(shift)

    # ---- matrices ----------------------------------------------------------------------
    def _mats(self, theta, fn):
        sl, _ = self.param_slices()
        return [getattr(self.blocks[j], fn)(theta[sl[j]]) for j in self.level1]

    def G(self, theta):
        """Level-1 covariance of the random effects (block diagonal)."""
        return _block_diag([self.blocks[j] for j in self.level1], self._mats(theta, "matrix"), theta.dtype)

    def G_chol(self, theta):
        """A factor L with L L' = G (block diagonal of the blocks' factors; exact at a boundary)."""
        return _block_diag([self.blocks[j] for j in self.level1], self._mats(theta, "chol"), theta.dtype)

    def R(self, theta, D=None):
        """The residual covariance [T, T], or per subject [..., T, T] from the per-pair data ``D``
        (:class:`ModelData`)."""
        _, s = self.param_slices()
        return self.resid.matrix(theta[s]) if D is None else self.resid.matrix_at(theta[s], D)

    def level1_inverse(self, theta, m):
        """``(V*^-1, log|V*|)`` in closed form for masks ``m`` [..., T] (zero rows and columns at
        unobserved visits), or None: only without level-1 random effects and for residual
        structures with an ``inverse`` (:mod:`jaxlmm.covariance`)."""
        if self.q or getattr(self.resid, "inverse", None) is None:
            return None
        _, s = self.param_slices()
        return self.resid.inverse(theta[s], m)

    def lambdas(self, theta):
        """``Lambda_f`` (``G_f = Lambda_f Lambda_f'``) of every level-2 factor, in plan order."""
        return _factor_lambdas(self, theta, "chol")

    def level2_G(self, theta):
        """``G_f`` of every level-2 factor, in plan order."""
        return [L @ L.T for L in self.lambdas(theta)]

    # ---- natural parameters ------------------------------------------------------------
    def natural(self, theta):
        sl, sr = self.param_slices()
        parts = [b.natural(theta[s]) for b, s in zip(self.blocks, sl)]
        parts.append(self.resid.natural(theta[sr]))
        return jnp.concatenate(parts)

    def from_natural(self, values):
        values = np.asarray(values, dtype=float)
        sl, sr = self.param_slices()
        parts = [b.from_natural(values[s]) for b, s in zip(self.blocks, sl)]
        parts.append(self.resid.from_natural(values[sr]))
        return np.concatenate(parts)

    def names(self, visits):
        out = []
        for b in self.blocks:
            out += b.names()
        return out + self.resid.names(visits)

    # ---- SAS-style (variance-covariance) parameters -------------------------------------
    # linear for UN, CS and random effects: the parameterisation in which Kenward-Roger is
    # defined (as SAS and pbkrtest)
    def sas_slices(self):
        out, i = [], 0
        for b in self.blocks:
            n = len(b.sas_names())
            out.append(slice(i, i + n))
            i += n
        return out, slice(i, i + self.resid.n_params)

    def sas_params(self, theta):
        sl, sr = self.param_slices()
        parts = [b.sas_params(theta[s]) for b, s in zip(self.blocks, sl)]
        return jnp.concatenate(parts + [self.resid.sas_params(theta[sr])])

    def sas_names(self):
        """(SAS's name, grouping) of each of :meth:`sas_params`: the random blocks' groups, then
        None for the residual structure."""
        out = []
        for b in self.blocks:
            out += [(n, b.group) for n in b.sas_names()]
        return out + [(n, None) for n in self.resid.sas_names()]

    def sas_matrices(self, phi, D=None):
        """(level-1 G, R, [G_f of every level-2 factor]) from SAS-style parameters (R at the
        distances ``D`` of a per-subject spatial structure when given)."""
        sl, sr = self.sas_slices()
        mats = [b.sas_matrix(phi[s]) for b, s in zip(self.blocks, sl)]
        G = _block_diag([self.blocks[j] for j in self.level1], [mats[j] for j in self.level1], phi.dtype)
        G2 = []
        if self.plan is not None:
            for f in self.plan.factors:
                G2.append(_block_diag([self.blocks[j] for j in f.blocks], [mats[j] for j in f.blocks]))
        R = self.resid.sas_matrix(phi[sr]) if D is None else self.resid.sas_matrix_at(phi[sr], D)
        return G, R, G2

    # ---- status checks -------------------------------------------------------------------
    def is_degenerate(self, theta, theta0):
        """The residual variance collapsed (below 1e-12 of where the fit started): the
        likelihood is unbounded, e.g. the fixed effects fit the response exactly."""
        _, sr = self.param_slices()
        v = jnp.mean(jnp.diagonal(self.resid.matrix(theta[sr])))
        v0 = jnp.mean(jnp.diagonal(self.resid.matrix(theta0[sr])))
        return ~(v > 1e-12 * v0)

    def is_boundary(self, theta):
        sl, sr = self.param_slices()
        flag = self.resid.is_boundary(theta[sr])
        scale = jnp.sqrt(jnp.mean(jnp.diagonal(self.resid.matrix(theta[sr]))))
        for b, s in zip(self.blocks, sl):
            flag = flag | b.is_boundary(theta[s], scale)
        return flag


def _factor_lambdas(spec, theta, fn):
    if spec.plan is None:
        return []
    base = spec if isinstance(spec, ModelSpec) else spec.base
    sl, _ = base.param_slices()
    out = []
    for f in base.plan.factors:
        mats = [getattr(base.blocks[j], fn)(theta[sl[j]]) for j in f.blocks]
        out.append(_block_diag([base.blocks[j] for j in f.blocks], mats, theta.dtype))
    return out


@dataclass(frozen=True)
class NaturalSpec:
    """The covariance model of ``base`` with its natural parameters (SDs, correlations, in the
    order of ``base.names``) as the parameter vector.  Accepted wherever a :class:`ModelSpec`
    is (``deviance(phi, data, NaturalSpec(spec))``); used by likelihood profiles, which fix
    one natural parameter and optimise the others."""

    base: ModelSpec

    @property
    def T(self):
        return self.base.T

    @property
    def q(self):
        return self.base.q

    @property
    def plan(self):
        return self.base.plan

    @property
    def level1(self):
        return self.base.level1

    # natural parameters come in the same counts and order as the unconstrained ones
    def G(self, phi):
        sl, _ = self.base.param_slices()
        bl = self.base.blocks
        return _block_diag([bl[j] for j in self.level1], [bl[j].natural_matrix(phi[sl[j]]) for j in self.level1],
                           phi.dtype)

    def R(self, phi, D=None):
        _, sr = self.base.param_slices()
        r = self.base.resid
        return r.natural_matrix(phi[sr]) if D is None else r.natural_matrix_at(phi[sr], D)

    def level1_inverse(self, phi, m):
        """None: the closed forms take unconstrained parameters (profiles factor ``V``)."""
        return None

    def lambdas(self, phi):
        return _factor_lambdas(self, phi, "natural_chol")

    def bounds(self):
        """(lower, upper) of every natural parameter."""
        out = []
        for b in self.base.blocks:
            out += b.natural_bounds()
        return out + self.base.resid.natural_bounds()


def covariance_blocks(G, R, m, Z, same=None, level2=()):
    """The marginal covariance ``V*`` [..., n, n] of independent blocks of cells (the one builder
    of every marginal covariance in the package).

    ``m`` [..., n] masks, ``Z`` [..., n, q] level-1 random-effect rows, ``R`` the residual
    covariance ([n, n], or per block [..., n, n]).  ``same`` [..., n, n] (optional) is 1 for
    cells of one subject: the level-1 part is ``same * (Z G Z' + R)``.  ``level2``: pairs
    ``(Z2_f [..., n, k], G_f)`` with the level of each cell ``lev_f`` [..., n] as a third item;
    cells on one level share ``z' G_f z``.  Masked cells get the identity:
    ``(m m') * V + diag(1 - m)``."""
    n = m.shape[-1]
    V = jnp.broadcast_to(R, m.shape + (n,))
    if G.shape[0]:
        V = V + jnp.einsum("...tk,kl,...ul->...tu", Z, G, Z)
    if same is not None:
        V = V * same
    for zf, Gf, lev in level2:
        eq = lev[..., :, None] == lev[..., None, :]
        V = V + eq * jnp.einsum("...ak,kl,...bl->...ab", zf, Gf, zf)
    mm = m[..., :, None] * m[..., None, :]
    return mm * V + jnp.eye(n, dtype=V.dtype) * (1.0 - m)[..., :, None]


def marginal_cov(theta, m, Z, spec, D=None):
    """Level-1 ``V*_i`` [..., T, T] of the subjects (or patterns) with masks ``m`` and rows ``Z``
    (and the distances ``D`` of each subject's observations for a per-subject spatial structure)."""
    return covariance_blocks(spec.G(theta), spec.R(theta) if D is None else spec.R(theta, D), m, Z)


def cluster_covariance(G1, R, G2, cl):
    """Dense marginal covariance of independent clusters (for Kenward-Roger, sandwich SEs and
    checks), from level-1 ``G1``, ``R`` and the level-2 ``G_f`` (plan order), by
    :func:`covariance_blocks`.

    ``cl`` (:func:`jaxlmm.likelihood.cluster_layout`) lists each cluster's cells [C, n]: subject
    ``sub``, visit ``t``, mask ``m``, level-1 rows ``Z``, level-2 rows ``Z2`` and levels ``lev``:
    ``V[a, b] = [sub_a = sub_b] (R[t_a, t_b] + z_a' G1 z_b) + sum_f [lev_fa = lev_fb] z2_fa' G_f z2_fb``."""
    same = (cl.sub[..., :, None] == cl.sub[..., None, :]).astype(R.dtype)
    Rc = R if R.ndim == 3 else R[cl.t[..., :, None], cl.t[..., None, :]]  # [C, n, n]: already per cell
    level2, o = [], 0
    for f, Gf in enumerate(G2):
        k = Gf.shape[0]
        level2.append((cl.Z2[..., o : o + k], Gf, cl.lev[..., f]))
        o += k
    return covariance_blocks(G1, Rc, cl.m, cl.Z, same, level2)
