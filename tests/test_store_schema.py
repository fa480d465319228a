"""Schema versions: migrations create, upgrade and guard the database, on both backends."""

from __future__ import annotations

import sqlite3
from datetime import UTC
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import JSON, Connection, DateTime, UniqueConstraint, insert, inspect, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import SQLModel

from tests import pg
from tests.test_store import T0, at, new_id, single_step_events, step_info
from thinktank.errors import StoreError
from thinktank.events import StepsAdded
from thinktank.store import Store, _create_engine
from thinktank.store._migrations import (
    MIGRATIONS,
    MIGRATIONS_TABLE,
    applied_migrations,
    initial_tables,
    upgrade,
)

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

NAMES = [migration.name for migration in MIGRATIONS]


def _columns(conn: Connection) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Table -> column -> (type family, length, nullable), as the database reports them."""
    found: dict[str, dict[str, tuple[Any, ...]]] = {}
    inspector = inspect(conn)
    for table in inspector.get_table_names():
        if table.startswith("thinktank_"):
            found[table] = {
                column["name"]: (
                    column["type"]._type_affinity,
                    getattr(column["type"], "length", None),
                    column["nullable"],
                )
                for column in inspector.get_columns(table)
            }
    return found


def _indexes(conn: Connection) -> dict[str, set[tuple[Any, ...]]]:
    """Table -> its indexes and unique constraints (name, columns), as reported."""
    inspector = inspect(conn)
    found: dict[str, set[tuple[Any, ...]]] = {}
    for table in inspector.get_table_names():
        if table.startswith("thinktank_"):
            found[table] = {
                (index["name"], tuple(index["column_names"]))
                for index in inspector.get_indexes(table)
                if not index.get("duplicates_constraint")
            } | {
                (unique["name"], tuple(unique["column_names"]))
                for unique in inspector.get_unique_constraints(table)
            }
    return found


def _declared_indexes() -> dict[str, set[tuple[Any, ...]]]:
    """What ``thinktank.store.tables`` declares, in the shape of :func:`_indexes`."""
    return {
        table.name: {(index.name, tuple(c.name for c in index.columns)) for index in table.indexes}
        | {
            (constraint.name, tuple(c.name for c in constraint.columns))
            for constraint in table.constraints
            if isinstance(constraint, UniqueConstraint)
        }
        for table in SQLModel.metadata.sorted_tables
        if table.name.startswith("thinktank_")
    }


def _declared() -> dict[str, dict[str, tuple[Any, ...]]]:
    """What ``thinktank.store.tables`` declares, in the shape of :func:`_columns`."""
    return {
        table.name: {
            column.name: (
                column.type._type_affinity,
                getattr(column.type, "length", None),
                column.nullable,
            )
            for column in table.columns
        }
        for table in SQLModel.metadata.sorted_tables
        if table.name.startswith("thinktank_")
    }


async def test_fresh_database_records_every_migration(db_url: str) -> None:
    """A new database gets every migration, recorded with its time; reopening adds none."""
    async with await Store.open(db_url) as store:
        applied = await store.migrations()
    assert [name for name, _ in applied] == NAMES
    assert all(when.tzinfo is UTC for _, when in applied)
    engine, _ = _create_engine(db_url)
    try:
        assert await upgrade(engine) == []
    finally:
        await engine.dispose()
    async with await Store.open(db_url) as store:
        assert await store.migrations() == applied


async def test_migrated_schema_is_the_declared_schema(db_url: str) -> None:
    """Running the migrations gives exactly the tables, columns and indexes of tables.py."""
    async with await Store.open(db_url):
        pass
    engine, _ = _create_engine(db_url)
    try:
        async with engine.connect() as conn:
            columns = await conn.run_sync(_columns)
            indexes = await conn.run_sync(_indexes)
            steps = await conn.run_sync(lambda c: inspect(c).get_columns("thinktank_steps"))
            dialect = conn.dialect.name
    finally:
        await engine.dispose()
    assert columns == _declared()
    assert indexes == _declared_indexes()
    provenance = next(column["type"] for column in steps if column["name"] == "provenance")
    assert isinstance(provenance, JSONB if dialect == "postgresql" else JSON)
    if dialect == "postgresql":  # every datetime is TIMESTAMP WITH TIME ZONE
        assert all(
            column["type"].timezone for column in steps if isinstance(column["type"], DateTime)
        )


def _write_old_session(conn: Connection, sid: str, step_ids: tuple[str, str]) -> None:
    """Rows as thinktank 0.1 wrote them (no parent, provenance or lease columns)."""
    old = initial_tables().tables
    conn.execute(
        insert(old["thinktank_sessions"]).values(
            id=sid,
            name="old",
            status="completed",
            parallel_execution_config={"maxConcurrentSteps": 5},
            spec={"name": "old"},
            inputs={"q": "why?"},
            model_selection={},
            created_at=T0,
            started_at=T0,
            finished_at=at(2),
            steps_total=2,
            steps_completed=2,
            steps_failed=0,
            steps_skipped=0,
        )
    )
    for position, (key, row_id) in enumerate(zip(("a", "b"), step_ids, strict=True)):
        conn.execute(
            insert(old["thinktank_steps"]).values(
                id=row_id,
                session_id=sid,
                step_key=key,
                position=position,
                kind="prompt",
                depends_on=[],
                models=["m1"],
                prompt_template="Q {q}",
                status="completed",
                output="42",
                attempts=1,
                started_at=at(position),
                completed_at=at(position + 1),
            )
        )
    conn.execute(
        insert(old["thinktank_parallel_executions"]).values(
            id=new_id(),
            session_id=sid,
            step_id=step_ids[0],
            model_id="m1",
            attempt=1,
            status="ok",
            started_at=at(0.1),
            completed_at=at(0.6),
            response="42",
            tries=1,
        )
    )
    conn.execute(
        insert(old["thinktank_events"]).values(
            session_id=sid, type="session_started", at=T0, payload={"type": "session_started"}
        )
    )


@pytest.mark.parametrize("recorded", [True, False], ids=["0001-recorded", "unrecorded"])
async def test_database_of_the_first_schema_is_upgraded(db_url: str, recorded: bool) -> None:
    """A database at 0001 (recorded, or from before migrations were) gains the new columns
    and keeps its data."""
    sid, step_ids = new_id(), (new_id(), new_id())
    engine, _ = _create_engine(db_url)
    try:
        if recorded:
            assert await upgrade(engine, MIGRATIONS[:1]) == ["0001_initial"]
        else:  # what thinktank 0.1 did: create the tables, record nothing
            async with engine.begin() as conn:
                await conn.run_sync(initial_tables().create_all)
        async with engine.begin() as conn:
            await conn.run_sync(_write_old_session, sid, step_ids)
            before = await conn.run_sync(_columns)
    finally:
        await engine.dispose()
    assert "parent" not in before["thinktank_steps"]
    assert "lease_owner" not in before["thinktank_sessions"]

    async with await Store.open(db_url) as store:
        assert [name for name, _ in await store.migrations()] == NAMES
        stored = await store.get_session(sid)
        assert (stored.name, stored.status, stored.steps_total) == ("old", "completed", 2)
        assert stored.started_at == T0 and stored.finished_at == at(2)
        assert [(s.step_key, s.id, s.output) for s in stored.steps] == [
            ("a", step_ids[0], "42"),
            ("b", step_ids[1], "42"),
        ]
        assert [(s.parent, s.provenance) for s in stored.steps] == [(None, []), (None, [])]
        assert [c.response for c in stored.steps[0].calls] == ["42"]
        assert (await store.count_rows())["thinktank_events"] == 1
        # The new columns work on the old rows: leases, and steps added at run time.
        assert await store.claim_session(sid, worker_id="w1", ttl_s=30)
        added = StepsAdded(session_id=sid, parent="b", steps=(step_info("c", 2),), at=at(3))
        await store.write([added, *single_step_events(sid, "c", start=3)])
        grown = await store.get_session(sid)
        assert (grown.steps_total, grown.step("c").parent) == (3, "b")
    engine, _ = _create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_columns) == _declared()
    finally:
        await engine.dispose()


async def test_newer_schema_is_refused(db_url: str) -> None:
    """A database with a migration this code does not know is refused with one clear line."""
    async with await Store.open(db_url):
        pass
    engine, _ = _create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(MIGRATIONS_TABLE).values(name="0099_from_the_future", applied_at=T0)
            )
    finally:
        await engine.dispose()
    with pytest.raises(StoreError, match="database schema is newer than this thinktank") as err:
        await Store.open(db_url)
    message = str(err.value)
    assert "\n" not in message
    assert "0099_from_the_future" in message and message.endswith("upgrade thinktank")
    # A store that knows fewer migrations than the database has is refused the same way.
    engine, _ = _create_engine(db_url)
    try:
        with pytest.raises(StoreError, match="0002_dynamic_steps_and_leases"):
            await upgrade(engine, MIGRATIONS[:1])
    finally:
        await engine.dispose()


async def test_concurrent_opens_of_a_fresh_database(db_url: str) -> None:
    """Eight stores opening one new database at once: each migration runs exactly once."""
    stores: list[Store] = []

    async def open_one() -> None:
        stores.append(await Store.open(db_url))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(open_one)
        assert len(stores) == 8
        async with stores[0]._reader() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM thinktank_migrations"))
            applied = await conn.run_sync(applied_migrations)
    finally:
        for store in stores:
            await store.close()
    assert count == len(NAMES)
    assert applied is not None and sorted(applied) == NAMES


async def test_opening_a_current_sqlite_store_writes_nothing(tmp_path: Path) -> None:
    """A store already at the latest migration opens while another process holds the
    write lock: the open only reads the migrations table (no DDL, no write)."""
    path = tmp_path / "tt.db"
    await (await Store.open(str(path))).close()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with anyio.fail_after(5):
            store = await Store.open(str(path), busy_timeout_s=0.2)
        await store.close()
        other.execute("ROLLBACK")
    finally:
        other.close()
    async with await Store.open(str(path)) as store:
        assert [name for name, _ in await store.migrations()] == NAMES
