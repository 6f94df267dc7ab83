"""Visit positions: which column of the residual covariance each row occupies.

A visit structure (``un``, ``ar1``, ...) has one position per visit level (numeric visits
keep their spacing under the serial structures ``ar1``, ``arh1``, ``arma11``); a spatial
structure (``sp_exp``, ...) one per distinct coordinate point, whose coordinates define the
distances (:mod:`jaxlmm.spatial`).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from .errors import DataError

__all__ = ["py_scalar", "levels_of", "visit_positions", "spatial_positions", "natural_key", "visit_label",
           "GRID_FACTOR", "MIN_GRID"]


def py_scalar(v):
    """numpy scalar -> Python scalar, for readable messages."""
    return v.item() if isinstance(v, np.generic) else v


def levels_of(series: pd.Series):
    if isinstance(series.dtype, pd.CategoricalDtype):
        present = set(series.dropna().unique())
        return [c for c in series.cat.categories if c in present]
    vals = series.dropna().unique()
    try:
        return sorted(vals)
    except TypeError:
        return list(vals)


#: positions allowed per subject row: a visit grid with more positions than this many times the
#: most rows any subject has (and more than MIN_GRID) is refused as irregular times
GRID_FACTOR, MIN_GRID = 4, 24


def visit_positions(series: pd.Series, structure: str, visit: str, term: str, s_code) -> tuple[list, np.ndarray]:
    """The visit levels (positions 0..T-1 of the residual covariance) and each row's position.

    * Numeric visits: integers keep their spacing under ``ar1``/``arh1``/``arma11`` (positions
      ``v - min(v)``: visits 1, 2, 4 are lags 1 and 2 apart, as nlme's ``corAR1(form = ~ visit |
      subject)``); non-integer or irregular times are refused there (they need a continuous-time
      structure or an explicit visit factor).  Under ``un``/``cs``/``csh``/``diag`` the distinct
      values are the levels (no spacing is implied).
    * Categorical visits: the declared categories in their order, kept as positions under
      ``ar1`` even when no row has one (a gap); under the other structures a category that no row
      has has no parameters to estimate: it is left out with a warning (``arh1`` refuses it).
    * Text visits: the distinct strings, sorted; a column mixing numbers and strings is refused.
    """
    ser = series
    obs = ser.dropna()
    max_rows = int(np.bincount(np.asarray(s_code)).max()) if len(s_code) else 1
    categorical = isinstance(ser.dtype, pd.CategoricalDtype)
    spaced = structure in ("ar1", "arh1", "arma11")
    if not categorical and ser.dtype == object:
        kinds = {("number" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else "text")
                 for v in obs}
        if len(kinds) > 1:
            raise DataError(
                f"The visit column {visit!r} of {term} mixes numbers and strings; make it one type, e.g. "
                f"df[{visit!r}] = df[{visit!r}].astype(str), or a pd.Categorical."
            )
    if categorical:
        cats = list(ser.cat.categories)
        present = set(obs.unique())
        missing = [c for c in cats if c not in present]
        if missing and structure == "arh1":
            raise DataError(
                f"The visit level(s) {', '.join(map(repr, missing[:5]))} of column {visit!r} have no rows, but "
                f"{term} has an SD per visit level: remove unused levels (df[{visit!r}] = "
                f"df[{visit!r}].cat.remove_unused_categories()) or use ar1."
            )
        if missing and not spaced:
            warnings.warn(
                f"The visit level(s) {', '.join(map(repr, missing[:5]))} of column {visit!r} have no rows and are "
                f"left out of {term}.", UserWarning, stacklevel=4)
        levels = cats if spaced else [c for c in cats if c in present]
    elif pd.api.types.is_numeric_dtype(ser) and not pd.api.types.is_bool_dtype(ser) and spaced:
        v = obs.to_numpy(dtype=float)
        if not np.all(np.isclose(v, np.round(v), rtol=0, atol=1e-9)):
            raise DataError(
                f"The visit column {visit!r} of {term} has non-integer times ({py_scalar(v[~np.isclose(v, np.round(v))][0])}"
                f", ...): {structure} needs visits on an integer grid (lag = difference of visit numbers). Make an "
                f"explicit visit factor (df['visit_no'] = pd.Categorical(...)) or use a continuous-time structure "
                "(sp_exp, sp_pow: distances between times, no grid)."
            )
        lo, hi = int(np.round(v.min())), int(np.round(v.max()))
        levels = list(range(lo, hi + 1))
        used = set(np.round(v).astype(int))
        missing = [x for x in levels if x not in used]
        if missing and structure == "arh1":
            raise DataError(
                f"The visit(s) {', '.join(map(str, missing[:5]))} between {lo} and {hi} of column {visit!r} have no "
                f"rows, but {term} has an SD per visit: use ar1, or number the visits without gaps."
            )
    else:
        levels = levels_of(ser)
    T = len(levels)
    if T > max(GRID_FACTOR * max_rows, MIN_GRID):
        raise DataError(
            f"The visit column {visit!r} of {term} gives {T} visit positions, but no subject has more than {max_rows} "
            f"rows: it looks like irregular measurement times, not a visit schedule. Use a visit number or an "
            "explicit visit factor (one level per scheduled visit), a random-effects model such as (1 + time | "
            "subject), or a continuous-time structure (sp_exp, sp_pow: distances between times, no grid)."
        )
    if categorical or not (spaced and pd.api.types.is_numeric_dtype(ser)):
        codes = pd.Categorical(ser, categories=levels).codes.astype(int)
    else:
        codes = np.round(ser.to_numpy(dtype=float)).astype(int) - levels[0]
    return levels, codes


def natural_key(v):
    """Sort key that orders 'V2' before 'V10'."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(v)) if t]


def visit_label(v) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(visit_label(x) for x in v) + ")"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def spatial_positions(df: pd.DataFrame, coords, term: str, s_code) -> tuple[list, np.ndarray, np.ndarray]:
    """Positions of a spatial structure: ``(levels, codes, P)``.

    The coordinates are numbers; several columns give points ``(x, y, ...)`` with Euclidean
    distance (:mod:`jaxlmm.spatial`); ``P`` [n, dims] are each row's coordinates.  When the data
    have few distinct points (at most :data:`GRID_FACTOR` times the most rows of a subject, or
    :data:`MIN_GRID`) they are the positions (``levels``, sorted) of one covariance shared as a
    visit structure; otherwise ``levels`` is None and ``codes`` is each row's rank within its
    subject in coordinate order (each subject's rows fill its columns; one covariance per
    subject from its own distances)."""
    for c in coords:
        ser = df[c]
        if not pd.api.types.is_numeric_dtype(ser) or pd.api.types.is_bool_dtype(ser):
            raise DataError(
                f"The coordinate column {c!r} of {term} is not numeric ({ser.dtype}); a spatial structure needs "
                f"numbers (times, positions): convert it, e.g. df[{c!r}] = pd.to_numeric(df[{c!r}]), or use a "
                "visit structure such as ar1 or un for visit labels."
            )
    P = np.column_stack([df[c].to_numpy(dtype=float) for c in coords])
    bad = ~np.all(np.isfinite(P), axis=1)
    if bad.any():
        raise DataError(f"The coordinates of {term} are not finite in {int(bad.sum())} row(s) (e.g. inf); fix or "
                        "drop them.")
    pts, codes = np.unique(P, axis=0, return_inverse=True)
    codes = np.asarray(codes).reshape(-1).astype(int)
    s_code = np.asarray(s_code)
    dup = pd.DataFrame({"s": s_code, "t": codes}).duplicated(keep=False).to_numpy()
    if dup.any():
        i = int(np.nonzero(dup)[0][0])
        raise DataError(
            f"Two rows of one subject have the same coordinates ({', '.join(coords)}) = "
            f"{visit_label(tuple(float(x) for x in P[i]))} in {term}: their residual correlation would be 1. "
            "Aggregate or remove duplicate rows, or add a random effect for the repeated measurements."
        )
    max_rows = int(np.bincount(s_code).max()) if len(s_code) else 1
    if len(pts) <= max(GRID_FACTOR * max_rows, MIN_GRID):
        levels = [float(p[0]) for p in pts] if len(coords) == 1 else [tuple(float(x) for x in p) for p in pts]
        return levels, codes, P
    order = np.lexsort(tuple(P[:, k] for k in reversed(range(P.shape[1]))) + (s_code,))
    rank = np.empty(len(s_code), int)
    rank[order] = pd.Series(s_code[order]).groupby(s_code[order]).cumcount().to_numpy()
    return None, rank, P
