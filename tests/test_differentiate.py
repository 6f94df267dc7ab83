"""Differentiable solver (implicit derivatives), subject influence, public likelihood, and the
design-optimisation example of docs/differentiable.md."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import jaxlmm as lmm
from jaxlmm.errors import DataError, LMMError

TIGHT = 1e-20  # run Newton until no further decrease is measurable (then polished)
BOUNDARY_SEED = 3  # both random-effect SDs estimated at ~0


def _jnp(arrays):
    return arrays.to_jax()


@pytest.fixture(scope="module")
def ar1():
    """R-side AR(1), REML, monotone dropout (masked cells): 24 subjects x 4 visits."""
    df = lmm.simulate_longitudinal(24, 4, cov="ar1", rho=0.6, missing="monotone", missing_rate=0.4, seed=3)
    model = lmm.Model("y ~ time + arm + x + ar1(visit | subject)", df)
    res = model.fit()
    assert res.status == 0
    data, spec = _jnp(model.arrays), model.spec
    th0 = jnp.asarray(res.theta_unconstrained)

    def solution(y, X, w):
        s = lmm.solve(data._replace(y=y, X=X), spec, True, w, th0, tol=TIGHT)
        return s.beta, s.theta, s.deviance

    def FJ(y, X, w, dy, dX, dw):  # the solution and its directional derivative
        return jax.jvp(solution, (y, X, w), (dy, dX, dw))

    JVP = jax.jit(FJ)

    def F(y, X, w):  # refits reuse the compiled JVP program (zero tangents)
        return JVP(y, X, w, jnp.zeros_like(y), jnp.zeros_like(X), jnp.zeros_like(w))[0]

    return dict(df=df, model=model, res=res, data=data, spec=spec, F=F, FJ=FJ, JVP=JVP, solution=solution,
                w=jnp.ones(data.y.shape[0]))


@pytest.fixture(scope="module")
def infl(ar1):
    res = ar1["res"]
    return {m: lmm.influence(res, method=m) for m in ("derivative", "loo", "one-step")}


@pytest.fixture(scope="module")
def gside():
    """G-side random intercept and slope, ML: 20 subjects x 4 visits.  ``JVP(data, w, tangents)``
    is one compiled program for every dataset of this shape."""
    df = lmm.simulate_longitudinal(20, 4, cov="id", sd=1.0, re_sd=(1.0, 0.5), re_corr=0.3, seed=5)
    model = lmm.Model("y ~ time * arm + (time | subject)", df)

    def solution(data, y, Z, w):
        s = lmm.solve(data._replace(y=y, Z=Z), model.spec, False, w, tol=TIGHT)  # moment-based start
        return s.beta, s.theta, s.deviance, s.status

    @jax.jit
    def JVP(data, w, dy, dZ, dw):
        return jax.jvp(lambda y, Z, w: solution(data, y, Z, w), (data.y, data.Z, w), (dy, dZ, dw))

    return dict(df=df, model=model, data=_jnp(model.arrays), spec=model.spec, JVP=JVP)


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _fd(F, args, tangents, eps):
    plus = F(*(a + eps * t for a, t in zip(args, tangents)))
    minus = F(*(a - eps * t for a, t in zip(args, tangents)))
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


# ------------------------------------------------------------------------------------------
# the solver
# ------------------------------------------------------------------------------------------


def test_solve_equals_fit_and_zero_weight_drops_subject(ar1):
    res, data = ar1["res"], ar1["data"]
    beta, theta, dev = ar1["F"](data.y, data.X, ar1["w"])
    assert abs(float(dev) - res.deviance) < 1e-8
    np.testing.assert_allclose(beta, res.fixef.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(theta, res.theta_unconstrained, rtol=1e-5, atol=1e-7)
    # the weighted REML with w_i = 0 is the REML fit without subject i
    w = np.ones(data.y.shape[0])
    w[2] = 0.0
    b0, t0, d0 = ar1["F"](data.y, data.X, jnp.asarray(w))
    df = ar1["df"]
    ref = lmm.fit(ar1["model"].formula, df[df.subject != ar1["model"].info.subjects[2]])
    assert abs(float(d0) - ref.deviance) < 1e-7
    np.testing.assert_allclose(b0, ref.fixef.to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("which", ["y", "X", "w"])
def test_implicit_derivatives_match_finite_differences(ar1, which):
    """Directional derivatives of beta_hat, theta_hat and the deviance (forward mode) against
    central differences of full refits."""
    data, w = ar1["data"], ar1["w"]
    rng = np.random.default_rng({"y": 1, "X": 2, "w": 3}[which])
    t = [jnp.zeros_like(data.y), jnp.zeros_like(data.X), jnp.zeros_like(w)]
    if which == "y":
        t[0] = jnp.asarray(rng.normal(size=data.y.shape)) * data.m
    elif which == "X":
        t[1] = jnp.asarray(rng.normal(size=data.X.shape)) * data.m[..., None]
    else:
        t[2] = jnp.asarray(rng.normal(size=w.shape))
    args = (data.y, data.X, w)
    sol, jv = ar1["JVP"](*args, *t)
    fd = _fd(ar1["F"], args, t, 1e-5)
    worst = max(_rel(a, b) for a, b in zip(jv, fd))
    assert worst < 1e-6, worst


def test_reverse_mode_and_jacobian(ar1, infl):
    """jax.jacobian (reverse mode through the custom JVP) agrees with forward mode and with
    the influence derivative; masked cells have exactly zero derivative."""
    data, w = ar1["data"], ar1["w"]
    Jy, JX, Jw = jax.jit(jax.jacobian(lambda y, X, w: ar1["solution"](y, X, w)[0], argnums=(0, 1, 2)))(data.y, data.X, w)
    p = data.X.shape[-1]
    assert Jy.shape == (p,) + data.y.shape and Jw.shape == (p, w.shape[0])
    rng = np.random.default_rng(4)
    t = (jnp.asarray(rng.normal(size=data.y.shape)) * data.m, jnp.asarray(rng.normal(size=data.X.shape)) * data.m[..., None],
         jnp.asarray(rng.normal(size=w.shape)))
    _, (beta_t, _, _) = ar1["JVP"](data.y, data.X, w, *t)
    rev = jnp.einsum("pst,st->p", Jy, t[0]) + jnp.einsum("pstk,stk->p", JX, t[1]) + Jw @ t[2]
    np.testing.assert_allclose(rev, beta_t, rtol=1e-9, atol=1e-12)
    assert float(jnp.max(jnp.abs(Jy * (1 - data.m)))) == 0.0
    der = infl["derivative"][list(ar1["res"].fixef.index)].to_numpy()
    np.testing.assert_allclose(Jw[:, : der.shape[0]].T, der, rtol=1e-8, atol=1e-12)


def test_gside_ml_derivatives(gside):
    """Random intercept + slope (ML): derivatives in y, Z and w against finite differences."""
    data, spec, JVP = gside["data"], gside["spec"], gside["JVP"]
    w = jnp.ones(data.y.shape[0])
    rng = np.random.default_rng(5)
    t = (jnp.asarray(rng.normal(size=data.y.shape)) * data.m, jnp.asarray(rng.normal(size=data.Z.shape)) * data.m[..., None],
         jnp.asarray(rng.normal(size=w.shape)))
    (_, theta, dev, status), jv = JVP(data, w, *t)
    assert int(status) == 0 and abs(float(dev) - float(lmm.deviance(theta, data, spec, False))) < 1e-9
    assert float(jnp.max(jnp.abs(jax.grad(lmm.deviance)(theta, data, spec, False)))) < 1e-8  # an optimum
    zero = [jnp.zeros_like(a) for a in t]

    def F(y, Z, w):
        return JVP(data._replace(y=y, Z=Z), w, *zero)[0][:3]

    fd = _fd(F, (data.y, data.Z, w), t, 1e-5)
    worst = max(_rel(a, b) for a, b in zip(jv[:3], fd))
    assert worst < 1e-6, worst


def test_vmap_over_datasets_equals_loop(ar1):
    """vmap of the solver and of its derivative over datasets equals a loop."""
    data, w = ar1["data"], ar1["w"]
    rng = np.random.default_rng(6)
    Y = jnp.stack([data.y + jnp.asarray(rng.normal(scale=0.5, size=data.y.shape)) * data.m for _ in range(3)])
    dY = jnp.stack([jnp.asarray(rng.normal(size=data.y.shape)) * data.m for _ in range(3)])
    zX, zw = jnp.zeros_like(data.X), jnp.zeros_like(w)
    batched = jax.jit(jax.vmap(ar1["FJ"], in_axes=(0, None, None, 0, None, None)))(Y, data.X, w, dY, zX, zw)
    for b in range(3):
        one = ar1["JVP"](Y[b], data.X, w, dY[b], zX, zw)
        for x_b, x in zip(jax.tree.leaves(batched), jax.tree.leaves(one)):
            np.testing.assert_allclose(x_b[b], x, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------
# influence
# ------------------------------------------------------------------------------------------


def test_influence_against_leave_one_out(ar1, infl):
    """Compared: the exact derivative d est / d w_i at w = 1 and the change on deleting
    subject i, est_(-i) - est (a finite step w_i: 1 -> 0, ~ minus the derivative).  They
    agree in ranking (Spearman > 0.95 for every estimate) and roughly in size (median ratio
    within 20%, worst difference below 40% of the largest change); the one-step Newton
    approximation of the deletion is much closer."""
    res, df, model = ar1["res"], ar1["df"], ar1["model"]
    der, loo, one = infl["derivative"], infl["loo"], infl["one-step"]
    assert der.shape == (24, 6) and list(der.columns) == list(res.fixef.index) + list(res.theta.index)
    assert list(der.index) == model.info.subjects
    for c in der.columns:
        assert stats.spearmanr(-der[c], loo[c]).statistic > 0.95, c
        ratio = np.median(np.abs(der[c] / loo[c]))
        assert 0.8 < ratio < 1.2, (c, ratio)
        assert _rel(-der[c], loo[c]) < 0.4, c
        assert stats.spearmanr(one[c], loo[c]).statistic > 0.98, c
    for c in res.fixef.index:
        assert _rel(one[c], loo[c]) < 0.05, c
    # the vmapped refits are real leave-one-subject-out refits
    for i in np.argsort(-np.abs(loo["arm[T.B]"].to_numpy()))[:2]:
        s = model.info.subjects[i]
        ref = lmm.fit(model.formula, df[df.subject != s])
        est = np.r_[ref.fixef.to_numpy(), ref.theta.to_numpy()]
        base = np.r_[res.fixef.to_numpy(), res.theta.to_numpy()]
        np.testing.assert_allclose(loo.loc[s].to_numpy(), est - base, rtol=1e-5, atol=1e-8)


def test_influence_matches_weight_finite_differences(ar1, infl):
    """d est / d w_i (natural units) against refits with w_i = 1 +- eps."""
    spec, data, F = ar1["spec"], ar1["data"], ar1["F"]
    der = infl["derivative"]

    def est(w):
        beta, theta, _ = F(data.y, data.X, w)
        return np.r_[np.asarray(beta), np.asarray(spec.natural(theta))]

    eps = 1e-4
    worst = 0.0
    for i in np.argsort(-np.abs(der["x"].to_numpy()))[:3]:
        e = np.zeros(data.y.shape[0])
        e[i] = eps
        fd = (est(ar1["w"] + e) - est(ar1["w"] - e)) / (2 * eps)
        worst = max(worst, _rel(der.iloc[i].to_numpy(), fd))
    assert worst < 1e-6, worst


# ------------------------------------------------------------------------------------------
# the public likelihood
# ------------------------------------------------------------------------------------------


def test_loglik_and_profiled_deviance(ar1):
    model = ar1["model"]
    ml = model.fit(reml=False)
    p = lmm.params_from_result(ml)
    ll = jax.jit(lambda p: lmm.loglik(p, model))
    assert abs(float(ll(p)) - ml.loglik) < 1e-8
    g = jax.grad(lambda p: lmm.loglik(p, model))(p)  # the MLE is a stationary point
    assert float(jnp.max(jnp.abs(g["beta"]))) < 1e-5 and float(jnp.max(jnp.abs(g["theta"]))) < 1e-4
    # at any theta, the full loglik at the GLS beta(theta) is minus half the profiled ML deviance
    th = jnp.asarray(model.spec.from_natural([2.0, 0.3]))
    beta = lmm.fixed_effects_vcov(th, ar1["data"], model.spec) @ _gls_b(th, ar1["data"], model.spec)
    assert abs(float(ll({"beta": beta, "theta": th})) + 0.5 * float(lmm.profiled_deviance(th, model, reml=False))) < 1e-9
    # REML: the restricted log-likelihood of theta
    reml = ar1["res"]
    assert abs(float(lmm.loglik({"theta": reml.theta_unconstrained}, model, reml=True)) - reml.loglik) < 1e-8
    # weights: sum_i w_i log L_i; w = 2 doubles the loglik
    w2 = 2 * np.ones(model.info.S)
    assert abs(float(lmm.loglik(p, model, weights=w2)) - 2 * ml.loglik) < 1e-8


def _gls_b(theta, data, spec):
    from jaxlmm.likelihood import gls_pieces

    d = lmm.ModelData(data.y * data.m, data.m, data.X * data.m[..., None], data.Z * data.m[..., None])
    return gls_pieces(theta, d, spec)[1]


# ------------------------------------------------------------------------------------------
# the design-optimisation example of docs/differentiable.md
# ------------------------------------------------------------------------------------------


def test_design_optimisation_example():
    import optax

    K, n_per_arm = 4, 50
    design = pd.DataFrame({"id": np.repeat(["a", "b"], K), "arm": np.repeat(["A", "B"], K),
                           "time": np.tile(np.linspace(0.0, 1.0, K), 2)})
    model = lmm.Model("y ~ arm * time + (time | id)", design)
    assert model.info.fixed_names == ["(Intercept)", "arm[T.B]", "time", "arm[T.B]:time"]
    spec, base = model.spec, model.arrays
    theta = jnp.asarray(spec.from_natural([1.0, 0.5, 0.0, 1.0]))  # sd b0, sd b1, corr, sigma
    a = jnp.asarray(base.X[:, :, 1])
    m = jnp.asarray(base.m)
    w = jnp.asarray(np.r_[n_per_arm, n_per_arm, np.zeros(base.y.shape[0] - 2)])

    def variance(z):
        t = jax.nn.sigmoid(z)[None, :] * m
        X = jnp.stack([m, a, t, a * t], axis=-1)
        Z = jnp.stack([m, t], axis=-1)
        return lmm.fixed_effects_vcov(theta, lmm.ModelData(jnp.zeros_like(m), m, X, Z), spec, weights=w)[3, 3]

    opt = optax.adam(0.1)

    @jax.jit
    def run(z):
        def step(carry, _):
            z, s = carry
            v, g = jax.value_and_grad(variance)(z)
            u, s = opt.update(g, s)
            return (optax.apply_updates(z, u), s), v

        (z, _), trace = jax.lax.scan(step, (z, opt.init(z)), None, length=300)
        return z, trace

    t0 = jnp.linspace(0.05, 0.95, K)
    z, trace = run(jnp.log(t0 / (1 - t0)))
    v0, v1 = float(variance(jnp.log(t0 / (1 - t0)))), float(variance(z))
    optimum = (0.5**2 + 1.0**2 / 1.0) * (2 / n_per_arm)  # (sd_b1^2 + sigma^2 / Sxx) (1/n_A + 1/n_B), Sxx <= K/4
    assert abs(v0 - (0.25 + 1.0 / 0.45) * 0.04) < 1e-10  # equally spaced start, Sxx = 0.45
    assert v1 < 0.55 * v0 and np.all(np.diff(np.asarray(trace)[::25]) < 0)
    assert optimum <= v1 < 1.01 * optimum
    t = np.sort(np.asarray(jax.nn.sigmoid(z)))
    assert np.all(t[:2] < 0.01) and np.all(t[2:] > 0.99)  # half the visits at each end


# ------------------------------------------------------------------------------------------
# boundary fits and bad input
# ------------------------------------------------------------------------------------------


def test_boundary_fit_nan_derivatives_and_influence_raises(ar1, gside):
    """A zero random-effects covariance: status 1 and NaN derivatives; influence() raises."""
    df = lmm.simulate_longitudinal(20, 4, cov="id", sd=1.0, re_sd=(0.0, 0.0), beta_x=0.0, seed=BOUNDARY_SEED)
    model = lmm.Model("y ~ time * arm + (time | subject)", df)  # the shapes of the gside fixture
    data = _jnp(model.arrays)
    w = jnp.ones(data.y.shape[0])
    (_, theta, _, status), (dbeta, dtheta, _, _) = gside["JVP"](data, w, data.m, jnp.zeros_like(data.Z), w)
    assert int(status) == 1 and float(jnp.max(jnp.diagonal(model.spec.G(theta)))) < 1e-8
    assert bool(jnp.all(jnp.isnan(dtheta))) and bool(jnp.all(jnp.isnan(dbeta)))
    fit = ar1["res"]
    res = lmm.LMMResult(fit.model, dataclasses.replace(fit.record, status=1))
    with pytest.raises(LMMError, match="boundary"):
        lmm.influence(res)


def test_bad_input(ar1):
    data, spec, model = ar1["data"], ar1["spec"], ar1["model"]
    with pytest.raises(DataError, match="weights must be a vector"):
        lmm.solve(data, spec, weights=np.ones(3))
    with pytest.raises(DataError, match="finite and >= 0"):
        lmm.weighted_deviance(jnp.zeros(2), data, spec, weights=-np.ones(data.y.shape[0]))
    with pytest.raises(LMMError, match="reml must be a Python bool"):
        lmm.solve(data, spec, reml="yes")
    with pytest.raises(LMMError, match="theta0 must hold the 2"):
        lmm.solve(data, spec, theta0=np.zeros(3))
    with pytest.raises(DataError, match="data must be a jaxlmm ModelData"):
        lmm.solve(tuple(data), spec)
    with pytest.raises(LMMError, match="spec must be a jaxlmm ModelSpec"):
        lmm.solve(data, "ar1")
    with pytest.raises(LMMError, match="params must be a dict"):
        lmm.loglik({"theta": jnp.zeros(2)}, model)
    with pytest.raises(LMMError, match="params\\['beta'\\] must hold the 4"):
        lmm.loglik({"beta": jnp.zeros(2), "theta": jnp.zeros(2)}, model)
    with pytest.raises(LMMError, match="method must be"):
        lmm.influence(ar1["res"], method="jackknife")
    with pytest.raises(LMMError, match="needs an LMMResult"):
        lmm.influence(model)
