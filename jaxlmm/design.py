"""DataFrame + formula -> padded model arrays (host side, numpy) and the names to report.

Rows with a missing value in any column the model uses are dropped (and counted).  Every
subject becomes one row of padded ``[S, T]`` arrays: with a covariance term the visit level
decides the column (so AR(1) lags are distances between visit positions and a missing visit
leaves a gap); without one, a subject's rows fill its columns in data order.  ``S`` is padded
up to a bucket (four per power of two) so that datasets of similar size share a compiled
program.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from formulaic.errors import DataMismatchWarning

from .covariance import SPATIAL, RandomBlock, make_structure
from .gside import StructuredBlock
from .kronecker import KRONECKER, Kronecker
from .pergroup import PerGroup, group_keys
from .varfunc import VarFunction, pair_data
from .errors import DataError, FormulaError
from .formula import ParsedFormula, parse_formula
from .spec import ModelData, ModelSpec
from .visits import levels_of, natural_key, py_scalar, spatial_positions, visit_label, visit_positions
from .terms import DENSE_LIMIT, Factor, make_factor, nested_in, plan_level2, same_partition

__all__ = ["DesignInfo", "build_design", "bucket", "check_columns", "levels_of", "new_design_rows", "ordered_to_poly",
           "ENGINES", "FLAT_ROWS"]

ENGINES = ("auto", "general", "subjects")
# A model with one grouping factor and no covariance term whose largest group has more rows
# than this is computed by the level-2 engine (a k x k system per level instead of a T x T
# covariance per group: the teaching-evaluation data with up to 92 rows per student fit
# 100x faster; benchmarks/README.md).
FLAT_ROWS = 16


def bucket(n: int) -> int:
    """Padded size for ``n`` subjects: 8, or ``n`` rounded up to a quarter power of two."""
    if n <= 8:
        return 8
    base = 2 ** int(math.floor(math.log2(n)))
    step = max(base // 4, 1)
    return int(math.ceil(n / step) * step)


@dataclass
class DesignInfo:
    formula: ParsedFormula
    fixed_names: list[str]
    dropped_aliased: list[str]
    x_spec: object  # formulaic ModelSpec of the fixed part (full, before dropping aliased columns)
    keep_cols: np.ndarray  # indices of kept fixed columns
    re_specs: list  # formulaic ModelSpec per random term (of random_terms)
    random_terms: tuple  # the random terms fitted (nested terms expanded, absorbed ones dropped)
    factors: dict  # grouping factor name -> terms.Factor (codes of the used rows, level labels)
    blocks: tuple[RandomBlock, ...]
    subject: str | None
    visit: str | None
    visit_levels: list
    visit_labels: list[str]
    subjects: list  # subject labels in padded-row order
    n_obs: int
    n_dropped: int
    dropped_by_column: dict
    row_index: np.ndarray  # positions (0..n_rows-1) in the input data of the used rows
    row_s: np.ndarray
    row_t: np.ndarray
    n_rows_input: int
    n_subjects_input: int  # distinct subjects in the input data, incl. ones with no usable row (SAS BIC)
    S: int  # real subjects
    S_pad: int
    T: int
    structure: str
    per_subject_cov: bool = False  # a spatial structure from each subject's own coordinates
    resid_group: str | None = None  # ``un(visit | arm / subject)``: the column of the residual groups
    resid_group_levels: tuple = ()  # its levels (labels), in code order
    subject_group: np.ndarray | None = None  # the residual group code of each subject [S]
    variance: tuple = ()  # variance functions: (VarTerm, levels of a var_ident factor or ()) per term
    weights: str | None = None  # the observation-weights column (SAS WEIGHT)
    row_sqrt_w: np.ndarray | None = None  # sqrt(weight) of each used row; the arrays' rows are scaled by it
    extra: dict = field(default_factory=dict)

    @property
    def n_groups(self):
        return self.S if self.subject is not None else None

    def cell_log_w(self) -> np.ndarray:
        """log(weight) of each padded cell [S_pad, T] (0 without weights and at unused cells)."""
        out = np.zeros((self.S_pad, self.T))
        if self.row_sqrt_w is not None:
            out[self.row_s, self.row_t] = 2.0 * np.log(self.row_sqrt_w)
        return out

    def deviance_offset(self, m=None) -> float | np.ndarray:
        """-sum(log w) over the observed cells (masks ``m`` [..., S_pad, T]; all used rows by
        default): the deviance of the data minus that of the weight-scaled arrays."""
        if self.row_sqrt_w is None:
            return 0.0 if m is None else np.zeros(np.asarray(m).shape[:-2])
        lw = self.cell_log_w()
        if m is None:
            return -float(lw.sum())
        return -np.sum(np.asarray(m) * lw, axis=(-2, -1))

    def unscale(self, values) -> np.ndarray:
        """Values of the used rows [..., n] in the weight-scaled arrays' units -> the data's."""
        return np.asarray(values) if self.row_sqrt_w is None else np.asarray(values) / self.row_sqrt_w


def _rename_intercept(cols):
    return ["(Intercept)" if c == "Intercept" else c for c in cols]


def check_columns(names, data, what):
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"The data must be a pandas DataFrame, not {type(data).__name__}.")
    for name in names:
        if name not in data.columns:
            cols = [str(c) for c in data.columns]
            close = difflib.get_close_matches(str(name), cols, n=3)
            if not close:  # case-insensitive match ("Time" for "time")
                close = [c for c in cols if c.lower() == str(name).lower()]
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            shown = cols if len(cols) <= 30 else cols[:30] + [f"... ({len(cols) - 30} more)"]
            raise DataError(
                f"Column {name!r} ({what}) is not in the data.{hint} Fix the formula or add the column; "
                f"columns are: {shown}."
            )
        n = int(np.sum(data.columns == name))
        if n > 1:
            raise DataError(
                f"Column {name!r} ({what}) appears {n} times in the data; rename or drop the duplicate columns."
            )


def _expr_variables(expr: str, what: str) -> tuple[list[str], list[str]]:
    """(data columns, unknown function names) used by a formulaic expression.

    formulaic's ``required_variables`` misses the arguments of stateful transforms
    (``center(x)``, ``scale(x)``, ``poly(x, 2)``): they are read here from the Python syntax of
    each factor without evaluating anything."""
    import ast
    import builtins

    import formulaic
    from formulaic.transforms import TRANSFORMS
    from formulaic.utils.code import sanitize_variable_names

    try:
        terms = list(formulaic.Formula(expr))
    except Exception as e:  # formulaic syntax errors (parse_formula normally catches them first)
        raise FormulaError(f"Cannot parse the {what} {expr!r}: {_short(e)} Fix the formula.") from None

    def known(name: str) -> bool:
        return name in TRANSFORMS or hasattr(builtins, name)

    values: list[str] = []
    funcs: list[str] = []

    def dotted(node):
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            inner = dotted(node.value)
            return None if inner is None else f"{inner}.{node.attr}"
        return None

    for term in terms:
        for factor in term.factors:
            method = getattr(factor.eval_method, "name", str(factor.eval_method)).upper()
            if method == "LOOKUP":
                values.append(str(factor.expr))
            elif method == "PYTHON":
                aliases: dict = {}
                try:
                    tree = ast.parse(sanitize_variable_names(str(factor.expr), {}, aliases), mode="eval")
                except SyntaxError:
                    continue  # formulaic reports it when the matrix is built
                todo = [tree.body]
                while todo:
                    node = todo.pop()
                    if isinstance(node, ast.Call):
                        name = dotted(node.func)
                        if name == "Q" and node.args and isinstance(node.args[0], ast.Constant):
                            values.append(str(node.args[0].value))
                            continue
                        if name is None:
                            todo.append(node.func)
                        elif "." in name:
                            root = aliases.get(name.split(".")[0], name.split(".")[0])
                            if not known(root):
                                values.append(root)  # a method of a column, e.g. x.fillna(0)
                        elif not known(name):
                            funcs.append(name)
                        todo.extend(node.args)
                        todo.extend(k.value for k in node.keywords)
                    elif isinstance(node, (ast.Name, ast.Attribute)):
                        name = dotted(node)
                        if name is None:
                            todo.extend(ast.iter_child_nodes(node))
                            continue
                        root = name.split(".")[0]
                        root = aliases.get(root, root)
                        if root not in TRANSFORMS:
                            values.append(root)
                    else:
                        todo.extend(ast.iter_child_nodes(node))
    uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    return uniq(values), uniq(funcs)


def _required(expr: str, data: pd.DataFrame, what: str):
    """Data columns used by ``expr``; unknown functions are a FormulaError."""
    values, funcs = _expr_variables(expr, what)
    for f in funcs:
        if f in data.columns:
            raise FormulaError(f"In the {what} {expr!r}, column {f!r} is called like a function; remove the '(...)'.")
        from formulaic.transforms import TRANSFORMS

        names = sorted(k for k in TRANSFORMS if k not in ("contr", "np"))
        close = difflib.get_close_matches(f, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        avail = ", ".join(k for k in names if k[0].islower())
        raise FormulaError(
            f"Unknown function {f!r} in the {what} {expr!r}.{hint} Use a formulaic transform "
            f"({avail}), C()/I(), a numpy function as np.<name>, or compute the column in the data first."
        )
    return values


def _short(e: Exception) -> str:
    return str(e).replace("\x1b[1;31m", "").replace("\x1b[0m", "").replace("⧛", "").replace("⧚", "").strip()


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def ordered_to_poly(expr: str, data: pd.DataFrame) -> tuple[str, list[str]]:
    """R's default contrasts for ordered factors: every mention of an ordered pandas Categorical
    column as a term or in an interaction (not inside a function call such as ``C(x, Sum)``)
    becomes ``C(x, Poly)`` (orthogonal polynomials, R's ``contr.poly``: columns ``x[.L]``,
    ``x[.Q]``, ``x[.C]``, ``x[^4]``, ...).  Returns the rewritten expression and the columns."""
    wrapped = []
    for c in data.columns:
        if not (isinstance(c, str) and _PLAIN.fullmatch(c) and isinstance(data[c].dtype, pd.CategoricalDtype)
                and data[c].cat.ordered):
            continue
        pieces, pos = [], 0
        for mt in re.finditer(r"(?<![\w.`])" + re.escape(c) + r"(?![\w.`])", expr):
            before, after = expr[: mt.start()].rstrip(), expr[mt.end():].lstrip()
            prev = before[-1:] if before else ""
            # a term: after an operator or an opening bracket that is not a call's
            term_start = prev in ("", "~", "+", "-", "*", ":", "/", "|") or (
                prev == "(" and not re.search(r"[\w.]\s*\($", expr[: mt.start()]))
            if term_start and (after[:1] in ("", "+", "-", "*", ":", "/", ")", "^", "|")):
                pieces += [expr[pos: mt.start()], f"C({c}, Poly)"]
                pos = mt.end()
        if pieces:
            wrapped.append(c)
            expr = "".join(pieces) + expr[pos:]
    return expr, wrapped


def _model_matrix(expr: str, data: pd.DataFrame, what: str):
    """(formulaic model matrix, column names): ordered factors get polynomial contrasts
    (:func:`ordered_to_poly`) and their columns R's suffixes (``x[.L]``)."""
    import formulaic

    expr2, wrapped = ordered_to_poly(expr, data)
    try:
        with np.errstate(all="ignore"):  # log(0) etc.: reported by _check_finite with the column name
            mm = formulaic.model_matrix(expr2, data, na_action="ignore")
    except Exception as e:
        raise FormulaError(f"Cannot build the {what} from {expr!r}: {_short(e)}") from None
    names = list(mm.columns)
    for c in wrapped:
        names = [n.replace(f"C({c}, Poly)[", f"{c}[") for n in names]
    return mm, _rename_intercept(names)


def _check_finite(M: np.ndarray, names, what: str, labels) -> None:
    """A model-matrix column with NaN/inf (from a transform such as log(0) or 1/0) is an error."""
    bad = ~np.isfinite(M)
    if bad.any():
        j = int(np.nonzero(bad.any(axis=0))[0][0])
        rows = np.nonzero(bad[:, j])[0]
        raise DataError(
            f"The {what} column {names[j]!r} has {len(rows)} non-finite value(s) (NaN or inf) after applying the "
            f"formula, first at data row {py_scalar(labels[rows[0]])!r}; the transform is undefined there (e.g. log of a "
            "value <= 0, division by zero). Change the transform or remove those rows."
        )


def _check_identifiable(block, Zb, codes, terms) -> None:
    """Refuse a correlated random term whose k x k covariance the data cannot identify.

    ``G`` enters the likelihood through ``Z_l G Z_l'`` for each level ``l``; a symmetric
    direction ``D`` with ``Z_l D Z_l' = 0`` for every level leaves the likelihood unchanged.  That
    happens exactly when ``Q(D) = sum_l tr(M_l D M_l D)``, ``M_l = Z_l' Z_l`` (columns scaled to
    unit RMS), is singular on the symmetric matrices: e.g. ``(1 + arm | subject)`` with ``arm``
    constant within every subject (a between-subject factor), or columns collinear within
    every level."""
    k = block.k
    if k < 2 or not isinstance(block, RandomBlock):  # structured blocks: few parameters
        return
    z = Zb / np.maximum(np.sqrt(np.mean(Zb * Zb, axis=0)), 1e-300)
    L = int(codes.max()) + 1
    M = np.zeros((L, k, k))
    np.add.at(M, codes, z[:, :, None] * z[:, None, :])
    Q4 = np.einsum("lab,lcd->acbd", M, M).reshape(k * k, k * k)  # vec(D)' Q4 vec(D) = sum_l tr(M D M D)
    rows, cols = np.triu_indices(k)
    Dup = np.zeros((k * k, len(rows)))  # vec(D) = Dup vech(D)
    for i, (a, c) in enumerate(zip(rows, cols)):
        Dup[a * k + c, i] = Dup[c * k + a, i] = 1.0
    w = np.linalg.eigvalsh(Dup.T @ Q4 @ Dup)
    term = next((t.origin or t.text for t in terms if t.group == block.group and t.correlated), block.group)
    cnt = np.maximum(np.bincount(codes, minlength=L), 1)
    const = [c for i, c in enumerate(block.columns)
             if c != "(Intercept)" and np.allclose(np.bincount(codes, weights=z[:, i] ** 2, minlength=L),
                                                   np.bincount(codes, weights=z[:, i], minlength=L) ** 2 / cnt,
                                                   rtol=1e-9, atol=1e-12)]
    if w[0] > 1e-9 * w[-1]:
        if const:
            warnings.warn(
                f"The random term {term}: {', '.join(repr(c) for c in const)} is constant within every level of "
                f"{block.group!r}, so its random slope is identified only by how the variance between levels changes "
                f"with it; such a term usually belongs in the fixed part only, e.g. (1 | {block.group}).",
                UserWarning, stacklevel=4)
        return
    why = (f"{', '.join(repr(c) for c in const)} {'is' if len(const) == 1 else 'are'} constant within every level of "
           f"{block.group!r} (a between-{block.group} effect)") if const else \
        f"the columns {', '.join(block.columns)} are collinear within every level of {block.group!r}"
    raise DataError(
        f"The random term {term}: {why}, so the {k} x {k} covariance of its random effects cannot be estimated from "
        f"the data. Drop {'those columns' if len(const) > 1 else 'that column'} from the random term (keep it as a "
        f"fixed effect), e.g. (1 | {block.group}), or make the term uncorrelated (||)."
    )


def _independent_columns(X: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Indices of columns kept by a pivot-free Gram-Schmidt in column order (as R's lm)."""
    keep = []
    Q = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        x = X[:, j]
        nrm = np.linalg.norm(x)
        if nrm == 0:
            continue
        r = x - Q @ (Q.T @ x)
        r = r - Q @ (Q.T @ r)
        if np.linalg.norm(r) > tol * nrm:
            keep.append(j)
            Q = np.column_stack([Q, r / np.linalg.norm(r)])
    return np.asarray(keep, dtype=int)


@dataclass
class _Grouping:
    terms: list  # random terms kept
    factors: dict  # name -> Factor
    subject: str | None  # the level-1 subject (covariance term's, or the only grouping factor)
    subject_factor: Factor | None
    level1: set  # names of the factors on the subject (level 1)
    on_subject: set  # names of the factors that group the rows like the subject (level 1 or not)


def _grouping(pf: ParsedFormula, df: pd.DataFrame, general: bool | None = None) -> _Grouping:
    """Build the grouping factors and split them into level 1 (on the residual subject) and
    level 2 (nested or crossed).  A model with one grouping factor and no covariance term is
    computed per subject (level 1) when no group has more than ``FLAT_ROWS`` rows, else by the
    level-2 engine (``general=None``; ``True`` / ``False`` force one of them).  A term expanded from ``a/b`` that the residual structure
    already contains (any term with ``un``, an intercept with ``cs``/``csh``) is dropped with
    a warning; such a term written out is an error (below, with the identifiability checks)."""
    factors: dict[str, Factor] = {}
    where = {}
    for r in pf.random:
        if r.group not in factors:
            fac = make_factor(df, r.group, r.columns, levels_of, visit_label)
            if fac.n_levels < 2:
                raise DataError(
                    f"The grouping factor {r.group!r} of {r.origin or r.text} has only {fac.n_levels} level in the "
                    "usable rows; a random effect needs several levels. Drop the term or check the column(s) "
                    f"{list(r.columns)} and the rows dropped for missing values."
                )
            factors[r.group] = fac
            where[r.group] = r.origin or r.text
    names = list(factors)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if same_partition(factors[a].codes, factors[b].codes):
                raise FormulaError(
                    f"The grouping factors {a!r} (in {where[a]}) and {b!r} (in {where[b]}) group the rows identically, "
                    "so their variances cannot be told apart. Keep one of them."
                )
    terms = list(pf.random)
    cov = pf.cov
    if cov is not None:
        sf = make_factor(df, cov.subject, (cov.subject,), levels_of, visit_label)
        level1 = {g for g, fac in factors.items() if same_partition(fac.codes, sf.codes)}
        for g, fac in factors.items():
            if g not in level1 and not nested_in(sf.codes, fac.codes):
                raise FormulaError(
                    f"The grouping factor {g!r} of {where[g]} varies within the subjects of {cov.text} (it is crossed "
                    f"with {cov.subject!r}, or nested in it); random effects that vary within the residual subject "
                    f"are not supported with a covariance term yet. Use a factor that {cov.subject!r} is nested in, "
                    "or drop the covariance term."
                )
        kept = []
        for r in terms:
            absorbed = r.group in level1 and r.origin and (
                cov.structure == "un" or (cov.structure in ("cs", "csh") and r.expr.strip() == "1"))
            if absorbed:
                warnings.warn(
                    f"{r.text} (from {r.origin}) is a random effect per subject, which {cov.text} already contains; "
                    f"it is not identifiable and is left out: the model fitted has the other terms and {cov.text}.",
                    UserWarning,
                    stacklevel=4,
                )
                continue
            kept.append(r)
        terms = kept
        factors = {g: f for g, f in factors.items() if any(r.group == g for r in terms)}
        level1 &= set(factors)
        return _Grouping(terms, factors, cov.subject, sf, set() if general is True else level1, level1)
    if len(factors) == 1 and general is not True:
        (g, fac), = factors.items()
        if general is False or np.bincount(fac.codes).max() <= FLAT_ROWS:
            return _Grouping(terms, factors, g, fac, {g}, {g})
    return _Grouping(terms, factors, None, None, set(), set())


def build_design(formula: str | ParsedFormula, data: pd.DataFrame, *, require_response: bool = True,
                 engine: str = "auto", weights: str | None = None):
    """Build ``(ModelData, ModelSpec, DesignInfo)`` from a formula and a DataFrame.

    With ``require_response=False`` the response column may be absent (a design for
    simulation); the response is then all zeros.  ``engine="general"`` puts every grouping
    factor in the level-2 system (the nested and crossed engine), also when there is one;
    ``engine="subjects"`` keeps one grouping factor on the subjects (a ``T x T`` covariance per
    subject); ``"auto"`` chooses the level-2 engine for a model with one grouping factor, no
    covariance term and a group of more than ``FLAT_ROWS`` rows: the same model, computed
    another way.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    pf = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, not {type(data).__name__}.")
    labels = np.asarray(data.index)  # the caller's row labels, for messages
    data = data.reset_index(drop=True)
    n_rows_input = len(data)
    if n_rows_input == 0:
        raise DataError("The data have no rows; pass a DataFrame with one row per observation.")

    has_response = pf.response in data.columns
    if require_response or has_response:
        check_columns([pf.response], data, "response")
        if not pd.api.types.is_numeric_dtype(data[pf.response]) or pd.api.types.is_bool_dtype(data[pf.response]):
            raise DataError(
                f"The response {pf.response!r} is not numeric (dtype {data[pf.response].dtype}); convert it, e.g. "
                f"df[{pf.response!r}] = pd.to_numeric(df[{pf.response!r}], errors='coerce'), or pick a numeric column."
            )
    used = {}
    if has_response:
        used[pf.response] = "response"
    rhs_vars = {}
    for v in _required(pf.fixed, data, "fixed-effects formula"):
        used.setdefault(v, "fixed effects")
        rhs_vars.setdefault(v, "fixed part")
    for r in pf.random:
        for v in _required(r.expr, data, f"random term {r.text}"):
            used.setdefault(v, f"random term {r.text}")
            rhs_vars.setdefault(v, f"random term {r.text}")
        for c in r.columns:
            used.setdefault(c, f"grouping factor of {r.origin or r.text}")
    if pf.response in rhs_vars:
        raise FormulaError(
            f"The response {pf.response!r} also appears on the right of '~' (in the {rhs_vars[pf.response]}); "
            "remove it there (a response cannot explain itself)."
        )
    if pf.cov is not None:
        for c in pf.cov.columns:
            used.setdefault(c, f"visit of {pf.cov.text}")
        used.setdefault(pf.cov.subject, f"subject of {pf.cov.text}")
        if pf.cov.group is not None:
            used.setdefault(pf.cov.group, f"group of {pf.cov.text}")
    for v in pf.variance:
        used.setdefault(v.column, f"variance function {v.text}")
    if weights is not None:
        used.setdefault(weights, "weights")
    for name, what in used.items():
        check_columns([name], data, what)
    if weights is not None and (not pd.api.types.is_numeric_dtype(data[weights])
                                or pd.api.types.is_bool_dtype(data[weights])):
        raise DataError(f"The weights column {weights!r} is not numeric (dtype {data[weights].dtype}); give one "
                        "positive number per row (the residual variance of a row is divided by its weight).")

    for name in used:
        col = data[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            isinf = np.isinf(col.to_numpy(dtype=float, na_value=np.nan))
            if isinf.any():
                raise DataError(
                    f"Column {name!r} has {int(isinf.sum())} infinite value(s), first at row "
                    f"{py_scalar(labels[np.argmax(isinf)])!r}; replace them with NaN (dropped as missing) or finite values."
                )

    subject_cols = (pf.cov.subject,) if pf.cov is not None else (
        pf.random[0].columns if len({r.group for r in pf.random}) == 1 else ())
    n_subjects_input = (int(data[list(subject_cols)].dropna().drop_duplicates().shape[0]) if subject_cols
                        else n_rows_input)
    miss = data[list(used)].isna()
    dropped_by_column = {c: int(n) for c, n in miss.sum().items() if n}
    keep = ~miss.any(axis=1)
    n_dropped = int((~keep).sum())
    if not keep.any():
        detail = ", ".join(f"{c!r} ({n} of {n_rows_input})" for c, n in dropped_by_column.items())
        raise DataError(
            f"No rows left after dropping rows with missing values in the model's columns; missing per column: "
            f"{detail}. Fill in or drop the mostly-missing columns from the formula."
        )
    row_index = np.nonzero(keep.to_numpy())[0]
    row_labels = labels[row_index]
    df = data.loc[keep].reset_index(drop=True)
    sqrt_w = None
    if weights is not None:
        w = df[weights].to_numpy(dtype=float)
        if (w <= 0).any():
            i = int(np.argmax(w <= 0))
            raise DataError(
                f"The weights column {weights!r} has {int((w <= 0).sum())} value(s) <= 0 (first {py_scalar(w[i])!r} at "
                f"row {py_scalar(row_labels[i])!r}); weights must be positive. Drop those rows (SAS ignores rows with "
                "a weight <= 0) or fix the weights."
            )
        sqrt_w = np.sqrt(w)

    # fixed effects
    mm, xnames = _model_matrix(pf.fixed, df, "fixed-effects matrix")
    Xfull = np.asarray(mm.to_numpy(dtype=float))
    if Xfull.shape[1] == 0:
        raise FormulaError("The fixed part has no columns; write '1' for an intercept-only model.")
    _check_finite(Xfull, xnames, "fixed-effects", row_labels)
    keep_cols = _independent_columns(Xfull)
    dropped = [xnames[j] for j in range(len(xnames)) if j not in set(keep_cols)]
    if dropped:
        warnings.warn(
            f"Fixed-effects model matrix is rank deficient: dropping {len(dropped)} aliased column(s) "
            f"{dropped} (linear combinations of earlier columns), as lme4 does.",
            UserWarning,
            stacklevel=3,
        )
    X = Xfull[:, keep_cols]
    fixed_names = [xnames[j] for j in keep_cols]

    # grouping factors: which are on the residual subject (level 1), which are level 2
    n = len(df)
    grouping = _grouping(pf, df, general={"auto": None, "general": True, "subjects": False}[engine])
    terms, subject, level1 = grouping.terms, grouping.subject, grouping.level1
    factors = grouping.factors

    # random effects, one block per correlated term (per column for "||")
    blocks, Zparts, re_specs = [], [], []
    for r in terms:
        zm, cols = _model_matrix(r.expr, df, f"random term {r.text}")
        Zr = np.asarray(zm.to_numpy(dtype=float))
        if Zr.shape[1] == 0:
            raise FormulaError(
                f"Random term {r.text} has no columns; write (1 | {r.group}) for a random intercept or drop the term."
            )
        _check_finite(Zr, cols, f"random term {r.text}", row_labels)
        re_specs.append(zm.model_spec)
        if r.structure not in (None, "un"):  # G side: re_cs(...), re_ar1(...), ...
            if len(cols) < 2 and r.structure != "diag":
                raise FormulaError(
                    f"The structured random term {r.origin or r.text} has one random effect ({cols[0]}); its "
                    f"{r.structure} covariance needs at least two (e.g. re_{r.structure}(0 + visit | {r.group}) with "
                    "a factor), or write the plain term (1 | group).")
            blocks.append(StructuredBlock(tuple(cols), r.group, make_structure(r.structure, len(cols))))
        elif r.correlated:
            blocks.append(RandomBlock(tuple(cols), r.group, True))
        else:
            blocks.extend(RandomBlock((c,), r.group, True) for c in cols)
        Zparts.append(Zr)
    for b in blocks:  # a k x k covariance needs more than k levels (a design for simulation may have fewer)
        nl = factors[b.group].n_levels
        if has_response and isinstance(b, RandomBlock) and b.k > 1 and nl <= b.k:
            raise DataError(
                f"The grouping factor {b.group!r} has {nl} levels in the usable rows but {b.k} correlated random effects "
                f"per level ({', '.join(b.columns)}): their {b.k} x {b.k} covariance needs at least {b.k + 1} levels. "
                "Drop random slopes, make them uncorrelated (||), or use a factor with more levels."
            )
    Zall = np.concatenate(Zparts, axis=1) if Zparts else np.zeros((n, 0))
    offs = np.cumsum([0] + [b.k for b in blocks])
    block_cols = [np.arange(offs[j], offs[j + 1]) for j in range(len(blocks))]
    l1 = [j for j, b in enumerate(blocks) if b.group in level1]
    Z = Zall[:, np.concatenate([block_cols[j] for j in l1])] if l1 else np.zeros((n, 0))
    if has_response:
        for j, b in enumerate(blocks):
            _check_identifiable(b, Zall[:, block_cols[j]], factors[b.group].codes, terms)

    # subjects (level 1) and visit positions
    if subject is not None:
        sf = grouping.subject_factor
        subj_levels = list(sf.values)
        s_code = sf.codes
    else:
        subj_levels = list(range(n))
        s_code = np.arange(n)
    S = len(subj_levels)
    if subject is not None and S < 2:
        raise DataError(
            f"Only {S} subject (column {subject!r}) has usable rows; a mixed model needs at least two subjects. "
            "Check the subject column and the rows dropped for missing values."
        )
    visit = pf.cov.visit if pf.cov is not None else None
    spatial = pf.cov is not None and pf.cov.structure in SPATIAL
    kron = pf.cov is not None and pf.cov.structure in KRONECKER
    per_subject = False  # a spatial structure with one covariance per subject (ModelData.D)
    if visit is not None:
        if spatial:
            levels, t_code, coords_row = spatial_positions(df, pf.cov.columns, pf.cov.text, s_code)
            if levels is None:  # each subject's own coordinates: its rows fill its columns
                per_subject = True
                levels = list(range(int(t_code.max()) + 1))
        elif kron:
            levels, t_code, kron_levels = _kron_positions(df, pf.cov, s_code)
        else:
            levels, t_code = visit_positions(df[visit], pf.cov.structure, visit, pf.cov.text, s_code)
        dup = pd.DataFrame({"s": s_code, "t": t_code}).duplicated(keep=False).to_numpy()
        if dup.any():
            i = int(np.nonzero(dup)[0][0])
            raise DataError(
                f"Subject {py_scalar(subj_levels[s_code[i]])!r} (column {subject!r}) has more than one row at visit "
                f"{py_scalar(levels[t_code[i]])!r} (column {visit!r}); the covariance term {pf.cov.text} needs one row per "
                "subject and visit. Aggregate or remove duplicates, or use a random-effects model instead."
            )
        T = len(levels)
        structure = pf.cov.structure
        vcol = pf.cov.columns[-1] if kron else visit
        textual = not spatial and not isinstance(df[vcol].dtype, pd.CategoricalDtype) and \
            not pd.api.types.is_numeric_dtype(df[vcol])
        if (structure in ("ar1", "arh1", "arma11", "un_ar1")) and textual:
            levels_t = kron_levels[1] if kron else levels
            natural = sorted(levels_t, key=natural_key)
            if natural != list(levels_t):
                warnings.warn(
                    f"The visit levels of column {vcol!r} are ordered as text ({', '.join(map(str, levels_t[:6]))}"
                    f"{', ...' if T > 6 else ''}), which sets the AR(1) lags in {pf.cov.text}; if that is not the "
                    f"time order, make {vcol!r} a pd.Categorical with its categories in time order, or a number.",
                    UserWarning,
                    stacklevel=3,
                )
    else:
        t_code = pd.Series(s_code).groupby(s_code).cumcount().to_numpy().astype(int)
        T = int(t_code.max()) + 1
        levels = list(range(T))
        structure = "id"
    has_corr = structure not in ("id", "diag")
    if has_corr and T < 2:
        raise DataError(
            f"The covariance term {pf.cov.text} needs at least two visit levels in column {visit!r}; found {T}."
        )
    if has_response and has_corr and np.bincount(s_code).max() < 2:
        raise DataError(
            f"No subject (column {subject!r}) has more than one usable row, so the correlation of {pf.cov.text} "
            "cannot be estimated. Check the subject column, or drop the covariance term (independent residuals)."
        )

    S_pad = bucket(S)
    p, q = X.shape[1], Z.shape[1]
    yv = df[pf.response].to_numpy(dtype=float) if has_response else np.zeros(n)
    Y = np.zeros((S_pad, T))
    M = np.zeros((S_pad, T))
    XX = np.zeros((S_pad, T, p))
    ZZ = np.zeros((S_pad, T, q))
    # observation weights (SAS WEIGHT): Var(e) = W^-1/2 R W^-1/2.  Rows of y, X and Z are scaled
    # by sqrt(w), so the payload's residual covariance is R and V* = W^1/2 V W^1/2; the deviance
    # of the data is that of the scaled rows minus sum(log w) (DesignInfo.deviance_offset)
    sw = np.ones(n) if sqrt_w is None else sqrt_w
    Y[s_code, t_code] = yv * sw
    M[s_code, t_code] = 1.0
    XX[s_code, t_code] = X * sw[:, None]
    ZZ[s_code, t_code] = Z * sw[:, None]

    # level 2: the plan (elimination order, chain and tail) and its index arrays
    plan, Z2, idx = None, None, None
    l2_names = [g for g in dict.fromkeys(b.group for b in blocks) if g not in level1]
    if l2_names:
        first = np.full(S, -1)
        first[s_code[::-1]] = np.arange(n)[::-1]  # a row of each subject
        specs = []
        for g in l2_names:
            js = [j for j, b in enumerate(blocks) if b.group == g]
            specs.append((g, factors[g].codes[first], factors[g].n_levels, js, sum(blocks[j].k for j in js)))
        plan, idx = plan_level2(specs, S_pad)
        if plan.m_tail > DENSE_LIMIT:
            tail = [f for f in plan.factors if not f.chained]
            what = ", ".join(f"{f.name!r} ({f.n_levels} levels x {f.k})" for f in tail)
            raise DataError(
                f"The crossed grouping factors {what} need a dense block of {plan.m_tail} x {plan.m_tail} in the "
                f"likelihood; this machine factors up to {DENSE_LIMIT} (one factorisation per evaluation). Drop or "
                "coarsen the factor with the most levels, model it as a fixed effect, or nest it in another factor."
            )
        cols2 = np.concatenate([block_cols[j] for f in plan.factors for j in f.blocks])
        Z2 = np.zeros((S_pad, T, len(cols2)))
        Z2[s_code, t_code] = Zall[:, cols2] * sw[:, None]

    D = None
    gcode, glevels = None, ()
    if pf.cov is not None and pf.cov.group is not None:
        if per_subject:
            raise FormulaError(
                f"A covariance per group ({pf.cov.text}) needs the coordinates of {pf.cov.visit} on a grid shared by "
                "the subjects (few distinct points); with each subject's own coordinates, fit the groups separately "
                "or drop the group.")
        gcode, glevels = _subject_groups(df, pf.cov, s_code, S, subj_levels)
        gs = np.zeros(S_pad, dtype=int)
        gs[:S] = gcode
        D = group_keys(gs, np.broadcast_to(np.arange(T), (S_pad, T)), T)
    variance, F_rows, var_labels = (), None, ()
    if pf.variance:
        variance = tuple((v, _ident_levels(df, v)) for v in pf.variance)
        F_rows, var_labels = variance_features(variance, df)
    if per_subject:
        Pc = np.zeros((S_pad, T, coords_row.shape[1]))
        Pc[s_code, t_code] = coords_row
        D = np.sqrt(np.sum((Pc[:, :, None, :] - Pc[:, None, :, :]) ** 2, axis=-1))
        # positions for start values and boundary checks: the mean coordinates of each column
        cnt = np.maximum(M.sum(axis=0), 1.0)
        pos = [tuple(float(x) for x in (Pc * M[..., None]).sum(axis=0)[t] / cnt[t]) for t in range(T)]
        resid = make_structure(structure, T, pos)
    else:
        if kron:
            resid = Kronecker(T, A=len(kron_levels[0]), second=KRONECKER[structure],
                              labels=tuple(tuple(visit_label(v) for v in lv) for lv in kron_levels))
        else:
            resid = make_structure(structure, T, [lv if isinstance(lv, tuple) else (lv,) for lv in levels] if spatial
                                   else ())
    if gcode is not None:
        resid = PerGroup(resid, pf.cov.group, tuple(glevels))
    if variance:
        _check_variance_identifiable(variance, F_rows, t_code, structure, pf, visit,
                                     len(kron_levels[1]) if kron else None)
        F = np.zeros((S_pad, T, F_rows.shape[1]))
        F[s_code, t_code] = F_rows
        own = D is not None
        if D is None:  # a key t_a T + t_b into the visit grid
            D = group_keys(np.zeros(S_pad, dtype=int), np.broadcast_to(np.arange(T), (S_pad, T)), T)
        D = pair_data(D, F)
        resid = VarFunction(resid, tuple(var_labels), own_data=own)
    spec = ModelSpec(blocks=tuple(blocks), resid=resid, T=T, plan=plan)

    # identifiability
    lvl1_blocks = [b for b in blocks if b.group in grouping.on_subject]
    if structure == "un" and lvl1_blocks:
        raise FormulaError(
            f"Random terms together with {pf.cov.text} are not identifiable: an unstructured residual "
            "covariance already absorbs them. Drop the random terms or choose ar1/arh1/diag."
        )
    if structure in ("cs", "csh") and any("(Intercept)" in b.columns for b in lvl1_blocks):
        raise FormulaError(
            f"A random intercept together with {pf.cov.text} is not identifiable (both add a constant "
            "covariance). Drop one of them."
        )
    if structure == "un":
        co = M.T @ M
        zero = np.argwhere(co == 0)
        if len(zero):
            i, j = zero[0]
            raise DataError(
                f"No subject has both visit {py_scalar(levels[i])!r} and {py_scalar(levels[j])!r} (column {visit!r}), so their "
                f"covariance in {pf.cov.text} cannot be estimated. Use a structured covariance (ar1, cs, ...)."
            )
    if n - p < 1:
        raise DataError(
            f"{n} usable rows cannot estimate {p} fixed effects and a residual variance; use fewer fixed effects."
        )
    if has_response and q and q * S >= n:  # (a simulation design may have one row per group)
        raise DataError(
            f"The random terms have {q * S} random effects ({q} per level of {subject!r} x {S} levels) but there are "
            f"only {n} usable rows, so they cannot be told apart from the residual. Check that {subject!r} groups "
            "several rows, or simplify the random terms."
        )
    if has_response and plan is not None:
        for f in plan.factors:
            if pf.cov is None and f.n_levels * f.k >= n:
                raise DataError(
                    f"The grouping factor {f.name!r} has {f.n_levels} levels x {f.k} random effects = "
                    f"{f.n_levels * f.k}, not fewer than the {n} usable rows, so they cannot be told apart from the "
                    f"residual. Check that {f.name!r} groups several rows, or drop or simplify its terms."
                )
    resid0 = yv - X @ np.linalg.lstsq(X, yv, rcond=None)[0]
    # the rule of fitting.ols_fit: a residual RMS below 1e-12 of the response's RMS
    if has_response and np.linalg.norm(resid0) <= 1e-12 * max(np.linalg.norm(yv), 1e-300):
        raise DataError(
            f"The response {pf.response!r} is fitted exactly by the fixed effects (e.g. it is constant), so there is "
            "no variation left to model; check the response column."
        )
    if spec.n_theta > n - p:
        parts = [f"{resid.n_params} in {pf.cov.text}" if pf.cov is not None else f"{resid.n_params} residual"]
        parts += [f"{b.n_params} in the random effects of {b.group!r}" for b in blocks if b.n_params]
        hint = {"un": f"cs({pf.cov.visit} | {pf.cov.subject}) or ar1({pf.cov.visit} | {pf.cov.subject}) ({T}-visit UN "
                      f"has {T * (T + 1) // 2})" if pf.cov is not None else "",
                "csh": "cs (2 parameters)", "arh1": "ar1 (2 parameters)", "diag": "no covariance term (1 parameter)"}
        try_ = hint.get(structure, "fewer random slopes or fewer visit levels")
        raise DataError(
            f"The model has {spec.n_theta} covariance parameters ({', '.join(parts)}) but only {n - p} residual "
            f"degrees of freedom ({n} rows, {p} fixed effects): the data cannot identify them. Use a simpler "
            f"structure, e.g. {try_}."
        )

    info = DesignInfo(
        formula=pf,
        fixed_names=fixed_names,
        dropped_aliased=dropped,
        x_spec=mm.model_spec,
        keep_cols=keep_cols,
        re_specs=re_specs,
        random_terms=tuple(terms),
        factors=factors,
        blocks=tuple(blocks),
        subject=subject,
        visit=visit,
        visit_levels=list(levels),
        visit_labels=[visit_label(v) for v in levels],
        subjects=list(subj_levels),
        n_obs=n,
        n_dropped=n_dropped,
        dropped_by_column=dropped_by_column,
        row_index=row_index,
        row_s=s_code,
        row_t=t_code,
        n_rows_input=n_rows_input,
        n_subjects_input=n_subjects_input,
        S=S,
        S_pad=S_pad,
        T=T,
        structure=structure,
        per_subject_cov=per_subject,
        resid_group=None if gcode is None else pf.cov.group,
        resid_group_levels=tuple(glevels),
        subject_group=gcode,
        variance=variance,
        weights=weights,
        row_sqrt_w=sqrt_w,
    )
    data_arrays = ModelData(y=Y, m=M, X=XX, Z=ZZ, Z2=Z2, idx=idx, D=D)
    return data_arrays, spec, info


_HETERO = ("un", "diag", "csh", "arh1", "adh", "toeph")


def _kron_positions(df, cov, s_code):
    """(levels as (type, visit) pairs, each row's position ``a V + t``, (type levels, visit
    levels)) of a Kronecker term ``un_ar1(type, visit | subject)``."""
    tcol, vcol = cov.columns
    types = levels_of(df[tcol])
    if len(types) < 2:
        raise DataError(
            f"The response-type column {tcol!r} of {cov.text} has one level ({py_scalar(types[0])!r}) in the usable "
            f"rows; a Kronecker structure needs two or more responses. Use {KRONECKER[cov.structure]}"
            f"({vcol} | {cov.subject}) for one response.")
    second = KRONECKER[cov.structure]
    vlev, v_code = visit_positions(df[vcol], second, vcol, cov.text, s_code)
    a_code = pd.Categorical(df[tcol], categories=types).codes.astype(int)
    V = len(vlev)
    return [(a, v) for a in types for v in vlev], a_code * V + v_code, (types, vlev)


def _ident_levels(df, v):
    """The levels of the factor of ``var_ident`` (first = reference), () for the other kinds;
    checks the column."""
    col = df[v.column]
    if v.kind == "ident":
        levels = levels_of(col)
        if len(levels) < 2:
            raise DataError(
                f"The column {v.column!r} of {v.text} has one level ({py_scalar(levels[0])!r}) in the usable rows; a "
                "variance per level needs at least two. Drop the term or check the column.")
        return tuple(levels)
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise DataError(
            f"The column {v.column!r} of {v.text} is not numeric (dtype {col.dtype}); {v.text.split('(')[0]} needs a "
            f"numeric covariate. For a variance per level of a factor use var_ident({v.column}).")
    x = col.to_numpy(dtype=float)
    if v.kind == "power" and (x <= 0).any():
        i = int(np.argmax(x <= 0))
        raise DataError(
            f"The column {v.column!r} of {v.text} has {int((x <= 0).sum())} value(s) <= 0 (first {py_scalar(x[i])!r}); "
            f"var_power multiplies the SD by {v.column}^delta and needs positive values. Shift the column (e.g. "
            f"{v.column} + 1), or use var_exp({v.column}).")
    return ()


def variance_features(variance, frame: pd.DataFrame):
    """(features [n, k], ((kind, label) per feature)) of the rows of ``frame`` for the variance
    functions ``variance`` (:attr:`DesignInfo.variance`; :mod:`jaxlmm.varfunc`).  A level of a
    ``var_ident`` factor that the fit has not seen is an error."""
    cols, labels = [], []
    for v, levels in variance:
        if v.column not in frame.columns:
            raise DataError(f"newdata has no column {v.column!r}, the covariate of the variance function {v.text}.")
        col = frame[v.column]
        if v.kind == "ident":
            lab = [visit_label(x) for x in levels]
            vals = [visit_label(x) if not pd.isna(x) else None for x in col.tolist()]
            unseen = sorted({x for x in vals if x is not None and x not in lab})
            if unseen:
                raise DataError(f"The column {v.column!r} has level(s) {', '.join(map(repr, unseen[:4]))} that the "
                                f"variance function {v.text} of the fit has no SD ratio for (levels: {', '.join(lab)}).")
            for level in lab[1:]:
                cols.append(np.array([1.0 if x == level else 0.0 for x in vals]))
                labels.append(("ident", f"varIdent[{v.column}={level}]"))
        else:
            x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                cols.append(np.log(x) if v.kind == "power" else x)
            labels.append((v.kind, f"var{v.kind.capitalize()}[{v.column}]"))
    return np.column_stack(cols), tuple(labels)


def _check_variance_identifiable(variance, F_rows, t_code, structure, pf, visit, n_visits=None):
    """A variance function that is a function of what the structure already gives a variance of
    (the visit for ``un``, ``csh``, ...; the response type for the Kronecker structures, and the
    visit too for ``un_un``) is not identifiable."""
    terms = ", ".join(v.text for v, _ in variance)
    F = pd.DataFrame(F_rows)
    if structure in KRONECKER:
        if (F.groupby(t_code // n_visits).nunique().to_numpy() <= 1).all():  # positions a V + t
            raise FormulaError(
                f"The variance functions ({terms}) are constant within each response type of {pf.cov.text}, whose "
                "unstructured U already has a variance per type: they are not identifiable. Drop them.")
        if structure != "un_un":
            return
    elif structure not in _HETERO:
        return
    for v, _ in variance:
        if v.column == visit:
            raise FormulaError(
                f"The variance function {v.text} together with {pf.cov.text} is not identifiable: the structure already "
                f"has a variance per visit of {visit!r}. Drop the variance function or use a structure with one "
                "variance (cs, ar1, toep, ad, ...).")
    if (F.groupby(t_code).nunique().to_numpy() <= 1).all():
        raise FormulaError(
            f"The variance functions ({terms}) are constant within each visit, so with {pf.cov.text} (a variance "
            "per visit) they are not identifiable. Drop them or use a structure with one variance.")


def _subject_groups(df, cov, s_code, S, subj_levels):
    """(group code of each subject [S], group labels) for ``un(visit | group / subject)``; the
    group must be constant within a subject and have at least two levels."""
    col = df[cov.group]
    codes, uniq = pd.factorize(col, sort=True)
    if isinstance(col.dtype, pd.CategoricalDtype):
        uniq = [c for c in col.cat.categories if c in set(col)]
        codes = pd.Categorical(col, categories=uniq).codes
    n_per = pd.Series(codes).groupby(s_code).nunique().to_numpy()
    if (n_per > 1).any():
        s = int(np.argmax(n_per > 1))
        vals = sorted({py_scalar(uniq[c]) for c in codes[s_code == s]}, key=str)
        raise DataError(
            f"The group column {cov.group!r} of {cov.text} varies within subject {py_scalar(subj_levels[s])!r} "
            f"(values {', '.join(map(repr, vals[:4]))}); a covariance per group needs one group per subject. Use a "
            "column that is constant within each subject, or a variance function for a factor that varies.")
    if len(uniq) < 2:
        raise DataError(
            f"The group column {cov.group!r} of {cov.text} has one level ({py_scalar(uniq[0])!r}) in the usable rows; "
            f"drop the group (write {cov.structure}({cov.visit} | {cov.subject})) or check the column.")
    g = np.zeros(S, dtype=int)
    g[s_code] = codes
    return g, [visit_label(v) for v in uniq]


def new_design_rows(info: DesignInfo, newdata: pd.DataFrame):
    """Fixed and random design matrices for new rows (same columns and coding as the fit)."""
    if not isinstance(newdata, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, not {type(newdata).__name__}.")
    pf = info.formula
    parts = [(pf.fixed, "fixed-effects formula", info.x_spec)]
    parts += [(r.expr, f"random term {r.text}", sp) for r, sp in zip(info.random_terms, info.re_specs)]
    mats = []
    for expr, what, spec in parts:
        check_columns(_required(expr, newdata, what), newdata, f"{what}, needed for prediction")
        try:
            with warnings.catch_warnings():  # a factor level the fit never saw: refuse, never NaN or 0
                warnings.simplefilter("error", DataMismatchWarning)
                mats.append(np.asarray(spec.get_model_matrix(newdata, na_action="ignore").to_numpy(dtype=float)))
        except DataMismatchWarning as w:
            raise DataError(
                f"newdata has a level that the fit never saw in the {what} ({_short(w)}); a fixed effect has no "
                "estimate for it. Predict only for levels of the fitted data."
            ) from None
        except Exception as e:  # e.g. a factor level not seen in the fit
            raise DataError(
                f"Cannot build the {what} for newdata from {expr!r}: {_short(e)} newdata must use the columns, "
                "types and factor levels of the data the model was fitted to."
            ) from None
    Xn = mats[0][:, info.keep_cols]
    Zn = np.concatenate(mats[1:], axis=1) if len(mats) > 1 else np.zeros((len(newdata), 0))
    return Xn, Zn
