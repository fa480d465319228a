"""What a step does: render its prompt, ask its model(s), merge, retry, time out.

A ``prompt`` step asks one model. A ``multi`` step asks several models the same
prompt (``mode: all`` waits for every one, at most ``maxConcurrentModels`` at a time)
and merges the answers with the step's synthesis method; the consensus is emitted as
an event and stored. The executor is the ``execute`` callback the scheduler calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import anyio

from thinktank.calls import CallResult, PooledModel, call_model
from thinktank.consensus import Answer, synthesize
from thinktank.events import ConsensusComputed, Event, StepFinished, StepStarted, utcnow
from thinktank.providers.base import ModelClient, ModelRequest
from thinktank.spec import SessionSpec, StepSpec
from thinktank.templates import render_template

__all__ = ["StepExecutor", "sum_known"]

Emit = Callable[[Event], None]


def sum_known(values: Sequence[float | int | None]) -> Any:
    """Sum of the values, or None when any is unknown (None) or there are none."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _usage(calls: Sequence[CallResult]) -> tuple[int | None, int | None, float | None]:
    # A failed or cancelled call without a usage report spent nothing we can know of;
    # an answered call without one makes the total unknown.
    counted = [c for c in calls if c.ok or c.input_tokens is not None]
    return (
        sum_known([c.input_tokens for c in counted]) if counted else 0,
        sum_known([c.output_tokens for c in counted]) if counted else 0,
        sum_known([c.cost_usd for c in counted]) if counted else 0.0,
    )


class StepExecutor:
    """Runs one step at a time for the scheduler; keeps the outputs of finished steps."""

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
    ) -> None:
        self.session_id = session_id
        self.spec = spec
        self.clients = clients
        self.inputs = inputs
        self.emit = emit
        self.call_limiter = call_limiter
        self.outputs: MutableMapping[str, str | None] = outputs if outputs is not None else {}
        self.settings = spec.parallel_execution.effective()
        self._steps: dict[str, StepSpec] = {s.id: s for s in spec.steps}
        self._models: dict[str, list[str]] = {s.id: spec.step_models(s) for s in spec.steps}

    async def __call__(self, step_id: str) -> str | None:
        """Run ``step_id`` with its retries; None when it completed, else the error."""
        step = self._steps[step_id]
        models = self._models[step_id]
        timeout_ms = step.timeout_ms or self.settings.timeout_per_step_ms
        prompt = render_template(step.prompt, self.inputs, self.outputs)
        started_at = utcnow()
        start = time.perf_counter()
        calls: list[CallResult] = []
        error: str | None = None
        output: str | None = None
        score: float | None = None
        attempt = 0
        try:
            for attempt in range(1, step.retries + 2):
                self.emit(
                    StepStarted(
                        session_id=self.session_id, step_id=step_id, attempt=attempt, prompt=prompt
                    )
                )
                request = ModelRequest(
                    prompt=prompt,
                    system=step.system,
                    max_tokens=step.max_tokens,
                    temperature=step.temperature,
                    step_id=step_id,
                    attempt=attempt,
                )
                try:
                    with anyio.fail_after(timeout_ms / 1000):
                        if len(models) == 1:
                            output, score, error = await self._one(step, models[0], request, calls)
                        else:
                            output, score, error = await self._many(step, models, request, calls)
                except TimeoutError:
                    output, score, error = None, None, f"timed out after {timeout_ms} ms"
                if error is None:
                    break
        except anyio.get_cancelled_exc_class():
            self._finish(
                step_id, "cancelled", attempt, started_at, start, calls, None, "cancelled", None
            )
            raise
        if error is None:
            self.outputs[step_id] = output
            self._finish(
                step_id, "completed", attempt, started_at, start, calls, output, None, score
            )
        else:
            self._finish(step_id, "failed", attempt, started_at, start, calls, None, error, score)
        return error

    def _limiters(self, step_limiter: anyio.CapacityLimiter | None) -> list[anyio.CapacityLimiter]:
        # Always step first, then session: one global order, so no two waits can deadlock.
        limiters = [step_limiter] if step_limiter is not None else []
        if self.call_limiter is not None:
            limiters.append(self.call_limiter)
        return limiters

    async def _one(
        self, step: StepSpec, model: str, request: ModelRequest, calls: list[CallResult]
    ) -> tuple[str | None, float | None, str | None]:
        result = await call_model(
            self.clients[model],
            request,
            session_id=self.session_id,
            emit=self.emit,
            timeout_s=_seconds(step.call_timeout_ms),
            limiters=self._limiters(None),
        )
        calls.append(result)
        if result.ok:
            return result.content, None, None
        return None, None, f"model {model!r}: {result.error}"

    async def _many(
        self, step: StepSpec, models: list[str], request: ModelRequest, calls: list[CallResult]
    ) -> tuple[str | None, float | None, str | None]:
        step_limiter = anyio.CapacityLimiter(self.settings.max_concurrent_models)
        limiters = self._limiters(step_limiter)
        results: dict[str, CallResult] = {}

        async def ask(model: str) -> None:
            result = await call_model(
                self.clients[model],
                request,
                session_id=self.session_id,
                emit=self.emit,
                timeout_s=_seconds(step.call_timeout_ms),
                limiters=limiters,
            )
            results[model] = result
            calls.append(result)

        async with anyio.create_task_group() as tg:
            for model in models:
                tg.start_soon(ask, model, name=f"{step.id}:{model}")

        answered = [results[m] for m in models if results[m].ok]
        if not answered:
            reasons = "; ".join(f"{m}: {results[m].error}" for m in models)
            return None, None, f"no model answered ({reasons})"
        threshold = (
            step.consensus_threshold
            if step.consensus_threshold is not None
            else self.settings.consensus_threshold
        )
        merged = synthesize(
            step.synthesis,
            [Answer(key=r.call_id, model=r.model, text=r.content or "") for r in answered],
            threshold,
        )
        if not merged.reached:
            outcome = "low_consensus"
        elif len(answered) < len(models):
            outcome = "k_of_n"
        else:
            outcome = "ok"
        self.emit(
            ConsensusComputed(
                session_id=self.session_id,
                step_id=step.id,
                method=merged.method,
                score=merged.score,
                content=merged.content,
                threshold=threshold,
                reached=merged.reached,
                included_call_ids=merged.included_keys,
                clusters=tuple(
                    {
                        "answer": c.answer,
                        "representative": c.representative,
                        "call_ids": list(c.keys),
                        "models": list(c.models),
                        "weight": c.weight,
                    }
                    for c in merged.clusters
                ),
                outcome=outcome,
                attempt=request.attempt,
            )
        )
        if not merged.reached and step.on_low_consensus == "fail":
            return (
                None,
                merged.score,
                f"consensus {merged.score:.2f} is below the threshold {threshold:g}",
            )
        return merged.content, merged.score, None

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


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000
