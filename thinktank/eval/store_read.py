"""Reading a stored experiment back as :mod:`thinktank.eval.records` values.

This module owns the way from the store's experiment rows to an
:class:`~thinktank.eval.records.ExperimentRecord` and its
:class:`~thinktank.eval.records.SampleRecord` values, which every analysis and report
takes. It reads a whole experiment in a few bulk queries (samples with their sessions'
totals, the scored step of every session, their calls, the calls each session paid
for), never one query per session: a report over 4,000 sessions reads in seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from thinktank.eval.experiment import Configuration, ExperimentSpec, configurations
from thinktank.eval.records import CALL_OK, ExperimentRecord, SampleRecord, StoredCall, base_model
from thinktank.store import Store

__all__ = ["config_key", "list_experiments", "read_experiment"]


def config_key(config: Configuration) -> str:
    """Hash of a configuration's content (not its id), the key its samples are stored
    under: a renamed configuration with the same content reuses its stored answers, and
    two configurations of one grid with the same content share them."""
    content: dict[str, Any] = {
        "models": list(config.models),
        "mode": config.mode,
        "synthesis": config.synthesis,
        "threshold": config.threshold,
        "samples": config.samples,
        "temperature": config.temperature,
        "seed": config.seed,
    }
    # Added only when set, so the samples stored before these knobs existed still match.
    if config.abstain:
        content["abstain"] = True
    if config.weights:
        content["weights"] = dict(config.weights)
    return "sha256:" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record(row: Mapping[str, Any]) -> ExperimentRecord:
    spec = ExperimentSpec.model_validate(row["spec"])
    return ExperimentRecord(
        id=row["id"],
        name=row["name"],
        spec=dict(row["spec"]),
        configurations=tuple(configurations(spec)),
        baseline=spec.baseline,
        dataset=row["dataset"],
        items=row["items"],
        created_at=_utc(row["created_at"]),
    )


def _calls(rows: Sequence[Mapping[str, Any]], attempt: int) -> tuple[StoredCall, ...]:
    """The calls of the step's last attempt, numbered in arrival order."""
    chosen = [row for row in rows if row["attempt"] == attempt]
    return tuple(
        StoredCall(
            key=row["id"],
            model=row["model_id"],
            base_model=base_model(row["model_id"]),
            text=row["response"] if row["status"] == CALL_OK else None,
            status=row["status"],
            error=row["error"],
            arrival=index,
            latency_ms=None if row["latency_ms"] is None else float(row["latency_ms"]),
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost_usd=row["cost_usd"],
            included=bool(row["included_in_consensus"]),
        )
        for index, row in enumerate(chosen)
    )


def _sample(
    config: Configuration,
    row: Mapping[str, Any],
    steps: Mapping[str, Mapping[str, Any]],
    calls: Mapping[str, list[Mapping[str, Any]]],
    paid: Mapping[str, int],
) -> SampleRecord:
    sid = row["session_id"]
    step = steps.get(sid) if sid is not None else None
    # A step that abstains completes with no output (``on_low_consensus: abstain``).
    abstained = config.abstain and step is not None and step["status"] == "completed"
    return SampleRecord(
        config_id=config.id,
        item_id=row["item_id"],
        repeat=row["repeat"],
        session_id=sid or "",
        targets=tuple(row["targets"]),
        status=row["status"] or "planned",
        answer=row["answer"] if row["answer"] is not None else (step or {}).get("output"),
        consensus_score=(step or {}).get("consensus_score"),
        calls=_calls(calls.get(sid, []), step["attempts"]) if step and sid else (),
        calls_made=paid.get(sid, 0) if sid else 0,
        cost_usd=row["cost_usd"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        wall_ms=row["wall_ms"],
        abstained=abstained and step is not None and step["output"] is None,
        prompt=(step or {}).get("prompt") or "",
    )


async def read_experiment(
    store: Store, experiment_id: str
) -> tuple[ExperimentRecord, list[SampleRecord]]:
    """An experiment and its samples (in the order they were planned), from the store.

    Args:
        store: An open store.
        experiment_id: The id, or a unique prefix of at least 4 characters.

    Raises:
        UnknownExperimentError: no experiment matches, or the prefix matches several.
        StoreError: the database could not be read.
    """
    record = _record(await store.get_experiment(experiment_id))
    step_key = "answer" if record.spec.get("session") is None else None
    samples, steps, calls, paid, _spec = await store.experiment_rows(record.id, step_key)
    by_session: dict[str, list[Mapping[str, Any]]] = {}
    for call in calls:
        by_session.setdefault(call["session_id"], []).append(call)
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for sample in samples:
        by_key.setdefault(sample["config_key"], []).append(sample)
    result: list[SampleRecord] = []
    # One record per configuration of the grid as last run: samples of configurations
    # since removed are left out, and a configuration listed twice is reported twice.
    for config in record.configurations:
        for row in by_key.get(config_key(config), []):
            result.append(_sample(config, row, steps, by_session, paid))
    return record, result


async def list_experiments(store: Store) -> list[dict[str, Any]]:
    """Every stored experiment, newest first: ``id``, ``name``, ``dataset``, ``items``,
    ``created_at``, ``updated_at``, and its samples counted (``samples``, ``answered``,
    ``scored``, ``correct`` the sum of scores, ``accuracy`` their mean or None)."""
    rows = await store.list_experiments()
    for row in rows:
        row["created_at"] = _utc(row["created_at"])
        row["updated_at"] = _utc(row["updated_at"])
        row["correct"] = float(row["correct"] or 0.0)
        row["accuracy"] = row["correct"] / row["scored"] if row["scored"] else None
    return rows
