"""The layout is the architecture: the layering contracts hold and no module imports in a cycle.

The contracts live in pyproject.toml (`[tool.importlinter]`, run by `make lint` too). The cycle
check counts every import statement that runs, including those inside functions: an import
deferred for start-up time is still a dependency, and a cycle hidden that way is still a cycle.
Imports under `if TYPE_CHECKING:` never run, so two modules may name each other's types.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

PROJECT = Path(__file__).resolve().parents[2]


def test_layering_contracts_hold() -> None:
    # A child process: import-linter imports the package it checks, from the project's tree.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports;"
         " sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True,"
         " no_logo=True))"],
        cwd=PROJECT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT)}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(
                        child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    sys.path.insert(0, str(PROJECT))
    try:
        graph = grimp.build_graph("stepbuild", cache_dir=None,
                                  exclude_type_checking_imports=True)
    finally:
        sys.path.remove(str(PROJECT))
    assert len(graph.modules) > 70  # the whole package was read
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph) == [["a.x", "a.y"]]
