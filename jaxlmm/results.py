"""Host-side results: tables, summaries, BLUPs, residuals and predictions.

An :class:`LMMResult` holds the model and its fit's public, immutable
:class:`~jaxlmm.fitting.FitRecord`; it is never modified after construction (``with_ddf``
returns a new result) and caches its derived quantities on itself only.
"""

from __future__ import annotations

from functools import cached_property

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .distributions import norm_ppf, t_ppf, t_sf
from .checks import as_frame, check_choice, check_count, check_keywords, check_seed
from .design import check_columns, new_design_rows
from .errors import ArgumentError, LMMError
from .visits import levels_of
from .fitting import natural_values
from .optimize import BOUNDARY, CONVERGED, STATUS
from .covariance import SPATIAL
from .spec import NaturalSpec

__all__ = ["LMMResult"]

DDF_METHODS = ("satterthwaite", "kenward-roger", "kenward-roger-linear", "residual", "between-within")


class LMMResult:
    """A fitted linear mixed model.

    Information criteria follow SAS PROC MIXED: ``n_params`` counts the covariance parameters
    under REML and the covariance parameters plus ``rank(X)`` under ML; ``aic = deviance + 2 *
    n_params``; ``bic = deviance + n_params * log(n)`` with ``n`` the number of subjects in the
    input data (SAS counts subjects whose rows were all dropped too; without a subject factor,
    the number of observations); ``aicc`` uses ``n* = N`` (ML) or ``N - p`` (REML).
    Note that lme4 and nlme count fixed effects under REML too and use ``log(N)`` in BIC.
    """

    def __init__(self, model, record, ddf_method: str = "satterthwaite", kr_information: str = "auto"):
        method = check_choice(str(ddf_method).replace("_", "-") if isinstance(ddf_method, str) else ddf_method,
                              "ddf", DDF_METHODS)
        if kr_information not in ("auto", "expected", "observed"):
            raise ValueError(f"kr_information must be 'auto', 'expected' or 'observed', not {kr_information!r}")
        self.model = model
        self.record = record
        self.info = model.info
        self.ddf_method = method
        self.kr_information = kr_information

    # ---- the fit record ---------------------------------------------------------------
    @property
    def reml(self) -> bool:
        return self.record.reml

    @property
    def deviance(self) -> float:
        """-2 log L (ML) or -2 restricted log L (REML) of the data (with observation weights: of
        the weighted model, ``-sum(log w)`` added to the scaled arrays' deviance)."""
        return self.record.deviance + self.info.deviance_offset()

    @property
    def status(self) -> int:
        return self.record.status

    @property
    def status_message(self) -> str:
        return STATUS[self.record.status]

    @property
    def n_iter(self) -> int:
        return self.record.n_iter

    @property
    def n_obs(self) -> int:
        return self.info.n_obs

    @property
    def n_groups(self):
        return self.info.n_groups

    @property
    def p(self) -> int:
        return len(self.info.fixed_names)

    @property
    def n_theta(self) -> int:
        return self.model.spec.n_theta

    # ---- fit statistics -------------------------------------------------------------
    @property
    def converged(self) -> bool:
        return self.status in (CONVERGED, BOUNDARY)

    @property
    def boundary(self) -> bool:
        return self.status == BOUNDARY

    @property
    def loglik(self) -> float:
        return -0.5 * self.deviance

    @property
    def n_params(self) -> int:
        return self.n_theta + (0 if self.reml else self.p)

    @property
    def aic(self) -> float:
        return self.deviance + 2 * self.n_params

    @property
    def bic(self) -> float:
        n = self.info.n_subjects_input if self.info.subject is not None and self.model.spec.plan is None else self.n_obs
        return self.deviance + self.n_params * np.log(n)

    @property
    def aicc(self) -> float:
        q = self.n_params
        n = self.n_obs - (self.p if self.reml else 0)
        return self.deviance + 2 * q * n / max(n - q - 1, 1)

    # ---- fixed effects --------------------------------------------------------------
    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self.record.beta, index=self.info.fixed_names, name="estimate")

    @property
    def vcov(self) -> pd.DataFrame:
        """Covariance of beta: (X'V^-1X)^-1, or its Kenward-Roger adjustment under KR."""
        n = self.info.fixed_names
        return pd.DataFrame(self._vcov_used(), index=n, columns=n)

    @property
    def df_residual(self) -> int:
        return self.n_obs - self.p

    def _df(self):
        if self.ddf_method == "residual":
            return np.full(self.p, float(self.df_residual))
        if self.ddf_method == "between-within":
            from .inference import between_within

            return between_within(self)[0]
        if self.ddf_method.startswith("kenward-roger"):
            kr = self.kenward_roger
            return np.array([kr.df(row) for row in np.eye(self.p)])
        from .inference import satterthwaite_df

        return np.array([satterthwaite_df(self, row) for row in np.eye(self.p)])

    @cached_property
    def satterthwaite(self):
        """(Phi, dPhi/dtheta [p, p, k], Cov(theta_hat)) at the estimate, for Satterthwaite df
        (:func:`jaxlmm.inference.satterthwaite_pieces`)."""
        from .inference import satterthwaite_pieces

        return satterthwaite_pieces(self)

    @cached_property
    def kenward_roger(self):
        """The Kenward-Roger computation of this fit's df method (:func:`jaxlmm.inference.kenward_roger`)."""
        from .inference import kenward_roger

        info = self.kr_information
        if info == "auto":  # SAS / mmrm for covariance-term models, pbkrtest for lme4-type models
            info = "observed" if self.info.visit is not None else "expected"
        return kenward_roger(self, linear=self.ddf_method == "kenward-roger-linear", information=info)

    def _vcov_used(self):
        """The covariance of beta behind the table: KR-adjusted under Kenward-Roger."""
        if self.ddf_method.startswith("kenward-roger"):
            return self.kenward_roger.PhiA
        return self.record.vcov

    def with_ddf(self, method: str, kr_information: str = "auto") -> "LMMResult":
        """The same fit with another denominator-df method (no refit): ``"satterthwaite"``
        (default), ``"kenward-roger"`` (KR-adjusted SEs too), ``"kenward-roger-linear"``
        (SAS ``ddfm=kr(linear)``), ``"residual"`` (``N - p``), ``"between-within"`` (SAS
        ``BETWITHIN``).

        ``kr_information``: the covariance of the variance parameters used by Kenward-Roger,
        ``"expected"`` (inverse expected REML information, as pbkrtest / lmerTest),
        ``"observed"`` (inverse observed information, as SAS PROC MIXED and mmrm), or
        ``"auto"``: observed for models with a covariance term, expected otherwise.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
        >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
        >>> kr = res.with_ddf("kenward-roger")
        >>> kr.ddf_method, res.ddf_method
        ('kenward-roger', 'satterthwaite')
        >>> bool(kr.coef_table.loc["time", "std_error"] >= res.coef_table.loc["time", "std_error"])
        True
        """
        return LMMResult(self.model, self.record, ddf_method=method, kr_information=kr_information)

    @property
    def coef_table(self) -> pd.DataFrame:
        """Estimates with SEs, df (``ddf_method``), t, two-sided p and 95% CIs.  Under
        Kenward-Roger the SEs are the KR-adjusted ones (as SAS and pbkrtest).

        ``SE_j = sqrt(Phi_jj)`` with ``Phi = (X'V^-1X)^-1`` at the estimate (KR's ``Phi_A``
        under Kenward-Roger), ``t = beta_j / SE_j``, ``p = 2 P(t_df > |t|)``, CI ``beta_j +-
        t_{df, 0.975} SE_j``.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
        >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
        >>> list(res.coef_table.columns)
        ['estimate', 'std_error', 'df', 't_value', 'p_value', 'ci_lower', 'ci_upper']
        """
        est = self.record.beta
        se = np.sqrt(np.diag(self._vcov_used()))
        df = self._df()
        t = est / se
        p = 2 * t_sf(np.abs(t), df)
        q = t_ppf(0.975, df)
        return pd.DataFrame(
            {
                "estimate": est,
                "std_error": se,
                "df": df,
                "t_value": t,
                "p_value": p,
                "ci_lower": est - q * se,
                "ci_upper": est + q * se,
            },
            index=self.info.fixed_names,
        )

    def test(self, L, rhs=None) -> pd.Series:
        """Wald test of ``L beta = rhs`` (one row: t test; several rows: F test) with this fit's
        df method.  ``L`` is a vector or matrix with one column per fixed effect, or a dict
        ``{name: coefficient}``.  Returns estimate, std_error/t_value (one row), F, num_df,
        den_df, p_value.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> res = lmm.fit("CHG ~ ARMCD + AVISIT + ar1(AVISIT | USUBJID)", lmm.example_trial())
        >>> out = res.test({"ARMCD[T.TRT]": 1.0})
        >>> bool(abs(out["t_value"] ** 2 - out["F"]) < 1e-8)
        True
        """
        from .inference import wald_test

        if isinstance(L, dict):
            unknown = [k for k in L if k not in self.fixef.index]
            if unknown:
                raise ValueError(f"Unknown fixed effects {unknown}; names are {list(self.fixef.index)}")
            L = np.array([L.get(n, 0.0) for n in self.fixef.index])
        return pd.Series(wald_test(self, L, rhs), name="test")

    def anova(self) -> pd.DataFrame:
        """Type III F tests, one per fixed-effect term, with the fit's df method.

        The hypothesis of a term is "its coefficients are zero when every factor is coded with
        sum-to-zero contrasts" (SAS Type III, lmerTest ``type = 3``), carried to the fitted
        treatment coding: with ``X_sum M = X`` (same column space), ``beta_sum = M beta`` and
        the term's rows of ``M`` form ``L``.  Numeric covariates enter uncentred, as in SAS.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> res = lmm.fit("CHG ~ ARMCD * AVISIT + BASE + ar1(AVISIT | USUBJID)", lmm.example_trial())
        >>> list(res.anova().index)
        ['ARMCD', 'AVISIT', 'BASE', 'ARMCD:AVISIT']
        """
        import re

        import formulaic

        from .inference import wald_test

        data = self.model.data.iloc[self.info.row_index]
        fixed = self.info.formula.fixed
        variables = sorted(str(v) for v in formulaic.Formula(fixed).required_variables)
        eff = fixed
        for v in variables:
            col = data[v]
            if (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)) or f"C({v}" in fixed:
                continue
            eff = re.sub(r"(?<![\w.])" + re.escape(v) + r"(?![\w.(])", f"C({v}, contr.sum)", eff)
        mm_t = self.info.x_spec.get_model_matrix(data, na_action="ignore")
        mm_e = formulaic.model_matrix(eff, data, na_action="ignore")
        keep = list(self.info.keep_cols)
        Xt = np.asarray(mm_t.to_numpy(dtype=float))[:, keep]
        Xe = np.asarray(mm_e.to_numpy(dtype=float))
        M = np.linalg.lstsq(Xe, Xt, rcond=None)[0]
        rows = []
        for (term, _), (_, idx_e) in zip(mm_t.model_spec.term_indices.items(), mm_e.model_spec.term_indices.items()):
            name = re.sub(r"C\(([A-Za-z_][\w.]*), Poly\)", r"\1", str(term))  # an ordered factor: its name
            if name == "1":
                continue
            L = M[list(idx_e)]
            U, sv, Vt = np.linalg.svd(L, full_matrices=False)
            L = Vt[sv > 1e-10 * max(sv.max(), 1e-300)] if sv.size else L
            if L.shape[0] == 0:
                continue
            t = wald_test(self, L)
            rows.append({"term": name, "num_df": t["num_df"], "den_df": t["den_df"], "F": t["F"],
                         "p_value": t["p_value"]})
        return pd.DataFrame(rows).set_index("term")

    def emmeans(self, specs, by=None, pairs: bool = False, level: float = 0.95, adjust: str = "tukey") -> pd.DataFrame:
        """Estimated marginal means (LS-means) on the model's reference grid, as SAS LSMEANS and
        R emmeans: every combination of the factors in ``specs`` (and ``by``), other factors
        averaged with equal weights, numeric covariates at their mean over the rows used.
        An LS-mean is ``l' beta_hat`` with ``l`` the average of the grid rows' design vectors;
        its SE is ``sqrt(l' Phi l)`` and its df the fit's df method (KR-adjusted ``Phi`` under
        Kenward-Roger).

        With ``pairs=True``: all pairwise differences within each ``by`` group, with t tests.
        ``adjust`` sets the multiplicity adjustment over the ``k`` means of a group: ``"tukey"``
        (default, as emmeans and SAS ``ADJUST=TUKEY``: ``p = P(Q_{k,df} > sqrt(2) |t|)`` with
        ``Q`` the studentized range; intervals use ``q_{k,df}(level) / sqrt(2)``),
        ``"bonferroni"`` (p times the number of pairs in the group, capped at 1) or ``"none"``.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> res = lmm.fit("CHG ~ ARMCD * AVISIT + BASE + ar1(AVISIT | USUBJID)", lmm.example_trial())
        >>> em = res.emmeans("ARMCD", by="AVISIT")
        >>> em.shape[0]
        10
        """
        import itertools

        import formulaic

        from .inference import wald_test

        specs = [specs] if isinstance(specs, str) else list(specs)
        by = [] if by is None else ([by] if isinstance(by, str) else list(by))
        data = self.model.data.iloc[self.info.row_index]
        variables = sorted(str(v) for v in formulaic.Formula(self.info.formula.fixed).required_variables)
        cats, nums = [], {}
        for v in variables:
            col = data[v]
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                nums[v] = float(col.mean())
            else:
                cats.append(v)
        for v in specs + by:
            if v in nums:
                raise LMMError(f"{v!r} is a numeric covariate: LS-means are over the levels of factors (factors in "
                               f"this model: {cats}). To treat it as a factor, write C({v}) in the formula.")
            if v not in cats:
                raise LMMError(f"{v!r} is not a factor of the fixed part; factors are {cats}")
        levels = {v: levels_of(data[v]) for v in cats}
        grid = pd.DataFrame(list(itertools.product(*[levels[v] for v in cats])), columns=cats)
        for v, mval in nums.items():
            grid[v] = mval
        for v in cats:
            if isinstance(data[v].dtype, pd.CategoricalDtype):
                grid[v] = pd.Categorical(grid[v], categories=data[v].cat.categories)
        Xg, _ = new_design_rows(self.info, grid)
        keys = specs + by
        groups = grid.groupby([grid[k].astype(object) for k in keys], sort=False).indices
        rows, Ls = [], []
        for key, idx in groups.items():
            key = key if isinstance(key, tuple) else (key,)
            rows.append(dict(zip(keys, key)))
            Ls.append(Xg[idx].mean(axis=0))
        L = np.array(Ls)
        out = pd.DataFrame(rows)
        if pairs:
            if adjust not in ("tukey", "bonferroni", "none"):
                raise LMMError(f"adjust must be 'tukey', 'bonferroni' or 'none', got {adjust!r}.")
            prow, pL, n_means, n_pairs = [], [], [], []
            bykeys = out[by].astype(object).apply(tuple, axis=1) if by else pd.Series([()] * len(out))
            for b in dict.fromkeys(bykeys):
                ii = [i for i in range(len(out)) if bykeys.iloc[i] == b]
                combos = list(itertools.combinations(ii, 2))
                for a_, c_ in combos:
                    lab = " - ".join(" ".join(str(out.loc[j, k]) for k in specs) for j in (a_, c_))
                    prow.append({**dict(zip(by, b)), "contrast": lab})
                    pL.append(L[a_] - L[c_])
                    n_means.append(len(ii))
                    n_pairs.append(len(combos))
            out, L = pd.DataFrame(prow), np.array(pL)
            n_means, n_pairs = np.array(n_means), np.array(n_pairs)
        res = [wald_test(self, Li) for Li in L]
        est = np.array([r["estimate"] for r in res])
        se = np.array([r["std_error"] for r in res])
        df = np.array([r["den_df"] for r in res])
        q = t_ppf(0.5 + level / 2, df)
        name = "estimate" if pairs else "emmean"
        out[name], out["std_error"], out["df"] = est, se, df
        if pairs:
            t = est / se
            out["t_value"] = t
            p_raw = 2 * t_sf(np.abs(t), df)
            if adjust == "none":
                out["p_value"] = p_raw
            elif adjust == "tukey":
                from scipy import stats  # studentized range: only for Tukey pairs

                out["p_value"] = stats.studentized_range.sf(np.sqrt(2) * np.abs(t), n_means, df)
                q = stats.studentized_range.ppf(level, n_means, df) / np.sqrt(2)
            else:  # bonferroni
                out["p_value"] = np.minimum(1.0, p_raw * n_pairs)
                q = t_ppf(1 - (1 - level) / (2 * n_pairs), df)
            out["adjust"] = adjust
        out["ci_lower"], out["ci_upper"] = est - q * se, est + q * se
        return out

    def vcov_sandwich(self, kind: str = "CR2") -> pd.DataFrame:
        """Cluster-robust covariance of beta by subject: ``"CR0"`` (SAS ``EMPIRICAL``) or the
        bias-reduced ``"CR2"`` (mmrm "Empirical-Bias-Reduced"); see
        :func:`jaxlmm.inference.sandwich`.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
        >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
        >>> V = res.vcov_sandwich("CR2")
        >>> V.shape
        (3, 3)
        """
        from .inference import sandwich

        n = self.info.fixed_names
        return pd.DataFrame(sandwich(self, kind), index=n, columns=n)

    # ---- covariance parameters ------------------------------------------------------
    @property
    def theta(self) -> pd.Series:
        spec = self.model.spec
        return pd.Series(self._natural[0], index=spec.names(self.info.visit_labels), name="estimate")

    @cached_property
    def _natural(self):
        """Natural parameters and their Jacobian in theta (host arrays)."""
        vals, J = natural_values(jnp.asarray(self.record.theta), self.model.spec)
        return np.asarray(vals), np.asarray(J)

    @property
    def theta_table(self) -> pd.DataFrame:
        """Covariance parameters with SEs from the observed information and 95% Wald intervals.

        ``Cov(theta_hat) = 2 H^-1`` (``H`` the exact Hessian of -2 log L in the optimiser's
        parameters), carried to natural parameters by the delta method.  Intervals are built on
        a scale where the estimate is closer to normal and transformed back: ``log`` for SDs and
        ranges, ``logit`` for a power-correlation base, Fisher's ``z = atanh`` for correlations.  Near a boundary (a variance ~0) Wald intervals
        are unreliable; use profile (:meth:`conf_int` with ``method="profile"``) or bootstrap
        intervals there.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
        >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
        >>> res.theta_table.columns.tolist()
        ['estimate', 'std_error', 'ci_lower', 'ci_upper']
        """
        return self._theta_wald(0.95)

    def _theta_wald(self, level):
        J = self._natural[1]
        cov = J @ self.record.theta_covariance() @ J.T
        est = self.theta
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
        z = norm_ppf(0.5 + level / 2)
        lo, hi = np.empty(len(est)), np.empty(len(est))
        bounds = NaturalSpec(self.model.spec).bounds()
        for i, (name, v) in enumerate(est.items()):
            if np.isinf(bounds[i][1]):  # SDs, ranges: on the log scale
                s_log = se[i] / max(v, 1e-300)
                lo[i], hi[i] = v * np.exp(-z * s_log), v * np.exp(z * s_log)
            elif bounds[i] == (0.0, 1.0):  # a power-correlation base: on the logit scale
                p = float(np.clip(v, 1e-12, 1 - 1e-12))
                s_l = se[i] / (p * (1 - p))
                lo[i], hi[i] = [1 / (1 + np.exp(-(np.log(p / (1 - p)) + k * z * s_l))) for k in (-1, 1)]
            else:
                zt = np.arctanh(np.clip(v, -1 + 1e-12, 1 - 1e-12))
                s_z = se[i] / max(1 - v * v, 1e-300)
                lo[i], hi[i] = np.tanh(zt - z * s_z), np.tanh(zt + z * s_z)
        return pd.DataFrame({"estimate": est.to_numpy(), "std_error": se, "ci_lower": lo, "ci_upper": hi},
                            index=est.index)

    @cached_property
    def covparms(self) -> pd.DataFrame:
        """The covariance parameters as SAS PROC MIXED's "Covariance Parameter Estimates": SAS's
        names (``UN(i,j)``, ``CS``, ``Var(i)``, ``AR(1)``, ``TOEP(k)``, ``Rho(i)``, ``SP(EXP)``,
        ``Residual``, ...) and parameterisation (variances and covariances; SP(EXP) the range),
        with SEs from the observed information (the delta method from :attr:`theta_table`'s
        covariance).  ``subject``: the grouping factor of a random term, the subject column of the
        residual structure."""
        import jax

        spec = self.model.spec
        th = jnp.asarray(self.record.theta)
        phi = np.asarray(spec.sas_params(th))
        J = np.asarray(jax.jacfwd(spec.sas_params)(th))
        se = np.sqrt(np.clip(np.diag(J @ self.record.theta_covariance() @ J.T), 0, None))
        names = spec.sas_names()
        return pd.DataFrame({"cov_parm": [n for n, _ in names],
                             "subject": [g if g is not None else self.info.subject for _, g in names],
                             "estimate": phi, "std_error": se})

    def profile(self, which=None, n_points: int = 13, level_max: float = 0.99, criterion=None) -> pd.DataFrame:
        """Likelihood profiles: for each parameter psi, ``zeta(psi) = sign(psi - psi_hat)
        sqrt(d(psi) - d_min)`` with ``d(psi)`` the deviance minimised over all other parameters.

        The grid (``n_points`` per parameter, about +-1.3 ``z_{level_max}`` Wald SEs on a log /
        atanh scale) is evaluated in one batched, compiled solve.  Covariance parameters use the
        fit's criterion (``criterion="ml"`` for ML, as lme4); fixed effects use ML.  Returns a
        long DataFrame (``parameter, value, zeta, deviance, status``); see
        :mod:`jaxlmm.profile`.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
        >>> res = lmm.fit("y ~ time + ar1(visit | subject)", df)
        >>> pr = res.profile(which="rho", n_points=5)
        >>> [round(z, 1) for z in pr["zeta"]][2]
        0.0
        """
        from .profile import profile

        return profile(self, which=which, n_points=n_points, level_max=level_max, criterion=criterion)

    def conf_int(self, method: str = "wald", level: float = 0.95, which=None, criterion=None, n: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
        """Confidence intervals for the fixed effects and the covariance parameters.

        - ``"wald"``: fixed effects ``beta_j +- t_{df} SE`` with this fit's df method (as
          ``coef_table``); covariance parameters on the log (SD) / atanh (correlation) scale.
        - ``"profile"``: profile-likelihood intervals ``{psi: d(psi) - d_min <= z^2}``
          (:func:`jaxlmm.profile.confint_profile`; fixed effects on the ML deviance, covariance
          parameters on the fit's criterion or ``criterion="ml"`` to match lme4's
          ``confint(fit, method = "profile")``).
        - ``"bootstrap"``: percentile intervals from ``n`` parametric-bootstrap refits.

        Returns a DataFrame indexed by parameter with ``estimate, lower, upper``.

        Examples
        --------
        >>> import jaxlmm as lmm
        >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
        >>> res = lmm.fit("y ~ time + ar1(visit | subject)", df)
        >>> ci = res.conf_int(method="profile", which=["rho", "time"])
        >>> bool(ci.loc["rho", "lower"] < res.theta["rho"] < ci.loc["rho", "upper"])
        True
        """

        if not 0 < level < 1:
            raise LMMError(f"level must be in (0, 1), got {level!r}.")
        if method == "profile":
            from .profile import confint_profile

            return confint_profile(self, which=which, level=level, criterion=criterion)
        if method == "wald":
            ct = self.coef_table
            q = t_ppf(0.5 + level / 2, ct["df"])
            fx = pd.DataFrame({"estimate": ct["estimate"], "lower": ct["estimate"] - q * ct["std_error"],
                               "upper": ct["estimate"] + q * ct["std_error"]})
            th = self._theta_wald(level)
            tt = pd.DataFrame({"estimate": th["estimate"], "lower": th["ci_lower"], "upper": th["ci_upper"]})
            out = pd.concat([tt, fx])
        elif method == "bootstrap":
            ci = self.bootstrap(n=n, seed=seed).conf_int("percentile", level)
            out = ci.loc[list(self.theta.index) + list(self.info.fixed_names), ["estimate", "lower", "upper"]]
        else:
            raise LMMError(f"method must be 'wald', 'profile' or 'bootstrap', got {method!r}.")
        out.index.name = "parameter"
        if which is not None:
            which = [which] if isinstance(which, str) else list(which)
            missing = [w for w in which if w not in out.index]
            if missing:
                raise LMMError(f"Unknown parameter(s) {missing} in which=; choose from {list(out.index)}.")
            out = out.loc[which]
        return out

    @property
    def theta_unconstrained(self) -> np.ndarray:
        return self.record.theta.copy()

    @property
    def residual_covariance(self) -> pd.DataFrame:
        """The T x T residual covariance over the visit levels (or the distinct coordinate points of
        a spatial structure).  With a covariance per group (``un(visit | arm / subject)``) the
        groups' matrices are stacked, rows indexed by (group, visit): ``.loc["A"]`` is group A's.
        A spatial structure on each subject's own coordinates has one per subject: see
        :meth:`residual_covariance_of`."""
        if self.info.per_subject_cov:
            raise LMMError(
                f"The residual covariance of {self.info.formula.cov.text} depends on each subject's own coordinates "
                "(there is no common visit grid); use res.residual_covariance_of(subject) for one subject's, and "
                "res.theta / res.covparms for the parameters."
            )
        if self.info.variance:
            terms = ", ".join(v.text for v, _ in self.info.variance)
            raise LMMError(
                f"With the variance functions {terms} the residual covariance differs between observations; use "
                "res.residual_covariance_of(subject) for one subject's, and res.theta for the parameters.")
        lab = self.info.visit_labels if self.info.visit is not None else [f"pos{i + 1}" for i in range(self.info.T)]
        if self.info.resid_group is not None:  # one per group: rows (group, visit)
            Rg = np.asarray(self.model.spec.resid.group_matrices(jnp.asarray(self.record.theta)[self.model.spec.param_slices()[1]]))
            index = pd.MultiIndex.from_product([list(self.info.resid_group_levels), lab],
                                               names=[self.info.resid_group, self.info.visit])
            return pd.DataFrame(Rg.reshape(-1, len(lab)), index=index, columns=lab)
        R = np.asarray(self.model.spec.R(jnp.asarray(self.record.theta)))
        return pd.DataFrame(R, index=lab, columns=lab)

    def _residual_matrices(self) -> np.ndarray:
        """R [T, T], or one per subject [S_pad, T, T] for a per-subject spatial structure."""
        D = self.model.arrays.D
        th = jnp.asarray(self.record.theta)
        return np.asarray(self.model.spec.R(th) if D is None else self.model.spec.R(th, jnp.asarray(D)))

    def residual_covariance_of(self, subject) -> pd.DataFrame:
        """The residual covariance of one subject's observations, indexed by their row positions
        in the input data (in the subject's column order)."""
        info = self.info
        if subject not in info.subjects:
            raise LMMError(f"{subject!r} is not a subject of the fit (column {info.subject!r}).")
        s = info.subjects.index(subject)
        rows = np.nonzero(np.asarray(info.row_s) == s)[0]
        rows = rows[np.argsort(np.asarray(info.row_t)[rows])]
        t = np.asarray(info.row_t)[rows]
        D = self.model.arrays.D
        th = jnp.asarray(self.record.theta)
        R = np.asarray(self.model.spec.R(th) if D is None else self.model.spec.R(th, jnp.asarray(D[s])))
        lab = list(np.asarray(info.row_index)[rows])
        return pd.DataFrame(R[np.ix_(t, t)], index=lab, columns=lab)

    @property
    def residual_correlation(self) -> pd.DataFrame:
        R = self.residual_covariance
        sd = np.sqrt(np.diag(R.to_numpy()))
        return R / np.outer(sd, sd)

    @property
    def grouping_factors(self) -> list:
        """Names of the grouping factors of the random effects, in formula order."""
        return list(dict.fromkeys(b.group for b in self.model.spec.blocks))

    def _factor_blocks(self, g):
        return [j for j, b in enumerate(self.model.spec.blocks) if b.group == g]

    @property
    def random_covariance(self) -> dict:
        """Covariance matrix of the random effects of each grouping factor: {factor: DataFrame}
        (the blocks of one factor together; uncorrelated blocks give zero covariances)."""
        spec = self.model.spec
        th = jnp.asarray(self.record.theta)
        sl, _ = spec.param_slices()
        out = {}
        for g in self.grouping_factors:
            js = self._factor_blocks(g)
            cols = [c for j in js for c in spec.blocks[j].columns]
            G = np.zeros((len(cols), len(cols)))
            o = 0
            for j in js:
                k = spec.blocks[j].k
                G[o : o + k, o : o + k] = np.asarray(spec.blocks[j].matrix(th[sl[j]]))
                o += k
            out[g] = pd.DataFrame(G, index=cols, columns=cols)
        return out

    # ---- random effects -------------------------------------------------------------
    @cached_property
    def random_effects(self):
        """Modes and conditional covariances of all random effects (:func:`jaxlmm.ranef.random_effects`)."""
        from .ranef import random_effects

        return random_effects(self.record.theta, self.record.beta, self.model.arrays, self.model.spec)

    def _factor_columns(self, g):
        spec = self.model.spec
        return [c for j in self._factor_blocks(g) for c in spec.blocks[j].columns]

    def _ranef_arrays(self, g):
        """(modes [n_levels, k], conditional covariances [n_levels, k, k], level labels) of factor g."""
        spec, re = self.model.spec, self.random_effects
        if spec.plan is not None:
            for i, f in enumerate(spec.plan.factors):
                if f.name == g:
                    return re.b2[i], re.cv2[i], list(self.info.factors[g].labels)
        S = self.info.S
        fac = self.info.factors.get(g)
        if fac is None or fac.columns == (self.info.subject,):
            labels = list(self.info.subjects)
        else:  # a factor with the subject's partition written otherwise (e.g. subject:site)
            labels = [None] * S
            for s_, c in zip(self.info.row_s, fac.codes):
                labels[s_] = fac.labels[c]
        return re.b1[:S], re.cv1[:S], labels

    def _ranef_frames(self, conditional_sd: bool):
        out = {}
        for g in self.grouping_factors:
            b, cv, labels = self._ranef_arrays(g)
            vals = np.sqrt(np.clip(np.diagonal(cv, axis1=1, axis2=2), 0, None)) if conditional_sd else b
            out[g] = pd.DataFrame(vals, index=pd.Index(labels, name=g), columns=self._factor_columns(g))
        return out

    @property
    def ranef(self):
        """BLUPs (conditional modes) of the random effects, one row per level (conditional SDs in
        ``ranef_sd``).  With one grouping factor: a DataFrame; with several (nested or crossed):
        a dict ``{factor: DataFrame}``, like lme4's ``ranef()``."""
        if not self.model.spec.blocks:
            return pd.DataFrame(index=pd.Index(self.info.subjects, name=self.info.subject))
        out = self._ranef_frames(False)
        return out if len(out) > 1 else next(iter(out.values()))

    @property
    def ranef_sd(self):
        """Conditional SDs of the BLUPs, sqrt(diag(Var(b | y))) with beta treated as known (as lme4's
        ``condVar``); the same shape as :attr:`ranef`."""
        if not self.model.spec.blocks:
            return self.ranef
        out = self._ranef_frames(True)
        return out if len(out) > 1 else next(iter(out.values()))

    # ---- fitted values, residuals, prediction ----------------------------------------
    def _rows(self):
        a = self.model.arrays
        s, t = self.info.row_s, self.info.row_t
        return a, s, t

    def _random_part(self):
        """Z b of every used row (level 1 and level 2)."""
        a, s, t = self._rows()
        spec, re = self.model.spec, self.random_effects
        out = np.zeros(len(s))
        if spec.q:
            out += np.einsum("nk,nk->n", np.asarray(a.Z)[s, t], re.b1[s])
        if spec.plan is not None:
            lev = np.asarray(a.idx.lev)
            Z2 = np.asarray(a.Z2)
            for fi, f in enumerate(spec.plan.factors):
                zo = spec.plan.z_offsets[fi]
                out += np.einsum("nk,nk->n", Z2[s, t, zo : zo + f.k], re.b2[fi][lev[s, fi]])
        return out

    def _input_rows(self, values, name) -> pd.Series:
        """Values of the used rows as a Series over every input row (the input frame's index, NaN
        for rows the fit did not use), so ``df["fit"] = res.fitted()`` always aligns."""
        out = np.full(self.info.n_rows_input, np.nan)
        out[self.info.row_index] = values
        return pd.Series(out, index=self.model.data.index, name=name)

    def _fitted_used(self, conditional: bool = True) -> np.ndarray:
        a, s, t = self._rows()
        f = np.asarray(a.X)[s, t] @ self.record.beta
        if conditional and self.model.spec.blocks:
            f = f + self._random_part()
        return self.info.unscale(f)  # observation weights scale the arrays' rows

    def fitted(self, conditional: bool = True) -> pd.Series:
        """Fitted values, indexed like the input data (NaN for rows the fit did not use, e.g. a
        missing response or covariate).  ``conditional=True`` adds the BLUPs of every grouping
        factor (``X beta + Z b``); otherwise ``X beta``."""
        return self._input_rows(self._fitted_used(conditional), "fitted")

    def residuals(self, kind: str = "response") -> pd.Series:
        """Residuals, indexed like the input data (NaN for rows the fit did not use).

        ``"response"``: y - fitted (conditional on the BLUPs when there are random effects);
        ``"pearson"``: response residual / residual SD at that visit;
        ``"normalized"``: L_i^-1 r_i with R_i = L_i L_i' the subject's residual covariance block
        (uncorrelated, unit variance under the model; nlme's ``type = "normalized"``).
        """
        if kind not in ("response", "pearson", "normalized"):
            raise LMMError(f"kind must be 'response', 'pearson' or 'normalized', not {kind!r}.")
        a, s, t = self._rows()
        r = self.info.unscale(np.asarray(a.y)[s, t]) - self._fitted_used(conditional=True)
        if kind == "response":
            out = r
        else:  # with observation weights the residual variance of a row is R_tt / w
            r = r if self.info.row_sqrt_w is None else r * self.info.row_sqrt_w
        if kind == "pearson":
            R = self._residual_matrices()
            out = r / np.sqrt(np.diagonal(R, axis1=-2, axis2=-1)[..., t] if R.ndim == 2 else R[s, t, t])
        elif kind == "normalized":
            R = self._residual_matrices()
            T = self.info.T
            rr = np.zeros((self.info.S_pad, T))
            rr[s, t] = r
            m = np.asarray(a.m)
            Rs = (m[:, :, None] * m[:, None, :]) * (R[None] if R.ndim == 2 else R) + np.eye(T)[None] * (1 - m)[:, :, None]
            L = np.linalg.cholesky(Rs)
            z = np.linalg.solve(L, rr[..., None])[..., 0]
            out = z[s, t]
        return self._input_rows(out, f"{kind}_residual")

    def predict(self, newdata: pd.DataFrame | None = None, conditional: bool | str = True,
                interval: str | None = None, level: float = 0.95):
        """Predictions ``X beta`` (+ ``Z b`` of every grouping factor when ``conditional``),
        indexed like ``newdata`` (without it: :meth:`fitted`).
        A level that was not in the fit (a new subject, school, item) gets the population
        prediction for that factor only: its random effects count as 0, those of the other
        factors still apply; a row whose grouping columns are missing counts as a new level.
        A level of a fixed-effect factor that the fit never saw is refused.

        ``conditional="observed"`` also conditions on the subject's observed outcomes through
        the residual correlation (mmrm's ``conditional = TRUE``): a visit the subject missed is
        predicted from its other visits, an observed one gives back its value.
        ``interval="confidence"`` or ``"prediction"`` returns a DataFrame with ``fit``, ``se``,
        ``lower``, ``upper`` at ``level`` (normal quantiles, covariance parameters at their
        estimates; formulas in :mod:`jaxlmm.prediction`)."""
        from .prediction import prediction_frame

        if conditional not in (True, False, "observed"):
            raise ArgumentError(f"conditional must be True, False or 'observed', not {conditional!r}.")
        if newdata is None and interval is None and conditional != "observed":
            return self.fitted(conditional=conditional)
        newdata = self.model.data if newdata is None else as_frame(newdata, "newdata")
        if interval is None and conditional != "observed":
            return pd.Series(self._predict_rows(newdata, conditional), index=newdata.index, name="predicted")
        self._check_prediction_columns(newdata)
        Xn, Zn = new_design_rows(self.info, newdata)
        out = prediction_frame(self.model, self.record, newdata, Xn, Zn, conditional,
                               "confidence" if interval is None else interval, level)
        return out["fit"].rename("predicted") if interval is None else out

    def _check_prediction_columns(self, newdata):
        import formulaic

        pf = self.info.formula
        need = {str(v) for v in formulaic.Formula(pf.fixed).required_variables}
        for r in self.info.random_terms:
            need |= {str(v) for v in formulaic.Formula(r.expr).required_variables}
        check_columns(sorted(need), newdata, "needed for prediction")

    def _predict_rows(self, newdata, conditional):
        self._check_prediction_columns(newdata)
        Xn, Zn = new_design_rows(self.info, newdata)
        pred = Xn @ self.record.beta
        if not (conditional and self.model.spec.blocks):
            return pred
        spec = self.model.spec
        offs = np.cumsum([0] + [b.k for b in spec.blocks])
        for g in self.grouping_factors:
            fac = self.info.factors.get(g)
            cols = fac.columns if fac is not None else (g,)
            if not all(c in newdata.columns for c in cols):
                continue
            b, _, labels = self._ranef_arrays(g)
            values = fac.values if fac is not None else tuple(self.info.subjects)
            lookup = {v: i for i, v in enumerate(values)}
            keys = list(zip(*(newdata[c].tolist() for c in cols))) if len(cols) > 1 else newdata[cols[0]].tolist()
            pos = np.array([lookup.get(k, -1) for k in keys])
            bb = np.where(pos[:, None] >= 0, b[np.maximum(pos, 0)], 0.0)
            zc = np.concatenate([np.arange(offs[j], offs[j + 1]) for j in self._factor_blocks(g)])
            pred = pred + np.einsum("nk,nk->n", Zn[:, zc], bb)
        return pred

    # ---- simulation, refits, bootstrap ------------------------------------------------
    def simulate(self, n: int = 1, seed: int = 0) -> pd.DataFrame:
        """Simulate ``n`` responses from the fitted model (random effects drawn too), as lme4's
        ``simulate``: a DataFrame indexed like the input data with columns ``sim_1`` ...
        ``sim_n`` (``df["y_sim"] = sims["sim_1"]`` aligns); ``fit_batch`` takes it as it is.

        NaN where the data row had a missing response (or was not used), so a refit sees the
        same missing pattern.  Replicate r uses ``fold_in(PRNGKey(seed), r)``."""
        from .simulate import padded_to_rows, simulate_frame, simulate_padded

        n, seed = check_count(n, "n"), check_seed(seed)
        a = self.model.arrays
        y = simulate_padded(seed, jnp.arange(n), jnp.asarray(self.record.theta),
                            jnp.asarray(self.record.beta), a.to_jax(), jnp.asarray(a.m), self.model.spec)
        return simulate_frame(padded_to_rows(self.info, y, np.asarray(a.m)), self.model.data.index)

    def refit(self, y) -> "LMMResult":
        """Fit the same model to a new response vector (aligned with the data rows)."""
        df = self.model.data.copy()
        y = np.asarray(y, dtype=float).reshape(-1)
        if len(y) != len(df):
            raise ValueError(f"y must have {len(df)} values (one per data row), got {len(y)}")
        df[self.info.formula.response] = y
        return type(self.model)(self.model.formula, df, engine=self.model.engine,
                                weights=self.model.weights).fit(reml=self.reml)

    def bootstrap(self, n: int = 1000, seed: int = 0, **kwargs):
        """Parametric bootstrap: ``n`` datasets simulated from this fit, each refitted in
        batched calls.  Returns a :class:`~jaxlmm.bootstrap.BootstrapResult` (``conf_int()``,
        ``estimates``).  Keyword arguments go to the batch driver (``chunk_size``,
        ``progress``, ``devices``, ``dtype``)."""
        from .bootstrap import parametric_bootstrap

        check_keywords(kwargs, "bootstrap", ("chunk_size", "progress", "devices", "dtype", "memory_budget", "max_iter"))
        return parametric_bootstrap(self, check_count(n, "n"), check_seed(seed), **kwargs)

    def influence(self, method: str = "derivative") -> pd.DataFrame:
        """Influence of each subject on every estimate (fixed effects, covariance parameters in
        natural units): ``"derivative"``, the exact ``d estimate / d w_i`` at ``w = 1`` by
        implicit differentiation (``w_i`` the weight of subject i's log-likelihood);
        ``"one-step"``, one Newton step towards the fit without subject i; ``"loo"``, the
        leave-one-subject-out refits, all in one batched call.  See
        :func:`jaxlmm.differentiate.influence` and ``docs/differentiable.md``."""
        from .differentiate import influence

        return influence(self, method)

    # ---- text -----------------------------------------------------------------------
    def summary(self) -> str:
        info = self.info
        pf = info.formula
        lines = []
        method = "REML" if self.reml else "ML"
        lines.append(f"Linear mixed model fit by {method}  [jaxlmm]")
        lines.append(f"Formula: {pf.text}")
        struct = self.model.spec.resid
        if info.visit is not None:
            lines.append(
                f"Residual covariance: {struct.sas} over {info.T} {'points' if info.structure in SPATIAL else 'levels'} "
                f"of {info.visit!r}, subject {info.subject!r}" if not info.per_subject_cov else
                f"Residual covariance: {struct.sas} of the distances in ({info.visit}) within subject {info.subject!r}"
            )
        else:
            lines.append("Residual covariance: sigma^2 I")
        groups = self.group_counts()
        if len(groups) > 1 or (groups and info.subject is None):
            n_sub = "; groups: " + ", ".join(f"{g}, {n}" for g, n in groups.items())
        else:
            n_sub = f", subjects: {info.S}" if info.subject is not None else ""
        lines.append(f"Observations used: {self.n_obs}{n_sub}")
        if info.n_dropped:
            det = ", ".join(f"{c}: {n}" for c, n in info.dropped_by_column.items())
            lines.append(f"Rows dropped for missing values: {info.n_dropped} (missing per column: {det})")
        if info.dropped_aliased:
            lines.append(f"Aliased fixed-effect columns dropped: {', '.join(info.dropped_aliased)}")
        how = "Newton iterations" if self.record.optimizer == "newton" else "iterations (BFGS, then Newton)"
        lines.append(f"Convergence: {self.status_message} after {self.n_iter} {how}")
        lines.append("")
        lines.append("Fit statistics (SAS conventions)")
        lab = "-2 Res Log Likelihood" if self.reml else "-2 Log Likelihood"
        lines.append(f"  {lab:<24}{self.deviance:14.4f}")
        lines.append(f"  {'AIC':<24}{self.aic:14.4f}")
        lines.append(f"  {'AICC':<24}{self.aicc:14.4f}")
        lines.append(f"  {'BIC':<24}{self.bic:14.4f}")
        lines.append(f"  {'logLik':<24}{self.loglik:14.4f}   (parameters counted: {self.n_params})")
        lines.append("")
        if self.model.spec.blocks:
            lines += self._random_effects_lines()
        lines.append("Covariance parameters")
        th = self.theta
        w = max(len(n) for n in th.index) + 2
        for nm, v in th.items():
            lines.append(f"  {nm:<{w}}{v:12.6g}")
        lines.append("")
        df_note = {
            "residual": "residual df (N - p)",
            "satterthwaite": "Satterthwaite",
            "kenward-roger": "Kenward-Roger, KR-adjusted SEs",
            "kenward-roger-linear": "Kenward-Roger (linear), KR-adjusted SEs",
            "between-within": "between-within (SAS BETWITHIN)",
        }[self.ddf_method]
        lines.append(f"Fixed effects (df: {df_note})")
        ct = self.coef_table
        w = max(max(len(n) for n in ct.index), 8) + 2
        lines.append(f"  {'':<{w}}{'Estimate':>12}{'Std.Error':>12}{'df':>9}{'t value':>9}{'Pr(>|t|)':>11}")
        for nm, row in ct.iterrows():
            pv = row.p_value
            ps = "<1e-16" if pv < 1e-16 else f"{pv:.4g}"
            lines.append(
                f"  {nm:<{w}}{row.estimate:12.5g}{row.std_error:12.5g}{row.df:9.2f}{row.t_value:9.3f}{ps:>11}"
            )
        return "\n".join(lines)

    def group_counts(self) -> dict:
        """Number of levels of each grouping factor (in the rows used)."""
        out = {}
        for g in self.grouping_factors:
            fac = self.info.factors.get(g)
            out[g] = fac.n_levels if fac is not None else self.info.S
        return out

    def _random_effects_lines(self):
        """lme4-style table: group, name, variance, SD, correlations."""
        lines = ["Random effects"]
        rows = []
        for g, G in self.random_covariance.items():
            Gv = G.to_numpy()
            sd = np.sqrt(np.clip(np.diag(Gv), 0, None))
            for i, c in enumerate(G.index):
                corr = [Gv[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else 0.0 for j in range(i)]
                rows.append((g if i == 0 else "", c, Gv[i, i], sd[i], corr))
        if self.info.visit is None:
            R = self.residual_covariance.to_numpy()
            rows.append(("Residual", "", R[0, 0], np.sqrt(R[0, 0]), []))
        wg = max(8, max(len(r[0]) for r in rows)) + 2
        wn = max(6, max(len(r[1]) for r in rows)) + 2
        lines.append(f"  {'Groups':<{wg}}{'Name':<{wn}}{'Variance':>12}{'Std.Dev.':>12}  Corr")
        for g, c, v, sd_, corr in rows:
            cs = " ".join(f"{x:6.3f}" for x in corr)
            lines.append(f"  {g:<{wg}}{c:<{wn}}{v:12.5g}{sd_:12.5g}  {cs}".rstrip())
        lines.append("")
        return lines

    def __repr__(self):
        m = "REML" if self.reml else "ML"
        return f"<LMMResult {m} deviance={self.deviance:.4f} {self.status_message}: {self.info.formula.text}>"
