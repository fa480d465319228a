"""The SQL tables thinktank stores sessions in, as SQLModel ``table=True`` classes.

The seed spec's table and column names (``thinktank_sessions`` with its
``parallel_execution_config`` JSON, ``thinktank_steps``, ``thinktank_parallel_executions``)
are a contract kept here; the columns beyond the seed's (status, cost, errors, consensus,
the event log) are ours. Nothing in this module has logic: the write path in
``thinktank.store._fold`` uses SQLAlchemy Core statements on these tables (the Core
handles :data:`SESSIONS`, :data:`STEPS`, ... at the end of this module) and the read
path in ``thinktank.store._read`` turns rows into the pydantic ``Stored*`` models. The
classes are never handed to users.

The schema is created and upgraded by the migrations in ``thinktank.store._migrations``,
never by ``create_all``: a column added here needs a migration that adds it (a test
checks that the migrated schema equals these classes).

Datetimes are declared ``DateTime(timezone=True)``; SQLite stores them without a zone,
so the store converts to UTC before writing and marks naive values UTC on reading.
IDs are UUID strings, kept as ``VARCHAR(36)`` so that SQLite and PostgreSQL agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine
from sqlmodel import Field, SQLModel

__all__ = [
    "API_KEYS",
    "ATTEMPTS",
    "CALLS",
    "CONSENSUS",
    "EVENTS",
    "EXPERIMENTS",
    "JSON_TYPE",
    "LIMIT_WINDOWS",
    "RESERVATIONS",
    "SAMPLES",
    "SESSIONS",
    "SLOTS",
    "STEPS",
    "UTC_DATETIME",
    "WORKERS",
    "ApiKeyRow",
    "CallAttemptRow",
    "CallRow",
    "ConsensusRow",
    "EventRow",
    "ExperimentRow",
    "ExperimentSampleRow",
    "LimitWindowRow",
    "MigrationRow",
    "ReservationRow",
    "SessionRow",
    "SlotRow",
    "StepRow",
    "WorkerRow",
]

UTC_DATETIME = DateTime(timezone=True)
"""Every datetime column: ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL, UTC text on SQLite."""
JSON_TYPE: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")
"""Every JSON column: ``JSONB`` on PostgreSQL, ``JSON`` (text) on SQLite."""


class SessionRow(SQLModel, table=True):
    """One session: its spec, inputs, status and totals."""

    __tablename__ = "thinktank_sessions"
    __table_args__ = (
        # The sessions in one state, oldest queued first: the workers' look for sessions
        # left queued (migration 0015), without a scan of every session ever run.
        Index("ix_thinktank_sessions_status_queued_at", "status", "queued_at"),
    )

    id: str = Field(primary_key=True, max_length=36)
    """UUID of the session."""
    name: str = Field(sa_type=Text)
    """The session's name."""
    status: str = Field(max_length=16)
    """``queued``, ``running``, ``completed``, ``partial``, ``failed`` or ``interrupted``."""
    parallel_execution_config: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_TYPE)
    """The spec's ``parallelExecution`` block, camelCase keys as the seed stores it."""
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_TYPE)
    """The whole validated session spec."""
    inputs: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_TYPE)
    """The inputs the session ran with."""
    source: str | None = Field(default=None, sa_type=Text)
    """The session file, when it came from one."""
    model_selection: dict[str, str] = Field(default_factory=dict, sa_type=JSON_TYPE)
    """Models chosen by automatic selection, with the reason for each."""
    origin: dict[str, Any] | None = Field(default=None, sa_type=JSON_TYPE)
    """What the session was made from (replay, fork), None for a fresh run."""
    error: str | None = Field(default=None, sa_type=Text)
    """Why the session did not complete, when it did not."""
    created_at: datetime = Field(sa_type=UTC_DATETIME, index=True)
    """When the row was first written (the first start of the session)."""
    started_at: datetime = Field(sa_type=UTC_DATETIME)
    """When the session started."""
    finished_at: datetime | None = Field(default=None, sa_type=UTC_DATETIME)
    """When it finished; None while it runs."""
    wall_ms: float | None = Field(default=None, sa_type=Float)
    """Wall time of the session."""
    input_tokens: int | None = Field(default=None, sa_type=Integer)
    """Prompt tokens of every call; None when any is unknown."""
    output_tokens: int | None = Field(default=None, sa_type=Integer)
    """Completion tokens of every call; None when any is unknown."""
    total_tokens: int | None = Field(default=None, sa_type=Integer)
    """``input_tokens + output_tokens``; None when either is unknown."""
    cost_usd: float | None = Field(default=None, sa_type=Float)
    """USD of every call; None when any is unknown."""
    steps_total: int = Field(default=0, sa_type=Integer)
    """Number of steps in the session."""
    steps_completed: int = Field(default=0, sa_type=Integer)
    """Steps that completed (set when the session finishes)."""
    steps_failed: int = Field(default=0, sa_type=Integer)
    """Steps that failed or were cancelled (set when the session finishes)."""
    steps_skipped: int = Field(default=0, sa_type=Integer)
    """Steps skipped because a dependency failed (set when the session finishes)."""
    text_repairs: list[str] = Field(
        default_factory=list,
        sa_type=JSON_TYPE,
        sa_column_kwargs={"server_default": text("'[]'")},
    )
    """Where text that no database can store (lone surrogates, invalid UTF-8, NUL) was
    written with U+FFFD instead, e.g. ``call_finished.content of step 'pros'``."""
    lease_owner: str | None = Field(default=None, max_length=200)
    """The worker that holds the session's lease (``Store.claim_session``), if any."""
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTC_DATETIME)
    """When that lease ends unless its owner renews it."""
    key_id: str | None = Field(default=None, max_length=36)
    """The id of the API key whose request made the session (``thinktank serve``),
    never the key itself; None for sessions made otherwise."""
    request_id: str | None = Field(default=None, max_length=256)
    """The ``X-Request-Id`` of the HTTP request that made (or last resumed) the
    session; None for sessions made otherwise."""
    cancel_requested_at: datetime | None = Field(default=None, sa_type=UTC_DATETIME)
    """When a server process asked the process running the session to cancel it
    (``Store.request_cancel``); the runner watches for it. None otherwise."""
    queue: str | None = Field(default=None, max_length=100)
    """The queue a queued session was put on (``Store.enqueue_session``), if any."""
    queued_at: datetime | None = Field(default=None, sa_type=UTC_DATETIME)
    """When the session was queued; None for a session run at once."""


class StepRow(SQLModel, table=True):
    """One step of a session: its definition, state and accounting."""

    __tablename__ = "thinktank_steps"
    __table_args__ = (
        UniqueConstraint("session_id", "step_key", name="uq_thinktank_steps_session_step"),
    )

    id: str = Field(primary_key=True, max_length=36)
    """UUID of the row (``StepInfo.row_id``)."""
    session_id: str = Field(
        foreign_key="thinktank_sessions.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The session the step belongs to."""
    step_key: str = Field(max_length=200)
    """The user's step id, unique within the session."""
    position: int = Field(sa_type=Integer)
    """Order of the step in the session file."""
    kind: str = Field(max_length=32)
    """``prompt``, ``multi``, ..."""
    depends_on: list[str] = Field(default_factory=list, sa_type=JSON_TYPE)
    """Keys of the steps it waits for."""
    models: list[str] = Field(default_factory=list, sa_type=JSON_TYPE)
    """Model names the step calls."""
    mode: str | None = Field(default=None, max_length=32)
    """Multi-model mode, or None for one model."""
    synthesis: str | None = Field(default=None, max_length=64)
    """Merge method, or None for one model."""
    prompt_template: str = Field(sa_type=Text)
    """The prompt before rendering."""
    prompt: str | None = Field(default=None, sa_type=Text)
    """The rendered prompt of the latest attempt."""
    status: str = Field(max_length=16)
    """``pending``, ``running``, ``completed``, ``failed``, ``skipped`` or ``cancelled``."""
    output: str | None = Field(default=None, sa_type=Text)
    """The step's output (the merged answer for multi-model steps)."""
    error: str | None = Field(default=None, sa_type=Text)
    """Why it failed."""
    skip_reason: str | None = Field(default=None, sa_type=Text)
    """Why it was skipped."""
    attempts: int = Field(default=0, sa_type=Integer)
    """Attempts started so far."""
    started_at: datetime | None = Field(default=None, sa_type=UTC_DATETIME)
    """When the first attempt started."""
    completed_at: datetime | None = Field(default=None, sa_type=UTC_DATETIME)
    """When the step ended."""
    latency_ms: float | None = Field(default=None, sa_type=Float)
    """Wall time from first start to end."""
    input_tokens: int | None = Field(default=None, sa_type=Integer)
    """Prompt tokens over all its calls; None when any is unknown."""
    output_tokens: int | None = Field(default=None, sa_type=Integer)
    """Completion tokens over all its calls; None when any is unknown."""
    cost_usd: float | None = Field(default=None, sa_type=Float)
    """USD over all its calls; None when any is unknown."""
    consensus_score: float | None = Field(default=None, sa_type=Float)
    """Agreement of a multi-model step."""
    parent: str | None = Field(default=None, max_length=200)
    """For a step added at run time: the key of the decompose step that added it."""
    provenance: list[str] = Field(
        default_factory=list, sa_type=JSON_TYPE, sa_column_kwargs={"server_default": text("'[]'")}
    )
    """For a step added at run time: the models that proposed it."""


class CallRow(SQLModel, table=True):
    """One model call (the seed's ``thinktank_parallel_executions``)."""

    __tablename__ = "thinktank_parallel_executions"

    id: str = Field(primary_key=True, max_length=36)
    """UUID of the call."""
    session_id: str = Field(
        foreign_key="thinktank_sessions.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The session the call belongs to."""
    step_id: str = Field(
        foreign_key="thinktank_steps.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The row UUID of the step that made the call (not the step key)."""
    model_id: str = Field(sa_type=String(100))
    """The model name."""
    attempt: int = Field(default=1, sa_type=Integer)
    """The step attempt the call belongs to."""
    status: str = Field(max_length=16)
    """``running``, ``ok``, ``failed``, ``timeout`` or ``cancelled``."""
    started_at: datetime = Field(sa_type=UTC_DATETIME)
    """When the call was sent."""
    completed_at: datetime | None = Field(default=None, sa_type=UTC_DATETIME)
    """When it ended."""
    response: str | None = Field(default=None, sa_type=Text)
    """The response text (partial, or None, on failure)."""
    tokens_used: int | None = Field(default=None, sa_type=Integer)
    """``input_tokens + output_tokens``; None when either is unknown."""
    input_tokens: int | None = Field(default=None, sa_type=Integer)
    """Prompt tokens; None when unknown."""
    output_tokens: int | None = Field(default=None, sa_type=Integer)
    """Completion tokens; None when unknown."""
    latency_ms: int | None = Field(default=None, sa_type=Integer)
    """Wall time of the call, rounded to the millisecond."""
    cost_usd: float | None = Field(default=None, sa_type=Float)
    """USD; None when unknown."""
    finish_reason: str | None = Field(default=None, max_length=64)
    """Why generation stopped."""
    error: str | None = Field(default=None, sa_type=Text)
    """What went wrong, when it did."""
    included_in_consensus: bool = Field(default=True, sa_column_kwargs={"server_default": true()})
    """Whether the response took part in the step's merge."""
    tries: int = Field(default=1, sa_type=Integer)
    """How many times the call was sent (retries included)."""
    reused_from: str | None = Field(default=None, max_length=36)
    """The stored call whose answer this one served again (a resumed step); its tokens
    and cost are counted on that row, and this row carries none (0)."""


class CallAttemptRow(SQLModel, table=True):
    """One try of a retried model call; a call answered at its first try has none."""

    __tablename__ = "thinktank_call_attempts"

    id: int | None = Field(default=None, primary_key=True)
    """Autoincrement."""
    call_id: str = Field(
        foreign_key="thinktank_parallel_executions.id",
        ondelete="CASCADE",
        index=True,
        max_length=36,
    )
    """The logical call."""
    session_id: str = Field(
        foreign_key="thinktank_sessions.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The session."""
    number: int = Field(sa_type=Integer)
    """1 for the first try, 2 for the first retry, ..."""
    status: str = Field(max_length=16)
    """``ok``, ``failed``, ``timeout`` or ``cancelled``."""
    status_code: int | None = Field(default=None, sa_type=Integer)
    """The HTTP status, when there was one."""
    error: str | None = Field(default=None, sa_type=Text)
    """What went wrong, when it did."""
    started_at: datetime = Field(sa_type=UTC_DATETIME)
    """When this try was sent."""
    latency_ms: int | None = Field(default=None, sa_type=Integer)
    """Wall time of this try."""
    retry_in_s: float | None = Field(default=None, sa_type=Float)
    """The wait before the next try; None for the last."""


class ConsensusRow(SQLModel, table=True):
    """The merge of one multi-model step attempt."""

    __tablename__ = "thinktank_consensus"

    id: str = Field(primary_key=True, max_length=36)
    """UUID of the consensus result."""
    session_id: str = Field(
        foreign_key="thinktank_sessions.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The session."""
    step_id: str = Field(
        foreign_key="thinktank_steps.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The row UUID of the step."""
    attempt: int | None = Field(default=None, sa_type=Integer)
    """The step attempt the merged calls belong to, when known."""
    method: str = Field(max_length=64)
    """Synthesis method (``majority``, ...)."""
    score: float = Field(sa_type=Float)
    """Agreement in [0, 1]."""
    threshold: float = Field(sa_type=Float)
    """The consensus threshold in force."""
    reached: bool
    """Whether ``score >= threshold``."""
    content: str = Field(sa_type=Text)
    """The merged answer."""
    outcome: str = Field(sa_type=Text)
    """``ok``, or the degraded outcomes that apply, comma-separated (``k_of_n``,
    ``quorum_not_reached``, ``low_consensus``, ...)."""
    clusters: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON_TYPE)
    """The agreeing groups: answer, members, weight."""
    included_call_ids: list[str] = Field(default_factory=list, sa_type=JSON_TYPE)
    """Calls whose responses took part in the merge."""
    created_at: datetime = Field(sa_type=UTC_DATETIME)
    """When the merge was computed."""
    mode: str = Field(default="all", max_length=16)
    """The multi-model mode (all, race, quorum, cascade)."""
    early_termination: bool = Field(default=False)
    """Whether the mode stopped before every model answered."""
    escalation: list[list[str]] = Field(default_factory=list, sa_type=JSON_TYPE)
    """The models started in each round."""
    items: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON_TYPE)
    """``union``: merged items with the models that found each."""
    judge_call_id: str | None = Field(default=None, max_length=36)
    """``judge``: the synthesizer's call."""
    note: str | None = Field(default=None, sa_type=Text)
    """What a degraded outcome means here."""
    cached_from: str | None = Field(default=None, max_length=36)
    """When served from the consensus cache: the consensus reused."""
    cache_key: str | None = Field(default=None, max_length=80, index=True)
    """Hash of (normalised prompt, models, mode, method, threshold, options) for reuse."""


class EventRow(SQLModel, table=True):
    """Every event, in the order it was written: the session's full history."""

    __tablename__ = "thinktank_events"

    id: int | None = Field(default=None, primary_key=True)
    """Autoincrement: the write order."""
    session_id: str = Field(
        foreign_key="thinktank_sessions.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The session."""
    type: str = Field(max_length=32)
    """The event's ``type`` (``step_started``, ...)."""
    step_key: str | None = Field(default=None, max_length=200)
    """The step key, for step and call events."""
    at: datetime = Field(sa_type=UTC_DATETIME)
    """When it happened."""
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_TYPE)
    """``event.to_dict()``."""


class MigrationRow(SQLModel, table=True):
    """One schema migration applied to this database (``thinktank.store._migrations``)."""

    __tablename__ = "thinktank_migrations"

    name: str = Field(primary_key=True, max_length=100)
    """The migration's name (``0001_initial``, ...)."""
    applied_at: datetime = Field(sa_type=UTC_DATETIME)
    """When it was applied."""


class ExperimentRow(SQLModel, table=True):
    """One experiment (``thinktank eval``): what it runs, as last run."""

    __tablename__ = "thinktank_experiments"

    id: str = Field(primary_key=True, max_length=36)
    """UUID (v7, time-ordered) of the experiment."""
    name: str = Field(sa_type=Text)
    """The experiment file's ``name``."""
    fingerprint: str = Field(max_length=80, index=True)
    """Hash of what makes two runs the same experiment (dataset bytes, prompt or session
    file, name); a rerun with the same fingerprint continues this row."""
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_TYPE)
    """The experiment file as data (snake_case keys), as last run."""
    dataset: str = Field(sa_type=Text)
    """The ``dataset`` field as written (``shipped:NAME`` or a path)."""
    items: int = Field(sa_type=Integer)
    """Items the dataset held when last run."""
    created_at: datetime = Field(sa_type=UTC_DATETIME)
    """When the experiment was first run."""
    updated_at: datetime = Field(sa_type=UTC_DATETIME)
    """When it was last run."""


class ExperimentSampleRow(SQLModel, table=True):
    """One item x configuration x repeat of an experiment, and the session answering it."""

    __tablename__ = "thinktank_experiment_samples"
    __table_args__ = (
        UniqueConstraint(
            "experiment_id",
            "config_key",
            "item_id",
            "repeat",
            name="uq_thinktank_experiment_samples_sample",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    """Autoincrement."""
    experiment_id: str = Field(
        foreign_key="thinktank_experiments.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The experiment."""
    config_id: str = Field(max_length=100)
    """The configuration's id when the sample was last run."""
    config_key: str = Field(max_length=80)
    """Hash of the configuration's content: a renamed id with the same content reuses it."""
    item_id: str = Field(sa_type=Text)
    """The dataset item's id."""
    repeat: int = Field(sa_type=Integer)
    """1 for the first repeat, 2 for the second, ..."""
    session_id: str | None = Field(
        default=None,
        foreign_key="thinktank_sessions.id",
        ondelete="SET NULL",
        index=True,
        max_length=36,
    )
    """The session answering it; None until the session row exists (it is set before
    the session makes any call)."""
    targets: list[str] = Field(default_factory=list, sa_type=JSON_TYPE)
    """The item's accepted answers (never sent to a model)."""
    answer: str | None = Field(default=None, sa_type=Text)
    """The scored step's output; None until the session finished."""
    correct: float | None = Field(default=None, sa_type=Float)
    """The scorer's score of ``answer``; None until scored."""
    created_at: datetime = Field(sa_type=UTC_DATETIME)
    """When the sample was first planned."""


class ApiKeyRow(SQLModel, table=True):
    """One API key of ``thinktank serve`` (``thinktank keys create``), with its limits.

    The key itself is never stored: only its SHA-256 (a key is 32 random bytes, so a
    fast hash is safe) and its first characters, to tell keys apart in a listing.
    Money is in micro-dollars (integers), so that sums and the budget check are exact.
    """

    __tablename__ = "thinktank_api_keys"

    id: str = Field(primary_key=True, max_length=36)
    """UUID (v7) of the key: what a request's caller, ``keys list`` and ``keys revoke`` name."""
    name: str = Field(sa_type=Text)
    """Who or what the key is for."""
    prefix: str = Field(max_length=16)
    """The key's first characters (``tt_`` and a few more), shown by ``keys list``."""
    key_hash: str = Field(max_length=64, unique=True, index=True)
    """Hex SHA-256 of the key; a presented key is looked up by it."""
    created_at: datetime = Field(sa_type=UTC_DATETIME)
    """When the key was made."""
    revoked_at: datetime | None = Field(default=None, sa_type=UTC_DATETIME)
    """When it was revoked (a revoked key is refused); None while it is valid."""
    budget_micro_usd: int | None = Field(default=None, sa_type=BigInteger)
    """What the key may spend in all, in millionths of a dollar; None: no budget."""
    spent_micro_usd: int = Field(default=0, sa_type=BigInteger)
    """What its settled requests cost."""
    reserved_micro_usd: int = Field(default=0, sa_type=BigInteger)
    """What its requests in flight have reserved and not settled yet."""
    rpm: int | None = Field(default=None, sa_type=Integer)
    """Requests per minute it may make; None: no limit."""
    window_start: float | None = Field(default=None, sa_type=Float)
    """Start (epoch seconds, the database's clock on PostgreSQL) of its current
    one-minute window; None before its first limited request."""
    window_count: int = Field(default=0, sa_type=Integer)
    """Requests admitted in that window."""


class ReservationRow(SQLModel, table=True):
    """Budget one request in flight has set aside from its key (until it settles).

    A row, not just a counter, so that the money a killed process had reserved comes
    back: once ``expires_at`` is past, the next reservation on the key or the server's
    sweep deletes the row and credits the key (``thinktank.store._keys``). The key's
    ``reserved_micro_usd`` is the sum of its rows, kept in the same transactions.
    """

    __tablename__ = "thinktank_reservations"

    id: str = Field(primary_key=True, max_length=36)
    """UUID (v7) of the reservation."""
    key_id: str = Field(
        foreign_key="thinktank_api_keys.id", ondelete="CASCADE", index=True, max_length=36
    )
    """The key whose budget it holds."""
    micro_usd: int = Field(sa_type=BigInteger)
    """What it holds, in millionths of a dollar."""
    holder: str = Field(max_length=200)
    """The server process that made it (host and pid), to tell whose it was."""
    created_at: float = Field(sa_type=Float)
    """When it was made (epoch seconds; the database's clock on PostgreSQL)."""
    expires_at: float = Field(sa_type=Float, index=True)
    """When it lapses if its request has not settled it: the request's own upper bound
    (its timeout) plus a margin."""


class SlotRow(SQLModel, table=True):
    """One call slot of a model limit shared by every process on the database.

    A limit of N concurrent calls has rows 0..N-1; a call holds one (``holder`` set)
    from before its first attempt until it ends (``thinktank.store._slots``). A row
    whose ``expires_at`` is past is free again, so a killed process's slots come back.
    """

    __tablename__ = "thinktank_slots"

    limit_key: str = Field(primary_key=True, max_length=200)
    """The limit the slot belongs to (the configured model's name)."""
    slot: int = Field(primary_key=True)
    """0 .. the limit - 1."""
    holder: str | None = Field(default=None, max_length=200)
    """The call holding it (host, pid and a unique id), or None when free."""
    expires_at: float | None = Field(default=None, sa_type=Float)
    """When the hold lapses unless renewed (epoch seconds; the database's clock on
    PostgreSQL)."""


class LimitWindowRow(SQLModel, table=True):
    """The current minute of a model's shared requests-per-minute limit."""

    __tablename__ = "thinktank_limit_windows"

    limit_key: str = Field(primary_key=True, max_length=200)
    """The limit counted (the configured model's name)."""
    window_start: float | None = Field(default=None, sa_type=Float)
    """When the current window began (epoch seconds)."""
    window_count: int = 0
    """Requests admitted in it."""


class WorkerRow(SQLModel, table=True):
    """A ``thinktank worker`` process: who it is, whether it is alive, how busy it is.

    The worker renews ``expires_at`` every third of its time to live; a row past it is a
    dead worker, whose sessions one live worker recovers after claiming the row
    (``recovered_by``, itself lapsing at ``recovery_expires_at`` so a recoverer that
    dies is replaced). ``thinktank.store._workers`` holds the statements.
    """

    __tablename__ = "thinktank_workers"

    executor_id: str = Field(primary_key=True, max_length=200)
    """The worker's unique id (its name, host, process and a random part): also its
    executor id in the distributed engine and the owner of the leases it holds."""
    name: str = Field(max_length=100)
    """The name given with ``--name`` (the host name by default)."""
    host: str = Field(max_length=200)
    """The machine it runs on."""
    pid: int
    """Its process id on that machine."""
    version: str = Field(max_length=100)
    """thinktank's version and the pinned workflow version it runs."""
    concurrency: int
    """How many sessions it runs at once."""
    started_at: float = Field(sa_type=Float)
    """When it started (epoch seconds)."""
    expires_at: float = Field(sa_type=Float, index=True)
    """When it counts as dead unless it beats again (epoch seconds; the database's
    clock on PostgreSQL)."""
    running: int = 0
    """Sessions it runs now."""
    finished: int = 0
    """Sessions it has run to their end."""
    draining: bool = False
    """It was told to stop: it takes no new session and finishes or hands back its own."""
    recovered_by: str | None = Field(default=None, max_length=200)
    """The live worker recovering this dead one's sessions."""
    recovery_expires_at: float | None = Field(default=None, sa_type=Float)
    """When that claim lapses if the recoverer dies before it is done."""


# The Core tables of the classes above, for the statements of the write and read paths.
SESSIONS: Table = SQLModel.metadata.tables[SessionRow.__tablename__]
STEPS: Table = SQLModel.metadata.tables[StepRow.__tablename__]
CALLS: Table = SQLModel.metadata.tables[CallRow.__tablename__]
ATTEMPTS: Table = SQLModel.metadata.tables[CallAttemptRow.__tablename__]
CONSENSUS: Table = SQLModel.metadata.tables[ConsensusRow.__tablename__]
EVENTS: Table = SQLModel.metadata.tables[EventRow.__tablename__]
EXPERIMENTS: Table = SQLModel.metadata.tables[ExperimentRow.__tablename__]
SAMPLES: Table = SQLModel.metadata.tables[ExperimentSampleRow.__tablename__]
API_KEYS: Table = SQLModel.metadata.tables[ApiKeyRow.__tablename__]
RESERVATIONS: Table = SQLModel.metadata.tables[ReservationRow.__tablename__]
SLOTS: Table = SQLModel.metadata.tables[SlotRow.__tablename__]
LIMIT_WINDOWS: Table = SQLModel.metadata.tables[LimitWindowRow.__tablename__]
WORKERS: Table = SQLModel.metadata.tables[WorkerRow.__tablename__]
