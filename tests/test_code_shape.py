"""The code stays readable: short functions and modules, no reaching into another module's privates,
and one module that knows a run directory's layout.

The limits: a function a reader can hold in their head
(80 lines), a module a reader can follow top to bottom (600 lines), private names private (a
``_name`` imported elsewhere is an API nobody declared), and the run-directory layout spelled in
``engine/rundir.py`` only (spelled in several modules, a rename in one breaks the others silently).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.test_imports import MODULES

MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600
SOURCES = {name: path for name, path in MODULES.items() if path.suffix == ".py"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_no_function_is_longer_than_80_lines() -> None:
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in SOURCES.values()
        for node in ast.walk(_tree(path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_no_module_is_longer_than_600_lines() -> None:
    long = [
        f"{path} ({n} lines)"
        for path in SOURCES.values()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, "modules over 600 lines:\n" + "\n".join(long)


def test_no_module_imports_another_modules_private_names() -> None:
    found = [
        f"{path}:{node.lineno} imports {alias.name} from {node.module}"
        for path in SOURCES.values()
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not found, "\n".join(found)


# the names of a run directory's parts, as string literals
_LAYOUT = re.compile(
    r"^(checkpoints|best\.pt|last\.pt|best\.keras|last\.keras|history\.csv|metrics\.json|cv_\w+\.(json|md))$"
)
_LAYOUT_OWNER = "resnexus.engine.rundir"
_LAYOUT_READERS = ("resnexus.engine", "resnexus.serve", "resnexus.reports", "resnexus.cli")


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m.startswith(_LAYOUT_READERS) and m != _LAYOUT_OWNER))
def test_only_rundir_spells_the_run_directory_layout(module: str) -> None:
    tree = _tree(SOURCES[module])
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    spelled = [
        f"line {node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and _LAYOUT.match(node.value)
    ]
    assert not spelled, f"{module} spells the run-directory layout (use RunDir): " + ", ".join(spelled)
