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

PostgreSQL (``postgresql+asyncpg://``, or ``postgresql://``, needs ``asyncpg``): writes go
to the asyncpg connection under a pooled one (``thinktank.store._sql``), each statement
of a batch as one pipelined ``executemany``; JSON columns are ``JSONB`` and datetimes
``TIMESTAMP WITH TIME ZONE``. Reads go through SQLAlchemy. Behaviour is the same as on
SQLite (the store tests run on both).

The schema is created and upgraded by named migrations (``thinktank_migrations`` records
those applied; see ``thinktank.store._migrations``) when a store opens. Several workers
can share one database and split sessions between them with leases
(:meth:`Store.claim_session`, :meth:`Store.heartbeat`, :meth:`Store.release`). A
session can be written before it runs (:meth:`Store.enqueue_session`, status
``queued``; ``thinktank.store._queue``), so that a worker needs only its id.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import anyio
from sqlalchemy import select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from thinktank.errors import (
    NoDatabaseError,
    StoreError,
    UnknownExperimentError,
    UnknownSessionError,
)
from thinktank.events import CachedConsensus, Event, SessionStarted
from thinktank.store import _experiments, _keys, _lease, _queue, _slots, _workers
from thinktank.store._fold import SESSION_EXISTS, StepRowCache, apply_batch
from thinktank.store._group import GroupCommit, Job
from thinktank.store._json import dumps, loads
from thinktank.store._keys import ApiKey
from thinktank.store._migrations import MIGRATIONS_TABLE, upgrade
from thinktank.store._read import (
    CONSENSUS_BY_KEY,
    SessionSummary,
    StoredCall,
    StoredConsensus,
    StoredSession,
    StoredStep,
    cached_consensus,
    count_rows,
    events_of,
    find_consensus,
    get_session,
    list_sessions,
)
from thinktank.store._sql import Executor, Lookup, Statements, Writer, driver_errors, is_direct
from thinktank.store._sqlite import BUSY_TIMEOUT_MS, CONNECT_ARGS, READ_OPTION, configure
from thinktank.store._write import EventLog

__all__ = [
    "DEFAULT_DB_ENV",
    "ApiKey",
    "SessionSummary",
    "Store",
    "StoredCall",
    "StoredConsensus",
    "StoredSession",
    "StoredStep",
    "default_db_url",
    "in_memory_db",
    "normalize_db_url",
]

T = TypeVar("T")

DEFAULT_DB_ENV = "THINKTANK_DB"
"""Environment variable naming the database (a URL or a file path)."""

_DEFAULT_URL = "sqlite+aiosqlite:///./thinktank.db"
_WRITE_RETRY_S = 60.0
_READ_OPTION = READ_OPTION

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def default_db_url() -> str:
    """The database to use when none is given: ``$THINKTANK_DB`` or ``./thinktank.db``."""
    return os.environ.get(DEFAULT_DB_ENV) or _DEFAULT_URL


def in_memory_db(url: str) -> bool:
    """Whether ``url`` (as :func:`normalize_db_url` gives it) is an in-memory SQLite
    database, which no other process can open."""
    parsed = make_url(url)
    database = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    )


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


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None and NUL characters as U+FFFD."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_finite(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _pg_json(value: Any) -> str:
    """JSON text that PostgreSQL's JSONB accepts.

    SQLite stores any JSON text, but JSONB rejects ``NaN``/``Infinity`` (which Python
    writes for non-finite floats) and ``\\u0000``: those become ``null`` and U+FFFD.
    The check is a substring test; only documents that fail it are walked.
    """
    text = dumps(value)
    if "NaN" in text or "Infinity" in text or "\\u0000" in text:
        text = dumps(_finite(value))
    return text


def _one_line(exc: BaseException) -> str:
    """The driver's message of ``exc`` on one line, without SQLAlchemy's SQL dump."""
    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = exc.orig
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _sqlite_path_problem(url: URL, *, create: bool) -> str | None:
    """Why the SQLite file of ``url`` cannot be opened, if that shows before connecting.

    Checked up front because a failed aiosqlite connect leaves its worker thread to
    report to an event loop that may be gone by then.
    """
    path = _sqlite_file(url)
    if path is None:
        return None
    parent = os.path.dirname(path)
    if os.path.isdir(path):
        return f"{path} is a directory"
    if not os.path.exists(path):
        if not create:
            return "no such file"
        if not os.path.exists(parent):
            return f"directory {parent} does not exist"
        if not os.path.isdir(parent):
            return f"{parent} is not a directory"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"directory {parent} is not writable"
    elif not os.access(path, os.R_OK):
        return f"{path} is not readable"
    return None


def _sqlite_file(url: URL) -> str | None:
    """The absolute path of the SQLite file ``url`` names; None for memory and URIs."""
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if url.query.get("uri"):
        return None
    return os.path.abspath(database)


def _create_engine(
    url: str,
    *,
    read_only: bool = False,
    create: bool = True,
    busy_timeout_s: float | None = None,
) -> tuple[AsyncEngine, str]:
    """An engine for ``url`` (a URL or a path), configured, and the URL to show.

    Raises:
        NoDatabaseError: the SQLite file does not exist and may not be created, or
            cannot be created where it is named.
        StoreError: the URL is not usable (unknown driver, driver not installed, a
            SQLite file that cannot be opened).
    """
    full = normalize_db_url(url)
    sa_url: URL = make_url(full)
    shown = sa_url.render_as_string(hide_password=True)
    where = _name_of(sa_url)
    backend = sa_url.get_backend_name()
    options: dict[str, Any] = {"json_serializer": dumps, "json_deserializer": loads}
    if backend == "sqlite":
        path = _sqlite_file(sa_url)
        problem = _sqlite_path_problem(sa_url, create=create and not read_only)
        if problem == "no such file":
            raise NoDatabaseError(f"no database at {where}")
        if problem is not None:
            error = StoreError if os.path.exists(path or "") else NoDatabaseError
            raise error(f"cannot open database {where}: {problem}")
        query: dict[str, str] = {}
        if busy_timeout_s is not None:
            query["timeout"] = str(busy_timeout_s)
        if read_only and path is not None:
            # SQLite opens a URI read-only: it can neither create nor change the file.
            query.update(mode="ro", uri="true")
            sa_url = sa_url.set(database="file:" + quote(path))
        if query:
            sa_url = sa_url.update_query_dict(query)
        options["connect_args"] = CONNECT_ARGS
    elif backend == "postgresql":
        options["json_serializer"] = _pg_json
        if read_only and sa_url.get_driver_name() == "asyncpg":
            settings = {"default_transaction_read_only": "on"}
            options["connect_args"] = {"server_settings": settings}
    try:
        engine = create_async_engine(sa_url, **options)
    except ImportError as exc:
        hint = " (pip install 'thinktank[postgres]')" if backend == "postgresql" else ""
        raise StoreError(f"cannot open database {shown}: {_one_line(exc)}{hint}") from exc
    except (SQLAlchemyError, ValueError) as exc:
        raise StoreError(f"cannot open database {shown}: {_one_line(exc)}") from exc
    if engine.dialect.name == "sqlite":
        configure(engine.sync_engine)
    return engine, shown


def _name_of(url: URL) -> str:
    """How messages name the database of ``url``: a SQLite file's path, else the URL
    (password hidden)."""
    if url.get_backend_name() == "sqlite":
        path = _sqlite_file(url)
        if path is not None:
            return path
    return url.render_as_string(hide_password=True)


class Store:
    """An open database of sessions; async; one per event loop.

    Open it with :meth:`open` (or ``async with await Store.open(...)``) and close it
    with :meth:`close`. Safe to share between tasks of one loop; several stores, in one
    process or many, may write the same database at once.

    Attributes:
        url: The database URL, with any password hidden.
        where: How messages name the database: a SQLite file's path, else ``url``.
        write_retry_s: How long a run keeps retrying writes that fail (a database
            locked past the busy timeout, a full disk) before it stops starting steps;
            the events stay in memory until they are written.
    """

    def __init__(self, *, engine: AsyncEngine, url: str, where: str | None = None) -> None:
        """Wrap an engine whose schema is current; use :meth:`open` instead."""
        self._engine = engine
        self.url = url
        self.where = where or url
        self.write_retry_s = _WRITE_RETRY_S
        self._sqlite = engine.dialect.name == "sqlite"
        self._postgres = engine.dialect.name == "postgresql"
        self._errors = driver_errors(engine)
        # An in-memory database is one connection shared by every checkout: reads
        # must then wait for writes as well.
        self._shared_connection = isinstance(engine.pool, StaticPool)
        # One writer at a time per store: SQLite would serialise them anyway, and its
        # busy handler sleeps in steps of up to 100 ms where this lock wakes at once.
        self._write_lock = anyio.Lock()
        self._step_rows: StepRowCache = {}
        # The shared limits whose rows this store made (or found): made once each.
        self._limit_rows: set[tuple[str, int]] = set()
        # Call slots whose give failed (the database was away): (key, slot, holder).
        self._gives_owed: set[tuple[str, int, str]] = set()
        self._statements = Statements(engine.dialect)
        self._event_log = EventLog(engine.dialect)
        self._closed = False
        self._writer = Writer(engine, self._errors)
        self._lookup = Lookup(engine, self._errors) if is_direct(engine) else None
        self._group = GroupCommit(
            self._write_lock, self._commit, (StoreError, LookupError, UnknownSessionError)
        )

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        read_only: bool = False,
        create: bool = True,
        busy_timeout_s: float | None = None,
        write_retry_s: float | None = None,
    ) -> Store:
        """Open the database at ``url``, creating or upgrading its schema if needed.

        Args:
            url: A SQLAlchemy URL or a SQLite file path; None uses
                :func:`default_db_url`.
            read_only: Open it only to read (SQLite: a ``mode=ro`` URI, which works on a
                read-only file and never writes it; PostgreSQL: read-only
                transactions). A database made by an older thinktank is upgraded
                once, read-write, first: reading it needs the current schema.
            create: Create the SQLite file when it does not exist (ignored when
                ``read_only``, which never creates one).
            busy_timeout_s: How long a SQLite write waits for another writer's lock
                before it fails (default 30 s, or the URL's ``?timeout=``).
            write_retry_s: How long a run keeps retrying writes that fail before it
                stops starting steps (:attr:`write_retry_s`; default twice the busy
                timeout on SQLite, 60 s on PostgreSQL).

        Raises:
            NoDatabaseError: a SQLite file that does not exist and is not to be
                created (or cannot be created where it is named).
            StoreError: the database cannot be opened or its schema created, or it was
                written by a newer thinktank (its schema has migrations this one does
                not know).
        """
        target = url if url is not None else default_db_url()
        engine, shown = _create_engine(
            target, read_only=read_only, create=create, busy_timeout_s=busy_timeout_s
        )
        try:
            missing = await upgrade(
                engine, shown=shown, read_options={_READ_OPTION: True}, apply=not read_only
            )
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open database {shown}: {_one_line(exc)}") from exc
        except BaseException:
            await engine.dispose()
            raise
        if read_only and missing:
            await engine.dispose()
            upgraded = await cls.open(target, create=False, busy_timeout_s=busy_timeout_s)
            await upgraded.close()
            return await cls.open(target, read_only=True, busy_timeout_s=busy_timeout_s)
        store = cls(engine=engine, url=shown, where=_name_of(make_url(normalize_db_url(target))))
        if write_retry_s is None:
            busy = busy_timeout_s
            if busy is None and store._sqlite:
                given = make_url(normalize_db_url(target)).query.get("timeout")
                busy = float(given) if isinstance(given, str) else BUSY_TIMEOUT_MS / 1000
            write_retry_s = 2 * busy if busy is not None else _WRITE_RETRY_S
        store.write_retry_s = write_retry_s
        return store

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        if not self._closed:
            self._closed = True
            async with self._write_lock:
                await self._writer.close()
            if self._lookup is not None:
                await self._lookup.close()
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
        describe, and appends every event to ``thinktank_events``. Batches written at
        the same time by other tasks may share the transaction (group commit); a
        failure of theirs does not fail this one.

        Raises:
            StoreError: the database could not be written (nothing of the batch is).
        """
        if events:
            await self._submit(Job(events))

    async def start_session(self, started: SessionStarted, *, worker_id: str, ttl_s: float) -> None:
        """Write a new session's first event and lease the session to ``worker_id``
        (see :meth:`claim_session`), in one transaction: no other worker can see it
        unleased.

        Raises:
            ValueError: ``worker_id`` is empty or ``ttl_s`` not a positive number.
            StoreError: the database could not be written (nothing is).
        """
        _check_lease_args(worker_id, ttl_s)
        await self._submit(Job([started], claim=(started.session_id, worker_id, ttl_s)))

    async def _submit(self, job: Job) -> None:
        self._check_open()
        await self._group.submit(job)

    async def _commit(self, jobs: list[Job]) -> None:
        """Write ``jobs`` in one transaction (the group commit's ``commit``)."""
        events = [event for job in jobs for event in job.events]
        try:
            async with self._writer.transaction() as executor:
                learnt, finished = await apply_batch(
                    executor,
                    events,
                    cache=self._step_rows,
                    statements=self._statements,
                    log=self._event_log,
                )
                for job in jobs:
                    await self._lease_changes(executor, job)
        except self._errors as exc:
            raise StoreError(f"cannot write to {self.where}: {_one_line(exc)}") from exc
        self._step_rows.update(learnt)
        for sid in finished:
            self._step_rows.pop(sid, None)

    async def _lease_changes(self, executor: Executor, job: Job) -> None:
        """The lease changes ``job`` asks for, in the write transaction of its events."""
        statements, postgres = self._statements, self._postgres
        if job.claim is not None:
            rows = _lease.claim_new_rows(*job.claim, postgres=postgres)
            await statements.run(executor, _lease.claim_new_statement(postgres), [rows])
        if job.release is not None:
            sid, worker_id = job.release
            params = {"b_id": sid, "b_owner": worker_id}
            job.released = bool(await statements.fetch(executor, _lease.RELEASE, params))
            if not job.released and not await statements.fetch(
                executor, SESSION_EXISTS, {"sid": sid}
            ):
                raise UnknownSessionError(f"no stored session has the id {sid!r}")

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

    @asynccontextmanager
    async def _lease_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction for a lease change (``BEGIN IMMEDIATE`` on SQLite).

        On SQLite it waits for this store's own writes first: they would hold the
        database's write lock, which the busy handler polls for in steps of up to 100 ms.
        """
        async with AsyncExitStack() as stack:
            if self._sqlite:
                await stack.enter_async_context(self._write_lock)
            yield await stack.enter_async_context(self._engine.begin())

    async def _read(self, query: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``query(conn, *args, **kwargs)`` in a read transaction; a database
        failure becomes one StoreError (other errors, such as UnknownSessionError,
        pass through)."""
        self._check_open()
        try:
            async with self._reader() as conn:
                return await query(conn, *args, **kwargs)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot read {self.url}: {_one_line(exc)}") from exc
        except UnknownSessionError as exc:
            raise self._searched(exc) from None

    async def _leasing(
        self, what: str, change: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        """Run a lease change in a lease transaction; a database failure says ``what``."""
        self._check_open()
        try:
            async with self._lease_transaction() as conn:
                return await change(conn, *args, **kwargs)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot {what} in {self.url}: {_one_line(exc)}") from exc
        except UnknownSessionError as exc:
            raise self._searched(exc) from None

    def _searched(self, exc: UnknownSessionError) -> UnknownSessionError:
        """``exc`` naming the database searched (a mistyped ``--db`` shows at once)."""
        return UnknownSessionError(f"{exc} in {self.where}")

    async def list_sessions(self, *, limit: int | None = None) -> list[SessionSummary]:
        """Stored sessions, newest first.

        Args:
            limit: At most this many.

        Raises:
            StoreError: the database could not be read.
        """
        return await self._read(list_sessions, limit)

    async def get_session(self, id_or_prefix: str) -> StoredSession:
        """A whole session by id, or by a unique prefix of at least 4 characters.

        Raises:
            UnknownSessionError: no session matches, or the prefix matches several.
            StoreError: the database could not be read.
        """
        return await self._read(get_session, id_or_prefix)

    async def find_consensus(self, cache_key: str) -> CachedConsensus | None:
        """The newest stored consensus under ``cache_key`` (the consensus cache).

        A step asks before every multi-model call, so this is one indexed query on a
        driver connection kept for it, not a pooled SQLAlchemy read transaction.

        Raises:
            StoreError: the database could not be read.
        """
        if self._lookup is None:
            return await self._read(find_consensus, cache_key)
        self._check_open()
        params = {"key": cache_key}
        try:
            if self._shared_connection:  # one in-memory connection: not during a write
                async with self._write_lock:
                    rows = await self._lookup.fetch(self._statements, CONSENSUS_BY_KEY, params)
            else:
                rows = await self._lookup.fetch(self._statements, CONSENSUS_BY_KEY, params)
        except self._errors as exc:
            raise StoreError(f"cannot read {self.url}: {_one_line(exc)}") from exc
        return cached_consensus(rows[0]) if rows else None

    async def count_rows(self) -> dict[str, int]:
        """Table name -> number of rows, for every thinktank table."""
        return await self._read(count_rows)

    async def migrations(self) -> list[tuple[str, datetime]]:
        """The schema migrations applied to the database: (name, applied at, UTC), in order.

        Raises:
            StoreError: the database could not be read.
        """
        self._check_open()
        table = MIGRATIONS_TABLE
        try:
            async with self._reader() as conn:
                rows = await conn.execute(
                    select(table.c.name, table.c.applied_at).order_by(table.c.name)
                )
                return [(name, _aware(at)) for name, at in rows]
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot read {self.url}: {_one_line(exc)}") from exc

    # -- queued sessions: written now, run by a worker later ---------------------------

    async def enqueue_session(
        self,
        *,
        name: str,
        spec: Mapping[str, Any],
        inputs: Mapping[str, Any],
        parallel_execution_config: Mapping[str, Any],
        source: str | None = None,
        key_id: str | None = None,
        request_id: str | None = None,
        queue: str | None = None,
    ) -> str:
        """Write a session that has not started: status ``queued``, no lease, no steps.

        The caller validates ``spec`` and ``inputs`` first (the store stores what it is
        given). A worker runs it later by its id (``thinktank.executor.run_queued``):
        it claims the lease with :meth:`claim_session`, and the run's first event fills
        the row. One transaction.

        Args:
            name: The session's name.
            spec: The validated session spec, as JSON.
            inputs: The validated inputs.
            parallel_execution_config: The spec's ``parallelExecution`` block.
            source: The session file, when it came from one.
            key_id: The API key whose request made it (``thinktank serve``).
            request_id: The ``X-Request-Id`` of that request.
            queue: The queue it waits on (None: the default one).

        Returns:
            The new session's id.

        Raises:
            StoreError: the database could not be written (nothing is).
        """
        return await self._leasing(
            "queue a session",
            _queue.enqueue,
            name=name,
            spec=spec,
            inputs=inputs,
            parallel_execution_config=parallel_execution_config,
            source=source,
            key_id=key_id,
            request_id=request_id,
            queue=queue,
        )

    async def queued_sessions(
        self,
        *,
        queue: str | None = None,
        limit: int | None = None,
        before: datetime | None = None,
    ) -> list[str]:
        """Ids of the sessions still ``queued`` (on ``queue``, or on any; queued before
        ``before``, or whenever), oldest first."""
        return await self._read(_queue.queued, queue, limit, before)

    async def session_states(self, session_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """(status, lease owner) of each of ``session_ids`` that exists, in one read:
        how a submitter follows sessions that run elsewhere.

        Raises:
            StoreError: the database could not be read.
        """
        return await self._read(_queue.states, session_ids)

    async def drop_queued(
        self,
        session_id: str,
        *,
        reason: str,
        status: Literal["interrupted", "failed"] = "interrupted",
    ) -> bool:
        """End a session that is still queued and unclaimed: it becomes ``status``
        (cancelled before it started: ``interrupted``; it cannot start: ``failed``)
        with ``reason`` and will not start. False (nothing changes) when a worker has
        claimed or started it.

        Raises:
            UnknownSessionError: no session has that id.
            StoreError: the database could not be written.
        """
        dropped = await self._leasing(
            "drop a queued session",
            _queue.drop_queued,
            session_id,
            reason,
            status,
            postgres=self._postgres,
        )
        if not dropped:
            await self.get_session(session_id)  # raises UnknownSessionError
        return dropped

    # -- leases: several workers on one database ---------------------------------------

    async def claim_session(self, session_id: str, *, worker_id: str, ttl_s: float) -> bool:
        """Take the lease of a session, so that this worker (alone) runs it.

        Succeeds when the session has no lease, its lease expired, or ``worker_id``
        already holds it (the lease is then renewed). Of several workers claiming the
        same session at once, exactly one wins.

        Args:
            session_id: The session's full id.
            worker_id: Who claims it (unique per worker, e.g. host, pid and a UUID).
            ttl_s: Seconds the lease lasts unless renewed with :meth:`heartbeat`.

        Returns:
            Whether ``worker_id`` holds the lease now.

        Raises:
            UnknownSessionError: no session has that id.
            ValueError: ``worker_id`` is empty or ``ttl_s`` not a positive number.
            StoreError: the database could not be read or written.
        """
        _check_lease_args(worker_id, ttl_s)
        return await self._leasing(
            "claim a session",
            _lease.claim,
            session_id,
            worker_id,
            ttl_s,
            postgres=self._postgres,
        )

    async def heartbeat(self, session_id: str, *, worker_id: str, ttl_s: float) -> bool:
        """Renew this worker's live lease of a session: it now ends ``ttl_s`` from now.

        Returns:
            False when ``worker_id`` does not hold a live lease of it (it expired, or
            another worker holds it): the worker should stop working on the session.

        Raises:
            UnknownSessionError: no session has that id.
            ValueError: ``worker_id`` is empty or ``ttl_s`` not a positive number.
            StoreError: the database could not be read or written.
        """
        _check_lease_args(worker_id, ttl_s)
        return await self._leasing(
            "renew a lease",
            _lease.heartbeat,
            session_id,
            worker_id,
            ttl_s,
            postgres=self._postgres,
        )

    async def release(self, session_id: str, *, worker_id: str) -> bool:
        """Give up this worker's lease of a session (so another may claim it at once).

        Returns:
            Whether ``worker_id`` held it (a lease held by another worker is kept).

        Raises:
            UnknownSessionError: no session has that id.
            StoreError: the database could not be read or written.
        """
        job = Job((), release=(session_id, worker_id))
        try:
            await self._submit(job)
        except UnknownSessionError as exc:
            raise self._searched(exc) from None
        return job.released

    async def request_cancel(self, session_id: str) -> bool:
        """Ask the process running a session (another server on this database) to
        cancel it; it polls :meth:`cancels_requested` while it runs sessions.

        Returns:
            True if the session is running (the request is stored); False if it has
            finished, when nothing is stored (a cancel never reaches a later run).

        Raises:
            UnknownSessionError: no session has that id.
            StoreError: the database could not be read or written.
        """
        return await self._leasing(
            "request a cancel", _lease.request_cancel, session_id, postgres=self._postgres
        )

    async def clear_cancel(self, session_id: str) -> None:
        """Forget a cancel request of a session: a new run (a resume) of it starts."""
        await self._leasing("clear a cancel request", _lease.clear_cancel, session_id)

    async def cancels_requested(self, session_ids: Sequence[str]) -> set[str]:
        """Which of ``session_ids`` (full ids) have a cancel requested.

        Raises:
            StoreError: the database could not be read.
        """
        return await self._read(_lease.cancels_requested, session_ids)

    async def events_of(self, session_id: str) -> list[dict[str, Any]]:
        """Every event of a session as stored (``event.to_dict()``), in write order."""
        return await self._read(events_of, session_id)

    async def delete_sessions(self, session_ids: Sequence[str]) -> None:
        """Delete sessions and every row that belongs to them, in one transaction."""
        self._check_open()
        ids = list(session_ids)
        if not ids:
            return
        children = (
            "thinktank_events",
            "thinktank_consensus",
            "thinktank_call_attempts",
            "thinktank_parallel_executions",
            "thinktank_steps",
        )
        try:
            async with self._write_lock, self._engine.begin() as conn:
                for name in children:
                    table = SQLModel.metadata.tables[name]
                    await conn.execute(table.delete().where(table.c.session_id.in_(ids)))
                sessions = SQLModel.metadata.tables["thinktank_sessions"]
                await conn.execute(sessions.delete().where(sessions.c.id.in_(ids)))
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot write to {self.url}: {_one_line(exc)}") from exc

    # -- experiments (thinktank eval) ---------------------------------------------------

    async def save_experiment(
        self,
        *,
        fingerprint: str,
        name: str,
        spec: Mapping[str, Any],
        dataset: str,
        items: int,
        new: bool = False,
    ) -> tuple[str, bool]:
        """The experiment to run into: the newest one with ``fingerprint`` (its spec and
        item count updated), or a new one (when none, or ``new``).

        Returns:
            Its id, and whether it is new.

        Raises:
            StoreError: the database could not be written.
        """
        return await self._leasing(
            "save an experiment",
            _experiments.save_experiment,
            fingerprint=fingerprint,
            name=name,
            spec=spec,
            dataset=dataset,
            items=items,
            at=datetime.now(UTC),
            new=new,
        )

    async def find_experiment(self, fingerprint: str) -> str | None:
        """The id of the newest experiment with ``fingerprint`` (the one a rerun
        continues), or None."""
        return await self._read(_experiments.find_experiment, fingerprint)

    async def add_samples(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Plan samples (``thinktank_experiment_samples`` columns, ``created_at`` set
        here); those already stored keep their row and session.

        Raises:
            StoreError: the database could not be written.
        """
        at = datetime.now(UTC)
        await self._leasing(
            "plan experiment samples",
            _experiments.add_samples,
            [{**row, "created_at": at} for row in rows],
        )

    async def experiment_samples(self, experiment_id: str) -> list[Any]:
        """Every sample of an experiment (``id``, ``config_key``, ``item_id``,
        ``repeat``, ``session_id``, ``answer``, ``correct``) with its session's
        ``status`` and ``cost_usd`` (None before its session exists)."""
        return await self._read(_experiments.samples_of, experiment_id)

    async def link_sample(self, sample_id: int, session_id: str) -> None:
        """Record the session answering a sample (its answer and score are cleared)."""
        await self._leasing("tag a session", _experiments.link_sample, sample_id, session_id)

    async def score_sample(self, sample_id: int, answer: str | None, correct: float | None) -> None:
        """Record a sample's answer and score."""
        await self._leasing("score a sample", _experiments.score_sample, sample_id, answer, correct)

    async def get_experiment(self, id_or_prefix: str) -> dict[str, Any]:
        """An experiment's row by id, or by a unique prefix of at least 4 characters.

        Raises:
            UnknownExperimentError: none matches, or the prefix matches several.
            StoreError: the database could not be read.
        """
        try:
            return await self._read(_experiments.get_experiment, id_or_prefix)
        except UnknownExperimentError as exc:
            raise UnknownExperimentError(f"{exc} in {self.where}") from None

    async def list_experiments(self) -> list[dict[str, Any]]:
        """Every experiment, newest first, with ``samples``, ``answered``, ``scored``
        and ``correct`` (the sum of scores) counted."""
        return await self._read(_experiments.list_experiments)

    async def experiment_rows(
        self, experiment_id: str, step_key: str | None
    ) -> tuple[
        list[dict[str, Any]],
        dict[str, dict[str, Any]],
        list[dict[str, Any]],
        dict[str, int],
        Any,
    ]:
        """An experiment's samples and the scored step of every session, in a few bulk
        queries in one read transaction (:mod:`thinktank.eval.store_read` builds the
        records from them).

        Args:
            experiment_id: The full id.
            step_key: The scored step; None to take the last step of a stored session's
                spec.

        Returns:
            The samples with their sessions' totals; session id -> scored step row; the
            scored steps' calls in arrival order; session id -> calls paid; one stored
            session's spec (None when no session exists).
        """

        async def read(conn: AsyncConnection) -> Any:
            samples = await _experiments.experiment_rows(conn, experiment_id)
            spec = await _experiments.experiment_session_spec(conn, experiment_id)
            key = step_key
            if key is None:
                steps = (spec or {}).get("steps") or []
                key = steps[-1]["id"] if steps else ""
            steps_of, calls, paid = await _experiments.experiment_calls(conn, experiment_id, key)
            return samples, steps_of, calls, paid, spec

        samples, steps_of, calls, paid, spec = await self._read(read)
        return samples, steps_of, calls, paid, spec

    async def lease_of(self, session_id: str) -> tuple[str, datetime] | None:
        """Who holds the lease of a session and until when (UTC); None when nobody does.

        An expired lease counts as none.

        Raises:
            UnknownSessionError: no session has that id.
            StoreError: the database could not be read.
        """
        return await self._read(_lease.lease_of, session_id, postgres=self._postgres)

    # -- API keys (thinktank serve): limits shared by every server on the database -----

    async def create_api_key(
        self,
        *,
        name: str,
        prefix: str,
        key_hash: str,
        budget_micro_usd: int | None = None,
        rpm: int | None = None,
    ) -> str:
        """Store a new API key by its hash (the key itself is never stored); its id."""
        return await self._leasing(
            "create an API key",
            _keys.create_key,
            name=name,
            prefix=prefix,
            key_hash=key_hash,
            created_at=datetime.now(UTC),
            budget_micro_usd=budget_micro_usd,
            rpm=rpm,
        )

    async def api_keys(self) -> list[ApiKey]:
        """Every API key, oldest first, revoked ones too."""
        return await self._read(_keys.list_keys)

    async def revoke_api_key(self, id_or_prefix: str) -> ApiKey:
        """Revoke an API key by id or unique id prefix (at least 4 characters).

        Raises:
            UsageError: no key, or several, match.
        """
        return await self._leasing(
            "revoke an API key", _keys.revoke_key, id_or_prefix, datetime.now(UTC)
        )

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The API key with this hash (revoked or not), or None."""
        return await self._read(_keys.key_by_hash, key_hash)

    async def count_api_request(self, key_id: str) -> float | None:
        """Count a request against the key's per-minute limit, atomically across every
        process on the database: None if admitted, else seconds until it would be."""
        return await self._leasing(
            "count a request", _keys.count_request, key_id, postgres=self._postgres
        )

    async def reserve_budget(
        self, key_id: str, micro_usd: int, *, holder: str, ttl_s: float
    ) -> str | ApiKey:
        """Reserve ``micro_usd`` of the key's budget for at most ``ttl_s`` seconds,
        atomically across every process (its lapsed reservations are released first):
        the reservation's id, else the key (revoked, or its budget too small)."""
        return await self._leasing(
            "reserve budget",
            _keys.reserve,
            key_id,
            micro_usd,
            holder=holder,
            ttl_s=ttl_s,
            postgres=self._postgres,
        )

    async def settle_budget(self, reservation_id: str, key_id: str, micro_usd: int) -> None:
        """End a reservation (unless it lapsed and was released): the key is charged
        ``micro_usd``."""
        await self._leasing("settle budget", _keys.settle, reservation_id, key_id, micro_usd)

    async def renew_reservation(self, reservation_id: str, ttl_s: float) -> bool:
        """Keep a budget reservation for ``ttl_s`` more seconds; False if it is gone."""
        return await self._leasing(
            "renew a reservation", _keys.renew, reservation_id, ttl_s, postgres=self._postgres
        )

    async def sweep_reservations(self) -> int:
        """Release every lapsed budget reservation (its process died); how many."""
        return await self._leasing("sweep reservations", _keys.sweep, postgres=self._postgres)

    async def set_session_provenance(
        self, session_id: str, *, key_id: str | None, request_id: str | None
    ) -> None:
        """Record the API key id and the HTTP request id that made a stored session."""
        await self._leasing(
            "record a session's request",
            _keys.set_session_provenance,
            session_id,
            key_id=key_id,
            request_id=request_id,
        )

    # -- model limits shared by every process on the database ------------------------

    async def _limit_change(
        self, what: str, key: str, slots: int, change: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """Run a slot or window change, first making the limit's rows if this store has
        not yet (in the same transaction)."""
        made = (key, slots) in self._limit_rows
        owed = list(self._gives_owed)

        async def run(conn: AsyncConnection) -> T:
            if not made:
                await _slots.make_rows(conn, key, slots, postgres=self._postgres)
            await _slots.give_all(conn, owed)
            return await change(conn, *args)

        result = await self._leasing(what, run)
        self._limit_rows.add((key, slots))
        self._gives_owed.difference_update(owed)
        return result

    async def take_slot(self, key: str, limit: int, *, holder: str, ttl_s: float) -> int | None:
        """Hold one of the ``limit`` call slots of ``key`` for ``ttl_s`` seconds,
        atomically across every process on the database: its number, or None when all
        are held (holds past their lapse count as free)."""
        return await self._limit_change(
            "take a call slot",
            key,
            limit,
            functools.partial(_slots.take, holder=holder, ttl_s=ttl_s, postgres=self._postgres),
            key,
            limit,
        )

    async def renew_slot(self, key: str, slot: int, *, holder: str, ttl_s: float) -> bool:
        """Keep a held slot ``ttl_s`` more seconds; False if ``holder`` lost it."""
        return await self._leasing(
            "renew a call slot",
            _slots.renew,
            key,
            slot,
            holder=holder,
            ttl_s=ttl_s,
            postgres=self._postgres,
        )

    async def give_slot(self, key: str, slot: int, *, holder: str) -> bool:
        """Free a slot ``holder`` holds (False if its hold had lapsed and gone).

        Raises:
            StoreError: the database could not be written. The give is then owed: this
                store makes it with its next change of a shared limit, or at
                :meth:`give_owed_slots`, so that a restart of the database does not
                keep the slots of every call it cut off until their holds lapse.
        """
        try:
            return await self._leasing(
                "give back a call slot", _slots.give, key, slot, holder=holder
            )
        except StoreError:
            self._gives_owed.add((key, slot, holder))
            raise

    async def give_owed_slots(self) -> int:
        """Make the gives of :meth:`give_slot` that failed; how many were owed.

        Raises:
            StoreError: the database could not be written (they stay owed).
        """
        owed = list(self._gives_owed)
        if owed:
            await self._leasing("give back call slots", _slots.give_all, owed)
            self._gives_owed.difference_update(owed)
        return len(owed)

    async def free_slots_of(self, host: str, pid: int) -> int:
        """Free the call slots held by a process that died (its ``host`` and ``pid``):
        they come back now rather than when their holds lapse. Only for a process known
        dead: a live one would go on calling past the limit. How many were freed."""
        return await self._leasing(
            "free a dead process's call slots", _slots.free_held_by, f"{host}:{pid}:"
        )

    async def count_limit_request(self, key: str, rpm: int, *, window_s: float) -> float | None:
        """Count a request against ``key``'s per-minute limit across every process on
        the database: None if admitted, else the seconds until its window ends."""
        return await self._limit_change(
            "count a request",
            key,
            0,
            functools.partial(_slots.count, window_s=window_s, postgres=self._postgres),
            key,
            rpm,
        )

    # -- worker processes (``thinktank worker``) ----------------------------------------

    async def register_worker(
        self,
        executor_id: str,
        *,
        name: str,
        host: str,
        pid: int,
        version: str,
        concurrency: int,
        ttl_s: float,
    ) -> None:
        """Record a worker that starts, alive for ``ttl_s`` seconds unless it beats."""
        await self._leasing(
            "register a worker",
            functools.partial(_workers.register, ttl_s=ttl_s, postgres=self._postgres),
            executor_id=executor_id,
            name=name,
            host=host,
            pid=pid,
            version=version,
            concurrency=concurrency,
        )

    async def worker_beat(
        self, executor_id: str, *, ttl_s: float, running: int, finished: int, draining: bool
    ) -> bool:
        """Keep a worker alive ``ttl_s`` more seconds and record its load; False when it
        was declared dead meanwhile (its row claimed by a recoverer, or gone)."""
        return await self._leasing(
            "renew a worker's heartbeat",
            functools.partial(_workers.beat, postgres=self._postgres),
            executor_id,
            ttl_s=ttl_s,
            running=running,
            finished=finished,
            draining=draining,
        )

    async def expire_worker(self, executor_id: str) -> None:
        """Mark a worker dead now (it leaves sessions behind for a live one to finish)."""
        await self._leasing(
            "expire a worker",
            functools.partial(_workers.expire, postgres=self._postgres),
            executor_id,
        )

    async def claim_dead_workers(self, me: str, *, ttl_s: float) -> list[_workers.DeadWorker]:
        """Claim, for worker ``me`` alone, the dead workers nobody recovers (id, host,
        pid, seconds since it expired). The claim lapses after ``ttl_s`` seconds."""
        return await self._leasing(
            "claim dead workers",
            functools.partial(_workers.claim_dead, ttl_s=ttl_s, postgres=self._postgres),
            me,
        )

    async def forget_worker(self, executor_id: str, *, recovered_by: str | None) -> None:
        """Delete a worker's row: a dead one ``recovered_by`` has recovered, or (None) one
        that left with nothing to recover."""
        await self._leasing(
            "forget a worker", _workers.forget, executor_id, recovered_by=recovered_by
        )

    async def list_workers(self) -> list[_workers.WorkerInfo]:
        """Every known worker, live ones first (``thinktank workers``).

        Raises:
            StoreError: the database could not be read.
        """
        return await self._read(_workers.list_workers, postgres=self._postgres)


def _aware(value: datetime) -> datetime:
    """``value`` in UTC; naive values (SQLite) are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _check_lease_args(worker_id: str, ttl_s: float) -> None:
    if not worker_id:
        raise ValueError("worker_id must not be empty")
    if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")
