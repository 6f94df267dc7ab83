"""Execute the notebooks top to bottom.

    python notebooks/run.py                  # full size, outputs (plots) written back in place
    python notebooks/run.py --small 01 03    # the reduced version the test suite runs, not saved

The kernel sees this checkout first on its path, so the notebooks run against the code beside
them whether or not jaxlmm is installed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def notebooks(selected=()):
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if selected:
        paths = [p for p in paths if any(p.name.startswith(s) for s in selected)]
    return paths


def execute(path: Path, small: bool, save: bool, timeout: int = 900):
    """Run one notebook in a fresh kernel; returns (notebook, seconds)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("JAXLMM_NOTEBOOK_SMALL", "PYTHONPATH", "MPLBACKEND")}
    os.environ["JAXLMM_NOTEBOOK_SMALL"] = "1" if small else "0"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + ([env_before["PYTHONPATH"]] if env_before["PYTHONPATH"] else []))
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    t0 = time.perf_counter()
    try:
        # the kernel's own stderr (a start-up notice about its local TCP transport) is not
        # shown; errors in cells come back through the notebook's outputs
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute(stderr=subprocess.DEVNULL)
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if save:
        nbformat.write(nb, path)
    return nb, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    ap.add_argument("--small", action="store_true", help="reduced sizes; outputs are not saved")
    args = ap.parse_args(argv)
    for p in notebooks(args.names):
        _, sec = execute(p, small=args.small, save=not args.small)
        print(f"{p.name}: {sec:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
