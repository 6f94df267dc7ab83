"""Profile likelihoods and profile-likelihood confidence intervals.

For one parameter psi (a covariance parameter in natural units, or a fixed effect) the profile
deviance is the deviance minimised over every other parameter with psi held fixed,

    d(psi) = min_{other} -2 log L(psi, other),      zeta(psi) = sign(psi - psi_hat) sqrt(d(psi) - d_min),

and the level-(1 - alpha) interval is {psi : |zeta(psi)| <= z_{1 - alpha/2}}, i.e. the
likelihood-ratio test of psi = psi_0 does not reject (lme4's ``profile`` / ``confint``).

* Covariance parameters are profiled on the criterion of the fit (REML for a REML fit) unless
  ``criterion="ml"``; lme4 profiles a REML fit on the ML deviance of the ML refit
  (``criterion="ml"`` reproduces its numbers).
* Fixed effects are always profiled on the ML deviance (REML deviances of models with different
  fixed effects are not comparable).  With beta_j = b fixed, GLS gives the other fixed effects in
  closed form: d_j(theta; b) = d_ML(theta) + (b - beta_hat_j(theta))^2 / [A(theta)^-1]_jj, with
  A = X'V^-1X, so only theta is optimised numerically.

Every profile point is an optimisation over the other covariance parameters in natural units
mapped to an unbounded scale (log for SDs, a scaled atanh for correlations, unbounded ones
such as a variance function's power as they are); the fixed
parameter is held by a mask.  All points of all parameters run as one vmapped, compiled Newton
solve per round: ``profile`` evaluates its whole grid in one call; ``confint`` brackets each
end point (one or two rounds) and then refines the brackets by interpolation on zeta (a few
more rounds of the same compiled program).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.linalg import cho_solve, solve_triangular

from .distributions import norm_ppf
from .errors import LMMError
from .likelihood import assemble, gls_factor, gls_pieces
from .spec import NaturalSpec
from .optimize import BOUNDARY, CONVERGED, newton

__all__ = ["profile", "confint_profile"]


# ------------------------------------------------------------------------------------------
# natural parameters <-> an unbounded scale
# ------------------------------------------------------------------------------------------


def _to_phi(u, bounds):
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    free = np.isinf(lo) & np.isinf(hi)  # unbounded (a variance function's power or rate): u itself
    half = np.isinf(hi) & ~free
    lo = np.where(free, 0.0, lo)
    width = np.where(half | free, 1.0, hi - lo)
    return jnp.where(free, u, jnp.where(half, lo + jnp.exp(u), lo + width * 0.5 * (1.0 + jnp.tanh(u))))


def _to_u(phi, bounds, floor):
    """Inverse of :func:`_to_phi`; values at (or beyond) a bound are moved ``floor`` inside."""
    out = np.empty(len(bounds))
    for i, (lo, hi) in enumerate(bounds):
        v = float(phi[i])
        if np.isinf(lo) and np.isinf(hi):
            out[i] = v
        elif np.isinf(hi):
            out[i] = np.log(max(v - lo, floor[i]))
        else:
            t = 2 * (v - lo) / (hi - lo) - 1
            out[i] = np.arctanh(np.clip(t, -1 + 1e-7, 1 - 1e-7))
    return out


# ------------------------------------------------------------------------------------------
# the compiled, batched profile solve
# ------------------------------------------------------------------------------------------


def _dev_rows(v, row, payload, nspec, bounds):
    """Deviance of one profile row (fixed coordinate, fixed-effect constraint, criterion):
    the engine's deviance plus, for a fixed-effect row, (b - e'beta_hat)^2 / e'A^-1 e."""
    fix_mask, cu, e, bval, reml, is_fixed = row
    u = jnp.where(fix_mask, cu, v)
    pieces = gls_pieces(_to_phi(u, bounds), payload, nspec)
    LA, d = gls_factor(pieces.A)
    beta = cho_solve((LA, True), pieces.b / d) / d
    w = solve_triangular(LA, e / d, lower=True)
    ajj = jnp.where(is_fixed, jnp.dot(w, w), 1.0)
    return assemble(pieces, reml) + jnp.where(is_fixed, (bval - jnp.dot(e, beta)) ** 2 / ajj, 0.0)


@partial(jax.jit, static_argnames=("nspec", "bounds", "max_iter"))
def _solve_rows(v0, rows, payload, nspec, bounds, max_iter=100):
    def one(v, row):
        f = lambda x: _dev_rows(x, row, payload, nspec, bounds)  # noqa: E731
        r = newton(f, v, max_iter=max_iter, tol=1e-12)
        return r.x, r.fun, r.status

    return jax.vmap(one)(v0, rows)


@partial(jax.jit, static_argnames=("nspec", "bounds", "p"))
def _hess_u(u, reml, payload, nspec, bounds, p):
    """Hessian of the (unconstrained) deviance on the profiling scale."""
    n = u.shape[0]
    row = (jnp.zeros(n, bool), jnp.asarray(0.0), jnp.zeros(p), jnp.asarray(0.0), reml, jnp.asarray(False))
    return jax.hessian(lambda x: _dev_rows(x, row, payload, nspec, bounds))(u)


class _Problem:
    """Host-side driver shared by :func:`profile` and :func:`confint_profile`."""

    def __init__(self, result, criterion=None):
        if criterion not in (None, "reml", "ml"):
            raise LMMError(f"criterion must be None (the fit's), 'reml' or 'ml', got {criterion!r}.")
        if criterion == "reml" and not result.reml:
            raise LMMError("criterion='reml' needs a REML fit; refit with reml=True or use criterion='ml'.")
        self.result = result
        model = result.model
        self.spec = model.spec
        self.nspec = NaturalSpec(model.spec)
        self.bounds = tuple(tuple(float(x) for x in b) for b in self.nspec.bounds())
        self.names_theta = list(result.theta.index)
        self.names_beta = list(result.info.fixed_names)
        self.p = len(self.names_beta)
        self.k = len(self.names_theta)
        ml = result if not result.reml else model.fit(reml=False, warn=False)
        self.fit_cov = ml if (criterion == "ml" or not result.reml) else result
        self.fit_fix = ml
        self.payload = model.payload[1]
        self.offset = np.asarray(model.offset)
        self._se_cov = None
        self._start = {}

    def start_u(self, fit):
        key = id(fit)
        if key not in self._start:
            self._start[key] = self._start_u(fit)
        return self._start[key]

    def _start_u(self, fit):
        phi = fit.theta.to_numpy()
        sd_scale = float(np.sqrt(np.mean(np.diag(np.asarray(fit.model.spec.R(jnp.asarray(fit.record.theta)))))))
        floor = np.full(self.k, 1e-4 * max(sd_scale, 1e-12))
        return _to_u(phi, self.bounds, floor)

    def wald_se_u(self, fit, u):
        H = np.asarray(_hess_u(jnp.asarray(u), jnp.asarray(bool(fit.reml)), self.payload, self.nspec, self.bounds,
                               self.p))
        H = 0.5 * (H + H.T)
        cov = 2.0 * np.linalg.pinv(H, rcond=1e-10, hermitian=True)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
        # at a boundary (an SD ~0, |rho| ~1) the curvature vanishes: cap the step scale
        return np.where(np.isfinite(se) & (se > 1e-8), np.minimum(se, 2.0), 1.0)

    def targets(self, which):
        """[(kind, index, name)] for the parameters requested."""
        allnames = self.names_theta + self.names_beta
        if which is None:
            which = allnames
        elif isinstance(which, str):
            which = [which]
        out = []
        for w in which:
            if w in self.names_theta:
                out.append(("theta", self.names_theta.index(w), w))
            elif w in self.names_beta:
                out.append(("beta", self.names_beta.index(w), w))
            else:
                raise LMMError(f"Unknown parameter {w!r} in which=; choose from {allnames}.")
        return out

    def centre(self, tgt):
        """(estimate on the profiling scale, its Wald SE there, start vector, d_min, reml)."""
        kind, j, _ = tgt
        if kind == "theta":
            fit = self.fit_cov
            u = self.start_u(fit)
            if self._se_cov is None:
                self._se_cov = self.wald_se_u(fit, u)
            return u[j], self._se_cov[j], u, fit.deviance, bool(fit.reml)
        fit = self.fit_fix
        u = self.start_u(fit)
        return float(fit.record.beta[j]), float(np.sqrt(fit.record.vcov[j, j])), u, fit.deviance, False

    def solve(self, tgts, values, starts, pad_to=None):
        """Profile deviances at ``values`` (on the profiling scale) for each target row.  Rows
        are padded (repeating the last) to ``pad_to`` so that every round reuses one program."""
        n_real = len(tgts)
        if pad_to is not None and pad_to > n_real:
            extra = pad_to - n_real
            tgts, values, starts = list(tgts) + [tgts[-1]] * extra, list(values) + [values[-1]] * extra, \
                list(starts) + [starts[-1]] * extra
        R = len(tgts)
        fix_mask = np.zeros((R, self.k), bool)
        cu = np.zeros(R)
        e = np.zeros((R, self.p))
        bval = np.zeros(R)
        reml = np.zeros(R, bool)
        is_fixed = np.zeros(R, bool)
        for i, ((kind, j, _), val) in enumerate(zip(tgts, values)):
            if kind == "theta":
                fix_mask[i, j] = True
                cu[i] = val
                reml[i] = bool(self.fit_cov.reml)
            else:
                e[i, j] = 1.0
                bval[i] = val - self.offset[j]  # the payload holds the response less X offset
                is_fixed[i] = True
        v0 = np.array(starts, dtype=float)
        v0[fix_mask] = cu[fix_mask.any(axis=1)]
        rows = tuple(jnp.asarray(a) for a in (fix_mask, cu, e, bval, reml, is_fixed))
        x, f, st = _solve_rows(jnp.asarray(v0), rows, self.payload, self.nspec, self.bounds)
        return np.asarray(x)[:n_real], np.asarray(f)[:n_real], np.asarray(st)[:n_real]

    def to_natural(self, tgt, val):
        kind, j, _ = tgt
        if kind == "beta":
            return float(val)
        lo, hi = self.bounds[j]
        if np.isinf(lo) and np.isinf(hi):
            return float(val)
        if np.isinf(hi):
            return float(lo + np.exp(val))
        return float(lo + (hi - lo) * 0.5 * (1 + np.tanh(val)))


def _ok(st):
    return (st == CONVERGED) | (st == BOUNDARY)


def profile(result, which=None, n_points: int = 13, level_max: float = 0.99, criterion=None) -> pd.DataFrame:
    """Profile zeta over a grid around each estimate, all points in one batched solve.

    The grid for a parameter is ``n_points`` equally spaced values on its profiling scale (log
    for SDs, atanh-type for correlations, identity for fixed effects), covering about
    ``+- 1.3 z_{level_max}`` Wald SEs on that scale.  Returns a long DataFrame with columns
    ``parameter, value`` (natural units), ``zeta``, ``deviance``, ``status``.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    >>> res = lmm.fit("y ~ time + ar1(visit | subject)", df)
    >>> pr = profile(res, which="time", n_points=5)
    >>> bool(pr["zeta"].is_monotonic_increasing)
    True
    """
    prob = _Problem(result, criterion)
    tgts = prob.targets(which)
    zmax = norm_ppf(0.5 + level_max / 2)
    t = np.linspace(-1.3 * zmax, 1.3 * zmax, int(n_points))
    rows, vals, starts, info = [], [], [], []
    for tgt in tgts:
        c, se, u, dmin, _ = prob.centre(tgt)
        for ti in t:
            rows.append(tgt)
            vals.append(c + ti * se)
            starts.append(u)
            info.append((tgt, c, dmin))
    x, f, st = prob.solve(rows, vals, starts)
    out = []
    for i, (tgt, c, dmin) in enumerate(info):
        d = float(f[i]) - dmin
        z = np.sign(vals[i] - c) * np.sqrt(max(d, 0.0))
        out.append({"parameter": tgt[2], "value": prob.to_natural(tgt, vals[i]), "zeta": z,
                    "deviance": float(f[i]), "status": int(st[i])})
    return pd.DataFrame(out)


def confint_profile(result, which=None, level: float = 0.95, criterion=None, max_rounds: int = 12,
                    xtol: float = 1e-9) -> pd.DataFrame:
    """Profile-likelihood intervals: the values where ``|zeta| = z_{(1+level)/2}``.

    Each end point is bracketed by evaluating the profile at 0.75, 1, 1.5 and 2.5 Wald SEs times
    ``z`` from the estimate (further out if needed), then refined by interpolation on zeta
    (linear in the parameter when the profile is quadratic) until the bracket is below ``xtol``
    on the profiling scale.  An SD or correlation whose profile never reaches ``z`` before its
    bound gets the bound (e.g. 0 for an SD at a singular fit), as lme4 does.
    Returns a DataFrame indexed by parameter with ``estimate, lower, upper``.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    >>> res = lmm.fit("y ~ time + ar1(visit | subject)", df)
    >>> ci = confint_profile(res, which="sigma")
    >>> bool(ci.loc["sigma", "lower"] < res.theta["sigma"] < ci.loc["sigma", "upper"])
    True
    """
    if not 0 < level < 1:
        raise LMMError(f"level must be in (0, 1), got {level!r}.")
    prob = _Problem(result, criterion)
    tgts = prob.targets(which)
    z = float(norm_ppf(0.5 + level / 2))
    ends = [(tgt, s) for tgt in tgts for s in (-1.0, 1.0)]
    E = len(ends)
    info = []
    for tgt, s in ends:
        info.append(prob.centre(tgt))
    # bracket state per end: (a, za, start_a) below z, (b, zb, start_b) above z
    lo_pt = [(c, 0.0, u) for (c, se, u, dmin, _) in info]
    hi_pt = [None] * E
    mult = [np.array([0.75, 1.0, 1.5, 2.5]), np.array([4.0, 7.0, 12.0, 20.0]), np.array([35.0, 60.0, 100.0, 200.0])]
    n_per = 4
    for rnd in range(len(mult)):
        rows, vals, starts, owner = [], [], [], []
        for i, ((tgt, s), (c, se, u, dmin, _)) in enumerate(zip(ends, info)):
            base = mult[rnd] if hi_pt[i] is None else np.full(n_per, np.nan)
            for mlt in base:
                owner.append(i)
                rows.append(tgt)
                vals.append(c + s * mlt * z * se if np.isfinite(mlt) else c)
                starts.append(lo_pt[i][2])
        x, f, st = prob.solve(rows, vals, starts)
        done = True
        for i in range(E):
            if hi_pt[i] is not None:
                continue
            c, se, u, dmin, _ = info[i]
            idx = [r for r in range(len(owner)) if owner[r] == i]
            for r in idx:  # in increasing distance from the estimate
                if not _ok(st[r]):
                    continue
                zeta = np.sqrt(max(float(f[r]) - dmin, 0.0))
                if zeta < z:
                    lo_pt[i] = (vals[r], zeta, x[r])
                else:
                    hi_pt[i] = (vals[r], zeta, x[r])
                    break
            done &= hi_pt[i] is not None
        if done:
            break
    # refine: regula falsi on zeta with a safeguard (bisection when the bracket shrinks slowly)
    final = [None] * E
    for i in range(E):
        if hi_pt[i] is None:
            final[i] = np.nan  # never reached z: the bound
    for _ in range(max_rounds):
        active = [i for i in range(E) if final[i] is None]
        if not active:
            break
        rows, vals, starts, owner = [], [], [], []
        for i in active:
            (a, za, xa), (b, zb, _) = lo_pt[i], hi_pt[i]
            t = (z - za) / max(zb - za, 1e-300)
            cstar = a + np.clip(t, 0.02, 0.98) * (b - a)
            w = b - a
            cand = [cstar, cstar - 1e-3 * w, cstar + 1e-3 * w, a + 0.5 * w]
            for cv in cand:
                owner.append(i)
                rows.append(ends[i][0])
                vals.append(cv)
                starts.append(xa)
        x, f, st = prob.solve(rows, vals, starts, pad_to=n_per * E)
        for i in active:
            dmin = info[i][3]
            c = info[i][0]
            s = ends[i][1]
            for r in [r for r in range(len(owner)) if owner[r] == i]:
                if not _ok(st[r]):
                    continue
                zeta = np.sqrt(max(float(f[r]) - dmin, 0.0))
                v = vals[r]
                (a, za, xa), (b, zb, _) = lo_pt[i], hi_pt[i]
                inside = (v - a) * (b - v) > 0
                if not inside:
                    continue
                if zeta < z:
                    lo_pt[i] = (v, zeta, x[r])
                else:
                    hi_pt[i] = (v, zeta, x[r])
            (a, za, _), (b, zb, _) = lo_pt[i], hi_pt[i]
            if abs(b - a) < xtol * (1 + abs(c)) or abs(za - z) < 1e-9 or abs(zb - z) < 1e-9:
                t = (z - za) / max(zb - za, 1e-300)
                final[i] = a + t * (b - a)
    for i in range(E):
        if final[i] is None:  # out of rounds: the interpolated point of the last bracket
            (a, za, _), (b, zb, _) = lo_pt[i], hi_pt[i]
            final[i] = a + (z - za) / max(zb - za, 1e-300) * (b - a)
    rows = []
    for tgt in tgts:
        est = result.theta[tgt[2]] if tgt[0] == "theta" else result.fixef[tgt[2]]
        lims = []
        for side in (-1.0, 1.0):
            i = ends.index((tgt, side))
            if np.isnan(final[i]):
                if tgt[0] == "theta":
                    lo, hi = prob.bounds[tgt[1]]
                    lims.append(lo if side < 0 else hi)
                else:
                    lims.append(-np.inf if side < 0 else np.inf)
            else:
                lims.append(prob.to_natural(tgt, final[i]))
        rows.append({"parameter": tgt[2], "estimate": float(est), "lower": lims[0], "upper": lims[1]})
    return pd.DataFrame(rows).set_index("parameter")
