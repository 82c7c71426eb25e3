"""The package's import graph: no circle, and a core that does not reach Temporal.

Every module of ``temporal_governor`` is parsed (not imported) and every import in it is
an edge: top-level ones, those under ``if TYPE_CHECKING:`` and those inside functions
alike, since each states that one module needs another.

How an import becomes an edge: ``import a.b`` and ``from a.b import name`` point at
``a.b``; ``from a import b`` points at the submodule ``a.b`` when there is one, else at
the package ``a`` itself (its ``__init__``, which re-exports ``b``). The packages above
the named module are not edges: Python initialises them first, but that is how any
package works, not a dependency of the module on them. So a circle through a package
``__init__`` counts only where a module really takes a name from that ``__init__``.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "temporal_governor"
SOURCE = Path(__file__).resolve().parent.parent / "src" / PACKAGE


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package by dotted name, with its file and whether it is a package."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        found[".".join(parts)] = (path, package)
    return found


MODULES = _modules()


def _base(module: str, package: bool, level: int, name: str | None) -> str:
    """The absolute name an ``import`` or ``from ... import`` statement starts from."""
    if level == 0:
        return name or ""
    parts = module.split(".") if package else module.split(".")[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, name] if name else parts)


def imports(module: str) -> Iterator[str]:
    """Every absolute module name ``module`` imports (inside the package or not)."""
    path, package = MODULES[module]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, package, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in MODULES else base


@functools.cache
def graph() -> dict[str, set[str]]:
    """The package's import graph: each module and the package modules it imports."""
    return {module: {m for m in imports(module) if m in MODULES} for module in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module, or a
    module importing itself), each sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@functools.cache
def importing_temporalio() -> frozenset[str]:
    """The package modules that import ``temporalio`` themselves."""
    return frozenset(
        m
        for m in MODULES
        if any(name == "temporalio" or name.startswith("temporalio.") for name in imports(m))
    )


def path_to_temporalio(
    start: str, edges: dict[str, set[str]], direct: frozenset[str] | None = None
) -> list[str] | None:
    """The shortest chain of imports from ``start`` to ``temporalio``, if there is one.

    ``direct``: the modules importing ``temporalio`` themselves (by default the package's).
    """
    direct = importing_temporalio() if direct is None else direct
    seen, frontier = {start}, [[start]]
    while frontier:
        following = []
        for path in frontier:
            if path[-1] in direct:
                return [*path, "temporalio"]
            for nxt in sorted(edges[path[-1]] - seen):
                seen.add(nxt)
                following.append([*path, nxt])
        frontier = following
    return None


def test_the_graph_sees_every_kind_of_import() -> None:
    """The parser finds imports under TYPE_CHECKING and inside functions, and resolves
    relative names (checked on modules known to hold each kind)."""
    edges = graph()
    assert len(MODULES) > 40
    assert f"{PACKAGE}.interceptors._ports" in edges[f"{PACKAGE}.interceptors._guard"]
    assert f"{PACKAGE}.core.accounting" in edges[f"{PACKAGE}.core.carving"]
    assert f"{PACKAGE}.interceptors._run" in edges[f"{PACKAGE}.interceptors._workflow"]
    # `from ..core import carving` is the submodule, `from .. import x` the name in __init__
    assert f"{PACKAGE}.core.carving" in edges[f"{PACKAGE}.interceptors._run"]
    source = "def f():\n    from .b import c\nif TYPE_CHECKING:\n    from ..d import e\n"
    found = _parse_imports(source, "temporal_governor.x.a", package=False)
    assert found == {"temporal_governor.x.b", "temporal_governor.d"}


def _parse_imports(source: str, module: str, package: bool) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names.add(_base(module, package, node.level, node.module))
    return names


def test_cycles_are_found() -> None:
    """The cycle finder itself: a circle, a self-import, and none in a chain."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package() -> None:
    circles = cycles(graph())
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith(f"{PACKAGE}.core")), ids=lambda m: m
)
def test_the_core_does_not_reach_temporalio(module: str) -> None:
    """Nothing under ``core/`` imports ``temporalio``, directly or through another module."""
    path = path_to_temporalio(module, graph())
    assert path is None, " -> ".join(path)


def test_a_module_reaching_temporalio_through_another_is_found() -> None:
    """The check follows imports through other modules, and finds the glue's imports."""
    edges = {"a": {"b", "d"}, "b": {"c"}, "c": set(), "d": set()}
    assert path_to_temporalio("a", edges, frozenset({"c"})) == ["a", "b", "c", "temporalio"]
    assert path_to_temporalio("a", edges, frozenset()) is None
    real = graph()
    path = path_to_temporalio(f"{PACKAGE}.interceptors._guard", real)
    assert path is not None and path[-1] == "temporalio"


@pytest.mark.parametrize(
    ("module", "never"),
    [
        ("interceptors._guard", "interceptors._run"),
        ("interceptors._shared", "interceptors._run"),
        ("interceptors._control", "interceptors._run"),
        ("interceptors._run", "interceptors._control"),
        ("interceptors._ports", "interceptors._run"),
    ],
)
def test_the_glue_depends_on_ports_not_on_the_run(module: str, never: str) -> None:
    """A run's parts see the run through ``_ports`` protocols (also under TYPE_CHECKING)."""
    assert f"{PACKAGE}.{never}" not in graph()[f"{PACKAGE}.{module}"]
