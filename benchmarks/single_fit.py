"""Single-fit benchmark: jaxlmm against nlme::gls and lme4::lmer on the same data.

For each size n (subjects x 6 visits, simulated by ``jaxlmm.simulate_longitudinal`` with
monotone dropout) and each model, prints

* ``build``: ``jaxlmm.Model(formula, df)`` (design matrices; not part of the fit time),
* ``fit``: median of ``--repeats`` timings of ``model.fit()``, each on a fresh ``Model`` of the
  same data after a first (compiling) fit, i.e. the compiled program is reused,
* ``compile``: first fit minus ``fit``, with JAX's caches cleared before the first fit of every
  model and size (what a fresh session pays; ``jax.clear_caches``),
* ``R``: the R fit on the same data (written to a temporary CSV), timed inside R with
  ``system.time`` around the fit only (median of up to ``--r-repeats`` runs, fewer once
  ``--r-repeat-budget`` seconds are used), one ``Rscript`` call per size; R is skipped when
  ``Rscript`` or nlme/lme4/jsonlite are missing,
* ``R/ours`` and ``dev ours-R``: speed ratio and difference of -2 (restricted) log-likelihoods.

Usage (from the repository root)::

    python benchmarks/single_fit.py                      # sizes 100,1000,5000; R up to n=1000
    python benchmarks/single_fit.py --r-max-n 5000       # R at every size (gls UN: minutes)
    python benchmarks/single_fit.py --quick              # sizes 100,1000, fewer repeats, no R UN at 1000
    python benchmarks/single_fit.py --sizes 1000 --models un,slope --no-r
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:
    import jaxlmm as lmm
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jaxlmm as lmm

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pandas as pd

# name -> (label, jaxlmm covariance/random term, R call shown in the table)
MODELS = {
    "un": ("UN", "un(visit | subject)", "gls corSymm+varIdent"),
    "cs": ("CS", "cs(visit | subject)", "gls corCompSymm"),
    "csh": ("CSH", "csh(visit | subject)", "gls corCompSymm+varIdent"),
    "ar1": ("AR1", "ar1(visit | subject)", "gls corAR1"),
    "arh1": ("ARH1", "arh1(visit | subject)", "gls corAR1+varIdent"),
    "slope": ("RI+slope", "(time | subject)", "lmer intercept+slope"),
    "toep": ("TOEP", "toep(visit | subject)", None),
    "toeph": ("TOEPH", "toeph(visit | subject)", "glmmTMB toep, dispformula ~0"),
    "ad": ("ANTE(1)", "ad(visit | subject)", None),
    "adh": ("ANTE(1) het", "adh(visit | subject)", None),
    "arma11": ("ARMA(1,1)", "arma11(visit | subject)", "gls corARMA(1,1)"),
    "sp_exp": ("SP(EXP)", "sp_exp(time | subject)", "gls corExp"),
    "un_grp": ("UN by arm", "un(visit | arm / subject)", None),
    "ar1_vi": ("AR1 + varIdent(sex)", "ar1(visit | subject) + var_ident(sex)", "gls corAR1+varIdent(~1|sex)"),
}
#: the covariance catalogue; target: each within 2x of UN's fit time at the same size
CATALOGUE = ("toep", "toeph", "ad", "adh", "arma11", "sp_exp", "un_grp", "ar1_vi")
MEAN = "y ~ time * arm + x"
N_VISITS = 6

# The R side.  Arguments: csv, models (comma separated), timeout per fit (s), repeats, repeat
# budget (s).  Prints one line "JSON {...}" per model as soon as it is done.
R_SCRIPT = r"""
suppressPackageStartupMessages({library(nlme); library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = FALSE)
models <- strsplit(args[2], ",")[[1]]
timeout <- as.numeric(args[3]); reps <- as.integer(args[4]); budget <- as.numeric(args[5])
d$visit <- factor(d$visit); d$arm <- factor(d$arm); d$vi <- as.integer(d$visit)
if (!is.null(d$sex)) d$sex <- factor(d$sex)
d <- d[!is.na(d$y), , drop = FALSE]
d$subject <- factor(d$subject)
d <- d[order(d$subject, d$vi), , drop = FALSE]
fixed <- y ~ time * arm + x
fitters <- list(
  un   = function(d) gls(fixed, data = d, correlation = corSymm(form = ~ vi | subject),
                         weights = varIdent(form = ~ 1 | visit), method = "REML"),
  cs   = function(d) gls(fixed, data = d, correlation = corCompSymm(form = ~ 1 | subject), method = "REML"),
  csh  = function(d) gls(fixed, data = d, correlation = corCompSymm(form = ~ 1 | subject),
                         weights = varIdent(form = ~ 1 | visit), method = "REML"),
  ar1  = function(d) gls(fixed, data = d, correlation = corAR1(form = ~ vi | subject), method = "REML"),
  arh1 = function(d) gls(fixed, data = d, correlation = corAR1(form = ~ vi | subject),
                         weights = varIdent(form = ~ 1 | visit), method = "REML"),
  slope = function(d) lmer(y ~ time * arm + x + (time | subject), data = d, REML = TRUE),
  toeph = function(d) glmmTMB::glmmTMB(y ~ time * arm + x + toep(visit + 0 | subject), dispformula = ~0,
                                       data = d, REML = TRUE),
  arma11 = function(d) gls(fixed, data = d, correlation = corARMA(form = ~ vi | subject, p = 1, q = 1),
                           method = "REML"),
  sp_exp = function(d) gls(fixed, data = d, correlation = corExp(form = ~ time | subject), method = "REML"),
  ar1_vi = function(d) gls(fixed, data = d, correlation = corAR1(form = ~ vi | subject),
                           weights = varIdent(form = ~ 1 | sex), method = "REML")
)
# warm-up (lazy loading, method dispatch) on the first 40 subjects; not timed
keep <- levels(d$subject)[seq_len(min(40, nlevels(d$subject)))]
small <- droplevels(d[d$subject %in% keep, , drop = FALSE])
for (m in models) suppressWarnings(try(fitters[[m]](small), silent = TRUE))
for (m in models) {
  times <- numeric(0); fit <- NULL; err <- NULL; warns <- character(0)
  for (r in seq_len(reps)) {
    setTimeLimit(elapsed = timeout, transient = TRUE)
    out <- tryCatch(
      withCallingHandlers({
        st <- system.time(f <- fitters[[m]](d))
        list(st = st, f = f)
      }, warning = function(w) {
        warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning")
      }, message = function(w) {
        warns <<- c(warns, trimws(conditionMessage(w))); invokeRestart("muffleMessage")
      }),
      error = function(e) e)
    setTimeLimit(elapsed = Inf)
    if (inherits(out, "error")) { err <- conditionMessage(out); break }
    times <- c(times, out$st[["elapsed"]]); fit <- out$f
    if (sum(times) > budget) break
  }
  res <- list(model = m, times = I(times), error = err, warnings = I(unique(warns)),
              time = if (length(times)) median(times) else NULL,
              deviance = if (is.null(fit)) NULL else -2 * as.numeric(logLik(fit)),
              n_obs = nrow(d))
  cat("JSON", toJSON(res, auto_unbox = TRUE, digits = NA, null = "null"), "\n")
  flush(stdout())
}
"""

R_VERSIONS = r"""
v <- function(p) tryCatch(as.character(packageVersion(p)), error = function(e) NA)
blas <- tryCatch(extSoftVersion()[["BLAS"]], error = function(e) "")
cat(jsonlite::toJSON(list(R = paste(R.version$major, R.version$minor, sep = "."),
  nlme = v("nlme"), lme4 = v("lme4"), Matrix = v("Matrix"), blas = blas,
  lapack = tryCatch(La_library(), error = function(e) "")), auto_unbox = TRUE))
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,5000", help="numbers of subjects (comma separated)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    ap.add_argument("--repeats", type=int, default=5, help="warm fits per model (median reported)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--no-r", action="store_true", help="do not run R")
    ap.add_argument("--r-max-n", type=int, default=1000, help="run R only for sizes <= this")
    ap.add_argument("--r-un-max-n", type=int, default=None, help="run gls UN only for sizes <= this (default: --r-max-n)")
    ap.add_argument("--r-repeats", type=int, default=3, help="R fits per model (median reported)")
    ap.add_argument("--r-repeat-budget", type=float, default=5.0, help="stop repeating an R fit once its runs used this many seconds")
    ap.add_argument("--r-timeout", type=float, default=600.0, help="seconds allowed for one R fit")
    ap.add_argument("--quick", action="store_true", help="sizes 100,1000; 2 repeats; 1 R repeat; R UN only at n<=100")
    ap.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes = "100,1000"
        a.repeats = 2
        a.r_repeats = 1
        if a.r_un_max_n is None:
            a.r_un_max_n = 100
    if a.r_un_max_n is None:
        a.r_un_max_n = a.r_max_n
    a.sizes = [int(s) for s in a.sizes.split(",") if s]
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in a.models if m not in MODELS]
    if bad:
        ap.error(f"unknown models {bad}; choose from {list(MODELS)}")
    return a


def simulate(n: int, seed: int) -> pd.DataFrame:
    """n subjects x 6 visits: ARH(1) errors (rho 0.6, sd 1..2) plus a small random intercept and
    slope, two arms, monotone MAR dropout (about 20% of the cells missing)."""
    return lmm.simulate_longitudinal(
        n, N_VISITS, seed=seed + n, cov="arh1", rho=0.6, re_sd=(1.0, 0.25), re_corr=0.2,
        missing="monotone", missing_rate=0.5,
    )


def r_available():
    rs = shutil.which("Rscript")
    if rs is None:
        return None, "Rscript not on PATH"
    try:
        out = subprocess.run([rs, "-e", R_VERSIONS], capture_output=True, text=True, timeout=120)
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001
        return None, f"Rscript failed: {e}"
    missing = [p for p in ("nlme", "lme4") if not info.get(p)]
    if missing:
        return None, f"R packages missing: {', '.join(missing)}"
    return rs, info


def run_r(rs, csv, models, args):
    """One Rscript call for one dataset; returns {model: result dict}."""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(R_SCRIPT)
        script = f.name
    cmd = [rs, script, str(csv), ",".join(models), str(args.r_timeout), str(args.r_repeats),
           str(args.r_repeat_budget)]
    total_timeout = len(models) * (args.r_timeout + args.r_repeat_budget) + 120
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=total_timeout)
        stdout, note = proc.stdout, None if proc.returncode == 0 else f"Rscript exit {proc.returncode}: {proc.stderr[-300:]}"
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        note = f"Rscript killed after {total_timeout:.0f} s"
    finally:
        os.unlink(script)
    out = {}
    for line in stdout.splitlines():
        if line.startswith("JSON "):
            r = json.loads(line[5:])
            out[r["model"]] = r
    for m in models:
        out.setdefault(m, {"model": m, "time": None, "error": note or "no result"})
    return out


def time_ours(formula, df, repeats):
    t0 = time.perf_counter()
    model = lmm.Model(formula, df)
    build = time.perf_counter() - t0
    jax.clear_caches()  # compile anew, as in a fresh session (shapes may not depend on n)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        m = lmm.Model(formula, df)  # fresh model, same shapes -> compiled program reused
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = m.fit()
        times.append(time.perf_counter() - t0)
    fit = statistics.median(times)
    return {
        "build": build, "first": first, "fit": fit, "times": times, "compile": first - fit,
        "deviance": res.deviance, "status": res.status_message, "n_iter": res.n_iter, "n_obs": res.n_obs,
    }


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main(argv=None):
    args = parse_args(argv)
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"device: {dev.platform} {getattr(dev, 'device_kind', '')} ({len(jax.devices())} device(s)); "
          f"host CPU: {cpu}, {os.cpu_count()} cores")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = "  <- other work is running; timings will be noisy" if load > 0.5 else ""
    print(f"load average (1 min) at start: {load:.2f}{busy}")
    print(f"python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
          f"numpy {np.__version__}, jaxlmm {lmm.__version__}")
    try:
        repo = Path(__file__).resolve().parents[1]
        def git(*a):
            return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True).stdout.strip()

        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "jaxlmm")
        if head:
            print(f"jaxlmm source: git {head}" + (" + uncommitted changes in jaxlmm/" if dirty else ""))
    except OSError:
        pass
    rs, rinfo = (None, "disabled (--no-r)") if args.no_r else r_available()
    if rs:
        print(f"R {rinfo['R']}, nlme {rinfo['nlme']}, lme4 {rinfo['lme4']}, Matrix {rinfo['Matrix']}; "
              f"BLAS {rinfo['blas'] or '?'} / LAPACK {rinfo['lapack'] or '?'}")
    else:
        print(f"R: not run ({rinfo})")
    print(f"data: simulate_longitudinal(n, {N_VISITS}, cov='arh1', rho=0.6, re_sd=(1, 0.25), monotone dropout), "
          f"mean {MEAN}; REML; fit = median of {args.repeats} warm fits; R = median of <= {args.r_repeats} fits")
    print()
    jnp.ones(1).block_until_ready()  # backend start-up is not compile time
    lmm.Model(f"{MEAN} + {MODELS['cs'][1]}", simulate(20, args.seed))  # first-use costs of the formula parser

    rows = []
    tmp = tempfile.TemporaryDirectory(prefix="jaxlmm_bench_")
    for n in args.sizes:
        df = simulate(n, args.seed)
        csv = Path(tmp.name) / f"n{n}.csv"
        df.to_csv(csv, index=False)
        ours = {}
        for key in args.models:
            ours[key] = time_ours(f"{MEAN} + {MODELS[key][1]}", df, args.repeats)
            print(f"  [n={n} {MODELS[key][0]}: fit {ours[key]['fit']:.3f} s, compile {ours[key]['compile']:.1f} s]",
                  file=sys.stderr, flush=True)
        theirs = {}
        if rs and n <= args.r_max_n:
            r_models = [m for m in args.models if MODELS[m][2] and not (m == "un" and n > args.r_un_max_n)]
            t0 = time.perf_counter()
            theirs = run_r(rs, csv, r_models, args) if r_models else {}
            print(f"  [n={n} R: {time.perf_counter() - t0:.0f} s wall]", file=sys.stderr, flush=True)
        for key in args.models:
            o, r = ours[key], theirs.get(key)
            rt = r.get("time") if r else None
            note = ""
            if r is None:
                note = "R skipped" if MODELS[key][2] else "no R peer"
            elif rt is None:
                note = f"R error: {str(r.get('error'))[:60]}"
            elif r.get("warnings"):
                note = "R warned: " + "; ".join(r["warnings"])[:60]
            if o["status"] != "converged":
                note = (f"ours: {o['status']}; " + note).strip("; ")
            if r and r.get("n_obs") not in (None, o["n_obs"]):
                note += f" (n_obs differ: {o['n_obs']} vs {r['n_obs']})"
            rows.append({
                "n": n, "model": MODELS[key][0], "key": key, "n_obs": o["n_obs"], "ours": o, "r": r,
                "r_time": rt, "ratio": (rt / o["fit"]) if rt else None,
                "ddev": (o["deviance"] - r["deviance"]) if (r and r.get("deviance") is not None) else None,
                "r_call": MODELS[key][2] or "-", "note": note,
            })
    tmp.cleanup()

    hdr = ["n", "model", "N obs", "build s", "fit s", "compile s", "iter", "R s", "R/ours", "dev ours-R", "R call", "note"]
    table = [[
        str(r["n"]), r["model"], str(r["n_obs"]), f"{r['ours']['build']:.3f}", f"{r['ours']['fit']:.4f}",
        f"{r['ours']['compile']:.2f}", str(r["ours"]["n_iter"]), fmt(r["r_time"], ".3f"), fmt(r["ratio"], ".1f"),
        fmt(r["ddev"], ".1e"), r["r_call"], r["note"],
    ] for r in rows]
    w = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(hdr)]
    print("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for t in table:
        print("| " + " | ".join(c.rjust(w[i]) if i != 1 and i < 10 else c.ljust(w[i]) for i, c in enumerate(t)) + " |")

    print()
    if hasattr(os, "getloadavg"):
        print(f"load average (1/5/15 min) at end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    # targets from the issue: at 1000 x 6 >= 10x faster than gls, not slower than lmer; compile < 5 s
    miss = []
    for r in rows:
        if r["ours"]["compile"] >= 5.0:
            miss.append(f"compile {r['model']} n={r['n']}: {r['ours']['compile']:.1f} s (target < 5 s)")
        if r["n"] == 1000 and r["ratio"] is not None:
            need = 1.0 if r["key"] == "slope" else 10.0
            if r["ratio"] < need:
                miss.append(f"speed {r['model']} n=1000: R/ours = {r['ratio']:.1f} (target >= {need:g})")
    un_fit = {r["n"]: r["ours"]["fit"] for r in rows if r["key"] == "un"}
    for r in rows:
        if r["key"] in CATALOGUE and r["n"] in un_fit and r["ours"]["fit"] > 2 * un_fit[r["n"]]:
            miss.append(f"speed {r['model']} n={r['n']}: fit {r['ours']['fit']:.3f} s > 2 x UN ({un_fit[r['n']]:.3f} s)")
    speed_checked = any(r["n"] == 1000 and r["ratio"] is not None for r in rows)
    verdict = "all met" if not miss else f"{len(miss)} missed"
    if not speed_checked:
        verdict += " (speed targets not checked: needs n = 1000 with R)"
    print(f"targets (fit at 1000 x 6: >= 10x faster than the R peer, >= 1x lmer; catalogue structures within 2x of "
          f"UN's fit; compile < 5 s): {verdict}")
    for m in miss:
        print("  - " + m)

    if args.json:
        meta = {"device": str(dev), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "r": rinfo if rs else None, "args": {k: v for k, v in vars(args).items()}}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
    main()
