"""JAX's persistent compilation cache: on by default in jaxlmm's directory, switchable by
environment variables and by ``set_compilation_cache``; a second process loads what the first
compiled."""

import os
import subprocess
import sys

import pytest

import jaxlmm as lmm
from jaxlmm.errors import ArgumentError

FIT = (
    "import sys, jaxlmm as lmm, jax\n"
    "r = lmm.fit('CHG ~ ARMCD + BASE + ar1(AVISIT | USUBJID)', lmm.example_trial(60)); r.summary()\n"
    "print(jax.config.jax_compilation_cache_dir); print(repr(round(r.deviance, 8)))\n"
    "print('scipy.stats' in sys.modules)\n"
)


def _run(code, stderr=False, **env):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAXLMM_CACHE", "JAX_COMPILATION_CACHE", "TF_CPP_MIN_LOG_LEVEL"))}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return (out.stdout.split("\n"), out.stderr) if stderr else out.stdout.split("\n")


def test_second_process_loads_from_the_cache(tmp_path):
    d = tmp_path / "xla"
    first = _run(FIT, JAXLMM_CACHE_DIR=str(d))
    assert first[0] == str(d)
    files = set(os.listdir(d))
    assert any(f.startswith("jit__fit_compiled") for f in files), files
    second, err = _run(FIT, stderr=True, JAXLMM_CACHE_DIR=str(d))
    assert second[1] == first[1]  # the same fit from the loaded program
    assert "cpu_aot_loader" not in err and "pjrt_executable" not in err, err[:2000]  # XLA's loader logs hidden
    assert set(os.listdir(d)) == files  # nothing compiled anew
    assert first[2] == "False"  # a fit and its summary do not import scipy.stats (slow to import)


def test_cache_switched_off_or_left_to_the_user(tmp_path):
    assert _run(FIT, JAXLMM_CACHE="0")[0] == "None"
    # imported after JAX: XLA's log level is already fixed, so the cache stays off
    assert _run(FIT.replace("import sys, jaxlmm as lmm, jax", "import sys, jax, jaxlmm as lmm"))[0] == "None"
    mine = tmp_path / "mine"
    assert _run(FIT, JAX_COMPILATION_CACHE_DIR=str(mine))[0] == str(mine)
    assert _run("import jaxlmm\n", XDG_CACHE_HOME=str(tmp_path / "xdg")) == [""]
    assert (tmp_path / "xdg" / "jaxlmm" / "xla").is_dir()


def test_set_compilation_cache(tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        assert lmm.set_compilation_cache(False) is None
        assert jax.config.jax_compilation_cache_dir is None
        assert lmm.set_compilation_cache(tmp_path / "c") == tmp_path / "c"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
        with pytest.raises(ArgumentError, match="directory"):
            lmm.set_compilation_cache(3)
    finally:
        lmm.set_compilation_cache(before if before else False)
