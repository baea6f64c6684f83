"""The code's shape: no import cycle between the project's modules, no library
function over 60 lines, no library file over 400 lines.

The import graph is static (``ast``), and counts imports inside functions too: a
lazy import still makes two modules depend on each other, it only hides the cycle
from the interpreter. ``python -m pytest tests/test_structure.py`` is the check."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("detr", "export", "runtime", "benchmarks")
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the packages."""
    mods: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _imported(module: str, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> set[str]:
    """The project modules that one import statement of ``module`` names."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if mods[module].name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    found = set()
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        # A module importing its own package's __init__ is not an edge worth a cycle.
        if name and name != module and not module.startswith(name + "."):
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports anywhere in its body."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(module, node, mods)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start, deps in graph.items():
        if start in index:
            continue
        work = [(start, iter(sorted(deps)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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


def test_cycles_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_import_graph_sees_function_level_imports():
    graph = import_graph()
    # runtime.detector imports its backends lazily; the graph must still see one edge.
    assert any(dep.startswith("runtime.backends") for dep in graph["runtime.detector"])


def _long_functions() -> list[str]:
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return long


def test_no_library_function_over_60_lines():
    long = _long_functions()
    assert not long, "\n".join(long)


def test_no_library_file_over_400_lines():
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not big, "\n".join(big)
