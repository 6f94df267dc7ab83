"""Write the dataset of the structured random-effect references (make_reference.R).

``gside``: 60 subjects (two arms) x 4 conditions x 3 replicates (10% of the rows dropped at
random), a covariate ``x``, and per subject 4 random condition effects with AR(1) covariance
(SD 1.2, rho 0.6), residual SD 0.9 (numpy's generator, seed 5).

Run from the repository root: ``python tests/reference/gside/make_data.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    rng = np.random.default_rng(5)
    lag = np.abs(np.subtract.outer(np.arange(4), np.arange(4)))
    L = np.linalg.cholesky(1.2 ** 2 * 0.6 ** lag)
    rows = []
    for s in range(60):
        b = L @ rng.normal(size=4)
        arm = "A" if s % 2 else "B"
        for c in range(4):
            for _ in range(3):
                if rng.random() < 0.1:
                    continue
                x = rng.normal()
                rows.append(dict(subject=f"s{s:02d}", arm=arm, cond=f"c{c + 1}", x=round(x, 6),
                                 y=round(5 + 0.5 * c + 0.3 * x + (arm == "B") * 0.4 + b[c] + rng.normal() * 0.9, 6)))
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    pd.DataFrame(rows).to_csv(os.path.join(HERE, "data", "gside.csv"), index=False)


if __name__ == "__main__":
    main()
