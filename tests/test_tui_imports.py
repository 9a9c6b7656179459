"""The console's modules import each other in one direction: no circles.

Screens never import the app (they post messages the app acts on), widgets
never import screens. Two checks: the import graph of ``backup_tui`` read with
``ast`` (every import statement, those under ``if TYPE_CHECKING`` and inside
functions too: a type checker follows them) has no cycle; and a fresh
interpreter can import each module first, whatever was imported before it (a
circle that only bites in one order would fail there).
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "backup_tui"


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source. Its own
    packages do not count: Python imports them before it, so they close no circle."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # from pkg import mod
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_is_read():
    edges = graph()
    assert "backup_tui.screens.inventory" in edges["backup_tui.app"]
    assert "backup_tui.engine_calls" in edges["backup_tui.screens.schedule"]


def test_backup_tui_has_no_import_cycle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_nothing_the_app_imports_imports_the_app():
    edges = graph()
    seen, todo = set(), ["backup_tui.app"]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert not [m for m in seen if "backup_tui.app" in edges[m]]


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


IMPORT_EACH_FIRST = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "backup_tui" or m.startswith("backup_tui.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
"""


def test_each_module_imports_first_in_a_fresh_interpreter():
    names = sorted(modules())
    seed = random.randrange(1 << 30)
    random.Random(seed).shuffle(names)
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH_FIRST, *names],
                          cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"seed {seed}, order {names}:\n{done.stderr}"
