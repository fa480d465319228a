"""What a step does: render its prompt, run its attempts, finish it.

The executor is the ``execute`` callback the scheduler calls: it renders a step's
prompt (a template over the session's inputs and the outputs of finished steps), runs
its attempts with retries and the step's deadline, and emits how the step ended. What
one attempt does depends on the step's kind: a ``prompt`` step asks one model (here);
a multi-model step asks several and merges their answers (``engine.multi``); a
``decompose`` step asks for a plan and hands the steps it adds to the run, which grows
the DAG (``engine.decompose``). Calls go through ``engine.calls.Caller``.

The executor is built complete: a run that continues an earlier one (resume, fork)
gives it the earlier outputs, attempt counts and added steps at construction.
"""

from __future__ import annotations

import time
from collections.abc import (
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import Any

import anyio
import anyio.lowlevel

from thinktank.engine.budget import Budget
from thinktank.engine.calls import Caller, CallResult, OnDelta
from thinktank.engine.decompose import Growth, decompose
from thinktank.engine.multi import Asking as _Asking  # the attempt loop's name for it
from thinktank.engine.multi import CacheLookup, MultiModel, OnSynthesis, Outcome
from thinktank.engine.outcome import Abstained, StepEnd
from thinktank.events import Event, StepFinished, StepStarted, utcnow
from thinktank.providers.base import ModelClient, ModelRequest, PooledModel
from thinktank.session.formats import response_enum, response_schema, with_instruction
from thinktank.session.spec import SessionSpec, StepSpec
from thinktank.session.templates import render_template

__all__ = ["StepExecutor", "sum_known"]

Emit = Callable[[Event], None]
Grow = Callable[[Growth], None]
"""Grows the run's DAG by the steps a decompose step added."""


def sum_known(values: Sequence[float | int | None]) -> Any:
    """Sum of the values, or None when any is unknown (None) or there are none."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _usage(calls: Sequence[CallResult]) -> tuple[int | None, int | None, float | None]:
    # A failed or cancelled call without a usage report spent nothing we can know of;
    # an answered call without one makes the total unknown.
    if len(calls) == 1:
        # Most steps: one call, no sums to make.
        c = calls[0]
        if c.ok or c.input_tokens is not None:
            return c.input_tokens, c.output_tokens, c.cost_usd
        return 0, 0, 0.0
    counted = [c for c in calls if c.ok or c.input_tokens is not None]
    return (
        sum_known([c.input_tokens for c in counted]) if counted else 0,
        sum_known([c.output_tokens for c in counted]) if counted else 0,
        sum_known([c.cost_usd for c in counted]) if counted else 0.0,
    )


class StepExecutor:
    """Runs one step at a time for the scheduler; keeps the outputs of finished steps.

    Args:
        session_id: The session the events belong to.
        spec: The session.
        clients: Model clients by name.
        inputs: The session's input values.
        emit: Where events go.
        call_limiter: The session's call slots (``maxConcurrentCalls``).
        outputs: Outputs of steps already finished (a restart's seeded steps).
        cache: Finds a stored consensus (``Store.find_consensus``).
        budget: The session's budget.
        step_models: The models of each step (by default the spec's selection).
        added: Steps earlier decompose steps added (a restart), besides the spec's.
        aliases: decompose step -> its synthesis step, for those earlier ones.
        attempt_base: Attempts each step already made (resume numbers on from there).
        on_delta: Receives streamed text as it arrives (live progress).
        on_synthesis: Hears a judge's merged answer as it is written.
        record_starts: Emit CallStarted events (False when nothing consumes them).
        grow: Grows the run's DAG when a decompose step adds steps (the run owns it).
        on_stop: Called when the budget runs out (the run stops starting steps).
    """

    def __init__(
        self,
        *,
        session_id: str,
        spec: SessionSpec,
        clients: Mapping[str, PooledModel | ModelClient],
        inputs: Mapping[str, Any],
        emit: Emit,
        call_limiter: anyio.CapacityLimiter | None = None,
        outputs: MutableMapping[str, str | None] | None = None,
        cache: CacheLookup | None = None,
        budget: Budget | None = None,
        step_models: Mapping[str, list[str]] | None = None,
        added: Sequence[StepSpec] = (),
        aliases: Mapping[str, str] | None = None,
        attempt_base: Mapping[str, int] | None = None,
        on_delta: OnDelta | None = None,
        on_synthesis: OnSynthesis | None = None,
        record_starts: bool = True,
        grow: Grow | None = None,
        on_stop: Callable[[str], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.spec = spec
        self.inputs = inputs
        self.emit = emit
        self.outputs: MutableMapping[str, str | None] = outputs if outputs is not None else {}
        self.settings = spec.parallel_execution.effective()
        self.budget = budget
        self.on_stop = on_stop
        self.attempt_base: Mapping[str, int] = attempt_base or {}
        self.aliases: dict[str, str] = dict(aliases or {})
        """decompose step id -> its synthesis step: what ``{{ steps.ID.output }}`` gives."""
        self._grow = grow
        self._steps: dict[str, StepSpec] = {s.id: s for s in (*spec.steps, *added)}
        self._models: dict[str, list[str]] = {
            s.id: step_models[s.id] if step_models is not None else spec.step_models(s)
            for s in self._steps.values()
        }
        self._caller = Caller(
            session_id=session_id,
            clients=clients,
            emit=emit,
            max_concurrent_models=self.settings.max_concurrent_models,
            session_limiter=call_limiter,
            budget=budget,
            on_delta=on_delta,
            record_starts=record_starts,
        )
        self._multi = MultiModel(
            self._caller,
            threshold=self.settings.consensus_threshold,
            cache=cache,
            use_cache=self.settings.cache,
            on_synthesis=on_synthesis,
        )

    async def __call__(self, step_id: str) -> StepEnd:
        """Run ``step_id`` with its retries; None when it completed, else the error
        (:class:`Abstained` when it completed without an answer: no retry asks again).

        Each attempt runs in a cancel scope of its own with the step's time-out as its
        deadline, so a time-out ends that attempt only; a cancellation from outside
        records the step as cancelled and propagates.
        """
        step = self._steps[step_id]
        models = self._models[step_id]
        timeout_ms = step.timeout_ms or self.settings.timeout_per_step_ms
        base = self.attempt_base.get(step_id, 0)
        prompt = self._prompt(step)
        started_at = utcnow()
        start = time.perf_counter()
        calls: list[CallResult] = []
        error: StepEnd = None
        output: str | None = None
        score: float | None = None
        attempt = base
        try:
            for attempt in range(base + 1, base + step.retries + 2):
                # A retry follows a failed call without awaiting anything: once the
                # session is cancelled, no attempt is recorded as started (its calls
                # check for themselves, in calls.py).
                await anyio.lowlevel.checkpoint_if_cancelled()
                self.emit(
                    StepStarted(
                        session_id=self.session_id,
                        step_id=step_id,
                        attempt=attempt,
                        prompt=prompt,
                        at=started_at if attempt == base + 1 else utcnow(),
                    )
                )
                output, score, error = await self._attempt(
                    step, models, prompt, attempt, calls, timeout_ms
                )
                if error is None or isinstance(error, Abstained):
                    break
                if self.budget is not None and self.budget.exhausted is not None:
                    # No retry can start: stop the session from starting more steps.
                    error = f"{error} ({self.budget.exhausted})"
                    if self.on_stop is not None:
                        self.on_stop(self.budget.exhausted)
                    break
        except anyio.get_cancelled_exc_class():
            self._finish(
                step_id, "cancelled", attempt, started_at, start, calls, None, "cancelled", None
            )
            raise
        if error is None or isinstance(error, Abstained):
            self.outputs[step_id] = output
            self._finish(
                step_id, "completed", attempt, started_at, start, calls, output, None, score
            )
            return error
        self._finish(step_id, "failed", attempt, started_at, start, calls, None, error, score)
        return error

    async def _attempt(
        self,
        step: StepSpec,
        models: list[str],
        prompt: str,
        attempt: int,
        calls: list[CallResult],
        timeout_ms: int,
    ) -> Outcome:
        """One attempt within the step's time-out: its output, score and error."""
        request = ModelRequest(
            prompt=prompt,
            system=step.system,
            max_tokens=step.max_tokens,
            temperature=step.temperature,
            seed=step.seed,
            step_id=step.id,
            attempt=attempt,
            response_schema=response_schema(step.declared_format()),
            response_enum=response_enum(step.declared_format()),
        )
        asking: _Asking | None = None
        # The attempt's own scope: its deadline cancels this attempt only, and
        # ``cancelled_caught`` is False when the cancel came from outside (anyio then
        # lets it propagate).
        with anyio.move_on_after(timeout_ms / 1000) as scope:
            if len(models) == 1 and step.kind != "decompose":
                # Most steps: one call, awaited here (no frame of its own).
                result = await self._start_call(step, models[0], request, ())
                calls.append(result)
                if result.ok:
                    return result.content, None, None
                return None, None, f"model {models[0]!r}: {result.error}"
            if step.kind == "decompose":
                return await self._decompose(step, models, request, calls)
            asking = self._asking(step, request.prompt)
            return await self._many(step, models, request, calls, asking)
        assert scope.cancelled_caught
        if asking is not None:
            # The step's own deadline cut a multi-model attempt: merge what arrived.
            merged = self._merge_at_timeout(step, request, asking, timeout_ms)
            if merged is not None:
                return merged
        return None, None, f"timed out after {timeout_ms} ms"

    def _prompt(self, step: StepSpec) -> str:
        """The step's prompt as sent (and stored): a rendered template with the
        instruction of its ``answer_format``, or literal text with the outputs of its
        dependencies appended as data (steps a decompose step added)."""
        if step.template:
            outputs = _Aliased(self.outputs, self.aliases) if self.aliases else self.outputs
            rendered = render_template(step.prompt, self.inputs, outputs)
            return with_instruction(rendered, step.declared_format(), step.format_asking())
        parts = [step.prompt]
        for dep in step.depends_on:
            out = self.outputs.get(self.aliases.get(dep, dep))
            if out is not None and self._steps[dep].kind != "decompose":
                parts.append(f"\n\n### Result of {dep}\n{out}")
        return "".join(parts)

    async def _decompose(
        self, step: StepSpec, models: list[str], request: ModelRequest, calls: list[CallResult]
    ) -> Outcome:
        """Ask every model for a plan, merge the plans, and have the run grow the DAG."""
        output, error, growth = await decompose(
            self._caller, step, models, request, calls, self._steps
        )
        if growth is not None:
            self._adopt(growth)
        return output, None, error

    def _adopt(self, growth: Growth) -> None:
        """Know the steps a decompose step added (from now on its own id gives its
        synthesis step's output), then have the run grow its DAG by them."""
        for step in growth.added:
            self._steps[step.id] = step
            self._models[step.id] = self.spec.step_models(step)
        self.aliases[growth.parent] = growth.sink
        if self._grow is not None:
            self._grow(growth)

    def _start_call(
        self,
        step: StepSpec,
        model: str,
        request: ModelRequest,
        step_limiters: Sequence[anyio.CapacityLimiter],
    ) -> Coroutine[Any, Any, CallResult]:
        """The call's coroutine (``call_model``), under the step's limiters or else the
        session's."""
        return self._caller.start(model, request, step_limiters, step.call_timeout_ms)

    def _asking(self, step: StepSpec, question: str) -> _Asking:
        """A multi-model attempt's settings, and room for what it gathers."""
        return self._multi.asking(step, self._models[step.id], question)

    async def _many(
        self,
        step: StepSpec,
        models: list[str],
        request: ModelRequest,
        calls: list[CallResult],
        asking: _Asking,
    ) -> Outcome:
        return await self._multi.ask(step, models, request, calls, asking)

    def _merge_at_timeout(
        self, step: StepSpec, request: ModelRequest, asking: _Asking, timeout_ms: int
    ) -> Outcome | None:
        return self._multi.merge_at_timeout(step, request, asking, timeout_ms)

    def _finish(
        self,
        step_id: str,
        status: Any,
        attempts: int,
        started_at: Any,
        start: float,
        calls: Sequence[CallResult],
        output: str | None,
        error: str | None,
        score: float | None,
    ) -> None:
        input_tokens, output_tokens, cost = _usage(calls)
        self.emit(
            StepFinished(
                session_id=self.session_id,
                step_id=step_id,
                status=status,
                attempts=attempts,
                started_at=started_at,
                output=output,
                error=error,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost,
                latency_ms=(time.perf_counter() - start) * 1000,
                consensus_score=score,
            )
        )


class _Aliased(Mapping[str, "str | None"]):
    """Step outputs where a decompose step's id reads its synthesis step's output."""

    def __init__(self, outputs: Mapping[str, str | None], aliases: Mapping[str, str]) -> None:
        self._outputs = outputs
        self._aliases = aliases

    def __getitem__(self, key: str) -> str | None:
        return self._outputs[self._aliases.get(key, key)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)
