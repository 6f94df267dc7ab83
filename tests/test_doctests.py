"""Run the Examples sections of the package's docstrings (against the installed package)."""

import doctest
import importlib
import pkgutil

import pytest

import jaxlmm

MODULES = [m.name for m in pkgutil.iter_modules(jaxlmm.__path__, "jaxlmm.") if m.name != "jaxlmm.cli"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
