"""Every notebook in notebooks/ runs top to bottom (reduced sizes: JAXLMM_NOTEBOOK_SMALL=1).

The committed notebooks carry the outputs of a full-size run (``python notebooks/run.py``);
here each is executed in a fresh kernel and not saved.
"""

import importlib.util
from pathlib import Path

import nbformat
import pytest

HERE = Path(__file__).resolve().parents[1] / "notebooks"
spec = importlib.util.spec_from_file_location("nbrun", HERE / "run.py")
nbrun = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nbrun)

NOTEBOOKS = nbrun.notebooks()


def test_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) >= 4, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    nb, _ = nbrun.execute(path, small=True, save=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # the committed version has its outputs (plots included) from a full run
    committed = nbformat.read(path, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name}: run `python notebooks/run.py` and commit"
