"""The restart model: the stored state a run continues from (resume, replay, fork).

A :class:`Restart` is an immutable value, built complete by whoever reads the stored
session (``thinktank.replay``) before the run starts; the runner only reads it. Its
methods answer the questions the runner asks of it, so the runner does not branch on
its fields: which steps are already done or failed, which steps earlier decompose steps
added (to grow the DAG the same way), and which events put the seeded state where the
result and the store expect it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from thinktank.events import CachedConsensus, CallFinished, CallStarted, Event, StepFinished
from thinktank.providers.base import PooledModel
from thinktank.session.spec import StepSpec

__all__ = ["ExtraStep", "Restart", "SeedStep"]

ExtraStep = tuple[StepSpec, str, tuple[str, ...]]
"""A step an earlier run's decompose step added: (spec, parent, provenance)."""


@dataclass(frozen=True, kw_only=True)
class SeedStep:
    """The state a step starts in when a run continues from an earlier one."""

    status: Literal["completed", "failed"]
    """completed (not run again) or failed (stays failed)."""
    output: str | None = None
    """Its output, for completed steps."""
    error: str | None = None
    """Why it failed."""
    abstained: str | None = None
    """Why a completed step found no consensus (``on_low_consensus: abstain``): its
    dependants stay skipped."""
    consensus: CachedConsensus | None = None
    """The stored merge a completed step keeps (an abstained step's: its outcome
    ``no_consensus`` is the merge's), served again to the new session's step."""
    input_tokens: int | None = 0
    output_tokens: int | None = 0
    cost_usd: float | None = 0.0


@dataclass(frozen=True, kw_only=True)
class Restart:
    """How a run continues from stored state: resume, replay and fork build one.

    ``run`` with a ``Restart`` is still the one execution path: the same scheduler,
    executor and recorder, started from ``seed`` instead of from nothing. The default
    value is a fresh run.
    """

    session_id: str | None = None
    """Run this stored session (resume it, or start a queued one: its row is there and
    ``lease`` holds it) instead of starting a new one."""
    seed: Mapping[str, SeedStep] = field(default_factory=dict)
    """Steps that need no run: completed ones are skipped, failed ones stay failed."""
    record_seed: bool = True
    """Write the seeded steps into the (new) session's rows (fork, replay); a resumed
    session already has them."""
    extra_steps: tuple[ExtraStep, ...] = ()
    """Steps an earlier run's decompose steps added, in the order they were added."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """decompose step -> its synthesis step."""
    attempt_base: Mapping[str, int] = field(default_factory=dict)
    """Attempts each step already made."""
    lost_calls: tuple[CallStarted, ...] = ()
    """Calls an earlier run started and never finished: closed as lost first."""
    wrap: Callable[[str, PooledModel], PooledModel] | None = None
    """Replaces model clients (recorded responses for replay and resume)."""
    origin: dict[str, Any] | None = None
    """What this run was made from (kind and session), stored with the session."""
    validated: bool = False
    """The spec is a stored session's, already validated when it ran, and every model
    it names is given as a client (recorded replay): skip re-validating the graph."""
    lease: tuple[str, float] | None = None
    """(worker id, time to live) of the lease the caller holds on ``session_id``
    (resume): the run renews it while it runs and leaves releasing it to the caller."""

    def completed(self) -> dict[str, str | None]:
        """The seeded completed steps and their outputs."""
        return {k: v.output for k, v in self.seed.items() if v.status == "completed"}

    def failed(self) -> dict[str, str]:
        """The seeded failed steps and why they failed."""
        return {k: v.error or "failed" for k, v in self.seed.items() if v.status == "failed"}

    def abstained(self) -> dict[str, str]:
        """The seeded completed steps that abstained, and why."""
        return {k: v.abstained for k, v in self.seed.items() if v.abstained is not None}

    def growths(self) -> Iterator[tuple[str, list[StepSpec], str]]:
        """(decompose step, the steps it added, its synthesis step), in the order the
        earlier run grew the DAG: replaying them rebuilds the same graph."""
        added: dict[str, list[StepSpec]] = {}
        for step, parent, _provenance in self.extra_steps:
            added.setdefault(parent, []).append(step)
        for parent, steps in added.items():
            yield parent, steps, self.aliases[parent]

    def pool(self, pool: Mapping[str, PooledModel]) -> Mapping[str, PooledModel]:
        """The run's model clients, replaced where the restart serves recorded answers."""
        wrap = self.wrap
        if wrap is None:
            return pool
        return {name: wrap(name, pooled) for name, pooled in pool.items()}

    def seed_events(self, session_id: str, at: datetime) -> tuple[list[Event], list[Event]]:
        """The events that put lost calls and seeded steps in place: (to record, to
        hand to the result only). A resumed session's store already has its seeded
        steps, so those go to the result only."""
        recorded: list[Event] = [
            CallFinished(
                session_id=session_id,
                step_id=lost.step_id,
                call_id=lost.call_id,
                model=lost.model,
                attempt=lost.attempt,
                status="cancelled",
                started_at=lost.at,
                error="lost: the process stopped before the call finished",
            )
            for lost in self.lost_calls
        ]
        kept: list[Event] = [
            step.consensus.served(
                session_id=session_id,
                step_id=key,
                attempt=max(self.attempt_base.get(key, 0), 1),
                note=f"reused: consensus {step.consensus.id} of session "
                f"{step.consensus.session_id}",
            )
            for key, step in self.seed.items()
            if step.consensus is not None
        ]
        seeded: list[Event] = kept + [
            StepFinished(
                session_id=session_id,
                step_id=key,
                status=step.status,
                attempts=self.attempt_base.get(key, 0),
                started_at=at,
                output=step.output,
                error=step.error,
                input_tokens=step.input_tokens,
                output_tokens=step.output_tokens,
                cost_usd=step.cost_usd,
            )
            for key, step in self.seed.items()
        ]
        if self.record_seed:
            return recorded + seeded, []
        return recorded, seeded
