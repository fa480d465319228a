"""Simultaneous prompt execution: one prompt to several models, in four modes.

- ``all``: every model answers (or fails); nothing stops early.
- ``race``: the first successful answer wins; the calls still running are cancelled.
- ``quorum``: stop as soon as at least ``min_models`` answers agree and the agreement
  over the answers so far reaches the threshold; cancel the rest. When every model has
  answered without that, return what there is with ``early_termination=False`` — it
  never waits for an answer that cannot come.
- ``cascade``: the cheapest models first (by the price table); add the next dearer model
  only while agreement stays below the threshold. Every answer, cheap ones included,
  counts in the final merge; the rounds are recorded as the escalation path.

The engine here only decides which calls to start and when to stop; the caller passes
``call(model) -> CallResult`` (the step layer's recorded, limited call), so cancelled
calls are recorded as cancelled with whatever they spent. ``failure_strategy``
``fail_fast`` stops everything at the first failed call.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio

from thinktank.consensus import Answer, MergeOptions, quorum_reached
from thinktank.engine.calls import CallResult

__all__ = ["Gathered", "Mode", "gather", "order_by_price"]

Mode = Literal["all", "race", "quorum", "cascade"]
Call = Callable[[str], Awaitable[CallResult]]


@dataclass(slots=True)
class Gathered:
    """What a multi-model call produced, before merging."""

    results: dict[str, CallResult] = field(default_factory=dict)
    """Every call that ended (ok, failed, timeout or cancelled), by model, in the order
    they ended (ties between equal answers go to the earliest)."""
    early_termination: bool = False
    """True when the mode stopped before every model answered."""
    escalation: list[list[str]] = field(default_factory=list)
    """The models started in each round (one round except in cascade)."""
    aborted: str | None = None
    """Set when ``fail_fast`` stopped the step at a failed call."""

    def answered(self, order: Sequence[str]) -> list[CallResult]:
        """The successful results, in ``order``."""
        return [self.results[m] for m in order if m in self.results and self.results[m].ok]

    def answers(self, order: Sequence[str]) -> list[Answer]:
        """The successful results as consensus answers, in ``order``, each with its
        completion rank as ``arrival``."""
        arrival = {model: rank for rank, model in enumerate(self.results)}
        return [
            Answer(key=r.call_id, model=r.model, text=r.content or "", arrival=arrival[r.model])
            for r in self.answered(order)
        ]


def order_by_price(models: Sequence[str], prices: Mapping[str, float | None]) -> list[str]:
    """Cheapest first; a model with no price goes last (it may be dear); ties keep order."""
    rank = {m: i for i, m in enumerate(models)}
    return sorted(
        models,
        key=lambda m: (prices.get(m) is None, prices.get(m) or 0.0, rank[m]),
    )


def _agrees(
    out: Gathered, order: Sequence[str], min_models: int, threshold: float, options: MergeOptions
) -> bool:
    """Whether the answers so far make a quorum (blank answers never do)."""
    answers = out.answers(order)
    return quorum_reached(answers, min_models=min_models, threshold=threshold, options=options)


async def gather(
    models: Sequence[str],
    call: Call,
    *,
    mode: Mode = "all",
    min_models: int | None = None,
    threshold: float = 0.7,
    options: MergeOptions | None = None,
    failure_strategy: Literal["fail_fast", "best_effort"] = "best_effort",
    prices: Mapping[str, float | None] | None = None,
    out: Gathered | None = None,
) -> Gathered:
    """Ask ``models`` through ``call`` and stop as ``mode`` says.

    Args:
        models: Model names, in the step's order (at most ``max_models`` already).
        call: Makes one recorded call to a model.
        mode: all, race, quorum or cascade.
        min_models: Agreeing answers quorum needs (default: a majority, ``ceil(n/2)``);
            the first round's size in cascade (default 2).
        threshold: Agreement that counts as consensus.
        options: How answers are compared.
        failure_strategy: fail_fast stops everything at the first failed call.
        prices: USD per million tokens (in + out) by model, for cascade.
        out: What to fill (default: a new one). The caller keeps what arrived through
            it when a cancellation cuts the gather short (a step timeout merges it).
    """
    options = options or MergeOptions()
    out = out if out is not None else Gathered()
    if mode == "cascade":
        await _cascade(
            models, call, out, min_models, threshold, options, failure_strategy, prices or {}
        )
        return out
    quorum = min_models if min_models is not None else max(1, math.ceil(len(models) / 2))
    out.escalation.append(list(models))

    async with anyio.create_task_group() as tg:

        async def one(model: str) -> None:
            result = await call(model)
            out.results[model] = result
            if not result.ok:
                if failure_strategy == "fail_fast":
                    out.aborted = f"model {model!r}: {result.error}"
                    tg.cancel_scope.cancel()
                return
            if mode == "race" or (
                mode == "quorum" and _agrees(out, models, quorum, threshold, options)
            ):
                out.early_termination = len(out.results) < len(models)
                tg.cancel_scope.cancel()

        for model in models:
            tg.start_soon(one, model, name=f"call {model}")
    return out


async def _cascade(
    models: Sequence[str],
    call: Call,
    out: Gathered,
    min_models: int | None,
    threshold: float,
    options: MergeOptions,
    failure_strategy: Literal["fail_fast", "best_effort"],
    prices: Mapping[str, float | None],
) -> None:
    ordered = order_by_price(models, prices)
    first = min(len(ordered), min_models if min_models is not None else 2)
    rounds = [ordered[:first]] + [[m] for m in ordered[first:]]

    async def one(model: str, siblings: anyio.CancelScope | None = None) -> None:
        result = out.results[model] = await call(model)
        if not result.ok and failure_strategy == "fail_fast":
            out.aborted = f"model {model!r}: {result.error}"
            if siblings is not None:
                siblings.cancel()

    for i, batch in enumerate(rounds):
        out.escalation.append(list(batch))
        if len(batch) == 1:
            # One call: no task group to start and join (every round after the first).
            await one(batch[0])
        else:
            async with anyio.create_task_group() as tg:
                for model in batch:
                    tg.start_soon(one, model, tg.cancel_scope, name=f"call {model}")
        if out.aborted is not None:
            return
        if _agrees(out, ordered, 2, threshold, options):
            out.early_termination = i < len(rounds) - 1
            return
