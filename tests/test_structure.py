"""The shape of the package (DESIGN sections 3 and 10): small modules and functions, one
home per shared fact, the simulators below the product, and no import cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "monitor"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# What the simulators may use: the lowest layers only. They stand in for Discord and
# CDP, so they must not lean on the product they are used to test.
SIM_MAY_IMPORT = (
    "monitor.clock",
    "monitor.errors",
    "monitor.httpserve",
    "monitor.vocab",
    "monitor.discord.snowflake",
    "monitor.sim",
)


def modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path, ast.parse(path.read_text(encoding="utf-8"))


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imported(name: str, path: Path, tree: ast.Module) -> set[str]:
    """Modules of this package that `tree` imports when it runs (at any depth)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "monitor" or m.startswith("monitor.")}


MODULES = {name: (path, tree) for name, path, tree in modules()}


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, (path, _) in MODULES.items()
    }
    assert {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES} == {}


def test_no_function_is_over_the_size_limit() -> None:
    long = {
        f"{name}.{node.name}": node.end_lineno - node.lineno + 1
        for name, (_, tree) in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long == {}


def test_simulators_import_nothing_above_them() -> None:
    offending = {
        name: sorted(
            m
            for m in imported(name, path, tree)
            if m in MODULES and not m.startswith(SIM_MAY_IMPORT) and m != "monitor"
        )
        for name, (path, tree) in MODULES.items()
        if name.startswith("monitor.sim")
    }
    assert {n: m for n, m in offending.items() if m} == {}


def test_there_is_no_import_cycle() -> None:
    graph = {
        name: {m for m in imported(name, path, tree) if m in MODULES and m != name}
        for name, (path, tree) in MODULES.items()
    }
    # A package's __init__ re-exporting its own modules is not a cycle of concerns.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(node) :], node]))
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize(
    "name",
    [
        "format_duration",
        "parse_duration",
        "parse_snowflake",
        "snowflake_time",
        "BREAKER_STATES",
        "CHANNEL_PREFIXES",
        "DISCORD_SOURCES",
    ],
)
def test_each_shared_fact_is_defined_once(name: str) -> None:
    homes = [
        module
        for module, (_, tree) in MODULES.items()
        for node in tree.body
        if (isinstance(node, ast.FunctionDef) and node.name == name)
        or (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and any(
                isinstance(t, ast.Name) and t.id == name
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
        )
    ]
    assert len(homes) == 1, f"{name} is defined in {homes}"
