"""``store=`` means the same in run, iter, run_many and execute_parallel: omitted -> the
default store, a str -> opened and closed by the call, a Store -> used and left open,
None -> nothing recorded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import thinktank
from thinktank.session.loading import parse_session

from .conftest import CallLog, CountingModel

pytestmark = pytest.mark.anyio

Entry = Callable[..., Awaitable[Any]]


def _models() -> dict[str, thinktank.ModelClient]:
    log = CallLog()
    return {n: CountingModel(n, log) for n in "ab"}


async def _run(**store: Any) -> None:
    spec = parse_session(
        {"name": "t", "steps": [{"id": "s", "model": "a", "prompt": "p"}]}, known_models=["a"]
    )
    await thinktank.run(spec, models=_models(), **store)


async def _iter(**store: Any) -> None:
    spec = parse_session(
        {"name": "t", "steps": [{"id": "s", "model": "a", "prompt": "p"}]}, known_models=["a"]
    )
    async with thinktank.iter(spec, models=_models(), **store) as run:
        async for _ in run:
            pass


async def _run_many(**store: Any) -> None:
    spec = parse_session(
        {"name": "t", "steps": [{"id": "s", "model": "a", "prompt": "p"}]}, known_models=["a"]
    )
    await thinktank.run_many(spec, [{}], models=_models(), **store)


async def _execute_parallel(**store: Any) -> None:
    await thinktank.execute_parallel("q", {"models": ["a", "b"]}, models=_models(), **store)


ENTRIES = [_run, _iter, _run_many, _execute_parallel]


async def _sessions(path: Path) -> int:
    async with await thinktank.Store.open(str(path)) as store:
        return len(await store.list_sessions())


def _closed(path: Path) -> bool:
    """SQLite removes the WAL file when the last connection to the database closes."""
    return path.exists() and not Path(f"{path}-wal").exists()


def _databases(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if ".db" in p.name)


@pytest.fixture
def default_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "default.db"
    monkeypatch.setenv("THINKTANK_DB", str(path))
    return path


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.__name__.lstrip("_"))
async def test_omitted_records_in_the_default_store_and_closes_it(
    entry: Entry, default_db: Path
) -> None:
    await entry()
    assert _closed(default_db)
    assert await _sessions(default_db) == 1


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.__name__.lstrip("_"))
async def test_a_path_is_opened_and_closed_by_the_call(
    entry: Entry, default_db: Path, tmp_path: Path
) -> None:
    path = tmp_path / "given.db"
    await entry(store=str(path))
    assert _closed(path) and _databases(tmp_path) == ["given.db"]
    assert await _sessions(path) == 1


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.__name__.lstrip("_"))
async def test_a_store_is_used_and_left_open(
    entry: Entry, default_db: Path, tmp_path: Path
) -> None:
    async with await thinktank.Store.open(str(tmp_path / "mine.db")) as store:
        await entry(store=store)
        await entry(store=store)
        assert len(await store.list_sessions()) == 2  # still open, both recorded
    assert "default.db" not in _databases(tmp_path)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.__name__.lstrip("_"))
async def test_none_records_nothing(entry: Entry, default_db: Path, tmp_path: Path) -> None:
    await entry(store=None)
    assert _databases(tmp_path) == []
