"""Fitting one dataset: the likelihood payload, start values, the compiled Newton fit and the
public record of its outcome.

A model's arrays are turned once into the payload that evaluates its likelihood fastest
(:func:`make_payload`):

* ``"patterns"``: level-1 models whose subjects share few visit patterns (at most half as many
  patterns as subjects): per-pattern sufficient statistics;
* ``"flat"``: ``sigma^2 I`` residuals and nested or crossed factors only: the cross-products
  of the rows are summed once (:class:`~jaxlmm.likelihood.FlatData`);
* ``"subjects"``: everything else (per-subject whitening, then the level-2 factors).

Every later computation on the fit (inference, profiles) uses the same payload, so it reuses
the compiled likelihood of the fit instead of compiling another layout.

Units.  The optimiser never sees the units of the data: it works on ``theta_u`` with
``theta = mult * theta_u + shift`` (:meth:`~jaxlmm.spec.ModelSpec.unit_scaling`), the
parameters of the same model for the response divided by ``s_y`` (the RMS of its OLS
residuals) and each random-effect column divided by its RMS, and on the deviance less its
shift under that scaling, ``2 (N - p [REML]) log s_y``.  Steps, tolerances, start values and
boundary checks are therefore the same for ``y`` and ``c y`` (and for a covariate in other
units): fitting ``c y`` gives ``c beta``, ``c`` times the SDs, the same correlations and the
deviance plus ``2 (N - p [REML]) log c``, for any ``c`` float64 can hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from .likelihood import beta_vcov, deviance, flat_payload
from .optimize import BOUNDARY, CONVERGED, NON_FINITE, minimize_host, newton
from .patterns import Patterns, PatternDesign, PatternResponse, pattern_design, pattern_response_np
from .spec import ModelData

__all__ = ["OLSFactor", "ols_factor", "FitRecord", "make_payload", "fit_arrays", "start_values", "guard_memory_maps", "neutral_start",
           "ols_fit", "centred", "column_log_scales", "unit_scaled", "natural_values"]


@dataclass(frozen=True)
class FitRecord:
    """The outcome of one fit (immutable; arrays are read-only).

    ``theta`` unconstrained covariance parameters at the optimum, ``beta`` and ``vcov`` the GLS
    fixed effects and ``(X'V^-1X)^-1`` there, ``deviance`` the minimised criterion, ``status``
    (:data:`jaxlmm.STATUS`) and ``n_iter``, ``gradient`` and ``hessian`` of the criterion in
    ``theta``, ``layout`` of the likelihood, ``optimizer`` ("newton": exact Hessians;
    "bfgs+newton": BFGS, then Newton steps with finite-difference Hessians of exact gradients),
    ``start`` ("moments", "user", or "neutral" when the first attempt failed and the fit was
    retried without correlations), ``attempts``; ``scale`` and ``offset``: the map
    ``theta = scale * theta_u + offset`` to the unit-scale parameters the optimiser used, and
    ``log_scale`` the log response scale (RMS of the OLS residuals) that map was built from."""

    theta: np.ndarray
    beta: np.ndarray
    vcov: np.ndarray
    deviance: float
    reml: bool
    status: int
    n_iter: int
    gradient: np.ndarray
    hessian: np.ndarray
    layout: str
    start: str
    attempts: int
    optimizer: str = "newton"
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None
    log_scale: float = 0.0

    def __post_init__(self):
        k = len(np.atleast_1d(self.theta))
        if self.scale is None:
            object.__setattr__(self, "scale", np.ones(k))
        if self.offset is None:
            object.__setattr__(self, "offset", np.zeros(k))
        for name in ("theta", "beta", "vcov", "gradient", "hessian", "scale", "offset"):
            a = np.array(getattr(self, name), dtype=float)
            a.flags.writeable = False
            object.__setattr__(self, name, a)

    @property
    def converged(self) -> bool:
        return self.status in (CONVERGED, BOUNDARY)

    @property
    def unit_theta(self) -> np.ndarray:
        """``theta`` in the optimiser's unit-scale parameters."""
        return (self.theta - self.offset) / self.scale

    @property
    def unit_hessian(self) -> np.ndarray:
        """The Hessian in the optimiser's unit-scale parameters."""
        return self.hessian * np.outer(self.scale, self.scale)

    def theta_covariance(self) -> np.ndarray:
        """``2 H^-1``, the asymptotic covariance of ``theta`` (a pseudo-inverse where the fit is
        singular), computed in the unit-scale parameters so that which directions count as
        flat does not depend on the units of the data."""
        H = 0.5 * (self.unit_hessian + self.unit_hessian.T)
        return 2.0 * np.linalg.pinv(H, rcond=1e-10, hermitian=True) * np.outer(self.scale, self.scale)


def make_payload(arrays: ModelData, spec):
    """(layout name, payload) for the likelihood of ``arrays`` (see the module docstring)."""
    m = np.asarray(arrays.m)
    if spec.plan is not None:
        if not spec.level1 and spec.T == 1 and spec.resid.name == "id":
            return "flat", flat_payload(arrays, spec)
        return "subjects", arrays.to_jax()
    S_real = int((m.sum(axis=1) > 0).sum())
    pdes, layout, K = pattern_design(arrays, m)
    if K <= max(S_real // 2, 8) and pdes.XX.size <= 2e7:
        pr = pattern_response_np(arrays.y, m, pdes, layout)
        pd_j = PatternDesign(*(None if a is None else jnp.asarray(a, jnp.float64) for a in pdes._replace(Xs=None)))
        return "patterns", Patterns(pd_j, PatternResponse(*(jnp.asarray(a, jnp.float64) for a in pr)))
    return "subjects", arrays.to_jax()


@partial(jax.jit, static_argnames=("spec",))
def natural_values(theta, spec):
    """``(natural parameters, their Jacobian in theta)`` in one compiled program (evaluated op
    by op, the few transforms would each compile a program of their own)."""
    return spec.natural(theta), jax.jacfwd(spec.natural)(theta)


@partial(jax.jit, static_argnames=("spec", "max_iter", "tol"))
def _fit_compiled(u0, mult, shift, dev0, payload, spec, reml, max_iter: int, tol: float):
    """Damped Newton with the exact Hessian at every step, in one compiled program, on the
    unit-scale parameters ``u`` (``theta = mult * u + shift``)."""
    obj = lambda u: deviance(mult * u + shift, payload, spec, reml) - dev0  # noqa: E731
    res = newton(obj, u0, max_iter=max_iter, tol=tol, boundary=spec.is_boundary, degenerate=spec.is_degenerate)
    beta, vcov = beta_vcov(mult * res.x + shift, payload, spec)
    return res, beta, vcov


@partial(jax.jit, static_argnames=("spec",))
def _value_and_grad(u, mult, shift, dev0, payload, spec, reml):
    return jax.value_and_grad(lambda v: deviance(mult * v + shift, payload, spec, reml) - dev0)(u)


@partial(jax.jit, static_argnames=("spec",))
def _beta_vcov(theta, payload, spec):
    return beta_vcov(theta, payload, spec)


def _fit_host(u0, mult, shift, dev0, payload, spec, reml, max_iter: int, tol: float):
    """Models with nested or crossed factors: :func:`jaxlmm.optimize.minimize_host` around one
    compiled value-and-gradient (an automatic Hessian of the level-2 system compiles several
    times longer and costs many gradients); the record's Hessian is then a finite-difference
    Hessian of exact gradients at the optimum."""
    res = minimize_host(lambda u: _value_and_grad(u, mult, shift, dev0, payload, spec, reml), np.asarray(u0),
                        max_iter=max_iter, tol=tol, boundary=spec.is_boundary, degenerate=spec.is_degenerate)
    beta, vcov = _beta_vcov(mult * jnp.asarray(res.x) + shift, payload, spec)
    return res, beta, vcov


class OLSFactor(NamedTuple):
    """The OLS normal equations of a design and mask shared by many responses: the masked rows
    ``Xf`` [n, p] and the Cholesky factor ``L`` of ``X'X`` equilibrated by ``d = sqrt(diag X'X)``."""

    Xf: jax.Array
    L: jax.Array
    d: jax.Array


def ols_factor(m, X) -> OLSFactor:
    """:class:`OLSFactor` of ``X`` over the cells with ``m = 1`` (inside ``jit``, once per batch)."""
    p = X.shape[-1]
    Xf = (X * m[..., None]).reshape(-1, p)
    A = Xf.T @ Xf
    d = jnp.sqrt(jnp.diagonal(A))
    d = jnp.where(d > 0, d, 1.0)
    return OLSFactor(Xf, jnp.linalg.cholesky(A / (d[:, None] * d[None, :]) + 1e-15 * jnp.eye(p, dtype=A.dtype)), d)


def ols_fit(y, m, X, xp=np, factor: OLSFactor | None = None):
    """OLS of ``y`` on ``X`` over the observed cells (mask ``m``): ``(beta, log_s, exact)`` with
    ``log_s`` the log of the RMS of the residuals, the response's scale free of its mean and of
    any shift by the fixed effects (the RMS of ``y``, then 1, when the residuals vanish:
    ``exact``, the fixed effects fit ``y`` exactly).  ``xp`` is numpy (host; least squares by
    SVD) or ``jax.numpy`` (inside a compiled batch; equilibrated normal equations with one step
    of refinement, by the shared ``factor`` of :func:`ols_factor` when the mask is that of many
    responses, else by a solve per response)."""
    Xm = X * m[..., None]
    ym = y * m
    p = X.shape[-1]
    Xf, yf = Xm.reshape(-1, p), ym.reshape(-1)
    if xp is np:
        beta = np.linalg.lstsq(Xf, yf, rcond=None)[0]
    else:
        if factor is None:
            A = Xf.T @ Xf
            d = xp.sqrt(xp.diagonal(A))
            d = xp.where(d > 0, d, 1.0)
            As = A / (d[:, None] * d[None, :]) + 1e-15 * xp.eye(p)

            def solve(r):
                return xp.linalg.solve(As, r / d) / d
        else:
            Xf, (L, d) = factor.Xf, factor[1:]

            def solve(r):
                w = solve_triangular(L, r / d, lower=True)
                return solve_triangular(L, w, lower=True, trans=1) / d
        beta = solve(Xf.T @ yf)
        beta = beta + solve(Xf.T @ (yf - Xf @ beta))  # one step of refinement
    r = yf - Xf @ beta
    n = xp.maximum(xp.sum(m), 1.0)
    ms = xp.sum(r * r) / n
    my = xp.sum(yf * yf) / n
    exact = ~(ms > 1e-24 * my)
    ms = xp.where(exact, xp.where(my > 0, my, 1.0), ms)
    return beta, 0.5 * xp.log(ms), exact


def centred(arrays: ModelData):
    """``(arrays with y - X beta0 in the observed cells, beta0)``, ``beta0`` the OLS fit.  The
    likelihood is computed on the centred response (its GLS estimate is ``beta - beta0``), so
    sums of squares do not lose digits to a response that the fixed effects mostly explain
    (a large mean, or ``y = 10^6 x + noise``)."""
    y, m, X = (np.asarray(a) for a in arrays[:3])
    beta0 = ols_fit(y, m, X)[0]
    return arrays._replace(y=(y - X @ beta0) * m), beta0


def column_log_scales(data: ModelData, spec) -> np.ndarray:
    """``log`` of the RMS over the observed cells of every random-effect column (blocks in
    order); 0 for a column that is zero everywhere; the mean over the columns of a structured
    block (:mod:`jaxlmm.gside`), whose columns share one scale."""
    m = np.asarray(data.m)
    n = max(float(m.sum()), 1.0)
    out = []
    for b, zz in zip(spec.blocks, block_columns(data, spec)):
        ms = np.sum(zz * zz * m[..., None], axis=(0, 1)) / n
        ls = np.where(ms > 0, 0.5 * np.log(np.where(ms > 0, ms, 1.0)), 0.0)
        out.append(np.full_like(ls, ls.mean()) if b.common_scale else ls)  # structured blocks: one scale
    return np.concatenate(out) if out else np.zeros(0)


def unit_scaled(data: ModelData, spec, log_sy, log_sz) -> ModelData:
    """``data`` with the response divided by ``exp(log_sy)`` and every random-effect column by
    its scale (host arrays)."""
    sz = np.exp(np.asarray(log_sz))
    z1, z2, o = [], [], 0
    for j, b in enumerate(spec.blocks):
        (z2 if spec.plan is not None and j not in spec.level1 else z1).append((j, sz[o : o + b.k]))
        o += b.k
    s1 = np.concatenate([s for _, s in sorted(z1)]) if z1 else np.zeros(0)
    out = data._replace(y=np.asarray(data.y) / np.exp(log_sy), Z=np.asarray(data.Z) / s1 if len(s1) else data.Z)
    if spec.plan is not None and data.Z2 is not None:
        order = [j for f in spec.plan.factors for j in f.blocks]
        s2 = np.concatenate([dict(z2)[j] for j in order])
        out = out._replace(Z2=np.asarray(data.Z2) / s2)
    return out


def fit_arrays(arrays: ModelData, spec, reml: bool, theta0=None, *, payload=None, offset=None, max_iter: int = 200,
               tol: float = 1e-11, retry: bool = True) -> FitRecord:
    """Full Newton fit of one dataset (host arrays with X, Z, y zero in masked cells).

    ``payload`` (from :func:`make_payload`) is built when not given, from the response centred by
    its OLS fit (:func:`centred`); a given payload comes with the ``offset`` its response was
    centred by (``arrays`` are then the centred arrays).  The optimiser works on
    unit-scale parameters (see the module docstring).  A failed fit is retried once from a
    start without correlations."""
    guard_memory_maps()
    if payload is None:
        arrays, offset = centred(arrays)
        payload = make_payload(arrays, spec)
    offset = np.zeros(np.asarray(arrays.X).shape[-1]) if offset is None else np.asarray(offset, dtype=float)
    layout, pay = payload
    m, X = np.asarray(arrays.m), np.asarray(arrays.X)
    _, log_sy, exact = ols_fit(np.asarray(arrays.y), m, X)
    log_sy = float(log_sy)
    log_sz = column_log_scales(arrays, spec)
    mult, shift = (np.asarray(a) for a in spec.unit_scaling(log_sy, log_sz))
    dev0 = 2.0 * (float(m.sum()) - (X.shape[-1] if reml else 0)) * log_sy

    fit_fn = _fit_compiled if spec.plan is None else _fit_host

    def run(u):
        return fit_fn(jnp.asarray(u), jnp.asarray(mult), jnp.asarray(shift), jnp.asarray(dev0), pay, spec,
                      jnp.asarray(bool(reml)), max_iter, tol)

    if theta0 is None:
        start, how = start_values(unit_scaled(arrays, spec, log_sy, log_sz), spec), "moments"
    else:
        start, how = (np.asarray(theta0, dtype=float) - shift) / mult, "user"
    res, beta, vcov = run(start)
    attempts = 1
    if retry and int(res.status) not in (CONVERGED, BOUNDARY):
        res2, beta2, vcov2 = run(neutral_start(spec, start))
        attempts = 2
        if int(res2.status) in (CONVERGED, BOUNDARY) or float(res2.fun) < float(res.fun):
            res, beta, vcov, how = res2, beta2, vcov2, "neutral"
    u = np.asarray(res.x)
    status = NON_FINITE if exact else int(res.status)  # y = X beta exactly: the likelihood is unbounded
    return FitRecord(theta=mult * u + shift, beta=np.asarray(beta) + offset, vcov=np.asarray(vcov),
                     deviance=float(res.fun) + dev0, reml=bool(reml), status=status, n_iter=int(res.n_iter),
                     gradient=np.asarray(res.grad) / mult, hessian=np.asarray(res.hess) / np.outer(mult, mult),
                     layout=layout, start=how, attempts=attempts,
                     optimizer="newton" if spec.plan is None else "bfgs+newton", scale=mult, offset=shift,
                     log_scale=log_sy)


def start_values(data: ModelData, spec) -> np.ndarray:
    """Moment-based start: OLS residuals -> their pairwise visit covariance; with random
    effects, half of the variance goes to the random part, spread over its blocks and columns."""
    y, m, X = (np.asarray(a) for a in data[:3])
    p = X.shape[-1]
    Xf, yf = X.reshape(-1, p), y.reshape(-1)
    beta, *_ = np.linalg.lstsq(Xf, yf, rcond=None)
    r = (y - X @ beta) * m
    cnt = m.T @ m
    tot = float(np.sum(r * r) / max(np.sum(m), 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        Semp = np.where(cnt > 1, (r.T @ r) / np.maximum(cnt, 1), 0.0)
    d = np.diag(Semp).copy()
    d[~(np.diag(cnt) > 1) | ~(d > 0)] = max(tot, 1e-8)
    np.fill_diagonal(Semp, d)
    if not spec.blocks:
        return spec.resid.start(Semp)
    cols = block_columns(data, spec)
    nb = len(spec.blocks)
    share = {j: 0.5 * tot / nb for j in range(nb)}
    resid_scale = 0.5
    if spec.plan is not None:  # level 2: each factor's share from the spread of its level means
        v = _factor_moments(r, m, np.asarray(data.idx.lev), spec.plan, tot)
        for f, vf in zip(spec.plan.factors, v):
            for j in f.blocks:
                share[j] = vf / len(f.blocks)
        l1 = spec.level1
        for j in l1:
            share[j] = 0.5 * tot / nb
        resid_scale = max(1.0 - sum(v) / tot - 0.5 * len(l1) / nb, 0.2)
    parts = []
    for j, (b, zz) in enumerate(zip(spec.blocks, cols)):
        msq = np.sum(zz * zz * m[..., None], axis=(0, 1)) / max(np.sum(m), 1.0)
        parts.append(b.start(share[j] / np.maximum(msq, 1e-8) / b.k))
    Sr = resid_scale * np.diag(np.diag(Semp)) + 0.5 * resid_scale * (Semp - np.diag(np.diag(Semp)))
    parts.append(spec.resid.start(Sr))
    return np.concatenate(parts)


def _factor_moments(r, m, lev, plan, tot):
    """Start values of the level-2 factors' variances: for each factor, the variance of the
    OLS residuals' level means minus the part the within-level spread explains
    (``s_w^2 / n_l``), floored at 2% of the total variance."""
    obs = m > 0
    out = []
    for f in range(len(plan.factors)):
        codes = np.broadcast_to(lev[:, f, None], m.shape)[obs]
        x = r[obs]
        n = np.bincount(codes, minlength=plan.factors[f].n_pad).astype(float)
        s1 = np.bincount(codes, weights=x, minlength=len(n))
        s2 = np.bincount(codes, weights=x * x, minlength=len(n))
        has = n > 0
        mean = s1[has] / n[has]
        within = (s2[has] - n[has] * mean**2).sum() / max(float((n[has] - 1).sum()), 1.0)
        between = float(np.var(mean)) - within * float(np.mean(1.0 / n[has]))
        out.append(float(np.clip(between, 0.02 * tot, 0.9 * tot)))
    return out


def block_columns(data: ModelData, spec) -> list:
    """The design columns [S, T, k] of every random-effect block (level 1 from ``Z``, level 2
    from ``Z2``), in block order."""
    Z = np.asarray(data.Z)
    out = [None] * len(spec.blocks)
    o = 0
    for j in spec.level1:
        out[j] = Z[..., o : o + spec.blocks[j].k]
        o += spec.blocks[j].k
    if spec.plan is not None:
        Z2 = np.asarray(data.Z2)
        o = 0
        for f in spec.plan.factors:
            for j in f.blocks:
                out[j] = Z2[..., o : o + spec.blocks[j].k]
                o += spec.blocks[j].k
    return out


def neutral_start(spec, theta0):
    """Same variances as ``theta0`` but zero correlations."""
    nat = np.array(spec.natural(jnp.asarray(theta0)))
    names = spec.names(["v"] * spec.T)
    for i, nm in enumerate(names):
        if nm.startswith("corr[") or nm == "rho":
            nat[i] = 0.0
        if nm.startswith("sd[") or nm == "sigma":
            nat[i] = max(nat[i], 1e-3)
    return spec.from_natural(nat)


_GUARD = {"calls": 0}


def guard_memory_maps(every: int = 8, fraction: float = 0.5) -> bool:
    """Release JAX's compiled programs when the process nears the kernel's memory-map limit.

    On Linux every XLA:CPU executable holds several hundred memory mappings; a session that
    compiles ~100 different models reaches ``vm.max_map_count`` (65530 by default) and the next
    compilation crashes the process.  Every ``every`` calls this counts the mappings and, above
    ``fraction`` of the limit, calls ``jax.clear_caches()`` (later fits recompile).  Returns
    True when it cleared."""
    _GUARD["calls"] += 1
    if _GUARD["calls"] % every:
        return False
    try:
        with open("/proc/sys/vm/max_map_count") as fh:
            limit = int(fh.read())
        with open("/proc/self/maps", "rb") as fh:
            n = sum(1 for _ in fh)
    except OSError:
        return False
    if n > fraction * limit:
        jax.clear_caches()
        return True
    return False

