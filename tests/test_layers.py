"""The house stays by stage: every import of ``batchembed`` runs down the floors (or stays on its own),
no two files import each other in a loop (``TYPE_CHECKING`` imports and imports inside functions
included), every ``from batchembed.x import y`` names something ``x`` defines (also on rarely run
paths: Ray, buckets, the batch tier, serve), no private name crosses modules, no file grows past 400
lines. ``docs/architecture.md`` draws the same floors."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "batchembed"

#: The floors, from the ground up: a module may import from its own floor or the floors below it.
FLOORS: list[set[str]] = [
    {
        "__init__",
        "errors",
        "exitcodes",
        "faults",
        "human",
        "suggest",
        "failpoints",
        "stats",
        "without_pandas",
    },  # foundation
    {"fs"},
    {"providers"},  # the whole wire
    {"job"},
    {"input"},
    {"output"},
    {"tasks"},
    {"sending", "sinks"},  # sinks: the vector stores a run keeps equal to its table
    {"run"},
    {"plan", "audit", "init", "search"},  # the commands that read or feed what runs made
    {"cli", "serve", "testing"},  # entry points, and the public fake server
]
MAX_LINES = 400


@dataclass
class Module:
    name: str  # "batchembed.output.manifest"
    path: Path
    tree: ast.Module
    defines: set[str] = field(default_factory=set)


def _modules() -> dict[str, Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        tree = ast.parse(path.read_text(), str(path))
        mod = Module(".".join(parts), path, tree)
        for node in tree.body:
            mod.defines |= _bound(node)
        out[mod.name] = mod
    return out


def _bound(node: ast.stmt) -> set[str]:
    """Names a top-level statement binds (definitions, assignments, imports; inside if/try too)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    if isinstance(node, (ast.If, ast.Try, ast.With)):
        inner = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
        inner += [s for h in getattr(node, "handlers", []) for s in h.body]
        return set().union(*(_bound(s) for s in inner)) if inner else set()
    return set()


def imports(modules: dict[str, Module]) -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module, name or None, line) for every import of batchembed, wherever it sits."""
    out = []
    for mod in modules.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                out += [(mod.name, a.name, None, node.lineno) for a in node.names if a.name.startswith("batchembed")]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("batchembed"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in modules:  # ``from batchembed.output import roles``: the module itself
                        out.append((mod.name, sub, None, node.lineno))
                    else:
                        out.append((mod.name, node.module, alias.name, node.lineno))
    return out


def floor_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"{module}: its package {top!r} stands on no floor (add it to FLOORS and the map)")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def house():
    modules = _modules()
    return modules, imports(modules)


def test_every_import_runs_down_the_floors(house):
    _, found = house
    up = [
        f"{a} (floor {floor_of(a)}) imports {b} (floor {floor_of(b)}), line {line}"
        for a, b, _, line in found
        if floor_of(b) > floor_of(a)
    ]
    assert not up, "imports that run up a floor:\n" + "\n".join(up)


def test_no_import_cycle_between_files_or_packages(house):
    _, found = house
    files: dict[str, set[str]] = {}
    packages: dict[str, set[str]] = {}
    for a, b, _, _ in found:
        if a != b:
            files.setdefault(a, set()).add(b)
        pa, pb = a.split(".")[:2], b.split(".")[:2]
        if pa != pb:
            packages.setdefault(".".join(pa), set()).add(".".join(pb))
    assert cycles(files) == [], "files that import each other in a loop"
    assert cycles(packages) == [], "packages that import each other in a loop"


def test_the_cycle_check_sees_a_cycle():
    # fed a synthetic loop (a -> b -> c -> a) beside a clean branch, it names exactly the loop
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_imported_name_is_defined_where_it_is_imported_from(house):
    modules, found = house
    missing = []
    for a, b, name, line in found:
        if b not in modules:
            missing.append(f"{a}, line {line}: no module {b}")
        elif name is not None and name not in modules[b].defines:
            missing.append(f"{a}, line {line}: {b} defines no {name!r}")
    assert not missing, "\n".join(missing)


def test_no_private_name_crosses_modules(house):
    _, found = house
    private = [
        f"{a}, line {line}: {b}.{name}"
        for a, b, name, line in found
        if name and name.startswith("_") and not name.startswith("__")  # __version__ is public
    ]
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_every_module_is_small(house):
    modules, _ = house
    big = [
        f"{m.path.relative_to(ROOT)}: {n} lines"
        for m in modules.values()
        if (n := len(m.path.read_text().splitlines())) > MAX_LINES
    ]
    assert not big, f"modules over {MAX_LINES} lines:\n" + "\n".join(big)
