"""The package's shape: no module over 800 lines, Vfs an interface of at most 400, and no
import cycle among stormount's modules, counting every import
statement wherever it stands (in a function, under TYPE_CHECKING), so a cycle cannot
hide behind a late import."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import stormount

PACKAGE = Path(stormount.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def known(name: str) -> str | None:
        # the module itself, or the deepest package of it that exists
        parts = name.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets.add(known(source))
                # `from pkg import mod` imports the module pkg.mod as well
                targets.update(f"{source}.{a.name}" for a in node.names
                               if f"{source}.{a.name}" in modules)
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for group in groups:
        # a shortest way back to the group's first module, breadth first
        start = min(group)
        came: dict[str, str] = {}
        queue = deque([start])
        while start not in came:
            v = queue.popleft()
            for w in sorted(graph[v] & group):
                if w not in came:
                    came[w] = v
                    queue.append(w)
        path = [start]
        while (prev := came[path[-1]]) != start:
            path.append(prev)
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def test_the_graph_sees_late_and_relative_imports():
    graph = _graph()
    assert len(graph) > 40
    assert "stormount.errors" in graph["stormount.config"]
    assert "stormount.chain.chain" in graph["stormount.chain"]
    # an import inside a function counts as much as one at the top
    assert "stormount.control.metrics" in graph["stormount.control.commands"]
    assert "stormount.daemon" in graph["stormount.cli.mount"]


def test_the_cycle_finder_names_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


MODULE_MAX = 800  # a module past this holds more than one job: split it along them
VFS_MAX = 400  # Vfs is the one interface over the vfs modules, not their sum


def test_no_module_is_over_800_lines():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MODULE_MAX}
    assert not long, f"modules over {MODULE_MAX} lines: {long}"


def test_vfs_is_an_interface_over_its_modules():
    tree = ast.parse((PACKAGE / "vfs" / "fs.py").read_text())
    vfs = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Vfs")
    assert vfs.end_lineno is not None
    lines = vfs.end_lineno - vfs.lineno + 1
    assert lines <= VFS_MAX, f"Vfs is {lines} lines"
