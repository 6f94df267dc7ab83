"""Covariance-catalogue benchmark: jaxlmm against nlme on the same data, same run.

Fits the models of ``tests/reference/catalogue`` (ARMA(1,1); exponential, Gaussian and power
correlation in continuous time, with and without a random intercept; exponential correlation
in two coordinates), REML, and prints per model

* ``compile``: first fit minus ``fit`` (JAX's caches cleared before each model's first fit),
* ``fit``: median of ``--repeats`` fits on fresh ``Model`` objects (compiled program reused),
* ``R``: nlme's ``gls``/``lme`` timed inside R with ``system.time`` (median of ``--repeats``),
* ``R/ours`` and ``dev ours-R`` (our -2 log L minus R's recomputed dense one).

Usage (from the repository root)::

    python benchmarks/catalogue.py [--repeats 5] [--no-r]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import jaxlmm as lmm
except ImportError:
    sys.path.insert(0, str(ROOT))
    import jaxlmm as lmm

import jax
import pandas as pd

DATA = ROOT / "tests" / "reference" / "catalogue" / "data"
# name -> (dataset, jaxlmm formula, R call)
MODELS = {
    "ARMA(1,1)": ("arma", "y ~ time * arm + x + arma11(time | subject)",
                  "gls(y ~ time * arm + x, d, correlation = corARMA(form = ~ time | subject, p = 1, q = 1))"),
    "SP(EXP) time": ("ctime", "y ~ time * arm + sp_exp(time | subject)",
                     "gls(y ~ time * arm, d, correlation = corExp(form = ~ time | subject))"),
    "SP(GAU) time": ("ctime", "y ~ time * arm + sp_gau(time | subject)",
                     "gls(y ~ time * arm, d, correlation = corGaus(form = ~ time | subject))"),
    "SP(POW) time": ("ctime", "y ~ time * arm + sp_pow(time | subject)",
                     "gls(y ~ time * arm, d, correlation = corCAR1(form = ~ time | subject))"),
    "RI + SP(EXP)": ("ctime", "y ~ time * arm + (1 | subject) + sp_exp(time | subject)",
                     "lme(y ~ time * arm, d, random = ~ 1 | subject, correlation = corExp(form = ~ time | subject), "
                     "control = lmeControl(niterEM = 0, msMaxIter = 1000, msTol = 1e-14, tolerance = 1e-12))"),
    "SP(EXP) x,y": ("space", "y ~ trt + px + sp_exp(px, py | field)",
                    "gls(y ~ trt + px, d, correlation = corExp(form = ~ px + py | field))"),
}

R_SCRIPT = r"""
suppressPackageStartupMessages({library(nlme); library(jsonlite)})
a <- commandArgs(trailingOnly = TRUE)
d <- read.csv(a[1], stringsAsFactors = TRUE); d <- d[!is.na(d$y), ]
reps <- as.integer(a[3])
f <- function() eval(parse(text = a[2]))
fit <- f()
t <- replicate(reps, system.time(f())[["elapsed"]])
cat("JSON", toJSON(list(time = median(t), dev = -2 * as.numeric(logLik(fit))), auto_unbox = TRUE, digits = NA), "\n")
"""


def ours(ds, formula, repeats):
    df = pd.read_csv(DATA / f"{ds}.csv")
    jax.clear_caches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        res = lmm.Model(formula, df).fit()
        first = time.perf_counter() - t0
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            lmm.Model(formula, df).fit()
            ts.append(time.perf_counter() - t0)
    fit = statistics.median(ts)
    return fit, first - fit, res.deviance


def r_time(ds, call, repeats):
    out = subprocess.run(["Rscript", "-e", R_SCRIPT, str(DATA / f"{ds}.csv"), call, str(repeats)],
                         capture_output=True, text=True, timeout=1200)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON")), None)
    return None if line is None else json.loads(line[5:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-r", action="store_true")
    args = ap.parse_args()
    use_r = not args.no_r and shutil.which("Rscript") is not None
    print(f"jaxlmm {lmm.__version__}, jax {jax.__version__}, {jax.device_count()} device(s); REML; median of "
          f"{args.repeats}")
    print(f"{'model':14s} {'n':>5s} {'compile s':>10s} {'fit s':>8s} {'R s':>8s} {'R/ours':>7s} {'dev ours-R':>11s}")
    for name, (ds, formula, call) in MODELS.items():
        fit, comp, dev = ours(ds, formula, args.repeats)
        n = int(pd.read_csv(DATA / f"{ds}.csv")["y"].notna().sum())
        r = r_time(ds, call, args.repeats) if use_r else None
        rt = f"{r['time']:8.3f} {r['time'] / fit:7.1f} {dev - r['dev']:+11.2e}" if r else f"{'-':>8s} {'-':>7s} {'-':>11s}"
        print(f"{name:14s} {n:5d} {comp:10.2f} {fit:8.3f} {rt}")


if __name__ == "__main__":
    main()
