"""The multi-model step kind: ask several models one prompt and merge their answers.

A ``multi`` step asks its models (``mode: all`` waits for every one, at most
``maxConcurrentModels`` at a time; race, quorum and cascade stop early), merges the
answers with the step's synthesis method (a judge model, or a method of
``thinktank.consensus``), escalates to more models when agreement is low, and emits the
consensus as an event, which the store keeps. A consensus of complete answers is
cached under a key of everything that decides the merge (:func:`cache_key`), so the
same question asked again is served from the store without a call.

When the step's deadline cuts an attempt after some models answered, what arrived is
merged (outcome ``k_of_n``) and the calls still running are recorded as cancelled;
with no answer the attempt fails as timed out.

Below the threshold a step with ``on_low_consensus: abstain`` answers nothing: the
consensus is recorded with the outcome ``no_consensus`` and the attempt returns
:class:`~thinktank.engine.scheduler.Abstained` in place of an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

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
from thinktank.engine.calls import Caller, CallResult
from thinktank.engine.outcome import NO_CONSENSUS, Abstained, below_threshold
from thinktank.engine.parallel import Gathered, gather
from thinktank.events import CachedConsensus, ConsensusComputed
from thinktank.providers.base import ModelClient, ModelRequest, PooledModel
from thinktank.session.spec import StepSpec

__all__ = ["Asking", "CacheLookup", "MultiModel", "OnSynthesis", "Outcome", "cache_key"]

CacheLookup = Callable[[str], Awaitable[CachedConsensus | None]]
"""Finds a stored consensus by cache key (``Store.find_consensus``)."""

Outcome = tuple[str | None, float | None, str | Abstained | None]
"""An attempt's output, consensus score and error (or abstention)."""

OnSynthesis = Callable[[str, str], None]
"""(step id, the judge's text so far) -> None: called each time a judge's merged answer
grows while the judge writes it (a streaming client). Each judge call, and each retry
of one, starts again from its first piece; the stored synthesis is the final text,
stripped. Not recorded."""


class _Written:
    """One judge call's text as it arrives, handed whole to an :data:`OnSynthesis`."""

    __slots__ = ("listener", "step_id", "text")

    def __init__(self, step_id: str, listener: OnSynthesis) -> None:
        self.step_id = step_id
        self.listener = listener
        self.text = ""

    def __call__(self, piece: str) -> None:
        if not piece:  # the call starts over (a retry): the judge writes afresh
            self.text = ""
            return
        self.text += piece
        self.listener(self.step_id, self.text)


@dataclass(slots=True)
class Asking:
    """A multi-model attempt in flight: what a step timeout merges.

    ``gather`` fills ``gathered`` as calls end, so when the step's deadline cancels
    the attempt the answers that arrived are still here.
    """

    threshold: float
    options: MergeOptions
    order: list[str] = field(default_factory=list)
    """The models asked so far, in the step's order (escalations appended)."""
    gathered: Gathered = field(default_factory=Gathered)


class MultiModel:
    """Runs the attempts of a session's multi-model steps."""

    def __init__(
        self,
        caller: Caller,
        *,
        threshold: float,
        cache: CacheLookup | None = None,
        use_cache: bool = True,
        on_synthesis: OnSynthesis | None = None,
    ) -> None:
        self.caller = caller
        self.on_synthesis = on_synthesis
        """Hears a judge's merged answer as it is written (None: nobody listens)."""
        self.threshold = threshold
        """The session's consensus threshold (a step may set its own)."""
        self.cache = cache
        self.use_cache = use_cache
        """The session allows the consensus cache (each step may still opt out)."""
        self._embedder: Embedder | None = None

    def embedder(self) -> Embedder:
        """The sentence embedder for semantic agreement, loaded on first use."""
        if self._embedder is None:
            self._embedder = SentenceTransformerEmbedder()
        return self._embedder

    def asking(self, step: StepSpec, models: Sequence[str], question: str = "") -> Asking:
        """The threshold and merge options of a multi-model attempt (``question``: the
        prompt as sent, which answer equivalence reads), and room for what it gathers."""
        threshold = (
            step.consensus_threshold if step.consensus_threshold is not None else self.threshold
        )
        options = MergeOptions(
            agreement=step.agreement,
            similarity_threshold=step.similarity_threshold,
            weights=step.weights,
            embedder=self.embedder() if step.agreement == "semantic" else None,
            tie_break=step.tie_break,
            model_order=(*models, *step.escalate_to),
            answer_format=step.declared_format(),
            question=question,
        )
        return Asking(threshold, options)

    async def ask(
        self,
        step: StepSpec,
        models: list[str],
        request: ModelRequest,
        calls: list[CallResult],
        asking: Asking,
    ) -> Outcome:
        """One attempt: serve it from the cache, or ask the models, merge their answers
        (escalating on low agreement) and emit the consensus."""
        limiters = self.caller.limiters(max(len(models), len(step.escalate_to)))

        async def call(model: str, req: ModelRequest = request) -> CallResult:
            return await self.caller.call(model, req, limiters, calls, step.call_timeout_ms)

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
            prices={m: _price(self.caller.clients[m]) for m in chosen},
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

    def merge_at_timeout(
        self, step: StepSpec, request: ModelRequest, asking: Asking, timeout_ms: int
    ) -> Outcome | None:
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
        asking: Asking,
        merged: Synthesis,
        judge_call: str | None,
        outcomes: list[str],
        notes: list[str],
        key: str | None,
    ) -> Outcome:
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
            if step.on_low_consensus == "abstain":
                outcomes.append(NO_CONSENSUS)
        self.caller.emit(
            ConsensusComputed(
                session_id=self.caller.session_id,
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
                        # Why each member joined (equivalence layer), for readers.
                        "reasons": dict(c.reasons),
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
        return _below(step, merged.content, merged.score, threshold, merged.reached)

    def _caching(self, step: StepSpec) -> bool:
        return self.cache is not None and step.cache and self.use_cache

    def _cached(self, step: StepSpec, request: ModelRequest, hit: CachedConsensus) -> Outcome:
        """Serve a stored consensus: no call is made; the event links to the original."""
        self.caller.emit(
            hit.served(
                session_id=self.caller.session_id,
                step_id=step.id,
                attempt=request.attempt,
                note=f"cached: consensus {hit.id} of session {hit.session_id}",
            )
        )
        return _below(step, hit.content, hit.score, hit.threshold, hit.reached, " (cached)")

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
        judging = dataclasses.replace(request, prompt=judge_prompt(request.prompt, answers))
        if self.on_synthesis is not None:
            # Someone reads the merge as it is written: the judge streams (a fresh
            # listener per judge call, so an escalation's second judge starts over).
            written = _Written(step.id, self.on_synthesis)
            judging = dataclasses.replace(judging, on_delta=written, stream=True)
        judged = await call(step.synthesizer, judging)
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


def cache_key(
    step: StepSpec, models: Sequence[str], request: ModelRequest, threshold: float
) -> str:
    """The consensus-cache key: everything that decides a multi-model step's merge.

    The prompt is normalised (whitespace collapsed); the model set is sorted, except
    for cascade, whose order is the price order and is decided by the same models.
    """
    material: dict[str, object] = {
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
    if request.seed is not None:
        # Another seed samples other answers. Added only when set, so the keys of
        # consensuses stored before seeds existed still match.
        material["seed"] = request.seed
    if step.answer_format is not None:
        # The format decides extraction and equivalence, so the merge (choices that
        # give the letters their meaning, a schema). Added only when set, as the seed.
        material["answer_format"] = step.answer_format.model_dump(mode="json", by_alias=True)
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _below(
    step: StepSpec,
    content: str,
    score: float,
    threshold: float,
    reached: bool,
    suffix: str = "",
) -> Outcome:
    """The attempt's outcome once merged: the answer, or what ``on_low_consensus``
    makes of agreement below the threshold (an error for ``fail``, no answer for
    ``abstain``)."""
    if reached or step.on_low_consensus not in ("fail", "abstain"):
        return content, score, None
    why = below_threshold(score, threshold) + suffix
    if step.on_low_consensus == "abstain":
        return None, score, Abstained(why)
    return None, score, why


def _price(model: PooledModel | ModelClient) -> float | None:
    """USD per million tokens, input plus output, for cascade ordering."""
    return model.price_per_mtok if isinstance(model, PooledModel) else None
