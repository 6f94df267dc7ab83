"""Write the nested and crossed reference datasets used by ``make_reference.R`` here.

Every dataset is made by jaxlmm's own simulators (``simulate_nested``, ``simulate_crossed``,
``simulate_longitudinal`` with sites) with a fixed seed, so the CSVs are reproducible bit for
bit.  Run from the repository root:

    python tests/reference/multilevel/make_data.py
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..")))

from jaxlmm.datasets import simulate_crossed, simulate_longitudinal, simulate_nested  # noqa: E402

DATA = os.path.join(HERE, "data")


def datasets():
    out = {}
    # two-level nested intercepts, class codes reused across schools, unbalanced
    out["nested2"] = simulate_nested((("school", 15), ("class", 4)), n_rows=5, sd=(1.0, 0.7), unbalanced=0.15,
                                     seed=201)
    # three levels
    out["nested3"] = simulate_nested((("district", 6), ("school", 4), ("class", 3)), n_rows=4,
                                     sd=(0.8, 0.6, 0.5), seed=202)
    # random intercepts and slopes at both levels
    out["nested_slopes"] = simulate_nested((("school", 20), ("class", 3)), n_rows=6, sd=(1.0, 0.6),
                                           slope_sd=(0.5, 0.3), slope_corr=0.3, seed=203)
    # singular: no class variance
    out["nested_singular"] = simulate_nested((("school", 12), ("class", 3)), n_rows=5, sd=(1.0, 0.0), seed=205)
    # crossed intercepts, Penicillin shape
    pen = simulate_crossed(24, 6, sd_subject=(0.85, 0.0), sd_item=(1.9, 0.0), sigma=0.55, beta=(22.97, 0.0),
                           seed=205)
    out["crossed"] = pen.rename(columns={"subject": "plate", "item": "sample"}).drop(columns="cond")
    # crossed with correlated random slopes on both factors
    out["crossed_slopes"] = simulate_crossed(30, 20, sd_subject=(1.0, 0.4), sd_item=(0.8, 0.3), corr_subject=0.4,
                                             corr_item=-0.3, seed=206)
    # partially crossed, unbalanced, missing cells, replicated cells (interaction factor)
    out["partial"] = simulate_crossed(40, 25, fraction=0.6, reps=2, sd_subject=(1.0, 0.0), sd_item=(0.7, 0.0),
                                      seed=207)
    # subjects nested in sites, AR(1) residuals within subject, monotone dropout
    out["sites_ar1"] = simulate_longitudinal(80, 5, cov="ar1", sd=1.0, rho=0.5, re_sd=(1.0, 0.0), n_sites=8,
                                             site_sd=0.8, missing="monotone", missing_rate=0.3, seed=208)
    out["sites_ar1_slope"] = simulate_longitudinal(80, 5, cov="ar1", sd=1.0, rho=0.5, re_sd=(1.0, 0.3),
                                                   re_corr=0.2, n_sites=8, site_sd=0.8, missing="monotone",
                                                   missing_rate=0.3, seed=210)
    # thousands of levels: 2,000 students x 300 lecturers
    big = simulate_crossed(2000, 300, fraction=0.02, sd_subject=(0.4, 0.0), sd_item=(0.5, 0.0), sigma=1.1,
                           seed=209)
    out["crossed_big"] = big.rename(columns={"subject": "s", "item": "d"})
    return out


def main():
    os.makedirs(DATA, exist_ok=True)
    for name, df in datasets().items():
        df.to_csv(os.path.join(DATA, f"{name}.csv"), index=False, float_format="%.17g")
        print(f"{name}: {df.shape}")


if __name__ == "__main__":
    main()
