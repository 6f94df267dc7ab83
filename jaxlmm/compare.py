"""Comparing fitted models: information criteria and likelihood-ratio tests.

``compare(*results)`` lists npar, logLik, AIC, AICc, BIC (SAS conventions, see
:class:`~jaxlmm.results.LMMResult`) and, between consecutive models (ordered by npar), the LRT
statistic ``2 (logLik_big - logLik_small)``, its df and p-value.

Variance components on the boundary: when the larger model only adds random effects, the null
value of a variance lies on the edge of the parameter space and the LRT statistic follows a
chi-bar-square mixture (Self and Liang 1987; Stram and Lee 1994):

* one more uncorrelated variance: ``0.5 chi2(0) + 0.5 chi2(1)``, ``p = 0.5 P(chi2_1 > T)``;
* a k-th random effect correlated with k-1 existing ones (its variance and k-1 covariances):
  ``0.5 chi2(k-1) + 0.5 chi2(k)``, e.g. a random slope with its covariance added to a random
  intercept: ``0.5 chi2(1) + 0.5 chi2(2)``.

Otherwise the plain ``chi2(df)`` reference is used.  The method is stated in the output.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .distributions import chi2_sf
from .checks import check_count, check_seed
from .errors import ArgumentError, LMMError

__all__ = ["compare", "lrt", "nested", "bootstrap_lrt", "check_comparable"]


def _mixture(small, big):
    """The chi-bar-square mixture (a, b) when ``big`` only adds random effects to ``small``: one
    more random effect, uncorrelated (a = 0, b = 1) or correlated with the k - 1 others of its
    grouping factor's block (a = k - 1, b = k)."""
    ss, sb = small.model.spec, big.model.spec
    # the same residual structure (sigma^2 I is the same whatever the layout of the rows)
    if ss.resid.name != sb.resid.name or (ss.resid.name != "id" and ss.resid.T != sb.resid.T) or \
            _resid_group(ss) != _resid_group(sb):
        return None
    if any(getattr(b, "structure", None) is not None for b in ss.blocks + sb.blocks):
        return None  # structured blocks (re_cs, ...): no chi-bar-square rule here
    blocks_s = [(set(b.columns), b.group) for b in ss.blocks]
    blocks_b = [(set(b.columns), b.group, b.correlated) for b in sb.blocks]
    # every block of the small model must survive unchanged or grow inside one big block of its factor
    if not all(any(g == h and s <= cols for cols, h, _ in blocks_b) for s, g in blocks_s):
        return None
    added = [(cols - next((s for s, h in blocks_s if h == g and s <= cols), set()), cols, corr)
             for cols, g, corr in blocks_b]
    new = [(a, cols, corr) for a, cols, corr in added if a]
    if len(new) != 1 or len(new[0][0]) != 1:
        return None
    _, cols, corr = new[0]
    k = len(cols) if corr else 1
    return (k - 1, k)


#: residual structures nested in others (same visits): a special case by a restriction of the
#: parameters to interior values (so an LRT of the pair is chi-square)
RESID_NESTED = {("id", b) for b in ("cs", "csh", "ar1", "arh1", "ad", "adh", "un", "diag")} | {
    ("cs", "csh"), ("cs", "un"), ("csh", "un"), ("ar1", "arh1"), ("ar1", "un"), ("arh1", "un"),
    ("diag", "csh"), ("diag", "arh1"), ("diag", "un"), ("diag", "adh"),
    ("ar1", "ad"), ("ar1", "adh"), ("arh1", "adh"), ("ad", "adh"), ("ad", "un"), ("adh", "un"),
    ("id", "toep"), ("id", "toeph"), ("cs", "toep"), ("cs", "toeph"), ("csh", "toeph"), ("ar1", "toep"),
    ("ar1", "toeph"), ("arh1", "toeph"), ("diag", "toeph"), ("toep", "toeph"), ("toep", "un"), ("toeph", "un"),
    ("id", "arma11"), ("ar1", "arma11"), ("arma11", "toep"), ("arma11", "toeph"), ("arma11", "un"),
    ("sp_exp", "sp_pow"), ("sp_pow", "sp_exp"), ("sp_exp", "un"), ("sp_gau", "un"), ("sp_pow", "un"),
    ("un_ar1", "un_un"), ("un_cs", "un_un")}


def _resid_group(spec):
    """The column of a covariance per group (``un(visit | arm / subject)``), or None."""
    return getattr(spec.resid, "group", None)


def nested(small, big):
    """True when ``small`` is a special case of ``big``, False when it is known not to be (the
    same random part and residual structures that do not nest, e.g. CSH and AR(1)), None when
    it cannot be told from the model terms.  A shared structure is nested in the same one per
    group (equal parameters in every group), not the other way round."""
    ss, sb = small.model.spec, big.model.spec
    rs, rb = ss.resid.name, sb.resid.name
    gs, gb = _resid_group(ss), _resid_group(sb)
    resid_ok = (rs == rb or (rs, rb) in RESID_NESTED) and (gs is None or gs == gb)
    cols_s = [frozenset(b.columns) | {b.group} for b in ss.blocks]
    cols_b = [frozenset(b.columns) | {b.group} for b in sb.blocks]
    if sorted(map(sorted, cols_s)) == sorted(map(sorted, cols_b)) and not resid_ok:
        return False
    # a block nests in a block with its columns and a structure it is a special case of
    # (re_cs in re_csh in the unstructured term, re_ar1 in it, ...)
    kind = lambda b: getattr(b, "kind", "un") if b.k > 1 else "un"  # noqa: E731
    inside = lambda a, b: a[0] <= b[0] and (a[1] == b[1] or (a[1], b[1]) in RESID_NESTED)  # noqa: E731
    ks = [(c, kind(b)) for c, b in zip(cols_s, ss.blocks)]
    kb = [(c, kind(b)) for c, b in zip(cols_b, sb.blocks)]
    blocks_ok = all(any(inside(a, b) for b in kb) for a in ks)
    fixed_ok = set(small.info.fixed_names) <= set(big.info.fixed_names)
    return True if (resid_ok and blocks_ok and fixed_ok) else None


def _is_fit(r) -> bool:
    return all(hasattr(r, a) for a in ("record", "model", "loglik", "info"))


def _used_response(r):
    a, info = r.model.arrays, r.info
    return np.asarray(info.row_index), np.asarray(a.y)[info.row_s, info.row_t]


def check_comparable(results, names=None) -> None:
    """Every item is a fit, all by one method (REML or ML), all of the same response values on
    the same rows: otherwise their likelihoods are not comparable."""
    names = names or [f"model{i + 1}" for i in range(len(results))]
    for name, r in zip(names, results):
        if not _is_fit(r):
            raise ArgumentError(f"{name} is a {type(r).__name__}, not a fitted model (the result of lmm.fit or "
                                "Model.fit).")
    r0 = results[0]
    rows0, y0 = _used_response(r0)
    for name, r in zip(names, results):
        if r.reml != r0.reml:
            raise LMMError(f"Model {name!r} was fitted by {'REML' if r.reml else 'ML'} and another is not: "
                           "compare fits of one method.")
        rows, y = _used_response(r)
        if len(rows) != len(rows0) or not np.array_equal(rows, rows0) or not np.array_equal(y, y0):
            raise LMMError(
                f"Model {name!r} was fitted to other data than the first ({r.n_obs} rows of "
                f"{r.info.formula.response!r} vs {r0.n_obs} of {r0.info.formula.response!r}, or other values or "
                "rows); likelihoods of different data are not comparable. Fit every model to the same rows (drop "
                "rows with a missing value in any model's columns first)."
            )


def lrt(small, big) -> dict:
    """Likelihood-ratio test of ``small`` nested in ``big`` (boundary-aware, see module doc).

    ``LR = 2 (log L_big - log L_small)`` against chi2(df), or against the chi-bar-square
    mixture ``0.5 chi2(a) + 0.5 chi2(b)`` when the extra parameters include a variance on its
    boundary (one extra random effect: a = k - 1, b = k for k random effects in ``big``).

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    >>> small = lmm.fit("y ~ time + arm + cs(visit | subject)", df)
    >>> lrt(small, lmm.fit("y ~ time + arm + csh(visit | subject)", df))["df"]
    3
    """
    check_comparable([small, big], ["small", "big"])
    stat = max(2.0 * (big.loglik - small.loglik), 0.0)
    df = (big.n_theta + (0 if big.reml else big.p)) - (small.n_theta + (0 if small.reml else small.p))
    mix = _mixture(small, big)
    if mix is not None and df == mix[1]:
        a, b = mix
        pa = 0.0 if a == 0 else chi2_sf(stat, a)  # chi2(0): a point mass at 0
        p = 0.5 * pa + 0.5 * chi2_sf(stat, b)
        method = f"0.5*chi2({a}) + 0.5*chi2({b})"
    else:
        p = chi2_sf(stat, df) if df > 0 else np.nan
        method = f"chi2({df})"
    return {"statistic": stat, "df": df, "p_value": float(p), "reference": method}


def compare(*results, names=None) -> pd.DataFrame:
    """Information criteria for several fits of the same data, and LRTs between consecutive ones.

    Models are ordered by their number of parameters; an LRT is reported for each model against
    the previous one when it can be nested in it (valid only then; pairs of residual structures
    that do not nest, such as CSH and AR(1) with the same random part, say "not nested").  REML fits must share their fixed
    effects (REML likelihoods of different fixed effects are not comparable): refit with
    ``reml=False`` to compare mean models.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.example_trial()
    >>> a = lmm.fit("CHG ~ ARMCD * AVISIT + ar1(AVISIT | USUBJID)", df)
    >>> b = lmm.fit("CHG ~ ARMCD * AVISIT + arh1(AVISIT | USUBJID)", df)
    >>> table = lmm.compare(a, b, names=["AR(1)", "ARH(1)"])
    >>> list(table.columns[:6])
    ['npar', 'logLik', 'deviance', 'AIC', 'AICc', 'BIC']
    """
    if len(results) < 1:
        raise LMMError("compare needs at least one fitted model.")
    names = list(names) if names is not None else [f"model{i + 1}" for i in range(len(results))]
    if len(names) != len(results):
        raise LMMError(f"names has {len(names)} entries for {len(results)} models.")
    check_comparable(results, names)
    r0 = results[0]
    for name, r in zip(names, results):
        if r.reml and (r.info.fixed_names != r0.info.fixed_names):
            raise LMMError(
                f"REML fits with different fixed effects cannot be compared (model {name!r} has "
                f"{r.info.fixed_names}, the first has {r0.info.fixed_names}). Refit all with reml=False."
            )
    order = sorted(range(len(results)), key=lambda i: results[i].n_params)
    rows = []
    prev = None
    for i in order:
        r = results[i]
        row = {"model": names[i], "npar": r.n_params, "logLik": r.loglik, "deviance": r.deviance, "AIC": r.aic,
               "AICc": r.aicc, "BIC": r.bic, "method": "REML" if r.reml else "ML"}
        if prev is not None and r.n_params > prev.n_params and nested(prev, r) is False:
            row.update({"LRT": np.nan, "df": np.nan, "p_value": np.nan, "reference": "not nested"})
        elif prev is not None and r.n_params > prev.n_params:
            t = lrt(prev, r)
            row.update({"LRT": t["statistic"], "df": t["df"], "p_value": t["p_value"], "reference": t["reference"]})
        else:
            row.update({"LRT": np.nan, "df": np.nan, "p_value": np.nan, "reference": ""})
        rows.append(row)
        prev = r
    return pd.DataFrame(rows).set_index("model")


def bootstrap_lrt(null, alt, n: int = 1000, seed: int = 0, **kwargs) -> dict:
    """Parametric-bootstrap likelihood-ratio test of ``null`` nested in ``alt``.

    ``n`` datasets are simulated from the fitted null model; null and alternative are both
    refitted to every one in batched calls (:meth:`Model.fit_batch`), and the p-value is
    ``(1 + #{T* >= T}) / (n_ok + 1)`` over the replicates where both fits converged.  Needs no
    assumption about the reference distribution (boundary or not).

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(40, 4, seed=2, cov="id", re_sd=(1.0, 0.0))
    >>> a = lmm.fit("y ~ time + arm + x + (1 | subject)", df, reml=False)
    >>> b = lmm.fit("y ~ time + arm + x + (time | subject)", df, reml=False, warn=False)
    >>> out = lmm.bootstrap_lrt(a, b, n=50, seed=1)
    >>> 0 < out["p_value"] <= 1
    True
    """
    check_comparable([null, alt], ["null", "alt"])
    n, seed = check_count(n, "n"), check_seed(seed)
    if null.reml and null.info.fixed_names != alt.info.fixed_names:
        raise LMMError("REML fits with different fixed effects cannot be compared: refit with reml=False.")
    stat = max(2.0 * (alt.loglik - null.loglik), 0.0)
    Y = null.simulate(n=n, seed=seed)
    bn = null.model.fit_batch(Y, reml=null.reml, start=null, **kwargs)
    ba = alt.model.fit_batch(Y, reml=alt.reml, start=alt, **kwargs)
    ok = bn.converged & ba.converged
    tstar = np.maximum(bn.deviance[ok] - ba.deviance[ok], 0.0)
    p = (1 + np.sum(tstar >= stat - 1e-8)) / (ok.sum() + 1)
    return {"statistic": stat, "p_value": float(p), "n_ok": int(ok.sum()), "n_failed": int((~ok).sum()),
            "bootstrap_statistics": tstar}
