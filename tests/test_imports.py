"""Every import of a jailkit name resolves, the lazy ones inside functions included: commands
import what they need only when they run, so a stale name would otherwise surface as a traceback
in front of a user."""

import ast
import importlib
from pathlib import Path

from conftest import REPO


def imported_names():
    for path in sorted((REPO / "jailkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jailkit"):
                for alias in node.names:
                    yield path.relative_to(REPO), node.module, alias.name


def resolves(module: str, name: str) -> bool:
    if hasattr(importlib.import_module(module), name):
        return True
    try:  # `from jailkit.build import manifest`: a submodule
        importlib.import_module(f"{module}.{name}")
    except ImportError:
        return False
    return True


def test_every_jailkit_import_resolves():
    names = list(imported_names())
    assert len(names) > 100  # the walk found the package's imports
    unresolved = [f"{path}: from {module} import {name}" for path, module, name in names
                  if not resolves(module, name)]
    assert not unresolved, unresolved


def test_no_module_is_left_at_a_path_the_layout_moved():
    flat = {p.stem for p in Path(REPO / "jailkit").glob("*.py")}
    assert flat <= {"__init__", "__main__", "entry", "errors", "vocabulary"}, flat
