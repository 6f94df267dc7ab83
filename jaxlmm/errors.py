"""Exceptions raised by jaxlmm.  All are ``ValueError`` subclasses raised on the host (never
inside jitted code), and each message names the column or term at fault and what to do."""

from __future__ import annotations

import warnings

__all__ = ["LMMError", "FormulaError", "DataError", "ArgumentError", "ConvergenceWarning"]


class LMMError(ValueError):
    """Base class of jaxlmm's errors."""


class FormulaError(LMMError):
    """The model formula cannot be parsed or refers to something that does not exist."""


class DataError(LMMError):
    """The data cannot support the requested model (missing columns, bad values, too few subjects)."""


class ArgumentError(LMMError, TypeError):
    """A public function got an argument of the wrong type or value (also a ``TypeError``)."""


class ConvergenceWarning(UserWarning):
    """A fit ended without meeting the convergence criterion, or on a boundary."""


def warn(msg: str, category=UserWarning) -> None:
    warnings.warn(msg, category, stacklevel=3)
