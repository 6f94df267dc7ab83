"""One JAX CPU device per core at import (jaxlmm/cores.py), switchable, and never against a
count the user chose."""

import os
import subprocess
import sys

from jaxlmm.cores import MAX_DEVICES, default_count

COUNT = "import jaxlmm, jax; print(len(jax.devices('cpu')))"


def _devices(code=COUNT, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "JAXLMM_CPU_DEVICES")}
    e.update(env, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout.strip().split("\n")[-1], out.stderr


def test_default_is_one_device_per_usable_core():
    rc, n, err = _devices()
    assert rc == 0, err[-2000:]
    assert int(n) == default_count() == max(1, min(len(os.sched_getaffinity(0)), MAX_DEVICES))


def test_environment_variable_chooses_or_leaves_alone():
    assert _devices(JAXLMM_CPU_DEVICES="3")[1] == "3"
    assert _devices(JAXLMM_CPU_DEVICES="1")[1] == "1"
    assert _devices(JAXLMM_CPU_DEVICES="off")[1] == "1"  # JAX's own default
    rc, _, err = _devices(JAXLMM_CPU_DEVICES="many")
    assert rc != 0 and "JAXLMM_CPU_DEVICES must be a positive number" in err


def test_a_count_chosen_for_jax_wins():
    assert _devices(XLA_FLAGS="--xla_force_host_platform_device_count=3")[1] == "3"
    assert _devices(JAX_NUM_CPU_DEVICES="3")[1] == "3"
    # a child process inherits the parent's choice; one given its own XLA_FLAGS keeps its own
    code = ("import os, subprocess, sys, jaxlmm, jax; print(len(jax.devices('cpu')));"
            "e = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=3');"
            "print(subprocess.run([sys.executable, '-c', 'import jax; print(len(jax.devices()))'], env=e,"
            " capture_output=True, text=True).stdout.strip())")
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "JAXLMM_CPU_DEVICES")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(e, JAX_PLATFORMS="cpu", JAXLMM_CPU_DEVICES="2"),
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["2", "3"], out.stderr[-2000:]


def test_imported_after_jax():
    # JAX imported but not started: jaxlmm still sets the count; JAX already computing: left alone
    assert _devices("import jax, jaxlmm; print(len(jax.devices()))", JAXLMM_CPU_DEVICES="2")[1] == "2"
    code = "import jax; jax.numpy.ones(2); import jaxlmm; print(len(jax.devices()))"
    assert _devices(code, JAXLMM_CPU_DEVICES="2")[1] == "1"
