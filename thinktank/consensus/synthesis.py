"""Merge methods: turning several model answers into one, with its agreement.

This module owns the seam every merge method plugs into. A method is a function
``(answers, threshold) -> Synthesis`` registered by name in :data:`SYNTHESIS_METHODS`;
:func:`synthesize` dispatches on that name. Adding a method means writing such a
function and adding it to the registry. Only ``majority`` exists so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thinktank.consensus.agreement import Answer, Cluster, agreement_score, cluster_answers

__all__ = ["SYNTHESIS_METHODS", "Synthesis", "SynthesisMethod", "majority", "synthesize"]


@dataclass(frozen=True, slots=True)
class Synthesis:
    """The merged answer of several responses and how well they agreed."""

    content: str
    """The merged answer text."""
    score: float
    """:func:`~thinktank.consensus.agreement.agreement_score` of ``clusters``."""
    method: str
    """The merge method that produced this result (e.g. ``"majority"``)."""
    clusters: tuple[Cluster, ...]
    """All clusters of the input answers, heaviest first."""
    included_keys: tuple[str, ...]
    """Keys of the responses that support ``content``, sorted."""
    threshold: float
    """The agreement the caller asked for, in [0, 1]."""
    reached: bool
    """Whether ``score >= threshold``."""


SynthesisMethod = Callable[[Sequence[Answer], float], Synthesis]
"""A merge method: the answers and the agreement threshold in, a :class:`Synthesis` out."""


def majority(answers: Sequence[Answer], threshold: float) -> Synthesis:
    """Pick the answer of the heaviest cluster.

    The content is that cluster's representative raw text; ties between clusters of
    equal weight go to the smaller normalised answer string.

    Args:
        answers: The responses to merge (at least one).
        threshold: The agreement required for ``reached``, in [0, 1].

    Returns:
        The synthesis; ``included_keys`` are the winning cluster's keys.

    Raises:
        ValueError: No answers, a threshold outside [0, 1], or invalid answers (see
            :func:`~thinktank.consensus.agreement.cluster_answers`).
    """
    _check_threshold(threshold)
    if not answers:
        raise ValueError("no answers to merge")
    clusters = cluster_answers(answers)
    winner = clusters[0]
    score = agreement_score(clusters)
    return Synthesis(
        content=winner.representative,
        score=score,
        method="majority",
        clusters=tuple(clusters),
        included_keys=winner.keys,
        threshold=threshold,
        reached=score >= threshold,
    )


SYNTHESIS_METHODS: dict[str, SynthesisMethod] = {"majority": majority}
"""Merge methods by name; register a new method by adding it here."""


def synthesize(method: str, answers: Sequence[Answer], threshold: float) -> Synthesis:
    """Merge ``answers`` with the merge method registered as ``method``.

    Args:
        method: A key of :data:`SYNTHESIS_METHODS`.
        answers: The responses to merge (at least one).
        threshold: The agreement required for ``reached``, in [0, 1].

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
    return merge(answers, threshold)


def _check_threshold(threshold: float) -> None:
    """Raise ValueError unless ``threshold`` is a number in [0, 1]."""
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
