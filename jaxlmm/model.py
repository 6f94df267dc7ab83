"""``Model``: a formula and a dataset turned into padded arrays once; ``fit`` runs the
compiled Newton optimiser on the (restricted) likelihood and returns an :class:`LMMResult`."""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .design import build_design
from .errors import ConvergenceWarning
from .likelihood import (
    ModelData,
    PatternDesign,
    PatternResponse,
    beta_vcov,
    beta_vcov_patterns,
    deviance,
    deviance_patterns,
)
from .optimize import BOUNDARY, CONVERGED, STATUS, newton  # noqa: F401

__all__ = ["Model", "fit", "start_values"]


@partial(jax.jit, static_argnames=("spec", "max_iter", "tol"))
def _fit_compiled(theta0, data: ModelData, spec, reml: bool, max_iter: int, tol: float):
    obj = lambda th: deviance(th, data, spec, reml)  # noqa: E731
    res = newton(obj, theta0, max_iter=max_iter, tol=tol, boundary=spec.is_boundary, degenerate=spec.is_degenerate)
    beta, vcov = beta_vcov(res.x, data, spec)
    return res, beta, vcov


@partial(jax.jit, static_argnames=("spec", "max_iter", "tol"))
def _fit_patterns_compiled(theta0, pdes, pr, spec, reml, max_iter: int, tol: float):
    obj = lambda th: deviance_patterns(th, pdes, pr, spec, reml)  # noqa: E731
    res = newton(obj, theta0, max_iter=max_iter, tol=tol, boundary=spec.is_boundary, degenerate=spec.is_degenerate)
    beta, vcov = beta_vcov_patterns(res.x, pdes, pr, spec)
    return res, beta, vcov


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


def _newton_fit(arrays: ModelData, spec, reml: bool, theta0=None, *, max_iter: int = 200, tol: float = 1e-11,
                retry: bool = True):
    """Full Newton fit of one dataset (host arrays with X, Z, y zero in masked cells).

    Subjects that share a visit pattern (and random-effects rows) are pooled into per-pattern
    sufficient statistics when that shrinks the problem (at most half as many patterns as
    subjects); otherwise the per-subject likelihood is used.  Both give the same deviance.
    A failed fit is retried once from a start without correlations.
    Returns (NewtonResult, beta, vcov, path)."""
    from .batch import pattern_design, pattern_response_np

    guard_memory_maps()
    m = np.asarray(arrays.m)
    S_real = int((m.sum(axis=1) > 0).sum())
    pdes, layout, K = pattern_design(arrays, m)
    use_patterns = K <= max(S_real // 2, 8) and pdes.XX.size <= 2e7
    if use_patterns:
        pr = pattern_response_np(arrays.y, m, pdes, layout)
        pd_j = PatternDesign(*(jnp.asarray(a, jnp.float64) for a in pdes[:-1]), None)
        pr = PatternResponse(*(jnp.asarray(a, jnp.float64) for a in pr))

        def run(th):
            return _fit_patterns_compiled(jnp.asarray(th), pd_j, pr, spec, jnp.asarray(bool(reml)), max_iter, tol)
    else:
        data = _to_jax(arrays)

        def run(th):
            return _fit_compiled(jnp.asarray(th), data, spec, jnp.asarray(bool(reml)), max_iter, tol)

    start = start_values(arrays, spec) if theta0 is None else np.asarray(theta0, dtype=float)
    res, beta, vcov = run(start)
    if retry and int(res.status) not in (CONVERGED, BOUNDARY):
        res2, beta2, vcov2 = run(_neutral_start(spec, start))
        if int(res2.status) in (CONVERGED, BOUNDARY) or float(res2.fun) < float(res.fun):
            res, beta, vcov = res2, beta2, vcov2
    return res, beta, vcov, ("patterns" if use_patterns else "subjects")


def _to_jax(data: ModelData) -> ModelData:
    return ModelData(*(jnp.asarray(a, dtype=jnp.float64) for a in data))


def start_values(data: ModelData, spec) -> np.ndarray:
    """Moment-based start: OLS residuals -> their pairwise visit covariance; with random
    effects, half of the variance goes to the random part, spread over its columns."""
    y, m, X, Z = (np.asarray(a) for a in data)
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
    if spec.blocks:
        parts = []
        nb = len(spec.blocks)
        j = 0
        for b in spec.blocks:
            zz = Z[..., j : j + b.k]
            msq = np.sum(zz * zz * m[..., None], axis=(0, 1)) / max(np.sum(m), 1.0)
            parts.append(b.start(0.5 * tot / nb / np.maximum(msq, 1e-8) / b.k))
            j += b.k
        Sr = 0.5 * np.diag(np.diag(Semp)) + 0.25 * (Semp - np.diag(np.diag(Semp)))
        parts.append(spec.resid.start(Sr))
        return np.concatenate(parts)
    return spec.resid.start(Semp)


class Model:
    """A linear mixed model: formula + data, design built once.

    Parameters
    ----------
    formula : str
        ``"y ~ fixed + (re | g) + structure(visit | subject)"``; see :func:`jaxlmm.fit`.
    data : pandas.DataFrame
        One row per observation.  The response may be absent when the model is only used to
        simulate.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.example_trial()
    >>> model = lmm.Model("CHG ~ ARMCD * AVISIT + BASE + ar1(AVISIT | USUBJID)", df)
    >>> res = model.fit()
    >>> bool(res.converged)
    True
    """

    def __init__(self, formula: str, data: pd.DataFrame):
        self.formula = formula
        self.data = data
        self.arrays, self.spec, self.info = build_design(formula, data, require_response=False)
        self.has_response = self.info.formula.response in data.columns

    def fit(self, reml: bool = True, *, ddf: str = "satterthwaite", start=None, max_iter: int = 200,
            tol: float = 1e-11, warn: bool = True):
        """Fit by REML (default) or ML.  Returns an :class:`~jaxlmm.results.LMMResult`.

        ``start`` optionally gives unconstrained starting values.  A fit that does not converge
        returns ``converged=False``, its status in the summary, and a ``ConvergenceWarning``.
        """
        from .results import LMMResult

        if not self.has_response:
            from .design import _check_columns

            _check_columns([self.info.formula.response], self.data, "response")
        res, beta, vcov, path = _newton_fit(
            self.arrays, self.spec, reml, start, max_iter=int(max_iter), tol=float(tol), retry=start is None
        )
        status = int(res.status)
        out = LMMResult(self, bool(reml), res, np.asarray(beta), np.asarray(vcov))
        out.likelihood_path = path
        if ddf != "satterthwaite":
            out = out.with_ddf(ddf)
        if warn and status == BOUNDARY:
            warnings.warn(
                "boundary (singular) fit: a random-effects variance is ~0 or a correlation is ~+-1; "
                "consider a simpler covariance model.",
                ConvergenceWarning,
                stacklevel=2,
            )
        elif warn and not out.converged:
            warnings.warn(
                f"The fit did not converge: {STATUS[status]} after {int(res.n_iter)} iterations "
                f"(-2 log L = {float(res.fun):.6f}). Check the model or rescale variables.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return out

    # ---- batches and simulation ------------------------------------------------------
    def _pilot(self, y, m, reml):
        """A full Newton fit of one response: the start and curvature for a batch."""
        d = ModelData(y * m, m, np.asarray(self.arrays.X) * m[..., None], np.asarray(self.arrays.Z) * m[..., None])
        r, _, _, _ = _newton_fit(d, self.spec, reml)
        return np.asarray(r.x), np.asarray(r.hess)

    def fit_batch(self, Y, reml: bool = True, *, start=None, chunk_size=None, memory_budget=2e9,
                  progress=None, devices=None, dtype="float64", max_iter: int = 60):
        """Fit B responses sharing this design in one compiled, vmap-batched program.

        Parameters
        ----------
        Y : array [B, n_rows]
            Responses aligned with the rows of the model's data; NaN marks a missing cell
            (each replicate may have its own).
        reml : bool
        start : LMMResult, optional
            A fit whose estimates and Hessian start every replicate (default: a full Newton fit
            of the first replicate).
        chunk_size, memory_budget : int, float
            Replicates per compiled call (default: from ``memory_budget`` bytes, at most 4096).
        progress : bool or None
            tqdm progress bar over replicates (None: only when stderr is a terminal).
        devices : list of jax devices, optional
            Shard the replicate axis over these (default ``jax.devices()``).
        dtype : "float64" or "float32"
            float32 halves memory and is faster on GPUs, at a cost in accuracy
            (see ``docs/batch.md``).

        Returns
        -------
        BatchResult
        """
        from .batch import fit_batch_padded, responses_to_padded

        y, m = responses_to_padded(self.info, Y)
        B = y.shape[0]
        shared = bool(np.all(m == m[:1]))
        if start is not None:
            theta0, hess0 = start._theta_u, np.asarray(start._opt.hess)
        else:
            theta0, hess0 = self._pilot(y[0], m[0], reml)

        def source(idx):
            return y[idx], (None if shared else m[idx])

        return fit_batch_padded(
            self, source, B, reml=reml, theta0=theta0, hess0=hess0, shared_mask=m[0] if shared else None,
            chunk_size=chunk_size, memory_budget=memory_budget, progress=progress, devices=devices,
            dtype=jnp.dtype(dtype), max_iter=max_iter,
        )

    def simulate(self, params, n: int = 1, seed: int = 0) -> np.ndarray:
        """Simulate ``n`` responses [n, n_rows] from given parameters (natural units).

        ``params = {"fixef": {name: value}, "theta": {name: value}}`` with the names of
        ``res.fixef`` and ``res.theta`` (or arrays in that order), e.g. for ``ar1``:
        ``{"theta": {"sigma": 2.0, "rho": 0.5}}``.  Random effects are drawn too.  Rows not in
        the model (missing covariates) are NaN; the response column need not exist.
        Replicate r uses ``fold_in(PRNGKey(seed), r)``: identical whatever ``n``.
        """
        from .simulate import params_to_unconstrained, padded_to_rows, simulate_padded

        beta, th = params_to_unconstrained(self, params)
        a = self.arrays
        m = np.zeros_like(np.asarray(a.m))
        m[self.info.row_s, self.info.row_t] = 1.0  # every row with complete covariates
        y = simulate_padded(int(seed), jnp.arange(int(n)), jnp.asarray(th), jnp.asarray(beta),
                            jnp.asarray(a.X), jnp.asarray(a.Z), jnp.asarray(m), self.spec)
        return padded_to_rows(self.info, y, m)


def _neutral_start(spec, theta0):
    """Same variances as ``theta0`` but zero correlations."""
    nat = np.array(spec.natural(jnp.asarray(theta0)))
    names = spec.names(["v"] * spec.T)
    for i, nm in enumerate(names):
        if nm.startswith("corr[") or nm == "rho":
            nat[i] = 0.0
        if nm.startswith("sd[") or nm == "sigma":
            nat[i] = max(nat[i], 1e-3)
    return spec.from_natural(nat)


def fit(formula: str, data: pd.DataFrame, reml: bool = True, **kwargs):
    """Fit a linear mixed model.

    Parameters
    ----------
    formula : str
        ``"y ~ fixed + (re | g) + structure(visit | subject)"``.  The fixed part uses
        formulaic (treatment contrasts with the first sorted level as reference, ``C(x,
        Treatment("ref"))``, interactions, transforms).  Random terms: ``(1 | g)``,
        ``(0 + x | g)``, ``(x | g)``, ``(x || g)``.  Covariance terms: ``un``/``us``, ``cs``,
        ``csh``, ``ar1``, ``arh1``/``ar1h``, ``diag``.
    data : pandas.DataFrame
    reml : bool
        REML (default) or maximum likelihood.

    Returns
    -------
    LMMResult

    Notes
    -----
    ``-2 log L_ML = sum_i log|V_i| + r'V^-1 r + N log(2 pi)``, ``-2 log L_REML = -2 log L_ML +
    log|X'V^-1X| - p log(2 pi)``, with beta profiled out by GLS (SAS / nlme / lme4 constants).

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> res = lmm.fit("CHG ~ ARMCD * AVISIT + BASE + un(AVISIT | USUBJID)", lmm.example_trial())
    >>> res.n_groups
    150
    """
    return Model(formula, data).fit(reml=reml, **kwargs)
