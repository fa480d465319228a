"""``execute_parallel`` and ``thinktank ask``: one prompt to several models, recorded.

The spec's ``ParallelExecutionService.executeParallel`` done as a one-step session:
the prompt becomes a session input, the config becomes a multi-model step, and the
run goes through the same scheduler, call layer, consensus and store as any session
— so ``show`` and replay work on it too. :class:`ParallelResult` has the spec's REST
response shape (``responses``, ``synthesis``, ``usage``) plus what we measure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from thinktank.engine.result import SessionResult, StepOutcome, Usage
from thinktank.engine.runner import Listener
from thinktank.engine.stream import run
from thinktank.providers.base import ModelClient
from thinktank.session.spec import ParallelExecutionConfig, SessionSpec
from thinktank.store import Store
from thinktank.store._arg import DEFAULT_STORE

__all__ = [
    "ParallelResponse",
    "ParallelResult",
    "SynthesisResult",
    "execute_parallel",
    "session_for",
]


class ParallelResponse(BaseModel):
    """One model's answer (or failure)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """The model name."""
    content: str | None
    """Its answer (None when it failed before answering)."""
    status: str
    """ok, failed, timeout or cancelled."""
    latency_ms: float
    """Wall time of the call."""
    input_tokens: int | None
    """Prompt tokens, None when unknown."""
    output_tokens: int | None
    """Completion tokens, None when unknown."""
    tokens: int | None
    """Input plus output, None when unknown."""
    cost_usd: float | None
    """USD, None when unknown."""
    error: str | None = None
    """Why it failed."""
    included_in_consensus: bool = True
    """Whether the answer supports the merged output."""


class SynthesisResult(BaseModel):
    """The merged answer."""

    model_config = ConfigDict(extra="forbid")

    content: str
    """The merged answer."""
    consensus_score: float
    """Agreement in [0, 1], computed from the responses."""
    method: str
    """majority, medoid, weighted_merge, judge or union."""
    reached: bool
    """consensus_score >= threshold."""
    threshold: float
    """The threshold in force."""
    outcome: str
    """ok, or the degraded outcomes (k_of_n, low_consensus, quorum_not_reached,
    judge_failed, escalated, no_answer), comma-separated."""
    note: str | None = None
    """What the outcome means here."""
    clusters: list[dict[str, Any]] = []
    """The agreeing groups."""
    items: list[dict[str, Any]] = []
    """``union``: merged items with the models that found each."""


class ParallelResult(BaseModel):
    """What ``execute_parallel`` returns (the spec's ``parallel.completion``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The session id it is stored under (``thinktank show <id>``)."""
    object: str = "parallel.completion"
    """The spec's object name."""
    mode: str
    """all, race, quorum or cascade."""
    responses: list[ParallelResponse]
    """Every call, in the order the models were given."""
    synthesis: SynthesisResult | None
    """The merge; None when no model answered."""
    usage: Usage
    """total_tokens and total_cost_usd (None when unknown)."""
    total_latency_ms: float
    """Wall time of the whole execution."""
    early_termination: bool
    """True when race/quorum/cascade stopped before every model answered."""
    escalation: list[list[str]] = []
    """The models started in each round."""
    cached: bool = False
    """True when served from the consensus cache (no model was called)."""
    cached_from: str | None = None
    """The stored consensus it reused."""
    error: str | None = None
    """Why no merged answer came out, when none did."""
    outcome: StepOutcome | None = None
    """``answered``, or ``no_consensus`` when asked to abstain and the answers agreed
    below the threshold (the synthesis is then the low-agreement merge, not an
    answer); None when no step completed."""


def session_for(
    prompt_config: ParallelExecutionConfig, *, name: str = "ask", abstain: bool = False
) -> SessionSpec:
    """The one-step session that runs a parallel execution; with ``abstain``, its step
    answers nothing below the threshold (``on_low_consensus: abstain``)."""
    cfg = prompt_config
    models = cfg.models if cfg.enabled else cfg.models[:1]
    step: dict[str, Any] = {
        "id": "ask",
        "prompt": "{{ inputs.prompt }}",
        "mode": cfg.mode,
        "synthesis": cfg.synthesis,
        "min_models": cfg.min_models,
        "max_models": cfg.max_models,
        "failure_strategy": cfg.failure_strategy,
        "synthesizer": cfg.synthesizer,
        "judge_fallback": cfg.judge_fallback,
        "weights": cfg.weights,
        "tie_break": cfg.tie_break,
        "agreement": cfg.agreement,
        "similarity_threshold": cfg.similarity_threshold,
        "consensus_threshold": cfg.consensus_threshold,
        "call_timeout_ms": cfg.timeout_ms,
        "timeout_ms": cfg.timeout_per_step_ms,
        "system": cfg.system,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "cache": cfg.cache,
        "answer_format": cfg.answer_format,
        "on_low_consensus": "abstain" if abstain else None,
    }
    if len(models) == 1:
        step["model"] = models[0]
    elif models:
        step["models"] = list(models)
    data: dict[str, Any] = {
        "name": name,
        "inputs": {"prompt": {"type": "string"}},
        "parallel_execution": {
            "max_concurrent_models": cfg.max_concurrent_models,
            "consensus_threshold": cfg.consensus_threshold,
        },
        "model_selection": {
            "automatic": cfg.agi_model_selection and not models,
            "domain_hint": ", ".join(cfg.domain_hints) or None,
            "count": cfg.max_models,
        },
        "steps": [{k: v for k, v in step.items() if v is not None}],
    }
    return SessionSpec.model_validate(data)


def to_parallel_result(result: SessionResult, mode: str) -> ParallelResult:
    """The spec-shaped view of a finished one-step session."""
    step = result.steps["ask"]
    included = set(step.consensus.included_call_ids) if step.consensus else None
    responses = [
        ParallelResponse(
            model=c.model,
            content=c.content,
            status=c.status,
            latency_ms=c.latency_ms,
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
            tokens=None
            if c.input_tokens is None or c.output_tokens is None
            else c.input_tokens + c.output_tokens,
            cost_usd=c.cost_usd,
            error=c.error,
            included_in_consensus=(
                c.call_id in included if included is not None else c.status == "ok"
            ),
        )
        for c in step.calls
        if step.consensus is None or c.call_id != step.consensus.judge_call_id
    ]
    synthesis = None
    consensus = step.consensus
    if consensus is not None:
        synthesis = SynthesisResult(
            content=consensus.content,
            consensus_score=consensus.score,
            method=consensus.method,
            reached=consensus.reached,
            threshold=consensus.threshold,
            outcome=consensus.outcome,
            note=consensus.note,
            clusters=consensus.clusters,
            items=consensus.items,
        )
    elif step.status == "completed" and step.output is not None:
        # One model (or enabled: false): its answer is the result, trivially agreed.
        synthesis = SynthesisResult(
            content=step.output,
            consensus_score=1.0,
            method="single",
            reached=True,
            threshold=0.0,
            outcome="ok",
        )
    return ParallelResult(
        id=result.session_id,
        mode=mode,
        responses=responses,
        synthesis=synthesis,
        usage=result.usage,
        total_latency_ms=result.wall_ms,
        early_termination=consensus.early_termination if consensus else False,
        escalation=consensus.escalation if consensus else [],
        cached=bool(consensus and consensus.cached_from),
        cached_from=consensus.cached_from if consensus else None,
        error=step.error or step.skip_reason,
        outcome=step.outcome,
    )


async def execute_parallel(
    prompt: str,
    config: ParallelExecutionConfig | Mapping[str, Any],
    *,
    store: Store | str | None = DEFAULT_STORE,
    models: Mapping[str, ModelClient] | None = None,
    on_event: Listener | None = None,
    abstain: bool = False,
) -> ParallelResult:
    """Ask several models ``prompt`` at once and merge their answers.

    Args:
        prompt: The question (inserted as data: braces in it are not a template).
        config: The spec's ParallelExecutionConfig (or a mapping; camelCase accepted).
        store: Where the execution is recorded: the ``store=`` rule of the README's
            Python API section (None records nothing).
        models: Model clients by name, besides the registry's.
        on_event: Receives every event.
        abstain: Below the consensus threshold answer nothing: the result's
            ``outcome`` is ``no_consensus`` (selective answering).

    Raises:
        SpecErrors: unknown models, missing keys, or an invalid config.
    """
    cfg = (
        config
        if isinstance(config, ParallelExecutionConfig)
        else ParallelExecutionConfig.model_validate(config)
    )
    # Validated as it is built; ``run`` checks its models against the registry and
    # ``models``, as for a session file.
    spec = session_for(cfg, abstain=abstain)
    result = await run(
        spec, inputs={"prompt": prompt}, store=store, models=models, on_event=on_event
    )
    return to_parallel_result(result, cfg.mode)
