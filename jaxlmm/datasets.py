"""Deterministic simulators for example and test data.

Everything here is made by jaxlmm itself (numpy's PCG64 generator with a fixed seed), so the
data are reproducible bit for bit and carry no licence of another project.

``example_trial()`` is the built-in demo dataset: a two-arm clinical trial with repeated
measures, baseline covariates and monotone dropout that depends on the last observed value
(missing at random).  ``simulate_longitudinal()`` is the general generator used to build the
reference datasets in ``tests/reference/``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["example_trial", "simulate_longitudinal", "structure_matrix"]


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
    return pd.DataFrame(rows, columns=["subject", "arm", "sex", "x", "visit", "time", "y"])


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
