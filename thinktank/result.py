"""The result of a run, folded from the same events the store records.

:class:`ResultCollector` applies events one by one; :class:`SessionResult` is what
``thinktank.run`` returns and what ``thinktank run --json`` prints. ``usage`` is the
spec's object (``total_tokens``, ``total_cost_usd``); unknown stays None, never 0.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from thinktank.events import (
    CallFinished,
    ConsensusComputed,
    Event,
    SessionFinished,
    SessionStarted,
    SessionStatus,
    StepFinished,
    StepSkipped,
    StepStarted,
    StepStatus,
)

__all__ = [
    "CallSummary",
    "ConsensusSummary",
    "ResultCollector",
    "SessionResult",
    "StepResult",
    "Usage",
]


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
    """ok, low_consensus or k_of_n."""
    content: str
    """Merged answer."""
    clusters: list[dict[str, Any]]
    """Agreeing groups."""


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


class ResultCollector:
    """Folds events into a :class:`SessionResult`."""

    def __init__(self) -> None:
        self.result: SessionResult | None = None
        self._calls: dict[str, dict[str, CallSummary]] = {}

    def __call__(self, event: Event) -> None:
        """Apply one event."""
        if isinstance(event, SessionStarted):
            self.result = SessionResult(
                session_id=event.session_id,
                name=event.name,
                status="running",
                started_at=event.at,
                steps={
                    s.step_id: StepResult(
                        id=s.step_id, status="pending", models=list(s.models), kind=s.kind
                    )
                    for s in event.steps
                },
            )
            return
        result = self.result
        if result is None:
            return
        if isinstance(event, StepStarted):
            step = result.steps[event.step_id]
            step.status = "running"
            step.attempts = event.attempt
            step.prompt = event.prompt
        elif isinstance(event, CallFinished):
            self._calls.setdefault(event.step_id, {})[event.call_id] = CallSummary(
                call_id=event.call_id,
                model=event.model,
                attempt=event.attempt,
                status=event.status,
                content=event.content,
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
                latency_ms=event.latency_ms,
                cost_usd=event.cost_usd,
                error=event.error,
            )
        elif isinstance(event, ConsensusComputed):
            step = result.steps[event.step_id]
            step.consensus = ConsensusSummary(
                method=event.method,
                score=event.score,
                threshold=event.threshold,
                reached=event.reached,
                outcome=event.outcome,
                content=event.content,
                clusters=[dict(c) for c in event.clusters],
            )
            included = set(event.included_call_ids)
            for call in self._calls.get(event.step_id, {}).values():
                call.included_in_consensus = call.call_id in included
        elif isinstance(event, StepFinished):
            step = result.steps[event.step_id]
            step.status = event.status
            step.output = event.output
            step.error = event.error
            step.attempts = event.attempts
            step.latency_ms = event.latency_ms
            step.usage = _usage(event.input_tokens, event.output_tokens, event.cost_usd)
            step.calls = list(self._calls.pop(event.step_id, {}).values())
        elif isinstance(event, StepSkipped):
            step = result.steps[event.step_id]
            step.status = "skipped"
            step.skip_reason = event.reason
        elif isinstance(event, SessionFinished):
            result.status = event.status
            result.error = event.error
            result.finished_at = event.at
            result.wall_ms = event.wall_ms
            result.usage = _usage(event.input_tokens, event.output_tokens, event.cost_usd)


def _usage(inp: int | None, out: int | None, cost: float | None) -> Usage:
    total = None if inp is None or out is None else inp + out
    return Usage(input_tokens=inp, output_tokens=out, total_tokens=total, total_cost_usd=cost)
