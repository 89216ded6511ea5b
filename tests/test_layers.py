"""The package's architecture holds: one-way layers with no import circles, no built-in plugin names in the
core, and the 0.1 module paths still importable for third-party code."""
from __future__ import annotations

import ast
import importlib
import re
import warnings
from pathlib import Path

import pytest

import metabench
from metabench._legacy import MOVED

PKG = Path(metabench.__file__).resolve().parent
LAYERS = {"": 0, "toolkit": 1, "engine": 2, "execution": 3, "report": 4, "checks": 4, "commands": 5}


def _modules() -> dict[str, Path]:
    return {".".join(("metabench", *p.relative_to(PKG).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in PKG.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The metabench modules ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n for n in names if n in modules and n != "metabench"}
    return out


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    group = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""
    return LAYERS[group], group


def test_every_module_imports_only_its_own_layer_or_those_below():
    modules = _modules()
    assert all(_layer(m)[1] in LAYERS for m in modules)
    upward = []
    for mod, path in modules.items():
        (level, group) = _layer(mod)
        for dep in _imports(path, modules):
            dep_level, dep_group = _layer(dep)
            if dep_level > level or (dep_level == level and dep_group != group):
                upward.append(f"{mod} -> {dep}")
    assert not upward, upward


def test_the_import_graph_has_no_circles():
    modules = _modules()
    graph = {m: _imports(p, modules) for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for dep in graph[m]:
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_core_names_no_built_in_plugin():
    """Plugins declare what the core needs to know (smoke partners, augmentation profiles, task-making);
    the core never names them. Docstrings and comments are left out; string literals are checked."""
    from metabench.engine.registry import discover

    names = {p.name for p in discover().all()} | {"metabench_plugins"}
    found = []
    for path in PKG.rglob("*.py"):
        if path.parent.name == "checks" and path.name == "scaffold.py":
            continue  # the scaffold's templates are example plugins of their own
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value))
                if node.value in names or (len(node.value) < 40 and words & names and node.value.strip() in names):
                    found.append(f"{path.relative_to(PKG)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_the_public_api_is_exactly_all():
    for name in metabench.__all__:
        assert hasattr(metabench, name), name
    assert {"Algorithm", "Dataset", "TaskGenerator", "Claim", "hookimpl", "derive_seed"} <= set(metabench.__all__)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_flat_layouts_module_paths_still_import(old):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"metabench.{old}")
    assert module is importlib.import_module(MOVED[old])
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught) \
        or f"metabench.{old}" in __import__("sys").modules
