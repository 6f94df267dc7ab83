"""Predictions with confidence and prediction intervals (``LMMResult.predict(interval=)``).

For a new row j with fixed-effect row x, random-effect rows z (every grouping factor), the
fitted data y (the padded cells, rows scaled by sqrt(weight)), V = Var(y), Vb = Cov(beta_hat)
and r = y - X beta_hat, with theta at its estimate (plug-in):

* marginal (``conditional=False``): ``yhat = x'beta_hat``; confidence variance ``x'Vb x``;
  prediction variance ``x'Vb x + v_j``, ``v_j = z'G z + R_jj / w_j`` the variance of one new
  observation of new levels of every factor.
* conditional (``True``), the BLUP of ``mu_j = x'beta + z'b``: ``c = Cov(y, z'b)`` (nonzero on
  the cells that share a level with row j), ``yhat = x'beta_hat + c'V^-1 r`` (= ``x'beta_hat +
  z'b_hat``) and, with ``a = x - X'V^-1 c``, the prediction-error variance (Henderson's; SAS's
  ``OUTP=`` StdErrPred) ``Var(yhat - mu_j) = a'Vb a + z'G z - c'V^-1 c``.  A level the fit never
  saw contributes ``z'G z`` (its effect is predicted as 0).  The prediction interval adds
  ``R_jj / w_j``: the new residual independent of the fitted data.
* ``"observed"``, conditional on the subject's observed outcomes too (mmrm's ``conditional =
  TRUE``): ``k = c + Cov(y, e_j)``, the second part the residual covariance between row j's
  visit (or coordinates) and the subject's observed cells; ``yhat = x'beta_hat + k'V^-1 r``,
  ``a = x - X'V^-1 k``, confidence variance ``a'Vb a`` (beta_hat's share of the conditional
  mean), prediction variance ``a'Vb a + v_j - k'V^-1 k``.  A row at a visit where the subject
  was observed gives back its observed value with variance 0.

Intervals are ``yhat -/+ z_{(1+level)/2} se`` (normal quantiles, as mmrm).  ``V^-1`` is applied
by whitening each subject's level-1 block with its Cholesky factor ``L`` and, with level-2
factors, the Woodbury identity on the sparse system of :func:`jaxlmm.ranef.level2_system`:
``V^-1 = L^-T (I - Zt M^-1 Zt') L^-1`` with ``Zt = L^-1 Z2 Lambda``, ``M = Zt'Zt + I``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .covariance import SPATIAL
from .errors import ArgumentError, DataError
from .design import variance_features
from .pergroup import PerGroup
from .varfunc import VarFunction
from .spec import marginal_cov
from .visits import py_scalar, visit_label

__all__ = ["INTERVALS", "prediction_frame"]

INTERVALS = ("confidence", "prediction")
_CHUNK_CELLS = 2_000_000  # cells x new rows per block of the solves


def _keys(frame: pd.DataFrame, cols) -> list:
    vals = [frame[c].tolist() for c in cols]
    return list(zip(*vals)) if len(cols) > 1 else vals[0]


def _code_lookup(train_keys, codes, new_keys) -> np.ndarray:
    table = {}
    for k, c in zip(train_keys, codes):
        table.setdefault(k, int(c))
    return np.array([table.get(k, -1) if not _missing(k) else -1 for k in new_keys], dtype=int)


def _missing(k) -> bool:
    ks = k if isinstance(k, tuple) else (k,)
    return any(v is None or (isinstance(v, float) and np.isnan(v)) for v in ks)


class _Whitened:
    """``V^-1`` of the fitted data as inner products of whitened vectors (module docstring)."""

    def __init__(self, model, record):
        from .ranef import level2_system

        spec, data = model.spec, model.arrays
        th = jnp.asarray(record.theta)
        self.m = np.asarray(data.m)
        if spec.plan is None:
            D = None if data.D is None else jnp.asarray(data.D)
            V = np.asarray(marginal_cov(th, jnp.asarray(self.m), jnp.asarray(data.Z), spec, D))
            self.L, self.ZL, self.lu = np.linalg.cholesky(V), None, None
        else:
            from scipy.sparse.linalg import splu

            self.L, _, _, self.ZL, _, M, _ = level2_system(record.theta, record.beta, data, spec)
            self.lu = splu(M)
        S, T = self.m.shape
        r = (np.asarray(data.y) - np.asarray(data.X) @ np.asarray(record.beta)) * self.m
        self.Xw = self.white(np.asarray(data.X))  # [S, T, p]
        self.rw = self.project(self.white(r[..., None]))[..., 0]  # P L^-1 r  [S, T]

    def white(self, K):
        """``L^-1 K`` for K [S, T, N]."""
        return np.linalg.solve(self.L, K)

    def project(self, Kw):
        """``(I - Zt M^-1 Zt') Kw`` (the identity without level-2 factors)."""
        if self.ZL is None:
            return Kw
        S, T, N = Kw.shape
        flat = Kw.reshape(S * T, N)
        return (flat - self.ZL @ self.lu.solve(np.asarray(self.ZL.T @ flat))).reshape(S, T, N)


class _NewRows:
    """What the fitted model knows of each new row: its subject, levels, visit and weight."""

    def __init__(self, model, newdata: pd.DataFrame, n: int):
        info, spec = model.info, model.spec
        train = model.data.iloc[info.row_index]
        self.n = n
        # level 1: the residual subject (or the factor of the level-1 blocks)
        l1 = spec.level1
        cols = None
        if info.formula.cov is not None:
            cols = (info.subject,)
        elif l1:
            g = spec.blocks[l1[0]].group
            cols = info.factors[g].columns if g in info.factors else (g,)
        self.s = np.full(n, -1)
        if cols is not None and all(c in newdata.columns for c in cols):
            self.s = _code_lookup(_keys(train, cols), info.row_s, _keys(newdata, cols))
        # level 2: the code of each new row in each factor (plan order), -1 for a new level
        self.lev = []
        if spec.plan is not None:
            for f in spec.plan.factors:
                fac = info.factors[f.name]
                if all(c in newdata.columns for c in fac.columns):
                    self.lev.append(_code_lookup(_keys(train, fac.columns), fac.codes, _keys(newdata, fac.columns)))
                else:
                    self.lev.append(np.full(n, -1))
        # weights of the new rows (1 when the column is absent, as mmrm)
        self.w = np.ones(n)
        if info.weights is not None and info.weights in newdata.columns:
            w = pd.to_numeric(newdata[info.weights], errors="coerce").to_numpy(dtype=float)
            bad = np.isfinite(w) & (w <= 0)
            if bad.any():
                raise DataError(
                    f"The weights column {info.weights!r} of newdata has a value <= 0 (row "
                    f"{newdata.index[int(np.argmax(bad))]!r}); weights must be positive."
                )
            self.w = np.where(np.isfinite(w), w, np.nan)
        self.t, self.P = self._positions(model, newdata)
        self.g = self._groups(model, newdata) if info.resid_group is not None else np.zeros(n, dtype=int)
        self.f = None  # features of the variance functions
        if info.variance:
            self.f = variance_features(info.variance, newdata)[0]
            self.w[~np.all(np.isfinite(self.f), axis=1)] = np.nan

    def _groups(self, model, newdata):
        """The residual group of each new row (``un(visit | group / subject)``): its subject's, or
        the value of the group column for a new subject."""
        info = model.info
        col = info.resid_group
        g = np.where(self.s >= 0, np.asarray(info.subject_group)[np.maximum(self.s, 0)], -1)
        if col in newdata.columns:  # a fitted subject keeps its group
            for i in np.nonzero(g >= 0)[0]:
                v = newdata[col].iloc[i]
                if not _missing(v) and visit_label(v) != info.resid_group_levels[g[i]]:
                    raise DataError(
                        f"newdata row {newdata.index[i]!r} gives group {py_scalar(v)!r} (column {col!r}) for subject "
                        f"{py_scalar(newdata[info.subject].iloc[i])!r}, which the fit has in group "
                        f"{info.resid_group_levels[g[i]]!r}; a subject has one group in {info.formula.cov.text}.")
        if (g < 0).any():
            if col not in newdata.columns:
                raise DataError(
                    f"newdata has rows of new subjects but no column {col!r}, the group of {info.formula.cov.text}; "
                    "their residual covariance depends on the group.")
            table = {lab: i for i, lab in enumerate(info.resid_group_levels)}
            for i in np.nonzero(g < 0)[0]:
                v = newdata[col].iloc[i]
                if _missing(v):
                    continue
                g[i] = table.get(visit_label(v), -1)
                if g[i] < 0:
                    raise DataError(
                        f"newdata row {newdata.index[i]!r} has group {py_scalar(v)!r} (column {col!r}), which is not a "
                        f"group of the fitted {info.formula.cov.text} ({', '.join(info.resid_group_levels)}).")
        return np.maximum(g, 0)

    @staticmethod
    def _positions(model, newdata):
        """Visit position of each new row (grid structures) or its coordinates (spatial)."""
        info = model.info
        cov = info.formula.cov
        n = len(newdata)
        if cov is None:
            return np.zeros(n, dtype=int), None
        if cov.structure in SPATIAL:
            missing = [c for c in cov.columns if c not in newdata.columns]
            if missing:
                raise DataError(
                    f"newdata has no column {missing[0]!r}, the coordinate of {cov.text}; the residual variance "
                    "and covariances of a prediction need it."
                )
            P = np.column_stack([pd.to_numeric(newdata[c], errors="coerce").to_numpy(dtype=float)
                                 for c in cov.columns])
            return np.zeros(n, dtype=int), P
        for c in cov.columns:
            if c not in newdata.columns:
                raise DataError(
                    f"newdata has no column {c!r}, the visit of {cov.text}; the residual variance of a "
                    "prediction depends on the visit."
                )
        kron = len(cov.columns) > 1  # un_ar1(type, visit | subject): positions are (type, visit) pairs
        flat = [v[1] for v in info.visit_levels] if kron else info.visit_levels
        numeric = all(isinstance(py_scalar(v), (int, float)) for v in flat)
        key1 = (lambda v: float(v)) if numeric else (lambda v: py_scalar(v))
        key = (lambda v: (py_scalar(v[0]), key1(v[1]))) if kron else key1
        table = {key(v): i for i, v in enumerate(info.visit_levels)}
        t = np.full(n, -1)
        values = list(zip(*(newdata[c].tolist() for c in cov.columns))) if kron else newdata[cov.visit].tolist()
        for i, v in enumerate(values):
            if _missing(v):
                continue
            try:
                t[i] = table.get(key(v), -1)
            except (TypeError, ValueError):
                t[i] = -1
            if t[i] < 0:
                shown = ", ".join(map(str, info.visit_labels[:8])) + (", ..." if len(info.visit_labels) > 8 else "")
                raise DataError(
                    f"newdata row {newdata.index[i]!r} has visit {(tuple(map(py_scalar, v)) if kron else py_scalar(v))!r} "
                    f"(column {cov.visit!r}), which is not "
                    f"a visit of the fitted {cov.text} ({shown}); the residual covariance has no value there."
                )
        return t, None


def _train_points(model):
    """[S_pad, T, dims] coordinates of the fitted cells of a per-subject spatial structure."""
    info = model.info
    cols = info.formula.cov.columns
    train = model.data.iloc[info.row_index]
    P = np.zeros((model.arrays.m.shape[0], info.T, len(cols)))
    P[info.row_s, info.row_t] = train[list(cols)].to_numpy(dtype=float)
    return P


def _residual_parts(model, record, rows: _NewRows, idx, observed: bool):
    """``R_jj`` of the new rows ``idx`` and, when ``observed``, ``Cov(y_cell, e_j)`` [S, T, N]
    (weight-scaled cells; zero outside the row's subject)."""
    spec, info = model.spec, model.info
    _, sl = spec.param_slices()
    th = jnp.asarray(record.theta)[sl]
    resid = spec.resid
    vf, delta = None, None
    if isinstance(resid, VarFunction):  # the base structure's parts, scaled below
        vf, resid = resid, resid.base
        th, delta = vf.split(th)
    S, T = model.arrays.m.shape
    N = len(idx)
    K = np.zeros((S, T, N)) if observed else None
    grouped = isinstance(resid, PerGroup)
    g = rows.g[idx]
    if info.formula.cov is not None and info.formula.cov.structure in SPATIAL:
        base = resid.base if grouped else resid
        k = base.n_params
        th_g = [th[i * k : (i + 1) * k] for i in range(resid.G)] if grouped else [th]
        P_new = rows.P[idx]  # [N, d]
        per_subject = info.per_subject_cov
        Ptrain = _train_points(model) if per_subject else np.asarray(base.points)
        var = [float(np.asarray(base.matrix_at(t_, jnp.zeros((1, 1))))[0, 0]) for t_ in th_g]
        Rjj = np.asarray(var)[g]
        if observed:
            for a, j in enumerate(idx):
                s = rows.s[j]
                if s < 0 or not np.all(np.isfinite(P_new[a])):
                    continue
                pts = np.vstack([Ptrain[s] if per_subject else Ptrain, P_new[a][None, :]])
                Dm = np.sqrt(np.sum((pts[:, None, :] - pts[None, :, :]) ** 2, axis=-1))
                Ra = np.asarray(base.matrix_at(th_g[g[a]], jnp.asarray(Dm)))
                K[s, :, a] = Ra[:T, T]
    else:
        R = np.asarray(resid.group_matrices(th)) if grouped else np.asarray(resid.matrix(th))[None]
        t = rows.t[idx]
        Rjj = R[g, t, t]
        if observed and info.formula.cov is not None:
            for a, j in enumerate(idx):
                if rows.s[j] >= 0:
                    K[rows.s[j], :, a] = R[g[a], :, t[a]]
    if vf is not None:  # SDs times exp(f' delta), of the new rows and of the fitted cells
        d = np.asarray(delta)
        s_new = np.exp(np.nan_to_num(rows.f[idx]) @ d)
        Rjj = Rjj * s_new ** 2
        if observed:
            s_cells = np.exp(np.asarray(model.arrays.D)[:, :, 0, 1 : 1 + vf.k] @ d)
            K = K * s_cells[..., None] * s_new[None, None, :]
    w = rows.w[idx]
    if observed:
        K = K * np.asarray(model.arrays.m)[..., None] / np.sqrt(w)[None, None, :]
    return Rjj / w, K


def prediction_frame(model, record, newdata: pd.DataFrame, Xn, Zn, conditional, interval: str,
                     level: float) -> pd.DataFrame:
    """``fit``, ``se``, ``lower``, ``upper`` for the rows of ``newdata`` (module docstring);
    ``Xn``, ``Zn`` are their fixed and random design rows (:func:`jaxlmm.design.new_design_rows`)."""
    from .distributions import norm_ppf

    if interval not in INTERVALS:
        raise ArgumentError(f"interval must be one of {', '.join(map(repr, INTERVALS))} or None, not {interval!r}.")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ArgumentError(f"level must be a number between 0 and 1 (e.g. 0.95), not {level!r}.")
    observed = conditional == "observed"
    cond = bool(conditional)
    spec, data = model.spec, model.arrays
    th = jnp.asarray(record.theta)
    beta, Vb = np.asarray(record.beta), np.asarray(record.vcov)
    n = len(newdata)
    rows = _NewRows(model, newdata, n)
    bad = ~(np.all(np.isfinite(Xn), axis=1) & np.all(np.isfinite(Zn), axis=1) & np.isfinite(rows.w))
    if rows.P is not None:
        bad |= ~np.all(np.isfinite(rows.P), axis=1)
    Xn, Zn = np.where(bad[:, None], 0.0, Xn), np.where(bad[:, None], 0.0, Zn)
    rows.w[bad] = 1.0
    if rows.P is not None:
        rows.P[bad] = 0.0
    # random-effect columns of Zn (blocks order) -> level 1 and each level-2 factor
    offs = np.cumsum([0] + [b.k for b in spec.blocks])
    cols_of = lambda js: np.concatenate([np.arange(offs[j], offs[j + 1]) for j in js]) if js else np.zeros(0, int)
    z1 = Zn[:, cols_of(list(spec.level1))]
    G1 = np.asarray(spec.G(th))
    factors = [] if spec.plan is None else list(spec.plan.factors)
    G2 = [] if spec.plan is None else [np.asarray(g) for g in spec.level2_G(th)]
    z2 = [Zn[:, cols_of(list(f.blocks))] for f in factors]
    zGz = np.einsum("nk,kl,nl->n", z1, G1, z1) if z1.shape[1] else np.zeros(n)
    for zf, Gf in zip(z2, G2):
        zGz = zGz + np.einsum("nk,kl,nl->n", zf, Gf, zf)
    W = _Whitened(model, record) if (cond or observed) else None
    Z1 = np.asarray(data.Z)
    Z2 = None if data.Z2 is None else np.asarray(data.Z2)
    lev = None if data.idx is None else np.asarray(data.idx.lev)
    S, T = np.asarray(data.m).shape
    fit, var = np.empty(n), np.empty(n)
    step = max(1, _CHUNK_CELLS // (S * T))
    for a in range(0, n, step):
        idx = np.arange(a, min(n, a + step))
        N = len(idx)
        x = Xn[idx]
        Rjj, Kres = _residual_parts(model, record, rows, idx, observed)
        v_new = zGz[idx] + Rjj
        if not (cond or observed):
            fit[idx] = x @ beta
            conf = np.einsum("np,pq,nq->n", x, Vb, x)
            var[idx] = conf + (v_new if interval == "prediction" else 0.0)
            continue
        C = np.zeros((S, T, N))  # Cov(y_cells, z'b) of each new row
        if z1.shape[1]:
            s = rows.s[idx]
            known = np.nonzero(s >= 0)[0]
            C[s[known], :, known] = np.einsum("ntk,kl,nl->nt", Z1[s[known]], G1, z1[idx][known])
        for fi, (f, Gf) in enumerate(zip(factors, G2)):
            zo = spec.plan.z_offsets[fi]
            A = np.einsum("stk,kl,nl->stn", Z2[..., zo:zo + f.k], Gf, z2[fi][idx])
            same = (lev[:, fi][:, None] == rows.lev[fi][idx][None, :]) & (rows.lev[fi][idx] >= 0)[None, :]
            C += A * same[:, None, :]
        Cw = W.white(C)
        PCw = W.project(Cw)
        if observed:
            Kw = W.white(C + Kres)
            PKw = W.project(Kw)
        else:
            Kw, PKw = Cw, PCw
        fit[idx] = x @ beta + np.einsum("stn,st->n", Kw, W.rw)
        a_vec = x - np.einsum("stp,stn->np", W.Xw, PKw)
        conf = np.einsum("np,pq,nq->n", a_vec, Vb, a_vec)
        if observed:
            kVk = np.einsum("stn,stn->n", Kw, PKw)
            var[idx] = conf + (np.maximum(v_new - kVk, 0.0) if interval == "prediction" else 0.0)
        else:
            cVc = np.einsum("stn,stn->n", Cw, PCw)
            pev = conf + np.maximum(zGz[idx] - cVc, 0.0)
            var[idx] = pev + (Rjj if interval == "prediction" else 0.0)
    se = np.sqrt(np.maximum(var, 0.0))
    fit[bad], se[bad] = np.nan, np.nan
    q = float(norm_ppf(0.5 + level / 2))
    return pd.DataFrame({"fit": fit, "se": se, "lower": fit - q * se, "upper": fit + q * se}, index=newdata.index)
