"""Datasets for tests/test_input_checks.py: numeric visits with a gap (no row at visit 3)."""

from pathlib import Path

import jaxlmm as lmm

HERE = Path(__file__).parent

if __name__ == "__main__":
    d = lmm.simulate_longitudinal(60, 5, cov="ar1", rho=0.6, seed=31)
    d["visit_no"] = d["time"].astype(int) + 1          # 1..5
    d = d[d["visit_no"] != 3].reset_index(drop=True)    # nobody has visit 3
    d[["subject", "arm", "time", "visit_no", "y"]].to_csv(HERE / "gaps.csv", index=False)
