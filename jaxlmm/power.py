"""Power analysis and operating characteristics by simulation: many trials, one compiled program.

Describe a trial (:class:`Design`: arms, subjects per arm, visits, baseline covariates, a
:class:`Dropout` mechanism), the truth that generates it (:class:`Truth`: fixed effects,
covariance structure and parameters, random effects), the analysis (a model formula) and the
hypothesis (a coefficient or a contrast).  :func:`power` then simulates ``nsim`` trials for
every scenario of a grid (e.g. n per arm x effect x dropout rate), fits each one, tests the
hypothesis with a two-sided t test and returns one tidy row per scenario: power with a
Monte-Carlo interval, rejections, failed and boundary fits, and the operating characteristics
(bias, empirical vs model SE, CI coverage, type I error under the null).  :func:`sample_size`
searches the smallest n per arm that reaches a target power.

How it runs
-----------
The analysis model is built once on a template data frame with the largest n of the grid;
smaller n are obtained by masking subjects out (a new n never recompiles).  One ``jit``-compiled,
``vmap``-batched program simulates a trial from its random key, applies the dropout, fits it
(BFGS warm-started at a pilot fit of the scenario, see :func:`jaxlmm.optimize.bfgs_warm`) and
computes the estimate, its SE and the denominator df.  Monotone dropout leaves at most ``T + 1``
visit patterns (``2^(T-1) + 1`` for intermittent MCAR), so every replicate is reduced to
per-pattern sufficient statistics (:mod:`jaxlmm.patterns`) and an
evaluation costs O(patterns x T^2 p^2) instead of O(subjects x T^3).  Models whose
random-effects rows differ between subjects use the per-subject likelihood instead.

Replicates whose fit fails (status other than converged or boundary) get a second attempt from
their own moment-based starting values with more iterations; those that still fail are counted
in ``n_failed`` and **excluded** from power, bias, SEs and coverage.

Reproducibility
---------------
Scenario ``s`` (its row in the grid) and replicate ``r`` draw from
``k = fold_in(fold_in(PRNGKey(seed), s), r)``; subject ``i`` of arm ``a`` draws its errors, random
effects and dropout uniforms from ``fold_in(k, a * 2**20 + i)``.  A trial is therefore the same
whatever the chunk size, the number of devices, ``nsim`` (replicate r of a longer run is the
same trial) and the largest n of the grid.  The fits are bit-identical on one machine whatever
the chunk size, ``nsim`` or the number of devices: every compiled call fits its trials in blocks
of exactly :data:`BLOCK` (``lax.map`` over blocks, ``vmap`` within), see ``docs/power.md``.
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass, field, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .distributions import norm_ppf, t_ppf, t_sf
from .distributed import gather, to_mesh
from .errors import DataError, FormulaError, LMMError
from .likelihood import deviance, gls_pieces
from .patterns import PatternDesign, PatternResponse, Patterns
from .spec import ModelData
from .inference import satterthwaite_df_at
from .optimize import BOUNDARY, CONVERGED, STATUS, bfgs_warm, psd_inverse

__all__ = [
    "Design",
    "Dropout",
    "Truth",
    "SampleSize",
    "power",
    "operating_characteristics",
    "sample_size",
    "simulate_trials",
    "wilson_interval",
]

_SUBJECT_STRIDE = 2**20  # subject key id = arm index * stride + index within arm
_MAX_PATTERNS = 64  # more possible visit patterns than this: per-subject likelihood
DDF_POWER = ("satterthwaite", "residual", "between-within")


# ------------------------------------------------------------------------------------------
# design description
# ------------------------------------------------------------------------------------------


def _rate_vector(rate, T, what):
    r = np.atleast_1d(np.asarray(rate, dtype=float))
    if r.size == 1:
        r = np.full(T - 1, float(r[0]))
    if r.size != T - 1:
        raise LMMError(
            f"{what} needs one probability or one per post-baseline visit ({T - 1} values), got {r.size}; "
            "pass a scalar or a tuple of length n_visits - 1."
        )
    return r


@dataclass(frozen=True)
class Dropout:
    """Missing data in simulated trials.  The first (baseline) visit is always observed.

    At post-baseline visit ``t`` a subject still present drops out (monotone) or misses the
    visit (intermittent) with probability

        h_t = logistic(logit(rate_t) + slope * z_{t-1}),

    where ``z_{t-1}`` is the subject's previous value standardised by its true mean and SD,
    ``(y_{t-1} - mu_{t-1}) / sd_{t-1}``.  ``slope = 0`` is missing completely at random (MCAR);
    ``slope != 0`` makes monotone dropout depend on the last observed value (missing at random,
    MAR: e.g. ``slope=-1`` drops subjects who did badly more often when low is bad).

    Parameters
    ----------
    rate : float or tuple of float
        ``rate_t`` in [0, 1]: one value for every post-baseline visit, or one per visit.
    slope : float
        Logistic slope on the standardised previous value (0: MCAR).
    monotone : bool
        True: once a subject drops out, every later visit is missing.  False: each
        post-baseline visit is missing independently (intermittent; MCAR only).

    Examples
    --------
    >>> from jaxlmm.power import Dropout
    >>> Dropout.mcar(0.1).monotone, Dropout.mar(0.1, slope=-1.0).slope
    (True, -1.0)
    """

    rate: float | tuple = 0.0
    slope: float = 0.0
    monotone: bool = True

    def __post_init__(self):
        r = np.atleast_1d(np.asarray(self.rate, dtype=float))
        if r.ndim != 1 or not np.all((r >= 0) & (r <= 1)):
            raise LMMError(
                f"Dropout(rate=...) must be a probability in [0, 1] (or a tuple of them), got {self.rate!r}; "
                "e.g. Dropout.mcar(0.1) for a 10% chance per post-baseline visit."
            )
        object.__setattr__(self, "rate", float(r[0]) if r.size == 1 and np.ndim(self.rate) == 0 else tuple(map(float, r)))
        if not np.isfinite(float(self.slope)):
            raise LMMError(f"Dropout(slope=...) must be a finite number, got {self.slope!r}.")
        object.__setattr__(self, "slope", float(self.slope))
        if not self.monotone and self.slope != 0:
            raise LMMError(
                "Dropout(monotone=False) is intermittent missingness and must be MCAR (slope=0); "
                "use monotone=True for dropout that depends on the last observed value."
            )

    @classmethod
    def mcar(cls, rate, monotone: bool = True) -> "Dropout":
        """Missing completely at random: dropout (monotone) or missed visits (intermittent)
        with probability ``rate`` per post-baseline visit."""
        return cls(rate=rate, slope=0.0, monotone=monotone)

    @classmethod
    def mar(cls, rate, slope: float) -> "Dropout":
        """Monotone dropout depending on the last observed value (missing at random)."""
        return cls(rate=rate, slope=slope, monotone=True)

    def with_rate(self, rate) -> "Dropout":
        return replace(self, rate=rate)

    def logits(self, T: int) -> np.ndarray:
        """``logit(rate_t)`` for t = 0..T-1 (-inf at baseline: never missing)."""
        r = _rate_vector(self.rate, T, "Dropout(rate=...)")
        with np.errstate(divide="ignore"):
            lg = np.log(r) - np.log1p(-r)
        return np.concatenate([[-np.inf], lg])

    def label(self) -> str:
        """Short description, e.g. ``mar(0.1, slope=-1.0)`` (used in result tables)."""
        r = self.rate if np.ndim(self.rate) == 0 else tuple(self.rate)
        if self.slope:
            return f"mar({r}, slope={self.slope})"
        return f"mcar({r})" if self.monotone else f"mcar({r}, intermittent)"


@dataclass(frozen=True)
class Design:
    """A parallel-group trial with repeated measures.

    The template data frame (:meth:`frame`) has one row per subject and visit with columns
    ``subject``, ``arm`` (categorical, ``arms`` in order: the first is the reference level),
    ``visit`` (ordered categorical of ``visits``), ``time`` (numeric, ``times``) and one column
    per baseline covariate.  Column names are configurable so that a formula written for real
    data (``ARMCD``, ``AVISIT``, ...) can be used unchanged.

    Parameters
    ----------
    n_per_arm : int
        Subjects per arm (a grid may vary it).
    visits : tuple
        Visit labels in time order (the first is the baseline visit, never missing).
    times : tuple of float, optional
        Numeric time of each visit (default 0, 1, ..., T-1).
    arms : tuple of str
        Arm labels; the first is the reference (e.g. placebo).
    covariates : dict or tuple
        Baseline covariates, one value per subject: ``{"BASE": (mean, sd)}`` draws N(mean, sd^2)
        (a name alone means N(0, 1)).  They are drawn once (numpy, ``covariate_seed``) and kept
        fixed across replicates: results are conditional on the covariate values.
    dropout : Dropout, optional
        Missing-data mechanism (default: complete data).
    subject, arm, visit, time : str
        Column names.

    Examples
    --------
    >>> from jaxlmm.power import Design, Dropout
    >>> d = Design(3, visits=("V1", "V2"), covariates={"BASE": (50, 8)}, dropout=Dropout.mcar(0.1))
    >>> d.frame().shape
    (12, 5)
    """

    n_per_arm: int = 100
    visits: tuple = ("V1", "V2", "V3", "V4")
    times: tuple | None = None
    arms: tuple = ("PBO", "TRT")
    covariates: tuple = ()
    dropout: Dropout | None = None
    covariate_seed: int = 0
    subject: str = "subject"
    arm: str = "arm"
    visit: str = "visit"
    time: str = "time"

    def __post_init__(self):
        if isinstance(self.n_per_arm, (bool, np.bool_)) or int(self.n_per_arm) != self.n_per_arm or self.n_per_arm < 1:
            raise LMMError(f"Design(n_per_arm=...) must be a positive integer, got {self.n_per_arm!r}.")
        object.__setattr__(self, "n_per_arm", int(self.n_per_arm))
        visits = tuple(self.visits) if not isinstance(self.visits, (int, np.integer)) else tuple(
            f"V{j + 1}" for j in range(int(self.visits))
        )
        if len(visits) < 1 or len(set(visits)) != len(visits):
            raise LMMError(f"Design(visits=...) must be distinct visit labels in time order, got {self.visits!r}.")
        object.__setattr__(self, "visits", visits)
        times = tuple(float(t) for t in (range(len(visits)) if self.times is None else self.times))
        if len(times) != len(visits) or not np.all(np.isfinite(times)):
            raise LMMError(
                f"Design(times=...) needs one finite number per visit ({len(visits)}), got {self.times!r}."
            )
        object.__setattr__(self, "times", times)
        arms = tuple(str(a) for a in self.arms)
        if len(arms) < 1 or len(set(arms)) != len(arms):
            raise LMMError(f"Design(arms=...) must be distinct arm labels, got {self.arms!r}.")
        object.__setattr__(self, "arms", arms)
        cov = self.covariates
        if isinstance(cov, dict):
            items = list(cov.items())
        else:
            items = [(c, (0.0, 1.0)) if isinstance(c, str) else (c[0], tuple(c[1:]) if len(c) == 3 else c[1])
                     for c in cov]
        out = []
        cols = {self.subject, self.arm, self.visit, self.time}
        for name, ms in items:
            try:
                mean, sd = (float(v) for v in ms)
            except (TypeError, ValueError):
                raise LMMError(
                    f"Design(covariates=...): covariate {name!r} needs (mean, sd), got {ms!r}; "
                    "e.g. covariates={'BASE': (50.0, 8.0)}."
                ) from None
            if name in cols or not sd >= 0:
                raise LMMError(
                    f"Design(covariates=...): covariate {name!r} must have a new column name and sd >= 0."
                )
            out.append((str(name), mean, sd))
        object.__setattr__(self, "covariates", tuple(out))
        if self.dropout is not None and not isinstance(self.dropout, Dropout):
            raise LMMError(
                f"Design(dropout=...) must be a Dropout (e.g. Dropout.mcar(0.1) or Dropout.mar(0.1, slope=-1)), "
                f"got {type(self.dropout).__name__}."
            )
        if self.dropout is not None:
            self.dropout.logits(len(visits))  # checks the number of rates

    @property
    def T(self) -> int:
        return len(self.visits)

    def frame(self, n_per_arm: int | None = None) -> pd.DataFrame:
        """Template data frame (no response) for ``n_per_arm`` subjects per arm (default the
        design's).  The covariate values of subject i of an arm do not depend on n."""
        n = self.n_per_arm if n_per_arm is None else int(n_per_arm)
        T, A = self.T, len(self.arms)
        rows_a = np.repeat(np.arange(A), n)
        rows_i = np.tile(np.arange(n), A)
        ids = np.array([f"{self.arms[a]}-{i:06d}" for a, i in zip(rows_a, rows_i)])
        df = pd.DataFrame(
            {
                self.subject: np.repeat(ids, T),
                self.arm: pd.Categorical(np.repeat(np.asarray(self.arms)[rows_a], T), categories=list(self.arms)),
                self.visit: pd.Categorical(np.tile(np.asarray(self.visits, dtype=object), A * n),
                                           categories=list(self.visits), ordered=False),
                self.time: np.tile(np.asarray(self.times), A * n),
            }
        )
        for j, (name, mean, sd) in enumerate(self.covariates):
            # per (arm, subject) stream: the value of subject i does not depend on n
            vals = np.empty(A * n)
            for a in range(A):
                rng = np.random.default_rng([int(self.covariate_seed), j, a])
                vals[a * n : (a + 1) * n] = mean + sd * rng.standard_normal(n)
            df[name] = np.repeat(vals, T)
        return df


@dataclass(frozen=True)
class Truth:
    """The data-generating model.

    Parameters
    ----------
    fixef : dict
        True fixed effects by column name of the mean formula (by default the analysis
        formula's fixed part, names as in ``res.fixef``); missing names are 0.
    theta : dict
        Covariance parameters in natural units, names as in ``res.theta`` of a model with this
        structure and these random terms (``sd[V1]``, ``corr[V1,V2]``, ``sigma``, ``rho``,
        ``sd[(Intercept)|subject]``, ...).
    structure : str, optional
        Residual structure: ``un``, ``cs``, ``csh``, ``ar1``, ``arh1``, ``diag``, or ``id``
        (sigma^2 I).  Default: the analysis model's.
    random : str, optional
        Random terms, e.g. ``"(1 | subject)"`` or ``"(time | subject)"``; ``""`` for none.
        Default: the analysis model's.
    formula : str, optional
        Right-hand side of the true mean (default: the analysis formula's fixed part).

    Examples
    --------
    >>> from jaxlmm.power import Truth
    >>> Truth({"(Intercept)": 1.0}, {"sigma": 2.0, "rho": 0.5}, structure="ar1").structure
    'ar1'
    """

    fixef: dict
    theta: dict
    structure: str | None = None
    random: str | None = None
    formula: str | None = None

    def __post_init__(self):
        for name in ("fixef", "theta"):
            v = getattr(self, name)
            if hasattr(v, "to_dict"):
                v = v.to_dict()
            if not isinstance(v, dict):
                raise LMMError(
                    f"Truth({name}=...) must be a dict of name -> value (names as in res.{name}), "
                    f"got {type(v).__name__}."
                )
            object.__setattr__(self, name, {str(k): float(x) for k, x in v.items()})
        if self.structure is not None:
            s = str(self.structure).lower()
            from .formula import COVARIANCE_NAMES

            if s in ("id", "vc", "none"):
                s = "id"
            elif s in COVARIANCE_NAMES:
                s = COVARIANCE_NAMES[s]
            else:
                close = difflib.get_close_matches(s, list(COVARIANCE_NAMES) + ["id"], n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise LMMError(
                    f"Truth(structure={self.structure!r}) is not a known covariance structure; use one of "
                    f"{sorted(set(COVARIANCE_NAMES)) + ['id']}.{hint}"
                )
            object.__setattr__(self, "structure", s)


def wilson_interval(k, n, level: float = 0.95):
    """Wilson score interval for a binomial proportion ``k / n`` (arrays allowed).

    Examples
    --------
    >>> from jaxlmm.power import wilson_interval
    >>> lo, hi = wilson_interval(80, 100)
    >>> round(float(lo), 4), round(float(hi), 4)
    (0.7112, 0.8666)
    """
    k, n = np.asarray(k, float), np.asarray(n, float)
    z = norm_ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        mid = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.where(n > 0, mid - half, np.nan), np.where(n > 0, mid + half, np.nan)


# ------------------------------------------------------------------------------------------
# the study: models built once, scenario tables
# ------------------------------------------------------------------------------------------


def _names_hint(name, names):
    close = difflib.get_close_matches(str(name), [str(n) for n in names], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _contrast(hypothesis, names) -> np.ndarray:
    """Hypothesis (coefficient name, {name: weight} or a vector) -> contrast over ``names``."""
    p = len(names)
    if isinstance(hypothesis, str):
        hypothesis = {hypothesis: 1.0}
    if hasattr(hypothesis, "to_dict") and not isinstance(hypothesis, np.ndarray):
        hypothesis = hypothesis.to_dict()
    if isinstance(hypothesis, dict):
        c = np.zeros(p)
        for k, v in hypothesis.items():
            if k not in names:
                raise FormulaError(
                    f"hypothesis: {k!r} is not a fixed effect of the analysis model.{_names_hint(k, names)} "
                    f"The coefficients are {list(names)}."
                )
            c[list(names).index(k)] = float(v)
    else:
        c = np.asarray(hypothesis, dtype=float).reshape(-1)
        if c.size != p:
            raise LMMError(
                f"hypothesis: a contrast vector needs {p} weights, one per fixed effect {list(names)}; got {c.size}. "
                "Or pass a coefficient name or a dict {name: weight}."
            )
    if not np.any(c != 0) or not np.all(np.isfinite(c)):
        raise LMMError("hypothesis: the contrast must have finite weights, not all zero.")
    return c


def _grid_rows(grid) -> list[dict]:
    if grid is None:
        return [{}]
    if isinstance(grid, pd.DataFrame):
        return [dict(r) for _, r in grid.iterrows()] or [{}]
    if isinstance(grid, dict):
        keys = list(grid)
        vals = []
        for k in keys:
            v = grid[k]
            if isinstance(v, (str, Dropout)) or np.ndim(v) == 0:
                v = [v]
            vals.append(list(v))
        return [dict(zip(keys, combo)) for combo in itertools.product(*vals)]
    if isinstance(grid, (list, tuple)) and all(isinstance(r, dict) for r in grid):
        return [dict(r) for r in grid] or [{}]
    raise LMMError(
        f"grid must be a dict of lists (all combinations), a list of dicts or a DataFrame (one row per scenario), "
        f"got {type(grid).__name__}."
    )


class _Study:
    """Analysis and truth models on the template of the largest n, plus host-side constants."""

    def __init__(self, formula, design, truth, hypothesis, n_max, *, ddf, reml, kinds):
        from .formula import parse_formula
        from .model import Model
        from .simulate import params_to_unconstrained

        if not isinstance(design, Design):
            raise LMMError(f"design must be a jaxlmm.power.Design, got {type(design).__name__}.")
        if not isinstance(truth, Truth):
            raise LMMError(f"truth must be a jaxlmm.power.Truth, got {type(truth).__name__}.")
        ddf = str(ddf).lower()
        if ddf not in DDF_POWER:
            raise LMMError(f"ddf={ddf!r} is not available for power; use one of {DDF_POWER}.")
        self.ddf, self.reml, self.design, self.truth = ddf, bool(reml), design, truth
        pf = parse_formula(formula)
        self.formula = formula
        template = design.frame(n_max)
        if pf.response in template.columns:
            raise FormulaError(
                f"The response {pf.response!r} of the formula is a design column; name the response something else."
            )
        try:
            self.model = Model(formula, template, engine="subjects")
        except LMMError as e:
            raise type(e)(
                f"{e}\n(The analysis formula must use the design's columns: {list(template.columns)}.)"
            ) from None
        info, spec = self.model.info, self.model.spec
        self.T = info.T
        if self.T != design.T:
            raise DataError(
                f"The analysis model has {self.T} visit positions but the design has {design.T} visits; "
                f"the covariance term must use the design's visit column {design.visit!r}."
            )
        if pf.cov is not None and (pf.cov.visit != design.visit or pf.cov.subject != design.subject):
            raise FormulaError(
                f"The covariance term {pf.cov.text} must be written ({design.visit} | {design.subject}) for this design."
            )
        # truth model on the same template (same subjects, same padded rows)
        structure = truth.structure if truth.structure is not None else (pf.cov.structure if pf.cov else "id")
        random = truth.random if truth.random is not None else " + ".join(r.text for r in pf.random)
        rhs = truth.formula if truth.formula is not None else pf.fixed
        parts = [rhs] + ([random] if random.strip() else [])
        if structure != "id":
            parts.append(f"{structure}({design.visit} | {design.subject})")
        self.truth_formula = f"{pf.response} ~ " + " + ".join(parts)
        try:
            self.tmodel = Model(self.truth_formula, template, engine="subjects")
        except LMMError as e:
            raise type(e)(f"Truth: {e}") from None
        tinfo, tspec = self.tmodel.info, self.tmodel.spec
        self.tnames_b = list(tinfo.fixed_names)
        self.tnames_t = tspec.names(tinfo.visit_labels)
        unknown = [k for k in truth.fixef if k not in self.tnames_b]
        if unknown:
            raise DataError(
                f"Truth(fixef=...): {unknown} are not columns of the true mean {rhs!r}.{_names_hint(unknown[0], self.tnames_b)} "
                f"The columns are {self.tnames_b}."
            )
        self.beta0 = np.array([truth.fixef.get(n, 0.0) for n in self.tnames_b])
        missing = [n for n in self.tnames_t if n not in truth.theta]
        extra = [n for n in truth.theta if n not in self.tnames_t]
        if missing or extra:
            raise DataError(
                f"Truth(theta=...) for structure {structure!r} with random terms {random or 'none'!r}: missing {missing}, "
                f"unknown {extra}; expected exactly the names {self.tnames_t}."
            )
        self.theta0 = dict(truth.theta)
        self._params_to_u = lambda beta, th: params_to_unconstrained(self.tmodel, {"fixef": beta, "theta": th})
        self._params_to_u(self.beta0, self.theta0)  # validates ranges
        self.names = list(info.fixed_names)
        # (hypothesis None: a model built only to simulate)
        self.c = np.eye(len(self.names))[0] if hypothesis is None else _contrast(hypothesis, self.names)
        # the true value of c' beta: by name in the truth's coefficients
        self.c_truth = None
        if all(self.names[j] in self.tnames_b for j in np.nonzero(self.c)[0]):
            ct = np.zeros(len(self.tnames_b))
            for j in np.nonzero(self.c)[0]:
                ct[self.tnames_b.index(self.names[j])] = self.c[j]
            self.c_truth = ct
        # padded rows -> (arm, index within arm)
        S_pad = info.S_pad
        self.arm_of = np.full(S_pad, -1)
        self.idx_of = np.full(S_pad, -1)
        for s, lab in enumerate(info.subjects):
            a, i = str(lab).rsplit("-", 1)
            self.arm_of[s], self.idx_of[s] = design.arms.index(a), int(i)
        if list(tinfo.subjects) != list(info.subjects):  # same template: cannot differ
            raise LMMError("internal: truth and analysis models order subjects differently")
        self.sid = np.where(self.arm_of >= 0, self.arm_of * _SUBJECT_STRIDE + np.maximum(self.idx_of, 0), 0)
        a = self.model.arrays
        self.m0 = np.asarray(a.m)
        X, Z = np.asarray(a.X), np.asarray(a.Z)
        self.p, self.q = X.shape[-1], Z.shape[-1]
        real = self.arm_of >= 0
        # between/within columns (SAS DDFM=BETWITHIN) from the complete template
        Xr = X[real]
        within = np.any(np.abs(Xr - Xr[:, :1]) > 1e-10 * (1 + np.abs(Xr)), axis=(0, 1))
        self.within = within
        self.rank_between = int(np.linalg.matrix_rank(Xr[:, 0][:, ~within])) if (~within).any() else 0
        # visit patterns
        same_Z = bool(np.all(np.abs(Z[real] - Z[real][:1]) <= 1e-12))
        T = self.T
        intermittent = any(not k for k in kinds)
        if intermittent:
            codes = [0] + [c for c in range(1, 2**T) if c & 1]
        else:
            codes = [0] + [2 ** (j + 1) - 1 for j in range(T)]
        self.use_patterns = same_Z and len(codes) <= _MAX_PATTERNS
        self.codes = tuple(codes)
        self.PM = np.array([[(c >> t) & 1 for t in range(T)] for c in codes], dtype=float)
        self.ZK = np.broadcast_to(Z[real][:1], (len(codes), T, self.q)).copy()
        self.XXs = np.einsum("stp,suq->stupq", X, X).reshape(S_pad, -1)
        self.k = spec.n_theta
        self.n_obs_max = float(self.m0.sum())
        self.tq = self.tmodel.spec.q

    # ---- scenarios ----------------------------------------------------------------
    def scenario(self, row: dict, n_max: int) -> dict:
        """Host-side parameters of one scenario (one grid row)."""
        allowed = {"n_per_arm", "dropout", "effect"} | set(self.tnames_b) | set(self.tnames_t)
        for k in row:
            if k not in allowed:
                raise LMMError(
                    f"grid: {k!r} is not a scenario parameter.{_names_hint(k, allowed)} Use 'n_per_arm', 'dropout', "
                    f"'effect', a true fixed effect {self.tnames_b} or a covariance parameter {self.tnames_t}."
                )
        n = row.get("n_per_arm", self.design.n_per_arm)
        if isinstance(n, (bool, np.bool_)) or not float(n) == int(n) or int(n) < 1:
            raise LMMError(f"grid: n_per_arm must be a positive integer, got {n!r}.")
        n = int(n)
        if n > n_max:
            raise LMMError(f"internal: n_per_arm {n} above the template size {n_max}")
        beta = self.beta0.copy()
        th = dict(self.theta0)
        for k, v in row.items():
            if k in self.tnames_b:
                beta[self.tnames_b.index(k)] = float(v)
            elif k in self.tnames_t:
                th[k] = float(v)
        if "effect" in row:
            if self.c_truth is None:
                raise LMMError(
                    "grid: 'effect' sets the true value of the hypothesis, but the hypothesis uses coefficients that the "
                    "truth's mean does not have; vary a true fixed effect by name instead."
                )
            ct = self.c_truth
            beta = beta + (float(row["effect"]) - ct @ beta) * ct / (ct @ ct)
        drop = row.get("dropout", self.design.dropout)
        if drop is not None and not isinstance(drop, Dropout):
            if self.design.dropout is None:
                raise LMMError(
                    "grid: a numeric 'dropout' sets the rate of the design's dropout mechanism, but the design has none; "
                    "set Design(dropout=Dropout.mcar(...) or Dropout.mar(...)) or put Dropout objects in the grid."
                )
            try:
                drop = self.design.dropout.with_rate(drop)
            except (TypeError, ValueError) as e:
                raise LMMError(f"grid: dropout {row['dropout']!r}: {e}") from None
        if drop is None:
            drop = Dropout(0.0)
        b, thu = self._params_to_u(beta, th)
        tspec = self.tmodel.spec
        thu_j = jnp.asarray(thu)
        LR = np.linalg.cholesky(np.asarray(tspec.R(thu_j)))
        LG = np.asarray(tspec.G_chol(thu_j)) if tspec.q else np.zeros((0, 0))
        return dict(
            n=n, beta=b, LR=LR, LG=LG, logit=drop.logits(self.T), slope=drop.slope, monotone=drop.monotone,
            true_value=float(self.c_truth @ b) if self.c_truth is not None else np.nan,
            dropout=drop, theta_u=thu,
        )

    def tables(self, scens: list[dict]) -> dict:
        ns = len(scens)
        ns_pad = max(8, 2 ** int(math.ceil(math.log2(ns))))  # few distinct shapes: few compiles
        idx = np.minimum(np.arange(ns_pad), ns - 1)

        def stack(key):
            return np.stack([np.asarray(scens[i][key], dtype=float) for i in idx])

        tab = dict(
            beta=stack("beta"), LR=stack("LR"), LG=stack("LG"), logit=stack("logit"), slope=stack("slope"),
            monotone=stack("monotone"), n=stack("n"),
        )
        return {key: jnp.asarray(v) for key, v in tab.items()}

    def consts(self) -> dict:
        a, ta = self.model.arrays, self.tmodel.arrays
        d = dict(
            X=a.X, Z=a.Z, Xt=ta.X, Zt=ta.Z, m0=self.m0, sid=self.sid.astype(np.uint32), idx=self.idx_of,
            c=self.c, PM=self.PM, ZK=self.ZK, XXs=self.XXs, codes=np.asarray(self.codes, dtype=np.int32),
        )
        out = {}
        for k, v in d.items():
            v = np.asarray(v)
            out[k] = jnp.asarray(v) if v.dtype.kind != "f" else jnp.asarray(v, jnp.float64)
        return out


# ------------------------------------------------------------------------------------------
# compiled programs
# ------------------------------------------------------------------------------------------


def _simulate_one(key, s, r, tab, cs):
    """One trial: padded y and mask [S, T] for scenario s, replicate r."""
    k = jax.random.fold_in(jax.random.fold_in(key, s), r)
    LR, LG, beta = tab["LR"][s], tab["LG"][s], tab["beta"][s]
    T = LR.shape[0]
    qt = LG.shape[0]
    Xt, Zt = cs["Xt"], cs["Zt"]
    mu = jnp.einsum("stp,p->st", Xt, beta)

    def draws(i):
        ki = jax.random.fold_in(k, i)
        ke, kb, ku = jax.random.split(ki, 3)
        return (jax.random.normal(ke, (T,), dtype=mu.dtype), jax.random.normal(kb, (qt,), dtype=mu.dtype),
                jax.random.uniform(ku, (T,), dtype=mu.dtype))

    e, b, u = jax.vmap(draws)(cs["sid"])
    y = mu + e @ LR.T
    var = jnp.diagonal(LR @ LR.T)[None, :]
    if qt:
        ZL = jnp.einsum("stk,kl->stl", Zt, LG)
        y = y + jnp.einsum("stl,sl->st", ZL, b)
        var = var + jnp.sum(ZL * ZL, axis=-1)
    z = (y - mu) / jnp.sqrt(var)
    z_prev = jnp.concatenate([jnp.zeros_like(z[:, :1]), z[:, :-1]], axis=1)
    h = jax.nn.sigmoid(tab["logit"][s][None, :] + tab["slope"][s] * z_prev)
    miss = (u < h).astype(mu.dtype)
    mono = jnp.cumprod(1.0 - miss, axis=1)
    obs = jnp.where(tab["monotone"][s] > 0, mono, 1.0 - miss)
    active = ((cs["idx"] >= 0) & (cs["idx"] < tab["n"][s])).astype(mu.dtype)
    m = obs * active[:, None] * cs["m0"]
    return y * m, m


def _objective(y, m, cs, spec, reml, use_patterns):
    """(f(theta) for the optimiser, A(theta) = X'V^-1X, pieces for beta) for one trial."""
    if use_patterns:
        T = m.shape[1]
        code = jnp.sum(m * (2 ** jnp.arange(T)), axis=1).astype(jnp.int32)
        P = (code[:, None] == cs["codes"][None, :]).astype(y.dtype)  # [S, K]
        K = P.shape[1]
        p = cs["X"].shape[-1]
        XX = (P.T @ cs["XXs"]).reshape(K, T, T, p, p)
        Py = P[:, :, None] * y[:, None, :]  # [S, K, T]
        Xy = jnp.einsum("skt,sup->pkut", Py, cs["X"])  # [p, K, T(x), T(y)]: Xy[p,k,t,u] = x_tp y_u
        yy = jnp.einsum("skt,su->ktu", Py, y)
        pdes = PatternDesign(m=cs["PM"], Z=cs["ZK"], n=jnp.sum(P, axis=0), XX=XX, Xs=None)
        pr = PatternResponse(Xy=Xy, yy=yy)

        def f(th):
            return deviance(th, Patterns(pdes, pr), spec, reml, unroll=True)

        def f_exact(th):  # LAPACK factorisations: a smaller program under the Hessian
            return deviance(th, Patterns(pdes, pr), spec, reml)

        def gls(th):
            A, b = gls_pieces(th, Patterns(pdes, pr), spec)[:2]
            return A, b
    else:
        d = ModelData(y, m, cs["X"] * m[..., None], cs["Z"] * m[..., None])

        def f(th):
            return deviance(th, d, spec, reml)

        f_exact = f

        def gls(th):
            A, b, _, _, _ = gls_pieces(th, d, spec)
            return A, b

    return f, f_exact, gls


def _finish(x, f, gls, cs, m, pdf):
    """Estimate, SE and the three df (Satterthwaite, residual, between-within) of ``c' beta``."""
    A, b = gls(x)
    LA = jnp.linalg.cholesky(A)
    beta = jax.scipy.linalg.cho_solve((LA, True), b)
    c = cs["c"]
    est = c @ beta
    var = c @ jax.scipy.linalg.cho_solve((LA, True), c)
    n_obs = jnp.sum(m)
    p = A.shape[0]
    df_satt, H = satterthwaite_df_at(f, lambda th: gls(th)[0], x, c)  # H also starts later batches
    df_res = n_obs - p
    S_obs = jnp.sum(jnp.any(m > 0, axis=1))
    between = S_obs - pdf["rank_between"]
    within = n_obs - p - between
    dfs = jnp.where(pdf["within"], within, between)
    df_bw = jnp.min(jnp.where(c != 0, dfs, jnp.inf))
    df = jnp.stack([df_satt, df_res, df_bw]).astype(x.dtype)
    return est, jnp.sqrt(var), df, n_obs, H


#: trials per vmapped block.  Every compiled call processes its trials in blocks of exactly this
#: size (``lax.map`` over blocks, ``vmap`` within), so a trial's arithmetic is the same whatever
#: the chunk size or the number of devices: XLA may compile a vmapped matrix product differently
#: for another batch size (different rounding), but never differently for another lane.
BLOCK = 64


def _fit_block(key, s_idx, r_idx, th0, Binv0, tab, cs, pdf, reml, max_iter, spec, use_patterns):
    def one(args):
        s, r, x0, B0 = args
        y, m = _simulate_one(key, s, r, tab, cs)
        f, f_exact, gls = _objective(y, m, cs, spec, reml, use_patterns)
        res = bfgs_warm(f, x0, B0, max_iter=max_iter, tol=1e-11, boundary=spec.is_boundary,
                        degenerate=spec.is_degenerate)
        est, se, df, n_obs, H = _finish(res.x, f_exact, gls, cs, m, pdf)
        post = jnp.sum(m[:, 1:]) / jnp.maximum(jnp.sum(jnp.any(m > 0, axis=1)) * (m.shape[1] - 1), 1)
        return dict(est=est, se=se, df=df, status=res.status, n_iter=res.n_iter, dev=res.fun, x=res.x, H=H,
                    n_obs=n_obs, observed_post=post)

    return jax.lax.map(one, (s_idx, r_idx, th0, Binv0), batch_size=BLOCK)


@partial(jax.jit, static_argnames=("spec", "use_patterns", "mesh"))
def _fit_items(key, s_idx, r_idx, th0, Binv0, tab, cs, pdf, reml, max_iter, spec, use_patterns, mesh=None):
    """Simulate and fit the trials (s_idx[i], r_idx[i]) by BFGS from ``th0[i]`` with the inverse
    Hessian ``Binv0[i]``; returns the estimate, SE and df of ``c' beta``, the status, and the
    Hessian of the objective at the optimum.  The number of trials per device must be a multiple
    of :data:`BLOCK`."""
    fn = partial(_fit_block, spec=spec, use_patterns=use_patterns)
    if mesh is None:
        return fn(key, s_idx, r_idx, th0, Binv0, tab, cs, pdf, reml, max_iter)
    from jax.sharding import PartitionSpec as Pspec

    rep, shard = Pspec(), Pspec("replicate")
    sm = jax.shard_map(fn, mesh=mesh, in_specs=(rep, shard, shard, shard, shard, rep, rep, rep, rep, rep),
                       out_specs=shard, check_vma=False)
    return sm(key, s_idx, r_idx, th0, Binv0, tab, cs, pdf, reml, max_iter)


@jax.jit
def _simulate_items(key, s_idx, r_idx, tab, cs):
    return jax.vmap(lambda s, r: _simulate_one(key, s, r, tab, cs))(s_idx, r_idx)


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------

class _Runner:
    """Runs the compiled program over (scenario, replicate) items in chunks of one fixed size."""

    def __init__(self, study: _Study, seed: int, *, chunk_size=None, devices=None, max_iter=60, progress=None):
        self.st = study
        self.key = jax.random.PRNGKey(int(seed))
        self.cs = study.consts()
        self.pdf = dict(within=jnp.asarray(study.within), rank_between=jnp.asarray(float(study.rank_between)))
        if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
            raise LMMError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self.devices = jax.devices() if devices is None else list(devices)
        self.mesh = None
        self.max_iter = int(max_iter)
        self.progress = progress

    def _chunk(self, B):
        st = self.st
        K = len(st.codes)
        S, T, p = st.m0.shape[0], st.T, st.p
        if st.use_patterns:
            per = 8 * (K * T * T * (p * p + p + 1) * 3 + S * T * (6 + 2 * p))
        else:
            per = 8 * S * T * (T * 6 + p * 3 + st.q + 4) * 3
        n_dev = len(self.devices)
        self.mesh = None
        if n_dev > 1:
            from jax.sharding import Mesh

            self.mesh = Mesh(np.asarray(self.devices), ("replicate",))
        if self.chunk_size is None:  # two sizes (few compiled shapes), capped by a 1 GB budget
            C = min(256 * n_dev if B <= 2048 * n_dev else 1024 * n_dev, max(int(1e9 // per), 1))
        else:
            C = int(self.chunk_size)
        # at least two blocks per device: XLA inlines a loop that runs once, which changes the
        # compiled arithmetic (and the last bits of the results)
        unit = BLOCK * n_dev
        return max(int(math.ceil(C / unit) * unit), 2 * unit)

    def call(self, C, tab, s_idx, r_idx, x0, Binv0, max_iter, bar=None):
        """Fit items in chunks of exactly C (the last padded by repetition): one compiled shape."""
        st = self.st
        s_idx, r_idx = np.asarray(s_idx), np.asarray(r_idx)
        B = len(s_idx)
        outs = []
        # with several processes each places its devices' parts of the same inputs (jaxlmm.distributed)
        key, tab, cs, pdf, reml, mi = to_mesh((self.key, tab, self.cs, self.pdf, np.asarray(st.reml),
                                               np.asarray(int(max_iter))), self.mesh, sharded=False)
        for a in range(0, B, C):
            idx = np.minimum(np.arange(a, a + C), B - 1)
            args = to_mesh([np.asarray(s_idx[idx], np.int32), np.asarray(r_idx[idx], np.int32),
                            np.asarray(x0[idx], np.float64), np.asarray(Binv0[idx], np.float64)], self.mesh,
                           sharded=True)
            out = gather(_fit_items(key, *args, tab, cs, pdf, reml, mi, st.model.spec, st.use_patterns,
                                    mesh=self.mesh), self.mesh)
            n_real = min(C, B - a)
            outs.append({k: np.asarray(v)[:n_real] for k, v in out.items()})
            if bar is not None:
                bar.update(n_real)
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def starts(self, tab, s_idx, r_idx):
        """Moment-based starting values (host) for the trials (s_idx, r_idx)."""
        from .fitting import start_values

        y, m = jax.device_get(_simulate_items(self.key, jnp.asarray(s_idx, jnp.int32), jnp.asarray(r_idx, jnp.int32),
                                              tab, self.cs))
        X, Z = np.asarray(self.st.model.arrays.X), np.asarray(self.st.model.arrays.Z)
        out = []
        for yb, mb in zip(np.asarray(y), np.asarray(m)):
            d = ModelData(yb, mb, X * mb[..., None], Z * mb[..., None])
            out.append(start_values(d, self.st.model.spec))
        return np.stack(out)

    def pilots(self, C, scens):
        """Per scenario: a converged fit of one of its first trials -> (theta0, Binv0) that start
        every replicate.  Starts at the truth when the analysis model is the true model, else at
        moment estimates; a second pass restarts unconverged pilots with their own Hessian."""
        st = self.st
        ns, k = len(scens), st.k
        tab = st.tables(scens)
        n_try = 3
        s_idx = np.repeat(np.arange(ns), n_try)
        r_idx = np.tile(np.arange(n_try), ns)
        if st.model.spec == st.tmodel.spec:
            x0 = np.stack([scens[s]["theta_u"] for s in s_idx])
        else:
            x0 = self.starts(tab, s_idx, r_idx)
        eye = np.broadcast_to(np.eye(k) / max(st.n_obs_max, 1.0), (len(s_idx), k, k))
        out = self.call(C, tab, s_idx, r_idx, x0, eye, 200)
        th0, Binv0 = np.zeros((ns, k)), np.zeros((ns, k, k))
        good = np.isin(out["status"], (CONVERGED, BOUNDARY)) & np.all(np.isfinite(out["H"]), axis=(1, 2))
        for attempt in range(2):
            for s in range(ns):
                rows = np.arange(s * n_try, (s + 1) * n_try)
                ok = rows[good[rows]]
                fin = np.isfinite(out["dev"][rows]) & np.all(np.isfinite(out["H"][rows]), axis=(1, 2))
                j = ok[0] if len(ok) else (rows[fin][np.argmin(out["dev"][rows][fin])] if fin.any() else rows[0])
                th0[s] = out["x"][j] if np.all(np.isfinite(out["x"][j])) else x0[j]
                H = out["H"][j] if np.all(np.isfinite(out["H"][j])) else np.eye(k) * max(st.n_obs_max, 1.0)
                Binv0[s] = np.asarray(psd_inverse(jnp.asarray(0.5 * (H + H.T))))
            if attempt == 1 or good.reshape(ns, n_try).any(axis=1).all():
                break
            # second pass: restart every try from the best point found, with its Hessian
            out2 = self.call(C, tab, s_idx, r_idx, th0[s_idx], Binv0[s_idx], 200)
            better = ~good & (np.isin(out2["status"], (CONVERGED, BOUNDARY)) | (out2["dev"] < out["dev"]))
            for key in out:
                out[key][better] = out2[key][better]
            good = np.isin(out["status"], (CONVERGED, BOUNDARY)) & np.all(np.isfinite(out["H"]), axis=(1, 2))
        return th0, Binv0

    def run(self, scens, nsim):
        from .batch import progress_bar

        st = self.st
        ns = len(scens)
        B = ns * nsim
        C = self._chunk(B)
        th0, Binv0 = self.pilots(C, scens)
        tab = st.tables(scens)
        s_all = np.repeat(np.arange(ns), nsim)
        r_all = np.tile(np.arange(nsim), ns)
        bar = progress_bar(B, self.progress if B > C or self.progress else False)
        res = self.call(C, tab, s_all, r_all, th0[s_all], Binv0[s_all], self.max_iter, bar)
        if bar is not None:
            bar.close()
        del res["H"]
        bad = np.nonzero(~np.isin(res["status"], (CONVERGED, BOUNDARY)))[0]
        res["retried"] = np.zeros(B, bool)
        if len(bad):  # second attempt: from the trial's own moment estimates, more iterations
            x0 = self.starts(tab, s_all[bad], r_all[bad])
            out = self.call(C, tab, s_all[bad], r_all[bad], x0, Binv0[s_all[bad]], 200)
            take = np.isin(out["status"], (CONVERGED, BOUNDARY)) | (out["dev"] < res["dev"][bad])
            for k in res:
                if k in out:
                    res[k][bad[take]] = out[k][take]
            res["retried"][bad] = True
        res["scenario"], res["replicate"] = s_all, r_all
        return res


# ------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------


def _grid_columns(rows):
    cols = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _summarise(res, rows, scens, alpha, ddf, nsim):
    est, se, status = res["est"], res["se"], res["status"]
    df = res["df"][:, DDF_POWER.index(ddf)]
    ok = np.isin(status, (CONVERGED, BOUNDARY)) & np.isfinite(est) & np.isfinite(se) & (se > 0) & (df > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = est / se
        pval = 2 * t_sf(np.abs(t), np.where(ok, df, 1.0))
        q = t_ppf(1 - alpha / 2, np.where(ok, df, 1.0))
    lower, upper = est - q * se, est + q * se
    reject = ok & (pval < alpha)
    out = []
    cols = _grid_columns(rows)
    for s, (row, sc) in enumerate(zip(rows, scens)):
        sel = res["scenario"] == s
        o = sel & ok
        n_ok = int(o.sum())
        k = int(reject[sel].sum())
        tv = sc["true_value"]
        e = est[o]
        rec = {c: (row[c].label() if isinstance(row.get(c), Dropout) else row.get(c, np.nan)) for c in cols}
        if "n_per_arm" not in rec:
            rec["n_per_arm"] = sc["n"]
        lo, hi = wilson_interval(k, n_ok)
        with np.errstate(invalid="ignore", divide="ignore"):
            pw = k / n_ok if n_ok else np.nan
            rec.update(
                nsim=int(nsim), n_ok=n_ok, n_failed=int(sel.sum() - n_ok), n_boundary=int((status[o] == BOUNDARY).sum()),
                rejections=k, power=pw, power_lower=float(lo), power_upper=float(hi),
                mc_se=float(np.sqrt(pw * (1 - pw) / n_ok)) if n_ok else np.nan,
                true_value=tv, mean_estimate=float(e.mean()) if n_ok else np.nan,
                bias=float(e.mean() - tv) if n_ok else np.nan,
                empirical_se=float(e.std(ddof=1)) if n_ok > 1 else np.nan,
                mean_model_se=float(se[o].mean()) if n_ok else np.nan,
                coverage=float(np.mean((lower[o] <= tv) & (tv <= upper[o]))) if n_ok and np.isfinite(tv) else np.nan,
                type1_error=pw if tv == 0 else np.nan,
                mean_df=float(np.mean(df[o])) if n_ok else np.nan,
                observed_fraction=float(np.mean(res["observed_post"][sel])),
                ddf=ddf,
            )
        out.append(rec)
    return pd.DataFrame(out), dict(ok=ok, reject=reject, p_value=pval, ci_lower=lower, ci_upper=upper)


def _max_n(rows, design):
    if not isinstance(design, Design):
        raise LMMError(f"design must be a jaxlmm.power.Design (lmm.Design(n_per_arm, visits, ...)), "
                       f"got {type(design).__name__}.")
    ns = [design.n_per_arm] + [r["n_per_arm"] for r in rows if "n_per_arm" in r]
    try:
        return max(int(n) for n in ns)
    except (TypeError, ValueError):
        raise LMMError(f"grid: n_per_arm values must be positive integers, got {ns[1:]}.") from None


def _kinds(rows, design):
    kinds = [design.dropout.monotone if design.dropout is not None else True]
    for r in rows:
        d = r.get("dropout")
        if isinstance(d, Dropout):
            kinds.append(d.monotone)
    return kinds


def _check_common(nsim, alpha, seed):
    if isinstance(nsim, (bool, np.bool_)) or int(nsim) != nsim or int(nsim) < 2:
        raise LMMError(f"nsim must be an integer >= 2 (replicates per scenario), got {nsim!r}.")
    if not 0 < float(alpha) < 1:
        raise LMMError(f"alpha must lie in (0, 1), e.g. 0.05, got {alpha!r}.")
    if int(seed) != seed:
        raise LMMError(f"seed must be an integer, got {seed!r}.")


def power(formula: str, design: Design, truth: Truth, hypothesis, *, grid=None, nsim: int = 1000,
          ddf: str = "satterthwaite", alpha: float = 0.05, seed: int = 0, reml: bool = True,
          chunk_size: int | None = None, devices=None, progress=None, replicates: bool = False):
    """Power and operating characteristics of a test, by simulation over a grid of scenarios.

    Parameters
    ----------
    formula : str
        The analysis model, written with the design's columns, e.g.
        ``"y ~ arm * visit + un(visit | subject)"``.
    design : Design
    truth : Truth
    hypothesis : str, dict or array
        A fixed-effect name (``"arm[T.TRT]:visit[T.V4]"``), a contrast ``{name: weight}``, or a
        vector of weights over the fixed effects.  Tested two-sided: ``H0: c' beta = 0``.
    grid : dict of lists, list of dicts or DataFrame, optional
        Scenarios.  A dict of lists gives all combinations, in order, the first key varying
        slowest.  Keys: ``n_per_arm``; ``effect`` (the true value of ``c' beta``, set by
        moving the true fixed effects along ``c``: ``beta + (effect - c'beta) c / c'c``);
        ``dropout`` (a :class:`Dropout`, or a number: the rate of the design's mechanism); a
        true fixed-effect name or a covariance-parameter name (a new true value).
    nsim : int
        Simulated trials per scenario.
    ddf : str
        Denominator df of the t test: ``"satterthwaite"`` (default), ``"residual"``
        (``N - p``, N observations in that trial) or ``"between-within"`` (SAS BETWITHIN).
    alpha : float
        Two-sided level; CIs have level ``1 - alpha``.
    seed : int
        See the reproducibility contract in the module docstring / ``docs/power.md``.
    reml : bool
        REML (default) or ML fits.
    chunk_size, devices, progress
        Trials per compiled call (default from a 1 GB budget, at most 1024), devices to shard
        them over (default ``jax.devices()``), a tqdm bar.  None changes the results.
    replicates : bool
        Also return the per-trial results (estimate, SE, df, p value, status, ...).

    Returns
    -------
    pandas.DataFrame
        One row per scenario: the grid columns, then ``nsim``, ``n_ok``, ``n_failed``,
        ``n_boundary``, ``rejections``, ``power``, ``power_lower``/``power_upper`` (95%
        Wilson interval), ``mc_se``, ``true_value``, ``mean_estimate``, ``bias``,
        ``empirical_se``, ``mean_model_se``, ``coverage``, ``type1_error`` (power when the
        true value is 0), ``mean_df``, ``observed_fraction``, ``ddf``.  With
        ``replicates=True`` a tuple ``(summary, per_trial)``.

    Notes
    -----
    The test: ``t = c'beta_hat / sqrt(c'A^-1 c)`` with ``A = X'V^-1X`` at the REML (or ML)
    estimate, two-sided p value from t(df); Satterthwaite ``df = 2 v^2 / (g' W g)`` with
    ``v = c'A(theta)^-1 c``, ``g = dv/dtheta`` (autodiff) and ``W = 2 H^-1``, ``H`` the Hessian of
    -2 log L at the estimate (as ``res.coef_table``).  Failed fits (status other than converged
    or boundary after a second attempt) are excluded: power is ``rejections / n_ok``.  Boundary
    fits are kept and counted.  Power intervals are Wilson score intervals.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> d = lmm.Design(20, visits=("V1", "V2"))
    >>> t = lmm.Truth({"(Intercept)": 0.0}, {"sigma": 1.0, "rho": 0.5})
    >>> out = lmm.power("y ~ arm * visit + cs(visit | subject)", d, t, "arm[T.TRT]:visit[T.V2]",
    ...                 grid={"effect": [0.0, 1.0]}, nsim=20, ddf="residual")
    >>> list(out.effect), int(out.nsim[0])
    ([0.0, 1.0], 20)
    """
    study, rows, scens, res = _simulate_and_fit(formula, design, truth, hypothesis, grid, nsim, ddf, alpha, seed, reml,
                                                chunk_size, devices, progress)
    summary, extra = _summarise(res, rows, scens, float(alpha), study.ddf, int(nsim))
    if not replicates:
        return summary
    per = pd.DataFrame({
        "scenario": res["scenario"], "replicate": res["replicate"], "estimate": res["est"], "std_error": res["se"],
        "df": res["df"][:, DDF_POWER.index(study.ddf)], "p_value": extra["p_value"], "reject": extra["reject"],
        "ci_lower": extra["ci_lower"], "ci_upper": extra["ci_upper"],
        "status": [STATUS[int(s)] for s in res["status"]], "ok": extra["ok"],
        "n_iter": res["n_iter"], "n_obs": res["n_obs"].astype(int), "deviance": res["dev"], "retried": res["retried"],
    })
    return summary, per


def _simulate_and_fit(formula, design, truth, hypothesis, grid, nsim, ddf, alpha, seed, reml, chunk_size, devices,
                      progress):
    _check_common(nsim, alpha, seed)
    rows = _grid_rows(grid)
    n_max = _max_n(rows, design)
    study = _Study(formula, design, truth, hypothesis, n_max, ddf=ddf, reml=reml, kinds=_kinds(rows, design))
    scens = [study.scenario(r, n_max) for r in rows]
    runner = _Runner(study, seed, chunk_size=chunk_size, devices=devices, progress=progress)
    return study, rows, scens, runner.run(scens, int(nsim))


def operating_characteristics(analyses, design: Design, truth: Truth, hypothesis, **kwargs) -> pd.DataFrame:
    """Compare analyses (models, df methods) on the same simulated trials.

    ``analyses`` maps a label to a formula or to ``(formula, ddf)``.  Every analysis sees the
    same trials (same seed, truth and design), so differences are paired.  The truth must not
    depend on the analysis (give ``Truth(structure=...)``, and ``random=`` when needed).
    Other arguments as :func:`power`.  Returns the :func:`power` tables stacked, with a
    column ``analysis``.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> d = lmm.Design(20, visits=("V1", "V2"))
    >>> t = lmm.Truth({}, {"sigma": 1.0, "rho": 0.5}, structure="cs")
    >>> f = "y ~ arm * visit + cs(visit | subject)"
    >>> oc = lmm.operating_characteristics({"Satterthwaite": f, "residual df": (f, "residual")},
    ...                                    d, t, "arm[T.TRT]:visit[T.V2]", nsim=20)
    >>> list(oc.analysis), list(oc.ddf)
    (['Satterthwaite', 'residual df'], ['satterthwaite', 'residual'])
    """
    if not isinstance(analyses, dict) or not analyses:
        raise LMMError("analyses must be a non-empty dict label -> formula or (formula, ddf).")
    if truth.structure is None:
        raise LMMError(
            "operating_characteristics: give Truth(structure=...) (and random=... when the truth has random "
            "effects) so that every analysis is compared on the same simulated trials."
        )
    parsed = {}
    for label, a in analyses.items():
        formula, ddf = (a, kwargs.get("ddf", "satterthwaite")) if isinstance(a, str) else tuple(a)
        parsed[label] = (formula, str(ddf).lower())
    kw = {k: kwargs.get(k, v) for k, v in dict(grid=None, nsim=1000, alpha=0.05, seed=0, reml=True, chunk_size=None,
                                                devices=None, progress=None).items()}
    unknown = set(kwargs) - set(kw) - {"ddf"}
    if unknown:
        raise LMMError(f"operating_characteristics: unknown arguments {sorted(unknown)}; see lmm.power for the options.")
    runs = {}
    outs = []
    for label, (formula, ddf) in parsed.items():
        if formula not in runs:  # analyses that differ only in the df method share their fits
            runs[formula] = _simulate_and_fit(formula, design, truth, hypothesis, kw["grid"], kw["nsim"], ddf,
                                              kw["alpha"], kw["seed"], kw["reml"], kw["chunk_size"], kw["devices"],
                                              kw["progress"])
        study, rows, scens, res = runs[formula]
        if ddf not in DDF_POWER:
            raise LMMError(f"analyses[{label!r}]: ddf={ddf!r} is not available for power; use one of {DDF_POWER}.")
        tab = _summarise(res, rows, scens, float(kw["alpha"]), ddf, int(kw["nsim"]))[0]
        tab.insert(0, "analysis", label)
        outs.append(tab)
    return pd.concat(outs, ignore_index=True)


@dataclass
class SampleSize:
    """Result of :func:`sample_size`.

    ``n_per_arm``: the smallest n evaluated whose estimated power reaches the target (None if
    none up to ``n_range[1]``); ``power``, ``power_lower``, ``power_upper`` there; ``table``:
    every n evaluated (the :func:`power` rows, sorted by n); ``n_plausible``: the evaluated n
    whose Monte-Carlo interval contains the target (the answer's Monte-Carlo uncertainty).
    """

    n_per_arm: int | None
    power: float
    power_lower: float
    power_upper: float
    target_power: float
    table: pd.DataFrame = field(repr=False)
    n_plausible: list = field(default_factory=list)

    def __repr__(self):
        if self.n_per_arm is None:
            return f"<SampleSize: target {self.target_power} not reached (max power {self.table.power.max():.3f})>"
        return (f"<SampleSize n_per_arm={self.n_per_arm}: power {self.power:.3f} "
                f"[{self.power_lower:.3f}, {self.power_upper:.3f}], target {self.target_power}>")


def sample_size(formula: str, design: Design, truth: Truth, hypothesis, *, target_power: float = 0.8,
                n_range=(4, 500), nsim: int = 1000, ddf: str = "satterthwaite", alpha: float = 0.05,
                seed: int = 0, reml: bool = True, scenario: dict | None = None, **kwargs) -> SampleSize:
    """Smallest n per arm whose simulated power reaches ``target_power`` (bisection over n).

    Every candidate n is simulated as scenario 0 with the same seed (common random numbers:
    subject i of an arm is the same simulated subject for every n, so power rises smoothly with
    n and the search is stable).  The models are built once for ``n_range[1]``, so no candidate
    recompiles.  ``scenario`` fixes other grid parameters (e.g. ``{"effect": 0.5}``).

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> d = lmm.Design(20, visits=("V1", "V2"))
    >>> t = lmm.Truth({"arm[T.TRT]:visit[T.V2]": 1.5}, {"sigma": 1.0, "rho": 0.5})
    >>> ss = lmm.sample_size("y ~ arm * visit + cs(visit | subject)", d, t, "arm[T.TRT]:visit[T.V2]",
    ...                      n_range=(4, 20), nsim=50)
    >>> 4 <= ss.n_per_arm <= 20
    True
    """
    _check_common(nsim, alpha, seed)
    if not 0 < float(target_power) < 1:
        raise LMMError(f"target_power must lie in (0, 1), e.g. 0.8, got {target_power!r}.")
    try:
        lo, hi = (int(v) for v in n_range)
    except (TypeError, ValueError):
        raise LMMError(f"n_range must be (smallest, largest) n per arm, got {n_range!r}.") from None
    if not 2 <= lo <= hi:
        raise LMMError(f"n_range must satisfy 2 <= smallest <= largest, got {n_range!r}.")
    base = dict(scenario or {})
    if "n_per_arm" in base:
        raise LMMError("sample_size: do not put n_per_arm in scenario; it is what is searched (use n_range).")
    study = _Study(formula, design, truth, hypothesis, hi, ddf=ddf, reml=reml, kinds=_kinds([base], design))
    runner = _Runner(study, seed, **kwargs)
    evaluated = {}

    def at(n):
        if n not in evaluated:
            row = dict(base, n_per_arm=n)
            sc = [study.scenario(row, hi)]
            res = runner.run(sc, int(nsim))
            evaluated[n] = _summarise(res, [row], sc, float(alpha), study.ddf, int(nsim))[0].iloc[0]
        return evaluated[n].power

    tp = float(target_power)
    if at(hi) < tp:
        best = None
    elif at(lo) >= tp:
        best = lo
    else:
        a, b = lo, hi  # power(a) < target <= power(b)
        while b - a > 1:
            mid = (a + b) // 2
            if at(mid) >= tp:
                b = mid
            else:
                a = mid
        best = b
    table = pd.DataFrame([evaluated[n] for n in sorted(evaluated)]).reset_index(drop=True)
    plaus = [int(n) for n, r in zip(table.n_per_arm, table.itertuples()) if r.power_lower <= tp <= r.power_upper]
    if best is None:
        return SampleSize(None, np.nan, np.nan, np.nan, tp, table, plaus)
    r = evaluated[best]
    return SampleSize(int(best), float(r.power), float(r.power_lower), float(r.power_upper), tp, table, plaus)


def simulate_trials(formula: str, design: Design, truth: Truth, *, grid=None, scenario: int = 0,
                    replicates=(0,), seed: int = 0, hypothesis=None) -> pd.DataFrame:
    """The simulated trials that :func:`power` fits, as a long data frame.

    Returns the design's columns plus the response (named as in ``formula``) and a column
    ``replicate``; rows of subjects beyond the scenario's n are left out, missing visits are
    NaN.  Same keys as :func:`power` with the same ``seed`` and ``grid`` (to check a trial, or
    to fit it with other software).  A grid with ``effect`` needs the ``hypothesis`` too.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> d = lmm.Design(5, visits=("V1", "V2"))
    >>> t = lmm.Truth({}, {"sigma": 1.0, "rho": 0.5})
    >>> sim = lmm.simulate_trials("y ~ arm + cs(visit | subject)", d, t, replicates=[0, 1])
    >>> sim.shape
    (40, 6)
    """
    rows = _grid_rows(grid)
    if not 0 <= int(scenario) < len(rows):
        raise LMMError(f"scenario must index the grid's rows (0..{len(rows) - 1}), got {scenario!r}.")
    n_max = _max_n(rows, design)
    if hypothesis is None and any("effect" in r for r in rows):
        raise LMMError("simulate_trials: the grid sets 'effect', the true value of the hypothesis; pass hypothesis=... "
                       "as to lmm.power.")
    study = _Study(formula, design, truth, hypothesis, n_max, ddf="residual", reml=True, kinds=_kinds(rows, design))
    scens = [study.scenario(r, n_max) for r in rows]
    tab = study.tables(scens)
    runner = _Runner(study, seed)
    reps = np.atleast_1d(np.asarray(replicates, dtype=int))
    y, m = jax.device_get(_simulate_items(runner.key, jnp.full(len(reps), int(scenario), jnp.int32),
                                          jnp.asarray(reps, jnp.int32), tab, runner.cs))
    info = study.model.info
    frame = study.model.data
    resp = info.formula.response
    n = scens[int(scenario)]["n"]
    keep_rows = study.idx_of[info.row_s] < n
    out = []
    for j, r in enumerate(reps):
        d = frame.iloc[info.row_index[keep_rows]].copy()
        vals = np.asarray(y[j])[info.row_s[keep_rows], info.row_t[keep_rows]]
        obs = np.asarray(m[j])[info.row_s[keep_rows], info.row_t[keep_rows]] > 0
        d[resp] = np.where(obs, vals, np.nan)
        d["replicate"] = int(r)
        out.append(d)
    return pd.concat(out, ignore_index=True)

