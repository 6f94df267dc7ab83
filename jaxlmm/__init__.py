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
- :func:`set_compilation_cache`: JAX's persistent compilation cache (on by default).
- Errors: :class:`LMMError` (a ``ValueError``), :class:`FormulaError`, :class:`DataError`, :class:`ArgumentError` (also a ``TypeError``);
  :class:`ConvergenceWarning`.
"""

import importlib as _importlib
import os as _os
import sys as _sys
import types as _types

# float64 for fitting.  Set before JAX is imported when it is not yet (JAX reads the variable at
# import), so that importing jaxlmm, and ``jaxlmm --help``, do not import JAX at all: the
# package's names are loaded on first use (PEP 562).
if not _os.environ.get("JAXLMM_NO_X64"):
    if "jax" in _sys.modules:
        _sys.modules["jax"].config.update("jax_enable_x64", True)
    else:
        _os.environ["JAX_ENABLE_X64"] = "1"

from .errors import ArgumentError, ConvergenceWarning, DataError, FormulaError, LMMError  # noqa: E402
from .cache import default_cache_dir, set_compilation_cache  # noqa: E402
from . import cache as _cache  # noqa: E402
from . import cores as _cores  # noqa: E402

_cache.configure()  # JAX's persistent compilation cache (jaxlmm/cache.py; JAXLMM_CACHE=0 turns it off)
_cores.configure()  # one CPU device per core for batches (jaxlmm/cores.py; JAXLMM_CPU_DEVICES=1 keeps one)

_EXPORTS = {
    "batch": ("BatchResult", "fit_many"),
    "bootstrap": ("BootstrapResult",),
    "compare": ("bootstrap_lrt", "compare", "lrt"),
    "selection": ("Selection", "select_covariance", "select_random"),
    "distributed": ("initialize_distributed",),
    "datasets": ("example_trial", "simulate_crossed", "simulate_longitudinal", "simulate_nested"),
    "differentiate": ("Solution", "fixed_effects_vcov", "influence", "loglik", "params_from_result",
                      "profiled_deviance", "solve", "weighted_deviance"),
    "formula": ("COVARIANCE_NAMES", "parse_formula"),
    "likelihood": ("deviance",),
    "spec": ("ModelData", "ModelSpec"),
    "model": ("Model", "fit"),
    "optimize": ("STATUS",),
    "power": ("Design", "Dropout", "SampleSize", "Truth", "operating_characteristics", "power", "sample_size",
              "simulate_trials"),
    "results": ("LMMResult",),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}


class _Package(_types.ModuleType):
    """The package module: importing the submodules ``jaxlmm.compare`` and ``jaxlmm.power`` must
    not replace the functions ``lmm.compare`` and ``lmm.power`` of the same names (the
    submodules stay importable: ``from jaxlmm.power import Design``)."""

    def __setattr__(self, name, value):
        if name in _WHERE and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'jaxlmm' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


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
    "set_compilation_cache",
    "initialize_distributed",
    "default_cache_dir",
]
