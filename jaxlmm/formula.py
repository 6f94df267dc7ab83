"""Parse ``"y ~ fixed + (re | g) + un(visit | subject)"`` into its three parts.

The fixed part is handed to formulaic (treatment contrasts, ``C()``, interactions,
transforms), with one change for R users: ``^`` inside a call such as ``I(age^2)`` is a power
(Python's ``**``), not Python's bitwise XOR.  Column names may be quoted in backticks.  Random terms follow lme4: ``(1 | g)``, ``(0 + x | g)``, ``(1 + x | g)`` /
``(x | g)`` (intercept implied), ``(1 + x || g)`` (uncorrelated).  The grouping factor may be
an interaction ``a:b`` (one level per observed combination) or nested ``a/b``, which expands as
in lme4 to the two terms ``(... | a) + (... | b:a)``; ``a/b/c`` gives ``a``, ``b:a`` and
``c:b:a``.  A covariance term
``name(visit | subject)`` sets the within-subject (R-side) residual covariance; without one
the residuals are ``sigma^2 I``.  Variance functions ``var_ident(sex)``, ``var_power(x)``,
``var_exp(x)`` (nlme's ``varIdent(form = ~ 1 | sex)``, ``varPower(form = ~ x)``,
``varExp(form = ~ x)``; ``var_ident(~ 1 | sex)`` is accepted too) scale the residual SDs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FormulaError

__all__ = ["COVARIANCE_NAMES", "SPATIAL_NAMES", "KRONECKER_NAMES", "VARIANCE_NAMES", "RandomTerm", "CovTerm", "VarTerm", "ParsedFormula",
           "parse_formula"]

#: accepted covariance-term names -> canonical structure name
COVARIANCE_NAMES = {
    "un": "un",
    "us": "un",
    "cs": "cs",
    "csh": "csh",
    "ar1": "ar1",
    "arh1": "arh1",
    "ar1h": "arh1",
    "ad": "ad",
    "adh": "adh",
    "toep": "toep",
    "toeph": "toeph",
    "diag": "diag",
    "arma11": "arma11",
    "arma": "arma11",
    "sp_exp": "sp_exp",
    "car1": "sp_pow",
    "sp_gau": "sp_gau",
    "sp_pow": "sp_pow",
    "un_ar1": "un_ar1",
    "un_cs": "un_cs",
    "un_un": "un_un",
}

#: Kronecker structures: ``un_ar1(type, visit | subject)`` (SAS TYPE=UN@AR(1))
KRONECKER_NAMES = ("un_ar1", "un_cs", "un_un")

#: variance-function terms (nlme ``weights = varIdent(...)``, ...) -> canonical kind
VARIANCE_NAMES = {"var_ident": "ident", "varident": "ident", "var_power": "power", "varpower": "power",
                  "var_exp": "exp", "varexp": "exp"}

#: structured random terms ``re_<name>(effects | group)`` -> the structure of their covariance
RE_STRUCTURE_NAMES = {"diag": "diag", "cs": "cs", "csh": "csh", "ar1": "ar1", "arh1": "arh1", "ar1h": "arh1",
                      "toep": "toep", "toeph": "toeph", "ad": "ad", "adh": "adh", "un": "un", "us": "un"}

#: structures of distances between coordinates: ``sp_exp(x, y | subject)`` takes several columns
SPATIAL_NAMES = ("sp_exp", "sp_gau", "sp_pow")

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


def _column(name: str) -> str | None:
    """The column a name in the formula refers to: a plain name (any Unicode identifier, dots
    allowed, as R), or any text quoted in backticks (``\`my col\```); None if it is neither."""
    name = name.strip()
    if len(name) > 2 and name[0] == name[-1] == "`" and "`" not in name[1:-1]:
        return name[1:-1]
    if _NAME.match(name) or name.replace(".", "_").isidentifier():
        return name
    return None


def _python_powers(term: str) -> str:
    """``^`` inside a function call or ``{...}`` of a fixed-effects term means a power, as in R
    (``I(age^2)`` is age squared): rewritten to Python's ``**``.  Outside calls ``^`` keeps
    formulaic's meaning, the interactions up to an order (``(a + b)^2``)."""
    out, stack, quote = [], [], None
    for i, ch in enumerate(term):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            before = term[:i].rstrip()
            stack.append("call" if before and (before[-1].isalnum() or before[-1] in "_.") else "group")
        elif ch == "{":
            stack.append("call")
        elif ch in ")}" and stack:
            stack.pop()
        elif ch == "^" and "call" in stack:
            out.append("**")
            continue
        out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class RandomTerm:
    expr: str  # left of the bar, e.g. "1 + Days"
    group: str  # name of the grouping factor: a column, or an interaction such as "cask:batch"
    correlated: bool  # False for "||"
    text: str  # the term (as written, or as expanded from a nested "a/b" term)
    factors: tuple[str, ...] = ()  # the columns whose combinations are the levels (default: (group,))
    origin: str = ""  # the term as written when it was expanded from "a/b" (else "")
    structure: str | None = None  # G-side structure of ``re_cs(...)`` etc. (jaxlmm.gside); None: unstructured

    @property
    def columns(self) -> tuple[str, ...]:
        return self.factors or (self.group,)


@dataclass(frozen=True)
class CovTerm:
    """``structure(visit | subject)``; a spatial term may name several coordinate columns
    (``sp_exp(x, y | subject)``) and a Kronecker term two (``un_ar1(type, visit | subject)``):
    ``coords`` lists them and ``visit`` is their text ``"x, y"``."""

    structure: str  # canonical name (a key of jaxlmm.covariance.STRUCTURES)
    visit: str
    subject: str
    text: str
    coords: tuple[str, ...] = ()
    group: str | None = None  # ``un(visit | arm / subject)``: a covariance per level of ``arm``

    @property
    def columns(self) -> tuple[str, ...]:
        """The visit or coordinate columns."""
        return self.coords or (self.visit,)


@dataclass(frozen=True)
class VarTerm:
    """A variance function ``var_ident(sex)``, ``var_power(x)`` or ``var_exp(x)`` (residual SDs
    multiplied by a function of a column)."""

    kind: str  # "ident", "power" or "exp"
    column: str
    text: str


@dataclass(frozen=True)
class ParsedFormula:
    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]
    cov: CovTerm | None
    variance: tuple[VarTerm, ...] = ()


def _caret(text: str, pos: int, msg: str, width: int = 1) -> FormulaError:
    return FormulaError(f"{msg}\n  {text}\n  {' ' * pos}{'^' * max(width, 1)}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _syntax_error(expr: str) -> tuple[str, int, int] | None:
    """formulaic's complaint about ``expr`` as (message, start, width), or None if it parses.

    formulaic marks the offending span as ``⧛...⧚`` in the last paragraph of its message; the
    span is mapped back to a position in ``expr`` (start -1 when it cannot be located)."""
    import formulaic

    try:
        formulaic.Formula(expr)
    except Exception as e:  # formulaic raises its own FormulaSyntaxError / parser errors
        raw = _ANSI.sub("", str(e))
        head, _, marked = raw.rpartition("\n\n")
        msg = (head or raw).strip()
        start, width = -1, 1
        if "⧛" in marked and "⧚" in marked:
            i = marked.index("⧛")
            j = marked.index("⧚")
            if marked.replace("⧛", "").replace("⧚", "") == expr:
                start, width = i, max(j - i - 1, 1)
        msg = msg.replace("⧛", "").replace("⧚", "")
        return msg, start, width
    return None


def _check_syntax(expr: str, full: str, offset: int, what: str) -> None:
    """Raise a FormulaError with a caret under the bad span if formulaic cannot parse ``expr``
    (stripped; it starts at ``offset`` in ``full``).  ``what`` names it, e.g. "the term 'a b'"."""
    err = _syntax_error(expr)
    if err is None:
        return
    msg, start, width = err
    if not msg.endswith((".", "!", "?", ")")):
        msg += "."
    text = f"Cannot parse {what}: {msg} Fix the formula at the marked position."
    if start < 0:
        raise _caret(full, offset, text, len(expr))
    raise _caret(full, offset + start, text, width)


_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}


def _scan(text: str):
    """Yield ``(index, char, depth)`` for characters outside quotes and backticks; ``depth``
    counts the open (), [] and {} before the character.  Raises on an unmatched closer."""
    depth, quote = 0, None
    for i, ch in enumerate(text):
        if quote is not None:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"`":
            quote = ch
            continue
        if ch in _CLOSE:
            depth -= 1
        yield i, ch, depth
        if ch in _OPEN:
            depth += 1


def _split_top(text: str, sep: str, offset: int = 0, full: str | None = None) -> list[tuple[str, int]]:
    """Split on ``sep`` outside brackets and quotes; return (piece, start offset) pairs."""
    full = text if full is None else full
    parts, start, stack = [], 0, []
    for i, ch, depth in _scan(text):
        if ch in _OPEN:
            stack.append(i)
        elif ch in _CLOSE:
            if depth < 0 or text[stack[-1]] != _CLOSE[ch]:
                raise _caret(full, offset + i, f"Formula has an unmatched {ch!r}.")
            stack.pop()
        elif ch == sep and depth == 0:
            parts.append((text[start:i], offset + start))
            start = i + 1
    if stack:
        o = text[stack[-1]]
        raise _caret(full, offset + stack[-1], f"Formula has an unclosed {o!r}: add the missing {_OPEN[o]!r}.")
    parts.append((text[start:], offset + start))
    return parts


def _inner_bar(inner: str) -> tuple[str, str, bool] | None:
    """If ``inner`` has a top-level '|' (or '||'), return (lhs, rhs, correlated)."""
    for i, ch, depth in _scan(inner):
        if ch == "|" and depth == 0:
            if inner[i + 1 : i + 2] == "|":
                return inner[:i], inner[i + 2 :], False
            return inner[:i], inner[i + 1 :], True
    return None


def parse_formula(formula: str) -> ParsedFormula:
    """Split a jaxlmm formula into response, fixed part, random terms and covariance term.

    Examples
    --------
    >>> p = parse_formula("y ~ time * arm + (1 | id) + ar1(visit | id)")
    >>> p.response, p.fixed, p.random[0].group, p.cov.structure
    ('y', 'time * arm', 'id', 'ar1')
    """
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError("The formula must be a non-empty string like 'y ~ x + (1 | subject)'.")
    text = formula.strip()
    tilde = _split_top(text, "~")
    if len(tilde) != 2:
        if len(tilde) == 1:
            raise FormulaError(f"Formula {text!r} has no '~': write it as 'response ~ terms'.")
        raise _caret(text, tilde[2][1] - 1, "Formula has more than one '~'.")
    (lhs, _), (rhs, rhs_off) = tilde
    response = lhs.strip()
    if not response:
        raise _caret(text, 0, "Formula has no response left of '~': write 'y ~ ...'.")
    if _column(response) is None:
        raise _caret(text, 0, f"The response {response!r} must be a column name (transform the column first, e.g. "
                              "df['log_y'] = np.log(df['y']); quote a name with spaces in backticks: `my y`).")
    response = _column(response)
    if not rhs.strip():
        raise _caret(text, len(text), "Formula has nothing right of '~': add terms, or '1' for intercept only.")

    fixed_terms: list[str] = []
    random: list[RandomTerm] = []
    cov: CovTerm | None = None
    variance: list[VarTerm] = []
    for piece, off in _split_top(rhs, "+", rhs_off, text):
        term = piece.strip()
        pos = off + (len(piece) - len(piece.lstrip()))
        if not term:
            raise _caret(text, pos, "Formula has an empty term (two '+' in a row or a trailing '+').")
        # a structured random term "re_cs( lhs | g )" (G side; glmmTMB's cs(lhs | g))
        re_struct, rterm = None, term
        mre = re.match(r"^re_([A-Za-z0-9_]+)\s*\(", term)
        if mre and term.endswith(")") and _matching(term, mre.end() - 1) == len(term) - 1:
            key = mre.group(1).lower()
            if key not in RE_STRUCTURE_NAMES:
                raise _caret(text, pos, f"Unknown random-effect structure re_{mre.group(1)}; valid: "
                                        f"{', '.join('re_' + k for k in sorted(RE_STRUCTURE_NAMES))}.")
            re_struct, rterm = RE_STRUCTURE_NAMES[key], term[mre.end() - 1 :]
            if _inner_bar(rterm[1:-1]) is None or not _inner_bar(rterm[1:-1])[2]:
                raise _caret(text, pos, f"Structured random term {term!r} must be re_{key}(effects | group) with "
                                        "one '|'.")
        # random term: "( lhs | g )"
        if rterm.startswith("(") and rterm.endswith(")") and _matching(rterm) == len(rterm) - 1:
            bar = _inner_bar(rterm[1:-1])
            if bar is not None:
                expr, grp, correlated = bar[0].strip(), bar[1].strip(), bar[2]
                if not expr:
                    raise _caret(text, pos, f"Random term {term!r} has nothing left of '|': write (1 | {grp or 'g'}).")
                levels = _grouping(grp, term, text, pos)
                lhs = bar[0]
                where = pos + 1 + len(lhs) - len(lhs.lstrip())
                _check_syntax(expr, text, where, f"{expr!r} (left of '|' in random term {term!r})")
                bar_s = "||" if not correlated else "|"
                expanded = len(levels) > 1
                for j in range(len(levels)):
                    # lme4's names: the inner factor first ("b:a" for a/b)
                    cols = tuple(c for lev in reversed(levels[: j + 1]) for c in lev)
                    name = ":".join(cols)
                    random.append(RandomTerm(
                        expr=expr, group=name, correlated=bool(correlated),
                        text=(f"re_{re_struct}({expr} | {name})" if re_struct else f"({expr} {bar_s} {name})")
                        if expanded else term,
                        factors=cols, origin=term if expanded else "", structure=re_struct))
                continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)$", term, re.S)
        if m and _matching(term, term.index("(")) == len(term) - 1 and m.group(1).lower() in VARIANCE_NAMES:
            name, inner = m.group(1), m.group(2).strip()
            inner = inner.lstrip("~").strip()  # nlme's form: ~ x, ~ 1 | sex
            if "|" in inner and inner.split("|")[0].strip() == "1":
                inner = inner.split("|", 1)[1].strip()
            col = _column(inner)
            if col is None:
                raise _caret(text, pos, f"Variance function {term!r} must name one column: {name}(column), e.g. "
                                        f"var_ident(sex), var_power(dose), var_exp(age).")
            kind = VARIANCE_NAMES[name.lower()]
            if any(v.column == col and v.kind == kind for v in variance):
                raise _caret(text, pos, f"Variance function {term!r} appears twice; keep one.")
            variance.append(VarTerm(kind=kind, column=col, text=term))
            continue
        if m and _matching(term, term.index("(")) == len(term) - 1:
            name, inner = m.group(1), m.group(2)
            bar = _inner_bar(inner)
            if bar is not None:
                key = name.lower()
                if key not in COVARIANCE_NAMES:
                    valid = ", ".join(sorted(COVARIANCE_NAMES))
                    raise _caret(text, pos, f"Unknown covariance structure {name!r}. Valid names: {valid}.")
                visit, subject, correlated = bar
                visit, subject = visit.strip(), subject.strip()
                if not correlated:
                    raise _caret(text, pos, f"Covariance term {term!r} uses '||'; write {name}(visit | subject).")
                group = None
                sides = [v.strip() for v, _ in _split_top(subject, "/")]
                if len(sides) == 2:  # mmrm's un(visit | group / subject): a covariance per group
                    group, subject = _column(sides[0]), sides[1]
                    if group is None or _column(subject) is None or group == _column(subject):
                        raise _caret(text, pos, f"Covariance term {term!r} must be {name}(visit | group / subject) "
                                                "with one group column and one subject column.")
                elif len(sides) > 2:
                    raise _caret(text, pos, f"Covariance term {term!r} has more than one '/'; write "
                                            f"{name}(visit | group / subject) for a covariance per group.")
                parts = [v.strip() for v, _ in _split_top(visit, ",")]
                kron = COVARIANCE_NAMES[key] in KRONECKER_NAMES
                if kron and len(parts) != 2:
                    raise _caret(text, pos, f"Covariance term {term!r} is a Kronecker structure: write "
                                            f"{name}(type, visit | subject) with the column of the response type "
                                            "(which variable) and the visit column.")
                if (COVARIANCE_NAMES[key] in SPATIAL_NAMES and len(parts) > 1) or kron:
                    coords = tuple(_column(v) for v in parts)
                    if None in coords or _column(subject) is None or len(set(coords)) < len(coords):
                        raise _caret(text, pos, f"Covariance term {term!r} must be {name}("
                                                f"{'type, visit' if kron else 'x, y'} | subject) with distinct "
                                                "columns and one subject column.")
                    if subject in coords:
                        raise _caret(text, pos, f"Covariance term {term!r} uses {subject!r} as a coordinate and the "
                                                "subject.")
                    if cov is not None:
                        raise _caret(text, pos, "Formula has more than one covariance term; keep one.")
                    cov = CovTerm(structure=COVARIANCE_NAMES[key], visit=", ".join(coords), subject=_column(subject),
                                  text=term, coords=coords, group=group)
                    continue
                if _column(visit) is None or _column(subject) is None:
                    raise _caret(
                        text,
                        pos,
                        f"Covariance term {term!r} must be {name}(visit | subject) with one column on each side "
                        "(quote a name with spaces in backticks).",
                    )
                visit, subject = _column(visit), _column(subject)
                if visit == subject:
                    raise _caret(
                        text,
                        pos,
                        f"Covariance term {term!r} uses {visit!r} as both visit and subject; write "
                        f"{name}(visit_column | subject_column) with two different columns.",
                    )
                if cov is not None:
                    raise _caret(text, pos, "Formula has more than one covariance term; keep one.")
                if group in (visit, subject) and group is not None:
                    raise _caret(text, pos, f"Covariance term {term!r} uses {group!r} as the group and as the "
                                            "visit or subject.")
                cov = CovTerm(structure=COVARIANCE_NAMES[key], visit=visit, subject=subject, text=term, group=group)
                continue
        if "|" in term:
            raise _caret(
                text,
                pos,
                f"Term {term!r} has a '|' but is not a random term: add random terms with '+' as "
                "(expr | group), on their own (drop the intercept with '0 +' in the fixed part).",
            )
        _check_syntax(term, text, pos, f"the fixed-effects term {term!r}")
        fixed_terms.append(_python_powers(term))
    fixed = " + ".join(fixed_terms) if fixed_terms else "1"
    return ParsedFormula(text=text, response=response, fixed=fixed, random=tuple(random), cov=cov,
                         variance=tuple(variance))


def _grouping(grp: str, term: str, text: str, pos: int) -> list[tuple[str, ...]]:
    """The grouping expression right of '|' as nesting levels, outermost first: ``"a"`` ->
    ``[("a",)]``, ``"a:b"`` -> ``[("a", "b")]``, ``"a/b"`` -> ``[("a",), ("b",)]``."""
    levels = []
    for part in grp.split("/"):
        cols = tuple(_column(c) for c in part.split(":"))
        if not all(cols):
            raise _caret(
                text, pos,
                f"Random term {term!r}: the grouping factor right of '|' must be a column name, an interaction of "
                "columns (a:b) or nested columns (a/b), e.g. (1 | school/class).",
            )
        if len(set(cols)) < len(cols):
            raise _caret(text, pos, f"Random term {term!r} repeats a column in the grouping factor {grp!r}.")
        levels.append(cols)
    flat = [c for lev in levels for c in lev]
    if len(set(flat)) < len(flat):
        raise _caret(text, pos, f"Random term {term!r} repeats a column in the grouping factor {grp!r}.")
    return levels


def _matching(s: str, start: int = 0) -> int:
    """Index of the bracket matching the opening one at ``start``."""
    level = None
    for i, ch, depth in _scan(s):
        if i == start:
            level = depth
        elif level is not None and ch in _CLOSE and depth == level:
            return i
    return -1
