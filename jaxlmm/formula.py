"""Parse ``"y ~ fixed + (re | g) + un(visit | subject)"`` into its three parts.

The fixed part is handed to formulaic unchanged (treatment contrasts, ``C()``, interactions,
transforms).  Random terms follow lme4: ``(1 | g)``, ``(0 + x | g)``, ``(1 + x | g)`` /
``(x | g)`` (intercept implied), ``(1 + x || g)`` (uncorrelated).  A covariance term
``name(visit | subject)`` sets the within-subject (R-side) residual covariance; without one
the residuals are ``sigma^2 I``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FormulaError

__all__ = ["COVARIANCE_NAMES", "RandomTerm", "CovTerm", "ParsedFormula", "parse_formula"]

#: accepted covariance-term names -> canonical structure name
COVARIANCE_NAMES = {
    "un": "un",
    "us": "un",
    "cs": "cs",
    "csh": "csh",
    "ar1": "ar1",
    "arh1": "arh1",
    "ar1h": "arh1",
    "diag": "diag",
}

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class RandomTerm:
    expr: str  # left of the bar, e.g. "1 + Days"
    group: str  # grouping column
    correlated: bool  # False for "||"
    text: str  # the term as written


@dataclass(frozen=True)
class CovTerm:
    structure: str  # canonical name (un, cs, csh, ar1, arh1, diag)
    visit: str
    subject: str
    text: str


@dataclass(frozen=True)
class ParsedFormula:
    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]
    cov: CovTerm | None


def _caret(text: str, pos: int, msg: str) -> FormulaError:
    return FormulaError(f"{msg}\n  {text}\n  {' ' * pos}^")


def _split_top(text: str, sep: str, offset: int = 0, full: str | None = None) -> list[tuple[str, int]]:
    """Split on ``sep`` at parenthesis depth 0; return (piece, start offset) pairs."""
    full = text if full is None else full
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise _caret(full, offset + i, "Formula has an unmatched ')'.")
        elif ch == sep and depth == 0:
            parts.append((text[start:i], offset + start))
            start = i + 1
    if depth != 0:
        pos = offset + text.rfind("(")
        raise _caret(full, pos, "Formula has an unclosed '(': add the missing ')'.")
    parts.append((text[start:], offset + start))
    return parts


def _inner_bar(inner: str) -> tuple[str, str, bool] | None:
    """If ``inner`` has a top-level '|' (or '||'), return (lhs, rhs, correlated)."""
    depth = 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
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
    if not _NAME.match(response):
        raise _caret(text, 0, f"The response {response!r} must be a column name (transform the column first).")
    if not rhs.strip():
        raise _caret(text, len(text), "Formula has nothing right of '~': add terms, or '1' for intercept only.")

    fixed_terms: list[str] = []
    random: list[RandomTerm] = []
    cov: CovTerm | None = None
    for piece, off in _split_top(rhs, "+", rhs_off, text):
        term = piece.strip()
        pos = off + (len(piece) - len(piece.lstrip()))
        if not term:
            raise _caret(text, pos, "Formula has an empty term (two '+' in a row or a trailing '+').")
        # random term: "( lhs | g )"
        if term.startswith("(") and term.endswith(")") and _matching(term) == len(term) - 1:
            bar = _inner_bar(term[1:-1])
            if bar is not None:
                expr, grp, correlated = bar[0].strip(), bar[1].strip(), bar[2]
                if not expr:
                    raise _caret(text, pos, f"Random term {term!r} has nothing left of '|': write (1 | {grp or 'g'}).")
                if not _NAME.match(grp):
                    raise _caret(
                        text, pos, f"Random term {term!r}: the grouping factor right of '|' must be one column name."
                    )
                random.append(RandomTerm(expr=expr, group=grp, correlated=bool(correlated), text=term))
                continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)$", term, re.S)
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
                if not _NAME.match(visit) or not _NAME.match(subject):
                    raise _caret(
                        text,
                        pos,
                        f"Covariance term {term!r} must be {name}(visit | subject) with one column on each side.",
                    )
                if cov is not None:
                    raise _caret(text, pos, "Formula has more than one covariance term; keep one.")
                cov = CovTerm(structure=COVARIANCE_NAMES[key], visit=visit, subject=subject, text=term)
                continue
        if "|" in term:
            raise _caret(text, pos, f"Term {term!r} has a '|' but is not a random term; write it as (expr | group).")
        fixed_terms.append(term)
    fixed = " + ".join(fixed_terms) if fixed_terms else "1"
    return ParsedFormula(text=text, response=response, fixed=fixed, random=tuple(random), cov=cov)


def _matching(s: str, start: int = 0) -> int:
    """Index of the ')' matching the '(' at ``start``."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1
