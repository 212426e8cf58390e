"""Every module imports on its own, the import graph has no cycle, and the layers point one way.

An import cycle works or fails depending on which module happens to be imported first, so a test
that imports the package once proves little. Here each module is imported first, in a fresh
interpreter with no resnexus module loaded (third-party packages stay loaded between modules:
they cannot take part in a cycle of ours, and re-importing torch for each would cost two minutes);
and the import graph is read statically from the source (imports inside functions included, so a
cycle cannot hide behind a late import) and checked for cycles and for layering:

    files  <-  data, models  <-  keras, reports  <-  engine  <-  cli, serve      (each layer imports only layers to its left)

precisely: data/, models/ and files.py import nothing from engine/, reports/, serve/, keras/ or cli; models/
imports nothing from data/; keras/ (the Keras twins of the models) imports nothing from data/, reports/,
engine/, serve/ or cli; reports/ imports nothing from engine/, keras/, serve/ or cli; engine/ nothing
from cli or serve/; serve/ nothing from cli; and only cli imports serve/ (not even the package's
``__init__``: serve/ needs the optional FastAPI stack).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pkgutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "resnexus"
NOT_IMPORTABLE = {f"{PACKAGE}.__main__"}  # runs the CLI when imported: that is its job

# (modules under this prefix, may not import modules under these prefixes)
_ABOVE_MODELS = ("resnexus.engine", "resnexus.reports", "resnexus.cli", "resnexus.serve", "resnexus.keras")
LAYER_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("resnexus.files", _ABOVE_MODELS),
    ("resnexus.data", _ABOVE_MODELS),
    ("resnexus.models", (*_ABOVE_MODELS, "resnexus.data")),
    ("resnexus.keras", ("resnexus.engine", "resnexus.reports", "resnexus.cli", "resnexus.serve", "resnexus.data")),
    ("resnexus.reports", ("resnexus.engine", "resnexus.cli", "resnexus.serve", "resnexus.keras")),
    ("resnexus.engine", ("resnexus.cli", "resnexus.serve")),
    ("resnexus.serve", ("resnexus.cli",)),
]


# -- finding the modules -----------------------------------------------------------------------
def package_dir() -> Path:
    """The package's source folder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations, f"{PACKAGE} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def find_modules(folder: Path, name: str = PACKAGE) -> dict[str, Path]:
    """Module name -> source file for the package and everything below it (pkgutil, no imports)."""
    modules = {name: folder / "__init__.py"}
    for info in pkgutil.iter_modules([str(folder)]):
        child = f"{name}.{info.name}"
        if info.ispkg:
            modules.update(find_modules(folder / info.name, child))
        else:
            modules[child] = folder / f"{info.name}.py"
    return modules


MODULES = find_modules(package_dir())


# -- reading the import graph ------------------------------------------------------------------
@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line``; ``how`` says what the import statement was."""

    source: str
    target: str
    line: int
    how: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}  (line {self.line}: {self.how})"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _ancestors(module: str) -> set[str]:
    """The packages Python has already started importing when ``module``'s code runs."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


class ImportCollector(ast.NodeVisitor):
    """Every import of a package module in one file, wherever it is written.

    ``import a.b.c`` and ``from a.b import c`` also run ``a/__init__`` and ``a/b/__init__`` first,
    so those packages are edges too, except the importing module's own parent packages (Python
    always starts those before the module itself). ``from pkg import name`` is an edge to the
    module ``pkg.name`` when there is one, else to ``pkg``. ``importlib.import_module`` and
    ``__import__`` with a literal name are edges; with an f-string, to every module the
    constant prefix can name. ``if TYPE_CHECKING:`` blocks are skipped: they never run.
    """

    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.edges: list[Edge] = []
        self._scope: list[str] = []

    # where we are, for the messages
    def _where(self) -> str:
        return f" in {self._scope[-1]}()" if self._scope else ""

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    # the three ways to import
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._ours(alias.name):
                self._add(self._known_prefix(alias.name), node.lineno, f"import {alias.name}")
                self._add_parents(alias.name, node.lineno, f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node.module or "", node.level)
        if base is None or not self._ours(base):
            return
        text = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
        names_from_base = False
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in self.known:
                self._add(submodule, node.lineno, text)
            else:
                names_from_base = True
        if names_from_base:
            self._add(self._known_prefix(base), node.lineno, text)
        self._add_parents(base, node.lineno, text, include_self=not names_from_base)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            for target in self._dynamic_targets(node.args[0]):
                self._add(target, node.lineno, f"{name}({ast.unparse(node.args[0])})")
        self.generic_visit(node)

    # helpers
    def _ours(self, name: str) -> bool:
        return name == PACKAGE or name.startswith(PACKAGE + ".")

    def _resolve(self, name: str, level: int) -> str | None:
        """The absolute module name of a (possibly relative) import."""
        if level == 0:
            return name
        parts = self.package.split(".")
        if level - 1 >= len(parts):
            return None
        base = ".".join(parts[: len(parts) - (level - 1)])
        return f"{base}.{name}" if name else base

    def _known_prefix(self, name: str) -> str:
        while name not in self.known and "." in name:
            name = name.rpartition(".")[0]
        return name

    def _dynamic_targets(self, arg: ast.expr) -> list[str]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            name = arg.value
            if name.startswith("."):
                level = len(name) - len(name.lstrip("."))
                name = self._resolve(name.lstrip("."), level) or ""
            return [self._known_prefix(name)] if self._ours(name) else []
        if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
            prefix = str(arg.values[0].value)
            if prefix.startswith("."):
                level = len(prefix) - len(prefix.lstrip("."))
                prefix = (self._resolve("", level) or "") + "." + prefix.lstrip(".")
            if self._ours(prefix):
                return sorted(m for m in self.known if m.startswith(prefix) and m != prefix.rstrip("."))
        return []

    def _add_parents(self, name: str, line: int, text: str, include_self: bool = False) -> None:
        """The packages an import runs before its target, bar the importer's own parents."""
        parts = name.split(".")
        last = len(parts) + 1 if include_self else len(parts)
        for i in range(1, last):
            parent = ".".join(parts[:i])
            if parent not in _ancestors(self.module) and parent in self.known:
                self._add(parent, line, f"{text} (runs package {parent} first)")

    def _add(self, target: str, line: int, how: str) -> None:
        if target != self.module and target in self.known:
            self.edges.append(Edge(self.module, target, line, how + self._where()))


def import_edges(module: str, source: str, known: set[str], is_package: bool = False) -> list[Edge]:
    """The imports of package modules that ``source`` (the text of ``module``) makes."""
    collector = ImportCollector(module, is_package, known)
    collector.visit(ast.parse(source))
    return collector.edges


def import_graph(modules: dict[str, Path]) -> dict[str, list[Edge]]:
    known = set(modules)
    return {
        name: import_edges(name, path.read_text(encoding="utf-8"), known, path.name == "__init__.py")
        for name, path in sorted(modules.items())
    }


def find_cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One shortest cycle through each module that lies on a cycle (duplicates dropped)."""
    cycles: list[list[Edge]] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for start in sorted(graph):
        # breadth-first from start's successors back to start: the shortest cycle through start
        came_from: dict[str, Edge] = {}
        queue = deque(edge for edge in graph[start])
        for edge in graph[start]:
            came_from.setdefault(edge.target, edge)
        found = None
        while queue and found is None:
            edge = queue.popleft()
            for nxt in graph.get(edge.target, []):
                if nxt.target == start:
                    found = nxt
                    break
                if nxt.target not in came_from:
                    came_from[nxt.target] = nxt
                    queue.append(nxt)
        if found is None:
            continue
        path = [found]
        while path[-1].source != start:
            path.append(came_from[path[-1].source])
        path.reverse()
        key = frozenset((e.source, e.target) for e in path)
        if key not in seen:
            seen.add(key)
            cycles.append(path)
    return cycles


def layering_violations(graph: dict[str, list[Edge]]) -> list[str]:
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    bad = []
    for edges in graph.values():
        for edge in edges:
            for layer, forbidden in LAYER_RULES:
                if under(edge.source, layer) and any(under(edge.target, f) for f in forbidden):
                    bad.append(f"{edge}  [{layer} may not import {', '.join(forbidden)}]")
    return sorted(set(bad))


# -- the tests ---------------------------------------------------------------------------------
def _quiet_env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


_FRESH_IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "resnexus" or m.startswith("resnexus.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc(limit=-3))
print("\\n\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first_with_the_package_unloaded() -> None:
    """Quick form: one fresh interpreter imports each module after forgetting every resnexus module.

    Third-party packages (torch, torchvision) stay loaded between modules, which changes nothing
    for an import cycle between our own modules and saves a minute of start-ups.
    """
    modules = sorted(set(MODULES) - NOT_IMPORTABLE)
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_IMPORT_EACH, *modules],
        capture_output=True,
        text=True,
        timeout=600,
        env=_quiet_env(),
    )
    assert result.returncode == 0, f"modules that fail when imported first:\n{result.stdout}\n{result.stderr[-3000:]}"


def test_the_import_graph_has_no_cycle() -> None:
    cycles = find_cycles(import_graph(MODULES))
    message = "\n\n".join("cycle:\n  " + "\n  ".join(map(str, cycle)) for cycle in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s):\n\n{message}"


def test_layers_import_only_from_lower_layers() -> None:
    violations = layering_violations(import_graph(MODULES))
    assert not violations, "imports against the layering:\n  " + "\n  ".join(violations)


def test_only_the_cli_imports_serve() -> None:
    graph = import_graph(MODULES)
    importers = sorted(
        str(edge)
        for edges in graph.values()
        for edge in edges
        if (edge.target == "resnexus.serve" or edge.target.startswith("resnexus.serve."))
        and not (_in_package(edge.source, "resnexus.cli") or edge.source.startswith("resnexus.serve"))
    )
    assert not importers, "only resnexus.cli may import resnexus.serve:\n  " + "\n  ".join(importers)
    cli_edges = [edge for source, edges in graph.items() if _in_package(source, "resnexus.cli") for edge in edges]
    assert any(edge.target.startswith("resnexus.serve") for edge in cli_edges)


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_module_walk_finds_the_package() -> None:
    """Guards the tests above against passing vacuously on an empty walk."""
    for name in ("resnexus", "resnexus.models", "resnexus.models.registry", "resnexus.engine", "resnexus.cli"):
        assert name in MODULES
    assert all(path.is_file() for path in MODULES.values())


# -- the graph reader itself, on made-up sources -------------------------------------------------
KNOWN = {
    "resnexus",
    "resnexus.models",
    "resnexus.models.registry",
    "resnexus.models.resnet",
    "resnexus.models.base",
    "resnexus.engine",
    "resnexus.engine.fit",
}


def _targets(source: str, module: str = "resnexus.models.registry", is_package: bool = False) -> set[str]:
    return {e.target for e in import_edges(module, source, KNOWN, is_package)}


def test_reader_resolves_relative_imports_and_submodules() -> None:
    assert _targets("from .resnet import ResNet") == {"resnexus.models.resnet"}
    assert _targets("from . import resnet") == {"resnexus.models.resnet"}
    assert _targets("from . import something_in_init") == {"resnexus.models"}
    assert _targets("from .. import create_model") == {"resnexus"}
    assert _targets("from .resnet import X", module="resnexus.models", is_package=True) == {"resnexus.models.resnet"}
    # the other package's __init__ runs first: an edge to it as well
    assert _targets("from ..engine.fit import train") == {"resnexus.engine.fit", "resnexus.engine"}
    assert _targets("import resnexus.engine.fit") == {"resnexus.engine.fit", "resnexus.engine"}
    assert _targets("import torch\nfrom torch import nn") == set()


def test_reader_sees_imports_inside_functions_and_dynamic_imports() -> None:
    late = "def build():\n    from .resnet import ResNet\n    return ResNet"
    assert _targets(late) == {"resnexus.models.resnet"}
    assert _targets("import importlib\nimportlib.import_module('resnexus.engine.fit')") == {"resnexus.engine.fit"}
    dynamic = "import importlib\nfor m in ('resnet',):\n    importlib.import_module(f'resnexus.models.{m}')"
    assert _targets(dynamic) == {"resnexus.models.resnet", "resnexus.models.base"}  # not itself


def test_reader_skips_type_checking_blocks() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .resnet import ResNet\nelse:\n    pass"
    assert _targets(source) == set()
    assert _targets("import typing\nif typing.TYPE_CHECKING:\n    from ..engine import fit") == set()


def test_cycle_finder_reports_a_cycle_and_accepts_a_tree() -> None:
    cyclic = {
        "a": [Edge("a", "b", 1, "")],
        "b": [Edge("b", "c", 1, "")],
        "c": [Edge("c", "a", 1, ""), Edge("c", "d", 1, "")],
        "d": [],
    }
    (cycle,) = find_cycles(cyclic)
    assert [e.source for e in cycle] == ["a", "b", "c"]
    tree = {"a": [Edge("a", "b", 1, ""), Edge("a", "c", 1, "")], "b": [Edge("b", "c", 1, "")], "c": []}
    assert find_cycles(tree) == []


def test_keras_and_tensorflow_load_only_when_a_keras_feature_is_used() -> None:
    """Keras/TensorFlow are an optional extra and take seconds to import: the PyTorch paths never load them."""
    code = (
        "import sys, resnexus, resnexus.engine, resnexus.cli, resnexus.engine.export, resnexus.engine.checkpoint\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_quiet_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# the package's public names, pinned: adding or removing one is a decision, made here on purpose
PUBLIC_API = [
    "Checkpoint",
    "CompareResult",
    "CrossValResult",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "compare",
    "create_model",
    "cross_validate",
    "evaluate",
    "list_models",
    "model_info",
    "predict",
    "train",
]


def test_the_public_api_is_pinned_and_the_training_half_loads_on_first_use() -> None:
    """``import resnexus`` loads no engine; each public name then resolves to the object its module defines."""
    code = (
        "import sys, resnexus\n"
        "print(sorted(resnexus.__all__)); print('resnexus.engine' in sys.modules)\n"
        "from resnexus.engine.checkpoint import Checkpoint\n"
        "from resnexus.engine.run import TrainResult\n"
        "from resnexus.engine.rundir import RunDir\n"
        "assert all(getattr(resnexus, name) is not None for name in resnexus.__all__)\n"
        "assert (resnexus.Checkpoint, resnexus.TrainResult, resnexus.RunDir) == (Checkpoint, TrainResult, RunDir)\n"
        "import resnexus.engine as engine\n"
        "print(sorted(set(resnexus.__all__) - {'__version__', 'create_model', 'list_models', 'model_info'} "
        "- set(engine.__all__)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_quiet_env())
    assert result.returncode == 0, result.stderr[-2000:]
    names, engine_loaded, not_in_engine = result.stdout.strip().splitlines()
    assert names == str(sorted(PUBLIC_API))
    assert engine_loaded == "False"  # `import resnexus` for models only stays light
    assert not_in_engine == "[]"  # every training name is resnexus.engine's too
