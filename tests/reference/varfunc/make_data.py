"""Write the dataset of the variance-function references (make_reference.R).

``varfunc``: ``jaxlmm.datasets.simulate_longitudinal`` (150 subjects, 5 visits, AR(1) residuals
with rho 0.5, a random intercept of SD 0.8, intermittent missing visits); each row's residual is
then rescaled by a variance function of known form: SD ratio 1.6 for ``sex == "M"``, times
``dose^0.4`` with ``dose`` uniform in [0.5, 4] per row, and a continuous ``time`` jittered off the
visit grid (``ctime``, for a continuous-time correlation).

Run from the repository root: ``python tests/reference/varfunc/make_data.py``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..")))

from jaxlmm.datasets import simulate_longitudinal  # noqa: E402


def main():
    df = simulate_longitudinal(150, 5, seed=311, cov="ar1", rho=0.5, re_sd=(0.8, 0.0), missing="intermittent",
                               missing_rate=0.15)
    rng = np.random.default_rng(312)
    df["dose"] = np.round(rng.uniform(0.5, 4.0, len(df)), 3)
    df["ctime"] = np.round(df["time"] + rng.uniform(-0.3, 0.3, len(df)), 2)
    scale = np.where(df["sex"] == "M", 1.6, 1.0) * df["dose"] ** 0.4
    mean = df.groupby("visit")["y"].transform("mean")
    df["y"] = np.round(mean + (df["y"] - mean) * scale, 5)
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    df.to_csv(os.path.join(HERE, "data", "varfunc.csv"), index=False)


if __name__ == "__main__":
    main()
