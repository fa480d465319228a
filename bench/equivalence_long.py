"""Calibrate the long-answer cuts: precision and recall of similarity on labelled pairs.

Reads ``thinktank/eval/data/equivalence-long.jsonl`` (pairs of long answers labelled
same / not same by their meaning) and prints, for MiniLM embedding cosine and for
:func:`~thinktank.consensus.similarity.lexical_similarity`, each with the contradiction
veto of :mod:`thinktank.consensus.long_equivalence`: precision and recall (95% Wilson
intervals) at each cut, the AUROC of the raw score, and the chosen cut, the lowest
cut whose precision is at least 0.95. The choice is cross-validated (5 folds, seed
15): on each fold the rule is applied to the other four and judged on the held-out
one, and the pooled held-out precision and recall are printed. The constants in
``long_equivalence.py`` quote this script's output.

    python bench/equivalence_long.py            # needs the embeddings extra for MiniLM
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from thinktank.consensus.long_equivalence import contradicts  # noqa: E402
from thinktank.consensus.similarity import (  # noqa: E402
    SentenceTransformerEmbedder,
    lexical_similarity,
    similarity_matrix,
)
from thinktank.eval.stats import auroc, wilson  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "thinktank" / "eval" / "data"
PAIRS = DATA / "equivalence-long.jsonl"
CUTS = tuple(round(0.30 + 0.01 * step, 2) for step in range(70))
"""Cuts tried: 0.30, 0.31, ..., 0.99 (the table prints every fifth)."""
TARGET_PRECISION = 0.95
FOLDS = 5
SEED = 15


def load_pairs(path: Path = PAIRS) -> list[dict[str, object]]:
    """The labelled pairs."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def semantic_scores(pairs: Sequence[dict[str, object]]) -> list[float]:
    """MiniLM cosine of each pair (each distinct text embedded once)."""
    texts = sorted({str(p[side]) for p in pairs for side in ("a", "b")})
    index = {text: i for i, text in enumerate(texts)}
    matrix = similarity_matrix(texts, embedder=SentenceTransformerEmbedder())
    return [matrix[index[str(p["a"])]][index[str(p["b"])]] for p in pairs]


def lexical_scores(pairs: Sequence[dict[str, object]]) -> list[float]:
    """:func:`lexical_similarity` of each pair."""
    return [lexical_similarity(str(p["a"]), str(p["b"])) for p in pairs]


def counts(
    scores: Sequence[float], vetoed: Sequence[bool], labels: Sequence[bool], cut: float
) -> tuple[int, int, int]:
    """(true merges, merges, positives) at ``cut`` with the veto."""
    merged = [s >= cut and not v for s, v in zip(scores, vetoed, strict=True)]
    hits = sum(m and y for m, y in zip(merged, labels, strict=True))
    return hits, sum(merged), sum(labels)


def choose_cut(scores: Sequence[float], vetoed: Sequence[bool], labels: Sequence[bool]) -> float:
    """The lowest cut whose precision reaches the target (1.0 when none does)."""
    for cut in CUTS:
        hits, merges, _ = counts(scores, vetoed, labels, cut)
        if merges and hits / merges >= TARGET_PRECISION:
            return cut
    return 1.0


def cross_validated(
    scores: Sequence[float], vetoed: Sequence[bool], labels: Sequence[bool]
) -> tuple[int, int, int, list[float]]:
    """Pooled held-out (true merges, merges, positives) of the cut rule, and each fold's cut."""
    order = list(range(len(scores)))
    random.Random(SEED).shuffle(order)
    hits = merges = positives = 0
    cuts = []
    for fold in range(FOLDS):
        held = set(order[fold::FOLDS])
        train = [i for i in order if i not in held]
        cut = choose_cut(
            [scores[i] for i in train], [vetoed[i] for i in train], [labels[i] for i in train]
        )
        cuts.append(cut)
        test = sorted(held)
        h, m, p = counts(
            [scores[i] for i in test], [vetoed[i] for i in test], [labels[i] for i in test], cut
        )
        hits, merges, positives = hits + h, merges + m, positives + p
    return hits, merges, positives, cuts


def _interval(successes: int, n: int) -> str:
    if not n:
        return "   -                "
    ci = wilson(successes, n)
    return f"{ci.estimate:.3f} [{ci.low:.2f}, {ci.high:.2f}]"


def report(
    name: str, scores: Sequence[float], vetoed: Sequence[bool], labels: Sequence[bool]
) -> None:
    """Print one measure's table, AUROC, chosen cut and cross-validated figures."""
    area = auroc(list(scores), list(labels))
    print(f"\n== {name}: AUROC {area:.3f} (raw score, no veto)")
    print(f"{'cut':>5}  {'merges':>6}  {'precision [95% CI]':<22}  recall [95% CI]")
    for cut in CUTS[::5]:
        hits, merges, positives = counts(scores, vetoed, labels, cut)
        print(
            f"{cut:5.2f}  {merges:6d}  {_interval(hits, merges):<22}  {_interval(hits, positives)}"
        )
    chosen = choose_cut(scores, vetoed, labels)
    hits, merges, positives, cuts = cross_validated(scores, vetoed, labels)
    if chosen < 1.0:
        hits, merges, positives = counts(scores, vetoed, labels, chosen)
        print(
            f"chosen cut (lowest with precision >= {TARGET_PRECISION}): {chosen:.2f}: "
            f"precision {_interval(hits, merges)}, recall {_interval(hits, positives)}"
        )
    else:
        print(f"chosen cut: none below 1.00 reaches precision {TARGET_PRECISION}")
    print(
        f"5-fold held-out (fold cuts {', '.join(f'{c:.2f}' for c in cuts)}): "
        f"precision {_interval(hits, merges)} ({hits}/{merges}), "
        f"recall {_interval(hits, positives)} ({hits}/{positives})"
    )


def main() -> None:
    """Print the figures for both measures."""
    pairs = load_pairs()
    labels = [bool(p["same"]) for p in pairs]
    vetoed = [contradicts(str(p["a"]), str(p["b"])) for p in pairs]
    print(
        f"{len(pairs)} pairs, {sum(labels)} same; the veto blocks {sum(vetoed)} "
        f"({sum(v and y for v, y in zip(vetoed, labels, strict=True))} of them labelled same)"
    )
    report("lexical_similarity", lexical_scores(pairs), vetoed, labels)
    if SentenceTransformerEmbedder.available():
        report("MiniLM cosine", semantic_scores(pairs), vetoed, labels)
    else:
        print("\nMiniLM: the embeddings extra is not installed")


if __name__ == "__main__":
    main()
