"""Grouping of model answers into agreement clusters, and the agreement score.

This module owns which responses count as the same answer (equal
:func:`~thinktank.consensus.normalize.normalize_answer`), how the resulting clusters are
ordered, and how much the models agree. Results never depend on the order of the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from thinktank.consensus.normalize import normalize_answer

__all__ = ["Answer", "Cluster", "agreement_score", "cluster_answers"]


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
    """How much this response counts; must be finite and > 0."""


@dataclass(frozen=True, slots=True)
class Cluster:
    """Responses whose normalised answers are equal."""

    answer: str
    """The normalised answer shared by the members (``""`` for blank answers)."""
    representative: str
    """One member's raw text: the shortest stripped text, ties broken by the text."""
    keys: tuple[str, ...]
    """Member keys, sorted."""
    models: tuple[str, ...]
    """Member models, in the same order as ``keys``."""
    weight: float
    """Sum of the member weights."""


def cluster_answers(answers: Sequence[Answer]) -> list[Cluster]:
    """Group answers whose normalised text is equal.

    Args:
        answers: The responses to group, in any order.

    Returns:
        The clusters, heaviest first; clusters of equal weight are ordered by their
        normalised answer, ascending. The result does not depend on the input order.

    Raises:
        ValueError: A weight is not a finite number > 0, the total weight is not
            finite, or two answers share a key.
    """
    seen: set[str] = set()
    groups: dict[str, list[Answer]] = {}
    for answer in answers:
        if not (math.isfinite(answer.weight) and answer.weight > 0):
            raise ValueError(
                f"answer {answer.key!r} has weight {answer.weight!r}; weights must be finite"
                " and > 0"
            )
        if answer.key in seen:
            raise ValueError(f"duplicate answer key {answer.key!r}")
        seen.add(answer.key)
        groups.setdefault(normalize_answer(answer.text), []).append(answer)
    _total_weight([answer.weight for answer in answers])
    clusters = [_make_cluster(normalized, members) for normalized, members in groups.items()]
    clusters.sort(key=lambda cluster: (-cluster.weight, cluster.answer))
    return clusters


def agreement_score(clusters: Sequence[Cluster]) -> float:
    """How strongly the answers agree: the largest cluster's share of the total weight.

    Args:
        clusters: Clusters as returned by :func:`cluster_answers` (any order).

    Returns:
        A value in [0, 1]: 0.0 when there are no clusters (or no weight), 1.0 when all
        answers fall in one cluster.

    Raises:
        ValueError: The total weight is not finite.
    """
    if not clusters:
        return 0.0
    total = _total_weight([cluster.weight for cluster in clusters])
    if total <= 0:
        return 0.0
    largest = max(cluster.weight for cluster in clusters)
    return min(1.0, max(0.0, largest / total))


def _make_cluster(normalized: str, members: list[Answer]) -> Cluster:
    """Build the cluster for one normalised answer from its members (any order)."""
    ordered = sorted(members, key=lambda answer: answer.key)
    representative = min(
        (answer.text for answer in members), key=lambda text: (len(text.strip()), text)
    )
    return Cluster(
        answer=normalized,
        representative=representative,
        keys=tuple(answer.key for answer in ordered),
        models=tuple(answer.model for answer in ordered),
        weight=_total_weight([answer.weight for answer in ordered]),
    )


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
