"""The ``jaxlmm`` command line: ``jaxlmm demo`` and ``jaxlmm fit data.csv "FORMULA"``."""

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
    rows, fits = [], {}
    for st in ("un", "cs", "csh", "ar1", "arh1"):
        formula = f"CHG ~ ARMCD * AVISIT + BASE + SEX + {st}(AVISIT | USUBJID)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = lmm.fit(formula, df, reml=True)
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


def _read(path):
    import pandas as pd

    if str(path).endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _fit(args) -> int:
    import jaxlmm as lmm

    df = _read(args.data)
    res = lmm.fit(args.formula, df, reml=not args.ml)
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
        }
        print(json.dumps(out, indent=2))
    else:
        print(res.summary())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Linear mixed models in JAX.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="fit five covariance structures to the built-in example trial")
    p.set_defaults(func=_demo)
    p = sub.add_parser("fit", help="fit one model to a CSV or Parquet file")
    p.add_argument("data")
    p.add_argument("formula")
    p.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p.add_argument("--json", action="store_true", help="print JSON instead of the summary table")
    p.set_defaults(func=_fit)
    args = parser.parse_args(argv)
    from .errors import LMMError

    try:
        return args.func(args)
    except (LMMError, FileNotFoundError) as e:
        print(f"jaxlmm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
