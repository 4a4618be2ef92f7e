"""The package's shape, checked: no import cycles, one registry of filters, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

from proxy.config.models import DEFAULT_FILTERS, FILTER_NAMES
from proxy.filters import FILTERS
from tests.helpers import ROOT

PACKAGE = ROOT / "proxy"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every proxy.* module the file imports: at the top, inside functions (deferred imports still
    run) and under ``if TYPE_CHECKING:`` (a cycle there is still a knot for the reader and mypy)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("proxy") and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # "from proxy.filters import validate"
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("proxy"))
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imp in imports(path):
            if imp in modules and imp != name:
                targets.add(imp)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            # a package's __init__ importing its own submodules is how packages work, not a cycle
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle_in_the_package() -> None:
    assert find_cycle(graph()) is None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_filter_name_the_config_accepts_has_a_factory() -> None:
    assert set(FILTERS) == set(FILTER_NAMES)
    assert set(DEFAULT_FILTERS) <= set(FILTERS)


def test_every_module_says_its_job_in_a_docstring() -> None:
    missing = [module_name(p) for p in PACKAGE.rglob("*.py") if p.read_text().strip() and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert missing == []
