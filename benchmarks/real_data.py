"""Single fits on real, unbalanced data: jaxlmm against nlme::gls / lme4::lmer in the same run.

Datasets:

* ``bcva``: ``../shared/data/bcva_data.csv`` (mmrm's BCVA trial: 1,000 subjects x 10 visits with
  dropout, many missing-data patterns), ``BCVA_CHG ~ ARMCD * AVISIT + RACE + BCVA_BL``;
* ``sim5000``: 5,000 subjects x 12 visits simulated with monotone dropout and intermittent gaps,
  ``y ~ arm * visit + x``.

Models: UN, CS, AR(1) residuals and a random intercept per subject. ``ours`` is ``fit`` plus
``coef_table`` (Satterthwaite df), median of ``--repeats`` warm calls on a fresh ``Model``;
``first`` is the first call in the process (compile included, JAX caches and the persistent
cache off); R times ``gls``/``lmer`` only (``summary`` adds little), median of up to 3 fits.

Usage::

    python benchmarks/real_data.py                # both datasets, R when installed
    python benchmarks/real_data.py --only bcva --no-r
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ["JAXLMM_CACHE"] = "0"  # first-call times compile everything
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import jaxlmm as lmm  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COV = {"UN": "un({v} | {s})", "CS": "cs({v} | {s})", "AR1": "ar1({v} | {s})", "RI": "(1 | {s})"}
R_CALL = {
    "UN": "gls(f, d, correlation = corSymm(form = ~ vi | s), weights = varIdent(form = ~ 1 | v))",
    "CS": "gls(f, d, correlation = corCompSymm(form = ~ 1 | s))",
    "AR1": "gls(f, d, correlation = corAR1(form = ~ vi | s))",
    "RI": "lmer(update(f, . ~ . + (1 | s)), d)",
}


def sim5000(seed=5):
    df = lmm.simulate_longitudinal(5000, 12, seed=seed, cov="ar1", rho=0.6, missing="monotone", missing_rate=0.4)
    rng = np.random.default_rng(seed)
    gap = (rng.random(len(df)) < 0.08) & (df["visit"] != "V01")
    df.loc[gap, "y"] = np.nan
    return df


DATASETS = {
    "bcva": dict(load=lambda: pd.read_csv(SHARED / "bcva_data.csv"), mean="BCVA_CHG ~ ARMCD * AVISIT + RACE + BCVA_BL",
                 v="AVISIT", s="USUBJID", y="BCVA_CHG"),
    "sim5000": dict(load=sim5000, mean="y ~ arm * visit + x", v="visit", s="subject", y="y"),
}

R_SCRIPT = r"""
suppressPackageStartupMessages({library(nlme); library(lme4); library(jsonlite)})
a <- commandArgs(trailingOnly = TRUE)
d <- read.csv(a[1], stringsAsFactors = FALSE); f <- as.formula(a[2])
d <- d[!is.na(d[[a[5]]]), ]; d[[a[3]]] <- factor(d[[a[3]]]); d$v <- d[[a[3]]]; d$vi <- as.integer(d$v)
d$s <- factor(d[[a[4]]])
d <- d[order(d$s, d$vi), ]
calls <- fromJSON(a[6])
for (m in names(calls)) {
  ts <- c(); fit <- NULL
  for (r in 1:3) { st <- system.time(fit <- eval(parse(text = calls[[m]]))); ts <- c(ts, st[["elapsed"]])
                   if (sum(ts) > 20) break }
  cat("JSON", toJSON(list(model = m, time = median(ts), deviance = -2 * as.numeric(logLik(fit))),
                     auto_unbox = TRUE, digits = NA), "\n")
}
"""


def ours(formula, df, repeats):
    jax.clear_caches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        r = lmm.Model(formula, df).fit()
        r.coef_table
        first = time.perf_counter() - t
        ts = []
        for _ in range(repeats):
            m = lmm.Model(formula, df)
            t = time.perf_counter()
            r = m.fit()
            r.coef_table
            ts.append(time.perf_counter() - t)
    return dict(first=first, warm=statistics.median(ts), deviance=r.deviance, n_iter=r.n_iter,
                layout=r.record.layout, status=r.status_message)


def run_r(df, w, models):
    if shutil.which("Rscript") is None:
        return {}
    with tempfile.TemporaryDirectory() as d:
        csv, script = Path(d) / "d.csv", Path(d) / "r.R"
        df.to_csv(csv, index=False)
        script.write_text(R_SCRIPT)
        calls = json.dumps({m: R_CALL[m] for m in models})
        out = subprocess.run(["Rscript", str(script), str(csv), w["mean"], w["v"], w["s"], w["y"], calls],
                             capture_output=True, text=True, timeout=3600)
    res = {}
    if out.returncode != 0:
        print("  [R failed: " + out.stderr.strip()[-300:] + "]")
    for line in out.stdout.splitlines():
        if line.startswith("JSON "):
            j = json.loads(line[5:])
            res[j["model"]] = j
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None)
    ap.add_argument("--models", default="UN,CS,AR1,RI")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-r", action="store_true")
    a = ap.parse_args()
    models = a.models.split(",")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; jax {jax.__version__}")
    rows = []
    for name, w in DATASETS.items():
        if a.only and name not in a.only.split(","):
            continue
        try:
            df = w["load"]()
        except FileNotFoundError as e:
            print(f"  [{name}: skipped ({e})]")
            continue
        for m in models:
            f = f"{w['mean']} + {COV[m].format(v=w['v'], s=w['s'])}"
            rows.append(dict(data=name, model=m, **ours(f, df, a.repeats)))
            print(f"  [{name} {m}: warm {rows[-1]['warm']:.3f} s, first {rows[-1]['first']:.1f} s]", flush=True)
        R = {} if a.no_r else run_r(df, w, models)
        for r in rows:
            if r["data"] == name:
                r["R"] = R.get(r["model"])
    print()
    print("| data | model | fit + coef_table s | first call s | iter | layout | R s | R/ours | dev ours-R |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rr = r.get("R")
        print(f"| {r['data']} | {r['model']} | {r['warm']:.3f} | {r['first']:.1f} | {r['n_iter']} | {r['layout']} | "
              + (f"{rr['time']:.2f} | {rr['time'] / r['warm']:.1f} | {r['deviance'] - rr['deviance']:.1e} |" if rr
                 else "- | - | - |"))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
