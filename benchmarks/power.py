"""Power curve benchmark (issue 5 item 3): 10 scenarios x 1,000 simulated trials of a
fev_data-size MMRM, each fitted with UN and tested with Satterthwaite df, vs an R loop.

    python benchmarks/power.py             # jaxlmm + R (nlme::gls) extrapolation
    python benchmarks/power.py --no-r      # jaxlmm only
    python benchmarks/power.py --nsim 200  # fewer trials per scenario

Workload: 2 arms x 100 subjects, 4 visits (VIS1..VIS4), one baseline covariate; the truth is
the UN covariance fitted to ``fev_data`` (``../shared/data/fev_data.csv`` when present, else a
fixed UN matrix of similar size); monotone MAR dropout (``Dropout.mar(0.08, slope=-1)``: about
20% missing at the last visit); analysis ``FEV1 ~ BASE + ARMCD * AVISIT + un(AVISIT | USUBJID)``
(9 fixed effects, 10 covariance parameters, REML); hypothesis: the treatment difference at
VIS4, two-sided t test at 5% with Satterthwaite df; 10 effect sizes from 0 to 6.

Our time is the wall time of one ``lmm.power`` call in a fresh process (compile included); the
compile time is that minus a second, identical call.  The R loop (``nlme::gls`` with
``corSymm`` + ``varIdent``, i.e. UN, REML, then the t test of the contrast with the residual df
of ``summary``, since nlme has no Satterthwaite df) fits the same simulated trials
(``lmm.simulate_trials``) for a few replicates of two scenarios; its time per trial is
extrapolated to the whole study.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jax  # noqa: E402

import jaxlmm as lmm  # noqa: E402

SHARED_FEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "fev_data.csv"
VISITS = ("VIS1", "VIS2", "VIS3", "VIS4")
FORMULA = "FEV1 ~ BASE + ARMCD * AVISIT + un(AVISIT | USUBJID)"
HYP = {"ARMCD[T.TRT]": 1.0, "ARMCD[T.TRT]:AVISIT[T.VIS4]": 1.0}


def truth_theta():
    if SHARED_FEV.exists():
        df = pd.read_csv(SHARED_FEV)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = lmm.fit("FEV1 ~ ARMCD * AVISIT + un(AVISIT | USUBJID)", df)
        return res.theta.to_dict(), "UN fitted to fev_data.csv"
    sd = [6.0, 4.5, 3.5, 6.0]
    th = {f"sd[{v}]": s for v, s in zip(VISITS, sd)}
    for i in range(4):
        for j in range(i + 1, 4):
            th[f"corr[{VISITS[i]},{VISITS[j]}]"] = 0.4 / (j - i)
    return th, "fixed UN (fev_data.csv not found)"


def study(nsim):
    theta, src = truth_theta()
    design = lmm.Design(100, visits=VISITS, arms=("PBO", "TRT"), covariates={"BASE": (0.0, 1.0)},
                        dropout=lmm.Dropout.mar(0.08, slope=-1.0), subject="USUBJID", arm="ARMCD",
                        visit="AVISIT", time="VISITN")
    fixef = {"(Intercept)": 40.0, "BASE": 1.0, "AVISIT[T.VIS2]": 2.0, "AVISIT[T.VIS3]": 4.0, "AVISIT[T.VIS4]": 6.0}
    truth = lmm.Truth(fixef, theta)
    grid = {"effect": list(np.round(np.linspace(0.0, 6.0, 10), 3))}
    return design, truth, grid, src


R_SCRIPT = """
suppressMessages(library(nlme))
d <- read.csv("{csv}")
d$AVISIT <- factor(d$AVISIT, levels = c("VIS1", "VIS2", "VIS3", "VIS4"))
d$ARMCD <- factor(d$ARMCD, levels = c("PBO", "TRT")); d$USUBJID <- factor(d$USUBJID)
d$vi <- as.integer(d$AVISIT)
reps <- sort(unique(d$replicate))
one <- function(x) {{
  fit <- gls(FEV1 ~ BASE + ARMCD * AVISIT, data = x, method = "REML", na.action = na.omit,
             correlation = corSymm(form = ~ vi | USUBJID), weights = varIdent(form = ~ 1 | AVISIT))
  cf <- coef(fit); V <- vcov(fit)
  k <- setNames(rep(0, length(cf)), names(cf)); k["ARMCDTRT"] <- 1; k["ARMCDTRT:AVISITVIS4"] <- 1
  est <- sum(k * cf); se <- sqrt(drop(t(k) %*% V %*% k)); dfr <- fit$dims$N - fit$dims$p
  2 * pt(-abs(est / se), dfr) < 0.05
}}
invisible(one(d[d$replicate == reps[1], ]))  # warm-up
t0 <- proc.time()[["elapsed"]]
rej <- sapply(reps, function(r) one(d[d$replicate == r, ]))
el <- proc.time()[["elapsed"]] - t0
cat(sprintf("%.6f %d %d\\n", el / length(reps), sum(rej), length(reps)))
ests <- sapply(reps, function(r) {{
  fit <- gls(FEV1 ~ BASE + ARMCD * AVISIT, data = d[d$replicate == r, ], method = "REML", na.action = na.omit,
             correlation = corSymm(form = ~ vi | USUBJID), weights = varIdent(form = ~ 1 | AVISIT))
  cf <- coef(fit); cf["ARMCDTRT"] + cf["ARMCDTRT:AVISITVIS4"]
}})
cat(sprintf("%.10f", ests), "\\n")
"""


def r_loop(design, truth, grid, scenario, reps):
    if shutil.which("Rscript") is None:
        return None
    sim = lmm.simulate_trials(FORMULA, design, truth, grid=grid, scenario=scenario, replicates=range(reps),
                              hypothesis=HYP, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "trials.csv"
        sim.to_csv(csv, index=False)
        (Path(tmp) / "run.R").write_text(R_SCRIPT.format(csv=csv))
        out = subprocess.run(["Rscript", str(Path(tmp) / "run.R")], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        print("R failed:", out.stderr.strip()[-300:])
        return None
    lines = out.stdout.strip().splitlines()
    sec, rej, n = lines[0].split()
    return float(sec), int(rej), int(n), np.array([float(v) for v in lines[1].split()])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--r-reps", type=int, default=20)
    args = ap.parse_args()
    design, truth, grid, src = study(args.nsim)
    n_fits = len(grid["effect"]) * args.nsim
    t0 = time.perf_counter()
    out = lmm.power(FORMULA, design, truth, HYP, grid=grid, nsim=args.nsim, seed=1)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    out2, per = lmm.power(FORMULA, design, truth, HYP, grid=grid, nsim=args.nsim, seed=1, replicates=True)
    warm = time.perf_counter() - t0
    pd.testing.assert_frame_equal(out, out2, check_exact=True)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}),"
          f" truth: {src}")
    cols = ["effect", "n_ok", "n_failed", "n_boundary", "power", "power_lower", "power_upper", "bias", "empirical_se",
            "mean_model_se", "coverage", "mean_df", "observed_fraction"]
    print(out[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    rows = [("jaxlmm lmm.power, first call (compile included)", total, n_fits / total),
            ("jaxlmm, same call again (compiled)", warm, n_fits / warm)]
    print(f"compile time (first call - second call): {total - warm:.1f} s")
    if not args.no_r:
        secs = []
        for s in (0, len(grid["effect"]) - 3):
            r = r_loop(design, truth, grid, s, args.r_reps)
            if r is None:
                break
            secs.append(r[0])
            ours = per[(per.scenario == s) & (per.replicate < args.r_reps)].estimate.to_numpy()
            print(f"R nlme::gls loop, scenario {s} (effect {grid['effect'][s]}): {r[0] * 1e3:.0f} ms per trial, "
                  f"{r[1]}/{r[2]} rejections (residual df); same trials, max |estimate difference| to jaxlmm "
                  f"{np.max(np.abs(r[3] - ours)):.1e}")
        if secs:
            sec = float(np.mean(secs))
            rows.append((f"R nlme::gls loop ({args.r_reps} trials x 2 scenarios, extrapolated)", sec * n_fits, 1 / sec))
    print()
    print(f"{'workload: ' + str(len(grid['effect'])) + ' scenarios x ' + str(args.nsim) + ' trials, 200 x 4 UN MMRM':<70}"
          f"{'seconds':>10}{'fits/s':>10}")
    for name, sec, rate in rows:
        print(f"{name:<70}{sec:>10.1f}{rate:>10.0f}")
    if len(rows) == 3:
        print(f"ratio R / jaxlmm (first call): {rows[2][1] / total:.0f}x")


if __name__ == "__main__":
    main()
