"""Fit many responses that share one design in one compiled, ``vmap``-batched program.

Two evaluation paths, chosen automatically:

* **patterns** (every replicate has the same missing cells, e.g. a parametric bootstrap):
  subjects are grouped by visit pattern and random-effects rows; the X-only sums are computed
  once and each replicate only contributes its response sums (see
  :mod:`jaxlmm.patterns`).
* **general** (replicates have their own missing cells, e.g. simulated dropout): the masked
  per-subject likelihood of :func:`jaxlmm.likelihood.deviance`, vmapped.

The optimiser is :func:`jaxlmm.optimize.bfgs_warm` started at a nearby optimum with the exact
inverse Hessian there (replicates of one design have similar curvature), so an iteration needs
only a value and a gradient.  Replicates that do not converge get a second attempt with the
full Newton method from moment-based starting values; each replicate keeps its own status.

Chunks: ``B`` is split into chunks of equal size (the last padded by repetition, so nothing
recompiles); with several devices the replicate axis of each chunk is split over them
(``jax.shard_map`` over a 1-D mesh of ``jax.devices()``), which is how one scales to several
GPUs, or hosts after ``jax.distributed.initialize()``.  Within a chunk, replicates are fitted in
blocks of exactly :data:`BLOCK` (``lax.map`` over blocks, ``vmap`` within): a replicate's result
is then bit-identical whatever the batch size, the chunk size or the number of devices.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .distributed import gather, to_mesh
from .errors import DataError
from .fitting import (column_log_scales, fit_arrays, guard_memory_maps, natural_values, ols_factor, ols_fit,
                      start_values)
from .likelihood import FlatData, beta_vcov, deviance, flat_response
from .optimize import BOUNDARY, CONVERGED, INVALID, STATUS, bfgs_warm, newton, psd_inverse
from .patterns import PatternDesign, Patterns, pattern_design, pattern_response

__all__ = ["BatchResult", "fit_batch_padded", "responses_to_padded", "fit_many", "choose_chunk", "BLOCK", "progress_bar"]


# ------------------------------------------------------------------------------------------
# host-side preparation
# ------------------------------------------------------------------------------------------


def responses_to_padded(info, Y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Y`` [B, n_rows] aligned with the input data rows (or a DataFrame with a row per data row
    and a column per replicate, as ``simulate`` returns) -> padded y and masks [B, S_pad, T], and
    which replicates cannot be fitted [B] (an infinite value, or no more observed values than
    fixed effects); NaN marks a missing value."""
    if isinstance(Y, pd.DataFrame):  # rows = data rows, a column per replicate (simulate's frames)
        if len(Y) != info.n_rows_input:
            raise DataError(f"A DataFrame of responses must have one row per row of the model's data "
                            f"({info.n_rows_input}), got {len(Y)}.")
        Y = Y.to_numpy(dtype=float).T
    try:
        Y = np.asarray(Y, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"Y must be numeric, an array [B, {info.n_rows_input}] of responses; got values that are "
                        "not numbers.") from None
    if Y.ndim == 1:
        Y = Y[None]
    if Y.ndim != 2 or Y.shape[1] != info.n_rows_input:
        raise DataError(
            f"Y must have shape [B, {info.n_rows_input}] (one column per row of the model's data), "
            f"got {list(Y.shape)}."
        )
    B = Y.shape[0]
    Yv = Y[:, info.row_index]
    bad = np.isinf(Yv).any(axis=1)
    Yv = np.where(np.isinf(Yv), np.nan, Yv)
    y = np.zeros((B, info.S_pad, info.T))
    m = np.zeros((B, info.S_pad, info.T))
    obs = ~np.isnan(Yv)
    y[:, info.row_s, info.row_t] = np.where(obs, Yv, 0.0) * (1.0 if info.row_sqrt_w is None else info.row_sqrt_w)
    m[:, info.row_s, info.row_t] = obs
    bad |= obs.sum(axis=1) <= len(info.fixed_names)
    return y, m, bad


# ------------------------------------------------------------------------------------------
# compiled batch programs
# ------------------------------------------------------------------------------------------


#: replicates per vmapped block.  Every compiled call fits its replicates in blocks of exactly
#: this size (``lax.map`` over blocks, ``vmap`` within), so a replicate's arithmetic does not
#: depend on the chunk size, the batch size or the number of devices: XLA may compile a vmapped
#: program differently (other rounding in the last bits) for another batch size, never for
#: another lane of the same block.
BLOCK = 32

# A replicate whose response scale (RMS of OLS residuals) is within a factor exp(START_BAND) of
# the start fit's starts at that fit's estimate; beyond, at the estimate rescaled to its scale.
# A bootstrap draw's scale differs from its parent's by about 1 / sqrt(2 n): the estimate itself
# is then the better start (RI + slope bootstrap: 5.3 instead of 6.0 BFGS steps, the slowest of
# each block of 32).
START_BAND = 0.1


def _over_devices(fn, mesh, n_sharded, n_replicated):
    """``fn`` applied per device to its shard of the replicate axis (``shard_map``), or as is."""
    if mesh is None:
        return fn
    from jax.sharding import PartitionSpec as Pspec

    specs = (Pspec("replicate"),) * n_sharded + (Pspec(),) * n_replicated
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=Pspec("replicate"), check_vma=False)


def _centre(yb, mb, X, factor=None):
    """The replicate's OLS fit: ``(y - X beta0, beta0, log_s, exact)`` (:func:`jaxlmm.fitting.ols_fit`;
    ``factor``: the :func:`~jaxlmm.fitting.ols_factor` of a mask shared by the replicates)."""
    beta0, log_s, exact = ols_fit(yb, mb, X, xp=jnp, factor=factor)
    return (yb - X @ beta0) * mb, beta0, log_s, exact


def _solve_one(dev, u0, Binv0, payload, spec, centre, mb, scales, reml, max_iter, tol):
    """BFGS on unit-scale parameters (``theta = mult * u + shift``) on the replicate's response
    centred by its OLS fit (``centre``, from :func:`_centre`), so that a replicate's start and
    steps depend neither on its units, its mean nor the replicates beside it.
    ``scales = (log_sz, log_s0, band)``: the random-effect column scales, the start fit's
    response scale (the one ``u0`` and ``Binv0`` are relative to) and a band (0 or
    :data:`START_BAND`).  The unit scale of the replicate is its own response scale (RMS of its
    OLS residuals) moved to within ``band`` of ``log_s0``: a replicate of similar scale (a
    bootstrap draw) starts at the start fit's estimate with its inverse Hessian exactly, one of
    another scale at that estimate rescaled to its own.  A replicate that the fixed effects fit
    exactly gets status ``INVALID`` and NaN."""
    _, beta0, log_sy, exact = centre
    log_sz, log_s0, band = scales
    d = log_sy - log_s0
    mult, shift = spec.unit_scaling(log_s0 + jnp.sign(d) * jnp.maximum(jnp.abs(d) - band, 0.0), log_sz)
    dev0 = 2.0 * (jnp.sum(mb) - jnp.where(reml, beta0.shape[0], 0)) * log_sy
    f = lambda u: dev(mult * u + shift) - dev0  # noqa: E731
    r = bfgs_warm(f, u0, Binv0, max_iter=max_iter, tol=tol, boundary=spec.is_boundary, degenerate=spec.is_degenerate)
    x = mult * r.x + shift
    beta, vcov = beta_vcov(x, payload, spec, unroll=True)
    out = (x, r.fun + dev0, r.n_iter, r.status, beta + beta0, jnp.sqrt(jnp.diagonal(vcov)), spec.natural(x))
    nan = jnp.asarray(jnp.nan, x.dtype)
    return tuple(jnp.where(exact, INVALID if a is r.status else (0 if a is r.n_iter else nan), a) for a in out)


@partial(jax.jit, static_argnames=("spec", "layout", "max_iter", "tol", "mesh"))
def _batch_patterns(u0, Binv0, y, m, X, scales, pdes, spec, layout, reml, max_iter, tol, mesh=None):
    def run(u0s, ys, Binv0, m, X, scales, pdes, reml):
        factor = ols_factor(m, X)  # the mask is shared: X'X is factored once

        def one(args):
            u, yb = args
            c = _centre(yb, m, X, factor)
            pay = Patterns(pdes, pattern_response(c[0], m, pdes, layout))
            dev = lambda th: deviance(th, pay, spec, reml, unroll=True)  # noqa: E731
            return _solve_one(dev, u, Binv0, pay, spec, c, m, scales, reml, max_iter, tol)

        return jax.lax.map(one, (u0s, ys), batch_size=BLOCK)

    return _over_devices(run, mesh, 2, 6)(u0, y, Binv0, m, X, scales, pdes, reml)


@partial(jax.jit, static_argnames=("spec", "max_iter", "tol", "mesh"))
def _batch_general(u0, Binv0, y, m, scales, data, spec, reml, max_iter, tol, mesh=None):
    def run(u0s, ys, ms, Binv0, scales, data, reml):
        def one(args):
            u, yb, mb = args
            c = _centre(yb, mb, data.X)
            d = data.masked(mb)._replace(y=c[0])
            dev = lambda th: deviance(th, d, spec, reml)  # noqa: E731
            return _solve_one(dev, u, Binv0, d, spec, c, mb, scales, reml, max_iter, tol)

        return jax.lax.map(one, (u0s, ys, ms), batch_size=BLOCK)

    return _over_devices(run, mesh, 3, 4)(u0, y, m, Binv0, scales, data, reml)


@partial(jax.jit, static_argnames=("spec", "shared", "max_iter", "tol", "mesh"))
def _batch_flat(u0, Binv0, y, m, scales, data, fd, spec, shared, reml, max_iter, tol, mesh=None):
    def run(u0s, ys, ms, Binv0, scales, data, fd, reml):
        def one(args):
            u, yb, mb = args
            c = _centre(yb, mb, data.X)
            pay = flat_response(fd, data, c[0], mb, spec, shared=shared)
            dev = lambda th: deviance(th, pay, spec, reml)  # noqa: E731
            return _solve_one(dev, u, Binv0, pay, spec, c, mb, scales, reml, max_iter, tol)

        return jax.lax.map(one, (u0s, ys, ms), batch_size=BLOCK)

    return _over_devices(run, mesh, 3, 5)(u0, y, m, Binv0, scales, data, fd, reml)


# ------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """Results of B fits stacked along a leading axis.

    Attributes: ``fixef`` [B, p], ``se`` [B, p] (model-based SEs), ``theta`` [B, k] (natural
    covariance parameters, names in ``theta_names``), ``theta_unconstrained``, ``deviance``,
    ``loglik`` [B], ``status``, ``n_iter`` [B] and ``converged`` [B] (status 0 or 1).
    """

    fixef: np.ndarray
    se: np.ndarray
    theta: np.ndarray
    theta_unconstrained: np.ndarray
    deviance: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    fixef_names: list
    theta_names: list
    reml: bool
    path: str
    n_retried: int = 0

    @property
    def loglik(self) -> np.ndarray:
        return -0.5 * self.deviance

    @property
    def converged(self) -> np.ndarray:
        return (self.status == CONVERGED) | (self.status == BOUNDARY)

    @property
    def n(self) -> int:
        return len(self.deviance)

    def __len__(self):
        return self.n

    def to_frame(self) -> pd.DataFrame:
        """One row per replicate: status, deviance, fixed effects, covariance parameters."""
        df = pd.DataFrame(
            {
                "replicate": np.arange(self.n),
                "status": [STATUS[int(s)] for s in self.status],
                "converged": self.converged,
                "n_iter": self.n_iter,
                "deviance": self.deviance,
                "loglik": self.loglik,
            }
        )
        fe = pd.DataFrame(self.fixef, columns=self.fixef_names)
        th = pd.DataFrame(self.theta, columns=self.theta_names)
        return pd.concat([df, fe, th], axis=1)

    def summary(self) -> str:
        counts = pd.Series([STATUS[int(s)] for s in self.status]).value_counts()
        lines = [f"BatchResult: {self.n} fits ({'REML' if self.reml else 'ML'}, {self.path} path)"]
        lines += [f"  {k}: {v}" for k, v in counts.items()]
        if self.n_retried:
            lines.append(f"  retried with full Newton: {self.n_retried}")
        return "\n".join(lines)

    def __repr__(self):
        return f"<BatchResult B={self.n} converged={int(self.converged.sum())}>"


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------


def progress_bar(total, enabled):
    if enabled is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    disable = None if enabled is None else not enabled
    if enabled is None and not sys.stderr.isatty():
        disable = True
    return tqdm(total=total, unit="fit", disable=disable, leave=False)


def _mesh(devices):
    if devices is None or len(devices) < 2:
        return None
    from jax.sharding import Mesh

    return Mesh(np.asarray(devices), ("replicate",))


def choose_chunk(B, per_replicate_bytes, memory_budget, n_dev, chunk_size=None, max_chunk=4096):
    """Replicates per compiled call.  Chunks split ``B`` evenly, rounded up to a multiple of
    ``BLOCK`` times the device count (so the last chunk's padding wastes little), with at least
    two blocks per device (XLA inlines a loop that runs once, which changes the compiled
    arithmetic and so the last bits of the results)."""
    if chunk_size is None:
        cap = max(1, min(int(memory_budget // max(per_replicate_bytes, 1)), max_chunk))
        n_chunks = int(math.ceil(B / cap))
        chunk_size = int(math.ceil(B / n_chunks))
    chunk_size = max(1, int(chunk_size))
    unit = BLOCK * max(n_dev, 1)
    return max(int(math.ceil(chunk_size / unit) * unit), 2 * unit)


def fit_batch_padded(
    model,
    source,
    B: int,
    *,
    reml: bool,
    theta0: np.ndarray,
    hess0: np.ndarray,
    log_scale0: float = 0.0,
    anchored: bool = True,
    shared_mask: np.ndarray | None,
    bad: np.ndarray | None = None,
    chunk_size: int | None = None,
    memory_budget: float = 2e9,
    max_iter: int = 60,
    tol: float | None = None,
    progress=None,
    devices=None,
    dtype=jnp.float64,
    retry: bool = True,
) -> BatchResult:
    """Core driver.  ``source(idx)`` returns padded ``(y, m)`` [C, S_pad, T] for replicate
    indices ``idx`` (``m`` may be None when ``shared_mask`` is given).  ``theta0`` and ``hess0``
    are a nearby optimum and its Hessian in unit-scale parameters
    (:attr:`~jaxlmm.fitting.FitRecord.unit_theta`, ``unit_hessian``), ``log_scale0`` the
    response scale they are relative to (``log_scale``): every replicate starts there, carried to
    its own scale (see :func:`_solve_one`); ``anchored=False`` (a start taken from one of the
    replicates) always rescales, so that which replicate gave the start does not matter when
    they differ only in scale.  Replicates flagged in ``bad`` (their data replaced by a good
    replicate's by the caller) come back NaN with status ``INVALID``."""
    guard_memory_maps(every=1)
    spec, info = model.spec, model.info
    base = model.arrays
    if tol is None:  # what the precision can reach: float32 stops at 1e-6 relative
        tol = 1e-6 if jnp.dtype(dtype) == jnp.float32 else 1e-11
    if devices is None:
        devices = jax.devices()
    n_dev = len(devices) if devices is not None else 1
    mesh = _mesh(devices)
    S, T = info.S_pad, info.T
    p, q = base.X.shape[-1], base.Z.shape[-1]
    path = "general"
    if isinstance(model.payload[1], FlatData):
        path = "flat"
    elif shared_mask is not None and spec.plan is None:
        pdes, layout, K = pattern_design(base, shared_mask)
        if K <= max(info.S // 2, 8):
            path = "patterns"
    data = base.to_jax(dtype)
    scales = (jnp.asarray(column_log_scales(base, spec), dtype), jnp.asarray(log_scale0, dtype),
              jnp.asarray(START_BAND if anchored else 0.0, dtype))
    if path == "patterns":
        per = 8 * (S * T * 2 + pdes.m.shape[0] * T * T * (p + 2) * 6)
        m_j = jnp.asarray(shared_mask, dtype)
        pdes_j = PatternDesign(*(None if a is None else jnp.asarray(a, dtype) for a in pdes))
    elif path == "flat":
        fd = jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                          model.payload[1])
        per = 8 * (S * (p + 2 + spec.plan.q) * 4 + spec.plan.m_tail ** 2 * 6)
    else:
        q2 = 0 if spec.plan is None else spec.plan.q
        per = 8 * S * T * (T * 6 + p * 3 + q + q2 + 4) * 3 + (0 if spec.plan is None else 48 * spec.plan.m_tail ** 2)
    C = choose_chunk(B, per, memory_budget, n_dev, chunk_size)
    n_chunks = int(math.ceil(B / C))
    Binv0 = jnp.asarray(psd_inverse(jnp.asarray(hess0)), dtype)
    th0 = jnp.asarray(np.broadcast_to(theta0, (C, len(theta0))), dtype)
    reml_j = jnp.asarray(bool(reml))

    # with several processes each places its devices' parts of the same inputs (jaxlmm.distributed)
    Binv0, scales, data, reml_j = to_mesh((Binv0, scales, data, reml_j), mesh, sharded=False)
    th0 = to_mesh(th0, mesh, sharded=True)
    if path == "patterns":
        m_j, pdes_j = to_mesh((m_j, pdes_j), mesh, sharded=False)
    elif path == "flat":
        fd = to_mesh(fd, mesh, sharded=False)

    out = {k: [] for k in ("x", "f", "it", "st", "beta", "se", "nat")}
    out["off"] = []  # -sum(log w) of each replicate's observed cells (observation weights)
    bar = progress_bar(B, progress if n_chunks > 1 or progress else False)
    for c in range(n_chunks):
        idx = np.arange(c * C, (c + 1) * C)
        idx = np.minimum(idx, B - 1)  # pad the last chunk by repeating the last replicate
        y, m = source(idx)
        out["off"].append(np.asarray(info.deviance_offset(shared_mask[None] if m is None else np.asarray(m)))
                          * np.ones(len(idx)))
        y = to_mesh(jnp.asarray(y, dtype), mesh, sharded=True)
        if path == "patterns":
            res = _batch_patterns(th0, Binv0, y, m_j, data.X, scales, pdes_j, spec, layout, reml_j, max_iter, tol,
                                  mesh=mesh)
        else:
            m = to_mesh(jnp.asarray(shared_mask[None].repeat(C, 0) if m is None else m, dtype), mesh, sharded=True)
            if path == "flat":
                res = _batch_flat(th0, Binv0, y, m, scales, data, fd, spec, shared_mask is not None, reml_j, max_iter,
                                  tol, mesh=mesh)
            else:
                res = _batch_general(th0, Binv0, y, m, scales, data, spec, reml_j, max_iter, tol, mesh=mesh)
        res = gather(res, mesh)
        n_real = min(C, B - c * C)
        for k, v in zip(out, res):
            out[k].append(np.asarray(v)[:n_real])
        out["off"][-1] = out["off"][-1][:n_real]
        if bar is not None:
            bar.update(n_real)
    if bar is not None:
        bar.close()
    x, f, it, st, beta, se, nat, off = (np.concatenate(out[k]) for k in out)
    x, f, beta, se, nat = (np.asarray(a, dtype=np.float64) for a in (x, f, beta, se, nat))
    st = st.astype(np.int32)
    bad = np.zeros(B, bool) if bad is None else np.asarray(bad, bool)
    n_retry = 0
    if retry:
        fail = np.nonzero(~np.isin(st, (CONVERGED, BOUNDARY, INVALID)) & ~bad)[0]
        if len(fail):
            n_retry = len(fail)
            _retry(model, source, fail, reml, x, f, it, st, beta, se, shared_mask, max_iter=200)
            for i in fail:
                nat[i] = np.asarray(natural_values(jnp.asarray(x[i]), spec)[0])
    f = f + off
    if bad.any():
        for a in (x, f, beta, se, nat):
            a[bad] = np.nan
        st[bad], it[bad] = INVALID, 0
    return BatchResult(
        fixef=beta,
        se=se,
        theta=nat,
        theta_unconstrained=x,
        deviance=f,
        status=st,
        n_iter=it.astype(np.int32),
        fixef_names=list(info.fixed_names),
        theta_names=spec.names(info.visit_labels),
        reml=bool(reml),
        path=path,
        n_retried=n_retry,
    )


def _retry(model, source, bad, reml, x, f, it, st, beta, se, shared_mask, max_iter):
    """Refit failed replicates one by one with the full Newton method (moment-based start)."""
    base = model.arrays
    for i in bad:
        y, m = source(np.array([i]))
        mb = shared_mask if m is None else np.asarray(m[0])
        d = base.masked(mb)._replace(y=np.asarray(y[0]) * mb)
        r = fit_arrays(d, model.spec, reml, max_iter=max_iter)
        if r.converged or r.deviance < f[i]:
            x[i], f[i], it[i], st[i] = r.theta, r.deviance, r.n_iter, r.status
            beta[i], se[i] = r.beta, np.sqrt(np.diag(r.vcov))


@partial(jax.jit, static_argnames=("spec", "max_iter", "tol"))
def _many_compiled(theta0, data, spec, reml, max_iter, tol):
    def one(th0, d):
        f = lambda th: deviance(th, d, spec, reml)  # noqa: E731
        r = newton(f, th0, max_iter=max_iter, tol=tol, boundary=spec.is_boundary, degenerate=spec.is_degenerate)
        beta, vcov = beta_vcov(r.x, d, spec)
        return r.x, r.fun, r.n_iter, r.status, beta, jnp.sqrt(jnp.diagonal(vcov))

    return jax.vmap(one)(theta0, data)


def fit_many(formula: str, datasets, reml: bool = True, *, max_iter: int = 200) -> BatchResult:
    """Fit one formula to several datasets with different designs in one compiled call.

    Every dataset is turned into padded arrays, padded again to the largest number of
    subjects, and the full Newton fits run under ``vmap``.  The datasets must give the same
    fixed-effect columns and the same covariance structure (same visit levels), e.g.
    simulation scenarios with different covariates or a nonparametric bootstrap that
    resamples subjects (give resampled subjects new ids).

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> sets = [lmm.simulate_longitudinal(30, 4, seed=s) for s in range(3)]
    >>> batch = lmm.fit_many("y ~ time + arm + ar1(visit | subject)", sets)
    >>> batch.fixef.shape, bool(batch.converged.all())
    ((3, 3), True)
    """
    from .design import build_design

    built = [build_design(formula, d, engine="subjects") for d in datasets]
    if not built:
        raise DataError("fit_many needs at least one dataset.")
    _, spec0, info0 = built[0]
    if spec0.plan is not None:
        raise DataError(
            "fit_many stacks datasets with one grouping factor; with nested or crossed random effects every dataset "
            "has its own level structure. Fit them one by one (lmm.fit), or use Model.fit_batch for responses that "
            "share one design."
        )
    for i, (_, spec, info) in enumerate(built[1:], start=1):
        if info.fixed_names != info0.fixed_names or spec != spec0:
            raise DataError(
                f"Dataset {i} gives a different model than dataset 0 (fixed effects {info.fixed_names} vs "
                f"{info0.fixed_names}, or other visit levels/structure); fit_many needs one model for all."
            )
    S = max(info.S_pad for _, _, info in built)

    def pad(a):
        out = np.zeros((S,) + a.shape[1:])
        out[: a.shape[0]] = a
        return out

    # per-subject residual data (spatial distances, residual-group keys) stacks with the rest
    fields = ("y", "m", "X", "Z") + (("D",) if built[0][0].D is not None else ())
    arrays = [arr._replace(**{f: pad(np.asarray(getattr(arr, f))) for f in fields}) for arr, _, _ in built]
    stacked = arrays[0]._replace(**{f: jnp.asarray(np.stack([getattr(a, f) for a in arrays])) for f in fields})
    th0 = jnp.asarray(np.stack([start_values(a, spec0) for a in arrays]))
    x, f, it, st, beta, se = jax.device_get(
        _many_compiled(th0, stacked, spec0, jnp.asarray(bool(reml)), int(max_iter), 1e-11)
    )
    x = np.asarray(x)
    nat = np.asarray(jax.vmap(spec0.natural)(jnp.asarray(x)))
    return BatchResult(
        fixef=np.asarray(beta),
        se=np.asarray(se),
        theta=nat,
        theta_unconstrained=x,
        deviance=np.asarray(f) + np.array([info.deviance_offset() for _, _, info in built]),
        status=np.asarray(st).astype(np.int32),
        n_iter=np.asarray(it).astype(np.int32),
        fixef_names=list(info0.fixed_names),
        theta_names=spec0.names(info0.visit_labels),
        reml=bool(reml),
        path="designs",
    )
