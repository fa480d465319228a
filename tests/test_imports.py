"""The package's import graph: no cycle, and no module imports one from a layer above.

Every module is parsed with ``ast`` and every import counts, wherever it sits: at the
top, inside a function (the lazy imports that keep startup fast), or under
``TYPE_CHECKING``. A function-level import hides a cycle from Python but not from a
reader, so it is a cycle here too. The layers are those of ``docs/architecture.md``
and DESIGN: each imports only the layers below it.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "thinktank"

LAYERS: Sequence[tuple[str, Sequence[str]]] = (
    ("base", ("thinktank._*", "thinktank.errors")),
    ("events", ("thinktank.events",)),
    ("store", ("thinktank.store", "thinktank.store.*")),
    ("providers", ("thinktank.providers", "thinktank.providers.*")),
    ("consensus", ("thinktank.consensus", "thinktank.consensus.*")),
    ("session", ("thinktank.session", "thinktank.session.*")),
    ("engine", ("thinktank.engine", "thinktank.engine.*")),
    (
        "entry points",
        (
            "thinktank.replay",
            "thinktank.ask",
            "thinktank.client",
            "thinktank.batch",
            "thinktank.executor",
            "thinktank.dryrun",
            "thinktank.transfer",
            "thinktank.eval",
            "thinktank.eval.*",
        ),
    ),
    ("distributed", ("thinktank.distributed", "thinktank.distributed.*")),
    ("server", ("thinktank.server", "thinktank.server.*")),
    ("cli", ("thinktank.cli", "thinktank.cli.*", "thinktank.__main__")),
    ("library API", ("thinktank",)),
)
"""Bottom to top: (layer, module name patterns). The store sits below the providers
because a recorded client serves stored calls; nothing in the store knows a model."""

SEPARATE: frozenset[tuple[str, str]] = frozenset(
    {
        # The scheduler calls execute(step_id) and knows nothing about steps; the step
        # executor knows nothing about the scheduler (no sentinels, no lanes).
        ("thinktank.engine.steps", "thinktank.engine.scheduler"),
        # The executor's consensus cache speaks events, not the store's read model.
        ("thinktank.engine.steps", "thinktank.store"),
    }
)
"""(importer, imported) module pairs within allowed layers that must still not import."""


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name (a package by its own)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """The package module that importing ``name`` loads: itself or its nearest parent
    in the package (``thinktank.x.Name`` is a name in module ``thinktank.x``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path, node: ast.AST, modules: Mapping[str, Path]) -> set[str]:
    """The package modules one import statement loads."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            # A package's __init__ is its own level 1; a module's parent package is.
            here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            anchor = here[: len(here) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        # ``from pkg import sub`` loads the submodule; ``from mod import name``, mod.
        targets = [f"{base}.{alias.name}" for alias in node.names]
    else:
        return set()
    return {found for target in targets if (found := _known(target, modules)) is not None}


def import_graph(root: Path, package: str) -> nx.DiGraph[str]:
    """Module -> module it imports, for every import anywhere in every module."""
    modules = package_modules(root, package)
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            graph.add_edges_from((module, dep) for dep in _imported(module, path, node, modules))
    graph.remove_edges_from(nx.selfloop_edges(graph))
    return graph


def import_cycles(graph: nx.DiGraph[str]) -> list[list[str]]:
    """One cycle per knot of modules that import each other, smallest module first."""
    knots = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    return [[u for u, _ in nx.find_cycle(graph.subgraph(k), source=k[0])] for k in sorted(knots)]


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]]) -> int | None:
    """The index of the layer ``module`` belongs to (the topmost that names it)."""
    for index in reversed(range(len(layers))):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in layers[index][1]):
            return index
    return None


def upward_imports(
    graph: nx.DiGraph[str], layers: Sequence[tuple[str, Sequence[str]]]
) -> set[tuple[str, str]]:
    """The imports whose target sits in a higher layer than the importer."""
    rank = {m: layer_of(m, layers) for m in graph}
    return {(a, b) for a, b in graph.edges if (rank[a] or 0) < (rank[b] or 0)}


def _show(edges: Iterable[tuple[str, str]]) -> str:
    return "\n".join(f"{a} -> {b}" for a, b in sorted(edges))


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph[str]:
    """The import graph of the installed source tree."""
    return import_graph(PACKAGE, "thinktank")


def test_no_import_cycle(graph: nx.DiGraph[str]) -> None:
    """No two modules import each other, directly or around a circle, even lazily."""
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_every_module_belongs_to_a_layer(graph: nx.DiGraph[str]) -> None:
    """A new module is placed in a layer of LAYERS (and of docs/architecture.md)."""
    assert [m for m in graph if layer_of(m, LAYERS) is None] == []


def test_no_module_imports_from_a_layer_above(graph: nx.DiGraph[str]) -> None:
    """Each layer is built only on the layers below it."""
    names = [name for name, _ in LAYERS]
    found = upward_imports(graph, LAYERS)
    assert not found, f"upward imports (layers bottom to top: {names}):\n{_show(found)}"


def test_separate_modules_do_not_import_each_other(graph: nx.DiGraph[str]) -> None:
    """The step executor imports neither the scheduler nor the store's read model."""
    found = {edge for edge in SEPARATE if graph.has_edge(*edge)}
    assert not found, _show(found)


def _write(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_walk_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """A cycle closed by a function-level import is found; relative, package and
    TYPE_CHECKING imports are edges too."""
    files = {
        "__init__.py": "",
        "low.py": "def f():\n    from pkg.sub import high\n",
        "sub/__init__.py": "from . import high\n",
        "sub/high.py": "from ..low import f\n",
        "other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.low\n",
    }
    graph = import_graph(_write(tmp_path / "pkg", files), "pkg")
    assert set(graph.edges) == {
        ("pkg.low", "pkg.sub.high"),
        ("pkg.sub", "pkg.sub.high"),
        ("pkg.sub.high", "pkg.low"),
        ("pkg.other", "pkg.low"),
    }
    assert import_cycles(graph) == [["pkg.low", "pkg.sub.high"]]
    files["low.py"] = "def f(): ...\n"
    assert import_cycles(import_graph(_write(tmp_path / "fixed" / "pkg", files), "pkg")) == []


def test_the_walk_finds_an_upward_import(tmp_path: Path) -> None:
    """A lower layer importing a name from a higher one is reported, a downward one not."""
    root = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "from pkg.top import run\n",
            "base.py": "def g():\n    from pkg.top import run\n",
            "top.py": "from pkg.base import g\ndef run(): ...\n",
        },
    )
    layers = (("base", ("pkg.base",)), ("top", ("pkg.top",)), ("api", ("pkg",)))
    graph = import_graph(root, "pkg")
    assert upward_imports(graph, layers) == {("pkg.base", "pkg.top")}
