"""bench/ has no import circles: every benchmark module can be read from the harness
(bench/common.py, bench/machine.py) upwards. Imports inside functions and under
``TYPE_CHECKING`` count too: a reader follows them all the same."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def module_name(path: Path) -> str:
    return "bench" if path.stem == "__init__" else f"bench.{path.stem}"


def bench_imports(path: Path) -> set[str]:
    """The bench modules ``path`` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bench.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "bench":  # from bench import batching, ...
                found |= {f"bench.{a.name}" for a in node.names}
            elif node.module.startswith("bench."):
                found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # Relative imports inside the flat bench package: ``from .common import x``.
            base = node.module or ""
            found |= {f"bench.{base}" if base else f"bench.{a.name}" for a in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(BENCH.glob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): bench_imports(p) & known for p in paths}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (or a module importing
    itself), each sorted: Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_finder_sees_circles() -> None:
    """The check can fail: a two-module circle, a longer one and a self-import are found;
    a chain is not."""
    graph = {
        "a": {"b"},
        "b": {"a", "c"},
        "c": {"d"},
        "d": {"e"},
        "e": {"c"},
        "f": {"f"},
        "g": {"a"},
    }
    assert circles(graph) == [["a", "b"], ["c", "d", "e"], ["f"]]
    assert circles({"x": {"y"}, "y": {"z"}, "z": set()}) == []


def test_imports_are_read_wherever_they_stand(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import bench.machine\n"
        "from bench import batching\n"
        "if TYPE_CHECKING:\n"
        "    from bench.scaleout import RunConfig\n"
        "def f():\n"
        "    from bench.common import record\n"
        "from .gpu_plan import Plan\n"
    )
    assert bench_imports(source) == {
        "bench.machine",
        "bench.batching",
        "bench.scaleout",
        "bench.common",
        "bench.gpu_plan",
    }


def test_bench_has_no_import_circles() -> None:
    """Every module of bench/, the toy world's too (its stages import bench.toyworld_plan,
    never the driver). Fails on e7311ed: scaleout <-> scaleout_report, and the toy world's
    driver <-> its stages."""
    graph = import_graph()
    assert {"bench.common", "bench.scaleout", "bench.toyworld"} <= set(graph)  # saw bench/
    assert circles(graph) == []
