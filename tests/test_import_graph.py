"""The project's own import graph has no circles, and the floors never import upwards.

Built from the source with ``ast`` (every import statement, also those inside functions: a
circle dodged by a late import is still a circle), on the installed names: ``transports/``
is ``ringcomm.transports``, ``layers/`` is ``ringcomm.layers``, ``benchmarks/`` is
``ringcomm.bench``.  A module's import of its own parent package is left out (Python imports
the parent first in any case).
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.procs import ROOT

FLOORS = {"transports": "ringcomm.transports", "ringcomm": "ringcomm",
          "layers": "ringcomm.layers", "benchmarks": "ringcomm.bench"}
# what each floor may import from the project: never a floor above it
MAY_IMPORT = {"ringcomm.transports": ("ringcomm.transports",),
              "ringcomm": ("ringcomm", "ringcomm.transports")}


def project_modules() -> dict[str, Path]:
    found = {}
    for folder, package in FLOORS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts
                     if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (the longest module each import names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            named = [target, *(f"{target}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            named = [a.name for a in node.names]
        else:
            continue
        for item in named:
            while item and item not in modules:
                item = item.rpartition(".")[0]
            if item and item != name and not name.startswith(item + "."):
                out.add(item)
    return out


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_floors_never_import_upwards():
    wrong = []
    for name, targets in graph().items():
        floor = next(f for f in ("ringcomm.transports", "ringcomm.layers", "ringcomm.bench",
                                 "ringcomm") if name == f or name.startswith(f + "."))
        allowed = MAY_IMPORT.get(floor)
        if allowed is None:
            continue
        for target in targets:
            if not any(target == a or target.startswith(a + ".") for a in allowed) or (
                    floor == "ringcomm" and target.startswith(("ringcomm.layers",
                                                               "ringcomm.bench"))):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports from a floor above: " + ", ".join(sorted(wrong))
