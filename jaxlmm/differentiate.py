"""Differentiable estimates: a pure solver with implicit derivatives, subject influence, and a
public log-likelihood.

Weighted (restricted) likelihood
--------------------------------
Every function here takes optional *subject weights* ``w`` (one per row of the padded
``[S, T]`` arrays; 1 by default).  Subject i's Gaussian log-likelihood contribution
``log L_i(beta, theta)`` is multiplied by ``w_i``::

    -2 log L_ML,w(beta, theta) = sum_i w_i [log|V_i| + r_i' V_i^-1 r_i + n_i log(2 pi)],   r_i = y_i - X_i beta

With whitened data and ``A_w = sum_i w_i X_i' V_i^-1 X_i``, ``b_w = sum_i w_i X_i' V_i^-1 y_i``,
``c_w = sum_i w_i y_i' V_i^-1 y_i``, ``N_w = sum_i w_i n_i`` the profiled deviances are::

    beta_w(theta) = A_w^-1 b_w
    dev_ML,w(theta)   = sum_i w_i log|V_i| + c_w - b_w' A_w^-1 b_w + N_w log(2 pi)
    dev_REML,w(theta) = dev_ML,w(theta) + log|A_w| - p log(2 pi)

The REML form is ``-2 log`` of the integral over beta (flat prior) of the weighted likelihood
``prod_i L_i(beta, theta)^w_i``, exactly as the unweighted REML is the integral of ``L``.  So
``w = 1`` is the ordinary fit, ``w_i = 0`` is the fit without subject i (ML and REML alike), and
an integer ``w_i = k`` counts subject i k times.

Implicit derivatives
--------------------
:func:`solve` runs the damped Newton optimiser (:func:`jaxlmm.optimize.newton`) on
``dev_w(theta; a)`` where ``a = (y, X, Z, w)`` collects the data.  At the optimum
``g(theta_hat(a), a) = grad_theta dev_w = 0``, so by the implicit function theorem::

    d theta_hat / d a = -H^-1 d^2 dev_w / (d theta d a),     H = d^2 dev_w / d theta^2

which is the JVP rule attached to ``theta_hat`` (``jax.custom_jvp``: forward and reverse mode,
``jax.grad``, ``jax.jacfwd``/``jax.jacrev`` and ``jax.vmap`` all work; the optimiser loop is never
differentiated).  ``beta_hat = A_w(theta_hat)^-1 b_w(theta_hat)`` and the deviance are ordinary
differentiable functions of ``(theta_hat, a)``.  The mask ``m`` is not differentiable (a
``stop_gradient``); masked cells are zeroed, so derivatives with respect to them are exactly 0.

When the fit did not converge to an interior optimum (status other than ``converged``: a
boundary fit with a zero variance or a correlation at +-1, where the estimate is not a smooth
function of the data, or a failed fit) the derivatives of ``theta_hat`` are NaN, as they are when
the Hessian is not positive definite.  Host-side functions (:func:`influence`) raise instead.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.linalg import cho_solve

from .errors import DataError, LMMError
from .fitting import start_values
from .likelihood import LOG2PI, assemble, gls_beta, gls_pieces
from .optimize import BOUNDARY, CONVERGED, newton
from .spec import ModelData, ModelSpec

__all__ = [
    "Solution",
    "solve",
    "weighted_deviance",
    "profiled_deviance",
    "fixed_effects_vcov",
    "loglik",
    "params_from_result",
    "influence",
]


# ---------------------------------------------------------------------------------------
# Weighted likelihood pieces (pure): the engine's GLS pieces with subject weights
# ---------------------------------------------------------------------------------------


def _masked(data: ModelData) -> ModelData:
    """Zero the masked cells of y, X, Z, Z2 (their derivatives are then exactly 0)."""
    return data.masked(jax.lax.stop_gradient(jnp.asarray(data.m)))


def _wdev(theta, data: ModelData, spec: ModelSpec, reml: bool, w):
    return assemble(gls_pieces(theta, data, spec, w), reml)


def _wbeta(theta, data: ModelData, spec: ModelSpec, w):
    return gls_beta(*gls_pieces(theta, data, spec, w)[:2])


# ---------------------------------------------------------------------------------------
# Argument checks (host side, at trace time: shapes are static, values only when concrete)
# ---------------------------------------------------------------------------------------


def _check_spec(spec):
    if not isinstance(spec, ModelSpec):
        raise LMMError(
            f"spec must be a jaxlmm ModelSpec (e.g. lmm.Model(formula, df).spec), not {type(spec).__name__}."
        )


def _check_reml(reml) -> bool:
    if isinstance(reml, (bool, np.bool_)):
        return bool(reml)
    raise LMMError(
        f"reml must be a Python bool (True for REML, False for ML), not {type(reml).__name__}; it selects the "
        "objective at trace time, so it cannot be a traced array. Call the function once per method."
    )


def _check_data(data, spec) -> ModelData:
    if not isinstance(data, ModelData):
        raise DataError(
            f"data must be a jaxlmm ModelData (padded arrays y [S, T], m, X [S, T, p], Z [S, T, q], e.g. "
            f"lmm.Model(formula, df).arrays), not {type(data).__name__}."
        )
    y, m, X, Z = (jnp.asarray(a) for a in data[:4])
    if y.ndim != 2 or m.shape != y.shape or X.ndim != 3 or X.shape[:2] != y.shape or Z.shape[:2] != y.shape:
        raise DataError(
            f"data arrays have inconsistent shapes y {y.shape}, m {m.shape}, X {X.shape}, Z {Z.shape}; expected "
            "y and m [S, T], X [S, T, p], Z [S, T, q] (under vmap: the shapes of one dataset)."
        )
    if y.shape[1] != spec.T or Z.shape[2] != spec.q or (spec.plan is None) != (data.Z2 is None):
        raise DataError(
            f"data (T = {y.shape[1]} visit positions, q = {Z.shape[2]} random effects) do not match spec "
            f"(T = {spec.T}, q = {spec.q}); build both from the same lmm.Model."
        )
    dt = jnp.result_type(y.dtype, X.dtype, jnp.float32)
    Z2 = None if data.Z2 is None else jnp.asarray(data.Z2).astype(dt)
    D = None if data.D is None else jnp.asarray(data.D).astype(dt)
    return ModelData(*(a.astype(dt) for a in (y, m, X, Z)), Z2, data.idx, D)


def _check_weights(weights, S: int, dtype, spec=None):
    if spec is not None and spec.plan is not None:
        if weights is not None:
            raise LMMError(
                "Subject weights need independent subjects; with nested or crossed random effects the subjects are "
                "correlated through the other factors, so weights are not supported for this model "
                "(one grouping factor with more than 16 rows in a group is computed this way by default; fit it with "
                "engine='subjects')."
            )
        return None
    if weights is None:
        return jnp.ones((S,), dtype)
    w = jnp.asarray(weights)
    if w.shape != (S,):
        raise DataError(
            f"weights must be a vector with one weight per padded subject row ({S}, the first dimension of "
            f"data.y), got shape {tuple(w.shape)}; give padded rows any weight (they have no data)."
        )
    if not isinstance(w, jax.core.Tracer):
        wn = np.asarray(w, dtype=float)
        if not np.all(np.isfinite(wn)) or np.any(wn < 0):
            raise DataError("weights must be finite and >= 0 (w_i = 0 drops subject i); fix the negative or NaN values.")
    return w.astype(dtype)


def _check_theta(theta, spec, what="theta0"):
    th = jnp.asarray(theta)
    if th.shape != (spec.n_theta,):
        raise LMMError(
            f"{what} must hold the {spec.n_theta} unconstrained covariance parameters of this model "
            f"(e.g. res.theta_unconstrained), got shape {tuple(th.shape)}."
        )
    return th


def _start(data: ModelData, spec: ModelSpec):
    """Moment-based start values (:func:`jaxlmm.fitting.start_values`) through a host callback,
    so that :func:`solve` also works on traced data (under jit, vmap and grad)."""

    has2 = data.Z2 is not None

    def host(y, m, X, Z, *rest):
        idx = data.idx._replace(lev=np.asarray(rest[1])) if has2 else None
        # the start values use y, m, X and the random-effect rows only (not ModelData.D, which may be traced)
        d = ModelData(np.asarray(y), np.asarray(m), np.asarray(X), np.asarray(Z),
                      np.asarray(rest[0]) if has2 else None, idx, None)
        return np.asarray(start_values(d, spec), dtype=np.dtype(data.y.dtype))

    out = jax.ShapeDtypeStruct((spec.n_theta,), data.y.dtype)
    args = [jax.lax.stop_gradient(a) for a in data[: 5 if has2 else 4]] + ([data.idx.lev] if has2 else [])
    return jax.pure_callback(host, out, *args, vmap_method="sequential")


# ---------------------------------------------------------------------------------------
# The solver with implicit derivatives
# ---------------------------------------------------------------------------------------


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _implicit(spec, reml, theta_star, H, scale, data, w):
    """Identity on the optimum ``theta_star``; its JVP is the implicit-function-theorem rule
    with ``H`` the Hessian of the deviance at ``theta_star`` (its own tangent is ignored)."""
    return theta_star


@_implicit.defjvp
def _implicit_jvp(spec, reml, primals, tangents):
    theta_star, H, scale, data, w = primals
    _, _, _, ddata, dw = tangents
    ddata = ddata._replace(m=jnp.zeros_like(data.m))  # the mask is not differentiable

    def grad_theta(d, ww):
        return jax.grad(_wdev)(theta_star, d, spec, reml, ww)

    _, mixed = jax.jvp(grad_theta, (data, w), (ddata, dw))  # d^2 dev / (d theta d a) . da
    LH = jnp.linalg.cholesky(0.5 * (H + H.T))  # NaN when H is not positive definite
    dtheta = -cho_solve((LH, True), mixed)
    return theta_star, dtheta * scale


class Solution(NamedTuple):
    """Result of :func:`solve` (a pytree).  ``theta`` is unconstrained (``spec.natural(theta)``
    gives natural parameters); ``status`` uses :data:`jaxlmm.STATUS` codes."""

    beta: jax.Array
    theta: jax.Array
    deviance: jax.Array
    status: jax.Array
    n_iter: jax.Array


def solve(data: ModelData, spec: ModelSpec, reml: bool = True, weights=None, theta0=None, *,
          max_iter: int = 200, tol: float = 1e-11) -> Solution:
    """Fit a (weighted) linear mixed model as a pure, differentiable JAX function.

    Parameters
    ----------
    data : ModelData
        Padded arrays of one dataset (``model.arrays`` of a :class:`jaxlmm.Model`, or arrays of
        the same shapes).  Masked cells (``m = 0``) are ignored.
    spec : ModelSpec
        The covariance model (``model.spec``); static.
    reml : bool
        REML (default) or ML; a Python bool.
    weights : array [S], optional
        Subject weights (one per padded subject row), default 1.  See the module docstring:
        ``w_i`` multiplies subject i's log-likelihood, ``w_i = 0`` removes it.
    theta0 : array [n_theta], optional
        Unconstrained start (default: moment-based start values, computed on the host through
        a callback).  The derivatives do not depend on it.
    max_iter, tol : int, float
        Newton iteration budget and convergence tolerance (use a small ``tol``, e.g. 1e-20,
        when comparing derivatives with finite differences).

    Returns
    -------
    Solution
        ``beta`` [p], ``theta`` [n_theta] (unconstrained), ``deviance`` (the weighted -2 log L
        or -2 restricted log L at the optimum), ``status``, ``n_iter``.

    Notes
    -----
    Differentiable (forward and reverse mode) with respect to ``data.y``, ``data.X``,
    ``data.Z`` and ``weights``; jit- and vmap-compatible.  ``theta_hat`` carries the implicit
    derivative ``d theta_hat/d a = -H^-1 d^2 dev_w/(d theta d a)`` at the optimum (no
    unrolling of the optimiser), and ``beta = A_w(theta_hat)^-1 b_w(theta_hat)`` is
    differentiated directly.  Derivatives of ``theta`` (hence ``beta``) are NaN unless
    ``status == 0`` (an interior optimum with a positive-definite Hessian).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(20, 3, cov="cs", seed=1)
    >>> model = lmm.Model("y ~ time + arm + cs(visit | subject)", df)
    >>> data, spec = model.arrays, model.spec
    >>> sol = lmm.solve(data, spec)
    >>> bool(abs(float(sol.deviance) - model.fit().deviance) < 1e-6)
    True
    >>> g = jax.grad(lambda y: lmm.solve(data._replace(y=y), spec).beta[0])(jnp.asarray(data.y))
    >>> g.shape                  # d intercept / d y: one value per padded cell [S, T]
    (20, 3)
    >>> round(float(g.sum()), 8)  # adding 1 to every response moves the intercept by 1
    1.0
    """
    _check_spec(spec)
    reml = _check_reml(reml)
    data = _check_data(data, spec)
    w = _check_weights(weights, data.y.shape[0], data.y.dtype, spec)
    th0 = None if theta0 is None else _check_theta(theta0, spec).astype(data.y.dtype)
    return _solve_core(data, w, th0, spec, reml, int(max_iter), float(tol))


@partial(jax.jit, static_argnames=("spec", "reml", "max_iter", "tol"))
def _solve_core(data, w, theta0, spec, reml, max_iter, tol):
    data = _masked(data)
    th0 = _start(data, spec) if theta0 is None else theta0
    const = jax.tree.map(jax.lax.stop_gradient, data)
    wc = None if w is None else jax.lax.stop_gradient(w)

    def obj(th):
        return _wdev(th, const, spec, reml, wc)

    res = newton(obj, jax.lax.stop_gradient(th0), max_iter=max_iter, tol=tol,
                 boundary=spec.is_boundary, degenerate=spec.is_degenerate)
    # The loop stops when the objective can no longer resolve a decrease, which fixes theta
    # to ~sqrt(machine eps).  Two more exact Newton steps (gradient-based, no line search)
    # bring it to ~machine eps, so that derivatives match finite differences; the Hessian of
    # the last one (at the optimum to ~machine eps, whatever path the loop took) is the H of
    # the implicit derivative.
    ok = res.status == CONVERGED
    grad = jax.grad(obj)
    grad_hess = jax.jacfwd(lambda x: (grad(x), grad(x)), has_aux=True)

    def polish(_, carry):
        th, _ = carry
        H, g = grad_hess(th)
        th1 = th - cho_solve((jnp.linalg.cholesky(0.5 * (H + H.T)), True), g)
        return jnp.where(ok & jnp.all(jnp.isfinite(th1)), th1, th), H

    x, H = jax.lax.fori_loop(0, 2, polish, (res.x, res.hess))
    H = jax.lax.stop_gradient(H)
    scale = jnp.where(ok, 1.0, jnp.nan).astype(data.y.dtype)
    theta = _implicit(spec, reml, jax.lax.stop_gradient(x), H, jax.lax.stop_gradient(scale), data, w)
    beta = _wbeta(theta, data, spec, w)
    dev = _wdev(theta, data, spec, reml, w)
    return Solution(beta, theta, dev, res.status, res.n_iter)


# ---------------------------------------------------------------------------------------
# Likelihood functions
# ---------------------------------------------------------------------------------------


def weighted_deviance(theta, data: ModelData, spec: ModelSpec, reml: bool = True, weights=None):
    """The weighted profiled deviance ``dev_w(theta)`` (module docstring); pure JAX.

    ``-2 log L_ML,w = sum_i w_i log|V_i| + c_w - b_w' A_w^-1 b_w + N_w log(2 pi)``, plus
    ``log|A_w| - p log(2 pi)`` under REML.  With ``weights=None`` it equals
    :func:`jaxlmm.deviance`.

    Examples
    --------
    >>> import numpy as np, jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(20, 3, cov="cs", seed=1)
    >>> model = lmm.Model("y ~ time + arm + cs(visit | subject)", df)
    >>> th = model.spec.from_natural([1.2, 0.3])
    >>> d1 = lmm.weighted_deviance(th, model.arrays, model.spec)
    >>> bool(abs(float(d1) - float(lmm.deviance(th, model.arrays, model.spec))) < 1e-9)
    True
    >>> w = np.ones(20); w[0] = 0.0                 # weight 0: subject S01 left out
    >>> d0 = lmm.weighted_deviance(th, model.arrays, model.spec, weights=w)
    >>> m2 = lmm.Model("y ~ time + arm + cs(visit | subject)", df[df.subject != "S01"])
    >>> bool(abs(float(d0) - float(lmm.deviance(th, m2.arrays, m2.spec))) < 1e-9)
    True
    """
    _check_spec(spec)
    reml = _check_reml(reml)
    data = _masked(_check_data(data, spec))
    w = _check_weights(weights, data.y.shape[0], data.y.dtype, spec)
    return _wdev(_check_theta(theta, spec, "theta"), data, spec, reml, w)


def _model_parts(model):
    """(ModelData as jnp arrays, spec) of a Model or an LMMResult."""
    if hasattr(model, "record") and hasattr(model, "model"):
        model = model.model  # an LMMResult
    if not (hasattr(model, "arrays") and hasattr(model, "spec") and hasattr(model, "info")):
        raise LMMError(f"model must be a jaxlmm Model or LMMResult, not {type(model).__name__}.")
    if not model.has_response:
        raise DataError(
            f"The model's data have no response column {model.info.formula.response!r}; a likelihood needs one. "
            "Add the column or build the Model from data with the response."
        )
    return model.arrays.to_jax(), model.spec


def profiled_deviance(theta, model, reml: bool = True, weights=None):
    """The profiled deviance of a :class:`jaxlmm.Model` as a pure function of unconstrained
    ``theta`` (beta profiled out by GLS): ``-2 log L`` (ML) or ``-2 log L_R`` (REML), with
    optional subject ``weights`` (one per real subject, or per padded row).

    Examples
    --------
    >>> import jax, jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(20, 3, cov="cs", seed=1)
    >>> res = lmm.fit("y ~ time + arm + cs(visit | subject)", df)
    >>> f = jax.jit(lambda th: lmm.profiled_deviance(th, res.model))
    >>> bool(abs(float(f(res.theta_unconstrained)) - res.deviance) < 1e-8)
    True
    >>> g = jax.grad(f)(res.theta_unconstrained)      # ~0 at the optimum
    >>> bool(abs(g).max() < 1e-4)
    True
    """
    data, spec = _model_parts(model)
    return weighted_deviance(theta, data, spec, reml, _pad_weights(weights, model, data))


def _pad_weights(weights, model, data):
    if weights is None:
        return None
    info = (model.model if hasattr(model, "record") else model).info
    w = jnp.asarray(weights)
    S_pad = data.y.shape[0]
    if w.shape == (info.S,) and info.S != S_pad:
        w = jnp.concatenate([w, jnp.zeros((S_pad - info.S,), w.dtype)])
    return w


def loglik(params, model, reml: bool = False, weights=None):
    """The full log-likelihood ``log L(beta, theta)`` of a model, a pure JAX function of ``params``.

    Parameters
    ----------
    params : dict
        ``{"beta": [p], "theta": [n_theta]}``: fixed effects (in the order of ``res.fixef``)
        and *unconstrained* covariance parameters (``res.theta_unconstrained``; any real vector
        is valid, ``model.spec.natural(theta)`` gives SDs and correlations).  See
        :func:`params_from_result`.
    model : Model or LMMResult
        Supplies the data and the covariance structure (closed over as constants).
    reml : bool
        False (default): the ML log-likelihood below.  True: the restricted log-likelihood
        ``log L_R(theta) = -dev_REML(theta)/2``, which does not depend on beta (``params["beta"]``
        may be omitted) and equals the integral of ``L(beta, theta)`` over beta.
    weights : array, optional
        Subject weights (one per real subject or padded row): ``sum_i w_i log L_i``.

    Returns
    -------
    scalar
        ``log L = -1/2 sum_i w_i [log|V_i| + (y_i - X_i beta)' V_i^-1 (y_i - X_i beta) + n_i log(2 pi)]``

    Notes
    -----
    Usable as a log density (numpyro ``potential_fn = -loglik``, blackjax ``logdensity_fn``).
    It is a density in the unconstrained parameters with an implicit flat prior on them; for a
    flat prior on natural parameters add ``log|d natural / d theta|``.  Random-effect
    factors are sign-symmetric (a column of the Cholesky factor of G may flip sign), so the
    posterior of ``theta`` has mirror modes; functions of ``G`` are unaffected.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, jaxlmm as lmm
    >>> df = lmm.simulate_longitudinal(20, 3, cov="cs", seed=1)
    >>> res = lmm.fit("y ~ time + arm + cs(visit | subject)", df, reml=False)
    >>> p0 = lmm.params_from_result(res)
    >>> bool(abs(float(lmm.loglik(p0, res.model)) - res.loglik) < 1e-8)
    True

    A few hundred steps of a random-walk Metropolis sampler, written with JAX only:

    >>> logp = jax.jit(lambda p: lmm.loglik(p, res.model))
    >>> def step(carry, key):
    ...     p, lp, acc = carry
    ...     k1, k2 = jax.random.split(key)
    ...     prop = jax.tree.map(lambda a, k: a + 0.05 * jax.random.normal(k, a.shape),
    ...                         p, {"beta": k1, "theta": jax.random.fold_in(k1, 1)})
    ...     lq = logp(prop)
    ...     ok = jnp.log(jax.random.uniform(k2)) < lq - lp
    ...     p = jax.tree.map(lambda a, b: jnp.where(ok, a, b), prop, p)
    ...     return (p, jnp.where(ok, lq, lp), acc + ok), p["beta"][2]
    >>> keys = jax.random.split(jax.random.PRNGKey(0), 400)
    >>> (_, _, n_acc), draws = jax.lax.scan(step, (p0, logp(p0), 0), keys)
    >>> bool(0 < int(n_acc) < 400), draws.shape
    (True, (400,))
    """
    data, spec = _model_parts(model)
    reml = _check_reml(reml)
    w = _pad_weights(weights, model, data)
    if not isinstance(params, dict) or "theta" not in params or (not reml and "beta" not in params):
        raise LMMError(
            "params must be a dict {'beta': fixed effects [p], 'theta': unconstrained covariance parameters "
            "[n_theta]} (lmm.params_from_result(res) builds one); 'beta' may be omitted only with reml=True."
        )
    theta = _check_theta(params["theta"], spec, "params['theta']")
    d = _masked(data)
    wv = _check_weights(w, d.y.shape[0], d.y.dtype, spec)
    if reml:
        return -0.5 * _wdev(theta, d, spec, True, wv)
    beta = jnp.asarray(params["beta"])
    p = d.X.shape[-1]
    if beta.shape != (p,):
        raise LMMError(f"params['beta'] must hold the {p} fixed effects (in the order of res.fixef), got shape "
                       f"{tuple(beta.shape)}.")
    # (y - X beta)' V^-1 (y - X beta) = c - 2 b' beta + beta' A beta
    A, b, c, logdet, n = gls_pieces(theta, d, spec, wv)
    quad = c - 2.0 * jnp.dot(b, beta) + beta @ A @ beta
    return -0.5 * (logdet + quad + n * LOG2PI)


def params_from_result(res) -> dict:
    """``{"beta": fixed effects, "theta": unconstrained covariance parameters}`` of a fit, the
    params pytree of :func:`loglik`.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> res = lmm.fit("y ~ time + arm + cs(visit | subject)", lmm.simulate_longitudinal(20, 3, cov="cs", seed=1))
    >>> {k: v.shape for k, v in lmm.params_from_result(res).items()}
    {'beta': (3,), 'theta': (2,)}
    """
    return {"beta": jnp.asarray(res.fixef.to_numpy()), "theta": jnp.asarray(res.theta_unconstrained)}


def fixed_effects_vcov(theta, data: ModelData, spec: ModelSpec, weights=None):
    """``Var(beta_hat) = A_w^-1 = (sum_i w_i X_i' V_i(theta)^-1 X_i)^-1`` for known ``theta``: the
    covariance of the GLS estimate, a differentiable function of the design (``X``, ``Z``),
    of ``theta`` and of the weights (e.g. numbers of subjects per design row).

    Examples
    --------
    >>> import numpy as np, jaxlmm as lmm
    >>> res = lmm.fit("y ~ time + arm + cs(visit | subject)", lmm.simulate_longitudinal(20, 3, cov="cs", seed=1))
    >>> V = lmm.fixed_effects_vcov(res.theta_unconstrained, res.model.arrays, res.model.spec)
    >>> bool(np.allclose(V, res.vcov.to_numpy()))
    True
    """
    _check_spec(spec)
    data = _masked(_check_data(data, spec))
    w = _check_weights(weights, data.y.shape[0], data.y.dtype, spec)
    A = gls_pieces(_check_theta(theta, spec, "theta"), data, spec, w).A
    return gls_beta(A, jnp.eye(A.shape[0], dtype=A.dtype))


# ---------------------------------------------------------------------------------------
# Subject influence
# ---------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("spec", "reml"))
def _polish(theta_hat, data, spec, reml):
    """A few exact Newton steps from a fit's estimate (the fit stops at a 1e-11 decrement):
    (theta, Hessian, whether the Hessian is positive definite)."""
    d = _masked(data)
    ones = jnp.ones((d.y.shape[0],), d.y.dtype)

    def step(_, carry):
        th, _ = carry
        g = jax.grad(_wdev)(th, d, spec, reml, ones)
        H = jax.hessian(_wdev)(th, d, spec, reml, ones)
        return th - jnp.linalg.solve(H, g), H

    n = theta_hat.shape[0]
    th, H = jax.lax.fori_loop(0, 3, step, (theta_hat, jnp.eye(n, dtype=d.y.dtype)))
    ok = jnp.all(jnp.isfinite(th)) & jnp.all(jnp.linalg.eigvalsh(0.5 * (H + H.T)) > 0)
    return th, H, ok


@partial(jax.jit, static_argnames=("spec", "reml", "method"))
def _influence_compiled(th, H, data, spec, reml, method):
    S = data.y.shape[0]
    d = _masked(data)
    ones = jnp.ones((S,), d.y.dtype)

    def estimates(theta, w):
        return jnp.concatenate([_wbeta(theta, d, spec, w), spec.natural(theta)])

    base = estimates(th, ones)
    if method == "derivative":
        one = jnp.ones((), d.y.dtype)
        J = jax.jacfwd(lambda w: estimates(_implicit(spec, reml, th, H, one, d, w), w))(ones)
        return J.T
    drop = ones[None, :] - jnp.eye(S, dtype=ones.dtype)  # row i: subject i left out
    if method == "loo":
        def refit(w):
            sol = _solve_core(d, w, th, spec, reml, 200, 1e-20)
            return jnp.where(sol.status == CONVERGED, estimates(sol.theta, w), jnp.nan)

        return jax.vmap(refit)(drop) - base[None, :]

    def one_step(w):  # one Newton step from theta_hat on the likelihood without subject i
        gi = jax.grad(_wdev)(th, d, spec, reml, w)
        Hi = jax.hessian(_wdev)(th, d, spec, reml, w)
        return estimates(th - jnp.linalg.solve(Hi, gi), w)

    return jax.vmap(one_step)(drop) - base[None, :]


def influence(result, method: str = "derivative") -> pd.DataFrame:
    """Influence of each subject on each estimate (fixed effects and covariance parameters in
    natural units, the columns of ``res.fixef`` and ``res.theta``).

    Parameters
    ----------
    result : LMMResult
        A converged fit (interior optimum).  Boundary or failed fits raise :class:`LMMError`:
        the estimates are not differentiable there.
    method : {"derivative", "one-step", "loo"}
        ``"derivative"`` (default): the exact infinitesimal influence ``d estimate / d w_i`` at
        ``w = 1`` (implicit differentiation, see :func:`solve`).  Deleting subject i changes the
        estimates by approximately its negative.  ``"one-step"``: ``estimate_(-i) - estimate``
        approximated by one Newton step from ``theta_hat`` on the likelihood without subject i
        (then ``beta`` by GLS).  ``"loo"``: the exact ``estimate_(-i) - estimate`` from a full
        refit without subject i (all refits in one vmapped call).

    Returns
    -------
    pandas.DataFrame
        One row per subject (index: the subject labels), one column per estimate.

    Notes
    -----
    ``d theta_hat / d w_i = -H^-1 d^2 dev_w / (d theta d w_i)``; ``d beta_hat / d w_i`` adds
    the direct dependence of ``A_w^-1 b_w`` on ``w_i``.  Natural parameters by the chain rule
    through ``spec.natural``.

    Examples
    --------
    >>> import jaxlmm as lmm
    >>> res = lmm.fit("y ~ time + arm + cs(visit | subject)", lmm.simulate_longitudinal(20, 3, cov="cs", seed=1))
    >>> infl = lmm.influence(res)
    >>> infl.shape, list(infl.columns)[-2:]
    ((20, 5), ['sigma', 'rho'])
    """
    if not hasattr(result, "record"):
        raise LMMError(f"influence() needs an LMMResult (from lmm.fit or Model.fit), not {type(result).__name__}.")
    if result.model.spec.plan is not None:
        raise LMMError(
            "influence() measures the weight of each independent subject; with nested or crossed random effects the "
            "subjects are correlated through the other factors, so it is not available for this model "
            "(one grouping factor with more than 16 rows in a group is computed this way by default; fit it with "
            "engine='subjects')."
        )
    if method not in ("derivative", "one-step", "loo"):
        raise LMMError(f"method must be 'derivative', 'one-step' or 'loo', not {method!r}.")
    if result.status != CONVERGED:
        what = "a boundary (singular) fit" if result.status == BOUNDARY else f"a fit with status {result.status_message!r}"
        raise LMMError(
            f"influence() needs an interior optimum, but this is {what}: the estimates are not differentiable "
            "in the weights there (the Hessian is singular or the optimum is not a stationary point). Simplify "
            "the covariance model, or use refits without each subject."
        )
    data, spec = _model_parts(result)
    th, H, ok = _polish(jnp.asarray(result.theta_unconstrained), data, spec, bool(result.reml))
    if not bool(ok):
        raise LMMError(
            "The Hessian of the deviance is not positive definite at this fit's estimate, so the estimates are not "
            "differentiable in the weights; simplify the covariance model."
        )
    out = _influence_compiled(th, H, data, spec, bool(result.reml), method)
    info = result.info
    names = list(info.fixed_names) + list(result.theta.index)
    index = pd.Index(info.subjects, name=info.subject)
    return pd.DataFrame(np.asarray(out)[: info.S], index=index, columns=names)
