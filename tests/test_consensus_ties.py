"""Ties and blank answers: the documented tie-break rule, never the alphabet, and
empty or unparseable answers never winning (issue #11, item 11)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktank.consensus import (
    NO_ANSWER,
    Answer,
    MergeOptions,
    cluster_answers,
    quorum_reached,
    synthesize,
)
from thinktank.consensus.synthesis import union

from .test_modes import one_step, run_stored, sim

fast = settings(max_examples=80, deadline=None)

PICKING = ["majority", "medoid", "weighted_merge"]
"""The methods that pick one response as the merged answer."""
RULES = ["weight_then_earliest", "earliest", "model_order"]
WORDS = ["apple", "banana", "cherry", "date", "elder", "fig", "grape", "kiwi"]
BLANKS = ["", "   ", "\n\t", "Answer: ...", "**", "...", '""', "()", "$ $"]
"""Blank: nothing left after extraction and normalisation (empty, or only punctuation
and decoration)."""


@st.composite
def tied_answers(draw: st.DrawFn) -> list[Answer]:
    """2-5 distinct one-word answers, one model each, equal weight, distinct arrivals
    in an order drawn independently of the alphabet and of the keys."""
    words = draw(st.lists(st.sampled_from(WORDS), min_size=2, max_size=5, unique=True))
    arrivals = draw(st.permutations(range(len(words))))
    keys = draw(st.permutations([f"call-{i}" for i in range(len(words))]))
    return [
        Answer(key, f"model-{i}", word, arrival=arrival)
        for i, (word, arrival, key) in enumerate(zip(words, arrivals, keys, strict=True))
    ]


@fast
@given(tied_answers(), st.sampled_from(PICKING), st.randoms(use_true_random=False))
def test_reordering_the_input_keeps_the_winner(
    answers: list[Answer], method: str, rng: random.Random
) -> None:
    """The same answers with the same completion order give the same result in any
    input order."""
    expected = synthesize(method, answers, 0.5)
    shuffled = list(answers)
    rng.shuffle(shuffled)
    assert synthesize(method, shuffled, 0.5) == expected


@fast
@given(tied_answers(), st.sampled_from(PICKING), st.sampled_from(RULES))
def test_a_tie_goes_to_the_earliest_answer_not_the_alphabet(
    answers: list[Answer], method: str, rule: str
) -> None:
    """Equal votes: the answer that arrived first wins, wherever it falls in the
    alphabet (model_order without a model order falls to arrival too)."""
    merged = synthesize(method, answers, 0.5, MergeOptions(tie_break=rule))  # type: ignore[arg-type]
    earliest = min(answers, key=lambda a: a.arrival)
    assert merged.content == earliest.text
    assert merged.included_keys == (earliest.key,)


def test_alphabet_and_arrival_disagree() -> None:
    """The case of the report: "zebra" answered first, "apple" second, one vote each."""
    answers = [Answer("k1", "m1", "zebra", arrival=0), Answer("k2", "m2", "apple", arrival=1)]
    for method in PICKING:
        assert synthesize(method, answers, 0.5).content == "zebra"
    later = [Answer("k1", "m1", "zebra", arrival=1), Answer("k2", "m2", "apple", arrival=0)]
    assert synthesize("majority", later, 0.5).content == "apple"


def test_weight_then_earliest_prefers_the_heaviest_model_in_a_tie() -> None:
    """Equal total weight (2 = 1 + 1): the side with the weight-2 model wins by default;
    ``earliest`` gives it to the first arrival; ``model_order`` to the first model."""
    answers = [
        Answer("k1", "small-a", "12", arrival=0),
        Answer("k2", "small-b", "12", arrival=2),
        Answer("k3", "big", "13", arrival=1),
    ]
    weights = {"big": 2.0}
    default = synthesize("majority", answers, 0.5, MergeOptions(weights=weights))
    assert (default.content, default.included_keys) == ("13", ("k3",))
    earliest = MergeOptions(weights=weights, tie_break="earliest")
    assert synthesize("majority", answers, 0.5, earliest).content == "12"
    ordered = MergeOptions(
        weights=weights, tie_break="model_order", model_order=("small-b", "big", "small-a")
    )
    assert synthesize("majority", answers, 0.5, ordered).content == "12"
    ordered = MergeOptions(weights=weights, tie_break="model_order", model_order=("big",))
    assert synthesize("majority", answers, 0.5, ordered).content == "13"


def test_more_weight_still_beats_earlier() -> None:
    """The rule only breaks ties: a heavier cluster wins however late it answered."""
    answers = [
        Answer("k1", "m1", "7", arrival=0),
        Answer("k2", "m2", "8", arrival=1),
        Answer("k3", "m3", "eight", arrival=2),
    ]
    for rule in RULES:
        merged = synthesize("majority", answers, 0.5, MergeOptions(tie_break=rule))  # type: ignore[arg-type]
        assert merged.content in {"8", "eight"}


@fast
@given(
    st.lists(st.sampled_from(BLANKS), min_size=1, max_size=5),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
    st.sampled_from(PICKING),
    st.sampled_from(RULES),
    st.randoms(use_true_random=False),
)
def test_blank_never_wins_over_an_answer(
    blanks: list[str], words: list[str], method: str, rule: str, rng: random.Random
) -> None:
    """However many blank answers there are, however heavy and early, a real answer
    wins; the score is the winner's share (blanks count in the total)."""
    texts = [(text, 5.0) for text in blanks] + [(text, 1.0) for text in words]
    rng.shuffle(texts)
    # Blanks arrive first, so arrival alone would favour them.
    order = sorted(range(len(texts)), key=lambda i: texts[i][0] in WORDS)
    answers = [
        Answer(f"k{i}", f"m{i}", text, weight=weight, arrival=order.index(i))
        for i, (text, weight) in enumerate(texts)
    ]
    options = MergeOptions(agreement="exact", tie_break=rule)  # type: ignore[arg-type]
    merged = synthesize(method, answers, 0.5, options)
    assert merged.content in words
    assert merged.outcome == "ok"
    share = words.count(merged.content) / (5.0 * len(blanks) + len(words))
    assert merged.score == pytest.approx(share)


def test_blank_answers_lose_the_reported_tie() -> None:
    """Two empty answers against two "42": "42" wins (on main "" won, first in the
    alphabet), and two blanks never make a quorum."""
    answers = [
        Answer("k1", "m1", "", arrival=0),
        Answer("k2", "m2", "42", arrival=1),
        Answer("k3", "m3", "  ", arrival=2),
        Answer("k4", "m4", "The answer is 42.", arrival=3),
    ]
    merged = synthesize("majority", answers, 0.5)
    assert (merged.content, merged.score, merged.included_keys) == ("42", 0.5, ("k2", "k4"))
    assert [c.answer for c in cluster_answers(answers)] == ["42", ""]
    blanks = [Answer("k1", "m1", ""), Answer("k2", "m2", "Answer:"), Answer("k3", "m3", "9")]
    assert not quorum_reached(blanks, min_models=2, threshold=0.5)


@pytest.mark.parametrize("method", [*PICKING, "union"])
def test_all_blank_is_an_empty_degraded_result(method: str) -> None:
    """Nothing to pick: empty content, score 0, outcome no_answer, no crash."""
    answers = [Answer("k1", "m1", ""), Answer("k2", "m2", " \n "), Answer("k3", "m3", "")]
    merged = synthesize(method, answers, 0.7)
    assert (merged.content, merged.score, merged.reached) == ("", 0.0, False)
    assert merged.outcome == NO_ANSWER
    assert merged.included_keys == ()


def test_union_orders_equally_found_items_by_arrival() -> None:
    """Items found by as many models, at the same position, come in arrival order."""
    answers = [
        Answer("k1", "m1", "- zinc leak\n- both see this", arrival=0),
        Answer("k2", "m2", "- apple crash\n- both see this", arrival=1),
    ]
    merged = union(answers, 0.5, MergeOptions(tie_break="earliest"))
    assert [item.text for item in merged.items] == ["both see this", "zinc leak", "apple crash"]
    late = [
        Answer("k1", "m1", "- zinc leak\n- both see this", arrival=1),
        Answer("k2", "m2", "- apple crash\n- both see this", arrival=0),
    ]
    merged = union(late, 0.5, MergeOptions(tie_break="earliest"))
    assert [item.text for item in merged.items] == ["both see this", "apple crash", "zinc leak"]


def test_unknown_tie_break_is_rejected() -> None:
    """A misspelt rule is a clear error naming the known ones."""
    with pytest.raises(ValueError, match=r"unknown tie_break 'alphabet'.*earliest"):
        MergeOptions(tie_break="alphabet")  # type: ignore[arg-type]


# -- end to end: the rule in a real run -------------------------------------------------


async def test_a_run_breaks_ties_by_arrival_and_by_option(tmp_path: Path) -> None:
    """A 1-1 vote in a real run goes to the answer that arrived first ("Paris", though
    "lyon" comes first in the alphabet); ``tie_break: model_order`` gives it to the
    first model listed; the option is part of the cache key."""
    models = {"late": sim("Lyon", 300), "early": sim("Paris", 5)}
    result, _ = await run_stored(one_step(models), tmp_path / "a.db")
    assert result.steps["q"].output == "Paris"
    ordered = one_step(models, tie_break="model_order")
    result, _ = await run_stored(ordered, tmp_path / "a.db")
    assert result.steps["q"].output == "Lyon"
    assert result.steps["q"].consensus.cached_from is None


async def test_a_run_never_lets_blank_answers_win(tmp_path: Path) -> None:
    """Two empty answers (first to arrive) against two "42": "42", with its true share."""
    models = {"e1": sim("", 1), "e2": sim(" ", 1), "n1": sim("42", 50), "n2": sim("42.", 50)}
    result, _ = await run_stored(one_step(models), tmp_path / "b.db")
    step = result.steps["q"]
    assert (step.output, step.consensus.score) == ("42", 0.5)
    blank = one_step({"e1": sim("", 1), "e2": sim("...", 1)})
    result, _ = await run_stored(blank, tmp_path / "c.db")
    step = result.steps["q"]
    assert (step.status, step.output) == ("completed", "")
    assert step.consensus.outcome == "no_answer,low_consensus"
