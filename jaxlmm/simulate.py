"""Simulate responses from a model: ``y = X beta + Z1 b1 + Z2 b2 + e``.

Level 1 (per subject i): ``b1_i ~ N(0, G)``, ``e_i ~ N(0, R)``.  Level 2 (per factor f and
level l of the plan): ``b2_fl = Lambda_f u``, ``u ~ N(0, I)``, added to every cell in level l.
Replicate ``r`` draws from ``jax.random.fold_in(PRNGKey(seed), r)`` (counter-based keys), so
it is the same whatever the batch size, the chunking or the number of devices.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .errors import DataError

__all__ = ["simulate_padded", "padded_to_rows", "simulate_frame", "params_to_unconstrained"]


@partial(jax.jit, static_argnames=("spec",))
def simulate_padded(seed, idx, theta, beta, data, m, spec):
    """Padded responses [len(idx), S, T] (0 where ``m`` is 0) for replicate indices ``idx``;
    ``data`` is the model's :class:`~jaxlmm.spec.ModelData` (its X, Z, Z2 and level indices)."""
    key = jax.random.PRNGKey(seed)
    X, Z = data.X, data.Z
    if data.D is None:
        LR = jnp.linalg.cholesky(spec.R(theta))
    else:  # one residual covariance per subject (a spatial structure); identity on unused cells
        mm = data.m[..., :, None] * data.m[..., None, :]
        LR = jnp.linalg.cholesky(mm * spec.R(theta, data.D) + jnp.eye(data.m.shape[-1]) * (1.0 - data.m)[..., :, None])
    mu = jnp.einsum("stp,p->st", X, beta)
    S, T = m.shape
    LG = spec.G_chol(theta) if spec.q else None
    plan = spec.plan
    lams = spec.lambdas(theta)

    def one(i):
        k = jax.random.fold_in(key, i)
        if plan is None:
            ke, kb = jax.random.split(k)
        else:
            ke, kb, k2 = jax.random.split(k, 3)
        e = jax.random.normal(ke, (S, T), dtype=X.dtype)
        y = mu + (e @ LR.T if LR.ndim == 2 else jnp.einsum("stu,su->st", LR, e))
        if spec.q:
            b = jax.random.normal(kb, (S, spec.q), dtype=X.dtype) @ LG.T
            y = y + jnp.einsum("stk,sk->st", Z, b)
        if plan is not None:
            o = 0
            for f, (fp, L) in enumerate(zip(plan.factors, lams)):
                u = jax.random.normal(jax.random.fold_in(k2, f), (fp.n_pad, fp.k), dtype=X.dtype)
                b2 = (u @ L.T)[data.idx.lev[:, f]]  # [S, k]
                y = y + jnp.einsum("stk,sk->st", data.Z2[..., o : o + fp.k], b2)
                o += fp.k
        return y * m

    return jax.vmap(one)(idx)


def padded_to_rows(info, y, m) -> np.ndarray:
    """Padded [B, S, T] -> [B, n_rows] aligned with the input data (NaN where not simulated)."""
    y, m = np.asarray(y), np.asarray(m)
    B = y.shape[0]
    out = np.full((B, info.n_rows_input), np.nan)
    vals = info.unscale(y[:, info.row_s, info.row_t])  # observation weights: back to the data's units
    obs = m[info.row_s, info.row_t] > 0 if m.ndim == 2 else m[:, info.row_s, info.row_t] > 0
    out[:, info.row_index] = np.where(obs, vals, np.nan)
    return out


def simulate_frame(Y, index) -> pd.DataFrame:
    """[B, n_rows] simulated responses -> a DataFrame indexed like the input data, one column
    per replicate (``sim_1`` ... ``sim_B``, as lme4's ``simulate``)."""
    Y = np.asarray(Y)
    return pd.DataFrame(Y.T, index=index, columns=[f"sim_{i + 1}" for i in range(Y.shape[0])])


def params_to_unconstrained(model, params) -> tuple[np.ndarray, np.ndarray]:
    """``{"fixef": {...} or array, "theta": {...} or array}`` in natural units ->
    (beta, unconstrained theta).  Names are those of ``res.fixef`` and ``res.theta``."""
    info, spec = model.info, model.spec
    names_b = list(info.fixed_names)
    names_t = spec.names(info.visit_labels)
    if not isinstance(params, dict) or "fixef" not in params or "theta" not in params:
        raise DataError(
            "params must be a dict with 'fixef' and 'theta', e.g. "
            f"{{'fixef': {{{', '.join(repr(n) + ': ...' for n in names_b[:2])}}}, "
            f"'theta': {{{', '.join(repr(n) + ': ...' for n in names_t[:2])}}}}}."
        )

    def vec(v, names, what):
        if isinstance(v, dict) or hasattr(v, "to_dict"):
            v = dict(v)
            missing = [n for n in names if n not in v]
            extra = [n for n in v if n not in names]
            if missing or extra:
                raise DataError(f"{what}: missing {missing}, unknown {extra}; expected names {names}.")
            return np.array([float(v[n]) for n in names])
        v = np.asarray(v, dtype=float).reshape(-1)
        if len(v) != len(names):
            raise DataError(f"{what} needs {len(names)} values in the order {names}, got {len(v)}.")
        return v

    beta = vec(params["fixef"], names_b, "fixef")
    nat = vec(params["theta"], names_t, "theta")
    for n, v in zip(names_t, nat):
        if (n.startswith("sd[") or n == "sigma") and not v >= 0:
            raise DataError(f"theta {n!r} is a standard deviation and must be >= 0, got {v}.")
        if (n.startswith("corr[") or n == "rho") and not -1 < v < 1:
            raise DataError(f"theta {n!r} is a correlation and must lie in (-1, 1), got {v}.")
    nat = np.where([(n.startswith("sd[") and "|" not in n) or n == "sigma" for n in names_t], np.maximum(nat, 1e-12), nat)
    return beta, spec.from_natural(nat)
