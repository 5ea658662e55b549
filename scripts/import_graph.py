#!/usr/bin/env python3
"""The import graph of ``src/kyb``: which parts import which, cycles, and imports that point upward.

    python scripts/import_graph.py            # the graph by part, then the checks
    python scripts/import_graph.py --dot      # Graphviz: ... | dot -Tsvg > imports.svg
    python scripts/import_graph.py --check    # exit 1 on a cycle or an upward import (tests run this)

A *part* is a top-level module or subpackage of ``kyb`` (``kyb.index``, ``kyb.search``, ...). Every
``import`` counts, at module level or inside a function (a lazy import is still a dependency), except
those under ``if TYPE_CHECKING:``. Upward: anything in ``src/kyb`` importing ``kyb_services`` or
``kyb_training`` (the services and training code), which build on it. A cycle: parts that import
each other, directly or around a loop.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "kyb"
#: Top-level packages that build on kyb: kyb must never import them.
ABOVE = ("kyb_services", "kyb_training", "services", "training")
#: Generated protobuf stubs import each other; they are data, not a layer.
GENERATED = "kyb.v1"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """``kyb.index._vote`` -> ``kyb.index``; ``kyb`` itself stays ``kyb``."""
    pieces = module.split(".")
    return ".".join(pieces[:2])


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every runtime import in ``path``; relative imports resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text("utf-8"), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno


def build_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(part -> parts it imports, upward imports as "file:line imports X")."""
    graph: dict[str, set[str]] = {}
    upward: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(module_name(path))
        if source == GENERATED:
            continue
        graph.setdefault(source, set())
        for target, line in imports_of(path):
            top = target.split(".")[0]
            if top in ABOVE:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            elif top == "kyb":
                other = part_of(target)
                if other not in (source, "kyb", GENERATED):
                    graph[source].add(other)
    return graph, upward


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one part (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each part's layer: 0 imports no other part, n imports only parts below n (cycles excluded)."""
    depth: dict[str, int] = {}

    def of(node: str, seen: frozenset[str]) -> int:
        if node in depth:
            return depth[node]
        below = [of(o, seen | {node}) for o in graph.get(node, ()) if o not in seen and o in graph]
        depth[node] = 1 + max(below) if below else 0
        return depth[node]

    for node in graph:
        of(node, frozenset())
    return depth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot", action="store_true", help="print the graph in Graphviz dot")
    parser.add_argument("--check", action="store_true", help="only the checks; exit 1 when one fails")
    args = parser.parse_args(argv)
    graph, upward = build_graph()
    loops = cycles(graph)
    if args.dot:
        print("digraph kyb {\n  rankdir=BT; node [shape=box];")
        for source in sorted(graph):
            for target in sorted(graph[source]):
                print(f'  "{source}" -> "{target}";')
        print("}")
        return 0
    if not args.check:
        depth = layers(graph)
        for source in sorted(graph, key=lambda n: (depth[n], n)):
            targets = ", ".join(t.removeprefix("kyb.") for t in sorted(graph[source], key=lambda t: (depth[t], t)))
            print(f"{depth[source]:>2}  {source.removeprefix('kyb.'):<14} -> {targets or '-'}")
        print()
    for loop in loops:
        print("cycle: " + " <-> ".join(loop))
    for line in upward:
        print("upward import: " + line)
    if not loops and not upward:
        print(f"{len(graph)} parts, no cycles, no upward imports")
    return 1 if (loops or upward) else 0


if __name__ == "__main__":
    sys.exit(main())
