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
from .likelihood import ModelData, beta_vcov, deviance
from .optimize import BOUNDARY, CONVERGED, STATUS, newton

__all__ = ["Model", "fit", "start_values"]


@partial(jax.jit, static_argnames=("spec", "max_iter", "tol"))
def _fit_compiled(theta0, data: ModelData, spec, reml: bool, max_iter: int, tol: float):
    obj = lambda th: deviance(th, data, spec, reml)  # noqa: E731
    res = newton(obj, theta0, max_iter=max_iter, tol=tol, boundary=spec.is_boundary)
    beta, vcov = beta_vcov(res.x, data, spec)
    return res, beta, vcov


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

    def fit(self, reml: bool = True, *, start=None, max_iter: int = 200, tol: float = 1e-11, warn: bool = True):
        """Fit by REML (default) or ML.  Returns an :class:`~jaxlmm.results.LMMResult`.

        ``start`` optionally gives unconstrained starting values.  A fit that does not converge
        returns ``converged=False``, its status in the summary, and a ``ConvergenceWarning``.
        """
        from .results import LMMResult

        if not self.has_response:
            raise ValueError(
                f"The data have no response column {self.info.formula.response!r}; this model can only simulate."
            )
        data = _to_jax(self.arrays)
        theta0 = np.asarray(start_values(self.arrays, self.spec) if start is None else start, dtype=float)
        res, beta, vcov = _fit_compiled(jnp.asarray(theta0), data, self.spec, jnp.asarray(bool(reml)), int(max_iter), float(tol))
        status = int(res.status)
        if status not in (CONVERGED, BOUNDARY) and start is None:
            # second attempt from a neutral start (unit correlations removed)
            alt = _neutral_start(self.spec, theta0)
            res2, beta2, vcov2 = _fit_compiled(jnp.asarray(alt), data, self.spec, jnp.asarray(bool(reml)), int(max_iter), float(tol))
            if int(res2.status) in (CONVERGED, BOUNDARY) or float(res2.fun) < float(res.fun):
                res, beta, vcov, status = res2, beta2, vcov2, int(res2.status)
        out = LMMResult(self, bool(reml), res, np.asarray(beta), np.asarray(vcov))
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
