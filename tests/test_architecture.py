"""The package's modules form layers that import one way (docs/design.md), with no cycles and no
private names taken from another module; results read the public fit record."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "jaxlmm"

#: module -> layer; a module may import only from its own layer or below
LAYERS = {
    "errors": 0,
    "cache": 0,
    "cores": 0,
    "formula": 1, "datasets": 1, "checks": 1, "distributions": 1,
    "structure": 2, "pergroup": 2, "varfunc": 2, "gside": 2, "kronecker": 2, "serial": 2, "spatial": 2, "covariance": 2, "visits": 2, "terms": 2, "spec": 2, "design": 2,
    "linalg": 3, "pls": 3, "patterns": 3, "likelihood": 3, "simulate": 3,
    "optimize": 4, "distributed": 4,
    "fitting": 5, "batch": 5,
    "inference": 6, "profile": 6, "bootstrap": 6, "compare": 6, "differentiate": 6, "ranef": 6, "prediction": 6,
    "results": 7,
    "model": 8,
    "selection": 9, "power": 9,
    "__init__": 10,
    "cli": 11,
}
NAMEDTUPLE_API = {"_replace", "_fields", "_asdict", "_make", "_field_defaults"}


def _modules():
    return sorted(p.stem for p in PKG.glob("*.py"))


def _imports(name):
    """(imported module, names, line) of every import in a module, including inside functions."""
    tree = ast.parse((PKG / f"{name}.py").read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                mod = node.module or "__init__"
            elif node.level == 0 and node.module and (node.module == "jaxlmm" or node.module.startswith("jaxlmm.")):
                mod = node.module.split(".", 1)[1] if "." in node.module else "__init__"
            else:
                continue
            names = [a.name for a in node.names]
            if node.module is None:  # from . import x
                for a in names:
                    out.append((a, [], node.lineno))
            else:
                out.append((mod.split(".")[0], names, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "jaxlmm":
                    out.append(("__init__", [], node.lineno))
                elif a.name.startswith("jaxlmm."):
                    out.append((a.name.split(".")[1], [], node.lineno))
    return out


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYERS), "add new modules to LAYERS (and to docs/design.md)"


@pytest.mark.parametrize("name", _modules())
def test_imports_go_down_the_layers(name):
    for mod, _, line in _imports(name):
        assert mod in LAYERS, f"{name}.py:{line} imports unknown module {mod}"
        assert LAYERS[mod] <= LAYERS[name], (
            f"{name}.py:{line} imports {mod} (layer {LAYERS[mod]}) from layer {LAYERS[name]}: imports must go down")


@pytest.mark.parametrize("name", _modules())
def test_no_private_names_from_other_modules(name):
    for mod, names, line in _imports(name):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{name}.py:{line} imports private names {private} from {mod}"
    tree = ast.parse((PKG / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            assert node.attr in NAMEDTUPLE_API, (
                f"{name}.py:{node.lineno} reads the private attribute .{node.attr} of another object")


def test_no_import_cycles():
    graph = {m: {mod for mod, _, _ in _imports(m) if mod != m} for m in _modules()}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in graph[m]:
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [m, n]))
            if n not in state:
                visit(n, path + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_results_are_not_modified_from_outside():
    """No module assigns attributes to a result object (LMMResult is built once, from a record)."""
    for name in _modules():
        tree = ast.parse((PKG / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                        assert t.value.id not in ("res", "result", "out", "fit", "small", "big"), (
                            f"{name}.py:{node.lineno} sets {t.value.id}.{t.attr}")
