"""Write the reference datasets used by tests/reference/make_reference.R.

Every dataset is made by ``jaxlmm.datasets.simulate_longitudinal`` with a fixed seed, so the
CSVs are reproducible bit for bit.  Rows with a missing response are kept (``y`` empty).

Run from the repository root:

    python tests/reference/make_data.py
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))

from jaxlmm.datasets import simulate_longitudinal  # noqa: E402

DATA = os.path.join(HERE, "data")


def _lag(T: int) -> np.ndarray:
    return np.abs(np.subtract.outer(np.arange(T), np.arange(T)))


# A non-trivial (not CS, not AR1) 5 x 5 correlation matrix for "balanced" / "factor3".
CORR5 = np.array(
    [
        [1.00, 0.60, 0.45, 0.30, 0.20],
        [0.60, 1.00, 0.70, 0.50, 0.35],
        [0.45, 0.70, 1.00, 0.65, 0.40],
        [0.30, 0.50, 0.65, 1.00, 0.55],
        [0.20, 0.35, 0.40, 0.55, 1.00],
    ]
)
CORR4 = np.array(
    [
        [1.00, 0.50, 0.30, 0.15],
        [0.50, 1.00, 0.60, 0.40],
        [0.30, 0.60, 1.00, 0.55],
        [0.15, 0.40, 0.55, 1.00],
    ]
)
# Smooth 8 x 8 correlation: AR(1)-like decay plus a compound-symmetry floor.
CORR8 = 0.75 * 0.7 ** _lag(8) + 0.25

DATASETS = {
    "balanced": dict(n_subjects=60, n_visits=5, seed=101, cov="un", corr=CORR5),
    "monotone": dict(
        n_subjects=80, n_visits=5, seed=102, cov="arh1", rho=0.6,
        missing="monotone", missing_rate=0.5,
    ),
    "intermittent": dict(
        n_subjects=80, n_visits=5, seed=103, cov="csh", rho=0.4,
        missing="intermittent", missing_rate=0.25,
    ),
    "unequal": dict(n_subjects=100, n_visits=6, seed=104, cov="ar1", rho=0.5, missing="unequal"),
    "cs_negative": dict(n_subjects=80, n_visits=4, seed=105, cov="cs", rho=-0.2),
    "ar1_strong": dict(
        n_subjects=80, n_visits=6, seed=106, cov="ar1", rho=0.9,
        missing="intermittent", missing_rate=0.15,
    ),
    "factor3": dict(n_subjects=90, n_visits=4, seed=107, n_arms=3, cov="un", corr=CORR4),
    "un8": dict(
        n_subjects=150, n_visits=8, seed=108, cov="un", corr=CORR8,
        missing="monotone", missing_rate=0.3,
    ),
    "re_slope": dict(
        n_subjects=60, n_visits=6, seed=109, cov="id", sd=1.0, re_sd=(2.0, 0.7), re_corr=0.3,
        missing="intermittent", missing_rate=0.1,
    ),
    "re_boundary": dict(n_subjects=60, n_visits=6, seed=120, cov="id", sd=1.0, re_sd=(1.5, 0.0)),
    "re_ar1": dict(
        n_subjects=80, n_visits=6, seed=111, cov="ar1", rho=0.5, sd=1.0, re_sd=(1.2, 0.0),
        missing="monotone", missing_rate=0.3,
    ),
}


def main() -> None:
    os.makedirs(DATA, exist_ok=True)
    for name, kw in DATASETS.items():
        df = simulate_longitudinal(**kw)
        path = os.path.join(DATA, f"{name}.csv")
        df.to_csv(path, index=False, float_format="%.10g")
        n_obs = int(df["y"].notna().sum())
        print(f"{name:13s} rows={len(df):5d} observed={n_obs:5d} bytes={os.path.getsize(path)}")


if __name__ == "__main__":
    main()
