import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm  # noqa: F401  (enables float64)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_file(*parts) -> Path:
    """A file from ../shared (data from other projects, never committed here).

    Missing: the test fails under CI=true (CI always has shared/), and is skipped elsewhere."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"required shared file {path} is missing")
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="session")
def fev_data():
    df = pd.read_csv(shared_file("data", "fev_data.csv"))
    # R factor levels used by SAS and mmrm (SEX: Male first)
    df["SEX"] = pd.Categorical(df["SEX"], categories=["Male", "Female"])
    df["RACE"] = pd.Categorical(df["RACE"], categories=["Asian", "Black or African American", "White"])
    return df


@pytest.fixture(scope="session")
def sas_ref():
    import json

    return json.loads(shared_file("reference", "fev_sas.json").read_text())


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    A full run compiles several hundred XLA programs; kept all in one process, XLA's CPU
    compiler was seen to crash (segfault) late in the run.  Releasing them per module keeps
    the process small; programs shared within a module are still reused."""
    yield
    import jax

    jax.clear_caches()


@pytest.fixture
def compiled():
    """The names of the functions XLA compiles while the test runs (``jax_log_compiles``)."""
    import logging
    import re

    import jax

    names = []

    class _Handler(logging.Handler):
        def emit(self, record):
            m = re.match(r"Finished XLA compilation of jit\((.*?)\)", record.getMessage())
            if m:
                names.append(m.group(1))

    handler = _Handler(level=logging.DEBUG)
    logger = logging.getLogger("jax._src.dispatch")
    logger.addHandler(handler)
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        yield names
    finally:
        jax.config.update("jax_log_compiles", previous)
        logger.removeHandler(handler)
