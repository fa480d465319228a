"""The result of a run, folded from the same events the store records.

:class:`ResultCollector` applies events one by one; :class:`SessionResult` is what
``thinktank.run`` returns and what ``thinktank run --json`` prints. ``usage`` is the
spec's object (``total_tokens``, ``total_cost_usd``); unknown stays None, never 0.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict

from thinktank.engine.outcome import NO_CONSENSUS
from thinktank.events import (
    CallFinished,
    CallStarted,
    ConsensusComputed,
    Event,
    SessionFinished,
    SessionStarted,
    SessionStatus,
    StepFinished,
    StepsAdded,
    StepSkipped,
    StepStarted,
    StepStatus,
)

if TYPE_CHECKING:
    from thinktank.store import StoredSession

__all__ = [
    "CallSummary",
    "ConsensusSummary",
    "ResultCollector",
    "SessionResult",
    "StepResult",
    "Usage",
    "result_of",
]


StepOutcome = Literal["answered", "no_consensus"]
"""What a completed step produced."""


def step_outcome(status: str, consensus_outcome: str | None) -> StepOutcome | None:
    """A step's outcome from its status and its consensus's (comma-joined) outcome."""
    if status != "completed":
        return None
    if consensus_outcome is not None and NO_CONSENSUS in consensus_outcome.split(","):
        return "no_consensus"
    return "answered"


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Result):
    """Tokens and cost; None means unknown."""

    input_tokens: int | None = 0
    """Prompt tokens."""
    output_tokens: int | None = 0
    """Completion tokens."""
    total_tokens: int | None = 0
    """Input plus output tokens."""
    total_cost_usd: float | None = 0.0
    """USD."""


class CallSummary(_Result):
    """One model call of a step."""

    call_id: str
    """UUID of the call."""
    model: str
    """The model name."""
    attempt: int
    """Step attempt it belonged to."""
    status: str
    """ok, failed, timeout or cancelled."""
    content: str | None
    """Response text."""
    input_tokens: int | None
    """Prompt tokens."""
    output_tokens: int | None
    """Completion tokens."""
    latency_ms: float
    """Wall time."""
    cost_usd: float | None
    """USD."""
    error: str | None
    """What went wrong."""
    included_in_consensus: bool = True
    """Whether its answer supported the merged output."""


class ConsensusSummary(_Result):
    """The merge of a multi-model step."""

    method: str
    """Synthesis method."""
    score: float
    """Agreement in [0, 1]."""
    threshold: float
    """Threshold in force."""
    reached: bool
    """score >= threshold."""
    outcome: str
    """ok, or the degraded outcomes joined by commas (low_consensus, k_of_n,
    quorum_not_reached, no_consensus, ...)."""
    content: str
    """Merged answer."""
    clusters: list[dict[str, Any]]
    """Agreeing groups."""
    mode: str = "all"
    """all, race, quorum or cascade."""
    early_termination: bool = False
    """Whether the mode stopped before every model answered."""
    escalation: list[list[str]] = []
    """The models started in each round."""
    items: list[dict[str, Any]] = []
    """``union``: merged items, each with the models that found it."""
    note: str | None = None
    """What a degraded outcome means here."""
    cached_from: str | None = None
    """The stored consensus reused, when served from the cache."""
    included_call_ids: list[str] = []
    """Calls whose answers support the merged output."""
    judge_call_id: str | None = None
    """The synthesizer's call, for ``judge``."""


class StepResult(_Result):
    """How one step ended."""

    id: str
    """The step id."""
    status: StepStatus
    """pending, running, completed, failed, skipped or cancelled."""
    models: list[str]
    """Models it asked."""
    kind: str
    """prompt or multi."""
    output: str | None = None
    """Its output."""
    error: str | None = None
    """Why it failed."""
    outcome: StepOutcome | None = None
    """What a completed step produced: ``answered``, or ``no_consensus`` when it
    abstained (``on_low_consensus: abstain``: its output is None, which is neither a
    right nor a wrong answer); None for a step that did not complete."""
    skip_reason: str | None = None
    """Why it did not run."""
    attempts: int = 0
    """Attempts made."""
    prompt: str | None = None
    """The rendered prompt."""
    latency_ms: float = 0.0
    """Wall time."""
    usage: Usage = Usage()
    """Tokens and cost."""
    consensus: ConsensusSummary | None = None
    """The merge, for multi-model steps."""
    calls: list[CallSummary] = []
    """Every model call."""


class SessionResult(_Result):
    """How a session ended, step by step."""

    session_id: str
    """UUID of the session."""
    name: str
    """Session name."""
    status: SessionStatus
    """running, completed, partial, failed or interrupted."""
    error: str | None = None
    """Why it did not complete."""
    started_at: datetime
    """Start time (UTC)."""
    finished_at: datetime | None = None
    """End time (UTC)."""
    wall_ms: float = 0.0
    """Wall time."""
    usage: Usage = Usage()
    """Tokens and cost of every call."""
    steps: dict[str, StepResult]
    """Every step, in file order."""

    @property
    def outputs(self) -> dict[str, str | None]:
        """Output of each completed step."""
        return {k: s.output for k, s in self.steps.items() if s.status == "completed"}

    @property
    def ok(self) -> bool:
        """True when every step completed."""
        return self.status == "completed"


class _StepState:
    """What the collector knows of one step while the session runs (cheap to update)."""

    __slots__ = (
        "attempts",
        "built",
        "calls",
        "consensus",
        "error",
        "finished",
        "kind",
        "models",
        "output",
        "prompt",
        "skip_reason",
        "status",
    )

    def __init__(self, kind: str, models: list[str]) -> None:
        self.kind = kind
        self.models = models
        self.status: StepStatus = "pending"
        self.attempts = 0
        self.prompt: str | None = None
        self.calls: dict[str, CallFinished] = {}
        self.consensus: ConsensusComputed | None = None
        self.finished: StepFinished | None = None
        self.output: str | None = None
        self.error: str | None = None
        self.skip_reason: str | None = None
        self.built: StepResult | None = None
        """The step's result, built when it ended (None while it may still change)."""


def _ignore(event: Event) -> None:
    """Events that change nothing in the result (a call started)."""


class ResultCollector:
    """Folds events into a :class:`SessionResult`.

    Events update plain state; a step's result is built when the step ends (while the
    session waits on other steps' models, off the critical path), and the session's
    result is assembled when :attr:`result` is read (a 10,000-step session emits
    ~50,000 events).
    """

    def __init__(self) -> None:
        self._started: SessionStarted | None = None
        self._finished: SessionFinished | None = None
        self.steps: dict[str, _StepState] = {}
        self._apply: dict[type[Event], Callable[[Any], None]] = {
            StepStarted: self._step_started,
            CallStarted: _ignore,
            CallFinished: self._call_finished,
            StepFinished: self._step_finished,
            ConsensusComputed: self._consensus,
            StepSkipped: self._step_skipped,
            SessionStarted: self._session_started,
            SessionFinished: self._session_finished,
            StepsAdded: self._steps_added,
        }

    def __call__(self, event: Event) -> None:
        """Apply one event."""
        apply = self._apply.get(event.__class__)
        if apply is not None:
            apply(event)

    def _step_started(self, event: StepStarted) -> None:
        st = self.steps[event.step_id]
        st.status = "running"
        st.attempts = event.attempt
        st.prompt = event.prompt
        st.built = None

    def _call_finished(self, event: CallFinished) -> None:
        st = self.steps[event.step_id]
        st.calls[event.call_id] = event
        st.built = None

    def _step_finished(self, event: StepFinished) -> None:
        st = self.steps[event.step_id]
        st.status = event.status
        st.output = event.output
        st.error = event.error
        st.attempts = event.attempts
        st.finished = event
        st.built = self._step_result(event.step_id, st)

    def _consensus(self, event: ConsensusComputed) -> None:
        st = self.steps[event.step_id]
        st.consensus = event
        st.built = None

    def _step_skipped(self, event: StepSkipped) -> None:
        st = self.steps[event.step_id]
        st.status = "skipped"
        st.skip_reason = event.reason
        st.built = self._step_result(event.step_id, st)

    def _session_started(self, event: SessionStarted) -> None:
        # Only the session's own fields are kept: its steps' descriptions are not
        # needed once each step has its state (10,000 objects less to hold).
        self._started = msgspec.structs.replace(event, steps=())
        self.steps = {s.step_id: _StepState(s.kind, list(s.models)) for s in event.steps}

    def _session_finished(self, event: SessionFinished) -> None:
        self._finished = event

    def _steps_added(self, event: StepsAdded) -> None:
        for s in event.steps:
            self.steps[s.step_id] = _StepState(s.kind, list(s.models))

    def step_usage(self, step_id: str) -> tuple[int | None, int | None, float | None] | None:
        """(input tokens, output tokens, cost) of a step that ran, else None."""
        finished = self.steps[step_id].finished
        if finished is None:
            return None
        return finished.input_tokens, finished.output_tokens, finished.cost_usd

    @property
    def result(self) -> SessionResult | None:
        """The result so far (None before the session started)."""
        started = self._started
        if started is None:
            return None
        steps = {key: st.built or self._step_result(key, st) for key, st in self.steps.items()}
        result = SessionResult(
            session_id=started.session_id,
            name=started.name,
            status="running",
            started_at=started.at,
            steps=steps,
        )
        finished = self._finished
        if finished is not None:
            result.status = finished.status
            result.error = finished.error
            result.finished_at = finished.at
            result.wall_ms = finished.wall_ms
            result.usage = _usage(finished.input_tokens, finished.output_tokens, finished.cost_usd)
        return result

    @staticmethod
    def _step_result(key: str, st: _StepState) -> StepResult:
        consensus = None
        included: set[str] | None = None
        ev = st.consensus
        if ev is not None:
            included = set(ev.included_call_ids)
            consensus = _built(
                ConsensusSummary,
                {
                    "method": ev.method,
                    "score": ev.score,
                    "threshold": ev.threshold,
                    "reached": ev.reached,
                    "outcome": ev.outcome,
                    "content": ev.content,
                    "clusters": [dict(c) for c in ev.clusters],
                    "mode": ev.mode,
                    "early_termination": ev.early_termination,
                    "escalation": [list(r) for r in ev.escalation],
                    "items": [dict(i) for i in ev.items],
                    "note": ev.note,
                    "cached_from": ev.cached_from,
                    "included_call_ids": list(ev.included_call_ids),
                    "judge_call_id": ev.judge_call_id,
                },
            )
        calls = [
            _built(
                CallSummary,
                {
                    "call_id": c.call_id,
                    "model": c.model,
                    "attempt": c.attempt,
                    "status": c.status,
                    "content": c.content,
                    "input_tokens": c.input_tokens,
                    "output_tokens": c.output_tokens,
                    "latency_ms": c.latency_ms,
                    "cost_usd": c.cost_usd,
                    "error": c.error,
                    "included_in_consensus": included is None or c.call_id in included,
                },
            )
            for c in st.calls.values()
        ]
        fin = st.finished
        return _built(
            StepResult,
            {
                "id": key,
                "status": st.status,
                "models": st.models,
                "kind": st.kind,
                "output": st.output,
                "error": st.error,
                "outcome": step_outcome(st.status, ev.outcome if ev is not None else None),
                "skip_reason": st.skip_reason,
                "attempts": st.attempts,
                "prompt": st.prompt,
                "latency_ms": fin.latency_ms if fin is not None else 0.0,
                "usage": _usage(fin.input_tokens, fin.output_tokens, fin.cost_usd)
                if fin is not None
                else _usage(0, 0, 0.0),
                "consensus": consensus,
                "calls": calls,
            },
        )


_Built = TypeVar("_Built", bound=BaseModel)

_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}


def _built(cls: type[_Built], values: dict[str, Any]) -> _Built:
    """An instance of ``cls`` from ``values`` that name every field, built unvalidated
    (the collector made them from typed events) with one fields-set shared by all its
    instances: a long session keeps a result per step, and a set of its own per model
    doubled each one's size (1.3 KB -> 0.55 KB a call summary). The shared set already
    holds every field, so pydantic's ``add`` on an assignment changes nothing in it.
    """
    fields = _ALL_FIELDS.get(cls)
    if fields is None:
        fields = _ALL_FIELDS[cls] = set(cls.model_fields)
    return cls.model_construct(_fields_set=fields, **values)


def _usage(inp: int | None, out: int | None, cost: float | None) -> Usage:
    total = None if inp is None or out is None else inp + out
    return _built(
        Usage,
        {"input_tokens": inp, "output_tokens": out, "total_tokens": total, "total_cost_usd": cost},
    )


def result_of(stored: StoredSession) -> SessionResult:
    """The :class:`SessionResult` of a stored session: what ``run`` returned for it.

    The one bridge between the two views of a session: the store's (``show``,
    ``export``) and the API's, so they cannot disagree. Latencies come back in whole
    milliseconds (the store rounds them).
    """
    steps: dict[str, StepResult] = {}
    for step in stored.steps:
        included = None if step.consensus is None else set(step.consensus.included_call_ids)
        consensus = None
        if step.consensus is not None:
            consensus = ConsensusSummary.model_validate(
                step.consensus.model_dump(include=set(ConsensusSummary.model_fields)),
            )
        calls = [
            CallSummary.model_validate(
                {
                    "call_id": c.id,
                    "model": c.model_id,
                    "attempt": c.attempt,
                    "status": c.status,
                    "content": c.response,
                    "input_tokens": c.input_tokens,
                    "output_tokens": c.output_tokens,
                    "latency_ms": float(c.latency_ms or 0),
                    "cost_usd": c.cost_usd,
                    "error": c.error,
                    "included_in_consensus": included is None or c.id in included,
                },
            )
            for c in step.calls
        ]
        steps[step.step_key] = StepResult.model_validate(
            {
                "id": step.step_key,
                "status": step.status,
                "models": list(step.models),
                "kind": step.kind,
                "output": step.output,
                "error": step.error,
                "outcome": step_outcome(
                    step.status, step.consensus.outcome if step.consensus is not None else None
                ),
                "skip_reason": step.skip_reason,
                "attempts": step.attempts,
                "prompt": step.prompt,
                "latency_ms": step.latency_ms or 0.0,
                # A step that never ran made no call: its usage is known, 0 (the
                # store leaves the columns empty until a step finishes).
                "usage": _usage(0, 0, 0.0)
                if step.status in ("pending", "skipped")
                else _usage(step.input_tokens, step.output_tokens, step.cost_usd),
                "consensus": consensus,
                "calls": calls,
            },
        )
    return SessionResult.model_validate(
        {
            "session_id": stored.id,
            "name": stored.name,
            "status": stored.status,
            "error": stored.error,
            "started_at": stored.started_at,
            "finished_at": stored.finished_at,
            "wall_ms": stored.wall_ms or 0.0,
            "usage": _usage(stored.input_tokens, stored.output_tokens, stored.cost_usd),
            "steps": steps,
        },
    )
