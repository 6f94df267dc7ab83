"""Choosing a model: ranking candidate covariance structures or random-effects terms by an
information criterion, with likelihood-ratio tests between nested candidates
(:func:`jaxlmm.compare.compare`, :func:`jaxlmm.compare.lrt`)."""

from __future__ import annotations

import pandas as pd

from .compare import RESID_NESTED, lrt
from .formula import COVARIANCE_NAMES
from .errors import LMMError
from .model import fit as _fit

__all__ = ["Selection", "select_covariance", "select_random"]


class Selection:
    """Result of :func:`select_covariance` / :func:`select_random`.

    ``table``: one row per candidate (npar, logLik, AIC, AICc, BIC, converged), ranked by the
    criterion; ``lrt``: likelihood-ratio tests of the nested pairs (with their reference
    distribution); ``best``: the chosen fit; ``fits``: every fit by name.
    """

    def __init__(self, fits, table, lrt_table, criterion):
        self.fits, self.table, self.lrt, self.criterion = fits, table, lrt_table, criterion
        self.best_name = table.index[0]
        self.best = fits[self.best_name]

    def __repr__(self):
        return f"<Selection by {self.criterion}: best {self.best_name!r} of {len(self.fits)}>"

    def summary(self) -> str:
        fmt = lambda v: f"{v:.4g}"  # noqa: E731
        return (
            f"Candidates ranked by {self.criterion} (smaller is better):\n{self.table.to_string(float_format=fmt)}\n\n"
            f"Likelihood-ratio tests of nested pairs:\n{self.lrt.to_string(float_format=fmt)}\n\n"
            f"Chosen: {self.best_name}"
        )


def _rank(fits, criterion, pairs):
    import warnings

    crit = criterion.upper().replace("AICC", "AICc")
    if crit not in ("AIC", "AICc", "BIC"):
        raise LMMError(f"criterion must be 'aic', 'aicc' or 'bic', not {criterion!r}")
    rows = []
    for name, r in fits.items():
        rows.append({"candidate": name, "npar": r.n_params, "logLik": r.loglik, "AIC": r.aic, "AICc": r.aicc,
                     "BIC": r.bic, "converged": r.converged, "status": r.status_message})
    table = pd.DataFrame(rows).set_index("candidate")
    # non-converged fits rank last
    table = table.assign(_bad=~table.converged).sort_values(["_bad", crit]).drop(columns="_bad")
    lrows = []
    for a, b in pairs:
        if a in fits and b in fits:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = lrt(fits[a], fits[b])
            lrows.append({"null": a, "alternative": b, "LRT": t["statistic"], "df": t["df"], "p_value": t["p_value"],
                          "reference": t["reference"]})
    return table, pd.DataFrame(lrows)


def select_covariance(formula: str, data, visit: str, subject: str,
                      structures=("un", "cs", "csh", "ar1", "arh1"), criterion: str = "aic", reml: bool = True):
    """Fit one mean model with several residual covariance structures and rank them.

    ``formula`` is the mean model (``"y ~ arm * visit"``); each candidate adds
    ``structure(visit | subject)``.  All fits use the same fixed effects and method (REML by
    default, as SAS practice).  Any structure of :data:`jaxlmm.covariance.STRUCTURES` can be a
    candidate (``sp_exp`` and the other spatial ones need a numeric ``visit``: a time).  Nested
    pairs (:data:`jaxlmm.compare.RESID_NESTED`: CS in CSH in UN, AR(1) in ARH(1), ARMA(1,1) and
    TOEP, CS in TOEP in UN, AD in ADH in UN, DIAG in CSH/ARH(1), ...) get LRTs against
    ``chi2(df)`` (their null values are interior).  A candidate ``"un / arm"`` has a separate
    covariance per level of ``arm`` (``un(visit | arm / subject)``, SAS ``GROUP=arm``); the shared
    structure is nested in it.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> sel = lmm.select_covariance("CHG ~ ARMCD * AVISIT", lmm.example_trial(), visit="AVISIT",
    ...                             subject="USUBJID", structures=("cs", "ar1", "arh1"))
    >>> sel.best_name
    'arh1'
    """
    import warnings

    fits, canon = {}, {}
    for st in structures:
        name, _, group = (part.strip() for part in st.partition("/"))
        canon[st] = (COVARIANCE_NAMES.get(name.lower(), name), group or None)
        where = f"{group} / {subject}" if group else subject
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[st] = _fit(f"{formula} + {name}({visit} | {where})", data, reml=reml)

    def nests(a, b):  # a is a special case of b (a shared structure is one with equal groups)
        (sa, ga), (sb, gb) = canon[a], canon[b]
        same = sa == sb or ((sa, sb) in RESID_NESTED and (sb, sa) not in RESID_NESTED)
        return a != b and same and (ga is None or ga == gb) and (sa, ga) != (sb, gb)

    pairs = sorted((a, b) for a in structures for b in structures if nests(a, b))
    table, lrt_table = _rank(fits, criterion, pairs)
    return Selection(fits, table, lrt_table, criterion)


def select_random(formula: str, data, group: str, slope: str, criterion: str = "aic", reml: bool = True,
                  residual: str | None = None):
    """Compare random parts for a slope variable ``slope`` within ``group``:

    ``"intercept"`` (random intercept, fixed slope) ``(1 | g)``; ``"slope"`` (fixed intercept,
    random slope) ``(0 + x | g)``; ``"intercept+slope (uncorrelated)"`` ``(x || g)``;
    ``"intercept+slope"`` ``(x | g)``.  ``formula`` is the fixed part (it should contain
    ``slope``); ``residual`` optionally adds a covariance term such as ``"ar1(visit | id)"``.
    LRTs of nested pairs use the boundary-aware chi-bar-square mixtures (see the module doc).

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(40, 5, seed=1, cov="id", re_sd=(1.5, 0.6))
    >>> sel = lmm.select_random("y ~ time + arm", df, group="subject", slope="time")
    >>> sel.best_name in sel.fits and len(sel.lrt) == 4
    True
    """
    import warnings

    extra = f" + {residual}" if residual else ""
    cands = {
        "intercept": f"(1 | {group})",
        "slope": f"(0 + {slope} | {group})",
        "intercept+slope (uncorrelated)": f"({slope} || {group})",
        "intercept+slope": f"({slope} | {group})",
    }
    fits = {}
    for name, term in cands.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[name] = _fit(f"{formula} + {term}{extra}", data, reml=reml)
    pairs = [("intercept", "intercept+slope (uncorrelated)"), ("slope", "intercept+slope (uncorrelated)"),
             ("intercept", "intercept+slope"), ("intercept+slope (uncorrelated)", "intercept+slope")]
    table, lrt_table = _rank(fits, criterion, pairs)
    return Selection(fits, table, lrt_table, criterion)


