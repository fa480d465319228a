"""The read path: stored rows become the pydantic ``Stored*`` models users see.

The table classes in ``tables`` are never returned: they skip validation and carry
SQLAlchemy state. These models are plain data with a ``model_dump(mode="json")`` shape
that ``thinktank show --json`` prints as it is. SQLite hands datetimes back without a
zone; every datetime field here is marked UTC on the way in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict
from sqlalchemy import Row, Table, bindparam, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from thinktank.errors import UnknownSessionError, UsageError
from thinktank.events import CachedConsensus
from thinktank.store._json import loads
from thinktank.store.tables import ATTEMPTS, CALLS, CONSENSUS, EVENTS, SESSIONS, STEPS

__all__ = [
    "CONSENSUS_BY_KEY",
    "MIN_PREFIX",
    "SessionSummary",
    "StoredAttempt",
    "StoredCall",
    "StoredConsensus",
    "StoredSession",
    "StoredStep",
    "cached_consensus",
    "count_rows",
    "events_of",
    "find_consensus",
    "get_session",
    "list_sessions",
    "resolve_id",
    "worker_name",
]

MIN_PREFIX = 4
"""Fewest characters of a session id that ``get_session`` accepts as a prefix."""


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UTCDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A timezone-aware UTC datetime (naive values from SQLite are UTC)."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class StoredAttempt(_Model):
    """One try of a retried call."""

    number: int
    """1 for the first try, 2 for the first retry, ..."""
    status: str
    """``ok``, ``failed``, ``timeout`` or ``cancelled``."""
    status_code: int | None
    """The HTTP status, when there was one."""
    error: str | None
    """What went wrong, when it did."""
    started_at: UTCDatetime
    """When this try was sent."""
    latency_ms: int | None
    """Wall time of this try."""
    retry_in_s: float | None
    """The wait before the next try; None for the last."""


class StoredCall(_Model):
    """One stored model call."""

    id: str
    """UUID of the call."""
    step_id: str
    """Row UUID of the step that made it."""
    step_key: str
    """The user's id of that step."""
    model_id: str
    """The model name."""
    attempt: int
    """The step attempt it belongs to (1 for the first)."""
    status: str
    """``running``, ``ok``, ``failed``, ``timeout`` or ``cancelled``."""
    started_at: UTCDatetime
    """When it was sent."""
    completed_at: UTCDatetime | None
    """When it ended; None while it runs."""
    response: str | None
    """The response text (partial, or None, on failure)."""
    tokens_used: int | None
    """Input plus output tokens; None when either is unknown."""
    input_tokens: int | None
    """Prompt tokens; None when unknown."""
    output_tokens: int | None
    """Completion tokens; None when unknown."""
    latency_ms: int | None
    """Wall time in milliseconds."""
    cost_usd: float | None
    """USD; None when unknown."""
    finish_reason: str | None
    """Why generation stopped."""
    error: str | None
    """What went wrong, when it did."""
    included_in_consensus: bool
    """Whether the response took part in the step's merge."""
    tries: int = 1
    """How many times it was sent (retries included)."""
    reused_from: str | None = None
    """The stored call whose answer this one served again (a resumed step); its tokens
    and cost are counted there, and this call's are 0."""
    attempts: list[StoredAttempt] = []
    """Every try, when it was retried (empty when the first try answered)."""


class StoredConsensus(_Model):
    """The merge of a multi-model step (its latest, when it was retried)."""

    id: str
    """UUID of the result."""
    session_id: str
    """The session it belongs to."""
    step_id: str
    """Row UUID of the step it merged."""
    attempt: int | None
    """The step attempt whose calls were merged."""
    method: str
    """Synthesis method."""
    score: float
    """Agreement in [0, 1]."""
    threshold: float
    """The consensus threshold in force."""
    reached: bool
    """Whether ``score >= threshold``."""
    content: str
    """The merged answer."""
    outcome: str
    """``ok`` or a degraded outcome (``low_consensus``, ``k_of_n``)."""
    clusters: list[dict[str, Any]]
    """The agreeing groups."""
    included_call_ids: list[str]
    """Calls whose responses took part."""
    created_at: UTCDatetime
    """When it was computed."""
    mode: str = "all"
    """The multi-model mode."""
    early_termination: bool = False
    """Whether the mode stopped before every model answered."""
    escalation: list[list[str]] = []
    """The models started in each round."""
    items: list[dict[str, Any]] = []
    """``union``: merged items with the models that found each."""
    judge_call_id: str | None = None
    """``judge``: the synthesizer's call."""
    note: str | None = None
    """What a degraded outcome means here."""
    cached_from: str | None = None
    """When served from the consensus cache: the consensus reused."""


class StoredStep(_Model):
    """One stored step with its calls and consensus."""

    id: str
    """Row UUID of the step."""
    step_key: str
    """The user's step id."""
    position: int
    """Order in the session file (steps added at run time come after)."""
    kind: str
    """``prompt``, ``multi``, ..."""
    depends_on: list[str]
    """Keys of the steps it waits for."""
    models: list[str]
    """Model names it calls."""
    mode: str | None
    """Multi-model mode."""
    synthesis: str | None
    """Merge method."""
    prompt_template: str
    """The prompt before rendering."""
    prompt: str | None
    """The rendered prompt of the latest attempt; None before it starts."""
    status: str
    """``pending``, ``running``, ``completed``, ``failed``, ``skipped`` or ``cancelled``."""
    output: str | None
    """Its output."""
    error: str | None
    """Why it failed."""
    skip_reason: str | None
    """Why it was skipped."""
    attempts: int
    """Attempts started."""
    started_at: UTCDatetime | None
    """When the first attempt started."""
    completed_at: UTCDatetime | None
    """When it ended."""
    latency_ms: float | None
    """Wall time from first start to end."""
    input_tokens: int | None
    """Prompt tokens of its calls; None when any is unknown."""
    output_tokens: int | None
    """Completion tokens of its calls; None when any is unknown."""
    cost_usd: float | None
    """USD of its calls; None when any is unknown."""
    consensus_score: float | None
    """Agreement of a multi-model step."""
    parent: str | None = None
    """For a step added at run time: the key of the decompose step that added it."""
    provenance: list[str] = []
    """For a step added at run time: the models that proposed it."""
    calls: list[StoredCall] = []
    """Every call of every attempt, by start time."""
    consensus: StoredConsensus | None = None
    """The latest merge, for multi-model steps."""


class SessionSummary(_Model):
    """One line of ``thinktank list``: a session without its steps."""

    id: str
    """UUID of the session."""
    name: str
    """Its name."""
    status: str
    """``queued``, ``running``, ``completed``, ``partial``, ``failed`` or ``interrupted``."""
    source: str | None
    """The session file, when it came from one."""
    error: str | None
    """Why it did not complete."""
    created_at: UTCDatetime
    """When it was first started."""
    started_at: UTCDatetime
    """When it started."""
    finished_at: UTCDatetime | None
    """When it finished; None while it runs."""
    wall_ms: float | None
    """Wall time."""
    input_tokens: int | None
    """Prompt tokens; None when unknown (or still running)."""
    output_tokens: int | None
    """Completion tokens; None when unknown (or still running)."""
    total_tokens: int | None
    """Input plus output tokens; None when either is unknown."""
    cost_usd: float | None
    """USD; None when unknown (or still running)."""
    steps_total: int
    """Steps in the session."""
    steps_completed: int
    """Steps completed (counted from the steps while it runs)."""
    steps_failed: int
    """Steps failed or cancelled (counted from the steps while it runs)."""
    steps_skipped: int
    """Steps skipped (counted from the steps while it runs)."""
    text_repairs: list[str] = []
    """Where text no database can store (lone surrogates, invalid UTF-8, NUL) was
    written with U+FFFD instead."""
    key_id: str | None = None
    """The id of the API key whose request made it (``thinktank serve``); None for a
    session made otherwise."""
    request_id: str | None = None
    """The ``X-Request-Id`` of the HTTP request that made it (or resumed it last);
    None for a session made otherwise."""
    queue: str | None = None
    """The queue it was put on when it was queued (``Store.enqueue_session``)."""
    queued_at: UTCDatetime | None = None
    """When it was queued; None for a session run at once. A ``queued`` session has
    no steps yet and its ``started_at`` is this time until a worker starts it."""
    worker: str | None = None
    """The name of the ``thinktank worker`` that holds it (see :func:`worker_name`),
    while it is ``queued`` or ``running``; None otherwise, and for a session run in
    the process that started it."""


class StoredSession(SessionSummary):
    """A whole stored session: definition, state, steps, calls and consensus."""

    parallel_execution_config: dict[str, Any]
    """The spec's ``parallelExecution`` block (camelCase keys)."""
    spec: dict[str, Any]
    """The validated session spec."""
    inputs: dict[str, Any]
    """The inputs it ran with."""
    model_selection: dict[str, str] = {}
    """Models chosen by automatic selection, with the reason for each."""
    origin: dict[str, Any] | None = None
    """What the session was made from (replay, fork), None for a fresh run."""
    steps: list[StoredStep]
    """Every step, in file order."""

    def step(self, step_key: str) -> StoredStep:
        """The step with the user's id ``step_key``.

        Raises:
            KeyError: the session has no such step.
        """
        for step in self.steps:
            if step.step_key == step_key:
                return step
        raise KeyError(step_key)


_ACTIVE = ("queued", "running")
"""Statuses under which a session's lease owner is the worker that runs it (a finished
session's expired lease names a worker that no longer does)."""

_SUMMARY_COLUMNS = [
    SESSIONS.c[name] for name in SessionSummary.model_fields if name != "worker"
] + [SESSIONS.c.lease_owner]


def worker_name(lease_owner: str | None) -> str | None:
    """The worker name in a lease owner's id, None when no worker holds the lease.

    A ``thinktank worker`` leases as its executor id ``NAME:HOST:PID:RAND`` (its name
    may hold colons); any other run leases as ``HOST:PID:RAND``, which names no worker.
    """
    if lease_owner is None or lease_owner.count(":") < 3:
        return None
    return lease_owner.rsplit(":", 3)[0]


def _with_worker(row: dict[str, Any]) -> dict[str, Any]:
    """The session row with ``worker`` in place of its lease owner."""
    owner = row.pop("lease_owner", None)
    row["worker"] = worker_name(owner) if row["status"] in _ACTIVE else None
    return row


def _live_counts(summary: dict[str, Any], statuses: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """Counters of a running session, from its steps (they are stored when it ends)."""
    counts = dict.fromkeys(("completed", "failed", "cancelled", "skipped"), 0)
    for status, n in statuses:
        if status in counts:
            counts[status] += n
    summary["steps_completed"] = counts["completed"]
    summary["steps_failed"] = counts["failed"] + counts["cancelled"]
    summary["steps_skipped"] = counts["skipped"]
    return summary


async def list_sessions(conn: AsyncConnection, limit: int | None) -> list[SessionSummary]:
    """Sessions, newest first."""
    query = select(*_SUMMARY_COLUMNS).order_by(SESSIONS.c.created_at.desc(), SESSIONS.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    rows = [dict(row._mapping) for row in await conn.execute(query)]
    running = [row["id"] for row in rows if row["status"] == "running"]
    if running:
        statuses: dict[str, list[tuple[str, int]]] = {sid: [] for sid in running}
        result = await conn.execute(
            select(STEPS.c.session_id, STEPS.c.status, func.count())
            .where(STEPS.c.session_id.in_(running))
            .group_by(STEPS.c.session_id, STEPS.c.status)
        )
        for sid, status, n in result:
            statuses[sid].append((status, n))
        for row in rows:
            if row["status"] == "running":
                _live_counts(row, statuses[row["id"]])
    return [SessionSummary.model_validate(_with_worker(row)) for row in rows]


async def _resolve(conn: AsyncConnection, id_or_prefix: str) -> Row[Any]:
    """The session row for a full id or a unique prefix of one."""
    return await resolve_id(conn, SESSIONS, id_or_prefix, what="session", error=UnknownSessionError)


async def resolve_id(
    conn: AsyncConnection,
    table: Table,
    id_or_prefix: str,
    *,
    what: str,
    error: type[UsageError],
) -> Row[Any]:
    """The row of ``table`` whose ``id`` is ``id_or_prefix`` or starts with it (a unique
    prefix of at least :data:`MIN_PREFIX` characters); ``error`` names ``what`` if none."""
    wanted = id_or_prefix.strip()
    row = (await conn.execute(select(table).where(table.c.id == wanted))).first()
    if row is not None:
        return row
    if not wanted:
        raise error(f"no {what} id given")
    if len(wanted) < MIN_PREFIX:
        raise error(
            f"no {what} has the id {wanted!r}; a prefix needs at least {MIN_PREFIX} characters"
        )
    matches = (
        await conn.execute(
            select(table)
            .where(table.c.id.startswith(wanted, autoescape=True))
            .order_by(table.c.id)
            .limit(3)
        )
    ).all()
    if not matches:
        raise error(f"no stored {what} matches {wanted!r}")
    if len(matches) > 1:
        shown = ", ".join(m.id for m in matches[:2]) + (", ..." if len(matches) > 2 else "")
        raise error(
            f"{what} id prefix {wanted!r} is ambiguous: it matches {shown}; give more characters"
        )
    return matches[0]


async def get_session(conn: AsyncConnection, id_or_prefix: str) -> StoredSession:
    """The whole session with the id (or unique id prefix) ``id_or_prefix``."""
    session = dict((await _resolve(conn, id_or_prefix))._mapping)
    sid = session["id"]
    step_rows = (
        await conn.execute(
            select(STEPS).where(STEPS.c.session_id == sid).order_by(STEPS.c.position, STEPS.c.id)
        )
    ).all()
    keys = {row.id: row.step_key for row in step_rows}
    calls: dict[str, list[StoredCall]] = {row.id: [] for row in step_rows}
    result = await conn.execute(
        select(CALLS)
        .where(CALLS.c.session_id == sid)
        .order_by(CALLS.c.started_at, CALLS.c.attempt, CALLS.c.id)
    )
    attempts: dict[str, list[StoredAttempt]] = {}
    tries = await conn.execute(
        select(ATTEMPTS)
        .where(ATTEMPTS.c.session_id == sid)
        .order_by(ATTEMPTS.c.call_id, ATTEMPTS.c.number)
    )
    for row in tries:
        attempts.setdefault(row.call_id, []).append(StoredAttempt.model_validate(row._mapping))
    for row in result:
        data = dict(row._mapping)
        data["step_key"] = keys.get(data["step_id"], "")
        data["attempts"] = attempts.get(data["id"], [])
        calls.setdefault(data["step_id"], []).append(StoredCall.model_validate(data))
    consensus: dict[str, StoredConsensus] = {}
    result = await conn.execute(
        select(CONSENSUS)
        .where(CONSENSUS.c.session_id == sid)
        .order_by(CONSENSUS.c.created_at, CONSENSUS.c.id)
    )
    for row in result:
        consensus[row.step_id] = StoredConsensus.model_validate(dict(row._mapping))
    steps = [
        StoredStep.model_validate(
            {**row._mapping, "calls": calls[row.id], "consensus": consensus.get(row.id)}
        )
        for row in step_rows
    ]
    if session["status"] == "running":
        counts: dict[str, int] = {}
        for step in steps:
            counts[step.status] = counts.get(step.status, 0) + 1
        _live_counts(session, list(counts.items()))
    session["steps"] = steps
    return StoredSession.model_validate(_with_worker(session))


_CACHED_COLUMNS = (
    "id",
    "session_id",
    "method",
    "score",
    "threshold",
    "reached",
    "content",
    "outcome",
    "mode",
    "early_termination",
    "clusters",
    "escalation",
    "items",
)
CONSENSUS_BY_KEY = (
    select(*(CONSENSUS.c[name] for name in _CACHED_COLUMNS))
    .where(CONSENSUS.c.cache_key == bindparam("key"))
    .order_by(CONSENSUS.c.created_at.desc(), CONSENSUS.c.id.desc())
    # Literal LIMIT and OFFSET (SQLite's compiler adds one): the key is the only
    # bound parameter, which the direct path binds by name.
    .limit(literal_column("1"))
    .offset(literal_column("0"))
)
"""The newest consensus stored under a cache key (``cache_key`` is indexed)."""


def _json(value: Any) -> Any:
    """A JSON column's value: drivers under SQLAlchemy hand it back as text."""
    return loads(value) if isinstance(value, str) else value


def cached_consensus(row: Sequence[Any]) -> CachedConsensus:
    """The value of a :data:`CONSENSUS_BY_KEY` row, from SQLAlchemy or from the driver
    (JSON as text, booleans as integers on SQLite)."""
    (id_, session_id, method, score, threshold, reached, content, outcome, mode, early) = row[:10]
    clusters, escalation, items = (_json(v) for v in row[10:])
    return CachedConsensus(
        id=id_,
        session_id=session_id,
        method=method,
        score=score,
        threshold=threshold,
        reached=bool(reached),
        content=content,
        outcome=outcome,
        mode=mode,
        early_termination=bool(early),
        clusters=tuple(clusters),
        escalation=tuple(tuple(r) for r in escalation),
        items=tuple(items),
    )


async def find_consensus(conn: AsyncConnection, cache_key: str) -> CachedConsensus | None:
    """The newest consensus stored under ``cache_key``, or None."""
    row = (await conn.execute(CONSENSUS_BY_KEY, {"key": cache_key})).first()
    return None if row is None else cached_consensus(tuple(row))


async def events_of(conn: AsyncConnection, session_id: str) -> list[dict[str, Any]]:
    """Every event payload of a session, in the order it was written."""
    result = await conn.execute(
        select(EVENTS.c.payload).where(EVENTS.c.session_id == session_id).order_by(EVENTS.c.id)
    )
    return [dict(row.payload) for row in result]


async def count_rows(conn: AsyncConnection) -> dict[str, int]:
    """Table name -> row count, for every thinktank table."""
    counts: dict[str, int] = {}
    for table in (SESSIONS, STEPS, CALLS, ATTEMPTS, CONSENSUS, EVENTS):
        counts[table.name] = int(await conn.scalar(select(func.count()).select_from(table)) or 0)
    return counts
