"""Events: the one vocabulary that the store, the CLI progress display and logs speak.

The scheduler and the call layer emit an event for every state change. The recorder
writes them to the store as they come (so a crash loses nothing that finished), and
the CLI draws its live progress from the same stream.

Events are frozen, slotted dataclasses rather than pydantic models: a 10,000-step
session emits ~50,000 of them and they are built on the scheduler's hot path.
``event.to_dict()`` gives a JSON-ready form for the events table and ``--json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from thinktank._frozen import fast_init

__all__ = [
    "CachedConsensus",
    "CallAttempt",
    "CallFinished",
    "CallStarted",
    "CallStatus",
    "ConsensusComputed",
    "Event",
    "SessionFinished",
    "SessionStarted",
    "SessionStatus",
    "StepFinished",
    "StepInfo",
    "StepSkipped",
    "StepStarted",
    "StepStatus",
    "StepsAdded",
    "event_from_dict",
    "utcnow",
]

SessionStatus = Literal["running", "completed", "partial", "failed", "interrupted"]
StepStatus = Literal["pending", "running", "completed", "failed", "skipped", "cancelled"]
CallStatus = Literal["ok", "failed", "timeout", "cancelled"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: which session, and when."""

    type: ClassVar[str] = "event"
    session_id: str
    """The session the event belongs to."""
    at: datetime = field(default_factory=utcnow)
    """When it happened (UTC)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the event's ``type``."""
        data: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            data[f.name] = _jsonable(getattr(self, f.name))
        return data


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StepInfo:
    """The static description of one step, as the session starts."""

    step_id: str
    """The user's step id (unique within the session)."""
    row_id: str
    """The UUID of the step's row in the store."""
    kind: str
    """``prompt`` (one model) or ``multi`` (several models and a merge)."""
    depends_on: tuple[str, ...]
    """Ids of the steps it waits for."""
    models: tuple[str, ...]
    """Model names the step calls."""
    mode: str | None
    """Multi-model mode (``all``, ...) or None for one model."""
    synthesis: str | None
    """Merge method or None for one model."""
    prompt_template: str
    """The prompt before rendering."""
    position: int
    """Order of the step in the session file (steps added at run time come after)."""
    parent: str | None = None
    """For a step added at run time: the decompose step that created it."""
    provenance: tuple[str, ...] = ()
    """For a step added at run time: the models that proposed it."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStarted(Event):
    """A session began: everything needed to create its rows."""

    type: ClassVar[str] = "session_started"
    name: str
    """The session's name."""
    spec: dict[str, Any]
    """The whole validated session spec (JSON-ready); empty when the run records
    nothing (``store=None``), since only the store reads it."""
    inputs: dict[str, Any]
    """The inputs it runs with."""
    parallel_execution_config: dict[str, Any]
    """The spec's ``parallelExecution`` block (camelCase keys, as the seed stores it)."""
    steps: tuple[StepInfo, ...]
    """Every step, in file order."""
    source: str | None = None
    """The session file, when it came from one."""
    model_selection: dict[str, str] = field(default_factory=dict)
    """Models chosen by automatic selection, with the reason for each."""
    origin: dict[str, Any] | None = None
    """What the session was made from: ``{"kind": "replay"|"fork"|"resume",
    "session_id": ...}``; None for a fresh run."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StepsAdded(Event):
    """The DAG grew at run time: a decompose step added these steps."""

    type: ClassVar[str] = "steps_added"
    parent: str
    """The decompose step that added them."""
    steps: tuple[StepInfo, ...]
    """The new steps, in the order they were added."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted(Event):
    """A step (or a retry of it) started."""

    type: ClassVar[str] = "step_started"
    step_id: str
    """The step."""
    attempt: int
    """1 for the first try."""
    prompt: str
    """The rendered prompt."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted(Event):
    """A model call is about to be sent."""

    type: ClassVar[str] = "call_started"
    step_id: str
    """The step making the call."""
    call_id: str
    """UUID of the call."""
    model: str
    """The model name."""
    attempt: int
    """The step attempt the call belongs to."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CallAttempt(Event):
    """One try of a model call ended (a call retried twice has three)."""

    type: ClassVar[str] = "call_attempt"
    step_id: str
    """The step that made the call."""
    call_id: str
    """The logical call this try belongs to."""
    model: str
    """The model name."""
    attempt: int
    """The step attempt the call belongs to."""
    number: int
    """1 for the first try of the call, 2 for its first retry, ..."""
    status: CallStatus
    """How this try ended."""
    started_at: datetime
    """When this try was sent."""
    latency_ms: float = 0.0
    """Wall time of this try."""
    status_code: int | None = None
    """The HTTP status, when there was one."""
    error: str | None = None
    """What went wrong, when it did."""
    retry_in_s: float | None = None
    """The wait before the next try; None when this try was the last."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CallFinished(Event):
    """A model call ended: ok, failed, timed out or cancelled."""

    type: ClassVar[str] = "call_finished"
    step_id: str
    """The step that made the call."""
    call_id: str
    """UUID of the call (matches CallStarted)."""
    model: str
    """The model name."""
    attempt: int
    """The step attempt the call belongs to."""
    status: CallStatus
    """How it ended."""
    started_at: datetime
    """When it was sent."""
    content: str | None = None
    """The response text (partial or None on failure)."""
    input_tokens: int | None = None
    """Prompt tokens, None when unknown."""
    output_tokens: int | None = None
    """Completion tokens, None when unknown."""
    latency_ms: float = 0.0
    """Wall time of the call."""
    cost_usd: float | None = None
    """USD, None when unknown."""
    finish_reason: str | None = None
    """Why generation stopped."""
    error: str | None = None
    """What went wrong, when it did."""
    tries: int = 1
    """How many times it was sent (retries included)."""
    reused_from: str | None = None
    """The stored call whose answer this is, served again instead of sent (a resumed
    step's finished answers). The answer's tokens and cost are those of that call,
    where the store counts them; this call's row carries none."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusComputed(Event):
    """The responses of a multi-model step were merged."""

    type: ClassVar[str] = "consensus_computed"
    step_id: str
    """The step."""
    method: str
    """Synthesis method (``majority``, ...)."""
    score: float
    """Agreement in [0, 1]: weight of the largest agreeing cluster."""
    content: str
    """The merged answer."""
    threshold: float
    """The consensus threshold in force."""
    reached: bool
    """Whether ``score >= threshold``."""
    included_call_ids: tuple[str, ...]
    """Calls whose responses took part in the merge."""
    clusters: tuple[dict[str, Any], ...] = ()
    """The agreeing groups: answer, members (call ids and models), weight."""
    outcome: str = "ok"
    """``ok`` or a degraded outcome (``low_consensus``, ``k_of_n``)."""
    attempt: int = 1
    """The step attempt whose calls were merged."""
    mode: str = "all"
    """The multi-model mode (all, race, quorum, cascade)."""
    early_termination: bool = False
    """True when race/quorum/cascade stopped before every model answered."""
    escalation: tuple[tuple[str, ...], ...] = ()
    """The models started in each round (cascade and escalation add rounds)."""
    items: tuple[dict[str, Any], ...] = ()
    """``union``: the merged items, each with the models (and calls) that found it."""
    judge_call_id: str | None = None
    """``judge``: the synthesizer's call."""
    note: str | None = None
    """What a degraded outcome means here (k of n answered, which fallback served)."""
    cached_from: str | None = None
    """When served from the consensus cache: the id of the stored consensus reused."""
    cache_key: str | None = None
    """The cache key this consensus is stored under (None: not cacheable)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedConsensus:
    """A stored merge the consensus cache serves again (not an event: what the store
    returns for a cache key, from which the step emits its ``ConsensusComputed``)."""

    id: str
    """The stored consensus (the new event's ``cached_from``)."""
    session_id: str
    """The session that computed it."""
    method: str
    score: float
    threshold: float
    reached: bool
    content: str
    outcome: str
    mode: str
    early_termination: bool
    clusters: tuple[dict[str, Any], ...]
    escalation: tuple[tuple[str, ...], ...]
    items: tuple[dict[str, Any], ...]


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StepFinished(Event):
    """A step ended (after its last attempt)."""

    type: ClassVar[str] = "step_finished"
    step_id: str
    """The step."""
    status: Literal["completed", "failed", "cancelled"]
    """How it ended."""
    attempts: int
    """How many attempts it took."""
    started_at: datetime
    """When its first attempt started."""
    output: str | None = None
    """The step's output (the merged answer for multi-model steps)."""
    error: str | None = None
    """Why it failed."""
    input_tokens: int | None = None
    """Prompt tokens over all its calls; None when any is unknown."""
    output_tokens: int | None = None
    """Completion tokens over all its calls; None when any is unknown."""
    cost_usd: float | None = None
    """USD over all its calls; None when any is unknown."""
    latency_ms: float = 0.0
    """Wall time from first start to end."""
    consensus_score: float | None = None
    """Agreement of a multi-model step."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StepSkipped(Event):
    """A step will not run because something it depends on failed."""

    type: ClassVar[str] = "step_skipped"
    step_id: str
    """The step."""
    reason: str
    """Which upstream step failed, and why."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SessionFinished(Event):
    """The session ended."""

    type: ClassVar[str] = "session_finished"
    status: SessionStatus
    """completed, partial, failed or interrupted."""
    started_at: datetime
    """When it started."""
    error: str | None = None
    """Why it did not complete, when it did not."""
    input_tokens: int | None = None
    """Prompt tokens of every call; None when any is unknown."""
    output_tokens: int | None = None
    """Completion tokens of every call; None when any is unknown."""
    cost_usd: float | None = None
    """USD of every call; None when any is unknown."""
    wall_ms: float = 0.0
    """Wall time of the session."""
    steps_completed: int = 0
    """Steps that completed."""
    steps_failed: int = 0
    """Steps that failed (or were cancelled)."""
    steps_skipped: int = 0
    """Steps skipped because a dependency failed (or never started)."""


def _event_classes() -> dict[str, type[Event]]:
    # From the module's names, not Event.__subclasses__(): dataclass(slots=True)
    # replaces each class, and the replaced ones linger among the subclasses.
    return {
        obj.type: obj
        for obj in globals().values()
        if isinstance(obj, type) and issubclass(obj, Event) and obj is not Event
    }


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from ``event.to_dict()`` (the events table, exports).

    Raises:
        ValueError: an unknown event type or a field the event does not have.
    """
    classes = _event_classes()
    kind = data.get("type")
    cls = classes.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    values: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key == "type":
            continue
        if key not in names:
            raise ValueError(f"{kind}: unknown field {key!r}")
        if key in ("at", "started_at") and isinstance(value, str):
            value = datetime.fromisoformat(value)
        elif key == "steps" and isinstance(value, list):
            value = tuple(
                StepInfo(
                    **{
                        **s,
                        "depends_on": tuple(s["depends_on"]),
                        "models": tuple(s["models"]),
                        "provenance": tuple(s.get("provenance", ())),
                    }
                )
                for s in value
            )
        elif key in ("included_call_ids", "clusters", "items") and isinstance(value, list):
            value = tuple(value)
        elif key == "escalation" and isinstance(value, list):
            value = tuple(tuple(r) for r in value)
        values[key] = value
    return cls(**values)
