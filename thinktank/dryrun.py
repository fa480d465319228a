"""Dry run: the DAG, the calls a session would make, and what they would cost.

Nothing is called and nothing is written. Input tokens are estimated from each step's
rendered prompt (about four characters a token); a dependency's output, unknown before
the run, is counted at its step's ``max_tokens`` (or the default output estimate).
Output tokens are the step's ``max_tokens``, or :data:`DEFAULT_OUTPUT_ESTIMATE`. A step
whose call count depends on the answers (race, quorum, cascade, judge, escalation,
decompose) shows a range; the cost estimate takes the upper end. A model with no
price makes the estimate unknown rather than wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from thinktank.engine.budget import DEFAULT_OUTPUT_ESTIMATE, estimate_tokens
from thinktank.providers.base import ModelClient
from thinktank.providers.config import load_config
from thinktank.providers.registry import ModelRegistry
from thinktank.session.graph import StepGraph
from thinktank.session.selection import apply_selection
from thinktank.session.spec import SessionSpec, StepSpec, validate_inputs
from thinktank.session.templates import render_template

__all__ = ["DryRun", "DryRunStep", "dry_run"]


class DryRunStep(BaseModel):
    """One step's planned calls."""

    id: str
    kind: str
    mode: str | None
    models: list[str]
    calls_min: int
    calls_max: int
    input_tokens_per_call: int
    output_tokens_per_call: int
    cost_usd_max: float | None
    note: str | None = None


class DryRun(BaseModel):
    """What ``thinktank run --dry-run`` prints."""

    name: str
    generations: list[list[str]]
    steps: list[DryRunStep]
    calls_min: int
    calls_max: int
    cost_usd_max: float | None
    budget_max_cost_usd: float | None = None


def _call_cost(
    registry: ModelRegistry, model: str, tokens_in: int, tokens_out: int
) -> float | None:
    prices = registry.prices_of(model)
    if prices is None:
        return None
    return (tokens_in * prices[0] + tokens_out * prices[1]) / 1e6


def _counts(step: StepSpec, models: list[str]) -> tuple[int, int, str | None]:
    n = len(models[: step.max_models] if step.max_models else models)
    extra = len(step.escalate_to) + (1 if step.synthesis == "judge" and n > 1 else 0)
    if step.kind == "decompose":
        return (
            n + 1 + 1,
            2 * n + step.max_subproblems + 1,
            f"adds up to {step.max_subproblems} sub-steps and a synthesis step at run time",
        )
    if n == 1:
        return 1, 1, None
    if step.mode == "all":
        return n + (1 if step.synthesis == "judge" else 0), n + extra, None
    if step.mode == "race":
        return 1, n, "the first answer wins; calls still running are cancelled"
    if step.mode == "quorum":
        need = step.min_models or -(-n // 2)
        return need, n + extra, f"stops once {need} agree"
    first = min(n, step.min_models or 2)
    return first, n + extra, "cheapest first; dearer models only on disagreement"


def dry_run(
    spec: SessionSpec,
    *,
    inputs: Mapping[str, Any] | None = None,
    models: Mapping[str, ModelClient] | None = None,
) -> DryRun:
    """Plan a run of ``spec`` without calling anything or opening a store.

    Args:
        spec: A validated session (``thinktank.load_session``).
        inputs: Values for the session's declared inputs, as for ``run``.
        models: Model clients by name, as for ``run`` (their prices are unknown).

    Raises:
        SpecErrors: automatic model selection finds no usable model, or
            ``thinktank.toml`` is invalid.
        InputError: inputs missing, unknown or of the wrong type.
    """
    registry = ModelRegistry(session_models=spec.models, config=load_config, clients=models)
    spec, _ = apply_selection(spec, registry)
    inputs = validate_inputs(spec, inputs)
    graph = StepGraph(spec)
    out_estimate = {s.id: s.max_tokens or DEFAULT_OUTPUT_ESTIMATE for s in spec.steps}
    placeholder = {sid: "x" * (4 * est) for sid, est in out_estimate.items()}
    steps = []
    total_min = total_max = 0
    total_cost: float | None = 0.0
    for step in spec.steps:
        chosen = spec.step_models(step)
        prompt = render_template(step.prompt, inputs, placeholder) if step.template else step.prompt
        tokens_in = estimate_tokens(prompt + (step.system or ""))
        tokens_out = out_estimate[step.id]
        low, high, note = _counts(step, chosen)
        priced = [
            _call_cost(registry, m, tokens_in, tokens_out) for m in [*chosen, *step.extra_models()]
        ]
        cost: float | None = None
        if priced and all(c is not None for c in priced):
            # The dearest model per extra call keeps it an upper bound.
            worst = max(c for c in priced if c is not None)
            cost = worst * high
        steps.append(
            DryRunStep(
                id=step.id,
                kind=step.kind
                if step.kind == "decompose"
                else ("multi" if len(chosen) > 1 else "prompt"),
                mode=step.mode if len(chosen) > 1 and step.kind == "prompt" else None,
                models=chosen,
                calls_min=low,
                calls_max=high,
                input_tokens_per_call=tokens_in,
                output_tokens_per_call=tokens_out,
                cost_usd_max=cost,
                note=note,
            )
        )
        total_min += low
        total_max += high
        total_cost = None if cost is None or total_cost is None else total_cost + cost
    return DryRun(
        name=spec.name,
        generations=graph.generations(),
        steps=steps,
        calls_min=total_min,
        calls_max=total_max,
        cost_usd_max=total_cost,
        budget_max_cost_usd=spec.budget.max_cost_usd,
    )
