"""Running an experiment into the store: every item x configuration x repeat a session.

This module owns what ``thinktank eval FILE`` does before the report: choose the items
(``limit``, ``sample`` with ``seed``), build one session per item x configuration x
repeat (:func:`session_for`), estimate what the run will call and cost
(:func:`plan_experiment`), and run the sessions through the engine's one execution path
(:func:`thinktank.run`, :func:`thinktank.replay.resume`), ``concurrency`` at a time,
under the experiment's budget (:func:`run_plan`).

Each sample's row in ``thinktank_experiment_samples`` is written before its session,
and the session is tagged with it before it makes any call: every model call is gated
until the tag is stored. A kill at any moment therefore leaves every paid call findable
from its sample, and a rerun continues: a finished session (completed, partial or
failed) is scored again from its stored answer and never called again, a session a kill
left running (or a Ctrl-C interrupted) is resumed (its finished calls served from the
store), and a sample without a session gets one. The experiment a rerun continues is the
newest with the same fingerprint (the dataset's bytes, the prompt or session file, the
name): adding a configuration or changing the scorer continues it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import anyio
from anyio.abc import TaskGroup

from thinktank.dryrun import dry_run
from thinktank.engine.restart import Restart
from thinktank.engine.result import SessionResult, step_outcome
from thinktank.engine.stream import run
from thinktank.errors import SpecError, UsageError
from thinktank.eval.dataset import Item, load_dataset
from thinktank.eval.experiment import (
    Configuration,
    ExperimentSpec,
    configurations,
    locate_errors,
    prompt_fields,
    session_template,
)
from thinktank.eval.records import base_model
from thinktank.eval.scoring import Scorer, make_scorer
from thinktank.eval.store_read import config_key
from thinktank.events import CallFinished, Event, SessionStarted
from thinktank.executor import SessionExecutor
from thinktank.providers.base import ModelClient, PooledModel
from thinktank.providers.config import load_config
from thinktank.providers.registry import ModelRegistry
from thinktank.replay import resume
from thinktank.session.loading import load_session
from thinktank.session.spec import AnswerFormatSpec, SessionSpec
from thinktank.store import Store
from thinktank.store._arg import DEFAULT_STORE, resolve_store

__all__ = [
    "DEFAULT_CONCURRENCY",
    "SCORED_STEP",
    "Estimate",
    "Job",
    "Plan",
    "Progress",
    "RunSummary",
    "config_key",
    "fingerprint",
    "plan_experiment",
    "run_experiment",
    "run_plan",
    "scored_step",
    "select_items",
    "session_for",
    "step_seed",
]

DEFAULT_CONCURRENCY = 8
"""Sessions in flight at once unless told otherwise."""

SCORED_STEP = "answer"
"""The id of the one step of a prompt experiment's sessions."""

_FINISHED = frozenset({"completed", "partial", "failed"})
"""Session statuses a rerun scores and never calls again."""

_SEED_RANGE = 2**31 - 1
"""Step seeds stay below this: every provider takes a signed 32-bit seed."""


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))  # framed: no two splits hash alike
        hasher.update(part)
    return hasher.hexdigest()


def fingerprint(spec: ExperimentSpec) -> str:
    """What makes two runs the same experiment: the dataset file's bytes, the prompt or
    the session file's content, and the name (not the grid, scorer or budget)."""
    session = spec.session_path()
    asked = (spec.prompt or "").encode() if session is None else b"session:" + session.read_bytes()
    return "sha256:" + _digest(spec.name.encode(), spec.dataset_path().read_bytes(), asked)


def step_seed(config: Configuration, key: str, item_id: str, repeat: int) -> int:
    """The scored step's seed: stable per (configuration seed, content, item, repeat), so
    every sample is independent of the others and the same on every rerun."""
    raw = json.dumps([config.seed or 0, key, item_id, repeat]).encode()
    return int(_digest(raw)[:15], 16) % _SEED_RANGE


def select_items(
    items: Sequence[Item], *, limit: int | None = None, sample: int | None = None, seed: int = 0
) -> list[Item]:
    """The first ``limit`` items, or ``sample`` items drawn with ``random.Random(seed)``
    (kept in dataset order), or all.

    Raises:
        UsageError: both given, a count below 1, or more items asked than there are.
    """
    if limit is not None and sample is not None:
        raise UsageError("give --limit or --sample, not both")
    for name, value in (("limit", limit), ("sample", sample)):
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be at least 1, not {value}")
    if limit is not None:
        return list(items[:limit])
    if sample is None:
        return list(items)
    if sample > len(items):
        raise UsageError(f"--sample {sample} is more than the dataset's {len(items)} items")
    chosen = sorted(random.Random(seed).sample(range(len(items)), sample))
    return [items[i] for i in chosen]


def _panel(config: Configuration) -> list[str]:
    """The model names asked: ``m#1 .. m#n`` for n samples of each model."""
    if config.samples == 1:
        return list(config.models)
    return [f"{m}#{k}" for m in config.models for k in range(1, config.samples + 1)]


_INPUT_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: a bool is an int
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "list"),
    (dict, "object"),
)


def _input_type(value: Any) -> str:
    return next((name for kind, name in _INPUT_TYPES if isinstance(value, kind)), "string")


def _step_settings(
    config: Configuration, seed: int, answer_format: AnswerFormatSpec | None
) -> dict[str, Any]:
    """What a configuration (and the experiment's ``answer_format``) sets on the scored
    step."""
    panel = _panel(config)
    settings: dict[str, Any] = (
        {"model": panel[0], "models": []}
        if len(panel) == 1
        else {"model": None, "models": panel, "mode": config.mode, "synthesis": config.synthesis}
    )
    if len(panel) > 1 and config.synthesis == "judge":
        settings["synthesizer"] = config.models[0]  # as `run --model a,b` picks the judge
    if len(panel) > 1 and config.abstain:
        settings["on_low_consensus"] = "abstain"
    if len(panel) > 1 and config.weights:
        # Each sample of a model (``m#k``) votes with the model's weight.
        weights = dict(config.weights)
        settings["weights"] = {
            name: weights[base_model(name)] for name in panel if base_model(name) in weights
        }
    if config.threshold is not None:
        settings["consensus_threshold"] = config.threshold
    if config.temperature is not None:
        settings["temperature"] = config.temperature
    settings["seed"] = seed  # each call's own seed derives from it and the model name
    if answer_format is not None:
        settings["answer_format"] = answer_format
    return settings


def session_for(
    spec: ExperimentSpec,
    config: Configuration,
    item: Item,
    repeat: int,
    *,
    base: SessionSpec | None = None,
) -> tuple[SessionSpec, dict[str, Any]]:
    """The session answering one item x configuration x repeat, and its inputs.

    The consensus cache is off: an experiment measures every sample (a cached merge
    would make a repeat a copy of the first).

    A prompt experiment: one step, ``answer``, whose prompt is the template with every
    ``{{ FIELD }}`` an input of the session (the item's target is never one). A session
    experiment (``base``, the loaded session file): its models replaced by the
    configuration's and the configuration set on its final step, the scored one. The
    experiment's ``answer_format``, when set, is the scored step's either way (with the
    item's own choices when it takes them per item).
    """
    key = config_key(config)
    seed = step_seed(config, key, item.id, repeat)
    answer_format = None if spec.answer_format is None else spec.answer_format.for_item(item)
    name = f"{spec.name} / {config.id} / {item.id} #{repeat}"
    if base is None:
        assert spec.prompt is not None
        used = dict.fromkeys(prompt_fields(spec.prompt)[0])
        inputs = {field: item.inputs[field] for field in used}
        prompt = session_template(spec.prompt)
        settings = _step_settings(config, seed, answer_format)
        step = {"id": SCORED_STEP, "prompt": prompt, **settings}
        session = SessionSpec.model_validate(
            {
                "name": name,
                "inputs": {f: {"type": _input_type(v)} for f, v in inputs.items()},
                "parallel_execution": {"cache": False},
                "steps": [step],
            }
        )
        return session, inputs
    panel = _panel(config)
    session = base.with_model(panel[0] if len(panel) == 1 else panel)
    final = session.steps[-1]
    settings = _step_settings(config, seed, answer_format)
    steps = [*session.steps[:-1], final.model_copy(update=settings)]
    inputs = {k: v for k, v in item.inputs.items() if k in base.inputs}
    uncached = session.parallel_execution.model_copy(update={"cache": False})
    update = {"name": name, "steps": steps, "parallel_execution": uncached}
    return session.model_copy(update=update), inputs


@dataclass(frozen=True, slots=True)
class Job:
    """One item x configuration x repeat to answer."""

    config: Configuration
    key: str
    """:func:`config_key` of ``config``."""
    item: Item
    repeat: int

    @property
    def sample(self) -> tuple[str, str, int]:
        """The sample's unique key within the experiment."""
        return self.key, self.item.id, self.repeat


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the samples not answered yet would call and cost (a dry run's upper bound).

    Attributes:
        samples: Item x configuration x repeat, in total.
        stored: Of them, already answered (nothing to call).
        calls: Model calls of the rest, at most (judge calls included).
        cost_usd: Their cost at most; None when a model's price is unknown.
    """

    samples: int
    stored: int
    calls: int
    cost_usd: float | None


@dataclass(frozen=True)
class Plan:
    """An experiment ready to run: its items, jobs, and the estimate of what is left."""

    spec: ExperimentSpec
    items: list[Item]
    """The items chosen (all, ``limit`` or ``sample``)."""
    dataset_items: int
    """Items in the dataset."""
    jobs: list[Job]
    experiment_id: str | None
    """The stored experiment this run continues; None for a new one."""
    estimate: Estimate
    job_calls: Mapping[str, tuple[int, float | None]]
    """Per configuration key: one sample's calls and cost at most."""
    fingerprint: str
    base: SessionSpec | None
    models: Mapping[str, ModelClient] | None
    source: str | None


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run is, after each sample.

    Attributes:
        experiment_id: The experiment being run.
        done: Samples answered (stored ones included).
        total: Samples of the run.
        correct: Sum of the scores so far.
        scored: Samples scored so far.
        cost_usd: What this run spent so far (None when a price is unknown).
        calls: Model calls this run made so far.
        elapsed_s: Seconds since this run started.
        new_done: Samples this run answered (for a rate: stored ones took no time).
    """

    experiment_id: str
    done: int
    total: int
    correct: float
    scored: int
    cost_usd: float | None
    calls: int
    elapsed_s: float
    new_done: int


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run of an experiment ended.

    Attributes:
        experiment_id: The stored experiment (``thinktank eval report ID``).
        new: Whether this run created it.
        total: Samples of this run.
        answered: Samples with a finished session now.
        reused: Of them, already finished before this run (no call made).
        resumed: Sessions a kill had left unfinished, resumed.
        correct: Sum of the scores.
        scored: Samples scored (an abstention is answered but not scored).
        abstained: Samples that answered nothing (``abstain: true``, no consensus).
        calls: Model calls this run made.
        cost_usd: What this run spent (None when a price is unknown).
        stopped: Why samples were left unanswered (the budget), or None.
        errors: One line per sample that could not run.
    """

    experiment_id: str
    new: bool
    total: int
    answered: int
    reused: int
    resumed: int
    correct: float
    scored: int
    calls: int
    cost_usd: float | None
    stopped: str | None
    errors: tuple[str, ...] = ()
    abstained: int = 0

    @property
    def accuracy(self) -> float | None:
        """Mean score of the scored samples (accuracy among the answered)."""
        return self.correct / self.scored if self.scored else None


def _check_models(
    spec: ExperimentSpec,
    configs: Sequence[Configuration],
    registry: ModelRegistry,
    source: str | None,
) -> None:
    """Every configuration's models exist and can be used, before anything runs."""
    problems: list[SpecError] = []
    for index, config in enumerate(configs):
        field = f"grid.{index}.models" if isinstance(spec.grid, list) else "grid.models"
        if config.ensemble is not None:
            field = f"ensembles.{config.ensemble}"
        for name in dict.fromkeys(base_model(m) for m in config.models):
            why = registry.check(name)
            if why is not None:
                problems.append(SpecError(f"configuration {config.id!r}: {why}", field=field))
    if problems:
        raise locate_errors(list(dict.fromkeys(problems)), source)


def _estimate_one(
    spec: ExperimentSpec,
    config: Configuration,
    items: Sequence[Item],
    base: SessionSpec | None,
    models: Mapping[str, ModelClient] | None,
) -> tuple[int, float | None]:
    """One sample's calls and cost at most, planned on the longest item."""
    longest = max(items, key=lambda item: len(json.dumps(item.inputs, default=str)))
    session, inputs = session_for(spec, config, longest, 1, base=base)
    plan = dry_run(session, inputs=inputs, models=models)
    return plan.calls_max, plan.cost_usd_max


async def plan_experiment(
    spec: ExperimentSpec,
    *,
    store: Store | str | None = DEFAULT_STORE,
    limit: int | None = None,
    sample: int | None = None,
    seed: int | None = None,
    new: bool = False,
    models: Mapping[str, ModelClient] | None = None,
    source: str | Path | None = None,
) -> Plan:
    """Choose the items, check the models and estimate what is left to run; nothing is
    called or written.

    Args:
        spec: A loaded experiment (:func:`~thinktank.eval.experiment.load_experiment`).
        store: Where the experiment is stored (the ``store=`` rule of ``thinktank.run``).
        limit: The first ``limit`` items only.
        sample: ``sample`` items drawn with ``random.Random(seed)`` (seed default 0).
        seed: The draw's seed.
        new: Plan a new experiment even if one with the same fingerprint is stored.
        models: Model clients by name (as for ``thinktank.run``).
        source: The experiment file, for errors naming its lines.

    Raises:
        SpecErrors: a configuration names a model that cannot be used, or the budget
            caps the cost and a model has no price.
        UsageError: bad ``limit``/``sample``, or ``store=None``.
    """
    if store is None:
        raise UsageError("store=None: an experiment is stored to be continued and reported")
    where = None if source is None else str(source)
    items = load_dataset(spec.dataset_path(), choices_field=spec.choices_field())
    chosen = select_items(items, limit=limit, sample=sample, seed=seed or 0)
    configs = configurations(spec)
    base_path = spec.session_path()
    base = None if base_path is None else load_session(base_path)
    registry = ModelRegistry(
        session_models=base.models if base else None, config=load_config, clients=models
    )
    _check_models(spec, configs, registry, where)
    # Two configurations with the same content are one set of samples (the loader
    # reports it under both ids).
    unique = {config_key(c): c for c in reversed(configs)}
    jobs = [
        Job(config=c, key=key, item=item, repeat=r)
        for key, c in reversed(unique.items())
        for item in chosen
        for r in range(1, spec.repeats + 1)
    ]
    per_key = {key: _estimate_one(spec, c, chosen, base, models) for key, c in unique.items()}
    unpriced = [unique[key].id for key, (_, cost) in per_key.items() if cost is None]
    if spec.budget.max_cost_usd is not None and unpriced:
        message = (
            "a cost budget needs a price for every model; configuration(s) "
            f"{', '.join(unpriced)} use a model without one (set input_cost_per_mtok and "
            "output_cost_per_mtok)"
        )
        raise locate_errors([SpecError(message, field="budget.max_cost_usd")], where)
    print_ = fingerprint(spec)
    experiment_id, done = None, set[tuple[str, str, int]]()
    opened, owned = await resolve_store(store)
    assert opened is not None
    try:
        if not new:
            experiment_id = await opened.find_experiment(print_)
        if experiment_id is not None:
            done = {
                (row.config_key, row.item_id, row.repeat)
                for row in await opened.experiment_samples(experiment_id)
                if row.status in _FINISHED
            }
    finally:
        if owned is not None:
            with anyio.CancelScope(shield=True):
                await owned.close()
    return Plan(
        spec=spec,
        items=chosen,
        dataset_items=len(items),
        jobs=jobs,
        experiment_id=experiment_id,
        estimate=_estimate(jobs, done, per_key),
        job_calls=per_key,
        fingerprint=print_,
        base=base,
        models=models,
        source=where,
    )


def _estimate(
    jobs: Sequence[Job],
    done: set[tuple[str, str, int]],
    per_key: Mapping[str, tuple[int, float | None]],
) -> Estimate:
    calls = 0
    cost: float | None = 0.0
    stored = 0
    for job in jobs:
        if job.sample in done:
            stored += 1
            continue
        n, usd = per_key[job.key]
        calls += n
        cost = None if cost is None or usd is None else cost + usd
    return Estimate(samples=len(jobs), stored=stored, calls=calls, cost_usd=cost)


class _Budget:
    """The experiment's budget over every session: a sample starts only if its planned
    calls and cost (a dry run's upper bound) fit beside what was spent and what the
    samples in flight hold; each sample's real spending replaces its reservation."""

    def __init__(self, max_calls: int | None, max_cost_usd: float | None) -> None:
        self.max_calls = max_calls
        self.max_cost_usd = max_cost_usd
        self.calls = 0
        self.cost_usd = 0.0
        self._held_calls = 0
        self._held_cost = 0.0
        self.stopped: str | None = None

    def reserve(self, calls: int, cost_usd: float | None) -> bool:
        over_calls = self.max_calls is not None and (
            self.calls + self._held_calls + calls > self.max_calls
        )
        over_cost = self.max_cost_usd is not None and (
            self.cost_usd + self._held_cost + (cost_usd or 0.0) > self.max_cost_usd
        )
        if self.stopped is not None or over_calls or over_cost:
            if self.stopped is None:
                self.stopped = self._describe()
            return False
        self._held_calls += calls
        self._held_cost += cost_usd or 0.0
        return True

    def release(self, calls: int, cost_usd: float | None) -> None:
        self._held_calls -= calls
        self._held_cost -= cost_usd or 0.0

    def spend(self, cost_usd: float | None) -> None:
        """One call finished (counted as it happens, so progress and the budget agree)."""
        self.calls += 1
        self.cost_usd += cost_usd or 0.0

    def _describe(self) -> str:
        parts = []
        if self.max_calls is not None:
            parts.append(f"{self.calls:,} of {self.max_calls:,} calls made")
        if self.max_cost_usd is not None:
            parts.append(f"${self.cost_usd:.6f} of ${self.max_cost_usd:g} spent")
        return "experiment budget reached: " + ", ".join(parts)


class _Gate:
    """Stands in a model's limiter slot: a call waits until its session is tagged in
    ``thinktank_experiment_samples`` (so a kill never leaves a paid call untagged)."""

    def __init__(self, tagged: anyio.Event, inner: anyio.CapacityLimiter | None) -> None:
        self._tagged = tagged
        self._inner = inner

    async def __aenter__(self) -> None:
        await self._tagged.wait()
        if self._inner is not None:
            await self._inner.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        if self._inner is not None:
            await self._inner.__aexit__(None, None, None)


def _gated(tagged: anyio.Event) -> Callable[[str, PooledModel], PooledModel]:
    def wrap(name: str, pooled: PooledModel) -> PooledModel:
        # The limiter slot takes any async context manager (as engine.stream's gate).
        gate = cast(anyio.CapacityLimiter, _Gate(tagged, pooled.limiter))
        return dataclasses.replace(pooled, limiter=gate)

    return wrap


class _Run:
    """One run of a plan: the jobs, the store, the scorer, the budget and the counts."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        experiment_id: str,
        rows: Mapping[tuple[str, str, int], Any],
        on_progress: Callable[[Progress], None] | None,
        executor: SessionExecutor | None = None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.executor = executor
        self.experiment_id = experiment_id
        self.rows = rows
        self.scorer: Scorer = make_scorer(plan.spec.scorer)
        self._item_scorers: dict[tuple[str, ...], Scorer] = {}
        limits = plan.spec.budget
        self.budget = _Budget(limits.max_calls, limits.max_cost_usd)
        self.on_progress = on_progress
        self.start = time.perf_counter()
        self.done = self.new_done = self.reused = self.resumed = self.scored = 0
        self.abstained = 0
        self.correct = 0.0
        self.cost_known = True
        self.errors: list[str] = []
        self.tasks: TaskGroup  # set by run_plan before any job starts

    def listen(self, event: Event) -> None:
        """Every event of every session: count the calls paid as they finish."""
        if isinstance(event, CallFinished) and event.reused_from is None:
            self.paid(event.cost_usd)

    def paid(self, cost_usd: float | None) -> None:
        """One call paid for: into the budget, and whether every cost is known."""
        self.budget.spend(cost_usd)
        self.cost_known = self.cost_known and cost_usd is not None

    def progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(
                Progress(
                    experiment_id=self.experiment_id,
                    done=self.done,
                    total=len(self.plan.jobs),
                    correct=self.correct,
                    scored=self.scored,
                    cost_usd=self.budget.cost_usd if self.cost_known else None,
                    calls=self.budget.calls,
                    elapsed_s=time.perf_counter() - self.start,
                    new_done=self.new_done,
                )
            )

    def scorer_for(self, item: Item) -> Scorer:
        """The scorer of ``item``: a ``choice`` scorer without choices of its own reads
        the item's, when the experiment takes choices per item (so a target or an answer
        may be an option's text)."""
        field = self.plan.spec.choices_field()
        spec = self.plan.spec.scorer
        if field is None or spec.kind != "choice" or spec.choices is not None:
            return self.scorer
        choices = tuple(item.inputs[field])
        scorer = self._item_scorers.get(choices)
        if scorer is None:
            scorer = make_scorer(spec.model_copy(update={"choices": choices}))
            self._item_scorers[choices] = scorer
        return scorer

    async def score(self, job: Job, row: Any, answer: str | None, abstained: bool) -> None:
        """Score an answer (a session with none is wrong) and store it if it changed.

        An abstention is stored with no score (``correct`` None): neither right nor
        wrong, so ``eval list``'s accuracy is among the answered.
        """
        correct: float | None = None
        if not abstained:
            score = self.scorer_for(job.item)
            correct = 0.0 if answer is None else score(answer, job.item.targets)
        if answer != row.answer or correct != row.correct:
            await self.store.score_sample(row.id, answer, correct)
        self.done += 1
        if correct is None:
            self.abstained += 1
            return
        self.scored += 1
        self.correct += correct

    async def stored_answer(self, job: Job, row: Any) -> None:
        """A finished session: its answer scored again, nothing called."""
        answer, abstained = row.answer, False
        if answer is None:
            # Killed between the session's end and the scoring, or no answer (failed,
            # abstained): read its final step.
            stored = await self.store.get_session(row.session_id)
            answer, abstained = _scored_output(stored.steps, self.plan.base)
        await self.score(job, row, answer, abstained)
        self.reused += 1

    async def answer(self, job: Job) -> None:
        """Run (or resume) one sample's session and score its answer."""
        row = self.rows[job.sample]
        if row.session_id is not None and row.status in _FINISHED:
            await self.stored_answer(job, row)
            return
        calls, cost = self.plan.job_calls[job.key]
        if not self.budget.reserve(calls, cost):
            return
        try:
            if row.session_id is not None and row.status is not None:
                result = await self._resume(row.session_id)
                self.resumed += 1
            else:
                result = await self._fresh(job, row.id)
        except UsageError as exc:
            self.errors.append(f"{job.config.id} / {job.item.id} #{job.repeat}: {exc}")
            return
        finally:
            self.budget.release(calls, cost)
        await self.score(job, row, *_result_output(result, self.plan.base))
        self.new_done += 1

    async def _fresh(self, job: Job, sample_id: int) -> SessionResult:
        spec = self.plan.spec
        session, inputs = session_for(spec, job.config, job.item, job.repeat, base=self.plan.base)
        if self.executor is not None:
            return await self._submitted(session, inputs, sample_id)
        tagged = anyio.Event()

        async def tag(session_id: str) -> None:
            # A failure propagates to the run's task group, which cancels every session
            # (an untagged session must not call).
            await self.store.link_sample(sample_id, session_id)
            tagged.set()

        def listen(event: Event) -> None:
            if isinstance(event, SessionStarted):
                self.tasks.start_soon(tag, event.session_id)
            self.listen(event)

        return await run(
            session,
            inputs=inputs,
            store=self.store,
            models=self.plan.models,
            on_event=listen,
            source=self.plan.source,
            restart=Restart(wrap=_gated(tagged)),
        )

    async def _submitted(
        self, session: SessionSpec, inputs: Mapping[str, Any], sample_id: int
    ) -> SessionResult:
        """Run a sample's session on the executor (a pool of workers, whose events this
        process does not see): tagged as soon as it is queued, its calls counted into
        the budget from its result."""
        assert self.executor is not None
        # A kill between these two awaits leaves the session untagged (it runs, and a
        # rerun asks again): the gate of a local run cannot reach another process.
        session_id = await self.executor.submit(session, inputs=inputs, source=self.plan.source)
        await self.store.link_sample(sample_id, session_id)
        return self._counted(await self.executor.wait(session_id))

    def _counted(self, result: SessionResult) -> SessionResult:
        """Count a session's calls into the budget once it ended elsewhere."""
        for step in result.steps.values():
            for call in step.calls:
                self.paid(call.cost_usd)
        return result

    async def _resume(self, session_id: str) -> SessionResult:
        """Resume a session a kill left running, once the dead run's lease expires (a
        session queued on the executor is the executor's: waited for)."""
        if self.executor is not None and (await self.store.get_session(session_id)).queue:
            return self._counted(await self.executor.wait(session_id))
        for _ in range(3):
            lease = await self.store.lease_of(session_id)
            if lease is not None:
                await anyio.sleep(max(0.0, (lease[1] - datetime.now(UTC)).total_seconds()) + 0.05)
                continue
            try:
                return await resume(
                    session_id, store=self.store, models=self.plan.models, on_event=self.listen
                )
            except UsageError:
                if await self.store.lease_of(session_id) is None:
                    raise
        raise UsageError(f"session {session_id} is leased by another live run; not resuming")


def scored_step(base: SessionSpec | None) -> str:
    """The id of the step whose output is scored: a session file's final step."""
    return SCORED_STEP if base is None else base.steps[-1].id


def _result_output(result: SessionResult, base: SessionSpec | None) -> tuple[str | None, bool]:
    """The scored step's output, and whether it abstained."""
    step = result.steps.get(scored_step(base))
    if step is None:
        return None, False
    return step.output, step.outcome == "no_consensus"


def _scored_output(steps: Sequence[Any], base: SessionSpec | None) -> tuple[str | None, bool]:
    """The stored scored step's output, and whether it abstained."""
    key = scored_step(base)
    step = next((step for step in steps if step.step_key == key), None)
    if step is None:
        return None, False
    outcome = None if step.consensus is None else step.consensus.outcome
    return step.output, step_outcome(step.status, outcome) == "no_consensus"


async def run_plan(
    plan: Plan,
    *,
    store: Store | str | None = DEFAULT_STORE,
    concurrency: int = DEFAULT_CONCURRENCY,
    new: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    executor: SessionExecutor | None = None,
) -> RunSummary:
    """Run a plan's samples not answered yet, ``concurrency`` sessions at a time.

    The experiment row (the plan's, or a new one with ``new``) and every sample row are
    written first; then each sample is scored from its stored answer, resumed, or run.
    No sample starts once the experiment's budget could not cover it.

    ``executor`` runs the sessions elsewhere (``DistributedExecutor``: the workers of
    the store's database; ``concurrency`` then bounds the samples submitted and not yet
    ended, and the workers' own limits how many run). None runs them in this process.
    Either way each sample is tagged with its session and scored from its result::

        async with DistributedExecutor(db=url) as pool:
            plan = await plan_experiment(spec, store=pool.store)
            summary = await run_plan(plan, store=pool.store, executor=pool)

    Raises:
        UsageError: ``concurrency`` below 1, ``store=None``, or an ``executor`` with
            model clients given as objects (its workers build their own).
        StoreError: the database could not be read or written.
    """
    if executor is not None and plan.models:
        raise UsageError("an executor's workers build their own models: give no models=")
    if concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, not {concurrency}")
    if store is None:
        raise UsageError("store=None: an experiment is stored to be continued and reported")
    opened, owned = await resolve_store(store)
    assert opened is not None
    try:
        return await _run_opened(plan, opened, concurrency, new, on_progress, executor)
    finally:
        if owned is not None:
            with anyio.CancelScope(shield=True):
                await owned.close()


async def _run_opened(
    plan: Plan,
    store: Store,
    concurrency: int,
    new: bool,
    on_progress: Callable[[Progress], None] | None,
    executor: SessionExecutor | None,
) -> RunSummary:
    spec = plan.spec
    experiment_id, created = await store.save_experiment(
        fingerprint=plan.fingerprint,
        name=spec.name,
        spec=spec.model_dump(mode="json", exclude_defaults=True),
        dataset=spec.dataset,
        items=plan.dataset_items,
        new=new or plan.experiment_id is None,
    )
    await store.add_samples(
        [
            {
                "experiment_id": experiment_id,
                "config_id": job.config.id,
                "config_key": job.key,
                "item_id": job.item.id,
                "repeat": job.repeat,
                "targets": list(job.item.targets),
            }
            for job in plan.jobs
        ]
    )
    rows = {
        (row.config_key, row.item_id, row.repeat): row
        for row in await store.experiment_samples(experiment_id)
    }
    state = _Run(plan, store, experiment_id, rows, on_progress, executor)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(job: Job, token: object) -> None:
        try:
            await state.answer(job)
        finally:
            limiter.release_on_behalf_of(token)
        state.progress()

    state.progress()
    async with anyio.create_task_group() as tg:
        state.tasks = tg
        for job in plan.jobs:
            token = object()  # a job (its item's inputs) is not hashable
            await limiter.acquire_on_behalf_of(token)
            if state.budget.stopped is not None:
                limiter.release_on_behalf_of(token)
                break
            tg.start_soon(one, job, token)
    return RunSummary(
        experiment_id=experiment_id,
        new=created,
        total=len(plan.jobs),
        answered=state.done,
        reused=state.reused,
        resumed=state.resumed,
        correct=state.correct,
        scored=state.scored,
        abstained=state.abstained,
        calls=state.budget.calls,
        cost_usd=state.budget.cost_usd if state.cost_known else None,
        stopped=state.budget.stopped,
        errors=tuple(state.errors),
    )


async def run_experiment(
    spec: ExperimentSpec,
    *,
    store: Store | str | None = DEFAULT_STORE,
    limit: int | None = None,
    sample: int | None = None,
    seed: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    new: bool = False,
    models: Mapping[str, ModelClient] | None = None,
    source: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    executor: SessionExecutor | None = None,
) -> RunSummary:
    """Run an experiment into the store: :func:`plan_experiment`, then :func:`run_plan`.

    A rerun continues the stored experiment with the same fingerprint (``new`` starts
    another): answered samples are scored again without a call, sessions a kill left
    unfinished are resumed, the rest run. Arguments as on those two functions.
    """
    if store is None:
        raise UsageError("store=None: an experiment is stored to be continued and reported")
    opened, owned = await resolve_store(store)
    assert opened is not None
    try:
        plan = await plan_experiment(
            spec,
            store=opened,
            limit=limit,
            sample=sample,
            seed=seed,
            new=new,
            models=models,
            source=source,
        )
        return await run_plan(
            plan,
            store=opened,
            concurrency=concurrency,
            new=new,
            on_progress=on_progress,
            executor=executor,
        )
    finally:
        if owned is not None:
            with anyio.CancelScope(shield=True):
                await owned.close()
