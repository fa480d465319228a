"""The store: events in, rows out, sessions back; on a SQLite file and on PostgreSQL.

Tests that take the ``store`` (or ``db_url``) fixture run once per backend (ids
``sqlite`` and ``postgres``; see ``tests/pg.py`` for where the server comes from).
"""

from __future__ import annotations

import importlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from sqlalchemy import DateTime
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from tests import pg
from thinktank.errors import StoreError, UnknownSessionError
from thinktank.events import (
    CachedConsensus,
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
from thinktank.store import (
    DEFAULT_DB_ENV,
    Store,
    default_db_url,
    normalize_db_url,
)
from thinktank.store._fold import apply_batch
from thinktank.store._read import find_consensus
from thinktank.store._sql import Statements, Writer, sqlite_datetime
from thinktank.store._write import EventLog

# The PostgreSQL fixtures (see tests/pg.py), by assignment so that pytest finds them here.
pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A time ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


def new_id() -> str:
    """A fresh UUID string."""
    return str(uuid.uuid4())


def step_info(
    key: str,
    position: int,
    *,
    models: tuple[str, ...] = ("m1",),
    depends_on: tuple[str, ...] = (),
) -> StepInfo:
    """The static description of one step."""
    multi = len(models) > 1
    return StepInfo(
        step_id=key,
        row_id=new_id(),
        kind="multi" if multi else "prompt",
        depends_on=depends_on,
        models=models,
        mode="all" if multi else None,
        synthesis="majority" if multi else None,
        prompt_template=f"Question {key}: {{q}}",
        position=position,
    )


def session_started(
    sid: str, steps: tuple[StepInfo, ...], *, name: str = "demo", start: float = 0
) -> SessionStarted:
    """A SessionStarted for ``steps``."""
    return SessionStarted(
        session_id=sid,
        at=at(start),
        name=name,
        spec={"name": name, "steps": [{"id": s.step_id} for s in steps]},
        inputs={"q": "why?"},
        parallel_execution_config={"maxConcurrentSteps": 5, "consensusThreshold": 0.7},
        steps=steps,
        source="sessions/demo.yaml",
    )


def call_pair(
    sid: str,
    key: str,
    model: str,
    *,
    start: float,
    attempt: int = 1,
    content: str | None = "42",
    status: Any = "ok",
    tokens: tuple[int | None, int | None] = (10, 5),
    cost: float | None = 0.001,
    error: str | None = None,
) -> tuple[str, CallStarted, CallFinished]:
    """The CallStarted and CallFinished of one model call."""
    call_id = new_id()
    started = CallStarted(
        session_id=sid, at=at(start), step_id=key, call_id=call_id, model=model, attempt=attempt
    )
    finished = CallFinished(
        session_id=sid,
        at=at(start + 0.5),
        step_id=key,
        call_id=call_id,
        model=model,
        attempt=attempt,
        status=status,
        started_at=at(start),
        content=content,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        latency_ms=500.4,
        cost_usd=cost,
        finish_reason="stop" if status == "ok" else None,
        error=error,
    )
    return call_id, started, finished


def single_step_events(sid: str, key: str, *, start: float) -> list[Event]:
    """The four events of a one-model step that completes."""
    _, started, finished = call_pair(sid, key, "m1", start=start + 0.1)
    return [
        StepStarted(session_id=sid, at=at(start), step_id=key, attempt=1, prompt=f"Q {key}"),
        started,
        finished,
        StepFinished(
            session_id=sid,
            at=at(start + 1),
            step_id=key,
            status="completed",
            attempts=1,
            started_at=at(start),
            output="42",
            input_tokens=10,
            output_tokens=5,
            cost_usd=0.001,
            latency_ms=1000.0,
        ),
    ]


def simple_session(n_steps: int, *, start: float = 0, name: str = "demo") -> list[Event]:
    """Every event of a session of ``n_steps`` one-model steps that completes."""
    sid = new_id()
    infos = tuple(step_info(f"s{i}", i) for i in range(n_steps))
    events: list[Event] = [session_started(sid, infos, name=name, start=start)]
    for i in range(n_steps):
        events += single_step_events(sid, f"s{i}", start=start + i)
    events.append(
        SessionFinished(
            session_id=sid,
            at=at(start + n_steps + 1),
            status="completed",
            started_at=at(start),
            input_tokens=10 * n_steps,
            output_tokens=5 * n_steps,
            cost_usd=0.001 * n_steps,
            wall_ms=(n_steps + 1) * 1000.0,
            steps_completed=n_steps,
        )
    )
    return events


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A store on a fresh database of each backend, closed after the test."""
    opened = await Store.open(db_url)
    try:
        yield opened
    finally:
        await opened.close()


async def fetch_all(store: Store, sql: str) -> list[tuple[Any, ...]]:
    """The rows of a raw SQL query on the store's database (either backend)."""
    async with store._reader() as conn:
        return [tuple(row) for row in await conn.exec_driver_sql(sql)]


def as_json(value: Any) -> Any:
    """A JSON column's value as Python: SQLite returns text, PostgreSQL decoded JSONB."""
    return json.loads(value) if isinstance(value, str) else value


async def test_full_session_round_trip(store: Store) -> None:
    """Every step, call and consensus of a session comes back as it was written."""
    sid = new_id()
    a = step_info("a", 0)
    b = step_info("b", 1, models=("m1", "m2", "m3"), depends_on=("a",))
    c = step_info("c", 2, depends_on=("b",))
    d = step_info("d", 3)
    call_a, a_started, a_finished = call_pair(sid, "a", "m1", start=1.1)
    b1, b1_started, b1_finished = call_pair(sid, "b", "m1", start=3.1, content="yes")
    b2, b2_started, b2_finished = call_pair(
        sid, "b", "m2", start=3.2, content="yes", tokens=(None, None), cost=None
    )
    b3, b3_started, b3_finished = call_pair(
        sid, "b", "m3", start=3.3, content=None, status="failed", error="HTTP 500"
    )
    clusters = ({"answer": "yes", "call_ids": [b1, b2], "models": ["m1", "m2"], "weight": 1.0},)
    events: list[Event] = [
        session_started(sid, (a, b, c, d)),
        StepStarted(session_id=sid, at=at(1), step_id="a", attempt=1, prompt="Question a: why?"),
        a_started,
        a_finished,
        StepFinished(
            session_id=sid,
            at=at(2),
            step_id="a",
            status="completed",
            attempts=1,
            started_at=at(1),
            output="42",
            input_tokens=10,
            output_tokens=5,
            cost_usd=0.001,
            latency_ms=1000.0,
        ),
        StepStarted(session_id=sid, at=at(3), step_id="b", attempt=1, prompt="Question b: why?"),
        b1_started,
        b2_started,
        b3_started,
        b1_finished,
        b2_finished,
        b3_finished,
        ConsensusComputed(
            session_id=sid,
            at=at(4),
            step_id="b",
            method="majority",
            score=0.67,
            content="yes",
            threshold=0.6,
            reached=True,
            included_call_ids=(b1, b2),
            clusters=clusters,
            outcome="k_of_n",
        ),
        StepFinished(
            session_id=sid,
            at=at(5),
            step_id="b",
            status="failed",
            attempts=1,
            started_at=at(3),
            error="judge disagreed",
            input_tokens=None,
            output_tokens=None,
            cost_usd=None,
            latency_ms=2000.0,
            consensus_score=0.67,
        ),
        StepSkipped(session_id=sid, at=at(5), step_id="c", reason="step 'b' failed"),
        SessionFinished(
            session_id=sid,
            at=at(6),
            status="partial",
            started_at=at(0),
            error="1 step(s) failed",
            input_tokens=None,
            output_tokens=None,
            cost_usd=None,
            wall_ms=6000.0,
            steps_completed=1,
            steps_failed=1,
            steps_skipped=1,
        ),
    ]
    await store.write(events[:4])
    await store.write(events[4:])

    stored = await store.get_session(sid)
    assert (stored.id, stored.name, stored.status) == (sid, "demo", "partial")
    assert stored.parallel_execution_config == {
        "maxConcurrentSteps": 5,
        "consensusThreshold": 0.7,
    }
    assert stored.inputs == {"q": "why?"}
    assert stored.spec["name"] == "demo"
    assert stored.source == "sessions/demo.yaml"
    assert stored.error == "1 step(s) failed"
    assert stored.created_at == stored.started_at == at(0)
    assert stored.finished_at == at(6)
    assert stored.wall_ms == 6000.0
    assert (stored.input_tokens, stored.output_tokens, stored.total_tokens) == (None, None, None)
    assert stored.cost_usd is None
    assert (stored.steps_total, stored.steps_completed) == (4, 1)
    assert (stored.steps_failed, stored.steps_skipped) == (1, 1)
    assert [s.step_key for s in stored.steps] == ["a", "b", "c", "d"]

    step_a, step_b, step_c, step_d = stored.steps
    assert step_a.id == a.row_id
    assert (step_a.status, step_a.kind, step_a.prompt) == (
        "completed",
        "prompt",
        "Question a: why?",
    )
    assert step_a.prompt_template == "Question a: {q}"
    assert (step_a.output, step_a.attempts, step_a.latency_ms) == ("42", 1, 1000.0)
    assert (step_a.input_tokens, step_a.output_tokens, step_a.cost_usd) == (10, 5, 0.001)
    assert (step_a.started_at, step_a.completed_at) == (at(1), at(2))
    assert step_a.consensus is None and step_a.consensus_score is None
    [only] = step_a.calls
    assert (only.id, only.step_id, only.step_key, only.model_id) == (call_a, a.row_id, "a", "m1")
    assert (only.status, only.response, only.finish_reason) == ("ok", "42", "stop")
    assert (only.input_tokens, only.output_tokens, only.tokens_used) == (10, 5, 15)
    assert (only.latency_ms, only.cost_usd, only.attempt) == (500, 0.001, 1)
    assert (only.started_at, only.completed_at) == (at(1.1), at(1.6))
    assert only.included_in_consensus is True

    assert (step_b.kind, step_b.mode, step_b.synthesis) == ("multi", "all", "majority")
    assert (step_b.depends_on, step_b.models) == (["a"], ["m1", "m2", "m3"])
    assert (step_b.status, step_b.error, step_b.output) == ("failed", "judge disagreed", None)
    assert (step_b.input_tokens, step_b.cost_usd, step_b.consensus_score) == (None, None, 0.67)
    assert [call.id for call in step_b.calls] == [b1, b2, b3]
    assert [call.included_in_consensus for call in step_b.calls] == [True, True, False]
    assert [call.tokens_used for call in step_b.calls] == [15, None, 15]
    assert step_b.calls[1].cost_usd is None
    assert (step_b.calls[2].status, step_b.calls[2].error) == ("failed", "HTTP 500")
    assert step_b.calls[2].response is None
    consensus = step_b.consensus
    assert consensus is not None
    assert (consensus.method, consensus.score, consensus.threshold) == ("majority", 0.67, 0.6)
    assert (consensus.reached, consensus.content, consensus.outcome) == (True, "yes", "k_of_n")
    assert consensus.included_call_ids == [b1, b2]
    assert consensus.clusters == list(clusters)
    assert (consensus.attempt, consensus.created_at) == (1, at(4))

    assert (step_c.status, step_c.skip_reason, step_c.calls) == ("skipped", "step 'b' failed", [])
    assert (step_d.status, step_d.prompt, step_d.started_at) == ("pending", None, None)

    assert await store.count_rows() == {
        "thinktank_sessions": 1,
        "thinktank_steps": 4,
        "thinktank_parallel_executions": 4,
        "thinktank_call_attempts": 0,
        "thinktank_consensus": 1,
        "thinktank_events": len(events),
    }
    dumped = stored.model_dump(mode="json")
    assert dumped["steps"][1]["calls"][0]["started_at"] == "2026-03-01T12:00:03.100000Z"
    assert json.loads(json.dumps(dumped)) == dumped


async def test_events_are_logged_in_order_with_their_payload(store: Store) -> None:
    """thinktank_events holds every event, in write order, with ``to_dict()`` as payload."""
    events = simple_session(3)
    await store.write(events[:5])
    await store.write(events[5:])
    rows = await fetch_all(
        store, "SELECT type, step_key, session_id, payload FROM thinktank_events ORDER BY id"
    )
    assert [r[0] for r in rows] == [e.type for e in events]
    assert [r[1] for r in rows] == [getattr(e, "step_id", None) for e in events]
    assert {r[2] for r in rows} == {events[0].session_id}
    assert [as_json(r[3]) for r in rows] == [e.to_dict() for e in events]


async def test_text_no_database_takes_and_odd_keys_are_stored(store: Store) -> None:
    """NUL in an event the store does not know, and a dict key that is not a string,
    are stored as JSON has them (the key as text; NUL as U+FFFD on PostgreSQL)."""
    events = simple_session(1)
    sid = events[0].session_id
    await store.write(events[:1])
    extra: list[Event] = [
        NoteAdded(session_id=sid, step_id="s0", notes=("nul\x00",), seen=None),
        SessionStarted(
            session_id=sid,
            name="again",
            spec={"k": {1: "one"}},
            inputs={},
            parallel_execution_config={},
            steps=(),
            origin={"kind": "resume", "session_id": sid},
        ),
    ]
    await store.write(extra)
    rows = await fetch_all(store, "SELECT payload FROM thinktank_events ORDER BY id")
    stored = [as_json(r[0]) for r in rows[1:]]
    # PostgreSQL keeps no NUL in JSON: U+FFFD stands in for it.
    assert stored[0]["notes"][0] in ("nul\x00", "nul\ufffd")
    assert stored[1] == extra[1].to_dict() and stored[1]["spec"] == {"k": {"1": "one"}}


class NoteAdded(Event, tag="note_added", frozen=True, kw_only=True):
    """An event the store does not know, with fields of several shapes."""

    step_id: str
    notes: tuple[str, ...]
    seen: datetime | None


async def test_unknown_events_are_logged_only(store: Store) -> None:
    """An event type the store does not know is logged and changes no row."""
    events = simple_session(1)
    sid = events[0].session_id
    await store.write(events[:2])
    before = await store.get_session(sid)
    await store.write([NoteAdded(session_id=sid, step_id="s0", notes=("n",), seen=at(1))])
    assert await store.get_session(sid) == before
    assert (await store.count_rows())["thinktank_events"] == 3
    rows = await fetch_all(store, "SELECT type, step_key FROM thinktank_events ORDER BY id DESC")
    assert rows[0] == ("note_added", "s0")


async def test_call_started_and_finished_in_one_batch(store: Store) -> None:
    """A call started and finished in the same batch is stored in its final state."""
    events = simple_session(2)
    await store.write(events[:1])
    await store.write(events[1:4])  # step s0: StepStarted, CallStarted, CallFinished
    await store.write(events[4:])
    stored = await store.get_session(events[0].session_id)
    for step in stored.steps:
        [call] = step.calls
        assert (call.status, call.response, call.tokens_used) == ("ok", "42", 15)
        assert call.completed_at is not None
        assert step.status == "completed"


async def test_call_finished_in_a_later_batch(store: Store) -> None:
    """A call stays running until its CallFinished arrives in a later batch."""
    events = simple_session(1)
    await store.write(events[:3])  # up to CallStarted
    running = await store.get_session(events[0].session_id)
    [call] = running.steps[0].calls
    assert (call.status, call.completed_at, call.response) == ("running", None, None)
    assert running.steps[0].status == "running"
    assert running.status == "running"
    await store.write(events[3:])
    done = await store.get_session(events[0].session_id)
    [call] = done.steps[0].calls
    assert (call.status, call.response, call.latency_ms) == ("ok", "42", 500)


async def test_retried_step_marks_only_the_merged_attempt(store: Store) -> None:
    """Consensus flags apply to the calls of the attempt merged, not to earlier attempts."""
    sid = new_id()
    info = step_info("v", 0, models=("m1", "m2"))
    first = [call_pair(sid, "v", m, start=1, attempt=1) for m in ("m1", "m2")]
    second = [call_pair(sid, "v", m, start=3, attempt=2) for m in ("m1", "m2")]

    def consensus(ids: tuple[str, ...], when: float, attempt: int) -> ConsensusComputed:
        return ConsensusComputed(
            session_id=sid,
            at=at(when),
            attempt=attempt,
            step_id="v",
            method="majority",
            score=0.5,
            content="x",
            threshold=0.7,
            reached=False,
            included_call_ids=ids,
        )

    await store.write([session_started(sid, (info,))])
    await store.write(
        [
            StepStarted(session_id=sid, at=at(1), step_id="v", attempt=1, prompt="p"),
            *(e for _, s, f in first for e in (s, f)),
            consensus((first[0][0],), 2, 1),
            StepStarted(session_id=sid, at=at(3), step_id="v", attempt=2, prompt="p"),
            *(e for _, s, f in second for e in (s, f)),
        ]
    )
    # The second merge arrives alone in its batch: its attempt comes from the database.
    await store.write([consensus((second[1][0],), 4, 2)])
    stored = await store.get_session(sid)
    flags = {call.id: call.included_in_consensus for call in stored.steps[0].calls}
    assert flags == {first[0][0]: True, first[1][0]: False, second[0][0]: False, second[1][0]: True}
    step = stored.steps[0]
    assert step.consensus is not None
    assert (step.consensus.attempt, step.consensus.included_call_ids) == (2, [second[1][0]])
    assert (step.attempts, step.started_at) == (2, at(1))


async def test_list_sessions_newest_first(store: Store) -> None:
    """list_sessions gives summaries newest first, honours limit, and counts running ones."""
    older = simple_session(2, start=0, name="older")
    newer = simple_session(3, start=100, name="newer")
    running = simple_session(4, start=200, name="running")
    await store.write(older)
    await store.write(newer)
    await store.write(running[:5])  # started, and step s0 completed
    summaries = await store.list_sessions()
    assert [s.name for s in summaries] == ["running", "newer", "older"]
    top = summaries[1]
    assert (top.id, top.status, top.error) == (newer[0].session_id, "completed", None)
    assert top.source == "sessions/demo.yaml"
    assert (top.steps_total, top.steps_completed, top.steps_failed) == (3, 3, 0)
    assert (top.input_tokens, top.output_tokens, top.total_tokens) == (30, 15, 45)
    assert top.cost_usd == pytest.approx(0.003)
    assert (top.started_at, top.finished_at, top.wall_ms) == (at(100), at(104), 4000.0)
    live = summaries[0]
    assert (live.status, live.finished_at, live.steps_total, live.steps_completed) == (
        "running",
        None,
        4,
        1,
    )
    assert [s.name for s in await store.list_sessions(limit=2)] == ["running", "newer"]
    assert "steps" not in top.model_dump(mode="json")


async def test_get_session_by_prefix(store: Store) -> None:
    """A unique prefix of four or more characters finds the session."""
    events = simple_session(1)
    await store.write(events)
    sid = events[0].session_id
    assert (await store.get_session(sid[:4])).id == sid
    assert (await store.get_session(sid[:13])).id == sid
    assert (await store.get_session(f"  {sid}  ")).id == sid


async def test_get_session_unknown_short_and_ambiguous(store: Store) -> None:
    """Unknown, too short and ambiguous ids raise UnknownSessionError on one line."""
    base = simple_session(1)
    twin = simple_session(1)
    # Give both sessions ids that share their first eight characters.
    ids = {base[0].session_id: "abcd1234-0000-4000-8000-000000000001"}
    ids[twin[0].session_id] = "abcd1234-0000-4000-8000-000000000002"
    for events in (base, twin):
        renamed = [_with_session(e, ids[e.session_id]) for e in events]
        await store.write(renamed)

    with pytest.raises(UnknownSessionError, match="no stored session matches 'ffff0000'"):
        await store.get_session("ffff0000")
    with pytest.raises(UnknownSessionError, match="at least 4 characters") as short:
        await store.get_session("abc")
    assert "'abc'" in str(short.value)
    with pytest.raises(UnknownSessionError, match="ambiguous") as ambiguous:
        await store.get_session("abcd1234")
    message = str(ambiguous.value)
    assert "\n" not in message and "'abcd1234'" in message
    assert "abcd1234-0000-4000-8000-000000000001" in message
    with pytest.raises(UnknownSessionError, match="ambiguous"):
        await store.get_session("abcd1234-0000-4000-8000-00000000000")
    assert (await store.get_session("abcd1234-0000-4000-8000-000000000002")).id.endswith("2")


def _with_session(event: Event, session_id: str) -> Event:
    """``event`` moved to another session id."""
    return msgspec.structs.replace(event, session_id=session_id)


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    """The database file is in WAL mode."""
    async with await Store.open(str(tmp_path / "tt.db")) as store:
        await store.write(simple_session(1))
    db = sqlite3.connect(tmp_path / "tt.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


async def test_sqlite_connections_have_the_store_settings(tmp_path: Path) -> None:
    """Every connection of a SQLite store: busy timeout, foreign keys, synchronous NORMAL,
    and transactions begun by the store only."""
    async with await Store.open(str(tmp_path / "tt.db")) as store:
        await store.write(simple_session(1))
        db = store._writer.db
        pragmas = {}
        for name in ("busy_timeout", "foreign_keys", "synchronous", "journal_mode"):
            rows = await db.execute_fetchall(f"PRAGMA {name}")
            pragmas[name] = rows[0][0]
        assert db.isolation_level is None
        async with store._reader() as conn:
            raw = await conn.get_raw_connection()
            assert raw.driver_connection.isolation_level is None
    assert pragmas == {
        "busy_timeout": 30_000,
        "foreign_keys": 1,
        "synchronous": 1,
        "journal_mode": "wal",
    }


async def test_concurrent_stores_on_one_database(db_url: str) -> None:
    """Four stores write 20 sessions at once into one database without 'database is locked'."""
    stores = [await Store.open(db_url) for _ in range(4)]
    sessions = [simple_session(5, start=i * 10, name=f"s{i}") for i in range(20)]

    async def play(store: Store, events: list[Event]) -> None:
        for i in range(0, len(events), 3):
            await store.write(events[i : i + 3])
            await anyio.lowlevel.checkpoint()

    try:
        async with anyio.create_task_group() as tg:
            for i, events in enumerate(sessions):
                tg.start_soon(play, stores[i % 4], events)
        counts = await stores[0].count_rows()
        summaries = await stores[3].list_sessions()
    finally:
        for store in stores:
            await store.close()
    assert counts == {
        "thinktank_sessions": 20,
        "thinktank_steps": 100,
        "thinktank_parallel_executions": 100,
        "thinktank_call_attempts": 0,
        "thinktank_consensus": 0,
        "thinktank_events": sum(len(events) for events in sessions),
    }
    assert {s.status for s in summaries} == {"completed"}
    assert {s.steps_completed for s in summaries} == {5}


async def test_resumed_session_keeps_its_rows(store: Store) -> None:
    """A second SessionStarted for a stored session reopens it and adds only new steps."""
    events = simple_session(2)
    first = events[0]
    assert isinstance(first, SessionStarted)
    await store.write(events)
    extra = step_info("extra", 2)
    again = SessionStarted(
        session_id=first.session_id,
        at=at(50),
        name=first.name,
        spec=first.spec,
        inputs=first.inputs,
        parallel_execution_config=first.parallel_execution_config,
        steps=(*first.steps, extra),
    )
    await store.write([again])
    stored = await store.get_session(first.session_id)
    assert (stored.status, stored.finished_at, stored.steps_total) == ("running", None, 3)
    assert stored.created_at == at(0)
    assert [s.step_key for s in stored.steps] == ["s0", "s1", "extra"]
    assert [s.status for s in stored.steps] == ["completed", "completed", "pending"]
    assert stored.steps[0].id == first.steps[0].row_id


def sub_step(
    key: str,
    position: int,
    *,
    parent: str | None = None,
    provenance: tuple[str, ...] = ("m1", "m2"),
    depends_on: tuple[str, ...] = (),
) -> StepInfo:
    """A step a decompose step adds at run time."""
    return msgspec.structs.replace(
        step_info(key, position, depends_on=depends_on), parent=parent, provenance=provenance
    )


async def test_steps_added_inserts_pending_steps(store: Store) -> None:
    """StepsAdded stores new steps (pending, with parent and provenance); the session grows."""
    sid = new_id()
    plan = step_info("plan", 0, models=("m1", "m2"))
    final = step_info("final", 1, depends_on=("plan",))
    await store.write([session_started(sid, (plan, final))])
    sub1 = sub_step("sub1", 2)
    sub2 = sub_step("sub2", 3, provenance=("m2",), depends_on=("sub1",))
    added = StepsAdded(session_id=sid, at=at(2), parent="plan", steps=(sub1, sub2))
    # The new steps run in the same batch that adds them.
    await store.write([added, *single_step_events(sid, "sub1", start=3)])

    stored = await store.get_session(sid)
    assert stored.steps_total == 4
    assert [s.step_key for s in stored.steps] == ["plan", "final", "sub1", "sub2"]
    by_key = {s.step_key: s for s in stored.steps}
    assert (by_key["plan"].parent, by_key["plan"].provenance) == (None, [])
    assert (by_key["sub1"].id, by_key["sub1"].status) == (sub1.row_id, "completed")
    assert (by_key["sub1"].parent, by_key["sub1"].provenance) == ("plan", ["m1", "m2"])
    assert (by_key["sub2"].status, by_key["sub2"].depends_on) == ("pending", ["sub1"])
    assert (by_key["sub2"].parent, by_key["sub2"].provenance) == ("plan", ["m2"])
    assert (by_key["sub2"].prompt_template, by_key["sub2"].position) == ("Question sub2: {q}", 3)
    assert [len(s.calls) for s in stored.steps] == [0, 0, 1, 0]
    assert stored.model_dump(mode="json")["steps"][3]["provenance"] == ["m2"]
    [summary] = await store.list_sessions()
    assert (summary.steps_total, summary.steps_completed) == (4, 1)
    rows = await fetch_all(
        store, "SELECT step_key, payload FROM thinktank_events WHERE type = 'steps_added'"
    )
    assert [(key, as_json(payload)) for key, payload in rows] == [("plan", added.to_dict())]


async def test_steps_added_twice_adds_only_missing_steps(store: Store) -> None:
    """A replayed StepsAdded keeps the stored steps (and their ids) and adds only new keys."""
    sid = new_id()
    plan = step_info("plan", 0)
    await store.write([session_started(sid, (plan,))])
    sub1 = sub_step("sub1", 1, parent="plan")
    await store.write([StepsAdded(session_id=sid, at=at(1), parent="plan", steps=(sub1,))])
    await store.write(single_step_events(sid, "sub1", start=2))
    # Replayed history: same keys with fresh row ids, plus one step it did not have.
    replayed = (sub_step("sub1", 1), sub_step("sub2", 2, provenance=("m3",)))
    other = StepsAdded(session_id=sid, at=at(5), parent="plan", steps=replayed)
    await store.write([other])
    await store.write([other])  # and once more, in a batch of its own
    stored = await store.get_session(sid)
    assert [s.step_key for s in stored.steps] == ["plan", "sub1", "sub2"]
    assert stored.steps_total == 3
    sub1_row = stored.step("sub1")
    assert (sub1_row.id, sub1_row.status, sub1_row.provenance) == (
        sub1.row_id,
        "completed",
        ["m1", "m2"],
    )
    assert (stored.step("sub2").id, stored.step("sub2").provenance) == (replayed[1].row_id, ["m3"])
    assert (await store.count_rows())["thinktank_steps"] == 3

    # A resumed session (SessionStarted again, with the file's steps) keeps them all.
    first = session_started(sid, (plan,))
    await store.write([msgspec.structs.replace(first, at=at(9))])
    resumed = await store.get_session(sid)
    assert (resumed.status, resumed.steps_total) == ("running", 3)
    assert resumed.step("sub1").id == sub1.row_id


async def test_steps_added_to_an_unknown_session_fails(store: Store) -> None:
    """StepsAdded for a session never started is a one-line StoreError; nothing is written."""
    added = StepsAdded(session_id=new_id(), parent="plan", steps=(sub_step("x", 0),))
    with pytest.raises(StoreError, match="is not stored") as failed:
        await store.write([added])
    assert "\n" not in str(failed.value)
    assert (await store.count_rows())["thinktank_events"] == 0


async def test_bad_batch_raises_store_error_and_writes_nothing(store: Store) -> None:
    """A batch naming an unknown step fails as a whole with a one-line StoreError."""
    events = simple_session(1)
    await store.write(events[:1])
    before = await store.count_rows()
    stray = StepStarted(session_id=events[0].session_id, step_id="nope", attempt=1, prompt="p")
    with pytest.raises(StoreError, match="no step 'nope'") as failed:
        await store.write([*events[1:3], stray])
    assert "\n" not in str(failed.value)
    assert await store.count_rows() == before
    await store.write(events[1:])  # the store is still usable
    assert (await store.get_session(events[0].session_id)).status == "completed"


async def test_nul_characters_in_a_reply_are_stored(store: Store) -> None:
    """A reply holding NUL characters is recorded with U+FFFD instead, on every backend
    (PostgreSQL refuses NUL in text and JSONB; an export must import anywhere), and the
    session says where."""
    sid = new_id()
    _, started, finished = call_pair(sid, "a", "m1", start=1, content="a\x00b")
    step_done = StepFinished(
        session_id=sid,
        at=at(2),
        step_id="a",
        status="completed",
        attempts=1,
        started_at=at(1),
        output="a\x00b",
    )
    await store.write([session_started(sid, (step_info("a", 0),)), started, finished, step_done])
    stored = await store.get_session(sid)
    expected = "a\ufffdb"
    assert (stored.steps[0].output, stored.steps[0].calls[0].response) == (expected, expected)
    assert stored.text_repairs == [
        "call_finished.content of step 'a'",
        "step_finished.output of step 'a'",
    ]
    rows = await fetch_all(
        store, "SELECT payload FROM thinktank_events WHERE type = 'call_finished'"
    )
    assert as_json(rows[0][0])["content"] == expected


async def test_datetimes_come_back_utc_aware(store: Store) -> None:
    """Datetimes written in another zone come back as the same instant, in UTC."""
    events = simple_session(1)
    local = timezone(timedelta(hours=2))
    shifted = [_with_at(e, e.at.astimezone(local)) for e in events]
    await store.write(shifted)
    stored = await store.get_session(events[0].session_id)
    assert stored.started_at == at(0) and stored.started_at.tzinfo is UTC
    assert stored.steps[0].calls[0].completed_at == at(0.6)
    assert stored.steps[0].calls[0].completed_at.tzinfo is UTC


def _with_at(event: Event, when: datetime) -> Event:
    """``event`` with its time changed."""
    return msgspec.structs.replace(event, at=when)


async def test_normalize_db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths become absolute aiosqlite URLs; sync drivers become async; full URLs stay."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", f"{tmp_path}/home")
    assert normalize_db_url("runs/tt.db") == f"sqlite+aiosqlite:///{tmp_path}/runs/tt.db"
    assert normalize_db_url("/tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert normalize_db_url("~/x.db") == f"sqlite+aiosqlite:///{tmp_path}/home/x.db"
    assert normalize_db_url(":memory:") == "sqlite+aiosqlite:///:memory:"
    assert normalize_db_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert normalize_db_url("sqlite+aiosqlite:////abs/x.db") == "sqlite+aiosqlite:////abs/x.db"
    assert (
        normalize_db_url("postgresql://u:pw@db:5432/tt") == "postgresql+asyncpg://u:pw@db:5432/tt"
    )
    assert normalize_db_url("postgresql+asyncpg://u:pw@db/tt") == "postgresql+asyncpg://u:pw@db/tt"
    with pytest.raises(StoreError):
        normalize_db_url("   ")


async def test_default_db_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """$THINKTANK_DB names the database; without it, ./thinktank.db."""
    monkeypatch.delenv(DEFAULT_DB_ENV, raising=False)
    assert default_db_url() == "sqlite+aiosqlite:///./thinktank.db"
    monkeypatch.setenv(DEFAULT_DB_ENV, "/data/tt.db")
    assert default_db_url() == "/data/tt.db"


async def test_open_unwritable_path_raises_store_error(tmp_path: Path) -> None:
    """A database under a regular file cannot be opened: one-line StoreError naming it."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open database") as failed:
        await Store.open(str(blocker / "tt.db"))
    message = str(failed.value)
    assert "\n" not in message and str(blocker / "tt.db") in message
    assert "is not a directory" in message
    with pytest.raises(StoreError, match="does not exist"):
        await Store.open(str(tmp_path / "missing" / "tt.db"))


async def test_password_never_shown(tmp_path: Path) -> None:
    """Errors about a URL with a password hide the password."""
    with pytest.raises(StoreError) as failed:
        await Store.open("postgresql+asyncpg://user:s3cret@127.0.0.1:1/tt")
    assert "s3cret" not in str(failed.value) and "***" in str(failed.value)


async def test_store_url_and_closed_store(tmp_path: Path) -> None:
    """A store shows its URL; once closed it refuses work with a StoreError."""
    async with await Store.open(str(tmp_path / "tt.db")) as opened:
        assert opened.url == f"sqlite+aiosqlite:///{tmp_path / 'tt.db'}"
        assert repr(opened) == f"Store({opened.url!r})"
    with pytest.raises(StoreError, match="closed"):
        await opened.list_sessions()
    await opened.close()  # closing twice is fine


async def test_memory_database_round_trip() -> None:
    """An in-memory store works for tests and dry runs."""
    async with await Store.open(":memory:") as memory:
        events = simple_session(2)
        await memory.write(events)
        assert (await memory.get_session(events[0].session_id)).status == "completed"


async def test_sqlite_datetime_text_matches_sqlalchemy() -> None:
    """The fast DATETIME text is the one SQLAlchemy's SQLite type writes, for any zone."""
    dialect = sqlite_dialect()
    process = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    samples = [at(0), at(1.000001), at(59.5), at(3599.999999)]
    samples += [datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC), datetime(2026, 3, 1, 1, 2, 3, 450)]
    for value in samples:
        assert sqlite_datetime(value) == process(value)
    east = at(7.25).astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert sqlite_datetime(east) == process(at(7.25))


async def test_generic_executor_writes_the_same_rows(tmp_path: Path) -> None:
    """The SQLAlchemy-connection write path (other drivers than aiosqlite and asyncpg)
    stores the same session as the direct one."""
    events = simple_session(3)
    async with await Store.open(str(tmp_path / "generic.db")) as store:
        engine = store._engine
        writer = Writer(engine, (LookupError,), direct=False)
        statements, log = Statements(engine.dialect), EventLog(engine.dialect)
        cache: dict[str, dict[str, str]] = {}
        for batch in (events[:6], events[6:]):
            async with writer.transaction() as executor:
                learnt, _ = await apply_batch(
                    executor, batch, cache=cache, statements=statements, log=log
                )
            cache.update(learnt)
        stored = await store.get_session(events[0].session_id)
        counts = await store.count_rows()
    assert stored.status == "completed"
    assert [s.status for s in stored.steps] == ["completed"] * 3
    assert [c.tokens_used for s in stored.steps for c in s.calls] == [15, 15, 15]
    assert counts["thinktank_events"] == len(events)


async def test_postgres_writer_reconnects_after_the_server_drops_it(pg_url: str) -> None:
    """A PostgreSQL writer connection the server has dropped is replaced on the next write."""
    asyncpg: Any = importlib.import_module("asyncpg")
    events = simple_session(2)
    async with await Store.open(pg_url) as store:
        await store.write(events[:3])
        admin = await asyncpg.connect(pg_url)
        try:
            pid = store._writer.db.get_server_pid()
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await anyio.sleep(0.1)
        await store.write(events[3:])
        assert (await store.get_session(events[0].session_id)).status == "completed"


async def test_consensus_cache_lookup_returns_the_newest_merge_as_a_value(store: Store) -> None:
    """``find_consensus`` gives the newest merge stored under a key as an events-level
    value (no read model), equal whichever path reads it; an unknown key gives None."""
    sid = new_id()
    steps = (step_info("a", 0), step_info("b", 1))
    key = "sha256:" + "ab" * 32

    def merge(step: str, when: float, content: str, reached: bool) -> ConsensusComputed:
        return ConsensusComputed(
            session_id=sid,
            at=at(when),
            step_id=step,
            method="majority",
            score=0.5,
            content=content,
            threshold=0.7,
            reached=reached,
            included_call_ids=(),
            clusters=({"answer": content, "call_ids": ["c1", "c2"], "weight": 0.5},),
            outcome="low_consensus",
            mode="quorum",
            early_termination=True,
            escalation=(("m1", "m2"), ("m3",)),
            items=({"text": content, "models": ["m1"]},),
            cache_key=key,
        )

    await store.write([session_started(sid, steps), merge("a", 1, "old", True)])
    await store.write([merge("b", 2, "new", False)])
    found = await store.find_consensus(key)
    assert isinstance(found, CachedConsensus)
    stored = await fetch_all(
        store,
        "SELECT id FROM thinktank_consensus WHERE step_id = "
        "(SELECT id FROM thinktank_steps WHERE step_key = 'b')",
    )
    assert found == CachedConsensus(
        id=stored[0][0],
        session_id=sid,
        method="majority",
        score=0.5,
        threshold=0.7,
        reached=False,
        content="new",
        outcome="low_consensus",
        mode="quorum",
        early_termination=True,
        clusters=({"answer": "new", "call_ids": ["c1", "c2"], "weight": 0.5},),
        escalation=(("m1", "m2"), ("m3",)),
        items=({"text": "new", "models": ["m1"]},),
    )
    # The SQLAlchemy read path (other drivers) reads the same value.
    assert await store._read(find_consensus, key) == found
    assert await store.find_consensus("sha256:" + "0" * 64) is None


async def test_consensus_cache_lookup_on_a_closed_store_fails(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "tt.db"))
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.find_consensus("sha256:x")
