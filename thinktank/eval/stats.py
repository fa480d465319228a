"""The statistics an experiment report needs (issue #14, "The report").

This module owns the numbers computed from per-item outcomes: confidence intervals on
accuracy (Wilson), paired comparison of two configurations (exact McNemar), how well a
confidence score separates right from wrong answers (AUROC, calibration bins, selective
answering), and what independent errors would predict for a majority vote next to how
correlated the errors actually are. It knows nothing of datasets, scorers or the store:
callers pass plain counts, scores and booleans.

scipy.stats does the statistics wherever it has the function (the ``research`` extra);
it is imported inside the functions so that importing thinktank stays light.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Bin",
    "Coverage",
    "Interval",
    "McNemar",
    "auroc",
    "calibration",
    "error_correlation",
    "majority_accuracy_if_independent",
    "mcnemar",
    "selective",
    "wilson",
]


@dataclass(frozen=True)
class Interval:
    """A proportion with its confidence interval.

    Attributes:
        estimate: The observed proportion, successes / n.
        low: Lower bound, in [0, estimate].
        high: Upper bound, in [estimate, 1].
        confidence: The confidence level, e.g. 0.95.
    """

    estimate: float
    low: float
    high: float
    confidence: float


@dataclass(frozen=True)
class McNemar:
    """An exact McNemar test of two paired configurations.

    Attributes:
        b: Items the first configuration got right and the second wrong.
        c: Items the first configuration got wrong and the second right.
        p_value: Exact two-sided p-value (binomial test of min(b, c) of b + c at 0.5).
    """

    b: int
    c: int
    p_value: float


@dataclass(frozen=True)
class Bin:
    """One calibration bin: items whose score falls in [low, high) (the last bin is
    closed at 1). ``mean_score`` and ``accuracy`` are None when the bin is empty."""

    low: float
    high: float
    count: int
    mean_score: float | None
    accuracy: float | None


@dataclass(frozen=True)
class Coverage:
    """Selective answering at one score cut: answer only the items scoring at least
    ``threshold``.

    Attributes:
        threshold: The score cut (inclusive).
        answered: How many items score at least ``threshold``.
        coverage: answered / all items.
        accuracy: Fraction of the answered items that are correct.
    """

    threshold: float
    answered: int
    coverage: float
    accuracy: float


def _check_count(name: str, value: int) -> None:
    # bool is an int subclass; a True passed as a count is a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval for ``successes`` out of ``n`` (no continuity correction).

    Raises:
        ValueError: n is 0 (no proportion to estimate), counts are negative or not
            integers, successes > n, or confidence is not strictly between 0 and 1.
    """
    _check_count("successes", successes)
    _check_count("n", n)
    if n == 0:
        raise ValueError("wilson: n is 0, there is no proportion to give an interval for")
    if successes > n:
        raise ValueError(f"wilson: successes ({successes}) exceed n ({n})")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"wilson: confidence must be in (0, 1), got {confidence!r}")
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    estimate = successes / n
    # Rounding can leave the bound a hair past the estimate at 0 or n successes
    # (e.g. 0.9999999999999998 for 10/10); the interval must contain its estimate.
    low = min(max(float(ci.low), 0.0), estimate)
    high = max(min(float(ci.high), 1.0), estimate)
    return Interval(estimate=estimate, low=low, high=high, confidence=confidence)


def mcnemar(b: int, c: int) -> McNemar:
    """Exact two-sided McNemar test from the two discordant counts.

    Under the null hypothesis each discordant item is equally likely to favour either
    configuration, so min(b, c) is binomial(b + c, 0.5). No discordant item at all is
    no evidence of a difference: p = 1.

    Raises:
        ValueError: b or c is negative or not an integer.
    """
    _check_count("b", b)
    _check_count("c", c)
    if b + c == 0:
        return McNemar(b=b, c=c, p_value=1.0)
    from scipy.stats import binomtest

    p_value = float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)
    return McNemar(b=b, c=c, p_value=min(p_value, 1.0))


def _check_pairs(what: str, scores: Sequence[float], correct: Sequence[bool]) -> None:
    if len(scores) != len(correct):
        raise ValueError(
            f"{what}: {len(scores)} scores but {len(correct)} correctness values; "
            "they must be paired item by item"
        )
    for i, s in enumerate(scores):
        if not math.isfinite(s):
            raise ValueError(f"{what}: score {i} is {s!r}, not a finite number")


def auroc(scores: Sequence[float], correct: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` as a predictor of ``correct``.

    The probability that a correct item outscores a wrong one, ties counted half: the
    Mann-Whitney U of the correct items over n_correct * n_wrong. None when every item
    is correct or every item is wrong (nothing to separate).

    Raises:
        ValueError: the sequences differ in length or a score is not finite.
    """
    _check_pairs("auroc", scores, correct)
    n_pos = sum(1 for ok in correct if ok)
    n_neg = len(correct) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    # Mid-ranks give tied pairs half a win each, which is what U counts.
    ranks = rankdata(list(scores), method="average")
    rank_sum = float(sum(r for r, ok in zip(ranks, correct, strict=True) if ok))
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def calibration(scores: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[Bin]:
    """Reliability bins: ``bins`` equal-width bins over [0, 1], each with its count,
    mean score and accuracy. Every bin is returned, empty ones too, so tables and plots
    of different configurations line up.

    Raises:
        ValueError: lengths differ, bins < 1, or a score is outside [0, 1].
    """
    _check_pairs("calibration", scores, correct)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"calibration: bins must be a positive integer, got {bins!r}")
    for i, s in enumerate(scores):
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"calibration: score {i} is {s!r}, outside [0, 1]")
    # i / bins is the float nearest each edge, as a literal like 0.3 is; bisecting on
    # these (rather than int(score * bins)) puts a score equal to an edge in the bin
    # that starts there.
    edges = [i / bins for i in range(bins + 1)]
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, s in enumerate(scores):
        members[min(bisect_right(edges, s) - 1, bins - 1)].append(i)
    out: list[Bin] = []
    for k, items in enumerate(members):
        count = len(items)
        mean = sum(scores[i] for i in items) / count if count else None
        acc = sum(1 for i in items if correct[i]) / count if count else None
        out.append(Bin(edges[k], edges[k + 1], count, mean, acc))
    return out


def selective(scores: Sequence[float], correct: Sequence[bool]) -> list[Coverage]:
    """Accuracy at each coverage level when only items scoring at least a cut are
    answered, one row per distinct score from the highest down (items with equal
    scores are answered or skipped together). Coverage rises to 1.0 in the last row;
    no items give no rows.

    Raises:
        ValueError: the sequences differ in length or a score is not finite.
    """
    _check_pairs("selective", scores, correct)
    n = len(scores)
    order = sorted(range(n), key=lambda i: scores[i], reverse=True)
    out: list[Coverage] = []
    right = 0
    for pos, i in enumerate(order):
        right += 1 if correct[i] else 0
        answered = pos + 1
        # A row closes only after the last item of a tie group.
        if answered == n or scores[order[answered]] != scores[i]:
            out.append(Coverage(scores[i], answered, answered / n, right / answered))
    return out


def majority_accuracy_if_independent(accuracies: Sequence[float]) -> float:
    """The accuracy of a strict-majority vote of voters that err independently.

    The number of correct voters is Poisson-binomial; this is the exact probability
    that more than half are correct. A tie (an even panel split evenly) counts as wrong,
    as a strict majority requires. Three voters at 0.72 give 0.808704.

    Raises:
        ValueError: no voters, or an accuracy outside [0, 1].
    """
    if not accuracies:
        raise ValueError("majority_accuracy_if_independent: no voters")
    for i, p in enumerate(accuracies):
        if not 0.0 <= p <= 1.0:
            raise ValueError(
                f"majority_accuracy_if_independent: accuracy {i} is {p!r}, outside [0, 1]"
            )
    # dist[k] = P(exactly k of the voters so far are correct), one voter at a time.
    dist = [1.0]
    for p in accuracies:
        nxt = [0.0] * (len(dist) + 1)
        for k, q in enumerate(dist):
            nxt[k] += q * (1.0 - p)
            nxt[k + 1] += q * p
        dist = nxt
    n = len(accuracies)
    return math.fsum(dist[k] for k in range(n // 2 + 1, n + 1))


def error_correlation(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """The phi coefficient between two models' (or samples') error indicators.

    ``a`` and ``b`` say, item by item, whether each was correct; flipping both to error
    indicators leaves phi unchanged. 0 is what independent errors give; near 1 means
    they fail on the same items. None when undefined: fewer than two items, or either
    side constant (all right or all wrong).

    Raises:
        ValueError: the sequences differ in length.
    """
    if len(a) != len(b):
        raise ValueError(
            f"error_correlation: {len(a)} and {len(b)} items; they must be paired item by item"
        )
    if len(set(map(bool, a))) < 2 or len(set(map(bool, b))) < 2:
        return None
    from scipy.stats import pearsonr

    # Pearson's r of two 0/1 variables is the phi coefficient.
    r = float(pearsonr([float(x) for x in a], [float(y) for y in b]).statistic)
    return max(-1.0, min(1.0, r))
