"""Tail probabilities and quantiles of the t, normal, chi-square and F distributions (host,
numpy), from ``scipy.special``'s incomplete beta and gamma functions: the same functions
``scipy.stats`` evaluates (equal to the last bit), without importing ``scipy.stats``, which
takes longer to import than a small fit takes to run.

``t_sf(x, df) = P(T_df > x)``; ``t_ppf(q, df)``: ``P(T_df <= t) = q``; ``norm_ppf(q)``;
``chi2_sf(x, df) = P(X^2_df > x)``; ``f_sf(x, d1, d2) = P(F_{d1, d2} > x)``.  All broadcast.
"""

from __future__ import annotations

from scipy import special

__all__ = ["t_sf", "t_ppf", "norm_ppf", "chi2_sf", "f_sf"]


def t_sf(x, df):
    return special.stdtr(df, -x)


def t_ppf(q, df):
    return special.stdtrit(df, q)


def norm_ppf(q):
    return special.ndtri(q)


def chi2_sf(x, df):
    return special.chdtrc(df, x)


def f_sf(x, d1, d2):
    return special.fdtrc(d1, d2, x)
