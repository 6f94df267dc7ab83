"""The ``jaxlmm`` command line.

    jaxlmm demo
    jaxlmm fit data.csv "FORMULA" [--ml] [--ddf kenward-roger] [--ci profile] [--json]
    jaxlmm compare data.csv "MEAN FORMULA" --visit V --subject S [--structures un,cs,ar1] [--json]
    jaxlmm bootstrap data.csv "FORMULA" [-n 1000] [--seed 0] [--json]
    jaxlmm power --visits 4 --n-per-arm 50,100 --effect 0,0.5,1 --structure ar1 --sd 1 --rho 0.5
                 [--dropout 0.1] [--mar-slope -1] [--analysis un] [--nsim 1000] [--json]

Data files are CSV or Parquet (``.parquet``/``.pq``).  Output is the same text as the Python
API's summaries, or JSON with ``--json``.  Bad input exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings


def _demo(args) -> int:
    import pandas as pd

    import jaxlmm as lmm

    df = lmm.example_trial()
    print("jaxlmm demo: built-in example trial (jaxlmm.example_trial())")
    print(
        f"  {df.USUBJID.nunique()} subjects, {df.AVISIT.nunique()} visits, "
        f"{int(df.CHG.notna().sum())} observed of {len(df)} rows (monotone dropout)\n"
    )
    import time

    rows, fits = [], {}
    print("Fitting (the first fit of each structure compiles it: a few seconds each)")
    for st in ("un", "cs", "csh", "ar1", "arh1"):
        formula = f"CHG ~ ARMCD * AVISIT + BASE + SEX + {st}(AVISIT | USUBJID)"
        t0 = time.perf_counter()
        print(f"  {formula} ...", end="", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = lmm.fit(formula, df, reml=True)
        print(f" {time.perf_counter() - t0:.1f} s")
        fits[st] = res
        rows.append(
            {
                "structure": res.model.spec.resid.sas,
                "n_cov_params": res.n_theta,
                "logLik": res.loglik,
                "AIC": res.aic,
                "BIC": res.bic,
                "converged": res.converged,
            }
        )
    table = pd.DataFrame(rows, index=list(fits)).sort_values("AIC")
    print("Covariance structures compared (REML, same fixed effects; smaller AIC/BIC is better):")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    best = table.index[0]
    print(f"\nBest by AIC: {fits[best].model.spec.resid.sas}\n")
    print(fits[best].summary())
    return 0


class CLIError(Exception):
    """A one-line message for the user; exit status 2."""


def _read(path):
    import os

    import pandas as pd

    if not os.path.exists(path):
        raise CLIError(f"data file {path!r} not found (give a CSV or Parquet file)")
    low = str(path).lower()
    try:
        if low.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if low.endswith((".csv", ".txt", ".csv.gz")):
            return pd.read_csv(path)
    except ImportError as e:
        raise CLIError(f"reading {path!r} needs an extra package: {e} (pip install pyarrow)") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CLIError(f"could not read {path!r} as {'Parquet' if 'parquet' in low else 'CSV'}: "
                       f"{str(e).splitlines()[0]}") from e
    raise CLIError(f"{path!r}: unknown file type; use .csv or .parquet")


def _table_json(df):
    import numpy as np

    out = df.reset_index().replace({np.nan: None})
    return out.to_dict(orient="records")


def _fit(args) -> int:
    import jaxlmm as lmm

    df = _read(args.data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", lmm.ConvergenceWarning)
        res = lmm.fit(args.formula, df, reml=not args.ml, ddf=args.ddf, weights=args.weights)
    for w in caught:
        if issubclass(w.category, lmm.ConvergenceWarning):
            print(f"jaxlmm: warning: {w.message}", file=sys.stderr)
    ci = res.conf_int(method=args.ci) if args.ci else None
    if args.json:
        out = {
            "formula": args.formula,
            "method": "ML" if args.ml else "REML",
            "deviance": res.deviance,
            "loglik": res.loglik,
            "aic": res.aic,
            "bic": res.bic,
            "converged": res.converged,
            "status": res.status_message,
            "fixef": res.coef_table.reset_index(names="term").to_dict(orient="records"),
            "theta": res.theta.to_dict(),
            "ddf": res.ddf_method,
        }
        if ci is not None:
            out["conf_int"] = {"method": args.ci, "intervals": _table_json(ci)}
        print(json.dumps(out, indent=2))
    else:
        print(res.summary())
        if ci is not None:
            print(f"\n95% confidence intervals ({args.ci})")
            print(ci.to_string(float_format=lambda v: f"{v:.6g}"))
    return 0


def _compare(args) -> int:
    import jaxlmm as lmm

    df = _read(args.data)
    structures = tuple(s.strip() for s in args.structures.split(",") if s.strip())
    unknown = [s for s in structures if s not in lmm.COVARIANCE_NAMES]
    if unknown:
        raise CLIError(f"unknown structure(s) {unknown} in --structures; choose from {sorted(lmm.COVARIANCE_NAMES)}")
    if "~" not in args.formula or "|" in args.formula:
        raise CLIError("give the mean model only, e.g. \"y ~ arm * visit\"; the covariance terms are "
                       "added for each structure in --structures")
    sel = lmm.select_covariance(args.formula, df, visit=args.visit, subject=args.subject, structures=structures,
                                criterion=args.criterion, reml=not args.ml)
    if args.json:
        out = {"criterion": args.criterion, "method": "ML" if args.ml else "REML", "best": sel.best_name,
               "table": _table_json(sel.table), "lrt": _table_json(sel.lrt)}
        print(json.dumps(out, indent=2))
    else:
        print(sel.summary())
    return 0


def _bootstrap(args) -> int:
    import jaxlmm as lmm

    if args.n < 2:
        raise CLIError(f"-n must be at least 2 replicates, got {args.n}")
    if not 0 < args.level < 1:
        raise CLIError(f"--level must be between 0 and 1 (e.g. 0.95), got {args.level}")
    df = _read(args.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmm.ConvergenceWarning)
        res = lmm.fit(args.formula, df, reml=not args.ml, weights=args.weights)
    boot = res.bootstrap(n=args.n, seed=args.seed, progress=not args.json)
    ci = boot.conf_int(args.method, args.level)
    if args.json:
        out = {"formula": args.formula, "n": args.n, "seed": args.seed, "failed": boot.n_failed,
               "method": args.method, "level": args.level, "intervals": _table_json(ci)}
        print(json.dumps(out, indent=2))
    else:
        print(f"Parametric bootstrap of {args.formula!r}: {args.n} replicates, seed {args.seed}, "
              f"{boot.n_failed} failed (excluded)")
        print(f"{args.level:.0%} {args.method} intervals")
        print(ci.to_string(float_format=lambda v: f"{v:.6g}"))
    return 0


def _floats(text, what):
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _truth_theta(structure, visits, sd, rho):
    """Natural covariance parameters of the true residual structure."""
    T = len(visits)
    if structure in ("ar1", "cs"):
        return {"sigma": sd, "rho": rho}
    if structure in ("arh1", "csh"):
        return {**{f"sd[{v}]": sd for v in visits}, "rho": rho}
    if structure == "diag":
        return {f"sd[{v}]": sd for v in visits}
    if structure in ("un", "us"):  # AR(1)-like correlations rho^|i-j|
        corr = {f"corr[{visits[i]},{visits[j]}]": rho ** (j - i) for i in range(T) for j in range(i + 1, T)}
        return {**{f"sd[{v}]": sd for v in visits}, **corr}
    raise CLIError(f"--structure {structure!r} is not one of un, cs, csh, ar1, arh1, diag")


def _power(args) -> int:
    import jaxlmm as lmm
    from jaxlmm.power import Design, Dropout, Truth

    if args.visits < 2:
        raise CLIError(f"--visits must be at least 2, got {args.visits}")
    n_list = _floats(args.n_per_arm, "--n-per-arm")
    if not n_list or any(n < 2 or n != int(n) for n in n_list):
        raise CLIError(f"--n-per-arm must be whole numbers of at least 2, got {args.n_per_arm!r}")
    effects = _floats(args.effect, "--effect")
    rates = _floats(args.dropout, "--dropout")
    if any(not 0 <= r < 1 for r in rates):
        raise CLIError(f"--dropout rates must be in [0, 1), got {args.dropout!r}")
    if args.nsim < 10:
        raise CLIError(f"--nsim must be at least 10, got {args.nsim}")
    visits = tuple(f"V{j + 1}" for j in range(args.visits))
    analysis = args.analysis or args.structure
    drop = [Dropout.mar(r, slope=args.mar_slope) if args.mar_slope else Dropout.mcar(r) for r in rates]
    design = Design(n_per_arm=int(n_list[0]), visits=visits, dropout=drop[0] if rates else None)
    truth = Truth(fixef={}, theta=_truth_theta(args.structure, visits, args.sd, args.rho), structure=args.structure)
    formula = f"y ~ arm * visit + {analysis}(visit | subject)"
    last = visits[-1]
    hypothesis = {"arm[T.TRT]": 1.0, f"arm[T.TRT]:visit[T.{last}]": 1.0}
    grid = {"n_per_arm": [int(n) for n in n_list], "effect": effects}
    if len(rates) > 1:
        grid["dropout"] = drop
    out = lmm.power(formula, design, truth, hypothesis, grid=grid, nsim=args.nsim, ddf=args.ddf,
                    alpha=args.alpha, seed=args.seed, progress=not args.json)
    cols = [c for c in ("n_per_arm", "effect", "dropout", "power", "power_lower", "power_upper", "rejections",
                        "n_failed", "n_boundary", "bias", "empirical_se", "mean_model_se", "coverage", "mean_df")
            if c in out.columns]
    table = out[cols]
    if args.json:
        print(json.dumps({"formula": formula, "hypothesis": f"TRT - PBO at {last}", "truth": args.structure,
                          "nsim": args.nsim, "ddf": args.ddf, "alpha": args.alpha, "seed": args.seed,
                          "scenarios": _table_json(table.astype({c: object for c in table.columns if
                                                                 table[c].dtype == object}))}, indent=2))
    else:
        print(f"Power of the two-sided {args.ddf} t test of TRT - PBO at {last} (alpha {args.alpha}), "
              f"{args.nsim} simulated trials per scenario")
        print(f"analysis: {formula};  truth: {args.structure} residual, sd {args.sd}, rho {args.rho}")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _distributed_flags(p):
    g = p.add_argument_group("several processes (JAX's multi-process runtime; docs/batch.md)")
    g.add_argument("--distributed", action="store_true",
                   help="join jax.distributed first: every process runs the same command, the replicates are "
                        "split over the devices of all of them, process 0 prints the result")
    g.add_argument("--coordinator", help="host:port of process 0 (default: from the cluster environment, e.g. Slurm)")
    g.add_argument("--num-processes", type=int, help="number of processes (default: from the cluster environment)")
    g.add_argument("--process-id", type=int, help="this process's rank (default: from the cluster environment)")


def _run_distributed(args) -> int:
    """Run the command in every process of a jax.distributed job; only process 0 prints.  The
    C++ runtime's own messages (gloo's connection lines) are written to file descriptor 1:
    it is pointed at stderr while the command runs, so standard output holds only the result
    (``--json`` stays parseable)."""
    import contextlib
    import io
    import os

    from .distributed import initialize_distributed

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        import jax

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = args.func(args)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if jax.process_index() == 0:
        sys.stdout.write(out.getvalue())
    return rc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Linear mixed models in JAX.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="fit five covariance structures to the built-in example trial")
    p.set_defaults(func=_demo)
    p = sub.add_parser("fit", help="fit one model to a CSV or Parquet file")
    p.add_argument("data")
    p.add_argument("formula")
    p.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p.add_argument("--weights", help="a column of observation weights (SAS WEIGHT: residual variance / weight)")
    p.add_argument("--ddf", default="satterthwaite",
                   choices=["satterthwaite", "kenward-roger", "kenward-roger-linear", "residual", "between-within"],
                   help="denominator degrees of freedom for the fixed effects (default satterthwaite)")
    p.add_argument("--ci", choices=["wald", "profile"], help="also print confidence intervals")
    p.add_argument("--json", action="store_true", help="print JSON instead of the summary table")
    p.set_defaults(func=_fit)

    p = sub.add_parser("compare", help="fit several residual covariance structures and rank them")
    p.add_argument("data")
    p.add_argument("formula", help='the mean model, e.g. "CHG ~ ARMCD * AVISIT + BASE"')
    p.add_argument("--visit", required=True, help="the visit (repeated-measures) column")
    p.add_argument("--subject", required=True, help="the subject column")
    p.add_argument("--structures", default="un,cs,csh,ar1,arh1", help="comma-separated (default un,cs,csh,ar1,arh1)")
    p.add_argument("--criterion", default="aic", choices=["aic", "aicc", "bic"])
    p.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_compare)

    p = sub.add_parser("bootstrap", help="parametric bootstrap intervals (batched refits)")
    p.add_argument("data")
    p.add_argument("formula")
    p.add_argument("-n", type=int, default=1000, help="replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="percentile", choices=["percentile", "basic"])
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--ml", action="store_true")
    p.add_argument("--weights", help="a column of observation weights")
    p.add_argument("--json", action="store_true")
    _distributed_flags(p)
    p.set_defaults(func=_bootstrap)

    p = sub.add_parser("power", help="power of a two-arm MMRM by simulation (treatment difference at the last visit)")
    p.add_argument("--visits", type=int, default=4, help="number of visits (default 4)")
    p.add_argument("--n-per-arm", default="50,100", help="comma-separated subjects per arm (default 50,100)")
    p.add_argument("--effect", default="0,0.5,1", help="true TRT - PBO differences at the last visit")
    p.add_argument("--structure", default="ar1", help="true residual covariance: un, cs, csh, ar1, arh1, diag")
    p.add_argument("--sd", type=float, default=1.0, help="residual SD (every visit)")
    p.add_argument("--rho", type=float, default=0.5, help="correlation parameter (UN: rho^|i-j|)")
    p.add_argument("--dropout", default="0", help="per-visit dropout rate(s); several: one scenario each")
    p.add_argument("--mar-slope", type=float, default=0.0, help="MAR dropout: log-odds per SD of the last value")
    p.add_argument("--analysis", help="covariance structure of the analysis model (default: --structure)")
    p.add_argument("--nsim", type=int, default=1000)
    p.add_argument("--ddf", default="satterthwaite", choices=["satterthwaite", "residual", "between-within"])
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    _distributed_flags(p)
    p.set_defaults(func=_power)

    args = parser.parse_args(argv)
    from .errors import LMMError

    try:
        if getattr(args, "distributed", False):
            return _run_distributed(args)
        return args.func(args)
    except (LMMError, CLIError, FileNotFoundError) as e:
        msg = " ".join(str(e).split())
        print(f"jaxlmm: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
