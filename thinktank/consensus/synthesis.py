"""Merge methods: turning several model answers into one, with its agreement.

This module owns the seam every merge method plugs into. A method is a function
``(answers, threshold, options) -> Synthesis`` registered by name in
:data:`SYNTHESIS_METHODS`; :func:`synthesize` dispatches on that name. Adding a method
means writing such a function and adding it to the registry. The registered methods:

- ``majority``: the representative of the heaviest cluster.
- ``medoid``: the most central response, the one with the highest total weighted
  similarity to all responses.
- ``weighted_merge``: ``majority`` for short answers, ``medoid`` for long ones, with
  the model weights of the options (the result's ``method`` says which).
- ``union``: for list answers (review findings): every distinct item of every response,
  credited to the models that listed it.

Every method breaks ties by the options' tie-break rule (model weight, then the
earliest answer, by default; never the alphabet), and an empty or unparseable answer
never wins while any other exists. When every answer is blank the content is empty,
the score 0.0 and the outcome ``no_answer``.

A judge (a model that writes the merged answer) is not a method here since it needs a
model call; :mod:`thinktank.consensus.judge` builds its prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thinktank.consensus.agreement import Analysis, Answer, Cluster, agreement_score, analyse
from thinktank.consensus.items import MergedItem, merge_items
from thinktank.consensus.options import MergeOptions, ResolvedAgreement

__all__ = [
    "NO_ANSWER",
    "SYNTHESIS_METHODS",
    "Synthesis",
    "SynthesisMethod",
    "majority",
    "medoid",
    "synthesize",
    "union",
    "weighted_merge",
]

_DEFAULT_OPTIONS = MergeOptions()

NO_ANSWER = "no_answer"
"""The degraded outcome of a merge where every response was blank (empty, or nothing
left after extraction): there is no answer to pick."""
_NO_ANSWER_NOTE = "every response was empty or had no extractable answer"


@dataclass(frozen=True, slots=True)
class Synthesis:
    """The merged answer of several responses and how well they agreed."""

    content: str
    """The merged answer text."""
    score: float
    """How well the responses agree, in [0, 1]; each method documents its definition
    (``majority``: :func:`~thinktank.consensus.agreement.agreement_score` of
    ``clusters``)."""
    method: str
    """The merge method that produced this result (e.g. ``"majority"``,
    ``"weighted_merge:medoid"``)."""
    clusters: tuple[Cluster, ...]
    """All clusters of the input answers, heaviest first."""
    included_keys: tuple[str, ...]
    """Keys of the responses that support ``content``, sorted."""
    threshold: float
    """The agreement the caller asked for, in [0, 1]."""
    reached: bool
    """Whether ``score >= threshold``."""
    items: tuple[MergedItem, ...] = ()
    """The merged list items (``union`` only)."""
    outcome: str = "ok"
    """``ok``, or a degraded outcome the caller records (e.g. ``judge_failed``)."""
    note: str | None = None
    """A human-readable remark about how the result came about."""
    agreement: ResolvedAgreement = "exact"
    """The agreement measure the clusters (and score) were computed with."""


SynthesisMethod = Callable[[Sequence[Answer], float, MergeOptions], Synthesis]
"""A merge method: the answers, the agreement threshold and the options in, a
:class:`Synthesis` out."""


def majority(
    answers: Sequence[Answer], threshold: float, options: MergeOptions = _DEFAULT_OPTIONS
) -> Synthesis:
    """Pick the answer of the heaviest cluster.

    The content is that cluster's representative raw text. Blank answers never win;
    ties between clusters of equal weight break by ``options.tie_break`` (by default
    the cluster with the heaviest response, then the one answered first). Score:
    :func:`~thinktank.consensus.agreement.agreement_score`, the winning cluster's share
    of the total weight.

    Args:
        answers: The responses to merge (at least one).
        threshold: The agreement required for ``reached``, in [0, 1].
        options: Agreement measure, model weights and embedder.

    Returns:
        The synthesis; ``included_keys`` are the winning cluster's keys.

    Raises:
        ValueError: No answers, a threshold outside [0, 1], or invalid answers (see
            :func:`~thinktank.consensus.agreement.cluster_answers`).
    """
    analysis = _analyse(answers, threshold, options)
    return _heaviest_cluster(analysis, threshold, "majority")


def medoid(
    answers: Sequence[Answer], threshold: float, options: MergeOptions = _DEFAULT_OPTIONS
) -> Synthesis:
    """Pick the most central response: the weighted medoid.

    Each response's centrality is ``sum_j w_j * sim(i, j)`` over all responses ``j``
    (itself included, with similarity 1), where ``w_j`` are the effective weights and
    ``sim`` the agreement measure's similarity (``exact``: 1.0 for equal normalised
    answers, else 0.0). Maximising it is minimising the weighted sum of distances
    ``1 - sim``: the classic weighted medoid. Blank answers are never picked while any
    other exists. Ties go to the response in the earlier cluster (cluster order), then
    to the shortest stripped text, then by ``options.tie_break``. With ``exact``
    agreement this is always ``majority``'s answer.

    Score: the weight of the medoid's cluster over the total weight.

    Args:
        answers: The responses to merge (at least one).
        threshold: The agreement required for ``reached``, in [0, 1].
        options: Agreement measure, similarity threshold, model weights and embedder.

    Returns:
        The synthesis; ``content`` is the medoid's raw text and ``included_keys`` are
        the keys of its cluster.

    Raises:
        ValueError: As :func:`majority`.
    """
    analysis = _analyse(answers, threshold, options)
    return _medoid(analysis, threshold, "medoid")


def weighted_merge(
    answers: Sequence[Answer], threshold: float, options: MergeOptions = _DEFAULT_OPTIONS
) -> Synthesis:
    """Merge by model weight: the heaviest cluster for short answers, else the medoid.

    Weights are ``Answer.weight`` times the model's weight in ``options.weights``.
    When the agreement measure is ``exact`` or ``equivalent`` (``auto`` with short
    answers) this is
    :func:`majority` and ``method`` is ``"weighted_merge:majority"``; with ``lexical``
    or ``semantic`` agreement it is :func:`medoid` and ``method`` is
    ``"weighted_merge:medoid"``. The score is that of the method used.

    Args:
        answers: The responses to merge (at least one).
        threshold: The agreement required for ``reached``, in [0, 1].
        options: Model weights, agreement measure, similarity threshold and embedder.

    Returns:
        The synthesis.

    Raises:
        ValueError: As :func:`majority`.
    """
    analysis = _analyse(answers, threshold, options)
    if analysis.mode in ("exact", "equivalent"):
        return _heaviest_cluster(analysis, threshold, "weighted_merge:majority")
    return _medoid(analysis, threshold, "weighted_merge:medoid")


def union(
    answers: Sequence[Answer], threshold: float, options: MergeOptions = _DEFAULT_OPTIONS
) -> Synthesis:
    """Merge list answers item by item: every distinct item, credited to its models.

    Items come from :func:`~thinktank.consensus.items.extract_items` (bulleted or
    numbered lines, else non-empty lines) and are matched across responses by
    :func:`~thinktank.consensus.items.merge_items`: lexical similarity at or above
    ``options.similarity_threshold`` (``auto`` and ``lexical``), embedding similarity
    (``semantic``) or equal normalised text (``exact``). The whole responses are
    clustered with the same measure for ``clusters``.

    ``content`` has one line per merged item, ``- item  [model-a, model-b]``, most
    widely found first. Score: the mean over merged items of ``models that listed it /
    models that answered`` (distinct models): 1.0 when every model listed every item,
    ``1/n`` when no item was listed twice. Model weights do not count: a finding counts
    once per model that found it. Items listed by as many models come in order of their
    earliest position in a response, then by ``options.tie_break``. When no response
    lists any item the content is empty and the score is 1.0 (they agree there is
    nothing), with a note saying so; when every response is blank, the outcome is
    ``no_answer`` with score 0.0.

    Args:
        answers: The responses to merge (at least one).
        threshold: The agreement required for ``reached``, in [0, 1].
        options: Item matching measure, similarity threshold and embedder.

    Returns:
        The synthesis; ``items`` holds the merged items and ``included_keys`` the
        responses that contributed at least one item (all of them when none did).

    Raises:
        ValueError: As :func:`majority`.
    """
    item_mode: ResolvedAgreement = (
        "exact"
        if options.agreement == "exact"
        else "semantic"
        if options.agreement == "semantic"
        else "lexical"
    )
    options = dataclasses.replace(options, agreement=item_mode)
    analysis = _analyse(answers, threshold, options)
    items = merge_items(analysis.answers, item_mode, options)
    models = len({answer.model for answer in analysis.answers})
    if all(cluster.blank for cluster in analysis.clusters):
        return _no_answer(analysis, threshold, "union")
    if items:
        score = math.fsum(len(item.models) / models for item in items) / len(items)
        included = tuple(sorted({key for item in items for key in item.keys}))
        note = None
    else:
        score = 1.0
        included = tuple(answer.key for answer in analysis.answers)
        note = "no response listed any item"
    score = min(1.0, max(0.0, score))
    return Synthesis(
        content="\n".join(f"- {item.text}  [{', '.join(item.models)}]" for item in items),
        score=score,
        method="union",
        clusters=analysis.clusters,
        included_keys=included,
        threshold=threshold,
        reached=score >= threshold,
        items=tuple(items),
        note=note,
        agreement=analysis.mode,
    )


SYNTHESIS_METHODS: dict[str, SynthesisMethod] = {
    "majority": majority,
    "medoid": medoid,
    "union": union,
    "weighted_merge": weighted_merge,
}
"""Merge methods by name; register a new method by adding it here."""


def synthesize(
    method: str,
    answers: Sequence[Answer],
    threshold: float,
    options: MergeOptions = _DEFAULT_OPTIONS,
) -> Synthesis:
    """Merge ``answers`` with the merge method registered as ``method``.

    A method registered with the older two-parameter signature ``(answers, threshold)``
    is still called, without the options.

    Args:
        method: A key of :data:`SYNTHESIS_METHODS`.
        answers: The responses to merge (at least one).
        threshold: The agreement required for ``reached``, in [0, 1].
        options: Agreement measure, similarity threshold, model weights and embedder.

    Returns:
        The method's synthesis.

    Raises:
        ValueError: An unknown method (the message lists the known ones), a threshold
            outside [0, 1], or whatever the method rejects.
    """
    try:
        merge = SYNTHESIS_METHODS[method]
    except KeyError:
        known = ", ".join(sorted(SYNTHESIS_METHODS))
        raise ValueError(f"unknown synthesis method {method!r}; known: {known}") from None
    _check_threshold(threshold)
    if _takes_options(merge):
        return merge(answers, threshold, options)
    legacy: Callable[[Sequence[Answer], float], Synthesis] = merge  # type: ignore[assignment]
    return legacy(answers, threshold)


@functools.lru_cache(maxsize=64)
def _takes_options(merge: Callable[..., Synthesis]) -> bool:
    """Whether ``merge`` accepts ``(answers, threshold, options)`` positionally
    (cached: ``inspect.signature`` cost ~16 us on every merge)."""
    try:
        inspect.signature(merge).bind(None, None, None)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def _analyse(answers: Sequence[Answer], threshold: float, options: MergeOptions) -> Analysis:
    """Check the common arguments of a merge method and analyse the answers."""
    _check_threshold(threshold)
    if not answers:
        raise ValueError("no answers to merge")
    return analyse(answers, options)


def _heaviest_cluster(analysis: Analysis, threshold: float, method: str) -> Synthesis:
    """The synthesis that takes the winning cluster's representative."""
    winner = analysis.clusters[0]
    if winner.blank:
        return _no_answer(analysis, threshold, method)
    score = agreement_score(analysis.clusters)
    return Synthesis(
        content=winner.representative,
        score=score,
        method=method,
        clusters=analysis.clusters,
        included_keys=winner.keys,
        threshold=threshold,
        reached=score >= threshold,
        agreement=analysis.mode,
    )


def _medoid(analysis: Analysis, threshold: float, method: str) -> Synthesis:
    """The synthesis that takes the weighted medoid's raw text."""
    answers, weights, similarity = analysis.answers, analysis.weights, analysis.similarity
    clusters = analysis.clusters
    candidates = [i for i in range(len(answers)) if not clusters[analysis.cluster_index[i]].blank]
    if not candidates:
        return _no_answer(analysis, threshold, method)
    best = min(
        candidates,
        key=lambda i: (
            -math.fsum(weights[j] * similarity[i][j] for j in range(len(answers))),
            analysis.cluster_index[i],
            len(answers[i].text.strip()),
            analysis.ranks[i],
        ),
    )
    cluster = analysis.clusters[analysis.cluster_index[best]]
    total = analysis.total_weight
    score = min(1.0, max(0.0, cluster.weight / total)) if total > 0 else 0.0
    return Synthesis(
        content=answers[best].text,
        score=score,
        method=method,
        clusters=analysis.clusters,
        included_keys=cluster.keys,
        threshold=threshold,
        reached=score >= threshold,
        agreement=analysis.mode,
    )


def _no_answer(analysis: Analysis, threshold: float, method: str) -> Synthesis:
    """The synthesis when every response is blank: empty, unagreed, and flagged."""
    return Synthesis(
        content="",
        score=0.0,
        method=method,
        clusters=analysis.clusters,
        included_keys=(),
        threshold=threshold,
        reached=threshold <= 0.0,
        outcome=NO_ANSWER,
        note=_NO_ANSWER_NOTE,
        agreement=analysis.mode,
    )


def _check_threshold(threshold: float) -> None:
    """Raise ValueError unless ``threshold`` is a number in [0, 1]."""
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
