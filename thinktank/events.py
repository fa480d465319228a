"""Events: the one vocabulary that the store, the CLI progress display and logs speak.

The scheduler and the call layer emit an event for every state change. The recorder
writes them to the store as they come (so a crash loses nothing that finished), and
the CLI draws its live progress from the same stream.

Events are frozen ``msgspec`` structs, tagged by their ``type``, and this module owns
their one JSON form: :func:`encode_event` writes it (the events table's payload, and so
exports), :func:`to_builtins` gives it as plain values, and :func:`decode_event` reads
it back (imports, replay of stored events). msgspec builds a struct faster than a
frozen dataclass, encodes it without Python code per field, and decodes the tagged
union by the ``type`` key, so no field names are listed here twice.

The stored form: ``{"type": "<tag>", <fields in declaration order>}``, datetimes as
RFC 3339 text (UTC written ``Z``; ``+00:00`` as older versions wrote it reads the same),
tuples as arrays, non-finite floats as ``null``.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "EVENT_TYPES",
    "AnyEvent",
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
    "decode_event",
    "encode_event",
    "event_from_dict",
    "to_builtins",
    "utcnow",
]

SessionStatus = Literal["running", "completed", "partial", "failed", "interrupted"]
StepStatus = Literal["pending", "running", "completed", "failed", "skipped", "cancelled"]
CallStatus = Literal["ok", "failed", "timeout", "cancelled"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    forbid_unknown_fields=True,
    gc=False,
):
    """Base of every event: which session, and when.

    Events are values that never refer back to anything holding them, so they are
    left out of the cycle collector (``gc=False``): a run makes about six a step and
    keeps many until it ends, and each full collection would scan them all (on a
    10,000-step run that was about 50 us a step of collector time).

    A subclass names its stored ``type`` with ``tag=`` and repeats ``kw_only=True``
    (msgspec does not inherit it: the subclass's fields would come before
    ``session_id`` and ``at``) and ``frozen=True`` (for type checkers).
    """

    session_id: str
    """The session the event belongs to."""
    at: datetime = msgspec.field(default_factory=utcnow)
    """When it happened (UTC)."""

    @property
    def type(self) -> str:
        """The event's kind, as stored under ``"type"`` (``call_finished``, ...)."""
        return str(self.__struct_config__.tag)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of :func:`to_builtins`, ``type`` first."""
        return to_builtins(self)


class StepInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
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


class SessionStarted(Event, tag="session_started", frozen=True, kw_only=True):
    """A session began: everything needed to create its rows."""

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
    model_selection: dict[str, str] = msgspec.field(default_factory=dict)
    """Models chosen by automatic selection, with the reason for each."""
    origin: dict[str, Any] | None = None
    """What the session was made from: ``{"kind": "replay"|"fork"|"resume",
    "session_id": ...}``; None for a fresh run."""
    key_id: str | None = None
    """The API key whose request made the session (``thinktank serve``); its id only."""
    request_id: str | None = None
    """The HTTP request that made the session (its ``X-Request-Id``)."""


class StepsAdded(Event, tag="steps_added", frozen=True, kw_only=True):
    """The DAG grew at run time: a decompose step added these steps."""

    parent: str
    """The decompose step that added them."""
    steps: tuple[StepInfo, ...]
    """The new steps, in the order they were added."""


class StepStarted(Event, tag="step_started", frozen=True, kw_only=True):
    """A step (or a retry of it) started."""

    step_id: str
    """The step."""
    attempt: int
    """1 for the first try."""
    prompt: str
    """The rendered prompt."""


class CallStarted(Event, tag="call_started", frozen=True, kw_only=True):
    """A model call is about to be sent."""

    step_id: str
    """The step making the call."""
    call_id: str
    """UUID of the call."""
    model: str
    """The model name."""
    attempt: int
    """The step attempt the call belongs to."""


class CallAttempt(Event, tag="call_attempt", frozen=True, kw_only=True):
    """One try of a model call ended (a call retried twice has three)."""

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


class CallFinished(Event, tag="call_finished", frozen=True, kw_only=True):
    """A model call ended: ok, failed, timed out or cancelled."""

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


class ConsensusComputed(Event, tag="consensus_computed", frozen=True, kw_only=True):
    """The responses of a multi-model step were merged."""

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


class CachedConsensus(msgspec.Struct, frozen=True, kw_only=True, gc=False):
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

    def served(
        self, *, session_id: str, step_id: str, attempt: int, note: str
    ) -> ConsensusComputed:
        """This merge served again to a step (no call made): the event links to it
        (``cached_from``). The consensus cache serves one so, and a fork reuses an
        abstained step's so."""
        return ConsensusComputed(
            session_id=session_id,
            step_id=step_id,
            method=self.method,
            score=self.score,
            content=self.content,
            threshold=self.threshold,
            reached=self.reached,
            included_call_ids=(),
            clusters=self.clusters,
            outcome=self.outcome,
            attempt=attempt,
            mode=self.mode,
            early_termination=self.early_termination,
            escalation=self.escalation,
            items=self.items,
            note=note,
            cached_from=self.id,
        )


class StepFinished(Event, tag="step_finished", frozen=True, kw_only=True):
    """A step ended (after its last attempt)."""

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


class StepSkipped(Event, tag="step_skipped", frozen=True, kw_only=True):
    """A step will not run because something it depends on failed."""

    step_id: str
    """The step."""
    reason: str
    """Which upstream step failed, and why."""


class SessionFinished(Event, tag="session_finished", frozen=True, kw_only=True):
    """The session ended."""

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


AnyEvent = (
    SessionStarted
    | StepsAdded
    | StepStarted
    | CallStarted
    | CallAttempt
    | CallFinished
    | ConsensusComputed
    | StepFinished
    | StepSkipped
    | SessionFinished
)
"""Every event this package emits: what :func:`decode_event` reads, told by ``type``."""

EVENT_TYPES: dict[str, type[Event]] = {
    str(cls.__struct_config__.tag): cls for cls in typing.get_args(AnyEvent)
}
"""Stored ``type`` -> event class."""

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    """The event's JSON, as stored and exported.

    Raises:
        UnicodeEncodeError: a string in it is not valid Unicode (a lone surrogate); the
            store repairs such text first (``thinktank._text.repaired``).
    """
    return _ENCODER.encode(event)


def to_builtins(event: Event) -> dict[str, Any]:
    """The event's JSON as a reader of it gets it: dicts, lists, strings, numbers.

    Read back from :func:`encode_event`'s text rather than built by a second walk of the
    fields, so it can never differ from what is stored (tuples are lists, times text).
    """
    data: dict[str, Any] = msgspec.json.decode(_ENCODER.encode(event))
    return data


def decode_event(data: str | bytes) -> Event:
    """The event whose JSON is ``data`` (the events table's payload, an export's event).

    Raises:
        ValueError: not an event: unknown ``type``, unknown or missing field, wrong type
            (``msgspec.ValidationError``, whose message names the field).
    """
    return _DECODER.decode(data)


def event_from_dict(data: dict[str, Any]) -> Event:
    """The event whose :func:`to_builtins` form is ``data`` (as :func:`decode_event`).

    Raises:
        ValueError: not an event (see :func:`decode_event`).
    """
    return decode_event(_ENCODER.encode(data))
