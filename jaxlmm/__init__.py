"""jaxlmm: linear mixed models (ML / REML) in JAX.

Importing jaxlmm turns on JAX's 64-bit mode (``jax_enable_x64``), because results must agree
with SAS and R to 1e-6; set ``JAXLMM_NO_X64=1`` before the import to leave JAX's setting alone
(fits then need explicit float32 handling and are not validated).

Public API (the table of contents):

- :func:`fit`, :class:`Model`: fit one model; :class:`LMMResult` holds the results.
- :meth:`Model.fit_batch`, :func:`fit_many`, :meth:`LMMResult.bootstrap`, ``simulate``: many
  fits in one compiled call (:class:`BatchResult`, :class:`BootstrapResult`).
- :func:`deviance`: the pure, differentiable -2 (restricted) log-likelihood.
- :func:`example_trial`, :func:`simulate_longitudinal`: built-in, deterministic example data.
- Errors: :class:`LMMError` (a ``ValueError``), :class:`FormulaError`, :class:`DataError`, :class:`ArgumentError` (also a ``TypeError``);
  :class:`ConvergenceWarning`.
"""

import os as _os

import jax as _jax

if not _os.environ.get("JAXLMM_NO_X64"):
    _jax.config.update("jax_enable_x64", True)


from .batch import BatchResult, fit_many  # noqa: E402
from .bootstrap import BootstrapResult  # noqa: E402
from .compare import bootstrap_lrt, compare, lrt  # noqa: E402
from .selection import Selection, select_covariance, select_random  # noqa: E402
from .datasets import example_trial, simulate_crossed, simulate_longitudinal, simulate_nested  # noqa: E402
from .differentiate import (  # noqa: E402
    Solution,
    fixed_effects_vcov,
    influence,
    loglik,
    params_from_result,
    profiled_deviance,
    solve,
    weighted_deviance,
)
from .errors import ArgumentError, ConvergenceWarning, DataError, FormulaError, LMMError  # noqa: E402
from .formula import COVARIANCE_NAMES, parse_formula  # noqa: E402
from .likelihood import deviance  # noqa: E402
from .spec import ModelData, ModelSpec  # noqa: E402
from .model import Model, fit  # noqa: E402
from .optimize import STATUS  # noqa: E402
from .power import Design, Dropout, SampleSize, Truth, operating_characteristics, power, sample_size, simulate_trials  # noqa: E402
from .results import LMMResult  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "fit",
    "fit_many",
    "compare",
    "lrt",
    "select_covariance",
    "bootstrap_lrt",
    "select_random",
    "Selection",
    "Model",
    "BatchResult",
    "BootstrapResult",
    "LMMResult",
    "deviance",
    "solve",
    "Solution",
    "influence",
    "loglik",
    "params_from_result",
    "profiled_deviance",
    "weighted_deviance",
    "fixed_effects_vcov",
    "ModelData",
    "ModelSpec",
    "example_trial",
    "simulate_longitudinal",
    "simulate_nested",
    "simulate_crossed",
    "parse_formula",
    "COVARIANCE_NAMES",
    "STATUS",
    "LMMError",
    "ArgumentError",
    "FormulaError",
    "DataError",
    "ConvergenceWarning",
    "power",
    "sample_size",
    "operating_characteristics",
    "simulate_trials",
    "Design",
    "Dropout",
    "Truth",
    "SampleSize",
]
