"""Checks of the public arguments, in one place: every public function validates its arguments
through these, so a wrong type or value gets the package's own error
(:class:`~jaxlmm.errors.ArgumentError`) naming the argument and what is allowed, never a raw
Python error from deep inside."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from .errors import ArgumentError

__all__ = ["check_bool", "check_count", "check_seed", "check_choice", "check_number", "as_frame", "check_vector",
           "R_KEYWORDS", "check_keywords"]


def check_bool(value, name: str) -> bool:
    """``True``/``False`` (numpy booleans included); anything else (``"no"``, 0, None) is refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ArgumentError(f"{name} must be True or False, got {value!r}.")


def check_count(value, name: str, minimum: int = 1) -> int:
    """An integer of at least ``minimum`` (a float with an integer value is accepted)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if not float(value).is_integer() or value < minimum:
        raise ArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_seed(value, name: str = "seed") -> int:
    """A non-negative integer seed."""
    return check_count(value, name, minimum=0)


def check_number(value, name: str, low=None, high=None) -> float:
    """A finite real number, optionally within ``[low, high]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ArgumentError(f"{name} must be between {low} and {high}, got {value!r}.")
    return float(value)


def check_choice(value, name: str, choices) -> str:
    """One of ``choices`` (strings, compared case-insensitively)."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ArgumentError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")


def check_vector(value, name: str, length: int, what: str = "") -> np.ndarray:
    """A finite numeric vector of exactly ``length`` values."""
    try:
        v = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be {length} numbers{what}, got {value!r}.") from None
    if v.shape[0] != length or not np.all(np.isfinite(v)):
        raise ArgumentError(f"{name} must be {length} finite numbers{what}; got {v.shape[0]} values.")
    return v


def as_frame(data, name: str = "data") -> pd.DataFrame:
    """A pandas DataFrame from ``data``: a pandas frame as it is; a polars (or other) frame
    through its ``to_pandas()`` or the dataframe interchange protocol; a dict of columns."""
    if isinstance(data, pd.DataFrame):
        return data
    if hasattr(data, "to_pandas"):
        out = data.to_pandas()
        if isinstance(out, pd.DataFrame):
            return out
    if hasattr(data, "__dataframe__"):
        try:
            return pd.api.interchange.from_dataframe(data)
        except Exception as e:  # pragma: no cover - depends on the other library
            raise ArgumentError(f"{name}: cannot convert a {_type_name(data)} to a pandas DataFrame ({e}).") from None
    if isinstance(data, dict):
        try:
            return pd.DataFrame(data)
        except ValueError as e:
            raise ArgumentError(f"{name}: a dict of columns must have columns of equal length ({e}).") from None
    raise ArgumentError(f"{name} must be a pandas DataFrame (or a polars frame, or a dict of columns), "
                        f"not {_type_name(data)}.")


def _type_name(x) -> str:
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


#: R argument names and how jaxlmm says the same thing
R_KEYWORDS = {
    "REML": "reml=True / reml=False",
    "method": "reml=True (REML) or reml=False (ML)",
    "correlation": "a covariance term in the formula, e.g. 'y ~ x + ar1(visit | subject)'",
    "random": "random terms in the formula, e.g. 'y ~ x + (1 + time | subject)'",
    "subset": "filter the DataFrame before fitting, e.g. data[data.arm != 'C']",
    "na_action": "nothing: rows with a missing response or covariate are dropped (and reported)",
    "control": "max_iter= and tol=",
    "family": "nothing: jaxlmm fits linear (Gaussian) mixed models only",
    "formula": "the formula as the first argument",
}


def check_keywords(kwargs: dict, where: str, allowed) -> None:
    """Refuse unknown keyword arguments, pointing R users to the jaxlmm way."""
    for k in kwargs:
        if k in allowed:
            continue
        hint = R_KEYWORDS.get(k)
        msg = f"{where}() got an unexpected keyword argument {k!r}."
        if hint:
            msg += f" In jaxlmm use {hint}."
        else:
            msg += f" Allowed: {', '.join(sorted(allowed))}."
        raise ArgumentError(msg)
