"""The import graph of ``vigil`` has no cycles, and the models do not reach up into the settings.

A cycle works only while every module in it happens to be imported in the right order; the first
edit that touches a name at import time breaks start-up with a half-initialised module. The graph
counts every ``import`` in a file (top level, under ``if TYPE_CHECKING:``, inside functions), so a
cycle hidden behind a lazy import is still reported: it still couples the modules both ways.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vigil"


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module under ``vigil/`` by its ``vigil.…`` name, following the linked folders."""
    modules: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        parts = Path(folder).relative_to(root.parent).parts
        for name in files:
            if not name.endswith(".py"):
                continue
            stem = name.removesuffix(".py")
            modules[".".join(parts if stem == "__init__" else (*parts, stem))] = Path(folder, name)
    return modules


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Dotted names one module imports; each ``from a import b`` yields ``a.b`` (b may be a
    module or a name in ``a``; :func:`import_graph` decides)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def import_graph() -> dict[str, set[str]]:
    """Module → the ``vigil`` modules it imports (``a.b.c`` if that is a module, else ``a.b``)."""
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target in imported_names(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("vigil.") and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_scan_sees_the_linked_folders_and_every_kind_of_import() -> None:
    """Guards the test itself: a scan that missed the links or lazy imports would pass vacuously."""
    graph = import_graph()
    assert {"vigil.models.forecaster", "vigil.stream.topology", "vigil.alerting"} <= set(graph)
    assert "vigil.models.config" in graph["vigil.settings"]
    assert "vigil.settings" in graph["vigil.models.cli"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_there_are_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    report = "\n".join(
        " ↔ ".join(component)
        + "\n    "
        + "\n    ".join(f"{m} → {sorted(graph[m] & set(component))}" for m in component)
        for component in found
    )
    assert not found, f"import cycles:\n{report}"


def test_the_models_do_not_import_the_settings() -> None:
    """The maths owns its parameter schemas (vigil.models.config); only the models' CLI, an
    edge like every CLI, reads the environment."""
    graph = import_graph()
    offenders = sorted(
        name
        for name, targets in graph.items()
        if name.startswith("vigil.models.") and name != "vigil.models.cli"
        if "vigil.settings" in targets
    )
    assert not offenders, f"{offenders} import vigil.settings"
