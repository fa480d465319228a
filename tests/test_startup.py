"""Startup: ``import thinktank``, ``thinktank --help`` and ``validate`` load no heavy module.

Each check runs in a fresh interpreter, since this test process has long imported
everything. How long startup takes is measured by ``bench/startup.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The store and its SQL stack, the HTTP client and rich: none of them is needed to
# print help or check a session file.
HEAVY = ("sqlalchemy", "sqlmodel", "thinktank.store", "httpx", "httpx2", "rich")


def _loaded_after(code: str, names: Sequence[str] = (*HEAVY, "pydantic", "anyio")) -> set[str]:
    """The modules of ``names`` (default: ``HEAVY``, pydantic and anyio) loaded after
    running ``code``."""
    probe = (
        f"{code}\n"
        "import json, sys\n"
        "names = " + repr(list(names)) + "\n"
        "print(json.dumps([n for n in names if n in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


_CLI = (
    "import contextlib, io\n"
    "from thinktank.cli.commands import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    main({args!r}, standalone_mode=False)\n"
)


def test_import_thinktank_loads_nothing_heavy() -> None:
    """``import thinktank`` loads none of the library's dependencies, not even pydantic."""
    assert _loaded_after("import thinktank") == set()


def test_help_loads_nothing_heavy() -> None:
    """``thinktank --help`` loads neither the store, SQLAlchemy, httpx, rich nor pydantic."""
    assert _loaded_after(_CLI.format(args=["--help"])) == set()


def test_validate_loads_no_store_http_or_rich() -> None:
    """``thinktank validate`` checks a file without the store, SQLAlchemy, httpx or rich."""
    args = ["validate", "sessions/diamond.yaml"]
    assert _loaded_after(_CLI.format(args=args)).isdisjoint(HEAVY)


def test_validate_loads_neither_networkx_nor_the_engine() -> None:
    """``thinktank validate`` of a valid file imports no networkx (~0.1 s: the graph
    library is for running and for printing cycles) and nothing of the engine."""
    args = ["validate", "sessions/diamond.yaml"]
    names = ["networkx", "thinktank.engine", "thinktank.events", "thinktank.session.graph"]
    assert _loaded_after(_CLI.format(args=args), names) == set()


@pytest.mark.parametrize("first", ["import thinktank.replay", "from thinktank import cli"])
def test_public_names_survive_submodule_imports(first: str) -> None:
    """``thinktank.replay`` is the function even once its submodule was imported first."""
    code = (
        f"{first}\n"
        "import inspect, thinktank\n"
        "assert inspect.iscoroutinefunction(thinktank.replay), thinktank.replay\n"
        "from thinktank import replay\n"
        "assert inspect.iscoroutinefunction(replay), replay\n"
    )
    _loaded_after(code)
