"""The driver seam: where the store's SQL runs, and how rows are bound for it.

The write path (``thinktank.store._fold``) builds SQLAlchemy Core statements; this
module compiles them once per dialect and column set (:class:`Statements`), converts
rows with the dialect's own bind processors, and runs them through an
:class:`Executor` inside one write transaction (:class:`Writer`).

On SQLite (aiosqlite) and PostgreSQL (asyncpg) the executor is the driver connection
under a SQLAlchemy one: SQLAlchemy's aiosqlite adapter makes three or four trips to
the driver's thread per statement and asyncpg's ``executemany`` sends every row of a
statement in one pipelined round trip. Measured with ``bench/store.py`` (``batch 2``
rows, the write rate of a session whose model calls take a realistic second): a
write costs 0.6-0.9 ms here against 2.6-2.8 ms through SQLAlchemy's connection, three
to four times as much, so the direct path stays, and this module is the only one that
touches a driver connection. Any other driver goes through SQLAlchemy
(:class:`SQLAlchemyExecutor`).

The consensus-cache lookup (:class:`Lookup`) is one small indexed query on a driver
connection of its own: through SQLAlchemy's async layer it cost ~0.5 ms of the
~1.3 ms a lookup took, the rest being the pooled connection's checkout and its
transaction.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Protocol, cast

import aiosqlite
import anyio
import orjson
from sqlalchemy import DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ClauseElement

__all__ = [
    "AiosqliteExecutor",
    "AsyncpgExecutor",
    "Executor",
    "Lookup",
    "SQLAlchemyExecutor",
    "Statements",
    "Writer",
    "driver_errors",
    "is_direct",
    "same",
    "sqlite_datetime",
]


def is_direct(engine: AsyncEngine) -> bool:
    """Whether the store talks to ``engine``'s driver itself (aiosqlite, asyncpg)."""
    dialect = engine.dialect
    return dialect.name == "sqlite" or (
        dialect.name == "postgresql" and dialect.driver == "asyncpg"
    )


def driver_errors(engine: AsyncEngine) -> tuple[type[BaseException], ...]:
    """What the store's work on ``engine`` raises when the database fails.

    SQLAlchemy's errors and OSError, the driver's own (raised by a direct connection),
    and LookupError (a batch naming a step nobody stored).
    """
    errors: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, LookupError)
    if engine.dialect.name == "sqlite":
        return (*errors, sqlite3.Error)
    if engine.dialect.driver == "asyncpg":
        # Imported by name: asyncpg is an optional dependency, without type hints.
        asyncpg: Any = importlib.import_module("asyncpg")
        driver = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
        return (*errors, *driver)
    return errors


def same(value: Any) -> Any:
    return value


def sqlite_datetime(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text (UTC, no zone), in a fifth of its time.

    orjson writes a datetime (``"2026-03-01T12:00:00.000001+00:00"``) in a third of the
    time of ``isoformat``; it leaves out a zero microsecond, which ``isoformat`` is then
    asked to write. A zone other than UTC is converted first.
    """
    if value.tzinfo is not None and value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    if value.microsecond:
        try:
            return orjson.dumps(value)[1:27].decode().replace("T", " ")
        except TypeError:  # a datetime subclass orjson does not write
            pass
    return value.isoformat(" ", "microseconds")[:26]


def _pg_text(value: str) -> str:
    """``value`` without NUL characters (U+FFFD instead), which PostgreSQL text refuses.

    SQLite stores them; on PostgreSQL a model reply holding one would fail its batch.
    """
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


class Executor(Protocol):
    """Where the write path sends its SQL: a connection inside a write transaction."""

    async def run_many(self, sql: str, rows: list[Any]) -> None:
        """Execute ``sql`` once per row (DBAPI ``executemany``)."""

    async def fetch(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Execute a query and return all its rows."""


class SQLAlchemyExecutor:
    """Runs driver SQL through a SQLAlchemy connection (any dialect)."""

    def __init__(self, conn: AsyncConnection) -> None:
        """Use ``conn``, which has a transaction begun."""
        self._conn = conn

    async def run_many(self, sql: str, rows: list[Any]) -> None:
        """Execute ``sql`` once per row."""
        await self._conn.exec_driver_sql(sql, rows)

    async def fetch(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Execute a query and return all its rows."""
        result = await self._conn.exec_driver_sql(sql, params)
        return [tuple(row) for row in result.all()]


class AiosqliteExecutor:
    """Runs driver SQL on the aiosqlite connection under a SQLAlchemy one.

    SQLAlchemy's aiosqlite adapter makes three or four trips to the driver's thread
    per statement (open a cursor, execute, fetch, close); this makes one.
    """

    def __init__(self, db: aiosqlite.Connection) -> None:
        """Use ``db``, which has a transaction begun."""
        self._db = db

    async def run_many(self, sql: str, rows: list[Any]) -> None:
        """Execute ``sql`` once per row."""
        await self._db.executemany(sql, rows)

    async def fetch(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Execute a query and return all its rows."""
        return [tuple(row) for row in await self._db.execute_fetchall(sql, params)]


class AsyncpgExecutor:
    """Runs driver SQL on the asyncpg connection under a SQLAlchemy one.

    ``executemany`` sends every row of a statement in one pipelined round trip (the
    statement is prepared once per connection and cached by asyncpg).
    """

    def __init__(self, db: Any) -> None:
        """Use ``db`` (an ``asyncpg.Connection``), which has a transaction begun."""
        self._db = db

    async def run_many(self, sql: str, rows: list[Any]) -> None:
        """Execute ``sql`` once per row."""
        if len(rows) == 1:
            await self._db.execute(sql, *rows[0])
        else:
            await self._db.executemany(sql, rows)

    async def fetch(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """Execute a query and return all its rows."""
        return [tuple(row) for row in await self._db.fetch(sql, *params)]


class _Prepared:
    """A Core statement compiled for a dialect, with a converter for its rows."""

    __slots__ = ("convert", "sql")

    def __init__(self, statement: ClauseElement, keys: Iterable[str], dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect, column_keys=sorted(keys))
        self.sql: str = compiled.string
        binds = compiled.binds
        positiontup = compiled.positiontup
        names: list[str] = list(positiontup if positiontup is not None else binds)
        processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(names):
            type_ = binds[name].type
            process = type_.dialect_impl(dialect).bind_processor(dialect)
            if dialect.name == "sqlite" and isinstance(type_, DateTime):
                process = sqlite_datetime
            elif dialect.name == "postgresql" and isinstance(type_, String) and process is None:
                process = _pg_text
            if process is not None:
                processors.append((i, process))
        positional = positiontup is not None
        get = itemgetter(*names)
        one = len(names) == 1

        def convert(row: dict[str, Any]) -> Any:
            got = get(row)
            values = [got] if one else list(got)
            for i, process in processors:
                value = values[i]
                if value is not None:
                    values[i] = process(value)
            return tuple(values) if positional else dict(zip(names, values, strict=True))

        self.convert: Callable[[dict[str, Any]], Any] = convert


class Statements:
    """The write path's statements for one dialect, compiled once per column set."""

    def __init__(self, dialect: Dialect) -> None:
        """Compile for ``dialect``."""
        self._dialect = dialect
        self._prepared: dict[tuple[int, frozenset[str]], _Prepared] = {}

    def _get(self, statement: ClauseElement, keys: frozenset[str]) -> _Prepared:
        cache_key = (id(statement), keys)
        prepared = self._prepared.get(cache_key)
        if prepared is None:
            prepared = self._prepared[cache_key] = _Prepared(statement, keys, self._dialect)
        return prepared

    async def run(
        self, executor: Executor, statement: ClauseElement, rows: Iterable[dict[str, Any]]
    ) -> None:
        """Execute ``statement`` for every row, one executemany per set of row keys."""
        groups: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in rows:
            keys = frozenset(row)
            group = groups.get(keys)
            if group is None:
                groups[keys] = [row]
            else:
                group.append(row)
        for keys, group in groups.items():
            prepared = self._get(statement, keys)
            convert = prepared.convert
            await executor.run_many(prepared.sql, [convert(row) for row in group])

    async def fetch(
        self, executor: Executor, query: ClauseElement, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of ``query``, its bound parameters set from ``params``."""
        prepared = self._get(query, frozenset())
        return await executor.fetch(prepared.sql, prepared.convert(params))


class _DriverConnection:
    """One driver connection (aiosqlite or asyncpg) under a SQLAlchemy one, opened on
    first use and replaced when it breaks."""

    def __init__(self, engine: AsyncEngine, errors: tuple[type[BaseException], ...]) -> None:
        self._engine = engine
        self._errors = errors
        self._sqlite = engine.dialect.name == "sqlite"
        self._conn: AsyncConnection | None = None
        self.db: Any = None
        """The driver connection, once opened (None before and after :meth:`close`)."""

    async def get(self) -> Any:
        """The driver connection, opened on first use (again once dropped).

        A PostgreSQL connection the server has dropped (a restart, an idle timeout)
        shows as closed: it is replaced.
        """
        db = self.db
        if db is not None and not self._sqlite and db.is_closed():
            await self.drop()
            db = None
        if db is None:
            self._conn = await self._engine.connect()
            raw = await self._conn.get_raw_connection()
            db = self.db = raw.driver_connection
        return db

    async def drop(self) -> None:
        """Forget the connection (it is broken): the next use opens another."""
        conn, self._conn, self.db = self._conn, None, None
        if conn is not None:
            try:
                await conn.invalidate()
                await conn.close()
            except self._errors:
                pass

    async def close(self) -> None:
        """Give the connection back to the engine's pool."""
        conn, self._conn, self.db = self._conn, None, None
        if conn is not None:
            await conn.close()


class Writer(_DriverConnection):
    """The store's write transactions: on its own driver connection when the driver
    allows (:func:`is_direct`), else on a pooled SQLAlchemy connection.

    The caller runs one transaction at a time (the store's write lock): SQLite would
    serialise them anyway, and one kept connection saves a pool checkout per batch.
    SQLite transactions begin with ``BEGIN IMMEDIATE`` (the write lock up front).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        errors: tuple[type[BaseException], ...],
        *,
        direct: bool | None = None,
    ) -> None:
        """Write to ``engine``; ``direct`` overrides :func:`is_direct`."""
        super().__init__(engine, errors)
        self.direct = is_direct(engine) if direct is None else direct
        self._rollback_errors: tuple[type[BaseException], ...] = (*errors, ValueError)
        """What a failed rollback raises (aiosqlite: ValueError once closed)."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        """An executor inside a write transaction, committed when the block ends and
        rolled back (shielded from cancellation) when it raises."""
        if not self.direct:
            async with self._engine.begin() as conn:
                yield SQLAlchemyExecutor(conn)
            return
        db = await self._connection()
        try:
            if self._sqlite:
                # Inside the try: a BEGIN cancelled while the driver's thread runs it may
                # still open the transaction, which the rollback then closes.
                await db.execute("BEGIN IMMEDIATE")
            yield AiosqliteExecutor(db) if self._sqlite else AsyncpgExecutor(db)
            if self._sqlite:
                await db.commit()
            else:
                await db.execute("COMMIT")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abandon(db)
            raise

    async def _connection(self) -> Any:
        """The driver connection; on PostgreSQL in a transaction begun.

        A PostgreSQL connection dropped since the last write shows only when used: its
        BEGIN fails, nothing was written, and the write goes on with a new connection.
        """
        db = await self.get()
        if self._sqlite:
            return db
        try:
            await db.execute("BEGIN")
        except self._errors:
            if not db.is_closed():
                raise
            await self.drop()
            db = await self.get()
            await db.execute("BEGIN")
        return db

    async def _abandon(self, db: Any) -> None:
        """Roll back a failed write; drop the connection if even that fails."""
        try:
            if self._sqlite:
                await cast(aiosqlite.Connection, db).rollback()
            elif not db.is_closed() and db.is_in_transaction():
                await db.execute("ROLLBACK")
        except self._rollback_errors:
            await self.drop()


class Lookup(_DriverConnection):
    """Point queries (the consensus cache) on a driver connection of their own.

    Each is one statement outside any transaction (SQLite and PostgreSQL run it
    as its own, so it sees one snapshot), one trip to the driver.
    """

    def __init__(self, engine: AsyncEngine, errors: tuple[type[BaseException], ...]) -> None:
        """Query ``engine`` (whose driver :func:`is_direct`)."""
        super().__init__(engine, errors)
        # asyncpg refuses a second operation on a connection that runs one.
        # fast_acquire: an uncontended lookup takes it without a trip round the loop.
        self._lock = anyio.Lock(fast_acquire=True)

    async def fetch(
        self, statements: Statements, query: ClauseElement, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of ``query``, its bound parameters set from ``params``."""
        async with self._lock:
            db = await self.get()
            executor = AiosqliteExecutor(db) if self._sqlite else AsyncpgExecutor(db)
            try:
                return await statements.fetch(executor, query, params)
            except self._errors:
                if not self._sqlite and db.is_closed():
                    await self.drop()
                raise
