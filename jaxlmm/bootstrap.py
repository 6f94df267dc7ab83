"""Parametric bootstrap: simulate from the fitted model, refit every replicate in batches."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .batch import fit_batch_padded
from .simulate import simulate_padded

__all__ = ["BootstrapResult", "parametric_bootstrap"]


class BootstrapResult:
    """Bootstrap replicates of a fit.

    ``estimates``: DataFrame, one row per converged replicate, columns = fixed effects and
    covariance parameters (natural units).  ``batch``: the underlying :class:`BatchResult`
    (all replicates, with their statuses).  ``conf_int(method, level)`` gives intervals.
    """

    def __init__(self, result, batch, seed):
        self.result = result
        self.batch = batch
        self.seed = seed
        ok = batch.converged
        self.n_failed = int((~ok).sum())
        fe = pd.DataFrame(batch.fixef[ok], columns=batch.fixef_names)
        th = pd.DataFrame(batch.theta[ok], columns=batch.theta_names)
        self.estimates = pd.concat([fe, th], axis=1)

    @property
    def original(self) -> pd.Series:
        return pd.concat([self.result.fixef, self.result.theta])

    def conf_int(self, method: str = "percentile", level: float = 0.95) -> pd.DataFrame:
        """Bootstrap intervals for every fixed effect and covariance parameter.

        ``percentile``: the alpha/2 and 1-alpha/2 quantiles of the replicates.
        ``basic``: ``2 * estimate - q(1-alpha/2)``, ``2 * estimate - q(alpha/2)``.
        """
        if method not in ("percentile", "basic"):
            raise ValueError(f"method must be 'percentile' or 'basic', not {method!r}")
        a = (1 - level) / 2
        lo = self.estimates.quantile(a)
        hi = self.estimates.quantile(1 - a)
        est = self.original
        if method == "basic":
            lo, hi = 2 * est - hi, 2 * est - lo
        return pd.DataFrame(
            {"estimate": est, "lower": lo, "upper": hi, "boot_se": self.estimates.std(ddof=1)},
            index=self.estimates.columns,
        )

    def summary(self) -> str:
        ci = self.conf_int()
        lines = [
            f"Parametric bootstrap: {self.batch.n} replicates (seed {self.seed}), "
            f"{self.n_failed} failed to converge and are excluded",
            ci.to_string(float_format=lambda v: f"{v:.5g}"),
        ]
        return "\n".join(lines)

    def __repr__(self):
        return f"<BootstrapResult n={self.batch.n} failed={self.n_failed}>"


def parametric_bootstrap(result, n: int, seed: int = 0, **kwargs) -> BootstrapResult:
    """``n`` responses simulated from ``result`` (:func:`jaxlmm.simulate.simulate_padded`, the
    random effects of every grouping factor drawn too), refitted in batches."""
    model = result.model
    a = model.arrays
    m = np.asarray(a.m)
    data = a.to_jax()
    rec = result.record
    th, beta, mj = jnp.asarray(rec.theta), jnp.asarray(rec.beta), jnp.asarray(m)

    def source(idx):
        return simulate_padded(int(seed), jnp.asarray(idx), th, beta, data, mj, model.spec), None

    batch = fit_batch_padded(model, source, int(n), reml=rec.reml, theta0=rec.unit_theta, hess0=rec.unit_hessian,
                             log_scale0=rec.log_scale, shared_mask=m, **kwargs)
    return BootstrapResult(result, batch, seed)
