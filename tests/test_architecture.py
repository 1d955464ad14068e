"""The architecture as rules on the import graph of `conformance/` and `workers/`, read from the source.

The graph is built with an AST walk over every module, so it holds every import statement wherever it
stands: at the top, inside a function (a lazy import), or under ``if TYPE_CHECKING:``. Each of those is
a dependency of the design even when it is not one at start-up, so each one counts.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("conformance", "workers")


# -- the graph ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One imported name as written: ``from module import name`` (``name`` None for ``import module``)."""

    module: str
    name: str | None
    line: int
    #: inside a function body: it runs when called, after every module-level import has finished
    deferred: bool = False


@dataclass
class Module:
    name: str
    #: relative to the root the module was loaded from
    path: Path
    imports: list[Import] = field(default_factory=list)

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.AST, name: str, *, is_package: bool) -> list[Import]:
    """Every import in ``tree`` (module ``name``), relative ones resolved to absolute module names."""
    found: list[Import] = []
    package = name if is_package else name.rpartition(".")[0]

    def visit(node: ast.AST, deferred: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, None, node.lineno, deferred) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.extend(Import(module, alias.name, node.lineno, deferred) for alias in node.names)
        inside = deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


def load_modules(root: Path, packages: Iterable[str]) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            imports = imports_of(tree, name, is_package=path.name == "__init__.py")
            modules[name] = Module(name, path.relative_to(root), imports)
    return modules


def targets(imported: Import, known: Iterable[str]) -> set[str]:
    """The known modules an import depends on: ``from pkg import sub`` names the module pkg.sub if there is one."""
    names = set(known)
    if imported.name is not None and f"{imported.module}.{imported.name}" in names:
        return {f"{imported.module}.{imported.name}"}
    parts = imported.module.split(".")
    for end in range(len(parts), 0, -1):  # `import a.b.c` of a module a.b with an attribute c
        if ".".join(parts[:end]) in names:
            return {".".join(parts[:end])}
    return set()


def assembles(module: Module, imported: Import, target: str) -> bool:
    """A package loading its own submodules on demand (a plugin registry's ``load_all``).

    The submodules depend on the package; by the time the call runs, the package has finished
    importing, so the deferred import is no dependency of the package's design nor an ordering hazard.
    A package's module-level imports of its submodules still count.
    """
    return module.is_package and imported.deferred and target.startswith(module.name + ".")


def graph_of(modules: dict[str, Module]) -> dict[str, set[str]]:
    return {
        name: {
            target
            for imported in module.imports
            for target in targets(imported, modules)
            if not assembles(module, imported, target)
        }
        - {name}
        for name, module in modules.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (iterative: deep graphs must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & within):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is on no cycle")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """For every component, the shortest cycle through each of its modules (rotations removed)."""
    found: list[list[str]] = []
    for component in strongly_connected(graph):
        seen: set[frozenset[tuple[str, str]]] = set()
        members = set(component)
        for start in component:
            cycle = shortest_cycle(graph, start, members)
            edges = frozenset(itertools.pairwise(cycle))
            if edges not in seen:
                seen.add(edges)
                found.append(cycle)
    return found


def where(modules: dict[str, Module], source: str, target: str) -> str:
    lines = sorted({imported.line for imported in modules[source].imports if target in targets(imported, modules)})
    return f"{modules[source].path}:{','.join(map(str, lines))}"


def describe(modules: dict[str, Module], cycle: list[str]) -> str:
    steps = [f"    {a} -> {b}  ({where(modules, a, b)})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load_modules(ROOT, PACKAGES)


# -- the rules ------------------------------------------------------------------------------------------------


def test_no_import_cycles(modules: dict[str, Module]) -> None:
    found = cycles(graph_of(modules))
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(describe(modules, cycle) for cycle in found)


def test_the_suite_and_the_workers_never_import_each_other(modules: dict[str, Module]) -> None:
    crossings = [
        f"{module.path}:{imported.line}: imports {imported.module}" + (f".{imported.name}" if imported.name else "")
        for module in modules.values()
        for imported in module.imports
        for own, other in (("conformance", "workers"), ("workers", "conformance"))
        if module.name.split(".")[0] == own and imported.module.split(".")[0] == other
    ]
    assert not crossings, "the conformance suite and the workers are independent:\n" + "\n".join(crossings)


#: storage backends of the job registry, by the name of their module under `workers/registry/` (a module
#: `<name>.py` or a package `<name>/`): `in_process.py` and `redis_backend.py` (with `redis_scripts.py`) today;
#: `api.py`, `lifecycle.py` and the package itself are the shared interface, no backend
BACKEND_KINDS = {"inprocess": re.compile(r"in_?process|memory|local"), "redis": re.compile(r"redis")}


def backend_kind(module: Module) -> str | None:
    if not module.name.startswith("workers.registry."):
        return None
    stem = module.name.removeprefix("workers.registry.").split(".")[0]
    return next((kind for kind, pattern in BACKEND_KINDS.items() if pattern.match(stem)), None)


def backend_crossings(modules: dict[str, Module]) -> list[str]:
    kinds = {name: backend_kind(module) for name, module in modules.items()}
    crossings = {
        f"{module.path}:{imported.line}: the {kinds[name]} backend imports {target} (the {kinds[target]} backend)"
        for name, module in modules.items()
        if kinds[name] is not None
        for imported in module.imports
        for target in targets(imported, modules)
        if kinds[target] is not None and kinds[target] != kinds[name]
    }
    return sorted(crossings)


def test_registry_backends_never_import_each_other(modules: dict[str, Module]) -> None:
    assert any(backend_kind(module) for module in modules.values()), "no registry backend module found"
    crossings = backend_crossings(modules)
    assert not crossings, "shared registry code belongs in the interface, not in a backend:\n" + "\n".join(crossings)


def private_reaches(path: Path) -> list[str]:
    """``from workers.x import _name``, ``import workers._x``, or ``name._private`` on a name imported from them."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def private(part: str) -> bool:
        return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))

    def ours(module: str) -> bool:
        return module.split(".", maxsplit=1)[0] in PACKAGES

    found: list[str] = []
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if ours(alias.name):
                    if any(private(part) for part in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
                    aliases.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level and ours(node.module or ""):
            module = node.module or ""
            for alias in node.names:
                if any(private(part) for part in [*module.split("."), alias.name]):
                    found.append(f"{node.lineno}: from {module} import {alias.name}")
                else:
                    aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_tests_reach_no_private_names() -> None:
    """Tests use the public API and the documented seams, so internals can change without breaking them."""
    found = [
        f"{path.relative_to(ROOT)}:{reach}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for reach in private_reaches(path)
    ]
    assert not found, f"{len(found)} private name(s) of workers/conformance used by tests:\n" + "\n".join(found)


# -- the rules catch what they are about ----------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_every_kind_of_import_makes_an_edge_and_cycles_are_reported_with_their_path(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def f():\n    from . import c\n",  # lazy and relative
            "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
            "pkg/d.py": "import pkg.e\n",
            "pkg/e.py": "from .sub.f import g\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/f.py": "from ..d import x\nimport os\n",
            "pkg/leaf.py": "import pkg.a\nfrom pkg import sub\n",
            # a registry loading its plugins on demand: no cycle; importing one at module level: a cycle
            "pkg/plugins/__init__.py": "def check(): ...\ndef load_all():\n    from pkg.plugins import one\n",
            "pkg/plugins/one.py": "from pkg.plugins import check\n",
            "pkg/eager/__init__.py": "def check(): ...\nfrom pkg.eager import one\n",
            "pkg/eager/one.py": "from pkg.eager import check\n",
        },
    )
    modules = load_modules(tmp_path, ["pkg"])
    graph = graph_of(modules)
    assert graph["pkg.leaf"] == {"pkg.a", "pkg.sub"}
    assert graph["pkg.sub.f"] == {"pkg.d"}
    found = {" -> ".join(cycle) for cycle in cycles(graph)}
    assert found == {
        "pkg.a -> pkg.b -> pkg.c -> pkg.a",
        "pkg.d -> pkg.e -> pkg.sub.f -> pkg.d",
        "pkg.eager -> pkg.eager.one -> pkg.eager",
    }


def test_the_backend_rule_tells_backends_from_the_interface(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "workers/__init__.py": "",
            "workers/metrics.py": "",
            "workers/registry/__init__.py": "from workers.registry.in_process import InProcess\n",
            "workers/registry/api.py": "",
            "workers/registry/lifecycle.py": "from workers.registry.api import Backend\n",
            "workers/registry/in_process.py": "from workers.registry.lifecycle import Run\nimport workers.metrics\n",
            "workers/registry/redis_scripts.py": "",
            "workers/registry/redis_backend.py": (
                "from workers.registry.redis_scripts import LUA\n"
                "from workers.registry import api, lifecycle\n"
                "from workers.registry.in_process import InProcess\n"
            ),
        },
    )
    modules = load_modules(tmp_path, ["workers"])
    assert {name: backend_kind(module) for name, module in modules.items() if backend_kind(module)} == {
        "workers.registry.in_process": "inprocess",
        "workers.registry.redis_backend": "redis",
        "workers.registry.redis_scripts": "redis",
    }
    assert backend_crossings(modules) == [
        "workers/registry/redis_backend.py:3: the redis backend imports workers.registry.in_process "
        "(the inprocess backend)"
    ]


def test_private_reaches_are_found_however_they_are_written(tmp_path: Path) -> None:
    test_file = tmp_path / "test_x.py"
    test_file.write_text(
        "import workers.app as worker_app\n"
        "from workers import registry\n"
        "from workers.registry import _run, Job\n"
        "from conformance._impl import thing\n"
        "from workers.__main__ import build_parser\n"
        "worker_app._decode_request\n"
        "registry.JobRegistry._sweep\n"
        "worker_app.__name__\n"
        "other._private\n",
        encoding="utf-8",
    )
    assert private_reaches(test_file) == [
        "3: from workers.registry import _run",
        "4: from conformance._impl import thing",
        "6: worker_app._decode_request",
        "7: registry.JobRegistry._sweep",
    ]


# -- docs/architecture.md names what is there, and everything that is there --------------------------------------

ARCHITECTURE = ROOT / "docs" / "architecture.md"
#: a name in the tree's name column: `cli.py`, `checks/`, `engines/mock.py`, `redis_scripts/*.lua`
_NAME = re.compile(r"^[\w.*-]+(/[\w.*-]+)*/?$")


def tree_names(text: str) -> dict[str, list[str]]:
    """{top-level folder: the paths named under it} from the first fenced block of the document.

    A line is ``[folder/]  names  [description]``, its columns separated by two or more spaces; a line
    that starts with spaces continues the folder above. Names are separated by spaces or commas.
    """
    block = text.split("```", 2)[1].split("\n", 1)[1]
    named: dict[str, list[str]] = {}
    folder = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        columns = re.split(r"\s{2,}", line)
        if not line.startswith(" "):
            folder = columns[0].rstrip("/")
        names_column = columns[1] if len(columns) > 1 else ""
        tokens = [token for token in re.split(r"[,\s]+", names_column) if token]
        assert all(_NAME.match(token) for token in tokens), f"not a list of paths: {names_column!r} in {line!r}"
        named.setdefault(folder, []).extend(tokens)
    return named


def test_every_path_the_architecture_names_exists() -> None:
    missing = [
        f"{folder}/{name}"
        for folder, names in tree_names(ARCHITECTURE.read_text(encoding="utf-8")).items()
        for name in names
        if not list(ROOT.glob(f"{folder}/{name.rstrip('/')}"))
    ]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def architecture_subjects() -> set[str]:
    """Each package under conformance/ and workers/, each top-level module of the two, each test folder."""
    subjects: set[str] = set()
    for package in PACKAGES:
        top = ROOT / package
        subjects |= {str(path.relative_to(ROOT)) for path in top.glob("*.py") if path.name != "__init__.py"}
        subjects |= {str(path.parent.relative_to(ROOT)) for path in top.rglob("__init__.py") if path.parent != top}
    tests = ROOT / "tests"
    subjects |= {
        str(path.relative_to(ROOT))
        for path in tests.iterdir()
        if path.is_dir() and not path.name.startswith((".", "_"))
    }
    return subjects


def test_the_architecture_names_every_package_module_and_test_folder() -> None:
    named = {
        f"{folder}/{name.rstrip('/')}"
        for folder, names in tree_names(ARCHITECTURE.read_text(encoding="utf-8")).items()
        for name in names
    }
    unnamed = sorted(architecture_subjects() - named)
    assert not unnamed, f"docs/architecture.md does not name: {unnamed}"


def test_the_tree_reader_reads_folders_names_and_descriptions() -> None:
    text = (
        "# Title\n\n```\n"
        "pkg/     a.py, sub/         what a and sub do, in words: b.py here is prose\n"
        "         sub/c.py           more words\n"
        "tests/   unit/ browser/     test folders\n"
        "```\n\nProse with `x.py`.\n"
    )
    assert tree_names(text) == {"pkg": ["a.py", "sub/", "sub/c.py"], "tests": ["unit/", "browser/"]}
