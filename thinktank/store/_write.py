"""The write path: a batch of events becomes row changes in one transaction.

A 10,000-step session emits about 40,000 events, so this path builds no ORM objects
and issues no per-event statements. It reads the batch once and folds the events into
pending row changes, merged per row in event order (a step's ``StepStarted`` and
``StepFinished`` become one UPDATE; a call started and finished in the same batch
becomes one INSERT of its final state). Then it flushes them as a few ``executemany``
statements, in an order that respects the only dependencies between them: a call row
exists before its retries and events are written, and a merge's "all calls of the
attempt out" comes before its "merged calls in".

Three events cannot wait for the flush: ``SessionStarted`` inserts the session and step
rows at once (the rest of the batch refers to them), so does ``StepsAdded`` for the
steps a decompose step adds at run time, and a ``ConsensusComputed`` whose
step attempt the batch does not tell reads it from the database at once (before any
later call of that step in the batch is written). Everything else is a pure "set these
columns on this row" change, so merging per row gives the same result as applying the
events one by one.

The statements are SQLAlchemy Core, compiled once per dialect by :class:`Statements`
and run with rows converted by the dialect's own bind processors: SQLAlchemy's
executemany spends several microseconds a row in Python, more than SQLite itself.
Where they run is an :class:`Executor`: any SQLAlchemy connection, or the driver
connection underneath one: aiosqlite for SQLite, which saves two or three trips to the
driver's thread per statement, and asyncpg for PostgreSQL, whose ``executemany`` sends
all the rows of a statement in one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Protocol

import aiosqlite
import orjson
from sqlalchemy import DateTime, String, Table, bindparam, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import SQLModel

from thinktank._ids import new_id
from thinktank._text import repaired
from thinktank.events import (
    CallAttempt,
    CallFinished,
    CallStarted,
    ConsensusComputed,
    Event,
    SessionFinished,
    SessionStarted,
    StepFinished,
    StepInfo,
    StepsAdded,
    StepSkipped,
    StepStarted,
    encode_event,
)
from thinktank.store import tables as _tables
from thinktank.store._json import dumps, loads

__all__ = [
    "ATTEMPTS",
    "CALLS",
    "CONSENSUS",
    "EVENTS",
    "EVENT_COLUMNS",
    "SESSIONS",
    "STEPS",
    "AiosqliteExecutor",
    "AsyncpgExecutor",
    "EventLog",
    "Executor",
    "SQLAlchemyExecutor",
    "Statements",
    "StepRowCache",
    "apply_batch",
]

_ = _tables  # importing it registers the tables on SQLModel.metadata

SESSIONS: Table = SQLModel.metadata.tables["thinktank_sessions"]
STEPS: Table = SQLModel.metadata.tables["thinktank_steps"]
CALLS: Table = SQLModel.metadata.tables["thinktank_parallel_executions"]
ATTEMPTS: Table = SQLModel.metadata.tables["thinktank_call_attempts"]
CONSENSUS: Table = SQLModel.metadata.tables["thinktank_consensus"]
EVENTS: Table = SQLModel.metadata.tables["thinktank_events"]

_SESSION_EXISTS = select(SESSIONS.c.id).where(SESSIONS.c.id == bindparam("sid"))
_TEXT_REPAIRS = select(SESSIONS.c.text_repairs).where(SESSIONS.c.id == bindparam("sid"))
_MAX_REPAIRS = 100
_STEP_ROWS = select(STEPS.c.step_key, STEPS.c.id).where(STEPS.c.session_id == bindparam("sid"))
# ``inline()``: no RETURNING of the generated ids (PostgreSQL would add it), nobody reads them.
_INSERT_SESSION = insert(SESSIONS).inline()
_INSERT_STEP = insert(STEPS).inline()
_INSERT_CALL = insert(CALLS).inline()
_INSERT_ATTEMPT = insert(ATTEMPTS).inline()
_INSERT_CONSENSUS = insert(CONSENSUS).inline()
_INSERT_EVENT = insert(EVENTS).inline()
# UPDATEs whose SET clause comes from the keys of the rows they run with.
_UPDATE_SESSION = update(SESSIONS).where(SESSIONS.c.id == bindparam("b_id"))
_UPDATE_STEP = update(STEPS).where(STEPS.c.id == bindparam("b_id"))
_UPDATE_CALL = update(CALLS).where(CALLS.c.id == bindparam("b_id"))
_UPDATE_ATTEMPT_CALLS = update(CALLS).where(
    CALLS.c.step_id == bindparam("b_step"), CALLS.c.attempt == bindparam("b_attempt")
)

StepRowCache = dict[str, dict[str, str]]
"""Session id -> step key -> step row UUID, for the sessions a store is writing."""

EVENT_COLUMNS = ("session_id", "type", "step_key", "at", "payload")
"""Column order of the rows :class:`EventLog` inserts."""

_STEP_EVENTS = (StepStarted, CallStarted, CallAttempt, CallFinished, StepFinished, StepSkipped)


def _utc(value: datetime) -> datetime:
    """``value`` in UTC (SQLite keeps no zone, so everything is stored as UTC)."""
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _same(value: Any) -> Any:
    return value


def _sqlite_datetime(value: datetime) -> str:
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
                process = _sqlite_datetime
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


class EventLog:
    """The hot INSERT into ``thinktank_events``: rows built as ready tuples.

    Four of every six rows a session writes are events, so their rows skip the
    generic per-row conversion: the batch builds each row in :data:`EVENT_COLUMNS`
    order with the dialect's processors already applied.
    """

    def __init__(self, dialect: Dialect) -> None:
        """Compile for ``dialect``."""
        compiled: Any = _INSERT_EVENT.compile(dialect=dialect, column_keys=list(EVENT_COLUMNS))
        self.sql: str = compiled.string
        names = list(compiled.positiontup or compiled.binds)
        at_type, payload_type = EVENTS.c.at.type, EVENTS.c.payload.type
        self.at: Callable[[datetime], Any] = (
            _sqlite_datetime
            if dialect.name == "sqlite"
            else at_type.dialect_impl(dialect).bind_processor(dialect) or _same
        )
        process: Callable[[dict[str, Any]], Any] = (
            payload_type.dialect_impl(dialect).bind_processor(dialect) or _same
        )
        self._process = process
        # The column takes JSON text on SQLite and asyncpg: the encoder's text will do.
        # Other drivers may want their own object (psycopg: a Json wrapper).
        probe = {"type": "x"}
        self._text = process(probe) == dumps(probe)
        self._postgres = dialect.name == "postgresql"
        order = [EVENT_COLUMNS.index(name) for name in names]
        self._adapt: Callable[[tuple[Any, ...]], Any] | None = None
        if not compiled.positional:
            self._adapt = lambda row: {name: row[i] for name, i in zip(names, order, strict=True)}
        elif order != list(range(len(EVENT_COLUMNS))):
            self._adapt = lambda row: tuple(row[i] for i in order)

    def payload(self, event: Event) -> tuple[Event, Any, list[str]]:
        """``event`` as it can be stored, the payload column's value for it (the text
        of :func:`~thinktank.events.encode_event`), and where its text had to be repaired.

        Text no database takes (lone surrogates, NUL) is replaced by U+FFFD throughout
        the event, so its rows and its payload agree. The encoder tells when to look:
        it refuses surrogates, and writes NUL as ``\\u0000``.
        """
        try:
            text = encode_event(event).decode()
        except UnicodeEncodeError:
            text = None
        found: list[str] = []
        if text is None or "\\u0000" in text:
            event = repaired(event, event.type, found)
            text = encode_event(event).decode()
        return event, text if self._text else self._process(loads(text)), found

    async def run(self, executor: Executor, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows``, each in :data:`EVENT_COLUMNS` order."""
        adapt = self._adapt
        await executor.run_many(self.sql, rows if adapt is None else [adapt(r) for r in rows])


class _Batch:
    """Pending row changes of one batch, merged per row in event order."""

    def __init__(
        self, executor: Executor, cache: StepRowCache, statements: Statements, log: EventLog
    ) -> None:
        self.executor = executor
        self.statements = statements
        self.log = log
        self.rows: StepRowCache = dict(cache)
        """Step rows of the sessions in the batch: the store's cache and what it learns."""
        self.learnt: StepRowCache = {}
        """Step rows learnt in this batch; the store keeps them once it commits."""
        self.finished_sessions: list[str] = []
        self.call_inserts: dict[str, dict[str, Any]] = {}
        self.call_updates: dict[str, dict[str, Any]] = {}
        self.step_updates: dict[str, dict[str, Any]] = {}
        self.session_updates: dict[str, dict[str, Any]] = {}
        self.consensus_inserts: list[dict[str, Any]] = []
        self.attempt_inserts: list[dict[str, Any]] = []
        self.included: dict[tuple[str, int], set[str]] = {}
        """Call ids merged, per (step row, attempt), for the latest merge of each."""
        self.events: list[tuple[Any, ...]] = []
        self.repairs: dict[str, list[str]] = {}
        """Session id -> where the batch wrote text with U+FFFD (:func:`repaired`)."""
        self.handlers: dict[type, Callable[[Any, str], None]] = {
            CallFinished: self.on_call_finished,
            CallAttempt: self.on_call_attempt,
            CallStarted: self.on_call_started,
            StepStarted: self.on_step_started,
            StepFinished: self.on_step_finished,
            StepSkipped: self.on_step_skipped,
        }

    async def add_all(self, events: Iterable[Event]) -> None:
        """Fold every event into the pending changes (in order)."""
        handlers = self.handlers
        rows = self.rows
        log = self.events.append
        at_value, payload_value = self.log.at, self.log.payload
        for event in events:
            event, payload, repairs = payload_value(event)
            cls = event.__class__
            handler = handlers.get(cls)
            step_key: str | None = None
            if handler is not None or isinstance(event, _STEP_EVENTS):
                step_key = event.step_id  # type: ignore[attr-defined]
                session_rows = rows.get(event.session_id)
                row_id = session_rows.get(step_key) if session_rows is not None else None
                if row_id is None:
                    row_id = await self.load_step_row(event.session_id, step_key)
                (handler or self.handlers[_base_of(cls)])(event, row_id)
            elif isinstance(event, ConsensusComputed):
                step_key = event.step_id
                await self.on_consensus(event)
            elif isinstance(event, SessionStarted):
                await self.on_session_started(event)
            elif isinstance(event, StepsAdded):
                step_key = event.parent
                await self.on_steps_added(event)
            elif isinstance(event, SessionFinished):
                self.on_session_finished(event)
            else:
                # An event this store does not know: logged, and it changes no row.
                named = getattr(event, "step_id", None)
                step_key = named if isinstance(named, str) else None
            log((event.session_id, event.type, step_key, at_value(_utc(event.at)), payload))
            if repairs:
                of_step = f" of step {step_key!r}" if step_key is not None else ""
                self.repairs.setdefault(event.session_id, []).extend(
                    f"{where}{of_step}" for where in repairs
                )

    def remember(self, session_id: str, rows: dict[str, str]) -> None:
        self.rows[session_id] = rows
        self.learnt[session_id] = rows

    async def load_step_row(self, session_id: str, step_key: str) -> str:
        """The row id of a step the batch has not seen, from the database."""
        found = await self.statements.fetch(self.executor, _STEP_ROWS, {"sid": session_id})
        rows: dict[str, str] = {key: row_id for key, row_id in found}
        self.remember(session_id, rows)
        try:
            return rows[step_key]
        except KeyError:
            raise LookupError(
                f"session {session_id} has no step {step_key!r} (no SessionStarted wrote it)"
            ) from None

    def step(self, row_id: str) -> dict[str, Any]:
        """The pending changes of a step row."""
        changes = self.step_updates.get(row_id)
        if changes is None:
            changes = self.step_updates[row_id] = {"b_id": row_id}
        return changes

    def session(self, session_id: str) -> dict[str, Any]:
        """The pending changes of a session row."""
        changes = self.session_updates.get(session_id)
        if changes is None:
            changes = self.session_updates[session_id] = {"b_id": session_id}
        return changes

    async def on_session_started(self, event: SessionStarted) -> None:
        sid = event.session_id
        at = _utc(event.at)
        fields: dict[str, Any] = {
            "name": event.name,
            "parallel_execution_config": event.parallel_execution_config,
            "spec": event.spec,
            "inputs": event.inputs,
            "source": event.source,
            "model_selection": event.model_selection,
        }
        run, fetch, executor = self.statements.run, self.statements.fetch, self.executor
        exists = bool(await fetch(executor, _SESSION_EXISTS, {"sid": sid}))
        known: dict[str, str] = {}
        if not exists:
            session_row = {
                "id": sid,
                "status": "running",
                "created_at": at,
                "started_at": at,
                "steps_total": len(event.steps),
                "steps_completed": 0,
                "steps_failed": 0,
                "steps_skipped": 0,
                **fields,
                # Set once: a resume reopens the session and keeps where it came from.
                "origin": event.origin,
                "text_repairs": [],
            }
            await run(executor, _INSERT_SESSION, [session_row])
        else:
            # A resumed session: keep its rows and ids, add the steps it did not have.
            found = await fetch(executor, _STEP_ROWS, {"sid": sid})
            known = {key: row_id for key, row_id in found}
        rows = await self.insert_steps(sid, event.steps, known, parent=None)
        if exists:
            self.session(sid).update(
                fields, status="running", finished_at=None, error=None, steps_total=len(rows)
            )

    async def insert_steps(
        self,
        sid: str,
        steps: Iterable[StepInfo],
        known: dict[str, str],
        *,
        parent: str | None,
    ) -> dict[str, str]:
        """Insert (pending) the ``steps`` of session ``sid`` whose keys are not ``known``.

        Returns every step row of the session (key -> row id), which it remembers.
        """
        fresh: dict[str, StepInfo] = {}
        for info in steps:
            if info.step_id not in known:
                fresh.setdefault(info.step_id, info)
        if fresh:
            await self.statements.run(
                self.executor,
                _INSERT_STEP,
                [
                    {
                        "id": info.row_id,
                        "session_id": sid,
                        "step_key": info.step_id,
                        "position": info.position,
                        "kind": info.kind,
                        "depends_on": list(info.depends_on),
                        "models": list(info.models),
                        "mode": info.mode,
                        "synthesis": info.synthesis,
                        "prompt_template": info.prompt_template,
                        "status": "pending",
                        "attempts": 0,
                        "parent": info.parent if info.parent is not None else parent,
                        "provenance": list(info.provenance),
                    }
                    for info in fresh.values()
                ],
            )
        rows = dict(known)
        rows.update((key, info.row_id) for key, info in fresh.items())
        self.remember(sid, rows)
        return rows

    async def on_steps_added(self, event: StepsAdded) -> None:
        """Insert the steps a decompose step added, except those already stored.

        The session's step rows are read from the database (not the cache): on a
        replayed history the steps may exist, perhaps written by another store.
        """
        sid = event.session_id
        fetch, executor = self.statements.fetch, self.executor
        found = await fetch(executor, _STEP_ROWS, {"sid": sid})
        if not found and not await fetch(executor, _SESSION_EXISTS, {"sid": sid}):
            raise LookupError(f"session {sid} is not stored (no SessionStarted wrote it)")
        known = {key: row_id for key, row_id in found}
        rows = await self.insert_steps(sid, event.steps, known, parent=event.parent)
        if len(rows) != len(known):
            self.session(sid)["steps_total"] = len(rows)

    def on_step_started(self, event: StepStarted, row_id: str) -> None:
        changes = self.step(row_id)
        changes.update(
            status="running",
            prompt=event.prompt,
            attempts=event.attempt,
            output=None,
            error=None,
            skip_reason=None,
            completed_at=None,
        )
        if event.attempt == 1:
            changes["started_at"] = _utc(event.at)

    def on_call_started(self, event: CallStarted, row_id: str) -> None:
        self.call_inserts[event.call_id] = {
            "id": event.call_id,
            "session_id": event.session_id,
            "step_id": row_id,
            "model_id": event.model,
            "attempt": event.attempt,
            "status": "running",
            "started_at": _utc(event.at),
            "completed_at": None,
            "response": None,
            "tokens_used": None,
            "input_tokens": None,
            "output_tokens": None,
            "latency_ms": None,
            "cost_usd": None,
            "finish_reason": None,
            "error": None,
            "included_in_consensus": True,
            "tries": 1,
            "reused_from": None,
        }

    def on_call_attempt(self, event: CallAttempt, row_id: str) -> None:
        self.attempt_inserts.append(
            {
                "call_id": event.call_id,
                "session_id": event.session_id,
                "number": event.number,
                "status": event.status,
                "status_code": event.status_code,
                "error": event.error,
                "started_at": _utc(event.started_at),
                "latency_ms": round(event.latency_ms),
                "retry_in_s": event.retry_in_s,
            }
        )

    def on_call_finished(self, event: CallFinished, row_id: str) -> None:
        usage: dict[str, Any] = {
            "tokens_used": _sum(event.input_tokens, event.output_tokens),
            "input_tokens": event.input_tokens,
            "output_tokens": event.output_tokens,
            "cost_usd": event.cost_usd,
        }
        if event.reused_from is not None:
            # An answer served again from the store: its row (reused_from) counts its
            # tokens and cost, so sums over call rows stay equal to what was spent. What
            # was unknown there stays unknown here (a SQL sum over it stays NULL).
            usage = {k: None if v is None else 0 for k, v in usage.items()}
        changes = {
            "tries": event.tries,
            "status": event.status,
            "started_at": _utc(event.started_at),
            "completed_at": _utc(event.at),
            "response": event.content,
            **usage,
            "latency_ms": round(event.latency_ms),
            "finish_reason": event.finish_reason,
            "error": event.error,
            "reused_from": event.reused_from,
        }
        row = self.call_inserts.get(event.call_id)
        if row is not None:
            row.update(changes)
        else:
            pending = self.call_updates.get(event.call_id)
            if pending is None:
                self.call_updates[event.call_id] = {"b_id": event.call_id, **changes}
            else:
                pending.update(changes)

    def on_step_finished(self, event: StepFinished, row_id: str) -> None:
        changes = self.step(row_id)
        changes.update(
            status=event.status,
            attempts=event.attempts,
            started_at=_utc(event.started_at),
            completed_at=_utc(event.at),
            output=event.output,
            error=event.error,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            cost_usd=event.cost_usd,
            latency_ms=event.latency_ms,
        )
        if event.consensus_score is not None:
            changes["consensus_score"] = event.consensus_score

    def on_step_skipped(self, event: StepSkipped, row_id: str) -> None:
        self.step(row_id).update(status="skipped", skip_reason=event.reason)

    async def on_consensus(self, event: ConsensusComputed) -> None:
        session_rows = self.rows.get(event.session_id)
        row_id = session_rows.get(event.step_id) if session_rows is not None else None
        if row_id is None:
            row_id = await self.load_step_row(event.session_id, event.step_id)
        attempt = event.attempt
        self.included[(row_id, attempt)] = set(event.included_call_ids)
        self.consensus_inserts.append(
            {
                "id": new_id(),
                "session_id": event.session_id,
                "step_id": row_id,
                "attempt": attempt,
                "method": event.method,
                "score": event.score,
                "threshold": event.threshold,
                "reached": event.reached,
                "content": event.content,
                "outcome": event.outcome,
                "clusters": list(event.clusters),
                "included_call_ids": list(event.included_call_ids),
                "created_at": _utc(event.at),
                "mode": event.mode,
                "early_termination": event.early_termination,
                "escalation": [list(r) for r in event.escalation],
                "items": list(event.items),
                "judge_call_id": event.judge_call_id,
                "note": event.note,
                "cached_from": event.cached_from,
                "cache_key": event.cache_key,
            }
        )
        self.step(row_id)["consensus_score"] = event.score

    def on_session_finished(self, event: SessionFinished) -> None:
        self.session(event.session_id).update(
            status=event.status,
            started_at=_utc(event.started_at),
            finished_at=_utc(event.at),
            error=event.error,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            total_tokens=_sum(event.input_tokens, event.output_tokens),
            cost_usd=event.cost_usd,
            wall_ms=event.wall_ms,
            steps_completed=event.steps_completed,
            steps_failed=event.steps_failed,
            steps_skipped=event.steps_skipped,
        )
        self.finished_sessions.append(event.session_id)

    async def record_repairs(self, sid: str, repairs: list[str]) -> None:
        """Add ``repairs`` to the session's ``text_repairs`` (the first hundred kept:
        they say that, and where, the text was changed, not every place)."""
        found = await self.statements.fetch(self.executor, _TEXT_REPAIRS, {"sid": sid})
        stored: Any = found[0][0] if found else None
        if isinstance(stored, str):  # drivers under SQLAlchemy hand JSON back as text
            stored = loads(stored)
        known = stored if isinstance(stored, list) else []
        merged = list(dict.fromkeys([*known, *repairs]))[:_MAX_REPAIRS]
        self.session(sid)["text_repairs"] = merged

    async def flush(self) -> None:
        """Write every pending change, dependencies first."""
        executor, run = self.executor, self.statements.run
        inserted = self.call_inserts
        if self.included:
            # A merge flags the calls of its attempt: those it took in, the others out.
            # Rows stored by earlier batches are updated (all out, then the merged ones
            # back in); rows this batch inserts get their flag in the INSERT.
            await run(
                executor,
                _UPDATE_ATTEMPT_CALLS,
                [
                    {"b_step": step, "b_attempt": attempt, "included_in_consensus": False}
                    for step, attempt in self.included
                ],
            )
            for row in inserted.values():
                merged = self.included.get((row["step_id"], row["attempt"]))
                if merged is not None:
                    row["included_in_consensus"] = row["id"] in merged
        if inserted:
            await run(executor, _INSERT_CALL, inserted.values())
        if self.included:
            stored = [
                {"b_id": call_id, "included_in_consensus": True}
                for call_ids in self.included.values()
                for call_id in call_ids
                if call_id not in inserted
            ]
            if stored:
                await run(executor, _UPDATE_CALL, stored)
        if self.call_updates:
            await run(executor, _UPDATE_CALL, self.call_updates.values())
        if self.attempt_inserts:
            await run(executor, _INSERT_ATTEMPT, self.attempt_inserts)
        if self.consensus_inserts:
            await run(executor, _INSERT_CONSENSUS, self.consensus_inserts)
        if self.step_updates:
            await run(executor, _UPDATE_STEP, self.step_updates.values())
        for sid, repairs in self.repairs.items():
            await self.record_repairs(sid, repairs)
        if self.session_updates:
            await run(executor, _UPDATE_SESSION, self.session_updates.values())
        if self.events:
            await self.log.run(executor, self.events)


def _base_of(cls: type) -> type:
    """The known step event class that ``cls`` (a subclass of one) extends."""
    return next(base for base in _STEP_EVENTS if issubclass(cls, base))


async def apply_batch(
    executor: Executor,
    events: Sequence[Event],
    *,
    cache: StepRowCache,
    statements: Statements,
    log: EventLog,
) -> tuple[StepRowCache, list[str]]:
    """Write ``events`` through ``executor``, inside the caller's transaction.

    Args:
        executor: Where to send the SQL (a connection in a write transaction).
        events: The batch, in emission order.
        cache: The store's step-row cache; read here, never changed.
        statements: The store's compiled statements.
        log: The store's compiled events INSERT.

    Returns:
        The step rows learnt (for the cache, once the transaction commits) and the
        sessions that finished in the batch (whose cache entries can go).

    Raises:
        LookupError: an event names a step that no ``SessionStarted`` wrote.
    """
    batch = _Batch(executor, cache, statements, log)
    await batch.add_all(events)
    await batch.flush()
    return batch.learnt, batch.finished_sessions
