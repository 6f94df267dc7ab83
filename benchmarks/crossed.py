"""Nested and crossed random effects: jaxlmm against lme4::lmer on the same data, in one run.

Workloads (simulated here with fixed seeds; nothing is read from other projects):

* ``insteval``: the shape of lme4's teaching-evaluation data, ``y ~ service + (1 | s) + (1 | d) +
  (1 | dept)`` on 73,421 ratings by 2,972 students of 1,128 lecturers in 14 departments
  (students rate 1 to ~90 lecturers; lecturers' popularity is skewed; each lecturer belongs to
  one department);
* ``maximal``: a subjects x items experiment, 60 subjects x 40 items, ``rt ~ cond + (1 + cond |
  subject) + (1 + cond | item)`` (correlated intercepts and slopes on both sides);
* ``boot-crossed`` / ``boot-nested``: parametric-bootstrap throughput (``res.bootstrap``) of a
  Penicillin-size crossed model (24 plates x 6 samples, ``(1 | plate) + (1 | sample)``) and of a
  three-level nested model (``(1 | school/class)``, 30 schools x 4 classes x 8 pupils), against
  lme4's ``bootMer`` loop.

For each single fit: ``fit s`` (median of warm fits of a fresh ``Model``; compiled program
reused), ``compile s`` (first fit minus a warm fit, after ``jax.clear_caches()``), peak RSS of
the process, ``lmer s`` (``system.time`` around ``lmer()``, default controls, in one Rscript),
the ratio and the difference of REML deviances.

Usage (from the repository root)::

    python benchmarks/crossed.py               # everything (about 5 minutes with R)
    python benchmarks/crossed.py --no-r        # jaxlmm only
    python benchmarks/crossed.py --only insteval,maximal --boot 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
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


def insteval_like(seed: int = 2024) -> pd.DataFrame:
    """73,421 ratings in the shape of lme4's InstEval (2,972 s, 1,128 d, 14 dept)."""
    rng = np.random.default_rng(seed)
    n_s, n_d, n_dept, N = 2972, 1128, 14, 73421
    raw = rng.gamma(1.6, 24.7 / 1.6, size=n_s)
    cnt = np.clip(np.round(raw * N / raw.sum()).astype(int), 1, 90)
    while cnt.sum() != N:  # fix the total exactly
        j = rng.integers(n_s)
        cnt[j] = np.clip(cnt[j] + (1 if cnt.sum() < N else -1), 1, 90)
    pop = rng.lognormal(0.0, 1.0, size=n_d)
    pop /= pop.sum()
    s = np.repeat(np.arange(n_s), cnt)
    d = np.concatenate([rng.choice(n_d, size=c, replace=False, p=pop) for c in cnt])
    dept_of = rng.integers(0, n_dept, size=n_d)
    dept = dept_of[d]
    service = (rng.uniform(size=N) < 0.4).astype(int)
    y = (3.2 - 0.07 * service + 0.33 * rng.normal(size=n_s)[s] + 0.52 * rng.normal(size=n_d)[d]
         + 0.08 * rng.normal(size=n_dept)[dept] + 1.18 * rng.normal(size=N))
    return pd.DataFrame({"s": [f"s{i}" for i in s], "d": [f"d{i}" for i in d], "dept": [f"k{i}" for i in dept],
                         "service": np.where(service == 1, "yes", "no"), "y": y})


WORKLOADS = {
    "insteval": dict(formula="y ~ service + (1 | s) + (1 | d) + (1 | dept)",
                     data=lambda: insteval_like(), repeats=3, what="InstEval shape: 73,421 x (2,972 s, 1,128 d, 14 dept)"),
    "students": dict(formula="y ~ service + (1 | s)", data=lambda: insteval_like(), repeats=3,
                     what="InstEval shape, (1 | s) only: 2,972 students, up to 92 rows each"),
    "maximal": dict(formula="y ~ cond + (1 + cond | subject) + (1 + cond | item)",
                    data=lambda: lmm.simulate_crossed(60, 40, seed=7), repeats=5,
                    what="subjects x items 60 x 40, maximal"),
}
BOOT = {
    "boot-crossed": dict(formula="y ~ 1 + (1 | plate) + (1 | sample)",
                         data=lambda: _penicillin_like(), what="Penicillin shape: 24 plates x 6 samples"),
    "boot-nested": dict(formula="y ~ x + (1 | school/class)",
                        data=lambda: lmm.simulate_nested((("school", 30), ("class", 4)), n_rows=8, sd=(1.0, 0.6),
                                                         seed=11),
                        what="3-level nested: 30 schools x 4 classes x 8 pupils"),
}


def _penicillin_like(seed: int = 3) -> pd.DataFrame:
    d = lmm.simulate_crossed(24, 6, sd_subject=(0.85, 0.0), sd_item=(1.9, 0.0), sigma=0.55, beta=(22.97, 0.0),
                             seed=seed)
    return d.rename(columns={"subject": "plate", "item": "sample"}).drop(columns="cond")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_ours(formula, df, repeats):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jax.clear_caches()
        t0 = time.perf_counter()
        res = lmm.Model(formula, df).fit()
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = lmm.Model(formula, df).fit()
            times.append(time.perf_counter() - t0)
    fit = statistics.median(times)
    return dict(fit_s=fit, compile_s=max(first - fit, 0.0), deviance=r.deviance, status=r.status_message,
                n_iter=r.n_iter, layout=res.model.payload[0], peak_rss_mb=peak_rss_mb())


def time_boot(formula, df, B, repeats=3):
    """Fits per second of ``res.bootstrap(n=B)`` (median of ``repeats`` runs with other seeds,
    after a first run of the same size that compiles)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lmm.fit(formula, df)
        jax.clear_caches()
        t0 = time.perf_counter()
        res.bootstrap(n=B, seed=1)
        first = time.perf_counter() - t0
        secs, failed = [], 0
        for r in range(repeats):
            t0 = time.perf_counter()
            bt = res.bootstrap(n=B, seed=2 + r)
            secs.append(time.perf_counter() - t0)
            failed += int(bt.n_failed)
    sec = statistics.median(secs)
    return dict(fits_per_s=B / sec, seconds=sec, compile_s=max(first - sec, 0.0), failed=failed, deviance=res.deviance)


R_SCRIPT = r"""
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(TRUE)
jobs <- fromJSON(args[1], simplifyVector = FALSE)
out <- list()
for (job in jobs) {
  d <- read.csv(job$csv, stringsAsFactors = TRUE)
  f <- as.formula(job$formula)
  if (job$kind == "fit") {
    invisible(lmer(f, d[seq_len(min(nrow(d), 200)), , drop = FALSE]))  # warm-up
    ts <- c(); dev <- NA
    for (r in seq_len(job$repeats)) {
      t <- system.time(fit <- lmer(f, d))[["elapsed"]]
      ts <- c(ts, t); dev <- -2 * as.numeric(logLik(fit))
      if (sum(ts) > job$budget) break
    }
    out[[job$name]] <- list(seconds = median(ts), deviance = dev, runs = length(ts),
                            singular = isSingular(fit))
  } else {
    fit <- lmer(f, d)
    t <- system.time(b <- bootMer(fit, function(m) fixef(m), nsim = job$nsim, seed = 1))[["elapsed"]]
    out[[job$name]] <- list(fits_per_s = job$nsim / t, seconds = t, nsim = job$nsim)
  }
}
cat(toJSON(out, auto_unbox = TRUE, digits = NA))
"""


def run_r(jobs):
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        spec = []
        for j in jobs:
            csv = os.path.join(tmp, j["name"] + ".csv")
            j["df"].to_csv(csv, index=False)
            spec.append({k: v for k, v in j.items() if k != "df"} | {"csv": csv})
        sp = os.path.join(tmp, "jobs.json")
        Path(sp).write_text(json.dumps(spec))
        rs = os.path.join(tmp, "bench.R")
        Path(rs).write_text(R_SCRIPT)
        p = subprocess.run(["Rscript", rs, sp], capture_output=True, text=True, timeout=3600)
        if p.returncode != 0:
            print("R failed:", p.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated workloads")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap replicates (ours)")
    ap.add_argument("--r-boot", type=int, default=50, help="bootMer replicates")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    only = None if args.only is None else set(args.only.split(","))
    print(f"device: {jax.devices()[0].platform} ({len(jax.devices())}); host: {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"python {platform.python_version()}, jax {jax.__version__}, numpy {np.__version__}")
    rows, boots, jobs = [], [], []
    for name, w in WORKLOADS.items():
        if only and name not in only:
            continue
        df = w["data"]()
        r = time_ours(w["formula"], df, w["repeats"])
        rows.append(dict(workload=name, what=w["what"], N=len(df), **r))
        print(f"  [{name}: fit {r['fit_s']:.3f} s, compile {r['compile_s']:.1f} s, {r['layout']}]", flush=True)
        jobs.append(dict(name=name, kind="fit", formula=w["formula"], repeats=3, budget=240, df=df))
    for name, w in BOOT.items():
        if only and name not in only:
            continue
        df = w["data"]()
        r = time_boot(w["formula"], df, args.boot)
        boots.append(dict(workload=name, what=w["what"], N=len(df), B=args.boot, **r))
        print(f"  [{name}: {r['fits_per_s']:.0f} fits/s]", flush=True)
        jobs.append(dict(name=name, kind="boot", formula=w["formula"], nsim=args.r_boot, df=df))
    R = None if args.no_r else run_r(jobs)
    print()
    print("| workload | N | fit s | compile s | iter | peak RSS MB | lmer s | lmer/ours | dev ours-lmer | layout |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rr = (R or {}).get(r["workload"])
        lm = f"{rr['seconds']:.2f}" if rr else "-"
        ratio = f"{rr['seconds'] / r['fit_s']:.1f}" if rr else "-"
        dd = f"{r['deviance'] - rr['deviance']:.1e}" if rr else "-"
        print(f"| {r['what']} | {r['N']} | {r['fit_s']:.3f} | {r['compile_s']:.1f} | {r['n_iter']} | "
              f"{r['peak_rss_mb']:.0f} | {lm} | {ratio} | {dd} | {r['layout']} |")
    print()
    print("| bootstrap | N | B | ours fits/s | compile s | failed | bootMer fits/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in boots:
        rr = (R or {}).get(r["workload"])
        bm = f"{rr['fits_per_s']:.1f}" if rr else "-"
        ratio = f"{r['fits_per_s'] / rr['fits_per_s']:.0f}" if rr else "-"
        print(f"| {r['what']} | {r['N']} | {r['B']} | {r['fits_per_s']:,.0f} | {r['compile_s']:.1f} | {r['failed']} | "
              f"{bm} | {ratio} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"fits": rows, "bootstrap": boots, "R": R}, indent=1, default=float))


if __name__ == "__main__":
    main()
