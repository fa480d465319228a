"""thinktank.eval.stats against hand-computed values and a few properties.

Every expected number is worked out in a comment next to it, from the textbook formula,
so a wrong library call or argument (continuity correction, one-sided test, ranks the
wrong way round) shows up as a wrong number.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinktank.eval.stats import (
    Bin,
    Coverage,
    Interval,
    McNemar,
    auroc,
    calibration,
    error_correlation,
    majority_accuracy_if_independent,
    mcnemar,
    selective,
    wilson,
)

Z95 = 1.959963984540054  # the 97.5% normal quantile


def wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), Wilson (1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


# --- Wilson ---------------------------------------------------------------------------


def test_wilson_8_of_10() -> None:
    # z² = 3.841459; centre = (0.8 + 0.192073) / 1.384146 = 0.716740;
    # half = 1.959964 · sqrt(0.016 + 0.009604) / 1.384146 = 0.226578
    # -> [0.490162, 0.943318] (the textbook 0.4902 - 0.9433).
    ci = wilson(8, 10)
    assert ci == Interval(estimate=0.8, low=ci.low, high=ci.high, confidence=0.95)
    assert ci.low == pytest.approx(0.490162, abs=1e-6)
    assert ci.high == pytest.approx(0.943318, abs=1e-6)
    assert (ci.low, ci.high) == pytest.approx(wilson_by_hand(8, 10), abs=1e-12)


def test_wilson_0_of_10() -> None:
    # p = 0: the interval starts at 0; high = 2 · 0.192073 / 1.384146 = 0.277533.
    ci = wilson(0, 10)
    assert ci.estimate == 0.0
    assert ci.low == 0.0
    assert ci.high == pytest.approx(0.277533, abs=1e-6)


def test_wilson_10_of_10() -> None:
    # Mirror image of 0/10: [1 - 0.277533, 1].
    ci = wilson(10, 10)
    assert ci.estimate == 1.0
    assert ci.high == 1.0
    assert ci.low == pytest.approx(0.722467, abs=1e-6)


def test_wilson_other_confidence() -> None:
    # 90%: z = 1.644854; 8/10 -> by the formula [0.541, 0.931] (narrower than at 95%).
    ci = wilson(8, 10, confidence=0.90)
    assert (ci.low, ci.high) == pytest.approx(wilson_by_hand(8, 10, 1.6448536269514722))
    assert ci.confidence == 0.90
    assert ci.high - ci.low < wilson(8, 10).high - wilson(8, 10).low


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "match"),
    [
        (0, 0, 0.95, "n is 0"),
        (11, 10, 0.95, "exceed"),
        (-1, 10, 0.95, "successes"),
        (1, -2, 0.95, "n must"),
        (True, 10, 0.95, "successes"),
        (5, 10, 1.0, "confidence"),
        (5, 10, 0.0, "confidence"),
    ],
)
def test_wilson_rejects_bad_input(successes: int, n: int, confidence: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wilson(successes, n, confidence)


@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_estimate_within_unit_interval(kn: tuple[int, int]) -> None:
    k, n = kn
    ci = wilson(k, n)
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert ci.estimate == k / n


# --- McNemar --------------------------------------------------------------------------


def binomial_two_sided(b: int, c: int) -> float:
    """min(1, 2 · sum_{i <= min(b,c)} C(b+c, i) / 2^(b+c)), written out directly."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_mcnemar_10_2() -> None:
    # n = 12, k = 2: (C(12,0) + C(12,1) + C(12,2)) / 4096 = (1 + 12 + 66) / 4096
    # = 79/4096; two-sided: 158/4096 = 0.038574.
    result = mcnemar(10, 2)
    assert result == McNemar(b=10, c=2, p_value=result.p_value)
    assert result.p_value == pytest.approx(158 / 4096, rel=1e-12)
    assert mcnemar(2, 10).p_value == pytest.approx(158 / 4096, rel=1e-12)


def test_mcnemar_small_cases() -> None:
    # (0, 5): 2 · 1/32 = 0.0625; (1, 4): 2 · (1 + 5)/32 = 0.375; (3, 3): capped at 1.
    assert mcnemar(0, 5).p_value == pytest.approx(0.0625)
    assert mcnemar(1, 4).p_value == pytest.approx(0.375)
    assert mcnemar(3, 3).p_value == 1.0


def test_mcnemar_no_discordant_items() -> None:
    assert mcnemar(0, 0) == McNemar(b=0, c=0, p_value=1.0)


@pytest.mark.parametrize(("b", "c"), [(-1, 2), (2, -1), (1.5, 2)])
def test_mcnemar_rejects_bad_counts(b: int, c: int) -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        mcnemar(b, c)


@given(st.integers(0, 300), st.integers(0, 300))
def test_mcnemar_matches_direct_binomial_sum(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else binomial_two_sided(b, c)
    assert mcnemar(b, c).p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert mcnemar(b, c).p_value == mcnemar(c, b).p_value


# --- AUROC ----------------------------------------------------------------------------


def auroc_by_pairs(scores: list[float], correct: list[bool]) -> float:
    """Every (correct, wrong) pair: 1 if the correct one scores higher, 1/2 if tied."""
    pos = [s for s, ok in zip(scores, correct, strict=True) if ok]
    neg = [s for s, ok in zip(scores, correct, strict=True) if not ok]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_perfect_and_reversed() -> None:
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0


def test_auroc_with_ties() -> None:
    # Correct: 0.9, 0.5; wrong: 0.8, 0.5. Pairs: 0.9>0.8 (1), 0.9>0.5 (1),
    # 0.5<0.8 (0), 0.5=0.5 (1/2) -> 2.5 / 4 = 0.625.
    assert auroc([0.9, 0.8, 0.5, 0.5], [True, False, True, False]) == pytest.approx(0.625)
    # All tied: every pair half -> 0.5.
    assert auroc([0.3] * 4, [True, False, True, False]) == pytest.approx(0.5)


def test_auroc_one_misordered_pair() -> None:
    # Correct: 0.9, 0.4, 0.7; wrong: 0.6, 0.2. Pairs won: 0.9 beats both (2),
    # 0.4 beats 0.2 only (1), 0.7 beats both (2) -> 5 / 6.
    assert auroc([0.9, 0.6, 0.4, 0.7, 0.2], [True, False, True, True, False]) == pytest.approx(
        5 / 6
    )


def test_auroc_undefined_when_one_class() -> None:
    assert auroc([0.1, 0.9], [True, True]) is None
    assert auroc([0.1, 0.9], [False, False]) is None
    assert auroc([], []) is None


def test_auroc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 scores but 1 correctness"):
        auroc([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="score 1 is nan"):
        auroc([0.1, math.nan], [True, False])


scored_items = st.lists(
    st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1), st.booleans()),
    min_size=2,
    max_size=40,
).filter(lambda items: len({ok for _, ok in items}) == 2)


@given(scored_items)
def test_auroc_reversed_scores_is_one_minus(items: list[tuple[float, bool]]) -> None:
    scores = [s for s, _ in items]
    correct = [ok for _, ok in items]
    forward = auroc(scores, correct)
    backward = auroc([-s for s in scores], correct)
    assert forward is not None and backward is not None
    assert backward == pytest.approx(1.0 - forward, abs=1e-12)
    assert forward == pytest.approx(auroc_by_pairs(scores, correct), abs=1e-12)


# --- calibration and selective answering ----------------------------------------------


def test_calibration_tiny_example() -> None:
    # 4 bins of width 0.25. 0.0 -> bin 0; 0.3 and 0.35 -> bin 1 (mean 0.325, one of
    # two right); nothing in [0.5, 0.75); 1.0 -> the last bin, closed at 1.
    bins = calibration([0.0, 0.3, 0.35, 1.0], [True, False, True, True], bins=4)
    assert bins[0] == Bin(0.0, 0.25, 1, 0.0, 1.0)
    assert bins[1].count == 2
    assert bins[1].mean_score == pytest.approx(0.325)
    assert bins[1].accuracy == 0.5
    assert bins[2] == Bin(0.5, 0.75, 0, None, None)
    assert bins[3] == Bin(0.75, 1.0, 1, 1.0, 1.0)


def test_calibration_edges_go_to_the_bin_they_start() -> None:
    # 0.3 and 0.7 are edges of 10 bins; 0.3 · 10 and 0.57 · 100 are not exact in
    # floating point, yet each score lands in the bin it opens.
    ten = calibration([0.3, 0.7], [True, True])
    assert [b.count for b in ten] == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    hundred = calibration([0.57], [True], bins=100)
    assert hundred[57].count == 1 and hundred[57].low == 0.57


def test_calibration_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"score 0 is 1\.5, outside"):
        calibration([1.5], [True])
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        calibration([0.5], [True], bins=0)


@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), max_size=50), st.integers(1, 20))
def test_calibration_bins_partition_the_items(items: list[tuple[float, bool]], n_bins: int) -> None:
    bins = calibration([s for s, _ in items], [ok for _, ok in items], bins=n_bins)
    assert len(bins) == n_bins
    assert sum(b.count for b in bins) == len(items)
    for b in bins:
        if b.mean_score is not None:
            assert b.low <= b.mean_score <= b.high


def test_selective_tiny_example() -> None:
    # Sorted: 0.9 (right), 0.9 (wrong), 0.5 (right), 0.1 (wrong). The two 0.9s go
    # together: 1/2 at coverage 0.5, then 2/3 at 0.75, then 2/4 at 1.
    rows = selective([0.9, 0.5, 0.9, 0.1], [True, True, False, False])
    assert rows == [
        Coverage(0.9, 2, 0.5, 0.5),
        Coverage(0.5, 3, 0.75, 2 / 3),
        Coverage(0.1, 4, 1.0, 0.5),
    ]


def test_selective_empty() -> None:
    assert selective([], []) == []


@given(st.lists(st.tuples(st.sampled_from([0.1, 0.5, 0.9]), st.booleans()), min_size=1))
def test_selective_rows(items: list[tuple[float, bool]]) -> None:
    scores = [s for s, _ in items]
    correct = [ok for _, ok in items]
    rows = selective(scores, correct)
    assert [r.threshold for r in rows] == sorted(set(scores), reverse=True)
    for r in rows:
        kept = [ok for s, ok in items if s >= r.threshold]
        assert r.answered == len(kept)
        assert r.accuracy == pytest.approx(sum(kept) / len(kept))
    assert rows[-1].coverage == 1.0


# --- independent majority and error correlation ---------------------------------------


def test_majority_of_three_at_072() -> None:
    # P(at least 2 of 3) = 3 · 0.72² · 0.28 + 0.72³ = 0.435456 + 0.373248 = 0.808704:
    # the "majority of three at 72% gives 81%".
    assert majority_accuracy_if_independent([0.72] * 3) == pytest.approx(0.808704, abs=1e-12)


def test_majority_small_panels() -> None:
    # One voter: its own accuracy. Two voters: a 1-1 split is no strict majority, so
    # both must be right: 0.9 · 0.6 = 0.54. Mixed three: P(≥2) with 0.9, 0.8, 0.5 =
    # 0.9·0.8·0.5 + 0.9·0.8·0.5 + 0.9·0.2·0.5 + 0.1·0.8·0.5 = 0.36+0.36+0.09+0.04 = 0.85.
    assert majority_accuracy_if_independent([0.7]) == pytest.approx(0.7)
    assert majority_accuracy_if_independent([0.9, 0.6]) == pytest.approx(0.54)
    assert majority_accuracy_if_independent([0.9, 0.8, 0.5]) == pytest.approx(0.85)


def test_majority_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no voters"):
        majority_accuracy_if_independent([])
    with pytest.raises(ValueError, match=r"accuracy 1 is 1\.2"):
        majority_accuracy_if_independent([0.5, 1.2])


@given(st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_majority_matches_enumeration(accuracies: list[float]) -> None:
    n = len(accuracies)
    total = 0.0
    for outcome in itertools.product([False, True], repeat=n):
        if sum(outcome) * 2 > n:
            total += math.prod(
                p if ok else 1 - p for p, ok in zip(accuracies, outcome, strict=True)
            )
    assert majority_accuracy_if_independent(accuracies) == pytest.approx(total, abs=1e-12)


def phi_by_table(a: list[bool], b: list[bool]) -> float:
    """(n11·n00 - n10·n01) / sqrt(n1.·n0.·n.1·n.0) from the 2x2 table."""
    n11 = sum(x and y for x, y in zip(a, b, strict=True))
    n10 = sum(x and not y for x, y in zip(a, b, strict=True))
    n01 = sum(not x and y for x, y in zip(a, b, strict=True))
    n00 = sum(not x and not y for x, y in zip(a, b, strict=True))
    return (n11 * n00 - n10 * n01) / math.sqrt(
        (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    )


def test_error_correlation_known_values() -> None:
    # Table n11=2, n10=1, n01=0, n00=2: (2·2 - 1·0) / sqrt(3·2·2·3) = 4/6.
    a = [True, True, False, False, True]
    b = [True, False, False, False, True]
    assert error_correlation(a, b) == pytest.approx(2 / 3)
    assert error_correlation(a, a) == pytest.approx(1.0)
    assert error_correlation(a, [not x for x in a]) == pytest.approx(-1.0)
    # Independent by construction: each combination once -> 0.
    assert error_correlation([True, True, False, False], [True, False, True, False]) == (
        pytest.approx(0.0, abs=1e-12)
    )


def test_error_correlation_undefined() -> None:
    assert error_correlation([True, True], [True, False]) is None
    assert error_correlation([True, False], [False, False]) is None
    assert error_correlation([], []) is None
    with pytest.raises(ValueError, match="3 and 2 items"):
        error_correlation([True, False, True], [True, False])


@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=60).filter(
        lambda p: len({x for x, _ in p}) == 2 and len({y for _, y in p}) == 2
    )
)
def test_error_correlation_is_phi(pairs: list[tuple[bool, bool]]) -> None:
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    r = error_correlation(a, b)
    assert r is not None and -1.0 <= r <= 1.0
    assert r == pytest.approx(phi_by_table(a, b), abs=1e-9)
    # Errors rather than correctness: both flipped, same phi.
    assert error_correlation([not x for x in a], [not y for y in b]) == pytest.approx(r)
    assert error_correlation(b, a) == pytest.approx(r)


def test_importing_stats_does_not_load_scipy() -> None:
    # scipy is heavy and optional (the research extra); only the functions need it.
    code = "import sys, thinktank.eval.stats; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
