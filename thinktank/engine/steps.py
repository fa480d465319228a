"""What a step does: render its prompt, ask its model(s), merge, retry, time out.

A ``prompt`` step asks one model. A ``multi`` step asks several models the same
prompt (``mode: all`` waits for every one, at most ``maxConcurrentModels`` at a time)
and merges the answers with the step's synthesis method; the consensus is emitted as
an event and stored. When the step's deadline cuts a multi-model attempt after some
models answered, what arrived is merged (outcome ``k_of_n``) and the calls still running
are recorded as cancelled; with no answer the attempt fails as timed out. The executor
is the ``execute`` callback the scheduler calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

import anyio

from thinktank._deadlines import LANE, Deadlines
from thinktank.consensus import (
    NO_ANSWER,
    Answer,
    Embedder,
    MergeOptions,
    SentenceTransformerEmbedder,
    Synthesis,
    judge_prompt,
    synthesize,
)
from thinktank.engine.budget import Budget
from thinktank.engine.calls import CallResult, OnDelta, call_model
from thinktank.engine.decompose import (
    DECOMPOSE_INSTRUCTIONS,
    MergedPlan,
    Proposal,
    merge_proposals,
    parse_proposal,
)
from thinktank.engine.parallel import Gathered, gather
from thinktank.engine.scheduler import AGAIN, Again
from thinktank.events import ConsensusComputed, Event, StepFinished, StepStarted, utcnow
from thinktank.providers.base import ModelClient, ModelRequest, PooledModel
from thinktank.session.spec import SessionSpec, StepSpec
from thinktank.session.templates import render_template
from thinktank.store import StoredConsensus

__all__ = ["CacheLookup", "StepExecutor", "cache_key", "sum_known"]

Emit = Callable[[Event], None]
Grow = Callable[[str, list[StepSpec], str, dict[str, tuple[str, ...]]], None]
"""(parent, added steps, synthesis step id, provenance by step id) -> None."""
CacheLookup = Callable[[str], Awaitable["StoredConsensus | None"]]
"""Finds a stored consensus by cache key (``Store.find_consensus``)."""


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


_IN_LANE = contextlib.nullcontext()
"""What an attempt in a worker's lane enters instead of a scope of its own."""


@dataclass(slots=True)
class _Asking:
    """A multi-model attempt in flight: what a step timeout merges.

    ``gather`` fills ``gathered`` as calls end, so when the step's deadline cancels
    the attempt the answers that arrived are still here.
    """

    threshold: float
    options: MergeOptions
    order: list[str] = field(default_factory=list)
    """The models asked so far, in the step's order (escalations appended)."""
    gathered: Gathered = field(default_factory=Gathered)


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
        cache: CacheLookup | None = None,
        budget: Budget | None = None,
        step_models: Mapping[str, list[str]] | None = None,
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
        self._embedder: Embedder | None = None
        self._deadlines = Deadlines()
        self._again: dict[str, tuple[str, Any, float, list[CallResult], int]] = {}
        """Steps a deadline cut, to go on with on a new lane: (prompt, started at,
        start, calls so far, next attempt)."""
        self._call_limiters = [call_limiter] if call_limiter is not None else []
        """What a call without step limits waits for: the session's slots."""
        self.record_starts = True
        """Emit CallStarted events (False when nothing consumes them)."""
        self.cache = cache
        self.attempt_base: dict[str, int] = {}
        """Attempts a step already made in an earlier run (resume numbers on from there)."""
        self.aliases: dict[str, str] = {}
        """decompose step id -> its synthesis step: what ``{{ steps.ID.output }}`` gives."""
        self.budget = budget
        self.on_delta: OnDelta | None = None
        """Receives streamed text as it arrives (live progress)."""
        self.on_stop: Callable[[str], None] | None = None
        """Called when the budget runs out (the runner stops starting steps)."""
        self.on_grow: Grow | None = None
        """Called when a decompose step adds steps: the runner grows the DAG and calls
        ``adopt``."""
        self._models: dict[str, list[str]] = (
            {s.id: step_models[s.id] for s in spec.steps}
            if step_models is not None
            else {s.id: spec.step_models(s) for s in spec.steps}
        )

    async def __call__(self, step_id: str) -> str | Again | None:
        """Run ``step_id`` with its retries; None when it completed, else the error.

        In a scheduler worker's lane (``thinktank._deadlines.LANE``), an attempt's
        deadline cuts the lane rather than a scope of the step's own; when another
        attempt is due after a cut, this returns ``AGAIN`` and the worker calls it
        again on a new lane, where it goes on with the next attempt.
        """
        step = self._steps[step_id]
        models = self._models[step_id]
        timeout_ms = step.timeout_ms or self.settings.timeout_per_step_ms
        lane = LANE.get()
        resumed = self._again.pop(step_id, None)
        base = self.attempt_base.get(step_id, 0)
        if resumed is None:
            prompt = self._prompt(step)
            started_at = utcnow()
            start = time.perf_counter()
            calls: list[CallResult] = []
            first = base + 1
        else:
            prompt, started_at, start, calls, first = resumed
        last = base + step.retries + 1
        single = len(models) == 1 and step.kind != "decompose"
        error: str | None = None
        output: str | None = None
        score: float | None = None
        attempt = first - 1
        try:
            for attempt in range(first, last + 1):
                self.emit(
                    StepStarted(
                        session_id=self.session_id,
                        step_id=step_id,
                        attempt=attempt,
                        prompt=prompt,
                        at=started_at if resumed is None and attempt == first else utcnow(),
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
                asking: _Asking | None = None
                # One timer for every step's deadline, which cuts the worker's lane (or,
                # outside a scheduler, a scope of this attempt's own).
                deadline = self._deadlines.start(timeout_ms / 1000, lane)
                timed_out = False
                try:
                    # In a lane the lane is the scope, entered by the worker.
                    with deadline.scope if lane is None else _IN_LANE:
                        if single:
                            # Most steps: one call, awaited here (no frame of its own).
                            result = await self._start_call(step, models[0], request, ())
                            calls.append(result)
                            if result.ok:
                                output, score, error = result.content, None, None
                            else:
                                output, score = None, None
                                error = f"model {models[0]!r}: {result.error}"
                        elif step.kind == "decompose":
                            output, score, error = await self._decompose(
                                step, models, request, calls
                            )
                        else:
                            asking = self._asking(step)
                            output, score, error = await self._many(
                                step, models, request, calls, asking
                            )
                    timed_out = lane is None and deadline.scope.cancelled_caught
                except anyio.get_cancelled_exc_class():
                    if not deadline.expired or lane is None:
                        raise
                    timed_out = True
                finally:
                    self._deadlines.end(deadline)
                if timed_out:
                    output, score, error = None, None, f"timed out after {timeout_ms} ms"
                    if asking is not None:
                        # Only the step's own deadline gets here: merge what arrived.
                        merged = self._merge_at_timeout(step, request, asking, timeout_ms)
                        if merged is not None:
                            output, score, error = merged
                if error is None:
                    break
                if self.budget is not None and self.budget.exhausted is not None:
                    # No retry can start: stop the session from starting more steps.
                    error = f"{error} ({self.budget.exhausted})"
                    if self.on_stop is not None:
                        self.on_stop(self.budget.exhausted)
                    break
                if lane is not None and lane.cancel_called and attempt < last:
                    # The cut lane cannot await again: the next attempt runs on a new one.
                    self._again[step_id] = (prompt, started_at, start, calls, attempt + 1)
                    return AGAIN
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

    def close(self) -> None:
        """The session is over: release the step-deadline timer."""
        self._deadlines.close()

    def _prompt(self, step: StepSpec) -> str:
        """The step's prompt: a rendered template, or literal text with the outputs of
        its dependencies appended as data (steps a decompose step added)."""
        if step.template:
            outputs = _Aliased(self.outputs, self.aliases) if self.aliases else self.outputs
            return render_template(step.prompt, self.inputs, outputs)
        parts = [step.prompt]
        for dep in step.depends_on:
            out = self.outputs.get(self.aliases.get(dep, dep))
            if out is not None and self._steps[dep].kind != "decompose":
                parts.append(f"\n\n### Result of {dep}\n{out}")
        return "".join(parts)

    def adopt(self, parent: str, added: Sequence[StepSpec], sink: str) -> None:
        """Know the steps decompose step ``parent`` added; ``sink`` now gives its output.

        The runner calls it with ``StepGraph.grow`` (a live decompose step, or a
        restart rebuilding the grown DAG), so the executor and the graph grow together.
        """
        for step in added:
            self._steps[step.id] = step
            self._models[step.id] = self.spec.step_models(step)
        self.aliases[parent] = sink

    async def _decompose(
        self, step: StepSpec, models: list[str], request: ModelRequest, calls: list[CallResult]
    ) -> tuple[str | None, float | None, str | None]:
        """Ask every model for a plan, merge the plans, and grow the DAG."""
        limiters = self._limiters(self._step_limiter(len(models)))
        asked = dataclasses.replace(
            request,
            prompt=request.prompt + DECOMPOSE_INSTRUCTIONS.format(max_items=step.max_subproblems),
        )
        plans: dict[str, Proposal] = {}
        bad: dict[str, str] = {}

        async def propose(model: str) -> None:
            req = asked
            for try_ in range(2):
                result = await self._call(step, model, req, limiters, calls)
                if not result.ok:
                    bad[model] = f"call failed: {result.error}"
                    return
                proposal, problem = parse_proposal(result.content or "")
                if proposal is not None:
                    plans[model] = proposal
                    bad.pop(model, None)
                    return
                quoted = _quote(result.content or "")
                bad[model] = f"{problem}; it answered {quoted}"
                if try_ == 0:
                    # One retry, telling the model what was wrong with its answer.
                    req = dataclasses.replace(
                        asked,
                        prompt=asked.prompt
                        + f"\n\nYour previous answer was not usable ({problem}). "
                        "Answer with the JSON object only.",
                    )

        async with anyio.create_task_group() as tg:
            for model in models:
                tg.start_soon(propose, model, name=f"{step.id}:{model}")
        if not plans:
            reasons = "; ".join(f"{m}: {why}" for m, why in bad.items())
            return None, None, f"no usable decomposition ({reasons})"
        plan = merge_proposals(
            [(m, plans[m]) for m in models if m in plans],
            threshold=step.similarity_threshold,
            max_items=step.max_subproblems,
        )
        self._grow(step, plan, request.prompt)
        return plan.describe(), None, None

    def _grow(self, step: StepSpec, plan: MergedPlan, problem: str) -> None:
        taken = set(self._steps)

        def fresh(base: str) -> str:
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            taken.add(name)
            return name

        sub_models = step.sub_models or [self._models[step.id][0]]
        ids = [fresh(f"{step.id}-{i}") for i in range(1, len(plan.items) + 1)]
        subs = [
            StepSpec.model_validate(
                {
                    "id": ids[i],
                    "prompt": item.prompt,
                    "template": False,
                    "depends_on": [step.id, *(ids[d] for d in sorted(item.depends_on))],
                    **(
                        {"model": sub_models[0]} if len(sub_models) == 1 else {"models": sub_models}
                    ),
                    "max_tokens": step.max_tokens,
                    "temperature": step.temperature,
                    "system": step.system,
                }
            )
            for i, item in enumerate(plan.items)
        ]
        instruction = step.synthesis_prompt or (
            "Answer the original problem below using the results of its sub-problems, "
            "which follow it.\n\nOriginal problem:\n" + problem
        )
        sink = StepSpec.model_validate(
            {
                "id": fresh(f"{step.id}-synthesis"),
                "prompt": instruction,
                "template": False,
                "depends_on": ids,
                "model": step.synthesizer or self._models[step.id][0],
                "max_tokens": step.max_tokens,
                "system": step.system,
            }
        )
        added = [*subs, sink]
        provenance = {ids[i]: tuple(item.models) for i, item in enumerate(plan.items)}
        if self.on_grow is not None:
            self.on_grow(step.id, added, sink.id, provenance)
        else:
            self.adopt(step.id, added, sink.id)

    def embedder(self) -> Embedder:
        """The sentence embedder for semantic agreement, loaded on first use."""
        if self._embedder is None:
            self._embedder = SentenceTransformerEmbedder()
        return self._embedder

    async def _call(
        self,
        step: StepSpec,
        model: str,
        request: ModelRequest,
        limiters: list[anyio.CapacityLimiter],
        calls: list[CallResult],
    ) -> CallResult:
        """One recorded call of ``step`` to ``model``; its result joins ``calls``."""
        result = await self._start_call(step, model, request, limiters)
        calls.append(result)
        return result

    def _start_call(
        self,
        step: StepSpec,
        model: str,
        request: ModelRequest,
        step_limiters: Sequence[anyio.CapacityLimiter],
    ) -> Coroutine[Any, Any, CallResult]:
        """The call's coroutine (``call_model``), under the step's limiters and the
        session's."""
        limiters = step_limiters or self._call_limiters
        return call_model(
            self.clients[model],
            request,
            session_id=self.session_id,
            emit=self.emit,
            timeout_s=_seconds(step.call_timeout_ms),
            limiters=limiters,
            budget=self.budget,
            on_delta=self.on_delta,
            record_start=self.record_starts,
        )

    def _step_limiter(self, at_once: int) -> anyio.CapacityLimiter | None:
        """The step's ``maxConcurrentModels`` slots; None when the step never makes more
        than ``at_once`` calls at a time and that is within the limit (no waiting)."""
        limit = self.settings.max_concurrent_models
        return anyio.CapacityLimiter(limit) if at_once > limit else None

    def _limiters(self, step_limiter: anyio.CapacityLimiter | None) -> list[anyio.CapacityLimiter]:
        # Always step first, then session: one global order, so no two waits can deadlock.
        limiters = [step_limiter] if step_limiter is not None else []
        if self.call_limiter is not None:
            limiters.append(self.call_limiter)
        return limiters

    def _asking(self, step: StepSpec) -> _Asking:
        """The threshold and merge options of a multi-model attempt, and room for what
        it gathers."""
        threshold = (
            step.consensus_threshold
            if step.consensus_threshold is not None
            else self.settings.consensus_threshold
        )
        options = MergeOptions(
            agreement=step.agreement,
            similarity_threshold=step.similarity_threshold,
            weights=step.weights,
            embedder=self.embedder() if step.agreement == "semantic" else None,
            tie_break=step.tie_break,
            model_order=(*self._models[step.id], *step.escalate_to),
        )
        return _Asking(threshold, options)

    async def _many(
        self,
        step: StepSpec,
        models: list[str],
        request: ModelRequest,
        calls: list[CallResult],
        asking: _Asking,
    ) -> tuple[str | None, float | None, str | None]:
        limiters = self._limiters(self._step_limiter(max(len(models), len(step.escalate_to))))

        async def call(model: str, req: ModelRequest = request) -> CallResult:
            return await self._call(step, model, req, limiters, calls)

        threshold, options = asking.threshold, asking.options
        chosen = models[: step.max_models] if step.max_models else models
        key = cache_key(step, chosen, request, threshold) if self._caching(step) else None
        if key is not None and self.cache is not None:
            hit = await self.cache(key)
            if hit is not None:
                return self._cached(step, request, hit)
        gathered = asking.gathered
        order = asking.order
        order += chosen
        await gather(
            chosen,
            call,
            mode=step.mode,
            min_models=step.min_models,
            threshold=threshold,
            options=options,
            failure_strategy=step.failure_strategy,
            prices={m: _price(self.clients[m]) for m in chosen},
            out=gathered,
        )
        if gathered.aborted is not None:
            return None, None, f"fail_fast: {gathered.aborted}"
        answered = gathered.answered(order)
        if not answered:
            reasons = "; ".join(
                f"{m}: {r.error}" for m, r in gathered.results.items() if r.error is not None
            )
            return None, None, f"no model answered ({reasons})"
        notes: list[str] = []
        outcomes: list[str] = []
        merged, judge_call = await self._merge(
            step, request, gathered.answers(order), threshold, options, call, outcomes, notes
        )
        if not merged.reached and step.on_low_consensus == "escalate":
            extra = [m for m in step.escalate_to if m not in gathered.results]
            if extra:
                outcomes.append("escalated")
                notes.append(
                    f"agreement {merged.score:.2f} was below {threshold:g}: "
                    f"also asked {', '.join(extra)}"
                )
                order += extra
                await gather(
                    extra,
                    call,
                    mode="all",
                    threshold=threshold,
                    options=options,
                    failure_strategy=step.failure_strategy,
                    out=gathered,
                )
                merged, judge_call = await self._merge(
                    step,
                    request,
                    gathered.answers(order),
                    threshold,
                    options,
                    call,
                    outcomes,
                    notes,
                )
        failed = [r for r in gathered.results.values() if r.status in ("failed", "timeout")]
        if failed:
            answered = gathered.answered(order)
            outcomes.append("k_of_n")
            notes.append(f"{len(answered)} of {len(answered) + len(failed)} models answered")
        return self._conclude(step, request, asking, merged, judge_call, outcomes, notes, key)

    def _merge_at_timeout(
        self, step: StepSpec, request: ModelRequest, asking: _Asking, timeout_ms: int
    ) -> tuple[str | None, float | None, str | None] | None:
        """The step's deadline cut a multi-model attempt: merge the answers that arrived
        (outcome ``k_of_n``); None when none did.

        The attempt's scope (or lane) is cancelled, so nothing here may await: the
        judge is not asked (its fallback merges) and a semantic merge embeds on the
        event loop.
        """
        gathered, order = asking.gathered, asking.order
        answers = gathered.answers(order)
        if not answers:
            return None
        outcomes: list[str] = []
        notes: list[str] = []
        method = step.synthesis
        if method == "judge":
            method = step.judge_fallback
            outcomes.append("judge_failed")
            notes.append(f"the step timed out before the judge answered; used {method}")
        merged = synthesize(method, answers, asking.threshold, asking.options)
        # Every model started counts: those still running were cancelled by the deadline.
        started = sum(len(batch) for batch in gathered.escalation)
        if len(answers) < started:
            outcomes.append("k_of_n")
        notes.append(
            f"{len(answers)} of {started} models answered before the step timed out"
            f" after {timeout_ms} ms"
        )
        return self._conclude(step, request, asking, merged, None, outcomes, notes, None)

    def _conclude(
        self,
        step: StepSpec,
        request: ModelRequest,
        asking: _Asking,
        merged: Synthesis,
        judge_call: str | None,
        outcomes: list[str],
        notes: list[str],
        key: str | None,
    ) -> tuple[str | None, float | None, str | None]:
        """Record the consensus of a multi-model attempt; the step's output, score and
        error (consensus below the threshold fails a step with ``on_low_consensus:
        fail``)."""
        gathered, threshold = asking.gathered, asking.threshold
        if merged.outcome != "ok":
            outcomes.append(merged.outcome)
            if merged.note is not None:
                notes.append(merged.note)
        if step.mode == "quorum" and not gathered.early_termination and not merged.reached:
            outcomes.append("quorum_not_reached")
        if not merged.reached:
            outcomes.append("low_consensus")
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
                outcome=",".join(dict.fromkeys(outcomes)) or "ok",
                attempt=request.attempt,
                mode=step.mode,
                early_termination=gathered.early_termination,
                escalation=tuple(tuple(r) for r in gathered.escalation),
                items=tuple(
                    {"text": it.text, "models": list(it.models), "call_ids": list(it.keys)}
                    for it in merged.items
                ),
                judge_call_id=judge_call,
                note="; ".join(notes) or None,
                # Only a merge of complete answers is worth reusing.
                cache_key=key
                if not {"k_of_n", "judge_failed", NO_ANSWER} & set(outcomes)
                else None,
            )
        )
        if not merged.reached and step.on_low_consensus == "fail":
            return (
                None,
                merged.score,
                f"consensus {merged.score:.2f} is below the threshold {threshold:g}",
            )
        return merged.content, merged.score, None

    def _caching(self, step: StepSpec) -> bool:
        return self.cache is not None and step.cache and self.settings.cache

    def _cached(
        self, step: StepSpec, request: ModelRequest, hit: StoredConsensus
    ) -> tuple[str | None, float | None, str | None]:
        """Serve a stored consensus: no call is made; the event links to the original."""
        self.emit(
            ConsensusComputed(
                session_id=self.session_id,
                step_id=step.id,
                method=hit.method,
                score=hit.score,
                content=hit.content,
                threshold=hit.threshold,
                reached=hit.reached,
                included_call_ids=(),
                clusters=tuple(hit.clusters),
                outcome=hit.outcome,
                attempt=request.attempt,
                mode=hit.mode,
                early_termination=hit.early_termination,
                escalation=tuple(tuple(r) for r in hit.escalation),
                items=tuple(hit.items),
                note=f"cached: consensus {hit.id} of session {hit.session_id}",
                cached_from=hit.id,
            )
        )
        if not hit.reached and step.on_low_consensus == "fail":
            return (
                None,
                hit.score,
                (f"consensus {hit.score:.2f} is below the threshold {hit.threshold:g} (cached)"),
            )
        return hit.content, hit.score, None

    async def _merge(
        self,
        step: StepSpec,
        request: ModelRequest,
        answers: Sequence[Answer],
        threshold: float,
        options: MergeOptions,
        call: Callable[[str, ModelRequest], Awaitable[CallResult]],
        outcomes: list[str],
        notes: list[str],
    ) -> tuple[Synthesis, str | None]:
        """Merge the answers; a judge step asks its synthesizer, falling back on failure."""
        if step.synthesis != "judge":
            if options.embedder is not None:
                # Embedding is CPU work: keep it off the event loop.
                merged = await anyio.to_thread.run_sync(
                    synthesize, step.synthesis, answers, threshold, options
                )
                return merged, None
            return synthesize(step.synthesis, answers, threshold, options), None
        assert step.synthesizer is not None
        judged = await call(
            step.synthesizer,
            dataclasses.replace(request, prompt=judge_prompt(request.prompt, answers)),
        )
        merged = synthesize(step.judge_fallback, answers, threshold, options)
        if judged.ok and (judged.content or "").strip():
            # The judge writes the answer; agreement still comes from the responses.
            return dataclasses.replace(
                merged,
                content=(judged.content or "").strip(),
                method="judge",
                included_keys=tuple(sorted(a.key for a in answers)),
            ), judged.call_id
        why = judged.error or "empty answer"
        outcomes.append("judge_failed")
        notes.append(f"judge {step.synthesizer!r} failed ({why}); used {step.judge_fallback}")
        return merged, judged.call_id

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


def cache_key(
    step: StepSpec, models: Sequence[str], request: ModelRequest, threshold: float
) -> str:
    """The consensus-cache key: everything that decides a multi-model step's merge.

    The prompt is normalised (whitespace collapsed); the model set is sorted, except
    for cascade, whose order is the price order and is decided by the same models.
    """
    material = {
        "prompt": " ".join(request.prompt.split()),
        "system": request.system,
        "models": sorted(models),
        "mode": step.mode,
        "method": step.synthesis,
        "threshold": threshold,
        "min_models": step.min_models,
        "synthesizer": step.synthesizer,
        "judge_fallback": step.judge_fallback,
        "weights": dict(sorted(step.weights.items())),
        "agreement": step.agreement,
        "similarity_threshold": step.similarity_threshold,
        "tie_break": step.tie_break,
        "escalate_to": list(step.escalate_to),
        "on_low_consensus": step.on_low_consensus,
        "failure_strategy": step.failure_strategy,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


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


def _quote(text: str, width: int = 200) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")


def _price(model: PooledModel | ModelClient) -> float | None:
    """USD per million tokens, input plus output, for cascade ordering."""
    return model.price_per_mtok if isinstance(model, PooledModel) else None


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000
