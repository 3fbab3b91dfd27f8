"""The package's layout holds: no import circles, no upward imports, families apart, the root small.

The graph is read with ``ast`` from the sources (nothing is imported), so a circle that Python would tolerate
by import order still fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "aetune"

LAYERS = {
    "errors": 0,
    "paths": 0,
    "io": 0,
    "safe_load": 0,
    "optional": 0,
    "cli": 0,
    "config": 0,
    "setup": 1,
    "metrics": 2,
    "nn": 3,
    "losses": 3,
    "models": 3,
    "data": 3,
    "recipes": 3,
    "families": 4,
    "tasks": 4,
    "train": 5,
    "evaluate": 6,
    "tools": 7,
}
"""Rank of each top-level part: a module imports only parts of its own rank or lower (the package root,
``aetune/__init__.py``, is the public API and may import any). ``setup`` is low because families find the
weights step 2 recorded through its hub; ``metrics`` reads the FID Inception weights the same way."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _target(node: ast.ImportFrom | ast.Import, here: str) -> Iterator[str]:
    """The aetune modules an import statement loads (``from pkg import mod`` -> ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names if a.name.split(".")[0] == "aetune")
        return
    if node.level:
        base = here.rsplit(".", node.level)[0]
        module = f"{base}.{node.module}" if node.module else base
    else:
        module = node.module or ""
    if module.split(".")[0] != "aetune":
        return
    for alias in node.names:
        sub = f"{module}.{alias.name}"
        yield sub if sub in MODULES else module


def imports(name: str) -> tuple[set[str], set[str]]:
    """(module-level imports, imports anywhere) of module ``name``; ``if TYPE_CHECKING:`` blocks left out."""
    tree = ast.parse(MODULES[name].read_text())
    top: set[str] = set()
    every: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found = set(_target(child, name))
                every.update(found)
                if not in_function:
                    top.update(found)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return top - {name}, every - {name}


GRAPH = {name: imports(name) for name in MODULES}


def part(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def family_folder(name: str) -> str | None:
    parts = name.split(".")
    return ".".join(parts[:3]) if len(parts) > 2 and parts[1] in ("families", "tasks") else None


def test_the_graph_sees_the_imports_it_must() -> None:
    """Guards the reader itself: known edges of each kind are found."""
    assert "aetune.families.rae.options" in GRAPH["aetune.families.rae"][0]  # from pkg import module
    assert "aetune.models.loading" in GRAPH["aetune.families.rae.loading"][0]  # from module import names
    assert "aetune.families" in GRAPH["aetune"][0]


def test_no_import_circles_at_module_level() -> None:
    """Tarjan's strongly connected components over module-level imports: every component is one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v][0]:
            if w not in MODULES:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            connect(v)
    assert circles == []


def test_every_part_has_a_rank() -> None:
    assert {part(m) for m in MODULES if m.count(".") >= 1} - {"__init__"} <= set(LAYERS)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "aetune"))
def test_no_upward_imports(name: str) -> None:
    """Also function-level imports: a lazy import upward is still an arrow pointing up."""
    upward = sorted(t for t in GRAPH[name][1] if t != "aetune" and LAYERS[part(t)] > LAYERS[part(name)])
    assert upward == []


@pytest.mark.parametrize("name", sorted(m for m in MODULES if family_folder(m)))
def test_a_family_imports_no_other_family(name: str) -> None:
    """A family reaches another (a distillation teacher) only through the registries."""
    own = family_folder(name)
    foreign = sorted(t for t in GRAPH[name][1] if family_folder(t) not in (None, own))
    assert foreign == []


def test_registries_import_none_of_their_members() -> None:
    registries = ["aetune.config", "aetune.models.registry", "aetune.models.loading", "aetune.recipes"]
    registries += ["aetune.data.kinds.registry"]
    for name in registries:
        members = [t for t in GRAPH[name][1] if family_folder(t) or t.startswith("aetune.data.kinds.")]
        assert members == [], name


FAMILY_NAMES = {"vavae", "rae", "taesd", "taehv", "kl3d"}
"""``kl`` is left out: it is also the KL term's key in logs and losses (``train/health.py``, figures)."""


@pytest.mark.parametrize("folder", ["train", "data", "evaluate", "setup"])
def test_shared_layers_name_no_family(folder: str) -> None:
    """No string constant in the step layers is a family's name: families register what is theirs."""
    named = []
    for name, path in MODULES.items():
        if part(name) != folder:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in FAMILY_NAMES:
                named.append(f"{name}:{node.lineno} {node.value!r}")
    assert named == []


def test_the_package_root_stays_small() -> None:
    root_modules = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert len(root_modules) <= 8, root_modules


@pytest.mark.parametrize("script", sorted(ROOT.parent.glob("step*_*.py")), ids=lambda p: p.name)
def test_step_scripts_only_wire(script: Path) -> None:
    """The library does the work; a step script parses flags and calls it."""
    assert len(script.read_text().splitlines()) <= 150
