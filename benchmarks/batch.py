"""Batched fits: parametric bootstrap throughput, jaxlmm vs an R refit loop, same data, same run.

    python benchmarks/batch.py                 # all workloads, R peers when installed
    python benchmarks/batch.py --quick         # smaller B, skip the 100,000 scaling point
    python benchmarks/batch.py --no-r          # jaxlmm only

Workloads (issue 3):
  fev UN     : fev_data-size MMRM, 11 fixed effects, UN over 4 visits (../shared/data/fev_data.csv
               when present, else a simulated 200 x 4 trial), parametric bootstrap, B = 1000;
               peer: nlme::gls (corSymm + varIdent) refit loop.
  AR(1)      : 200 subjects x 6 visits, B = 1000; peer: nlme::gls corAR1 refit loop.
  RI + slope : (time | subject), 200 x 6, B = 1000; peer: lme4::refit loop (what bootMer does).
  scaling    : fev UN bootstrap for B = 100, 1,000, 10,000, 100,000: fits/s and peak memory.
  catalogue  : TOEP, TOEPH, ANTE(1), ADH, ARMA(1,1), SP(EXP), UN by arm, AR(1) + varIdent(sex) and a
               structured random-effect term beside UN on one 200 x 6 dataset, B = 1000 (issue 13:
               each within 2x of UN's time); peers: nlme::gls refit loops where gls fits the model.

Our time is the median of 5 calls after compilation (a first call with the same shapes); compile time is
reported apart.  The R loop refits a subset of the same simulated responses (--r-reps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
from jaxlmm.batch import choose_chunk  # noqa: E402


def warm_n(B):
    """A bootstrap size whose single chunk has the shape the B-replicate run will use."""
    return choose_chunk(B, 1, 2e9, len(jax.devices()))

SHARED_FEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "fev_data.csv"


def fev_workload():
    if SHARED_FEV.exists():
        df = pd.read_csv(SHARED_FEV)
        src = "fev_data.csv"
    else:
        df = lmm.simulate_longitudinal(200, 4, seed=1, cov="un", n_arms=2, missing="monotone", missing_rate=0.5)
        df = df.rename(columns={"y": "FEV1", "visit": "AVISIT", "subject": "USUBJID", "arm": "ARMCD", "sex": "SEX"})
        df["RACE"] = np.where(df.x > 0.4, "White", np.where(df.x < -0.4, "Asian", "Black"))
        src = "simulated 200 x 4"
    return ("fev UN", df, "FEV1 ~ RACE + SEX + ARMCD * AVISIT + un(AVISIT | USUBJID)", src)


def ar1_workload():
    df = lmm.simulate_longitudinal(200, 6, seed=2, cov="ar1", rho=0.6, missing="monotone", missing_rate=0.3)
    return ("AR(1)", df, "y ~ time * arm + x + ar1(visit | subject)", "simulated 200 x 6")


def slope_workload():
    df = lmm.simulate_longitudinal(200, 6, seed=3, cov="id", sd=1.0, re_sd=(1.5, 0.5), re_corr=0.2,
                                   missing="monotone", missing_rate=0.3)
    return ("RI + slope", df, "y ~ time + arm + x + (time | subject)", "simulated 200 x 6")


#: the covariance catalogue (issue 13) on one 200 x 6 dataset: each structure's bootstrap beside UN's
CATALOGUE = {
    "UN": "un(visit | subject)", "TOEP": "toep(visit | subject)", "TOEPH": "toeph(visit | subject)",
    "ANTE(1)": "ad(visit | subject)", "ADH": "adh(visit | subject)", "ARMA(1,1)": "arma11(visit | subject)",
    "SP(EXP)": "sp_exp(time | subject)", "UN by arm": "un(visit | arm / subject)",
    "AR1 + varIdent(sex)": "ar1(visit | subject) + var_ident(sex)",
    "re_csh(0 + period | subject)": "re_csh(0 + grp | subject)",
}


def catalogue_workloads():
    df = lmm.simulate_longitudinal(200, 6, seed=4, cov="ar1", rho=0.6, missing="monotone", missing_rate=0.3)
    df["grp"] = np.where(df["time"] < 3, "early", "late")  # two within-subject periods for re_csh
    return [(f"cat {k}", df, f"y ~ time * arm + x + {t}", "simulated 200 x 6") for k, t in CATALOGUE.items()]


_GLS_CAT = """
library(nlme)
df$visit <- factor(df$visit); df$subject <- factor(df$subject); df$arm <- factor(df$arm); df$sex <- factor(df$sex)
df$vi <- as.integer(df$visit)
"""

R_CODE = {
    "cat UN": _GLS_CAT + """
fitone <- function(d) gls(y ~ time * arm + x, data = d, method = "REML", na.action = na.omit,
  correlation = corSymm(form = ~ vi | subject), weights = varIdent(form = ~ 1 | visit))
""",
    "cat ARMA(1,1)": _GLS_CAT + """
fitone <- function(d) gls(y ~ time * arm + x, data = d, method = "REML", na.action = na.omit,
  correlation = corARMA(form = ~ vi | subject, p = 1, q = 1))
""",
    "cat SP(EXP)": _GLS_CAT + """
fitone <- function(d) gls(y ~ time * arm + x, data = d, method = "REML", na.action = na.omit,
  correlation = corExp(form = ~ time | subject))
""",
    "cat AR1 + varIdent(sex)": _GLS_CAT + """
fitone <- function(d) gls(y ~ time * arm + x, data = d, method = "REML", na.action = na.omit,
  correlation = corAR1(form = ~ vi | subject), weights = varIdent(form = ~ 1 | sex))
""",
    "fev UN": """
library(nlme)
df$AVISIT <- factor(df$AVISIT); df$USUBJID <- factor(df$USUBJID)
df$RACE <- factor(df$RACE); df$SEX <- factor(df$SEX); df$ARMCD <- factor(df$ARMCD)
df$vi <- as.integer(df$AVISIT)
fitone <- function(d) gls(FEV1 ~ RACE + SEX + ARMCD * AVISIT, data = d, method = "REML",
  correlation = corSymm(form = ~ vi | USUBJID), weights = varIdent(form = ~ 1 | AVISIT), na.action = na.omit)
""",
    "AR(1)": """
library(nlme)
df$visit <- factor(df$visit); df$subject <- factor(df$subject); df$arm <- factor(df$arm)
df$vi <- as.integer(df$visit)
fitone <- function(d) gls(y ~ time * arm + x, data = d, method = "REML",
  correlation = corAR1(form = ~ vi | subject), na.action = na.omit)
""",
    "RI + slope": """
suppressMessages(library(lme4))
df$subject <- factor(df$subject); df$arm <- factor(df$arm)
base <- lmer(y ~ time + arm + x + (time | subject), data = df[!is.na(df$y), ], REML = TRUE)
fitone <- function(d) refit(base, d$y[!is.na(df$y)])
""",
}


def r_loop(name, df, Y, yname, reps):
    """Seconds per refit of an R loop over ``reps`` of our simulated responses (None if no R)."""
    if shutil.which("Rscript") is None:
        return None, "R not installed"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        df.to_csv(d / "data.csv", index=False)
        np.savetxt(d / "Y.csv", Y[:reps], delimiter=",")
        script = f"""
df <- read.csv("{d / 'data.csv'}")
Y <- as.matrix(read.csv("{d / 'Y.csv'}", header = FALSE))
{R_CODE[name]}
d <- df; d${yname} <- Y[1, ]; invisible(fitone(d))   # warm-up
t0 <- proc.time()[["elapsed"]]
for (i in seq_len(nrow(Y))) {{ d <- df; d${yname} <- Y[i, ]; invisible(fitone(d)) }}
cat(sprintf("%.6f\\n", (proc.time()[["elapsed"]] - t0) / nrow(Y)))
"""
        (d / "run.R").write_text(script)
        try:
            out = subprocess.run(["Rscript", str(d / "run.R")], capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            return None, "R timed out"
        if out.returncode != 0:
            return None, "R failed: " + out.stderr.strip().splitlines()[-1][:120]
        return float(out.stdout.strip().splitlines()[-1]), "R loop"


def peak_mem_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(name, df, formula, B, repeats=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lmm.fit(formula, df)
        t0 = time.perf_counter()
        res.bootstrap(n=warm_n(B), seed=99, progress=False)  # compiles (same chunk shape as the run)
        t_first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            boot = res.bootstrap(n=B, seed=1, progress=False)
            times.append(time.perf_counter() - t0)
    best = float(np.median(times))  # the median of the timed calls (a shared machine is noisy)
    per_chunk = best * warm_n(B) / B
    compile_s = max(t_first - per_chunk, 0.0)
    return res, boot, best, compile_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--r-reps", type=int, default=30)
    ap.add_argument("-B", type=int, default=1000)
    ap.add_argument("--no-catalogue", action="store_true", help="skip the covariance-catalogue workloads")
    ap.add_argument("--no-scaling", action="store_true", help="skip the fev UN scaling rows")
    args = ap.parse_args()

    dev = jax.devices()[0]
    print(f"# jaxlmm batch benchmark  {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# device: {dev.platform} {dev.device_kind} x{len(jax.devices())}, cpus: {os.cpu_count()}, "
          f"jax {jax.__version__}, python {platform.python_version()}")
    B = 200 if args.quick else args.B
    rows = []
    workloads = [fev_workload(), ar1_workload(), slope_workload()] + ([] if args.no_catalogue else
                                                                      catalogue_workloads())
    for name, df, formula, src in workloads:
        res, boot, secs, compile_s = bench(name, df, formula, B, repeats=1 if args.quick else 5)
        ours = B / secs
        peer, note = (None, "skipped")
        if not args.no_r and name in R_CODE:
            Y = res.simulate(n=args.r_reps, seed=1).to_numpy().T.copy()
            peer, note = r_loop(name, df, Y, res.info.formula.response, args.r_reps)
        rows.append({
            "workload": f"{name} ({src})", "B": B, "ours fits/s": ours, "compile s": compile_s,
            "failed": boot.n_failed, "peer": note,
            "peer fits/s": (1 / peer) if peer else np.nan,
            "ratio": (ours * peer) if peer else np.nan,
            "path": boot.batch.path,
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1, float_format=lambda v: f"{v:.1f}"),
              flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    cat = [r for r in rows if r["workload"].startswith("cat ")]
    if cat:  # issue 13 target: each structure's batch within 2x of UN's time on the same data
        un = next(r["ours fits/s"] for r in cat if r["workload"].startswith("cat UN ("))
        slow = [f"{r['workload']}: {un / r['ours fits/s']:.2f}x UN's time" for r in cat
                if r["ours fits/s"] < un / 2]
        print(f"\ncatalogue target (each within 2x of UN's batch time): {'met' if not slow else 'missed'}")
        for m in slow:
            print("  - " + m)

    if args.no_scaling:
        print(json.dumps({"workloads": rows}, default=float))
        return
    print("\n# scaling: fev UN parametric bootstrap")
    name, df, formula, _ = fev_workload()
    sizes = [100, 1000, 10000] + ([] if args.quick else [100000])
    srows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lmm.fit(formula, df)
        for b in sizes:
            res.bootstrap(n=warm_n(b), seed=98, progress=False)  # compile for this chunk shape
            t0 = time.perf_counter()
            boot = res.bootstrap(n=b, seed=1, progress=False)
            dt = time.perf_counter() - t0
            srows.append({"B": b, "seconds": dt, "fits/s": b / dt, "failed": boot.n_failed,
                          "peak RSS MB": peak_mem_mb()})
            print(pd.DataFrame(srows[-1:]).to_string(index=False, header=len(srows) == 1,
                                                     float_format=lambda v: f"{v:,.1f}"), flush=True)
    print(json.dumps({"workloads": rows, "scaling": srows}, default=float))


if __name__ == "__main__":
    main()
