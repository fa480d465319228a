"""What an experiment stored, as plain values: the input of every analysis and report.

This module owns the read model of an experiment: :class:`ExperimentRecord` (the
experiment file as it was run, its configurations and dataset) and one
:class:`SampleRecord` per item x configuration x repeat, with the calls of the scored
step as :class:`StoredCall` values. The runner writes the rows these are read from; the
analyses (:mod:`thinktank.eval.analysis`) and the report (:mod:`thinktank.eval.report`)
take these values and never touch the store, so they can be tested on values built in
memory and run on 4,000 sessions without a query each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from thinktank.eval.experiment import Configuration

# Sample names belong to the providers layer (the registry resolves them); re-exported here
# because every analysis of stored calls groups them by base model.
from thinktank.providers.base import SAMPLE_MARK, base_model

__all__ = ["CALL_OK", "SAMPLE_MARK", "ExperimentRecord", "SampleRecord", "StoredCall", "base_model"]

CALL_OK = "ok"
"""The stored status of a call that answered (:data:`thinktank.events.CallStatus`)."""


@dataclass(frozen=True, slots=True)
class StoredCall:
    """One model call of a sample's scored step, as stored.

    Attributes:
        key: The call id.
        model: The model id as stored (``NAME#K`` for the K-th sample of NAME).
        base_model: :func:`base_model` of ``model``: the panel member it belongs to.
        text: The answer, or None when the call did not complete.
        status: The call's stored status: :data:`CALL_OK` (answered), ``failed``,
            ``timeout``, ``cancelled`` (or ``running`` for a call a kill left open).
        error: Why it failed, when it did.
        arrival: Completion order among the step's calls, 0 first.
        latency_ms: Wall time of the call.
        input_tokens: Prompt tokens (None when unknown).
        output_tokens: Completion tokens (None when unknown).
        cost_usd: What the call cost (None when the price is unknown).
        included: Whether the stored consensus counted it.
    """

    key: str
    model: str
    base_model: str
    text: str | None
    status: str
    error: str | None
    arrival: int
    latency_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    included: bool


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One item x configuration x repeat: its stored session, answer and calls.

    Attributes:
        config_id: The configuration's id.
        item_id: The dataset item's id.
        repeat: 1 for the first repeat, 2 for the second, ...
        session_id: The stored session that answered it.
        targets: The item's accepted answers (never sent to a model).
        status: The session's status (``completed``, ``failed``, ``running``, ...).
        answer: The scored (final) step's output, None when it has none.
        consensus_score: The scored step's consensus score (None for one model).
        calls: The scored step's calls, in completion order.
        calls_made: Every model call of the session (all steps), paid ones only.
        cost_usd: The session's cost (None when unknown).
        input_tokens: The session's prompt tokens.
        output_tokens: The session's completion tokens.
        wall_ms: The session's wall time.
        abstained: The scored step answered nothing: its configuration abstains below
            the threshold (``abstain: true``) and found no consensus. Neither right nor
            wrong: the item is not covered.
        prompt: The scored step's rendered prompt ("" when it has none): the question
            a derived re-merge gives answer equivalence, as the engine did.
    """

    config_id: str
    item_id: str
    repeat: int
    session_id: str
    targets: tuple[str, ...]
    status: str
    answer: str | None
    consensus_score: float | None
    calls: tuple[StoredCall, ...]
    calls_made: int
    cost_usd: float | None
    input_tokens: int | None
    output_tokens: int | None
    wall_ms: float | None
    abstained: bool = False
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    """An experiment as stored: enough to rebuild every figure from the database alone.

    Attributes:
        id: The experiment id (``thinktank eval report ID``).
        name: The experiment file's ``name``.
        spec: The experiment file's content as data (snake_case keys), as last run.
        configurations: The grid expanded, in report order.
        baseline: The baseline configuration's id, if the file names one.
        dataset: Where the items came from (``shipped:NAME`` or a path).
        items: How many items the dataset held when last run.
        created_at: When the experiment was first run.
    """

    id: str
    name: str
    spec: dict[str, Any]
    configurations: tuple[Configuration, ...]
    baseline: str | None
    dataset: str
    items: int
    created_at: datetime
