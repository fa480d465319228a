"""List answers: splitting a response into items, and merging items across responses.

Some steps ask for a list rather than one answer: code-review findings, risks, test
cases. Their responses agree item by item, not as wholes. This module owns how a
response is split into items (:func:`extract_items`) and how the items of several
responses are matched up (:func:`merge_items`), for the ``union`` merge method.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from thinktank.consensus.agreement import Answer, connected_components
from thinktank.consensus.options import ITEM_THRESHOLD, MergeOptions, ResolvedAgreement
from thinktank.consensus.similarity import normalize_text, similarity_matrix

__all__ = ["MergedItem", "extract_items", "merge_items"]

_LIST_ITEM_RE = re.compile(r"[ \t]*(?:[-*•+]|\d{1,3}[.)])[ \t]+(?P<item>\S.*)")
"""A bulleted (``-``, ``*``, ``•``, ``+``) or numbered (``1.``, ``1)``) line."""
_FENCE_RE = re.compile(r"[ \t]*(?:```|~~~)")


@dataclass(frozen=True, slots=True)
class MergedItem:
    """One item of a merged list, with every response that listed it."""

    text: str
    """The item as one response wrote it (the most typical wording of the group)."""
    models: tuple[str, ...]
    """The distinct models that listed it, sorted."""
    keys: tuple[str, ...]
    """The responses that listed it, sorted."""


def extract_items(text: str) -> list[str]:
    """Split a response into list items.

    When the response has bulleted (``-``, ``*``, ``•``, ``+``) or numbered (``1.``,
    ``1)``) lines, those are the items, without their markers; an indented line right
    after an item continues it, and other lines (an introduction, a closing remark) are
    ignored. Otherwise every non-empty line is an item. Code fences and the lines inside
    them never start items. Items are stripped; an item repeated within the response
    (equal :func:`~thinktank.consensus.similarity.normalize_text`) is kept once.

    Args:
        text: A raw response.

    Returns:
        The items in the order they appear.
    """
    lines = _outside_fences(text.splitlines())
    has_list = any(_LIST_ITEM_RE.fullmatch(line) for line in lines)
    items: list[str] = []
    continuing = False
    for line in lines:
        match = _LIST_ITEM_RE.fullmatch(line)
        if not has_list:
            if line.strip():
                items.append(line.strip())
        elif match is not None:
            items.append(match.group("item").strip())
            continuing = True
        elif continuing and line.strip() and line[:1] in {" ", "\t"}:
            items[-1] = f"{items[-1]} {line.strip()}"
        else:
            continuing = False
    kept: list[str] = []
    seen: set[str] = set()
    for item in items:
        form = normalize_text(item) or item
        if form not in seen:
            seen.add(form)
            kept.append(item)
    return kept


@dataclass(frozen=True, slots=True)
class _Item:
    """One item of one response."""

    answer: Answer
    position: int
    """Index of the item within its response."""
    text: str
    rank: tuple[float, int, str]
    """Its response's tie-break key (:meth:`MergeOptions.tie_rank`; smaller wins)."""


def merge_items(
    answers: Sequence[Answer], mode: ResolvedAgreement, options: MergeOptions
) -> list[MergedItem]:
    """Match the items of several responses and credit each to every model that listed it.

    Items of different responses are linked when they agree: equal
    :func:`~thinktank.consensus.similarity.normalize_text` (``exact``), or similarity at
    or above ``options.similarity_threshold`` (``lexical``, or ``semantic`` with the
    embedder). Items of the same response are never linked directly (the model listed
    them apart); linked items form one merged item (connected components, so the result
    does not depend on the order of ``answers``).

    A merged item's text is its most typical wording: the member with the highest
    similarity sum to the others, ties to the shortest, then by ``options.tie_break``.
    Merged items are ordered by how many models listed them (most first), then by their
    earliest position in any response, then by ``options.tie_break`` applied to the
    responses that listed them (never by the alphabet).

    Args:
        answers: The responses (keys unique), in any order.
        mode: The agreement measure for items.
        options: Threshold and embedder.

    Returns:
        The merged items.
    """
    ranks = {
        answer.key: options.tie_rank(
            answer.model,
            answer.weight * options.model_weight(answer.model),
            answer.arrival,
            answer.key,
        )
        for answer in answers
    }
    items = [
        _Item(answer, position, text, ranks[answer.key])
        for answer in sorted(answers, key=lambda answer: answer.key)
        for position, text in enumerate(extract_items(answer.text))
    ]
    if mode == "exact":
        forms = [normalize_text(item.text) for item in items]
        similarity = [[1.0 if a == b else 0.0 for b in forms] for a in forms]
        threshold = 1.0
    else:
        embedder = options.embedder if mode == "semantic" else None
        similarity = similarity_matrix([item.text for item in items], embedder=embedder)
        threshold = (
            ITEM_THRESHOLD if options.similarity_threshold is None else options.similarity_threshold
        )
    groups = connected_components(
        len(items),
        lambda i, j: items[i].answer.key != items[j].answer.key and similarity[i][j] >= threshold,
    )
    merged: list[tuple[tuple[int, int, tuple[float, int, str], int], MergedItem]] = []
    for members in groups:
        best = min(
            members,
            key=lambda i: (
                -math.fsum(similarity[i][j] for j in members),
                len(items[i].text),
                items[i].rank,
                items[i].position,
            ),
        )
        text = items[best].text
        models = tuple(sorted({items[i].answer.model for i in members}))
        keys = tuple(sorted({items[i].answer.key for i in members}))
        first = min(items[i].position for i in members)
        # The best-ranked response's item decides (its position makes the order total).
        lead = min((items[i].rank, items[i].position) for i in members)
        merged.append(((-len(models), first, *lead), MergedItem(text, models, keys)))
    merged.sort(key=lambda pair: pair[0])
    return [item for _, item in merged]


def _outside_fences(lines: Sequence[str]) -> list[str]:
    """The lines outside fenced code blocks (fence lines dropped)."""
    kept: list[str] = []
    inside = False
    for line in lines:
        if _FENCE_RE.match(line):
            inside = not inside
        elif not inside:
            kept.append(line)
    return kept
