"""Deterministic simulators for example and test data.

Everything here is made by jaxlmm itself (numpy's PCG64 generator with a fixed seed), so the
data are reproducible bit for bit and carry no licence of another project.

``example_trial()`` is the built-in demo dataset: a two-arm clinical trial with repeated
measures, baseline covariates and monotone dropout that depends on the last observed value
(missing at random).  ``simulate_longitudinal()`` is the general generator used to build the
reference datasets in ``tests/reference/`` (optionally with subjects nested in sites);
``simulate_nested()`` and ``simulate_crossed()`` make hierarchical (pupils in classes in
schools) and crossed (subjects x items) data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["example_trial", "simulate_longitudinal", "simulate_nested", "simulate_crossed", "structure_matrix"]


def structure_matrix(kind: str, n_visits: int, sd=1.0, rho: float = 0.5, corr=None) -> np.ndarray:
    """Return a T x T covariance matrix of a named structure (numpy, for simulation).

    ``sd`` is a scalar or a length-T vector; ``rho`` the correlation parameter; ``corr`` a full
    correlation matrix for ``kind="un"``.
    """
    T = n_visits
    sd = np.broadcast_to(np.asarray(sd, dtype=float), (T,))
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    kind = kind.lower()
    if kind in ("id", "diag"):
        C = np.eye(T)
    elif kind in ("cs", "csh"):
        C = np.where(lag == 0, 1.0, rho)
    elif kind in ("ar1", "arh1"):
        C = rho ** lag
    elif kind == "un":
        C = np.eye(T) if corr is None else np.asarray(corr, dtype=float)
    else:
        raise ValueError(f"unknown structure {kind!r}")
    return C * np.outer(sd, sd)


def simulate_longitudinal(
    n_subjects: int = 100,
    n_visits: int = 5,
    *,
    seed: int = 0,
    cov: str = "un",
    sd=None,
    rho: float = 0.5,
    corr=None,
    re_sd=(0.0, 0.0),
    re_corr: float = 0.0,
    n_arms: int = 2,
    beta_time: float = 1.0,
    beta_arm=(0.0, 0.8),
    beta_x: float = 0.5,
    interaction: float = 0.3,
    missing: str = "none",
    missing_rate: float = 0.2,
    intercept: float = 10.0,
    n_sites: int | None = None,
    site_sd: float = 1.0,
) -> pd.DataFrame:
    """Simulate a longitudinal dataset, one row per subject and visit (before missingness).

    Model: ``y = intercept + arm effect + beta_time * time + interaction * time * (arm > 0)
    + beta_x * x + b0 + b1 * time + e`` with ``e ~ N(0, Sigma)`` where ``Sigma`` has structure
    ``cov`` (see :func:`structure_matrix`) and ``(b0, b1) ~ N(0, G)`` with SDs ``re_sd`` and
    correlation ``re_corr``.  ``time`` is ``0, 1, ..., T-1``; ``visit`` is the categorical label
    ``V1..VT`` (zero padded when T > 9).

    ``missing`` is one of ``"none"``, ``"monotone"`` (dropout after a random visit, more likely
    after a high residual: MAR), ``"intermittent"`` (cells missing at random, first visit
    always kept), ``"unequal"`` (each subject keeps a random number of leading visits, about
    10% keep only one, i.e. singletons).  Missing responses are NaN; the rows are kept.

    With ``n_sites``, subjects are spread over sites (column ``site``, ``"T1"``, ...; about equal
    numbers, in random order) and a site effect ``N(0, site_sd^2)`` is added to all its rows.
    """
    rng = np.random.default_rng(seed)
    T = n_visits
    if sd is None:
        sd = np.linspace(1.0, 2.0, T)
    Sigma = structure_matrix(cov, T, sd=sd, rho=rho, corr=corr)
    width = len(str(T))
    visits = [f"V{str(j + 1).zfill(width)}" for j in range(T)]
    arms = ["A", "B", "C", "D"][:n_arms]
    arm_eff = np.asarray(beta_arm, dtype=float)
    if arm_eff.size < n_arms:
        arm_eff = np.concatenate([arm_eff, 0.5 * np.arange(1, n_arms - arm_eff.size + 1)])
    width_s = len(str(n_subjects))
    rows = []
    arm_idx = rng.integers(0, n_arms, size=n_subjects)
    x = rng.normal(size=n_subjects)
    sex = rng.choice(["F", "M"], size=n_subjects)
    e = rng.multivariate_normal(np.zeros(T), Sigma, size=n_subjects, method="cholesky")
    s0, s1 = re_sd
    G = np.array([[s0**2, re_corr * s0 * s1], [re_corr * s0 * s1, s1**2]])
    b = rng.multivariate_normal(np.zeros(2), G, size=n_subjects, method="svd")
    time = np.arange(T, dtype=float)
    mu = (
        intercept
        + arm_eff[arm_idx][:, None]
        + beta_time * time[None, :]
        + interaction * time[None, :] * (arm_idx[:, None] > 0)
        + beta_x * x[:, None]
    )
    y = mu + b[:, :1] + b[:, 1:] * time[None, :] + e
    obs = np.ones((n_subjects, T), dtype=bool)
    if missing == "monotone":
        for i in range(n_subjects):
            for j in range(1, T):
                resid = y[i, j - 1] - mu[i, j - 1]
                p = missing_rate / T * 2 / (1 + np.exp(-resid / np.sqrt(Sigma[j - 1, j - 1])))
                if rng.uniform() < p:
                    obs[i, j:] = False
                    break
    elif missing == "intermittent":
        obs = rng.uniform(size=(n_subjects, T)) > missing_rate
        obs[:, 0] = True
    elif missing == "unequal":
        keep = rng.integers(1, T + 1, size=n_subjects)
        keep[rng.uniform(size=n_subjects) < 0.1] = 1
        obs = np.arange(T)[None, :] < keep[:, None]
    elif missing != "none":
        raise ValueError(f"missing must be none, monotone, intermittent or unequal, not {missing!r}")
    if n_sites is not None:  # drawn after everything else: the data without sites are unchanged
        site_of = rng.permutation(np.arange(n_subjects) % int(n_sites))
        y = y + (site_sd * rng.normal(size=int(n_sites)))[site_of][:, None]
    for i in range(n_subjects):
        for j in range(T):
            rows.append(
                (
                    f"S{str(i + 1).zfill(width_s)}",
                    arms[arm_idx[i]],
                    sex[i],
                    x[i],
                    visits[j],
                    time[j],
                    y[i, j] if obs[i, j] else np.nan,
                )
            )
    out = pd.DataFrame(rows, columns=["subject", "arm", "sex", "x", "visit", "time", "y"])
    if n_sites is not None:
        width_t = len(str(int(n_sites)))
        out.insert(0, "site", np.repeat([f"T{str(k + 1).zfill(width_t)}" for k in site_of], T))
    return out


def _effects(rng, n, sds, corr):
    """``n`` draws of correlated random effects with SDs ``sds`` and correlation ``corr``."""
    sds = np.atleast_1d(np.asarray(sds, dtype=float))
    k = len(sds)
    C = np.full((k, k), float(corr))
    np.fill_diagonal(C, 1.0)
    return rng.multivariate_normal(np.zeros(k), C * np.outer(sds, sds), size=n, method="svd")


def simulate_nested(
    levels=(("school", 12), ("class", 4)),
    n_rows: int = 6,
    *,
    sd=(1.0, 0.7),
    slope_sd=None,
    slope_corr: float = 0.0,
    sigma: float = 1.0,
    beta=(10.0, 0.5, 1.0),
    unbalanced: float = 0.0,
    unique_codes: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate hierarchical data: ``n_rows`` observations in each unit of the innermost level,
    units nested in the levels above (outermost first in ``levels``, each with its number of
    units per parent).

    ``y = beta[0] + beta[1] x + beta[2] trt + sum_levels (u_l + v_l x) + e``: ``x`` varies by row,
    ``trt`` (0/1) is fixed per outermost unit, ``u_l ~ N(0, sd[l]^2)`` per unit of level ``l``;
    with ``slope_sd`` (one per level, or None) each unit also gets a slope ``v_l`` on ``x``
    with correlation ``slope_corr`` to its ``u_l``; ``e ~ N(0, sigma^2)``.  ``unbalanced`` in
    [0, 1): the share of rows dropped at random (the design becomes unbalanced; every unit keeps
    at least one row).  Codes of inner levels are reused across parents (class ``"1"`` in every
    school, as in many real files) unless ``unique_codes``: fit ``(1 | school/class)``, which
    makes the inner factor ``class:school``.

    Examples
    --------
    >>> d = simulate_nested((("school", 5), ("class", 3)), n_rows=4, seed=1)
    >>> d.shape, list(d.columns)
    ((60, 5), ['school', 'class', 'x', 'trt', 'y'])
    """
    rng = np.random.default_rng(seed)
    names = [nm for nm, _ in levels]
    counts = [int(k) for _, k in levels]
    sd = np.broadcast_to(np.asarray(sd, dtype=float), (len(levels),))
    ssd = None if slope_sd is None else np.broadcast_to(np.asarray(slope_sd, dtype=float), (len(levels),))
    # unit index tuples, outermost first
    grid = np.array(np.meshgrid(*[np.arange(k) for k in counts], indexing="ij")).reshape(len(counts), -1).T
    grid = np.repeat(grid, n_rows, axis=0)
    N = len(grid)
    x = rng.normal(size=N)
    trt = (np.arange(counts[0]) % 2)[rng.permutation(counts[0])][grid[:, 0]].astype(float)
    y = beta[0] + beta[1] * x + beta[2] * trt + sigma * rng.normal(size=N)
    cols = {}
    for lv in range(len(levels)):
        unit = np.unique(grid[:, : lv + 1], axis=0, return_inverse=True)[1].reshape(-1)
        n_units = int(unit.max()) + 1
        if ssd is None:
            u = _effects(rng, n_units, [sd[lv]], 0.0)
            y = y + u[unit, 0]
        else:
            u = _effects(rng, n_units, [sd[lv], ssd[lv]], slope_corr)
            y = y + u[unit, 0] + u[unit, 1] * x
        own = unit if unique_codes else grid[:, lv]
        width = len(str(int(own.max()) + 1))
        prefix = names[lv][0].upper() if lv == 0 or unique_codes else ""
        cols[names[lv]] = [f"{prefix}{str(c + 1).zfill(width)}" for c in own]
    out = pd.DataFrame({**cols, "x": x, "trt": trt, "y": y})
    if unbalanced > 0:
        keep = rng.uniform(size=N) >= unbalanced
        first = np.r_[True, np.any(grid[1:] != grid[:-1], axis=1)]
        out = out[keep | first].reset_index(drop=True)
    return out


def simulate_crossed(
    n_subjects: int = 30,
    n_items: int = 20,
    *,
    reps: int = 1,
    sd_subject=(1.0, 0.3),
    sd_item=(0.8, 0.2),
    corr_subject: float = 0.3,
    corr_item: float = -0.2,
    sigma: float = 1.0,
    beta=(5.0, 0.4),
    fraction: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate a subjects x items experiment: ``reps`` trials of every (subject, item) pair
    (a random ``fraction`` of the pairs when < 1: partially crossed, unbalanced).

    ``cond`` is -0.5 / 0.5 and counterbalanced: item j is in condition ``(i + j) mod 2`` for
    subject i, so the condition varies within subjects and within items.
    ``y = beta[0] + beta[1] cond + (s0 + s1 cond)_subject + (i0 + i1 cond)_item + e``, with
    intercept and slope SDs ``sd_subject`` / ``sd_item`` (correlations ``corr_subject`` /
    ``corr_item``) and ``e ~ N(0, sigma^2)``.

    Examples
    --------
    >>> d = simulate_crossed(10, 8, seed=1)
    >>> d.shape, list(d.columns)
    ((80, 4), ['subject', 'item', 'cond', 'y'])
    """
    rng = np.random.default_rng(seed)
    s_eff = _effects(rng, n_subjects, sd_subject, corr_subject)
    i_eff = _effects(rng, n_items, sd_item, corr_item)
    si, ii = np.meshgrid(np.arange(n_subjects), np.arange(n_items), indexing="ij")
    si, ii = si.reshape(-1), ii.reshape(-1)
    if fraction < 1:
        keep = rng.uniform(size=len(si)) < fraction
        si, ii = si[keep], ii[keep]
    si, ii = np.repeat(si, reps), np.repeat(ii, reps)
    cond = np.where((si + ii) % 2 == 0, -0.5, 0.5)
    y = (beta[0] + beta[1] * cond + s_eff[si, 0] + s_eff[si, 1] * cond + i_eff[ii, 0] + i_eff[ii, 1] * cond
         + sigma * rng.normal(size=len(si)))
    ws, wi = len(str(n_subjects)), len(str(n_items))
    return pd.DataFrame({
        "subject": [f"S{str(k + 1).zfill(ws)}" for k in si],
        "item": [f"I{str(k + 1).zfill(wi)}" for k in ii],
        "cond": cond,
        "y": y,
    })


def example_trial(n_subjects: int = 150, seed: int = 20261129) -> pd.DataFrame:
    """The built-in demo data: a two-arm trial, 5 visits, heterogeneous AR(1)-like errors, dropout.

    Columns: ``USUBJID`` (subject id), ``ARMCD`` (``PBO``/``TRT``), ``SEX``, ``BASE`` (baseline
    value), ``AVISIT`` (``VIS1``..``VIS5``), ``VISITN`` (1..5), ``CHG`` (change from baseline,
    NaN after dropout).  The truth has an unstructured-looking covariance (ARH(1) plus a small
    compound-symmetry component) so that the demo's structure comparison is informative.
    Dropout is monotone and depends on the last observed change (MAR).
    """
    rng = np.random.default_rng(seed)
    T = 5
    sds = np.array([3.0, 3.4, 3.9, 4.4, 5.0])
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    C = 0.85 * 0.6**lag + 0.15
    Sigma = C * np.outer(sds, sds)
    arm = rng.integers(0, 2, size=n_subjects)
    sex = rng.choice(["F", "M"], size=n_subjects)
    base = rng.normal(50.0, 8.0, size=n_subjects)
    visits = np.arange(1, T + 1)
    mu = (
        -1.0
        + 0.8 * visits[None, :]
        - 0.05 * (base[:, None] - 50.0)
        + (sex[:, None] == "M") * 0.7
        + arm[:, None] * (0.6 * visits[None, :])
    )
    y = mu + rng.multivariate_normal(np.zeros(T), Sigma, size=n_subjects, method="cholesky")
    obs = np.ones((n_subjects, T), dtype=bool)
    for i in range(n_subjects):
        for j in range(1, T):
            z = (y[i, j - 1] - mu[i, j - 1]) / sds[j - 1]
            if rng.uniform() < 0.06 + 0.06 * (z < -0.5):
                obs[i, j:] = False
                break
    rows = []
    for i in range(n_subjects):
        for j in range(T):
            rows.append(
                (
                    f"P{i + 1:03d}",
                    "TRT" if arm[i] else "PBO",
                    sex[i],
                    round(float(base[i]), 3),
                    f"VIS{j + 1}",
                    int(visits[j]),
                    round(float(y[i, j]), 4) if obs[i, j] else np.nan,
                )
            )
    return pd.DataFrame(rows, columns=["USUBJID", "ARMCD", "SEX", "BASE", "AVISIT", "VISITN", "CHG"])
