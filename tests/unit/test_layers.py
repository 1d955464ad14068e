"""The worker core's import graph: no cycles, and one registry backend never imports another."""

from __future__ import annotations

import ast
from pathlib import Path

WORKERS = Path(__file__).resolve().parents[2] / "workers"
BACKENDS = {"workers.registry.in_process", "workers.registry.redis_backend"}


def module_name(path: Path) -> str:
    parts = path.relative_to(WORKERS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path, known: set[str]) -> set[str]:
    """Modules of `workers` imported when ``path`` is imported (module level, not under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in WORKERS.rglob("*.py")}
    known = set(paths)
    return {name: load_time_imports(path, known) - {name} for name, path in paths.items()}


def test_the_graph_is_read() -> None:
    edges = graph()
    assert "workers.registry.lifecycle" in edges["workers.registry.in_process"]
    assert "workers.registry.api" in edges["workers.registry.redis_backend"]


def test_no_import_cycles_in_workers() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(edges.get(name, ())):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_no_backend_imports_another() -> None:
    edges = graph()
    for backend in BACKENDS:
        assert not edges[backend] & (BACKENDS - {backend}), backend
