"""Zero-cost analyses: what other merges, thresholds, panel sizes, panels and cascades
would have given, computed from an experiment's stored answers without a model call.

This module owns the counterfactuals of issue #14 ("Zero-cost analyses"): re-merging
every stored pool of answers with each synthesis method that needs no model, sweeping
the consensus threshold, accuracy against the number of calls (k of the n stored calls,
many subsets per item), dropping one model from a panel, and cascade orderings
simulated with the engine's own stopping rule. Every figure here is *derived* from
stored answers (:data:`DERIVED`); the report (:mod:`thinktank.eval.report`) sets them
beside what the run itself *measured* (:data:`MEASURED`).

Inputs are the values of :mod:`thinktank.eval.records`; nothing here touches the store.
Every answer is re-scored with the experiment's scorer, so a changed scorer re-scores
everything for free. An answer is correct when its score is at least 0.5 (the
built-in scorers give 1.0 or 0.0; a partial-credit callable is counted at 0.5).

Re-merges use the default merge options (``auto`` agreement, equal weights, the
default tie-break), as an experiment's configurations do. When every answer of a pool
is short (``auto`` resolves to answer equivalence) the pool is clustered once, by the
engine's own agreement (:func:`thinktank.consensus.agreement.analyse`), and every vote
over it is computed here directly from those clusters, with the same rule as
:func:`thinktank.consensus.synthesis.majority` (heaviest cluster; ties to the earliest
arrival; the representative is the shortest answer); the tests check it against
``synthesize`` on random pools. A vote over part of a pool (k of n calls, a panel
without a model, a cascade) uses the clusters of the whole pool, which may join two
answers that only a left-out answer linked. Long answers go through ``synthesize``
itself. That fast path is what lets a full analysis of 4,000 samples run in seconds
(``bench/eval_analysis.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from thinktank.consensus.agreement import Answer, quorum_reached
from thinktank.consensus.agreement import analyse as cluster_answers_of
from thinktank.consensus.items import extract_items
from thinktank.consensus.normalize import normalize_answer
from thinktank.consensus.options import SHORT_ANSWER_WORDS, MergeOptions
from thinktank.consensus.synthesis import SYNTHESIS_METHODS, synthesize
from thinktank.eval.records import CALL_OK, ExperimentRecord, SampleRecord, StoredCall
from thinktank.eval.scoring import ScorerSpec, make_scorer, parse_scorer_spec
from thinktank.eval.stats import Interval, McNemar, mcnemar, wilson

if TYPE_CHECKING:
    import numpy as np

    from thinktank.eval.experiment import Configuration

__all__ = [
    "DEFAULT_THRESHOLD",
    "DERIVED",
    "FINISHED",
    "MEASURED",
    "Analyses",
    "CallsCurve",
    "CallsPoint",
    "CascadeOrder",
    "DroppedModel",
    "Grader",
    "Kind",
    "MethodAccuracy",
    "Skipped",
    "StoredAnswers",
    "SweepPoint",
    "ThresholdSweep",
    "accuracy_vs_calls",
    "analyse",
    "cascade_orderings",
    "drop_model",
    "drop_models",
    "remerge",
    "threshold_sweep",
    "weighted_remerge",
]

Kind = Literal["measured", "derived"]
MEASURED: Kind = "measured"
"""A figure of what the run itself did."""
DERIVED: Kind = "derived"
"""A figure computed from stored answers, with no model call."""

FINISHED = frozenset({"completed", "partial", "failed"})
"""Session statuses of a finished sample; any other (running, interrupted, ...) counts
as not answered."""
DEFAULT_THRESHOLD = 0.7
"""The session default of ``consensus_threshold``, for configurations that set none."""
_EXACT_METHODS = frozenset({"majority", "medoid", "weighted_merge"})
"""Methods that, under exact agreement with equal weights, all pick the heaviest
cluster's shortest answer (see their docstrings in ``consensus.synthesis``)."""


class Grader:
    """The experiment's scorer, with each (answer, targets) scored once."""

    def __init__(self, spec: ScorerSpec) -> None:
        self.spec = spec
        self._score = make_scorer(spec)
        self._seen: dict[tuple[str, tuple[str, ...]], bool] = {}

    @classmethod
    def of(cls, experiment: ExperimentRecord) -> Grader:
        """The grader of the scorer the experiment's file names.

        The stored spec may be the file as written or a full dump of the model; options
        left at their defaults are dropped first, since a scorer refuses an option that
        does not apply to its kind even when it holds the default.
        """
        raw = experiment.spec["scorer"]
        if isinstance(raw, Mapping):
            fields = ScorerSpec.model_fields
            raw = {
                k: v
                for k, v in raw.items()
                if k == "kind" or k not in fields or v != fields[k].default
            }
        return cls(parse_scorer_spec(raw))

    def __call__(self, answer: str | None, targets: tuple[str, ...]) -> bool:
        """Whether ``answer`` is correct (no answer never is)."""
        if answer is None:
            return False
        key = (answer, targets)
        found = self._seen.get(key)
        if found is None:
            found = self._seen[key] = self._score(answer, targets) >= 0.5
        return found


@dataclass(frozen=True, slots=True)
class _Call:
    """One stored call, prepared once: its cluster form, correctness and cost."""

    key: str
    model: str
    base: str
    text: str
    arrival: int
    answered: bool
    form: str
    short: bool
    length: int
    correct: bool
    cost: float


@dataclass(frozen=True, slots=True)
class _Merged:
    correct: bool
    score: float


@dataclass(slots=True)
class _Pool:
    """One sample's calls: ``answered`` indexes into ``calls``."""

    sample: SampleRecord
    finished: bool
    calls: tuple[_Call, ...]
    answered: tuple[int, ...]
    exact: bool
    grader: Grader
    options: MergeOptions
    cache: dict[tuple[str, tuple[int, ...], bool], _Merged] = field(default_factory=dict)

    def merge(
        self, members: Sequence[int], method: str = "majority", *, in_order: bool = False
    ) -> _Merged:
        """The re-merge of the calls at ``members`` (answered ones), cached.

        ``in_order``: the calls arrived in the order of ``members`` (a simulated
        cascade), not in their stored order; ties go to the earlier one.
        """
        key = (method, tuple(members), in_order)
        found = self.cache.get(key)
        if found is None:
            arrival = (
                {i: n for n, i in enumerate(members)}
                if in_order
                else {i: self.calls[i].arrival for i in members}
            )
            found = self.cache[key] = self._merge(members, method, arrival)
        return found

    def _merge(self, members: Sequence[int], method: str, arrival: dict[int, int]) -> _Merged:
        if not members:
            return _Merged(False, 0.0)
        if self.exact and method in _EXACT_METHODS:
            return self._vote(members, arrival)
        answers = [
            Answer(key=c.key, model=c.model, text=c.text, arrival=arrival[i])
            for i, c in ((i, self.calls[i]) for i in members)
        ]
        merged = synthesize(method, answers, DEFAULT_THRESHOLD, self.options)
        return _Merged(self.grader(merged.content, self.sample.targets), merged.score)

    def _vote(self, members: Sequence[int], arrival: dict[int, int]) -> _Merged:
        """``majority`` under exact agreement and equal weights, without building clusters:
        the most frequent non-blank form wins, ties to the earliest (arrival, key); its
        representative is the shortest stripped answer, then the earliest."""
        counts: dict[str, int] = defaultdict(int)
        first: dict[str, tuple[int, str]] = {}
        rep: dict[str, tuple[int, int, str, int]] = {}
        for i in members:
            c = self.calls[i]
            counts[c.form] += 1
            rank = (arrival[i], c.key)
            if c.form not in first or rank < first[c.form]:
                first[c.form] = rank
            shortest = (c.length, *rank, i)
            if c.form not in rep or shortest < rep[c.form]:
                rep[c.form] = shortest
        forms = [f for f in counts if f]
        if not forms:
            return _Merged(self.grader("", self.sample.targets), 0.0)
        winner = min(forms, key=lambda f: (-counts[f], first[f]))
        chosen = self.calls[rep[winner][3]]
        return _Merged(chosen.correct, counts[winner] / len(members))

    def quorum(self, members: Sequence[int], threshold: float) -> bool:
        """The cascade's stopping rule (``engine.parallel._agrees`` with min_models 2)."""
        if len(members) < 2:
            return False
        if not self.exact:
            answers = [
                Answer(key=c.key, model=c.model, text=c.text, arrival=c.arrival)
                for c in (self.calls[i] for i in members)
            ]
            return quorum_reached(answers, min_models=2, threshold=threshold, options=self.options)
        counts: dict[str, int] = defaultdict(int)
        for i in members:
            counts[self.calls[i].form] += 1
        best = max((n for f, n in counts.items() if f), default=0)
        return best >= 2 and best / len(members) >= threshold

    def full(self, method: str = "majority") -> _Merged:
        return self.merge(self.answered if self.finished else (), method)


def _prepare_call(call: StoredCall, targets: tuple[str, ...], grader: Grader) -> _Call:
    answered = call.status == CALL_OK and call.text is not None
    text = call.text or ""
    form = normalize_answer(text) if answered else ""
    return _Call(
        key=call.key,
        model=call.model,
        base=call.base_model,
        text=text,
        arrival=call.arrival,
        answered=answered,
        form=form,
        short=len(form.split()) <= SHORT_ANSWER_WORDS,
        length=len(text.strip()),
        correct=answered and grader(text, targets),
        cost=call.cost_usd or 0.0,
    )


def merge_options(experiment: ExperimentRecord) -> MergeOptions:
    """The merge options a derived merge of this experiment uses: the defaults, with the
    experiment's ``answer_format`` when it declares one (as its scored steps had)."""
    declared = experiment.spec.get("answer_format")
    if declared is None:
        return MergeOptions()
    from thinktank.eval.experiment import ExperimentAnswerFormat
    from thinktank.session.spec import AnswerFormatSpec

    spec = declared if isinstance(declared, AnswerFormatSpec) else None
    if spec is None:
        raw = {"kind": declared} if isinstance(declared, str) else declared
        spec = ExperimentAnswerFormat.model_validate(raw)
    if isinstance(spec, ExperimentAnswerFormat) and spec.per_item_field() is not None:
        # Each item's choices are in the dataset, not in the stored samples: the
        # derived merges compare answers without a declared format.
        return MergeOptions()
    return MergeOptions(answer_format=spec.to_format())


def _clustered(
    calls: tuple[_Call, ...], answered: Sequence[int], options: MergeOptions
) -> tuple[_Call, ...]:
    """The calls with their forms replaced by the cluster the engine's agreement puts
    them in over the whole stored pool (``auto``: answer equivalence for short answers,
    so "Paris" and "The capital of France is Paris." share a form). A vote over a subset
    of the pool counts these forms: the clusters of the whole pool, which can join two
    answers only a left-out answer linked (documented with the analyses)."""
    if len(answered) < 2:
        return calls
    answers = [Answer(key=calls[i].key, model=calls[i].model, text=calls[i].text) for i in answered]
    analysis = cluster_answers_of(answers, options)
    cluster_of = {
        a.key: analysis.clusters[c].answer
        for a, c in zip(analysis.answers, analysis.cluster_index, strict=True)
    }
    return tuple(
        dataclasses.replace(c, form=cluster_of[c.key]) if c.key in cluster_of else c for c in calls
    )


class StoredAnswers:
    """An experiment's samples prepared once for every analysis: grouped by
    configuration, each call normalised and scored.

    Raises:
        ValueError: a sample names a configuration the experiment does not have.
    """

    def __init__(
        self,
        experiment: ExperimentRecord,
        samples: Sequence[SampleRecord],
        grader: Grader | None = None,
    ) -> None:
        self.experiment = experiment
        self.grader = grader or Grader.of(experiment)
        self.configurations = {c.id: c for c in experiment.configurations}
        self.options = merge_options(experiment)
        self.pools: dict[str, list[_Pool]] = {c: [] for c in self.configurations}
        for sample in samples:
            if sample.config_id not in self.pools:
                known = ", ".join(self.pools)
                raise ValueError(
                    f"sample of item {sample.item_id!r} names configuration"
                    f" {sample.config_id!r}, which the experiment does not have ({known})"
                )
            calls = tuple(_prepare_call(c, sample.targets, self.grader) for c in sample.calls)
            # The question the engine's merge read (its step's rendered prompt).
            options = dataclasses.replace(self.options, question=sample.prompt)
            answered = tuple(i for i, c in enumerate(calls) if c.answered)
            # The engine's agreement: equivalence for short answers, and for every
            # answer when the step declared a format (other than free text).
            fmt = self.options.answer_format
            short = (fmt is not None and fmt.kind != "free") or all(
                calls[i].short for i in answered
            )
            if short:
                calls = _clustered(calls, answered, options)
            self.pools[sample.config_id].append(
                _Pool(
                    sample=sample,
                    finished=sample.status in FINISHED,
                    calls=calls,
                    answered=answered,
                    exact=short,
                    grader=self.grader,
                    options=options,
                )
            )

    def panel(self, config_id: str) -> tuple[str, ...]:
        """The configuration's base models, in panel order."""
        return tuple(dict.fromkeys(self.configurations[config_id].models))

    def most_answered(self, config_id: str) -> int:
        """The largest number of answered calls any finished sample of it has."""
        return max((len(p.answered) for p in self.pools[config_id] if p.finished), default=0)


@dataclass(frozen=True)
class Skipped:
    """An analysis that could not be derived for a configuration, and why."""

    config_id: str
    analysis: str
    reason: str


@dataclass(frozen=True)
class MethodAccuracy:
    """Accuracy of one configuration's stored answers re-merged with one method."""

    config_id: str
    method: str
    n: int
    correct: int
    accuracy: Interval
    mean_score: float
    kind: Kind = DERIVED


@dataclass(frozen=True)
class SweepPoint:
    """Selective answering at one threshold: answer only where agreement >= it."""

    threshold: float
    answered: int
    coverage: float
    accuracy: float | None
    """Accuracy among the answered; None when nothing is answered."""


@dataclass(frozen=True)
class ThresholdSweep:
    config_id: str
    points: tuple[SweepPoint, ...]
    kind: Kind = DERIVED


@dataclass(frozen=True)
class CallsPoint:
    """Accuracy when only k of the stored calls had been made.

    Attributes:
        k: Calls per item.
        accuracy: Mean over items of the share of k-subsets whose majority is correct.
        low, high: Percentile bootstrap interval over items (95%).
        cost_per_item: Mean over items and subsets of the chosen calls' cost.
        subsets: k-subsets merged, over all items.
        short_items: Samples with fewer than k answered calls (they merge all theirs).
    """

    k: int
    accuracy: float
    low: float
    high: float
    cost_per_item: float
    subsets: int
    short_items: int


@dataclass(frozen=True)
class CallsCurve:
    config_id: str
    points: tuple[CallsPoint, ...]
    kind: Kind = DERIVED


@dataclass(frozen=True)
class DroppedModel:
    """The panel without one base model (all its samples), against the full panel.

    ``mcnemar.b``: samples the full panel got right and the smaller one wrong;
    ``mcnemar.c``: the other way round.
    """

    config_id: str
    dropped: str
    accuracy: Interval
    full: Interval
    delta: float
    mcnemar: McNemar
    kind: Kind = DERIVED


@dataclass(frozen=True)
class CascadeOrder:
    """A cascade over the panel's base models in one order, simulated on stored answers."""

    config_id: str
    order: tuple[str, ...]
    accuracy: Interval
    mean_calls: float
    mean_cost: float
    kind: Kind = DERIVED


@dataclass(frozen=True)
class Analyses:
    """Every zero-cost analysis of an experiment, and what could not be derived."""

    remerge: tuple[MethodAccuracy, ...]
    sweeps: tuple[ThresholdSweep, ...]
    calls: tuple[CallsCurve, ...]
    dropped: tuple[DroppedModel, ...]
    cascades: tuple[CascadeOrder, ...]
    skipped: tuple[Skipped, ...]


def _method(config: Configuration) -> str:
    """The method a derived merge of this configuration uses: its own, when that needs
    no model (judge and union do not pick one answer: majority stands in)."""
    return config.synthesis if config.synthesis in _EXACT_METHODS else "majority"


def _lists(config: Configuration, pools: Iterable[_Pool]) -> bool:
    """Whether union's re-merge means anything: the configuration merged by union, or its
    answers are lists. A union of single answers concatenates them, and a scorer that
    looks for the target inside the answer (``contains``) would then credit it for any
    voter's answer: an artefact, not an accuracy."""
    if config.synthesis == "union":
        return True
    return all(
        len(extract_items(c.text)) > 1 for p in pools for c in p.calls if c.answered and c.text
    )


def remerge(answers: StoredAnswers) -> tuple[list[MethodAccuracy], list[Skipped]]:
    """Every configuration with at least 2 answered calls on some item, re-merged with
    every no-call synthesis method; judge is listed as not derivable."""
    results: list[MethodAccuracy] = []
    skipped: list[Skipped] = []
    for cid, pools in answers.pools.items():
        if not pools:
            continue
        if answers.most_answered(cid) < 2:
            skipped.append(Skipped(cid, "remerge", "no item has 2 answered calls to merge"))
            continue
        for method in sorted(SYNTHESIS_METHODS):
            if method == "union" and not _lists(answers.configurations[cid], pools):
                skipped.append(
                    Skipped(
                        cid, "remerge:union", "the answers are not lists: union merges list items"
                    )
                )
                continue
            merged = [p.full(method) for p in pools]
            right = sum(m.correct for m in merged)
            results.append(
                MethodAccuracy(
                    config_id=cid,
                    method=method,
                    n=len(pools),
                    correct=right,
                    accuracy=wilson(right, len(pools)),
                    mean_score=math.fsum(m.score for m in merged) / len(pools),
                )
            )
        skipped.append(Skipped(cid, "remerge:judge", "a judge merge needs a model call"))
    return results, skipped


def _sweep_thresholds(scores: Iterable[float]) -> list[float]:
    grid = {round(i * 0.05, 2) for i in range(21)}
    return sorted(grid | {round(s, 12) for s in scores})


def threshold_sweep(answers: StoredAnswers) -> list[ThresholdSweep]:
    """Coverage and accuracy among the covered at every threshold (every 0.05 and every
    distinct agreement score), on each configuration's re-merged majority."""
    import numpy as np

    out: list[ThresholdSweep] = []
    for cid, pools in answers.pools.items():
        if not pools or answers.most_answered(cid) < 2:
            continue
        merged = [p.full(_method(answers.configurations[cid])) for p in pools]
        scores = np.array([m.score for m in merged])
        correct = np.array([m.correct for m in merged], dtype=bool)
        points = []
        for t in _sweep_thresholds(scores.tolist()):
            covered = scores >= t - 1e-12
            count = int(covered.sum())
            acc = float(correct[covered].mean()) if count else None
            points.append(SweepPoint(t, count, count / len(pools), acc))
        out.append(ThresholdSweep(cid, tuple(points)))
    return out


def _subsets(n: int, k: int, draws: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Every k-subset of range(n) when there are at most ``draws``, else ``draws``
    random ones (with replacement between draws, each drawn uniformly)."""
    if math.comb(n, k) <= draws:
        return list(itertools.combinations(range(n), k))
    return [tuple(sorted(rng.sample(range(n), k))) for _ in range(draws)]


def _bootstrap(values: np.ndarray, rounds: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values``."""
    import numpy as np

    if len(values) < 2:
        mean = float(values.mean()) if len(values) else 0.0
        return mean, mean
    means = values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _per_item(pools: Sequence[_Pool], values: Sequence[float]) -> np.ndarray:
    """Values of samples averaged over the repeats of each item (the bootstrap unit)."""
    import numpy as np

    by_item: dict[str, list[float]] = defaultdict(list)
    for pool, value in zip(pools, values, strict=True):
        by_item[pool.sample.item_id].append(value)
    return np.array([math.fsum(v) / len(v) for v in by_item.values()])


def accuracy_vs_calls(
    answers: StoredAnswers, *, draws: int = 200, rounds: int = 1000, seed: int = 0
) -> list[CallsCurve]:
    """Accuracy and cost against the number of calls, k = 1..n, for every
    configuration with 2 or more answered calls on some item.

    For each sample, every k-subset of its answered calls (or ``draws`` random ones
    when there are more) is majority-merged and scored; a sample with fewer than k
    answered calls merges all of them, and one with none (or not finished) is wrong.
    Samples average over subsets, items over repeats, and the interval is a percentile
    bootstrap over items (``rounds`` resamples). Seeded: the same records and seed give
    the same figures.
    """
    import numpy as np

    curves: list[CallsCurve] = []
    for index, (cid, pools) in enumerate(answers.pools.items()):
        n = answers.most_answered(cid)
        if not pools or n < 2:
            continue
        pick = random.Random(f"{seed}:{index}")
        boot = np.random.default_rng([seed, index])
        method = _method(answers.configurations[cid])
        points = []
        for k in range(1, n + 1):
            accs: list[float] = []
            costs: list[float] = []
            subsets = short = 0
            for pool in pools:
                have = pool.answered if pool.finished else ()
                if len(have) < k:
                    short += 1
                chosen = _subsets(len(have), min(k, len(have)), draws, pick) if have else [()]
                merged = [pool.merge([have[i] for i in s], method) for s in chosen]
                accs.append(sum(m.correct for m in merged) / len(chosen))
                costs.append(
                    math.fsum(pool.calls[have[i]].cost for s in chosen for i in s) / len(chosen)
                )
                subsets += len(chosen)
            item_acc = _per_item(pools, accs)
            low, high = _bootstrap(item_acc, rounds, boot)
            mean = float(item_acc.mean())
            points.append(
                CallsPoint(
                    k=k,
                    accuracy=mean,
                    low=min(low, mean),
                    high=max(high, mean),
                    cost_per_item=math.fsum(costs) / len(costs),
                    subsets=subsets,
                    short_items=short,
                )
            )
        curves.append(CallsCurve(cid, tuple(points)))
    return curves


def _paired(full: Sequence[bool], other: Sequence[bool]) -> McNemar:
    b = sum(1 for x, y in zip(full, other, strict=True) if x and not y)
    c = sum(1 for x, y in zip(full, other, strict=True) if y and not x)
    return mcnemar(b, c)


def weighted_remerge(
    answers: StoredAnswers,
    config_id: str,
    weights_of: Callable[[str], Mapping[str, float]],
    items: Collection[str] | None = None,
) -> tuple[list[bool], list[bool]]:
    """Re-merge a configuration's stored answers with equal weights and with model
    weights: whether each sample is right, (equal, weighted), paired by sample.

    Args:
        answers: The prepared records.
        config_id: The configuration.
        weights_of: The weights by base model for an item id (a sample of a model votes
            with the model's weight; a model left out weighs 1).
        items: Only the samples of these items (default all).

    Both merges go through ``synthesize`` with the configuration's no-call method, so
    they differ in the weights alone. An unfinished sample is wrong in both.
    """
    method = _method(answers.configurations[config_id])
    equal: list[bool] = []
    weighted: list[bool] = []
    for pool in answers.pools[config_id]:
        sample = pool.sample
        if items is not None and sample.item_id not in items:
            continue
        calls = [pool.calls[i] for i in pool.answered] if pool.finished else []
        if not calls:
            equal.append(False)
            weighted.append(False)
            continue
        votes = [Answer(key=c.key, model=c.model, text=c.text, arrival=c.arrival) for c in calls]
        by_base = weights_of(sample.item_id)
        options = dataclasses.replace(
            answers.options, weights={c.model: by_base.get(c.base, 1.0) for c in calls}
        )
        for out, merged in (
            (equal, synthesize(method, votes, DEFAULT_THRESHOLD, answers.options)),
            (weighted, synthesize(method, votes, DEFAULT_THRESHOLD, options)),
        ):
            out.append(answers.grader(merged.content, sample.targets))
    return equal, weighted


def drop_model(answers: StoredAnswers, config_id: str, model: str) -> DroppedModel:
    """Re-merge one configuration without every call of base model ``model``.

    Raises:
        ValueError: an unknown configuration or model, or a one-model panel (dropping
            its only model leaves nothing to merge).
    """
    if config_id not in answers.configurations:
        raise ValueError(f"no configuration {config_id!r}")
    panel = answers.panel(config_id)
    if model not in panel:
        raise ValueError(
            f"cannot drop {model!r}: configuration {config_id!r} asks {', '.join(panel)}"
        )
    if len(panel) < 2:
        raise ValueError(
            f"cannot drop {model!r} from configuration {config_id!r}: its panel has one"
            " model, and without it nothing is left to merge"
        )
    pools = answers.pools[config_id]
    if not pools:
        raise ValueError(f"configuration {config_id!r} has no samples")
    method = _method(answers.configurations[config_id])
    full = [p.full(method).correct for p in pools]
    rest = [
        p.merge(
            [i for i in p.answered if p.calls[i].base != model] if p.finished else (), method
        ).correct
        for p in pools
    ]
    acc, base = wilson(sum(rest), len(pools)), wilson(sum(full), len(pools))
    return DroppedModel(
        config_id=config_id,
        dropped=model,
        accuracy=acc,
        full=base,
        delta=acc.estimate - base.estimate,
        mcnemar=_paired(full, rest),
    )


def drop_models(answers: StoredAnswers) -> tuple[list[DroppedModel], list[Skipped]]:
    """:func:`drop_model` for every base model of every panel of two or more."""
    out: list[DroppedModel] = []
    skipped: list[Skipped] = []
    for cid, pools in answers.pools.items():
        if not pools:
            continue
        panel = answers.panel(cid)
        if len(panel) < 2:
            skipped.append(Skipped(cid, "drop_model", "the panel has one model"))
            continue
        out.extend(drop_model(answers, cid, model) for model in panel)
    return out, skipped


def _sample_index(model: str) -> int:
    _, mark, index = model.rpartition("#")
    return int(index) if mark and index.isdigit() else 0


def _cascade(
    pool: _Pool, order: Sequence[str], threshold: float, method: str
) -> tuple[bool, int, float]:
    """One sample's cascade: the first two calls together, then one at a time while
    the answers so far make no quorum (``engine.parallel._cascade``). Returns
    (correct, calls made, their cost)."""
    if not pool.finished:
        return False, 0, 0.0
    position = {m: i for i, m in enumerate(order)}
    queue = sorted(
        (i for i, c in enumerate(pool.calls) if c.base in position),
        key=lambda i: (position[pool.calls[i].base], _sample_index(pool.calls[i].model)),
    )
    # The first round's calls arrive in their stored order, later rounds after them.
    first = sorted(queue[:2], key=lambda i: pool.calls[i].arrival)
    queue = first + queue[2:]
    made = len(first)
    while True:
        members = [i for i in queue[:made] if pool.calls[i].answered]
        if made >= len(queue) or pool.quorum(members, threshold):
            break
        made += 1
    cost = math.fsum(pool.calls[i].cost for i in queue[:made])
    return pool.merge(members, method, in_order=True).correct, made, cost


def _orderings(panel: Sequence[str], cap: int, seed: int) -> list[tuple[str, ...]]:
    """Every ordering of ``panel`` (panel order first), or ``cap`` distinct seeded
    random ones beyond that."""
    if math.factorial(len(panel)) <= cap:
        return list(itertools.permutations(panel))
    rng = random.Random(seed)
    chosen: dict[tuple[str, ...], None] = {tuple(panel): None}
    while len(chosen) < cap:
        chosen[tuple(rng.sample(list(panel), len(panel)))] = None
    return list(chosen)


def cascade_orderings(
    answers: StoredAnswers, *, cap: int = 24, seed: int = 0
) -> tuple[list[CascadeOrder], list[Skipped]]:
    """Cascades over each panel's base models in every order (at most ``cap``),
    simulated on the stored answers of configurations that asked every model
    (mode ``all``): accuracy, mean calls and mean cost per sample."""
    out: list[CascadeOrder] = []
    skipped: list[Skipped] = []
    for cid, pools in answers.pools.items():
        config = answers.configurations[cid]
        panel = answers.panel(cid)
        if not pools:
            continue
        if len(panel) < 2:
            skipped.append(Skipped(cid, "cascade", "the panel has one model"))
            continue
        if config.mode != "all":
            skipped.append(
                Skipped(
                    cid,
                    "cascade",
                    f"mode {config.mode} stopped early: the store lacks calls a cascade may need",
                )
            )
            continue
        threshold = config.threshold if config.threshold is not None else DEFAULT_THRESHOLD
        method = _method(config)
        for order in _orderings(panel, cap, seed):
            runs = [_cascade(p, order, threshold, method) for p in pools]
            right = sum(r[0] for r in runs)
            out.append(
                CascadeOrder(
                    config_id=cid,
                    order=order,
                    accuracy=wilson(right, len(runs)),
                    mean_calls=sum(r[1] for r in runs) / len(runs),
                    mean_cost=math.fsum(r[2] for r in runs) / len(runs),
                )
            )
    return out, skipped


def analyse(
    answers: StoredAnswers,
    *,
    draws: int = 200,
    rounds: int = 1000,
    max_orderings: int = 24,
    seed: int = 0,
) -> Analyses:
    """Every zero-cost analysis, with the list of what could not be derived."""
    merged, skipped = remerge(answers)
    dropped, skipped_drop = drop_models(answers)
    cascades, skipped_cascade = cascade_orderings(answers, cap=max_orderings, seed=seed)
    return Analyses(
        remerge=tuple(merged),
        sweeps=tuple(threshold_sweep(answers)),
        calls=tuple(accuracy_vs_calls(answers, draws=draws, rounds=rounds, seed=seed)),
        dropped=tuple(dropped),
        cascades=tuple(cascades),
        skipped=(*skipped, *skipped_drop, *skipped_cascade),
    )
