"""The store: every session, step, model call and consensus, in SQL.

:class:`Store` is the one async facade over the database. The run's recorder hands it
batches of events (:meth:`Store.write`); the CLI and replay read sessions back as
pydantic models (:meth:`Store.list_sessions`, :meth:`Store.get_session`). SQLite is the
default and PostgreSQL (``postgresql+asyncpg://``) serves many workers.

SQLite is opened for several writers at once, in processes or tasks: WAL journal, a
30 s busy timeout, foreign keys on, and every write transaction begun with
``BEGIN IMMEDIATE``. A plain ``BEGIN`` takes the write lock only at the first write,
and a transaction that has to upgrade its lock while another writer holds it fails at
once with "database is locked", whatever the timeout; ``BEGIN IMMEDIATE`` waits for the
lock up front, under the timeout. Reads begin a deferred transaction, so they never
wait for writers. ``synchronous=NORMAL`` (safe in WAL mode: a crash of the process
loses nothing committed, a power cut may lose the last transactions) keeps commits from
waiting on the disk.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, cast

import aiosqlite
import anyio
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from thinktank.errors import StoreError, UnknownSessionError
from thinktank.events import Event
from thinktank.store._read import (
    SessionSummary,
    StoredCall,
    StoredConsensus,
    StoredSession,
    StoredStep,
    count_rows,
    find_consensus,
    get_session,
    list_sessions,
)
from thinktank.store._write import (
    AiosqliteExecutor,
    EventLog,
    SQLAlchemyExecutor,
    Statements,
    StepRowCache,
    apply_batch,
)

__all__ = [
    "DEFAULT_DB_ENV",
    "SessionSummary",
    "Store",
    "StoredCall",
    "StoredConsensus",
    "StoredSession",
    "StoredStep",
    "default_db_url",
    "normalize_db_url",
]

DEFAULT_DB_ENV = "THINKTANK_DB"
"""Environment variable naming the database (a URL or a file path)."""

_DEFAULT_URL = "sqlite+aiosqlite:///./thinktank.db"
_BUSY_TIMEOUT_MS = 30_000
_READ_OPTION = "thinktank_read"
"""Execution option marking a connection that only reads (deferred BEGIN)."""

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def default_db_url() -> str:
    """The database to use when none is given: ``$THINKTANK_DB`` or ``./thinktank.db``."""
    return os.environ.get(DEFAULT_DB_ENV) or _DEFAULT_URL


def normalize_db_url(url_or_path: str) -> str:
    """An async SQLAlchemy URL for a URL or a file path.

    A bare path (``runs/tt.db``, ``~/tt.db``) becomes ``sqlite+aiosqlite:///<absolute
    path>``; ``sqlite://`` URLs get the aiosqlite driver and ``postgresql://`` ones
    asyncpg; a URL that names its driver is kept as it is.

    Raises:
        StoreError: ``url_or_path`` is empty or not a valid URL.
    """
    text = url_or_path.strip()
    if not text:
        raise StoreError("no database given: pass a URL or a file path")
    if "://" not in text:
        if text == ":memory:":
            return "sqlite+aiosqlite:///:memory:"
        path = os.path.abspath(os.path.expanduser(text))
        return f"sqlite+aiosqlite:///{path}"
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {text!r}") from exc
    driver = _ASYNC_DRIVERS.get(url.drivername)
    if driver is None:
        return text
    return url.set(drivername=driver).render_as_string(hide_password=False)


def _one_line(exc: BaseException) -> str:
    """The driver's message of ``exc`` on one line, without SQLAlchemy's SQL dump."""
    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = exc.orig
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, busy timeout, foreign keys, and BEGIN IMMEDIATE for writes."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 driver: ``_on_begin`` issues it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # The busy timeout goes first: switching to WAL waits for other openers.
            cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_READ_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_path_problem(url: URL) -> str | None:
    """Why the SQLite file of ``url`` cannot be opened, if that shows before connecting.

    Checked up front because a failed aiosqlite connect leaves its worker thread to
    report to an event loop that may be gone by then.
    """
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if url.query.get("uri"):
        return None
    path = os.path.abspath(database)
    parent = os.path.dirname(path)
    if os.path.isdir(path):
        return f"{path} is a directory"
    if not os.path.exists(path):
        if not os.path.exists(parent):
            return f"directory {parent} does not exist"
        if not os.path.isdir(parent):
            return f"{parent} is not a directory"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"directory {parent} is not writable"
    elif not os.access(path, os.R_OK):
        return f"{path} is not readable"
    return None


def _create_tables(conn: Connection) -> None:
    tables = [t for t in SQLModel.metadata.sorted_tables if t.name.startswith("thinktank_")]
    SQLModel.metadata.create_all(conn, tables=tables)


class Store:
    """An open database of sessions; async; one per event loop.

    Open it with :meth:`open` (or ``async with await Store.open(...)``) and close it
    with :meth:`close`. Safe to share between tasks of one loop; several stores, in one
    process or many, may write the same SQLite file at once.

    Attributes:
        url: The database URL, with any password hidden.
    """

    def __init__(self, *, engine: AsyncEngine, url: str) -> None:
        """Wrap an engine whose tables exist; use :meth:`open` instead."""
        self._engine = engine
        self.url = url
        self._sqlite = engine.dialect.name == "sqlite"
        # An in-memory database is one connection shared by every checkout: reads
        # must then wait for writes as well.
        self._shared_connection = isinstance(engine.pool, StaticPool)
        # One writer at a time per store: SQLite would serialise them anyway, and its
        # busy handler sleeps in steps of up to 100 ms where this lock wakes at once.
        self._write_lock = anyio.Lock()
        self._step_rows: StepRowCache = {}
        self._statements = Statements(engine.dialect)
        self._event_log = EventLog(engine.dialect)
        self._closed = False
        self._writer: AsyncConnection | None = None
        self._writer_db: aiosqlite.Connection | None = None

    @classmethod
    async def open(cls, url: str | None = None) -> Store:
        """Open (and if needed create) the database at ``url``.

        Args:
            url: A SQLAlchemy URL or a SQLite file path; None uses
                :func:`default_db_url`.

        Raises:
            StoreError: the database cannot be opened or its tables created.
        """
        full = normalize_db_url(url if url is not None else default_db_url())
        sa_url: URL = make_url(full)
        shown = sa_url.render_as_string(hide_password=True)
        if sa_url.get_backend_name() == "sqlite":
            problem = _sqlite_path_problem(sa_url)
            if problem is not None:
                raise StoreError(f"cannot open database {shown}: {problem}")
        try:
            engine = create_async_engine(sa_url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot open database {shown}: {_one_line(exc)}") from exc
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_create_tables)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open database {shown}: {_one_line(exc)}") from exc
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine=engine, url=shown)

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        if not self._closed:
            self._closed = True
            async with self._write_lock:
                writer, self._writer, self._writer_db = self._writer, None, None
                if writer is not None:
                    await writer.close()
            await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self.url} is closed")

    async def write(self, events: Sequence[Event]) -> None:
        """Persist a batch of events, in order, in one transaction.

        Creates and updates the session, step, call and consensus rows the events
        describe, and appends every event to ``thinktank_events``.

        Raises:
            StoreError: the database could not be written (nothing of the batch is).
        """
        if not events:
            return
        self._check_open()
        try:
            async with self._write_lock:
                if self._sqlite:
                    learnt, finished = await self._write_sqlite(events)
                else:
                    async with self._engine.begin() as conn:
                        learnt, finished = await apply_batch(
                            SQLAlchemyExecutor(conn),
                            events,
                            cache=self._step_rows,
                            statements=self._statements,
                            log=self._event_log,
                        )
        except (SQLAlchemyError, sqlite3.Error, OSError, LookupError) as exc:
            raise StoreError(f"cannot write to {self.url}: {_one_line(exc)}") from exc
        self._step_rows.update(learnt)
        for sid in finished:
            self._step_rows.pop(sid, None)

    async def _write_sqlite(self, events: Sequence[Event]) -> tuple[StepRowCache, list[str]]:
        """``write`` on SQLite: the batch goes straight to the store's aiosqlite connection.

        The store keeps one connection for writing (``_write_lock`` serialises writes
        anyway), which saves a pool checkout and checkin per batch.
        """
        db = await self._writer_connection()
        try:
            await db.execute("BEGIN IMMEDIATE")
            result = await apply_batch(
                AiosqliteExecutor(db),
                events,
                cache=self._step_rows,
                statements=self._statements,
                log=self._event_log,
            )
            await db.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abandon_write(db)
            raise
        return result

    async def _writer_connection(self) -> aiosqlite.Connection:
        """The aiosqlite connection this store writes with, opened on first use."""
        db = self._writer_db
        if db is None:
            self._writer = await self._engine.connect()
            raw = await self._writer.get_raw_connection()
            db = self._writer_db = cast(aiosqlite.Connection, raw.driver_connection)
        return db

    async def _abandon_write(self, db: aiosqlite.Connection) -> None:
        """Roll back a failed write; drop the writer connection if even that fails."""
        try:
            await db.rollback()
        except (sqlite3.Error, ValueError):
            writer, self._writer, self._writer_db = self._writer, None, None
            if writer is not None:
                await writer.invalidate()
                await writer.close()

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading, in a deferred (snapshot) transaction."""
        async with AsyncExitStack() as stack:
            if self._shared_connection:
                await stack.enter_async_context(self._write_lock)
            conn = await stack.enter_async_context(self._engine.connect())
            if self._sqlite:
                await conn.execution_options(**{_READ_OPTION: True})
            yield conn

    async def list_sessions(self, *, limit: int | None = None) -> list[SessionSummary]:
        """Stored sessions, newest first.

        Args:
            limit: At most this many.

        Raises:
            StoreError: the database could not be read.
        """
        self._check_open()
        try:
            async with self._reader() as conn:
                return await list_sessions(conn, limit)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot read {self.url}: {_one_line(exc)}") from exc

    async def get_session(self, id_or_prefix: str) -> StoredSession:
        """A whole session by id, or by a unique prefix of at least 4 characters.

        Raises:
            UnknownSessionError: no session matches, or the prefix matches several.
            StoreError: the database could not be read.
        """
        self._check_open()
        try:
            async with self._reader() as conn:
                return await get_session(conn, id_or_prefix)
        except UnknownSessionError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot read {self.url}: {_one_line(exc)}") from exc

    async def find_consensus(self, cache_key: str) -> StoredConsensus | None:
        """The newest stored consensus under ``cache_key`` (the consensus cache)."""
        self._check_open()
        try:
            async with self._reader() as conn:
                return await find_consensus(conn, cache_key)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot read {self.url}: {_one_line(exc)}") from exc

    async def count_rows(self) -> dict[str, int]:
        """Table name -> number of rows, for every thinktank table."""
        self._check_open()
        try:
            async with self._reader() as conn:
                return await count_rows(conn)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot read {self.url}: {_one_line(exc)}") from exc
