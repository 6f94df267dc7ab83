"""``Model``: a formula and a dataset turned into padded arrays once; ``fit`` runs the
compiled Newton optimiser on the (restricted) likelihood (:func:`jaxlmm.fitting.fit_arrays`)
and returns an :class:`~jaxlmm.results.LMMResult` that reads the fit's public
:class:`~jaxlmm.fitting.FitRecord`."""

from __future__ import annotations

import warnings
from functools import cached_property

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .batch import fit_batch_padded, responses_to_padded
from .checks import (as_frame, check_bool, check_choice, check_count, check_keywords, check_number, check_seed,
                     check_vector)
from .design import ENGINES, build_design, check_columns
from .errors import ArgumentError, ConvergenceWarning, DataError
from .fitting import centred, fit_arrays, make_payload
from .optimize import BOUNDARY, STATUS
from .results import LMMResult
from .simulate import padded_to_rows, params_to_unconstrained, simulate_frame, simulate_padded

__all__ = ["Model", "fit"]


class Model:
    """A linear mixed model: formula + data, design built once.

    Parameters
    ----------
    formula : str
        ``"y ~ fixed + (re | g) + structure(visit | subject)"``; see :func:`jaxlmm.fit`.
    data : pandas.DataFrame
        One row per observation.  The response may be absent when the model is only used to
        simulate.
    weights : str, optional
        A column of positive observation weights (SAS ``WEIGHT``, mmrm ``weights =``): the
        residual variance of a row is divided by its weight (``R_i -> W^-1/2 R_i W^-1/2``).  The
        model's arrays hold rows scaled by ``sqrt(w)``; fitted values, residuals, simulations and
        the deviance are reported in the data's units.
    engine : "auto", "general" or "subjects"
        How a model with one grouping factor is computed: ``"general"`` by the nested and crossed
        engine (penalised least squares over the factor's levels, a ``k x k`` system per level),
        ``"subjects"`` by a ``T x T`` marginal covariance per subject (needed by ``influence``,
        subject weights and ``fit_many``); ``"auto"`` takes the first when there is no covariance
        term and some group has more than 16 rows, else the second.  The same likelihood.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.example_trial()
    >>> model = lmm.Model("CHG ~ ARMCD * AVISIT + BASE + ar1(AVISIT | USUBJID)", df)
    >>> res = model.fit()
    >>> bool(res.converged)
    True
    """

    def __init__(self, formula: str, data: pd.DataFrame, engine: str = "auto", weights: str | None = None):
        data = as_frame(data, "data")
        engine = check_choice(engine, "engine", ENGINES)
        if weights is not None and not isinstance(weights, str):
            raise ArgumentError(
                f"weights must be the name of a column of observation weights (SAS WEIGHT), not "
                f"{type(weights).__name__}; per-visit variances (nlme varIdent) are a covariance term in the formula: "
                "'diag(visit | subject)', 'csh', 'arh1', 'un'.")
        self.formula = formula
        self.data = data
        self.engine = engine
        self.weights = weights
        self.arrays, self.spec, self.info = build_design(formula, data, require_response=False, engine=engine,
                                                         weights=weights)
        self.has_response = self.info.formula.response in data.columns

    def fit(self, reml: bool = True, *, ddf: str = "satterthwaite", start=None, max_iter: int = 200,
            tol: float = 1e-11, warn: bool = True):
        """Fit by REML (default) or ML.  Returns an :class:`~jaxlmm.results.LMMResult`.

        ``start`` optionally gives unconstrained starting values.  A fit that does not converge
        returns ``converged=False``, its status in the summary, and a ``ConvergenceWarning``.
        """
        reml, warn = check_bool(reml, "reml"), check_bool(warn, "warn")
        max_iter, tol = check_count(max_iter, "max_iter"), check_number(tol, "tol", 0.0, 1e-2)
        if start is not None:
            k = self.spec.n_theta
            start = check_vector(start, "start", k, f" (the unconstrained covariance parameters, in the order of "
                                                    f"res.theta_unconstrained: {k} for this model)")
        if not self.has_response:
            check_columns([self.info.formula.response], self.data, "response")
        rec = fit_arrays(self._centred[0], self.spec, reml, start, payload=self.payload, offset=self.offset,
                         max_iter=max_iter, tol=tol, retry=start is None)
        out = LMMResult(self, rec, ddf_method=ddf)
        if warn and rec.status == BOUNDARY:
            warnings.warn(
                "boundary (singular) fit: a random-effects variance or a residual SD is ~0, or a correlation is "
                "~+-1; consider a simpler covariance model.",
                ConvergenceWarning,
                stacklevel=2,
            )
        elif warn and not out.converged:
            warnings.warn(
                f"The fit did not converge: {STATUS[rec.status]} after {rec.n_iter} iterations "
                f"(-2 log L = {rec.deviance:.6f}). Check the model or rescale variables.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return out

    @cached_property
    def _centred(self):
        return centred(self.arrays)

    @property
    def offset(self) -> np.ndarray:
        """The OLS fixed effects ``beta0`` by which the likelihood payload's response is centred
        (``y - X beta0``; its GLS estimate is ``beta - beta0``)."""
        return self._centred[1]

    @cached_property
    def payload(self):
        """(layout, payload) of the likelihood (:func:`jaxlmm.fitting.make_payload`) of the centred
        response (:attr:`offset`), built once and used by the fit and every computation on it."""
        return make_payload(self._centred[0], self.spec)

    # ---- batches and simulation ------------------------------------------------------
    def pilot(self, y, m, reml, candidates=None):
        """A full Newton fit of the first replicate among ``candidates`` (all, by default) whose
        fit converges: (theta, Hessian) in unit-scale parameters, the start and curvature for a
        batch.  It depends only on that replicate, so a good replicate's result does not depend
        on the bad ones beside it."""
        idx = np.arange(len(y)) if candidates is None else np.asarray(candidates)
        rec = None
        for i in idx[:8]:
            rec = fit_arrays(self.arrays.masked(m[i])._replace(y=y[i] * m[i]), self.spec, reml)
            if rec.converged:
                break
        if rec is None or not rec.converged:
            rec = fit_arrays(self.arrays, self.spec, reml) if self.has_response else rec
        if rec is None:
            raise DataError("No replicate of Y can be fitted (each has an infinite value or too few observed values).")
        return rec.unit_theta, rec.unit_hessian, rec.log_scale

    def fit_batch(self, Y, reml: bool = True, *, start=None, chunk_size=None, memory_budget=2e9,
                  progress=None, devices=None, dtype="float64", max_iter: int = 60):
        """Fit B responses sharing this design in one compiled, vmap-batched program.

        Parameters
        ----------
        Y : array [B, n_rows]
            Responses aligned with the rows of the model's data; NaN marks a missing cell
            (each replicate may have its own).  A replicate with an infinite value, or with no
            more observed values than fixed effects, is not fitted: its row of the result is
            NaN with status ``"invalid data"``.
        reml : bool
        start : LMMResult, optional
            A fit whose estimates and Hessian start every replicate, each on its own scale
            (default: a full Newton fit of the first replicate that can be fitted).
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
            A good replicate's result is the same bit for bit whatever else is in the batch.
        """
        reml = check_bool(reml, "reml")
        max_iter = check_count(max_iter, "max_iter")
        dtype = check_choice(dtype if isinstance(dtype, str) else jnp.dtype(dtype).name, "dtype", ("float64", "float32"))
        y, m, bad = responses_to_padded(self.info, Y)
        B = y.shape[0]
        good = np.nonzero(~bad)[0]
        if len(good) == 0:
            raise DataError("No replicate of Y can be fitted: each has an infinite value or no more observed values "
                            f"than the {len(self.info.fixed_names)} fixed effects.")
        if start is not None:
            theta0, hess0, log0 = start.record.unit_theta, start.record.unit_hessian, start.record.log_scale
        else:
            theta0, hess0, log0 = self.pilot(y, m, reml, candidates=good)
        if bad.any():  # computed on a good replicate's data, reported as invalid
            y, m = y.copy(), m.copy()
            y[bad], m[bad] = y[good[0]], m[good[0]]
        shared = bool(np.all(m == m[:1]))

        def source(idx):
            return y[idx], (None if shared else m[idx])

        return fit_batch_padded(
            self, source, B, reml=reml, theta0=theta0, hess0=hess0, log_scale0=log0, anchored=start is not None,
            shared_mask=m[0] if shared else None, bad=bad,
            chunk_size=chunk_size, memory_budget=memory_budget, progress=progress, devices=devices,
            dtype=jnp.dtype(dtype), max_iter=max_iter,
        )

    def simulate(self, params, n: int = 1, seed: int = 0) -> pd.DataFrame:
        """Simulate ``n`` responses from given parameters (natural units): a DataFrame indexed
        like the data, columns ``sim_1`` ... ``sim_n`` (see :meth:`LMMResult.simulate`).

        ``params = {"fixef": {name: value}, "theta": {name: value}}`` with the names of
        ``res.fixef`` and ``res.theta`` (or arrays in that order), e.g. for ``ar1``:
        ``{"theta": {"sigma": 2.0, "rho": 0.5}}``.  Random effects are drawn too.  Rows not in
        the model (missing covariates) are NaN; the response column need not exist.
        Replicate r uses ``fold_in(PRNGKey(seed), r)``: identical whatever ``n``.
        """
        n, seed = check_count(n, "n"), check_seed(seed)
        beta, th = params_to_unconstrained(self, params)
        a = self.arrays
        m = np.zeros_like(np.asarray(a.m))
        m[self.info.row_s, self.info.row_t] = 1.0  # every row with complete covariates
        y = simulate_padded(seed, jnp.arange(n), jnp.asarray(th), jnp.asarray(beta), a.to_jax(),
                            jnp.asarray(m), self.spec)
        return simulate_frame(padded_to_rows(self.info, y, m), self.data.index)


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
    weights : str, optional
        A column of positive observation weights (SAS ``WEIGHT``, mmrm ``weights =``, nlme
        ``weights = varFixed(~ 1 / w)``): the residual variance of a row is divided by its weight.

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
    check_keywords(kwargs, "fit", ("engine", "weights", "ddf", "start", "max_iter", "tol", "warn"))
    engine = kwargs.pop("engine", "auto")
    weights = kwargs.pop("weights", None)
    return Model(formula, data, engine=engine, weights=weights).fit(reml=reml, **kwargs)
