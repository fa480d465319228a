"""Experiment records built in memory: what the runner would read back from a store.

Analyses and reports take :mod:`thinktank.eval.records` values only, so they are tested
(and benchmarked) on records made here: several configurations, items, repeats, panels
whose models draw several samples (``NAME#K``), failed calls, unfinished sessions and
costs. Everything is seeded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from thinktank.consensus.agreement import Answer
from thinktank.consensus.synthesis import synthesize
from thinktank.eval.experiment import Configuration
from thinktank.eval.records import CALL_OK, ExperimentRecord, SampleRecord, StoredCall, base_model


def config(
    cid: str,
    models: Sequence[str],
    *,
    samples: int = 1,
    mode: str = "all",
    synthesis: str = "majority",
    threshold: float | None = None,
) -> Configuration:
    return Configuration(
        id=cid,
        models=tuple(models),
        ensemble=None,
        mode=mode,
        synthesis=synthesis,
        threshold=threshold,
        samples=samples,
        temperature=None,
        seed=None,
    )


def experiment(
    configurations: Sequence[Configuration],
    *,
    baseline: str | None = None,
    scorer: Any = "normalized",
    items: int = 0,
) -> ExperimentRecord:
    return ExperimentRecord(
        id="exp-1",
        name="factory experiment",
        spec={"name": "factory experiment", "scorer": scorer, "baseline": baseline},
        configurations=tuple(configurations),
        baseline=baseline,
        dataset="shipped:capitals",
        items=items,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def call(
    model: str,
    text: str | None,
    arrival: int,
    *,
    status: str | None = None,
    cost: float | None = 0.001,
    key: str | None = None,
    latency_ms: float = 100.0,
) -> StoredCall:
    failed = text is None
    return StoredCall(
        key=key or f"{model}:{arrival}",
        model=model,
        base_model=base_model(model),
        text=text,
        status=status or ("failed" if failed else CALL_OK),
        error="boom" if failed else None,
        arrival=arrival,
        latency_ms=latency_ms,
        input_tokens=20,
        output_tokens=None if failed else 5,
        cost_usd=cost,
        included=not failed,
    )


def sample(
    config_id: str,
    item_id: str,
    targets: Sequence[str],
    calls: Sequence[StoredCall],
    *,
    repeat: int = 1,
    status: str = "completed",
    answer: str | None = None,
    score: float | None = None,
    wall_ms: float | None = 250.0,
    merge: bool = True,
) -> SampleRecord:
    """A sample; its answer and consensus score default to the majority of its calls."""
    answered = [c for c in calls if c.text is not None and c.status == CALL_OK]
    if merge and answer is None and answered:
        merged = synthesize(
            "majority",
            [
                Answer(key=c.key, model=c.model, text=c.text or "", arrival=c.arrival)
                for c in answered
            ],
            0.7,
        )
        answer = merged.content
        score = merged.score if len(calls) > 1 else None
    costs = [c.cost_usd for c in calls]
    return SampleRecord(
        config_id=config_id,
        item_id=item_id,
        repeat=repeat,
        session_id=f"s-{config_id}-{item_id}-{repeat}",
        targets=tuple(targets),
        status=status,
        answer=answer,
        consensus_score=score,
        calls=tuple(calls),
        calls_made=len(calls),
        cost_usd=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
        input_tokens=sum(c.input_tokens or 0 for c in calls),
        output_tokens=sum(c.output_tokens or 0 for c in calls),
        wall_ms=wall_ms,
    )


_WRONG = ("Lyon", "Marseille", "Nice", "Toulouse")


def random_records(
    seed: int = 0,
    *,
    items: int = 40,
    repeats: int = 1,
    panels: Sequence[tuple[str, Sequence[str], int]] | None = None,
    accuracy: float = 0.6,
    fail_rate: float = 0.05,
    unfinished_rate: float = 0.0,
    baseline: str | None = "single",
) -> tuple[ExperimentRecord, list[SampleRecord]]:
    """A whole experiment: ``panels`` is (id, models, samples per model) per
    configuration. Each model has its own accuracy around ``accuracy``; every item has
    one easy wrong answer that models share (correlated errors) and a few rare ones."""
    rng = random.Random(seed)
    panels = panels or [
        ("single", ["m1"], 1),
        ("vote3", ["m1"], 3),
        ("trio", ["m1", "m2", "m3"], 1),
        ("mixed", ["m1", "m2"], 2),
    ]
    configs = [config(cid, models, samples=k) for cid, models, k in panels]
    skill = {
        m: min(0.95, max(0.05, accuracy + rng.uniform(-0.15, 0.15)))
        for _, ms, _ in panels
        for m in ms
    }
    records: list[SampleRecord] = []
    for i in range(items):
        target = f"City{i}"
        hard = rng.random() < 0.3  # a trap most models fall into
        for cid, models, k in panels:
            for r in range(1, repeats + 1):
                calls = []
                ids = [m if k == 1 else f"{m}#{s}" for m in models for s in range(1, k + 1)]
                order = list(range(len(ids)))
                rng.shuffle(order)
                for arrival, j in enumerate(order):
                    model = ids[j]
                    p = skill[base_model(model)] * (0.5 if hard else 1.0)
                    if rng.random() < fail_rate:
                        text = None
                    elif rng.random() < p:
                        text = rng.choice([target, f"The answer is {target}.", target.lower()])
                    else:
                        text = _WRONG[0] if rng.random() < 0.6 else rng.choice(_WRONG)
                    calls.append(
                        call(model, text, arrival, cost=0.001 * (1 + j), key=f"{cid}-{i}-{r}-{j}")
                    )
                status = "running" if rng.random() < unfinished_rate else "completed"
                if all(c.text is None for c in calls):
                    status = "failed"
                records.append(
                    sample(
                        cid,
                        f"item{i}",
                        [target],
                        calls,
                        repeat=r,
                        status=status,
                        wall_ms=rng.uniform(50, 500),
                    )
                )
    return experiment(configs, baseline=baseline, items=items), records
