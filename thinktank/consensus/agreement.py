"""Grouping of model answers into agreement clusters, and the agreement score.

This module owns which responses count as the same answer, how the resulting clusters
are ordered, and how much the models agree. The measure comes from
:class:`~thinktank.consensus.options.MergeOptions`: equal canonical answers (``exact``:
:func:`~thinktank.consensus.normalize.normalize_answer`, or the declared format's
:func:`~thinktank.consensus.formats.extract_formatted`), connected groups of the graph
"equivalent" for short answers (``equivalent``, the ``auto`` choice:
:mod:`~thinktank.consensus.equivalence`, plus the lexical long-answer layer for two
long answers; a group holding two contradicting bare answers falls back to equal
canonical answers), or clusters of the graph "similarity >= cut"
for long ones (``lexical``, ``semantic``: the long-answer layer of
:mod:`~thinktank.consensus.long_equivalence`, joined most similar first and never
holding two contradicting answers; ``auto`` uses the calibrated cuts). Results never
depend on the order of the input: answers are put in key order before anything is
computed, similarities and equivalences are symmetric, and every tie breaks by the
options' :data:`~thinktank.consensus.options.TieBreak` rule (model weight, then
arrival, then key), never by the alphabet. Blank clusters (empty answers, or answers
with nothing left after extraction and normalisation) never come first while any other
cluster exists.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from thinktank.consensus.equivalence import (
    SAME_NORMALIZED,
    canonical_answer,
    equivalence_reason,
    is_bare,
)
from thinktank.consensus.long_equivalence import (
    LEXICAL_CUT,
    SAME_MEANING,
    SEMANTIC_CUT,
    SIMILAR_WORDING,
    long_links,
    veto_clusters,
)
from thinktank.consensus.normalize import normalize_answer
from thinktank.consensus.options import SHORT_ANSWER_WORDS, MergeOptions, ResolvedAgreement
from thinktank.consensus.similarity import normalize_text, similarity_matrix

__all__ = [
    "Analysis",
    "Answer",
    "Cluster",
    "agreement",
    "agreement_score",
    "analyse",
    "cluster_answers",
    "connected_components",
    "largest_cluster_size",
    "long_cut",
    "quorum_reached",
    "resolve_agreement",
]

_DEFAULT_OPTIONS = MergeOptions()


@dataclass(frozen=True, slots=True)
class Answer:
    """One model response taking part in a consensus."""

    key: str
    """Unique id of the response (a call id)."""
    model: str
    """The model that produced the response."""
    text: str
    """The raw response text."""
    weight: float = 1.0
    """How much this response counts; must be finite and > 0. The model's weight from
    :attr:`MergeOptions.weights <thinktank.consensus.options.MergeOptions.weights>`
    multiplies it."""
    arrival: int = 0
    """Completion order: 0 for the response that arrived first. Ties between equally
    supported answers go to the earliest (see
    :data:`~thinktank.consensus.options.TieBreak`); equal arrivals fall to the key."""


@dataclass(frozen=True, slots=True)
class Cluster:
    """Responses that agree with each other.

    With ``exact`` agreement the members share one normalised answer; with ``lexical``
    or ``semantic`` agreement they form a connected group of the graph "similarity >=
    threshold" (each member is similar enough to at least one other member).
    """

    answer: str
    """The normalised answer shared by the members (``exact``), or the
    :func:`~thinktank.consensus.similarity.normalize_text` form of the representative
    (``lexical``/``semantic``); ``""`` for blank answers (empty, or nothing left after
    extraction and normalisation). Unique among the clusters of one call."""
    representative: str
    """One member's raw text. ``exact``: the shortest stripped text. ``lexical``/
    ``semantic``: the member most similar to the others (highest weighted similarity
    sum within the cluster), then the shortest. Further ties break by the tie-break
    rule (:meth:`MergeOptions.tie_rank
    <thinktank.consensus.options.MergeOptions.tie_rank>`)."""
    keys: tuple[str, ...]
    """Member keys, sorted."""
    models: tuple[str, ...]
    """Member models, in the same order as ``keys``."""
    weight: float
    """Sum of the member weights (each ``Answer.weight`` times its model's weight)."""
    reasons: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Member key -> why it joined (``equivalent``: one of
    :data:`~thinktank.consensus.equivalence.REASONS`; ``lexical``/``semantic``:
    ``"similar_wording 0.71"`` / ``"same_meaning 0.87"``, the measure and score of the
    link), the link that reached it from the representative, for every member but the
    representative. Read-only."""

    def __post_init__(self) -> None:
        """Freeze ``reasons``."""
        object.__setattr__(self, "reasons", MappingProxyType(dict(self.reasons)))

    @property
    def blank(self) -> bool:
        """True for the cluster of empty or unparseable answers, which never wins."""
        return not self.answer


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the merge methods need about one set of answers, computed once."""

    mode: ResolvedAgreement
    """The agreement measure used (``auto`` resolved)."""
    answers: tuple[Answer, ...]
    """The answers, sorted by key."""
    weights: tuple[float, ...]
    """Effective weight of each answer (same order as ``answers``)."""
    similarity: tuple[tuple[float, ...], ...]
    """Pairwise similarity in [0, 1] (same order; ``exact``: 1.0 for equal normalised
    answers, else 0.0)."""
    clusters: tuple[Cluster, ...]
    """The clusters: non-blank before blank, then heaviest first, ties by the tie-break
    rule applied to their best-ranked member."""
    cluster_index: tuple[int, ...]
    """For each answer, the index of its cluster in ``clusters``."""
    ranks: tuple[tuple[float, int, str], ...]
    """For each answer, its tie-break sort key (:meth:`MergeOptions.tie_rank
    <thinktank.consensus.options.MergeOptions.tie_rank>`; smaller wins)."""

    @property
    def total_weight(self) -> float:
        """The exactly rounded sum of all effective weights."""
        return _total_weight(self.weights)


def resolve_agreement(
    answers: Sequence[Answer], options: MergeOptions = _DEFAULT_OPTIONS
) -> ResolvedAgreement:
    """The agreement measure ``options`` selects for ``answers``.

    ``auto`` is ``equivalent`` when the options declare an answer format other than
    ``free``, or when every answer's normalised extracted answer has at most
    :data:`~thinktank.consensus.options.SHORT_ANSWER_WORDS` words (and when there are no
    answers), else ``lexical`` (at the calibrated
    :data:`~thinktank.consensus.long_equivalence.LEXICAL_CUT`, which reaches precision
    0.95 where no MiniLM cosine cut does: embeddings are used only when asked for with
    ``semantic``); other modes are returned as they are.

    Args:
        answers: The responses (any order).
        options: The merge options.

    Returns:
        ``"exact"``, ``"equivalent"``, ``"lexical"`` or ``"semantic"``.
    """
    if options.agreement != "auto":
        return options.agreement
    declared = options.answer_format
    if declared is not None and declared.kind != "free":
        return "equivalent"
    short = all(
        len(normalize_answer(answer.text).split()) <= SHORT_ANSWER_WORDS for answer in answers
    )
    return "equivalent" if short else "lexical"


def long_cut(mode: ResolvedAgreement, options: MergeOptions = _DEFAULT_OPTIONS) -> float:
    """The similarity at or above which two long answers agree under ``mode``.

    The options' ``similarity_threshold`` when set, else the calibrated cut of the
    measure, :data:`~thinktank.consensus.long_equivalence.SEMANTIC_CUT` or
    :data:`~thinktank.consensus.long_equivalence.LEXICAL_CUT`.
    """
    if options.similarity_threshold is not None:
        return options.similarity_threshold
    return SEMANTIC_CUT if mode == "semantic" else LEXICAL_CUT


def analyse(answers: Sequence[Answer], options: MergeOptions = _DEFAULT_OPTIONS) -> Analysis:
    """Validate, weigh, compare and cluster ``answers``.

    Args:
        answers: The responses, in any order.
        options: The agreement measure, threshold, model weights and embedder.

    Returns:
        The analysis; it does not depend on the order of ``answers``.

    Raises:
        ValueError: A weight is not a finite number > 0 (or their product or total
            overflows), two answers share a key, or the embedder misbehaved.
    """
    ordered = tuple(sorted(answers, key=lambda answer: answer.key))
    weights = tuple(_effective_weight(answer, options) for answer in ordered)
    for previous, current in itertools.pairwise(ordered):
        if previous.key == current.key:
            raise ValueError(f"duplicate answer key {current.key!r}")
    _total_weight(weights)
    mode = resolve_agreement(ordered, options)
    forms = [canonical_answer(answer.text, options.answer_format) for answer in ordered]
    links: list[list[str | None]] = []
    if mode == "exact":
        similarity = tuple(tuple(1.0 if a == b else 0.0 for b in forms) for a in forms)
        groups = _group_equal(forms)
    elif mode == "equivalent":
        links = _equivalence_links(ordered, forms, options)
        similarity = tuple(
            tuple(1.0 if i == j or link is not None else 0.0 for j, link in enumerate(row))
            for i, row in enumerate(links)
        )
        groups = _equivalent_groups(forms, links)
    else:
        embedder = options.embedder if mode == "semantic" else None
        texts = [answer.text for answer in ordered]
        similarity = tuple(map(tuple, similarity_matrix(texts, embedder=embedder)))
        reason = SAME_MEANING if mode == "semantic" else SIMILAR_WORDING
        links = long_links(texts, similarity, long_cut(mode, options), reason)
        groups = veto_clusters(texts, similarity, links)
    ranks = tuple(
        options.tie_rank(answer.model, weight, answer.arrival, answer.key)
        for answer, weight in zip(ordered, weights, strict=True)
    )
    clusters = [
        _make_cluster(mode, members, ordered, weights, similarity, ranks, forms, links)
        for members in groups
    ]
    order = sorted(
        range(len(clusters)),
        key=lambda i: (
            clusters[i].blank,
            -clusters[i].weight,
            min(ranks[member] for member in groups[i]),
        ),
    )
    position = {old: new for new, old in enumerate(order)}
    cluster_index = [0] * len(ordered)
    for old, members in enumerate(groups):
        for member in members:
            cluster_index[member] = position[old]
    return Analysis(
        mode=mode,
        answers=ordered,
        weights=weights,
        similarity=similarity,
        clusters=tuple(clusters[i] for i in order),
        cluster_index=tuple(cluster_index),
        ranks=ranks,
    )


def cluster_answers(
    answers: Sequence[Answer], *, options: MergeOptions = _DEFAULT_OPTIONS
) -> list[Cluster]:
    """Group answers that agree under ``options``.

    By default (``auto``): equal normalised answers when every answer is short, else
    clusters of lexical similarity >= :data:`~thinktank.consensus.long_equivalence.LEXICAL_CUT`
    that never join contradicting answers.

    Args:
        answers: The responses to group, in any order.
        options: The agreement measure, threshold, model weights and embedder.

    Returns:
        The clusters, the winner first: non-blank clusters before the blank one, then
        heaviest first; clusters of equal weight are ordered by ``options.tie_break``
        (model weight, then arrival, by default). The result does not depend on the
        input order.

    Raises:
        ValueError: A weight is not a finite number > 0, the total weight is not
            finite, two answers share a key, or the embedder misbehaved.
    """
    return list(analyse(answers, options).clusters)


def agreement_score(clusters: Sequence[Cluster]) -> float:
    """How strongly the answers agree: the heaviest non-blank cluster's share of the
    total weight (blank answers count in the total: they agree with nothing).

    Args:
        clusters: Clusters as returned by :func:`cluster_answers` (any order).

    Returns:
        A value in [0, 1]: 0.0 when there are no clusters, no weight or only blank
        answers, 1.0 when all answers fall in one non-blank cluster.

    Raises:
        ValueError: The total weight is not finite.
    """
    if not clusters:
        return 0.0
    total = _total_weight([cluster.weight for cluster in clusters])
    if total <= 0:
        return 0.0
    answered = [cluster.weight for cluster in clusters if not cluster.blank]
    if not answered:
        return 0.0
    return min(1.0, max(0.0, max(answered) / total))


def agreement(
    answers: Sequence[Answer], options: MergeOptions = _DEFAULT_OPTIONS
) -> tuple[list[Cluster], float]:
    """The clusters and agreement score of the responses that have arrived so far.

    For early-stopping modes: call it again as each response arrives. Note that with
    ``auto`` the measure can switch from ``exact`` to ``lexical`` when the first long
    answer arrives.

    Args:
        answers: The responses so far (possibly none), in any order.
        options: The merge options.

    Returns:
        The clusters (heaviest first) and :func:`agreement_score` of them; ``([], 0.0)``
        for no answers.

    Raises:
        ValueError: As :func:`cluster_answers`.
    """
    clusters = cluster_answers(answers, options=options)
    return clusters, agreement_score(clusters)


def largest_cluster_size(clusters: Sequence[Cluster]) -> int:
    """How many responses the winning cluster holds; 0 when there is none.

    The winner is the heaviest non-blank cluster, as in :func:`agreement_score`; among
    clusters of equal weight the first in ``clusters`` counts (:func:`cluster_answers`
    puts the tie-break winner first). Blank answers never win: 0 when all are blank.
    """
    answered = [cluster for cluster in clusters if not cluster.blank]
    if not answered:
        return 0
    return len(max(answered, key=lambda cluster: cluster.weight).keys)


def quorum_reached(
    answers: Sequence[Answer],
    *,
    min_models: int,
    threshold: float,
    options: MergeOptions = _DEFAULT_OPTIONS,
) -> bool:
    """Whether at least ``min_models`` responses agree at the ``threshold``.

    True when the winning (heaviest non-blank) cluster holds at least ``min_models``
    responses and the agreement score (its share of the weight of the responses so
    far) is at least ``threshold``: blank answers never make a quorum.

    Args:
        answers: The responses so far, in any order.
        min_models: Responses that must agree (at least 1).
        threshold: Agreement score required, in [0, 1].
        options: The merge options.

    Raises:
        ValueError: ``min_models < 1``, a threshold outside [0, 1], or as
            :func:`cluster_answers`.
    """
    if min_models < 1:
        raise ValueError(f"min_models must be at least 1, got {min_models!r}")
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    if len(answers) < min_models:
        return False
    clusters, score = agreement(answers, options)
    return score >= threshold and largest_cluster_size(clusters) >= min_models


def _effective_weight(answer: Answer, options: MergeOptions) -> float:
    """``answer.weight`` times its model's weight, validated.

    Raises:
        ValueError: The answer's weight is not a finite number > 0, or the product
            overflows.
    """
    if not (math.isfinite(answer.weight) and answer.weight > 0):
        raise ValueError(
            f"answer {answer.key!r} has weight {answer.weight!r}; weights must be finite and > 0"
        )
    weight = answer.weight * options.model_weight(answer.model)
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(
            f"answer {answer.key!r} has weight {answer.weight!r} x model weight"
            f" {options.model_weight(answer.model)!r} = {weight!r}; weights must be finite"
            " and > 0"
        )
    return weight


def _group_equal(forms: Sequence[str]) -> list[list[int]]:
    """Indices grouped by equal form, groups in order of first index."""
    groups: dict[str, list[int]] = {}
    for index, form in enumerate(forms):
        groups.setdefault(form, []).append(index)
    return list(groups.values())


def connected_components(size: int, linked: Callable[[int, int], bool]) -> list[list[int]]:
    """Connected components of the graph on ``0..size-1`` with an edge where ``linked``.

    ``linked(i, j)`` is asked once for each pair ``i < j``; it must be symmetric in
    meaning for the result to be order-independent.

    Returns:
        The components as sorted index lists, in order of their smallest index.
    """
    parent = list(range(size))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for i in range(size):
        for j in range(i + 1, size):
            if linked(i, j):
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for node in range(size):
        groups.setdefault(root(node), []).append(node)
    return list(groups.values())


def _make_cluster(
    mode: ResolvedAgreement,
    members: Sequence[int],
    answers: Sequence[Answer],
    weights: Sequence[float],
    similarity: Sequence[Sequence[float]],
    ranks: Sequence[tuple[float, int, str]],
    forms: Sequence[str],
    links: Sequence[Sequence[str | None]],
) -> Cluster:
    """Build the cluster of the answers at indices ``members`` (sorted by key)."""
    reasons: dict[str, str] = {}
    if mode in ("exact", "equivalent"):
        # The bare answer represents: the shortest canonical form, then the shortest text.
        best = min(members, key=lambda i: (len(forms[i]), len(answers[i].text.strip()), ranks[i]))
        representative = answers[best].text
        answer = forms[best]
        if links and answer:
            reasons = _join_reasons(best, members, links, answers)
    else:
        best = min(
            members,
            key=lambda i: (
                -math.fsum(weights[j] * similarity[i][j] for j in members),
                len(answers[i].text.strip()),
                ranks[i],
            ),
        )
        representative = answers[best].text
        answer = normalize_text(representative)
        if answer:
            reasons = _join_reasons(best, members, links, answers)
    return Cluster(
        answer=answer,
        representative=representative,
        keys=tuple(answers[i].key for i in members),
        models=tuple(answers[i].model for i in members),
        weight=_total_weight([weights[i] for i in members]),
        reasons=reasons,
    )


def _equivalence_links(
    answers: Sequence[Answer], forms: Sequence[str], options: MergeOptions
) -> list[list[str | None]]:
    """The symmetric matrix of :func:`equivalence_reason` between answers (None: not
    equivalent; the diagonal is None). Blank answers link to each other only, so they
    form the one blank cluster."""
    candidates = frozenset(form for form in forms if is_bare(form))
    size = len(answers)
    links: list[list[str | None]] = [[None] * size for _ in range(size)]
    for i in range(size):
        for j in range(i + 1, size):
            if not forms[i] or not forms[j]:
                link = SAME_NORMALIZED if forms[i] == forms[j] else None
            else:
                link = equivalence_reason(
                    answers[i].text,
                    answers[j].text,
                    options.answer_format,
                    candidates,
                    options.question,
                ) or _long_link(answers[i].text, answers[j].text, options)
            links[i][j] = links[j][i] = link
    return links


def _long_link(a: str, b: str, options: MergeOptions) -> str | None:
    """The long-answer layer of ``equivalent``: two answers of more than
    :data:`~thinktank.consensus.options.SHORT_ANSWER_WORDS` words each, with no declared
    format (or ``free``), agree at lexical similarity >= the cut unless they contradict
    (``similar_wording <score>``)."""
    fmt = options.answer_format
    if fmt is not None and fmt.kind != "free":
        return None
    if any(len(normalize_answer(text).split()) <= SHORT_ANSWER_WORDS for text in (a, b)):
        return None
    cut = long_cut("lexical", options)
    return long_links((a, b), similarity_matrix([a, b]), cut, SIMILAR_WORDING)[0][1]


def _equivalent_groups(
    forms: Sequence[str], links: Sequence[Sequence[str | None]]
) -> list[list[int]]:
    """Connected components of the "equivalent" graph, each split by equal canonical
    answer when it holds two bare answers that are not equivalent to each other (two
    different cities "stated" by one sentence each joined to a third): a cluster never
    contains answers that contradict."""
    groups: list[list[int]] = []
    for component in connected_components(len(forms), lambda i, j: links[i][j] is not None):
        bare = [i for i in component if is_bare(forms[i])]
        contradicts = any(
            forms[i] != forms[j] and links[i][j] is None for i, j in itertools.combinations(bare, 2)
        )
        if contradicts:
            split = _group_equal([forms[i] for i in component])
            groups.extend([component[k] for k in members] for members in split)
        else:
            groups.append(component)
    return sorted(groups, key=min)


def _join_reasons(
    root: int,
    members: Sequence[int],
    links: Sequence[Sequence[str | None]],
    answers: Sequence[Answer],
) -> dict[str, str]:
    """Member key -> the reason of the link that first reached it from ``root`` (a
    breadth-first walk of the cluster's links), for every member but ``root``."""
    inside = set(members)
    reasons: dict[str, str] = {}
    frontier = [root]
    seen = {root}
    while frontier:
        following: list[int] = []
        for node in frontier:
            for other in sorted(inside - seen):
                link = links[node][other]
                if link is not None:
                    seen.add(other)
                    reasons[answers[other].key] = link
                    following.append(other)
        frontier = following
    # Members of a split component that no link reaches share the canonical answer.
    for other in sorted(inside - seen):
        reasons[answers[other].key] = SAME_NORMALIZED
    return reasons


def _total_weight(weights: Sequence[float]) -> float:
    """Exactly rounded, order-independent sum of ``weights``.

    Raises:
        ValueError: The sum is not finite.
    """
    try:
        total = math.fsum(weights)
    except OverflowError as exc:
        raise ValueError("total weight is too large to represent") from exc
    if not math.isfinite(total):
        raise ValueError(f"total weight {total!r} is not finite")
    return total
