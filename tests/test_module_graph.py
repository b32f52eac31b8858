"""No Hermes module imports itself back, directly or through others, at import time or later.

The graph is read from the source (every ``import`` statement, at module level or inside a
function), so a cycle hidden behind a lazy import counts too: ``worker`` importing ``app`` inside
a function to dodge ``app`` -> ``tasks`` -> ``worker`` was one. Only ``if TYPE_CHECKING:``
blocks are left out: they are for the type checker, never run, and so import nothing (a module
may name the type of what it is handed, ``Settings`` say, whoever imports whom).

And no function or method of theirs is longer than 60 lines (read from the source the same way).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("hermes_worker", "hermes_producer")

# The modules of the worker's start-up, each imported first in a fresh interpreter.
WORKER_MODULES = (
    "hermes_worker.app",
    "hermes_worker.tasks",
    "hermes_worker.runtime",
    "hermes_worker.handling",
    "hermes_worker.publishing",
    "hermes_worker.identity",
    "hermes_worker.guard",
    "hermes_worker.watches",
    "hermes_worker.probe",
    "hermes_worker.worker_cli",
    "hermes_worker.sandbox.backends",
)


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, is a package) for every module of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _targets(name: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        here = name.split(".") if is_package else name.split(".")[:-1]
        base = here[: len(here) - node.level + 1] if node.level else []
        target = ".".join(base + (node.module.split(".") if node.module else []))
        # `from . import contract` names a module; `from .engine import ProfileError` does not.
        wanted = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target for alias in node.names]
    targets = set()
    for module in wanted:
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module and module != name:
            targets.add(module)
    return targets


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those inside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports anywhere in its source."""
    known = modules(root, packages)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in known.items():
        graph[name] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _targets(name, is_package, node, set(known))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions(tmp_path: Path) -> None:
    # Given a package whose modules import each other, one of them only inside a function
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .leaf import VALUE\n")
    (package / "sub" / "leaf.py").write_text("def late():\n    from .. import top\n    return top\nVALUE = 1\n")
    (package / "top.py").write_text("import pkg.sub.leaf\n")
    (package / "other.py").write_text("from .sub import VALUE\n")
    # When the graph is read / Then the late import is an edge, and the cycle through it is found
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub.leaf"] == {"pkg.top"} and graph["pkg.top"] == {"pkg.sub.leaf"}
    assert graph["pkg.other"] == {"pkg.sub"} and graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert cycles(graph) == [["pkg.sub.leaf", "pkg.top"]]


def test_the_graph_leaves_out_what_only_the_type_checker_reads(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\nelse:\n    from . import c\n"
    )
    (package / "b.py").write_text("from . import a\n")
    (package / "c.py").write_text("")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.c"} and cycles(graph) == []


def test_no_import_cycle_among_hermes_modules() -> None:
    graph = import_graph(REPO, PACKAGES)
    assert "hermes_worker.runtime" in graph["hermes_worker.app"]  # the graph is the real one
    assert cycles(graph) == []


def test_the_worker_modules_import_alone_in_a_fresh_interpreter() -> None:
    # Each first, on its own: an import that only works after another module is loaded fails here.
    started = {
        name: subprocess.Popen([sys.executable, "-c", f"import {name}"], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for name in WORKER_MODULES
    }
    failed = {}
    for name, process in started.items():
        _, err = process.communicate(timeout=120)
        if process.returncode != 0:
            failed[name] = err.strip().splitlines()[-1:]
    assert failed == {}


# Issue 12: a function that does not fit on a screen does more than one thing. Counted from the
# `def` line to its last line (decorators not counted, its docstring counted).
MAX_FUNCTION_LINES = 60


def long_functions(root: Path, packages: tuple[str, ...], limit: int) -> list[str]:
    """``module.function (N lines)`` for every function or method of ``packages`` over ``limit`` lines.

    Nested functions and methods of nested classes are named by their path: ``module.Class.method``,
    ``module.outer.inner``.
    """
    found = []
    for name, (path, _is_package) in sorted(modules(root, packages).items()):
        stack: list[tuple[ast.AST, str]] = [(ast.parse(path.read_text(encoding="utf-8")), name)]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    qualified = f"{prefix}.{child.name}"
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if not isinstance(child, ast.ClassDef) and length > limit:
                        found.append(f"{qualified} ({length} lines)")
                    stack.append((child, qualified))
                else:
                    stack.append((child, prefix))  # a def inside an `if` or `try` block still counts
    return sorted(found)


def test_the_length_rule_counts_from_def_to_the_last_line_of_every_function(tmp_path: Path) -> None:
    # Given a package with a decorated function, a method, a nested function and one inside an `if`
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(
        textwrap.dedent(
            """\
            @decorator
            @another
            def short():
                \"\"\"A docstring counts.\"\"\"
                x = 1
                return x
            class Thing:
                def method(self):
                    x = 1
                    y = 2
                    return x + y
            def outer():
                def inner():
                    x = 1
                    y = 2
                    return x + y
                return inner
            if True:
                def hidden():
                    x = 1
                    y = 2
                    return x + y
            """
        )
    )
    # When functions over 3 lines are looked for / Then each is named by its path, with its length
    assert long_functions(tmp_path, ("pkg",), 3) == [
        "pkg.mod.Thing.method (4 lines)",
        "pkg.mod.hidden (4 lines)",
        "pkg.mod.outer (6 lines)",
        "pkg.mod.outer.inner (4 lines)",
        "pkg.mod.short (4 lines)",  # its two decorator lines are not counted
    ]
    assert long_functions(tmp_path, ("pkg",), 6) == []


def test_no_function_is_longer_than_sixty_lines() -> None:
    too_long = long_functions(REPO, PACKAGES, MAX_FUNCTION_LINES)
    assert too_long == [], f"over {MAX_FUNCTION_LINES} lines, split into helpers:\n" + "\n".join(too_long)
