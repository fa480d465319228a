"""The event fold: a batch of events becomes row changes, written in one transaction.

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

The statements are SQLAlchemy Core on the tables of ``thinktank.store.tables``; where
and how they run (compiled once, on which connection) is ``thinktank.store._sql``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from thinktank._ids import new_id
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
)
from thinktank.store._json import loads
from thinktank.store._sql import Executor, Statements
from thinktank.store._write import EventLog
from thinktank.store.tables import ATTEMPTS, CALLS, CONSENSUS, SESSIONS, STEPS

__all__ = ["SESSION_EXISTS", "StepRowCache", "apply_batch"]

SESSION_EXISTS = select(SESSIONS.c.id).where(SESSIONS.c.id == bindparam("sid"))
"""The session's id if it is stored (parameter ``sid``)."""
_SESSION_STATUS = select(SESSIONS.c.status).where(SESSIONS.c.id == bindparam("sid"))
_TEXT_REPAIRS = select(SESSIONS.c.text_repairs).where(SESSIONS.c.id == bindparam("sid"))
_MAX_REPAIRS = 100
_STEP_ROWS = select(STEPS.c.step_key, STEPS.c.id).where(STEPS.c.session_id == bindparam("sid"))
# ``inline()``: no RETURNING of the generated ids (PostgreSQL would add it), nobody reads them.
_INSERT_SESSION = insert(SESSIONS).inline()
_INSERT_STEP = insert(STEPS).inline()
_INSERT_CALL = insert(CALLS).inline()
_INSERT_ATTEMPT = insert(ATTEMPTS).inline()
_INSERT_CONSENSUS = insert(CONSENSUS).inline()
# UPDATEs whose SET clause comes from the keys of the rows they run with.
_UPDATE_SESSION = update(SESSIONS).where(SESSIONS.c.id == bindparam("b_id"))
_UPDATE_STEP = update(STEPS).where(STEPS.c.id == bindparam("b_id"))
_UPDATE_CALL = update(CALLS).where(CALLS.c.id == bindparam("b_id"))
_UPDATE_ATTEMPT_CALLS = update(CALLS).where(
    CALLS.c.step_id == bindparam("b_step"), CALLS.c.attempt == bindparam("b_attempt")
)

StepRowCache = dict[str, dict[str, str]]
"""Session id -> step key -> step row UUID, for the sessions a store is writing."""

_STEP_EVENTS = (StepStarted, CallStarted, CallAttempt, CallFinished, StepFinished, StepSkipped)


def _utc(value: datetime) -> datetime:
    """``value`` in UTC (SQLite keeps no zone, so everything is stored as UTC)."""
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


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
        # Who asked: set when known, so a resume from the CLI keeps the server's.
        if event.key_id is not None:
            fields["key_id"] = event.key_id
        if event.request_id is not None:
            fields["request_id"] = event.request_id
        run, fetch, executor = self.statements.run, self.statements.fetch, self.executor
        stored = await fetch(executor, _SESSION_STATUS, {"sid": sid})
        exists = bool(stored)
        if exists and stored[0][0] == "queued":
            # A queued session (``Store.enqueue_session``) starts now: its row waited
            # with the time it was queued.
            fields["started_at"] = at
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
            # A resumed or queued session: keep its rows and ids, add the steps it did
            # not have (a queued one has none).
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
        if not found and not await fetch(executor, SESSION_EXISTS, {"sid": sid}):
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
        await self.flush_calls()
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

    async def flush_calls(self) -> None:
        """Insert the batch's new call rows, and flag the calls each merge took in.

        A merge flags the calls of its attempt: those it took in, the others out. Rows
        stored by earlier batches are updated (all out, then the merged ones back in);
        rows this batch inserts get their flag in the INSERT.
        """
        executor, run = self.executor, self.statements.run
        inserted = self.call_inserts
        if self.included:
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
        stored = [
            {"b_id": call_id, "included_in_consensus": True}
            for call_ids in self.included.values()
            for call_id in call_ids
            if call_id not in inserted
        ]
        if stored:
            await run(executor, _UPDATE_CALL, stored)


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
