"""Every Python block of the README runs as written, in order, in one namespace (issue 11)."""

import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_blocks():
    assert len(blocks()) >= 5


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, code in enumerate(blocks()):
            try:
                exec(compile(code, f"README.md block {i + 1}", "exec"), ns)
            except Exception as e:  # name the block that fails
                raise AssertionError(f"README block {i + 1} fails: {type(e).__name__}: {e}\n{code}") from e
