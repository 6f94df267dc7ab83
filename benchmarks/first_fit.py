"""Time to the first result: whole Python processes that import jaxlmm, fit one model and print
its summary, as a user does at the start of a session.

For each model, three processes in a row: with the compilation cache off (``JAXLMM_CACHE=0``),
with an empty cache directory (cold: compiles and writes), and again with that directory
(warm: loads the compiled programs).  Each time is the median of ``--repeats`` such triples;
it includes Python, NumPy, pandas and JAX start-up, measured by the parent around the
``subprocess.run``.  The import alone (``python -c "import jaxlmm, jax.numpy"``) is shown apart.

Usage::

    python benchmarks/first_fit.py              # example_trial AR(1), a sleepstudy-like (Days | Subject)
    python benchmarks/first_fit.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

SCRIPTS = {
    "example_trial ar1": (
        "import jaxlmm as lmm\n"
        "print(lmm.fit('CHG ~ ARMCD * AVISIT + BASE + ar1(AVISIT | USUBJID)', lmm.example_trial()).summary())\n"
    ),
    "example_trial un + coef_table": (
        "import jaxlmm as lmm\n"
        "r = lmm.fit('CHG ~ ARMCD * AVISIT + BASE + un(AVISIT | USUBJID)', lmm.example_trial())\n"
        "print(r.summary()); print(r.coef_table)\n"
    ),
    "sleepstudy-like (Days | Subject)": (
        "import numpy as np, pandas as pd, jaxlmm as lmm\n"
        "rng = np.random.default_rng(1); s = np.repeat(np.arange(18), 10); d = np.tile(np.arange(10), 18)\n"
        "y = 251 + 10.5 * d + rng.normal(0, 25, 18)[s] + rng.normal(0, 6, 18)[s] * d + rng.normal(0, 25, 180)\n"
        "df = pd.DataFrame({'Reaction': y, 'Days': d, 'Subject': [f'S{i}' for i in s]})\n"
        "print(lmm.fit('Reaction ~ Days + (Days | Subject)', df).summary())\n"
    ),
}
IMPORT = "import jaxlmm, jax.numpy as jnp; jnp.zeros(1).block_until_ready()\n"


def run(code: str, env: dict) -> float:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f}; python {platform.python_version()}")
    base = dict(os.environ)
    base.pop("JAXLMM_CACHE", None)
    rows = []
    off_env = dict(base, JAXLMM_CACHE="0")
    imp = statistics.median(run(IMPORT, off_env) for _ in range(args.repeats))
    for name, code in SCRIPTS.items():
        off, cold, warm = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                env = dict(base, JAXLMM_CACHE_DIR=d)
                off.append(run(code, off_env))
                cold.append(run(code, env))
                warm.append(run(code, env))
        rows.append((name, statistics.median(off), statistics.median(cold), statistics.median(warm)))
        print(f"  [{name}: off {rows[-1][1]:.2f} s, cold {rows[-1][2]:.2f} s, warm {rows[-1][3]:.2f} s]", flush=True)
    print()
    print(f"import jaxlmm + JAX start-up alone: {imp:.2f} s")
    print()
    print("| first fit + summary (whole process) | cache off s | cold cache s | warm cache s |")
    print("|---|---|---|---|")
    for name, off, cold, warm in rows:
        print(f"| {name} | {off:.2f} | {cold:.2f} | {warm:.2f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
