"""Long-answer equivalence: whether two explanations state the same answer in other words.

This module owns the long-answer layer of answer equivalence: the calibrated cuts of the
two similarity measures (:data:`SEMANTIC_CUT` for MiniLM embedding cosine,
:data:`LEXICAL_CUT` for :func:`~thinktank.consensus.similarity.lexical_similarity`), the
contradiction veto, the reasons recorded for a merge (``"same_meaning 0.87"``,
``"similar_wording 0.71"``), and the deterministic clustering that never puts two
contradicting answers in one cluster.

Similarity alone cannot tell "X causes Y" from "X does not cause Y" (they share every
word and most of their embedding), so a pair is vetoed whatever its score when one
answer negates the other's main clause (the first sentence: an odd number of negation
words in one and an even number in the other) or when both state numbers and the
numbers differ (in value or order). A missed merge only weakens a vote; a wrong merge
corrupts it, so the rule errs towards vetoing. Every function here is pure and
symmetric in its two answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from thinktank.consensus.equivalence import answer_tokens

__all__ = [
    "LEXICAL_CUT",
    "SAME_MEANING",
    "SEMANTIC_CUT",
    "SIMILAR_WORDING",
    "contradicts",
    "long_links",
    "veto_clusters",
]

SEMANTIC_CUT = 1.0
"""MiniLM cosine at or above which two long answers agree by default: 1.0, since no
lower cut reached precision 0.95 on the shipped long set
(``thinktank/eval/data/equivalence-long.jsonl``: 684 pairs, 166 the same; 618 are pairs
of real answers of the local Gemma 3 270M and SmolLM2 135M variants to one open
question). Measured by ``python bench/equivalence_long.py`` (with the veto; AUROC of
the raw cosine 0.756): precision 0.33 [0.29, 0.37] at the former default 0.6 (recall
0.92), 0.49 at 0.80, 0.65 at 0.90, 0.67 at 0.95 (95% Wilson intervals in the script's
output). Answers to one question share their topic, which is what the embedding sees:
a wrong explanation sits as close to a right one as a paraphrase does. Set the step's
``similarity_threshold`` to trade precision for recall."""
LEXICAL_CUT = 0.90
""":func:`~thinktank.consensus.similarity.lexical_similarity` at or above which two long
answers agree by default: the lowest cut (0.30 to 0.99 by 0.01) whose precision on the
shipped long set reaches 0.95, with the veto. Measured by ``python
bench/equivalence_long.py``: precision 1.00 [0.57, 1.00], recall 0.03 [0.01, 0.07]
(5 of 166); 5-fold cross-validated (seed 15, fold cuts 0.90 0.90 0.90 0.90 0.84):
held-out precision 1.00 [0.57, 1.00], recall 0.03. AUROC of the raw score 0.694; the
former default 0.6 had precision 0.53 [0.42, 0.64] and recall 0.24. A merge this
confident is rare: long answers mostly stay apart, which weakens a vote but never
corrupts it."""

SAME_MEANING = "same_meaning"
"""Two long answers whose embeddings agree (cosine at or above the cut)."""
SIMILAR_WORDING = "similar_wording"
"""Two long answers whose words agree (lexical similarity at or above the cut)."""

_NEGATIONS = frozenset({"not", "no", "never", "nor", "neither", "cannot", "none", "nothing"})
"""Words that deny a clause (``n't`` reads as ``not``: see the equivalence tokens)."""
_SENTENCE_END = frozenset({".", "!", "?", "\n"})
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")


def contradicts(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` cannot state the same answer: one negates the other's
    main clause (opposite negation parity in their first sentences), or both state
    numbers and the numbers differ (in value or order). Symmetric."""
    return _main_polarity(a) != _main_polarity(b) or _numbers_differ(a, b)


def long_links(
    texts: Sequence[str], similarity: Sequence[Sequence[float]], cut: float, reason: str
) -> list[list[str | None]]:
    """The symmetric matrix of merge reasons between long answers: ``"<reason> <score>"``
    (two decimals) where the similarity is at or above ``cut`` and the pair does not
    :func:`contradict <contradicts>`, else None (and None on the diagonal)."""
    size = len(texts)
    links: list[list[str | None]] = [[None] * size for _ in range(size)]
    for i in range(size):
        for j in range(i + 1, size):
            score = similarity[i][j]
            if score >= cut and not contradicts(texts[i], texts[j]):
                links[i][j] = links[j][i] = f"{reason} {score:.2f}"
    return links


def veto_clusters(
    texts: Sequence[str],
    similarity: Sequence[Sequence[float]],
    links: Sequence[Sequence[str | None]],
) -> list[list[int]]:
    """Single-linkage clusters of the ``links`` graph that never hold a contradicting
    pair: linked pairs are joined most similar first (ties by index), and a join that
    would put two contradicting answers together is skipped. Deterministic for a given
    order of ``texts`` (callers sort by key).

    Returns:
        The clusters as sorted index lists, in order of their smallest index.
    """
    size = len(texts)
    clash = [[contradicts(texts[i], texts[j]) for j in range(size)] for i in range(size)]
    edges = sorted(
        ((i, j) for i in range(size) for j in range(i + 1, size) if links[i][j] is not None),
        key=lambda edge: (-similarity[edge[0]][edge[1]], edge),
    )
    cluster = list(range(size))
    members: dict[int, list[int]] = {i: [i] for i in range(size)}
    for i, j in edges:
        left, right = cluster[i], cluster[j]
        if left == right or any(clash[p][q] for p in members[left] for q in members[right]):
            continue
        keep, gone = min(left, right), max(left, right)
        moved = members.pop(gone)
        for node in moved:
            cluster[node] = keep
        members[keep].extend(moved)
    groups: dict[int, list[int]] = {}
    for node in range(size):
        groups.setdefault(cluster[node], []).append(node)
    return sorted(groups.values(), key=min)


def _main_polarity(text: str) -> bool:
    """True when the first sentence of ``text`` holds an odd number of negation words."""
    count = 0
    words = 0
    for token in answer_tokens(text):
        if token in _SENTENCE_END and words:
            break
        words += token[0].isalnum()
        count += token in _NEGATIONS
    return count % 2 == 1


def _numbers_differ(a: str, b: str) -> bool:
    """Both texts hold numbers and their sequences differ ("3 then 5" vs "5 then 3")."""
    left, right = _NUMBER_RE.findall(a), _NUMBER_RE.findall(b)
    return bool(left) and bool(right) and left != right
