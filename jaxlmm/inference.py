"""Small-sample inference for fixed effects: denominator degrees of freedom.

Satterthwaite
-------------
For a contrast ``c`` the variance of ``c' beta_hat`` is ``f(theta) = c' Phi(theta) c`` with
``Phi = (X' V^-1 X)^-1``.  With ``g = d f / d theta`` (autodiff) and the covariance of
``theta_hat`` from the exact Hessian of the objective, ``Cov(theta_hat) = 2 H^-1`` (``H`` the
Hessian of -2 log L, REML or ML as fitted),

    df = 2 f(theta_hat)^2 / (g' Cov(theta_hat) g).

The value does not depend on how ``theta`` is parameterised (a delta method at the optimum),
so the optimiser's unconstrained parameters are used directly.  For a q-row hypothesis ``L``
the per-direction df ``nu_m`` of the eigenvectors of ``L Phi L'`` are combined as
``E = sum nu_m / (nu_m - 2)``, ``df = 2 E / (E - q)`` (as lmerTest and SAS).

Residual: ``N - p``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .distributions import f_sf
from .errors import LMMError
from .likelihood import beta_vcov, cluster_layout, deviance, gls_pieces
from .spec import cluster_covariance

__all__ = ["DDF_METHODS", "satterthwaite_pieces", "satterthwaite_df", "satterthwaite_df_multi", "kenward_roger",
           "wald_test", "sandwich", "between_within", "satterthwaite_df_at", "satterthwaite_df_batch",
           "KR_MAX_CELLS"]

DDF_METHODS = ("satterthwaite", "kenward-roger", "kenward-roger-linear", "residual", "between-within")

#: largest independent cluster (observations linked by random effects) for Kenward-Roger and
#: sandwich SEs, which work with its dense covariance matrix (as pbkrtest does)
KR_MAX_CELLS = 3000


def between_within(result):
    """SAS ``DDFM=BETWITHIN``: (df per coefficient, mask of within-subject coefficients).

    A column of X is between-subject when it is constant within every subject.  The residual
    df ``N - p`` are split into between-subject ``S - rank(X_between)`` and within-subject
    ``N - p - (S - rank(X_between))``; each coefficient gets the df of its kind.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    >>> dfs, within = between_within(res)   # intercept, arm: between; time: within
    >>> list(res.fixef.index), within.tolist()
    (['(Intercept)', 'time', 'arm[T.B]'], [False, True, False])
    """
    info = result.info
    if info.subject is None:
        raise LMMError(
            "between-within df split the residual df by subject; this model has no subject (several crossed or "
            "nested grouping factors and no covariance term). Use ddf='satterthwaite' or 'kenward-roger'."
        )
    a = result.model.arrays
    X = np.asarray(a.X)[info.row_s, info.row_t]
    s = info.row_s
    S = info.S
    counts = np.bincount(s, minlength=S)[:, None]
    means = np.zeros((S, X.shape[1]))
    np.add.at(means, s, X)
    means /= np.maximum(counts, 1)
    within = np.any(np.abs(X - means[s]) > 1e-10 * (1 + np.abs(X)), axis=0)
    r_b = np.linalg.matrix_rank(X[:, ~within]) if (~within).any() else 0
    between_df = S - r_b
    within_df = result.n_obs - X.shape[1] - between_df
    return np.where(within, within_df, between_df).astype(float), within


@partial(jax.jit, static_argnames=("spec",))
def _phi_and_jacobian(theta, payload, spec):
    phi = lambda th: beta_vcov(th, payload, spec)[1]  # noqa: E731
    return phi(theta), jax.jacfwd(phi)(theta)


def satterthwaite_pieces(result):
    """(Phi, dPhi/dtheta [p, p, k], Cov(theta_hat) [k, k]) at the estimate, computed on the
    fit's own likelihood payload (no other layout is compiled).  Cached by the result as
    ``result.satterthwaite``."""
    rec = result.record
    phi, jac = _phi_and_jacobian(jnp.asarray(rec.theta), result.model.payload[1], result.model.spec)
    cov_theta = rec.theta_covariance()
    return np.asarray(phi), np.asarray(jac), cov_theta


def satterthwaite_df(result, c) -> float:
    """Satterthwaite df for one contrast vector ``c`` (length p).

    ``df = 2 (c' Phi c)^2 / (g' W g)`` with ``Phi(theta) = (X'V(theta)^-1X)^-1``,
    ``g = d(c' Phi c)/d theta`` (autodiff) and ``W = 2 H^-1`` the covariance of theta_hat from
    the exact Hessian ``H`` of the (REML) deviance, as lmerTest and mmrm.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    >>> bool(abs(satterthwaite_df(res, [0, 1, 0]) - res.coef_table.loc["time", "df"]) < 1e-8)
    True
    """
    phi, jac, cov = result.satterthwaite
    c = np.asarray(c, dtype=float)
    f = c @ phi @ c
    g = np.einsum("i,ijk,j->k", c, jac, c)
    v = g @ cov @ g
    return float(2 * f * f / v) if v > 0 else float("inf")


def satterthwaite_df_multi(result, L) -> float:
    """Satterthwaite denominator df for an F test of the q-row hypothesis ``L beta = 0``."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    q = L.shape[0]
    phi, _, _ = result.satterthwaite
    if q == 1:
        return satterthwaite_df(result, L[0])
    w, P = np.linalg.eigh(L @ phi @ L.T)
    nus = np.array([satterthwaite_df(result, P[:, m] @ L) for m in range(q)])
    E = np.sum(np.where(nus > 2, nus / np.maximum(nus - 2, 1e-12), 0.0))
    if E <= q:
        return float("nan")
    return float(2 * E / (E - q))


# ------------------------------------------------------------------------------------------
# Kenward-Roger
# ------------------------------------------------------------------------------------------
#
# In the variance-covariance parameters phi of SAS / pbkrtest (UN(i,j), CS + Residual, G
# entries and sigma^2: V linear in phi; sigma^2 and rho for AR(1), ...), with V_r = dV/dphi_r:
#
#   P_r  = -X'V^-1 V_r V^-1 X,   Q_rs = X'V^-1 V_r V^-1 V_s V^-1 X,   R_rs = X'V^-1 V_rs V^-1 X
#   W    = I_E^-1,  I_E[r,s] = 1/2 tr(Pi V_r Pi V_s),  Pi = V^-1 - V^-1 X Phi X' V^-1  (REML)
#   Lambda = Phi [sum_rs W_rs (Q_rs - P_r Phi P_s - R_rs / 4)] Phi,    Phi_A = Phi + 2 Lambda
#
# (Kenward and Roger 1997; "linear": R_rs = 0, SAS ddfm=kr(linear), mmrm
# "Kenward-Roger-Linear").  For an l-row hypothesis L (p x l here), Theta = L (L'Phi L)^-1 L':
#
#   A1 = sum W_rs tr(Theta Phi P_r Phi) tr(Theta Phi P_s Phi),
#   A2 = sum W_rs tr(Theta Phi P_r Phi Theta Phi P_s Phi),
#   B = (A1 + 6 A2) / (2 l),  g = ((l+1) A1 - (l+4) A2) / ((l+2) A2),
#   c1 = g / (3l + 2(1-g)),  c2 = (l-g) / (3l + 2(1-g)),  c3 = (l+2-g) / (3l + 2(1-g)),
#   E = 1 / (1 - A2/l),  V = 2/l (1 + c1 B) / ((1 - c2 B)^2 (1 - c3 B)),  rho = V / (2 E^2),
#   m = 4 + (l+2) / (l rho - 1),  lambda = m / (E (m - 2)),
#   F = (L'beta)' (L' Phi_A L)^-1 (L'beta) / l,  lambda F ~ F(l, m).


@partial(jax.jit, static_argnames=("spec",))
def _kr_pieces(phi, cl, spec):
    """KR's P, Q, R and expected information over independent clusters ``cl`` [C, n]
    (:func:`jaxlmm.likelihood.cluster_layout`: subjects, or the clusters that nested or
    crossed factors link), with the dense ``V_c`` of :func:`jaxlmm.spec.cluster_covariance`."""
    m = cl.m
    mm = m[:, :, None] * m[:, None, :]
    eye = jnp.eye(m.shape[1], dtype=phi.dtype)

    def vmat(ph):
        G1, R, G2 = spec.sas_matrices(ph, cl.D)
        return cluster_covariance(G1, R, G2, cl) * mm

    V = vmat(phi) + eye * (1.0 - m)[:, :, None]
    dV = jax.jacfwd(vmat)(phi)  # [C, n, n, r]
    d2V = jax.jacfwd(jax.jacfwd(vmat))(phi)  # [C, n, n, r, s]
    L = jnp.linalg.cholesky(V)
    Vinv = jax.scipy.linalg.cho_solve((L, True), jnp.broadcast_to(eye, V.shape)) * mm
    VX = jnp.einsum("itu,iup->itp", Vinv, cl.X)  # V^-1 X (i clusters, t/u/v cells)
    A = jnp.einsum("itp,itq->pq", cl.X, VX)
    Phi = jnp.linalg.inv(A)
    P = -jnp.einsum("itp,itur,iuq->rpq", VX, dV, VX)
    VrVinv = jnp.einsum("itur,iuv->itvr", dV, Vinv)  # V_r V^-1
    Q = jnp.einsum("itp,itur,iuv,ivws,iwq->rspq", VX, dV, Vinv, dV, VX)
    R2 = jnp.einsum("itp,iturs,iuq->rspq", VX, d2V, VX)
    tr1 = jnp.einsum("itur,iuts->rs", VrVinv, VrVinv)  # sum_i tr(V^-1 V_r V^-1 V_s)
    trPP = jnp.einsum("pq,rqa,ab,sbp->rs", Phi, P, Phi, P)
    trPhiQ = jnp.einsum("pq,rsqp->rs", Phi, Q)
    IE = 0.5 * (tr1 - 2 * trPhiQ + trPP)
    return Phi, P, Q, R2, IE


def clusters(model):
    """The model's observations grouped into independent clusters (jnp arrays), for the dense
    computations of Kenward-Roger and sandwich SEs."""
    cl = cluster_layout(model.arrays, model.spec, max_cells=KR_MAX_CELLS)
    return type(cl)(*(None if a is None else jnp.asarray(a) if a.dtype.kind == "f" else jnp.asarray(a, jnp.int32)
                      for a in cl))


class KenwardRoger:
    """Kenward-Roger pieces of a fit: adjusted covariance and df for hypotheses."""

    def __init__(self, result, linear: bool = False, information: str = "expected"):
        spec = result.model.spec
        th = jnp.asarray(result.record.theta)
        phi = spec.sas_params(th)
        try:
            cl = clusters(result.model)
        except LMMError as e:
            raise LMMError(f"{e} Kenward-Roger is not available for this model; use ddf='satterthwaite'.") from None
        Phi, P, Q, R2, IE = (np.asarray(a) for a in _kr_pieces(phi, cl, spec))
        if information == "expected":
            IE = 0.5 * (IE + IE.T)
            e = np.sqrt(np.abs(np.diag(IE)))
            e = np.where(e > 0, e, 1.0)  # equilibrated: the cut does not depend on the units
            W = np.linalg.pinv(IE / np.outer(e, e), rcond=1e-12, hermitian=True) / np.outer(e, e)
        else:  # observed: 2 H^-1 of -2 log L, carried from theta to phi by the delta method
            J = np.asarray(jax.jacfwd(spec.sas_params)(th))
            W = J @ result.record.theta_covariance() @ J.T
        inner = np.einsum("rs,rspq->pq", W, Q) - np.einsum("rs,rpa,ab,sbq->pq", W, P, Phi, P)
        if not linear:
            inner = inner - 0.25 * np.einsum("rs,rspq->pq", W, R2)
        Lam = Phi @ inner @ Phi
        self.Phi, self.P, self.W = Phi, P, W
        self.PhiA = Phi + 2 * Lam
        self.PhiA = 0.5 * (self.PhiA + self.PhiA.T)
        self.beta = np.asarray(result.record.beta)

    def test(self, L, shift=None):
        """(F, num_df, den_df, scale lambda) for ``L beta = 0`` (L: l x p); with ``shift`` the
        test is of ``L (beta - shift) = 0``."""
        L = np.atleast_2d(np.asarray(L, dtype=float)).T  # p x l
        ell = L.shape[1]
        Phi, P, W = self.Phi, self.P, self.W
        Theta = L @ np.linalg.solve(L.T @ Phi @ L, L.T)
        M = np.einsum("pq,qa,rab,bc->rpc", Theta, Phi, P, Phi)  # Theta Phi P_r Phi
        tr = np.einsum("rpp->r", M)
        A1 = tr @ W @ tr
        A2 = np.einsum("rs,rpq,sqp->", W, M, M)
        B = (A1 + 6 * A2) / (2 * ell)
        g = ((ell + 1) * A1 - (ell + 4) * A2) / ((ell + 2) * A2)
        den = 3 * ell + 2 * (1 - g)
        c1, c2, c3 = g / den, (ell - g) / den, (ell + 2 - g) / den
        E = 1.0 / (1 - A2 / ell)
        V = 2.0 / ell * (1 + c1 * B) / ((1 - c2 * B) ** 2 * (1 - c3 * B))
        rho = V / (2 * E * E)
        m = 4 + (ell + 2) / (ell * rho - 1)
        lam = m / (E * (m - 2))
        Lb = L.T @ (self.beta if shift is None else self.beta - shift)
        F = float(Lb @ np.linalg.solve(L.T @ self.PhiA @ L, Lb)) / ell
        return lam * F, ell, float(m), float(lam)

    def df(self, c) -> float:
        return self.test(np.asarray(c, dtype=float)[None])[2]


def kenward_roger(result, linear: bool = False, information: str = "expected") -> KenwardRoger:
    """The Kenward-Roger computation for a fit: ``.PhiA`` the adjusted covariance of beta,
    ``.df(c)`` the df of a contrast, ``.test(L)`` the scaled F test; the formulas are in the
    comment above :func:`_kr_pieces`.  ``linear=True`` drops the second derivatives of V (SAS
    ``ddfm=kr(linear)``); ``information`` picks the expected or observed information for ``W``.
    A result caches the one of its df method as ``result.kenward_roger``.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    >>> bool(kenward_roger(res).df([0, 1, 0]) > 0)
    True
    """
    return KenwardRoger(result, linear=linear, information=information)


def wald_test(result, L, rhs=None) -> dict:
    """Test ``L beta = rhs`` with the fit's df method (t for one row, F otherwise).

    ``F = (L b - r)' (L Phi L')^-1 (L b - r) / q`` with ``Phi`` the covariance of beta in use
    (KR-adjusted under Kenward-Roger, where ``F`` is also scaled by KR's lambda); denominator df
    from ``result.ddf_method``.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    >>> out = wald_test(res, [[0, 1, 0], [0, 0, 1]])   # time and arm jointly
    >>> out["num_df"]
    2
    """

    L = np.atleast_2d(np.asarray(L, dtype=float))
    p = len(result.record.beta)
    if L.shape[1] != p:
        raise ValueError(f"L must have {p} columns (one per fixed effect: {list(result.fixef.index)}), got {L.shape[1]}")
    q = L.shape[0]
    r = np.zeros(q) if rhs is None else np.atleast_1d(np.asarray(rhs, dtype=float))
    est = L @ result.record.beta - r
    method = result.ddf_method
    if method.startswith("kenward-roger"):
        kr = result.kenward_roger
        Phi = kr.PhiA
        shift = np.linalg.lstsq(L, r, rcond=None)[0] if rhs is not None and np.any(r != 0) else None
        F, _, df, lam = kr.test(L, shift)
    else:
        Phi = result.record.vcov
        F = float(est @ np.linalg.solve(L @ Phi @ L.T, est)) / q
        lam = 1.0
        if method == "residual":
            df = float(result.df_residual)
        elif method == "between-within":
            dfs, _ = between_within(result)
            df = float(np.min(dfs[np.any(L != 0, axis=0)]))
        else:
            df = satterthwaite_df_multi(result, L)
    out = {"estimate": est if q > 1 else float(est[0]), "num_df": q, "den_df": df, "F": F, "scale": lam}
    out["p_value"] = float(f_sf(F, q, df))
    if q == 1:
        se = float(np.sqrt(L[0] @ Phi @ L[0]))
        t = float(est[0] / se)
        out.update(std_error=se, t_value=t)
    return out


# ------------------------------------------------------------------------------------------
# Sandwich (cluster-robust) covariance of beta
# ------------------------------------------------------------------------------------------


def sandwich(result, kind: str = "CR2") -> np.ndarray:
    """Empirical (sandwich) covariance of beta, clustered by independent cluster: the subject,
    or with nested random effects the outermost level (the clusters the random effects link).

    ``CR0``:  Phi [sum_i X_i' V_i^-1 r_i r_i' V_i^-1 X_i] Phi  (SAS ``EMPIRICAL``, mmrm "Empirical").
    ``CR2``:  with whitened ``X~_i = U_i X_i``, ``r~_i = U_i r_i`` (``U_i' U_i = V_i^-1``) and
    ``A_i = (I - X~_i Phi X~_i')^-1/2``: Phi [sum_i X~_i' A_i r~_i r~_i' A_i X~_i] Phi
    (the bias-reduced estimator of mmrm's "Empirical-Bias-Reduced"; Bell and McCaffrey 2002).
    ``r_i = y_i - X_i beta_hat`` are marginal residuals; ``Phi = (X'V^-1X)^-1``.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(n_subjects=30, n_visits=4, cov="ar1", seed=1)
    >>> res = lmm.fit("y ~ time + arm + ar1(visit | subject)", df)
    >>> sandwich(res, "CR0").shape
    (3, 3)
    """
    kind = kind.upper()
    if kind not in ("CR0", "CR2"):
        raise ValueError(f"kind must be 'CR0' or 'CR2', not {kind!r}")
    try:
        cl = clusters(result.model)
    except LMMError as e:
        raise LMMError(f"{e} Sandwich SEs need many small independent clusters.") from None
    if cl.m.shape[0] < 2:
        raise LMMError(
            "The random effects link all observations into one cluster (crossed factors), so there are no "
            "independent clusters for a sandwich (cluster-robust) covariance; use the model-based vcov."
        )
    spec = result.model.spec
    th = jnp.asarray(result.record.theta)
    V = np.asarray(cluster_covariance(spec.G(th), spec.R(th, cl.D), spec.level2_G(th), cl))
    Lc = np.linalg.cholesky(V)
    X, y, m = np.asarray(cl.X), np.asarray(cl.y), np.asarray(cl.m)
    r = (y - X @ result.record.beta) * m
    Xt = np.linalg.solve(Lc, X)
    et = np.linalg.solve(Lc, r[..., None])
    Phi = result.record.vcov
    if kind == "CR2":
        H = np.einsum("itp,pq,iuq->itu", Xt, Phi, Xt)
        T = H.shape[-1]
        w, Q = np.linalg.eigh(np.eye(T)[None] - H)
        w = np.clip(w, 1e-12, None)
        A = np.einsum("itk,ik,iuk->itu", Q, 1.0 / np.sqrt(w), Q)
        et = A @ et
    g = np.einsum("itp,it->ip", Xt, et[..., 0])
    meat = g.T @ g
    return Phi @ meat @ Phi


# ------------------------------------------------------------------------------------------
# Satterthwaite df for many fits at once (pure JAX; used by jaxlmm.power)
# ------------------------------------------------------------------------------------------


def satterthwaite_df_at(f, A_of, theta, c):
    """Satterthwaite df of ``c' beta`` at ``theta`` (pure JAX; ``jit``/``vmap``-able).

    ``df = 2 v^2 / (g' W g)`` with ``v(theta) = c' A(theta)^-1 c`` (``A = X'V^-1X``),
    ``g = dv/dtheta`` by autodiff and ``W = 2 H^-1``, ``H`` the Hessian of the objective ``f``
    (-2 log L, REML or ML) at ``theta``, inverted on its eigenvalues above 1e-10 of the largest
    in absolute value (as the pseudo-inverse of :func:`satterthwaite_pieces`).  Returns
    ``(df, H)``."""

    def v(th):
        return c @ jnp.linalg.solve(A_of(th), c)

    val, g = jax.value_and_grad(v)(theta)
    H = jax.hessian(f)(theta)
    H = 0.5 * (H + H.T)
    w, Q = jnp.linalg.eigh(H)
    keep = jnp.abs(w) > 1e-10 * jnp.max(jnp.abs(w))
    gq = Q.T @ g
    den = 2.0 * jnp.sum(jnp.where(keep, gq * gq / jnp.where(keep, w, 1.0), 0.0))
    return jnp.where(den > 0, 2.0 * val * val / den, jnp.inf), H


@partial(jax.jit, static_argnames=("spec",))
def _satterthwaite_batch(theta, y, m, data, L, spec, reml):
    def one(th, yb, mb):
        d = data.masked(mb)._replace(y=yb * mb)

        def f(t):
            return deviance(t, d, spec, reml)

        def A_of(t):
            return gls_pieces(t, d, spec).A

        return jax.vmap(lambda c: satterthwaite_df_at(f, A_of, th, c)[0])(L)

    return jax.vmap(one)(theta, y, m)


def satterthwaite_df_batch(model, theta, Y, L, reml: bool = True) -> np.ndarray:
    """Satterthwaite df for B fits of ``model`` at once: one compiled, ``vmap``-ped program.

    Parameters
    ----------
    model : Model
    theta : array [B, k]
        Unconstrained covariance parameters of each fit (``BatchResult.theta_unconstrained``,
        or ``res.theta_unconstrained`` of a single fit).
    Y : array [B, n_rows]
        The responses that were fitted, aligned with the model's data rows (NaN = missing).
    L : array [m, p] or [p]
        Contrasts; each row gets its own df.
    reml : bool
        Whether the fits were REML (the Hessian is that of the fitted objective).

    Returns
    -------
    numpy array [B, m]

    Examples
    --------
    >>> import numpy as np, jaxlmm as lmm
    >>> from jaxlmm.inference import satterthwaite_df_batch
    >>> df = lmm.example_trial()
    >>> res = lmm.fit("CHG ~ ARMCD + AVISIT + ar1(AVISIT | USUBJID)", df)
    >>> dfs = satterthwaite_df_batch(res.model, res.theta_unconstrained[None], df["CHG"].to_numpy()[None], np.eye(res.p))
    >>> bool(np.allclose(dfs[0], res.coef_table["df"], rtol=1e-8))
    True
    """
    from .batch import responses_to_padded

    y, m, _ = responses_to_padded(model.info, Y)
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    L = np.atleast_2d(np.asarray(L, dtype=float))
    out = _satterthwaite_batch(jnp.asarray(theta), jnp.asarray(y), jnp.asarray(m), model.arrays.to_jax(),
                               jnp.asarray(L), model.spec, jnp.asarray(bool(reml)))
    return np.asarray(out)
