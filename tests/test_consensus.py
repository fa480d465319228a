"""Tests for thinktank.consensus: answer normalisation, clustering, agreement, merge methods."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktank.consensus import (
    SYNTHESIS_METHODS,
    Answer,
    Cluster,
    Synthesis,
    agreement_score,
    cluster_answers,
    extract_answer,
    majority,
    normalize_answer,
    synthesize,
)

TEXTS = [
    "Paris",
    "paris.",
    "The answer is Paris",
    "London",
    "Answer: London",
    "42",
    "forty-two",
    "yes",
    "no",
    "",
    "   ",
    "\\boxed{7}",
    "7",
]
MODELS = ["alpha", "beta", "gamma"]
FRAGMENTS = [
    "answer",
    "Answer:",
    "the answer is ",
    "\\boxed{",
    "{",
    "}",
    "(",
    ")",
    "the ",
    "a ",
    "-",
    "+",
    ".",
    ",",
    "%",
    "*",
    "_",
    '"',
    "«",
    "42",
    "000",
    "1,000",
    "forty",
    "two",
    "hundred",
    "and",
    "thousand",
    "yes",
    "n",
    " ",
    "\n",
    "\u2028",
    "：",
    "ß",
    "İ",
    "\u0301",
    "Paris",
    "＼ｂｏｘｅｄ｛",
]

fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=10).map("".join)
any_text = st.one_of(st.text(max_size=40), fragment_text)
weights = st.one_of(
    st.sampled_from([0.5, 1.0, 2.0]),
    st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False),
)
fast = settings(max_examples=60, deadline=None)


@st.composite
def answer_lists(draw: st.DrawFn, *, max_size: int = 8) -> list[Answer]:
    """Answers with unique keys, texts from a small pool so that clusters form."""
    rows = draw(
        st.lists(
            st.tuples(st.sampled_from(TEXTS), st.sampled_from(MODELS), weights),
            max_size=max_size,
        )
    )
    return [
        Answer(f"k{index}", model, text, weight) for index, (text, model, weight) in enumerate(rows)
    ]


def _agree(texts: Sequence[str]) -> bool:
    """Whether all texts normalise to the same answer."""
    return len({normalize_answer(text) for text in texts}) == 1


# --- extraction -------------------------------------------------------------------


def test_extract_prefers_last_boxed() -> None:
    """The last \\boxed{...} wins over answer markers and later lines."""
    text = "First \\boxed{1}, then \\boxed{2}.\nAnswer: 3\nDone."
    assert extract_answer(text) == "2"


def test_extract_boxed_with_nested_braces() -> None:
    """A boxed answer may contain balanced braces."""
    assert extract_answer("so \\boxed{\\frac{1}{2}} holds") == "\\frac{1}{2}"


def test_extract_unbalanced_boxed_falls_back() -> None:
    """An unclosed \\boxed{ is skipped in favour of an earlier balanced one."""
    assert extract_answer("\\boxed{a} and \\boxed{b") == "a"


def test_extract_last_answer_marker() -> None:
    """The last Answer: / Final answer: / The answer is marker gives the answer."""
    text = "Answer: 1\nHmm, no.\nThe final answer is 2\nThanks for asking."
    assert extract_answer(text) == "2"
    assert extract_answer("FINAL ANSWER: Rome") == "Rome"
    assert extract_answer("**Answer:** Rome") == "Rome"


def test_extract_answer_on_next_line() -> None:
    """An answer marker at the end of a line takes the next non-empty line."""
    assert extract_answer("Answer:\n\n  Rome  \n") == "Rome"


def test_extract_last_nonempty_line() -> None:
    """Multi-line text without markers gives its last non-empty line."""
    assert extract_answer("Let me think.\nIt is Rome.\n\n   \n") == "It is Rome."


def test_extract_whole_single_line() -> None:
    """A single line without markers is the answer itself, stripped."""
    assert extract_answer("  Rome  ") == "Rome"
    assert extract_answer("") == ""


# --- normalisation: known cases ----------------------------------------------------


def test_paris_variants_agree() -> None:
    """Plain, punctuated, marked and boxed forms of the same answer agree."""
    variants = ["Paris", "paris.", "The answer is Paris", "Answer: Paris", "\\boxed{Paris}"]
    assert _agree(variants)
    assert normalize_answer("Paris") == "paris"


def test_number_variants_agree() -> None:
    """Digits, decimals with zeros, a plus sign and number words agree."""
    assert _agree(["42", "42.0", "42.00", "+42", "forty-two", "Forty two", "The answer is 42."])
    assert normalize_answer("forty-two") == "42"


def test_thousands_agree() -> None:
    """Grouping commas and "one thousand" give the same number."""
    assert _agree(["1,000", "one thousand", "1000", "1000.000", "a thousand"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zero", "0"),
        ("nineteen", "19"),
        ("one hundred and twenty-one", "121"),
        ("twelve hundred", "1200"),
        ("a hundred", "100"),
        ("two million three hundred thousand and five", "2300005"),
        ("nine hundred ninety-nine thousand, nine hundred ninety-nine", "999999"),
    ],
)
def test_number_words(text: str, expected: str) -> None:
    """English number words up to the millions parse to their value."""
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("text", ["one two", "forty forty", "thousand million", "1e5", "1,5"])
def test_non_numbers_stay_text(text: str) -> None:
    """Ill-formed number words and other notations are left as text."""
    assert normalize_answer(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.50", "0.5"),
        ("-0.0", "0"),
        (".5", "0.5"),
        ("-3.140", "-3.14"),
        ("007", "7"),
        ("50.0%", "50%"),
        ("123456789012345678901234567890.10", "123456789012345678901234567890.1"),
    ],
)
def test_decimal_canonical_form(text: str, expected: str) -> None:
    """Numbers are written exactly, without trailing zeros, exponent or negative zero."""
    assert normalize_answer(text) == expected


def test_yes_no_synonyms() -> None:
    """Yes-like answers become "yes", no-like answers "no", and the two differ."""
    assert {normalize_answer(t) for t in ["yes", "Yes.", "y", "true", "correct", "YES!"]} == {"yes"}
    assert {normalize_answer(t) for t in ["no", "No.", "false", "incorrect"]} == {"no"}
    assert not _agree(["yes", "no"])
    assert _agree(["Yes.", "true"])


def test_yes_no_only_whole_answer() -> None:
    """Yes/no mapping applies only when the synonym is the whole answer."""
    assert normalize_answer("Yes, Paris") == "yes, paris"
    assert normalize_answer("not true") == "not true"


def test_punctuation_quotes_and_articles() -> None:
    """Surrounding punctuation, quotes, unbalanced brackets and leading articles go."""
    assert normalize_answer('"The Eiffel Tower!"') == "eiffel tower"
    assert normalize_answer("«an apple»") == "apple"
    assert _agree(["(B)", "B)", "b.", "**B**"])
    assert normalize_answer("A") == "a"
    assert normalize_answer("f(x)") == "f(x)"
    assert normalize_answer("-5") == "-5"


def test_unicode_and_whitespace() -> None:
    """NFKC, case folding and whitespace collapsing make look-alike answers agree."""
    assert _agree(["Ｐａｒｉｓ", "PARIS"])
    assert _agree(["Straße", "STRASSE"])
    assert normalize_answer("  New \t  York  ") == "new york"


@fast
@given(any_text)
def test_normalize_is_idempotent(text: str) -> None:
    """Normalising a normalised answer changes nothing."""
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@fast
@given(any_text)
def test_extract_is_idempotent(text: str) -> None:
    """Extracting from an extracted answer changes nothing."""
    once = extract_answer(text)
    assert extract_answer(once) == once


# --- clustering and agreement ---------------------------------------------------------


@fast
@given(answer_lists(), st.data())
def test_clusters_and_score_ignore_input_order(answers: list[Answer], data: st.DataObject) -> None:
    """Shuffling the answers gives the same clusters and the same score."""
    shuffled = data.draw(st.permutations(answers))
    assert cluster_answers(shuffled) == cluster_answers(answers)
    assert agreement_score(cluster_answers(shuffled)) == agreement_score(cluster_answers(answers))


@fast
@given(answer_lists())
def test_score_in_unit_interval(answers: list[Answer]) -> None:
    """The agreement score is always within [0, 1]."""
    assert 0.0 <= agreement_score(cluster_answers(answers)) <= 1.0


@fast
@given(answer_lists())
def test_cluster_invariants(answers: list[Answer]) -> None:
    """Clusters partition the answers, keys are sorted, weights add up, order is by weight
    (blank answers last)."""
    clusters = cluster_answers(answers)
    by_key = {answer.key: answer for answer in answers}
    assert sorted(key for cluster in clusters for key in cluster.keys) == sorted(by_key)
    for cluster in clusters:
        assert list(cluster.keys) == sorted(cluster.keys)
        assert cluster.models == tuple(by_key[key].model for key in cluster.keys)
        assert cluster.weight == math.fsum(by_key[key].weight for key in cluster.keys)
        assert {normalize_answer(by_key[key].text) for key in cluster.keys} == {cluster.answer}
        assert cluster.representative in {by_key[key].text for key in cluster.keys}
    order = [(cluster.blank, -cluster.weight) for cluster in clusters]
    assert order == sorted(order)


@fast
@given(st.lists(st.sampled_from(["b", "a", "c", "d"]), min_size=1, max_size=4, unique=True))
def test_ties_break_deterministically(texts: list[str]) -> None:
    """Equal-weight clusters come in arrival order (not the alphabet), the same for
    every input permutation."""
    answers = [Answer(f"k-{text}", "m", text, arrival=i) for i, text in enumerate(texts)]
    expected = [cluster.answer for cluster in cluster_answers(answers)]
    assert expected == texts
    for permutation in itertools.permutations(answers):
        assert [cluster.answer for cluster in cluster_answers(permutation)] == expected
        assert majority(permutation, 0.5).content == texts[0]


def test_weights_decide_the_winner() -> None:
    """One heavy answer outweighs two light ones, and the score is a weight share."""
    answers = [
        Answer("a", "m1", "Paris", weight=3.0),
        Answer("b", "m2", "London", weight=1.0),
        Answer("c", "m3", "london.", weight=1.0),
    ]
    clusters = cluster_answers(answers)
    assert [(c.answer, c.weight) for c in clusters] == [("paris", 3.0), ("london", 2.0)]
    assert agreement_score(clusters) == pytest.approx(0.6)


def test_representative_is_shortest_then_earliest() -> None:
    """The representative is the shortest stripped text, ties broken by arrival."""
    answers = [
        Answer("k1", "m", "The answer is Paris", arrival=0),
        Answer("k2", "m", "paris ", arrival=1),
        Answer("k3", "m", "Paris", arrival=2),
    ]
    [cluster] = cluster_answers(answers)
    assert cluster.representative == "paris "
    assert cluster.keys == ("k1", "k2", "k3")


def test_blank_answers_form_their_own_cluster() -> None:
    """Empty and whitespace-only answers cluster together under the "" answer, last."""
    answers = [Answer("k1", "m", ""), Answer("k2", "m", "  \n "), Answer("k3", "m", "x")]
    clusters = cluster_answers(answers)
    assert [(c.answer, c.keys) for c in clusters] == [("x", ("k3",)), ("", ("k1", "k2"))]


def test_agreement_score_edge_cases() -> None:
    """No answers score 0.0, one answer 1.0, a 2-of-3 split two thirds."""
    assert agreement_score([]) == 0.0
    assert agreement_score(cluster_answers([Answer("k", "m", "anything")])) == 1.0
    split = [Answer("a", "m", "1"), Answer("b", "m", "one"), Answer("c", "m", "2")]
    assert agreement_score(cluster_answers(split)) == pytest.approx(2 / 3)
    assert agreement_score([Cluster("x", "x", ("k",), ("m",), 0.0)]) == 0.0


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_bad_weight_is_rejected(weight: float) -> None:
    """A weight that is not a finite number > 0 is a ValueError."""
    with pytest.raises(ValueError, match="weight"):
        cluster_answers([Answer("k", "m", "x", weight=weight)])


def test_duplicate_keys_are_rejected() -> None:
    """Two answers with the same key are a ValueError."""
    with pytest.raises(ValueError, match="duplicate"):
        cluster_answers([Answer("k", "m1", "x"), Answer("k", "m2", "y")])


# --- synthesis ---------------------------------------------------------------------


def test_majority_picks_biggest_cluster_representative() -> None:
    """Majority returns the representative of the heaviest cluster and its keys."""
    answers = [
        Answer("c1", "alpha", "After some thought, the answer is 42."),
        Answer("c2", "beta", "forty-two"),
        Answer("c3", "gamma", "41"),
    ]
    result = majority(answers, 0.6)
    assert result == Synthesis(
        content="forty-two",
        score=2 / 3,
        method="majority",
        clusters=tuple(cluster_answers(answers)),
        included_keys=("c1", "c2"),
        threshold=0.6,
        reached=True,
        agreement="equivalent",
    )
    assert not majority(answers, 0.7).reached


def test_majority_reached_at_exact_threshold() -> None:
    """The threshold is reached when the score equals it."""
    answers = [Answer("a", "m", "x"), Answer("b", "m", "y")]
    result = majority(answers, 0.5)
    assert (result.score, result.reached, result.content) == (0.5, True, "x")


def test_majority_without_answers_raises() -> None:
    """Merging nothing is a ValueError."""
    with pytest.raises(ValueError, match="no answers to merge"):
        majority([], 0.5)
    with pytest.raises(ValueError, match="no answers to merge"):
        synthesize("majority", [], 0.5)


@pytest.mark.parametrize("threshold", [-0.1, 1.1, math.nan])
def test_threshold_out_of_range_raises(threshold: float) -> None:
    """A threshold outside [0, 1] is a ValueError."""
    answers = [Answer("a", "m", "x")]
    with pytest.raises(ValueError, match="threshold"):
        majority(answers, threshold)
    with pytest.raises(ValueError, match="threshold"):
        synthesize("majority", answers, threshold)


def test_unknown_method_names_known_ones() -> None:
    """An unknown merge method is a ValueError that lists the registered methods."""
    with pytest.raises(ValueError, match=r"'borda'.*majority, medoid, union, weighted_merge"):
        synthesize("borda", [Answer("a", "m", "x")], 0.5)


def test_synthesize_dispatches_through_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering a function makes it a merge method; majority is registered by default."""
    answers = [Answer("a", "m", "x"), Answer("b", "m", "X."), Answer("c", "m", "y")]
    assert synthesize("majority", answers, 0.5) == majority(answers, 0.5)

    def first(items: Sequence[Answer], threshold: float) -> Synthesis:
        clusters = tuple(cluster_answers(items))
        score = agreement_score(clusters)
        return Synthesis(items[0].text, score, "first", clusters, (items[0].key,), threshold, True)

    monkeypatch.setitem(SYNTHESIS_METHODS, "first", first)
    assert synthesize("first", answers, 0.5).content == "x"
