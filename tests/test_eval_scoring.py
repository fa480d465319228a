"""The eval scorers (issue #14): a table of known cases per kind, the edges that must never
merge ("42" vs "420"), numeric tolerances worked out by hand, choice extraction, regex,
user callables, and the one-line errors of a misconfigured scorer."""

from __future__ import annotations

import string
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinktank.errors import ScorerError, UsageError
from thinktank.eval.scoring import (
    ScorerSpec,
    extract_choice,
    extract_number,
    make_scorer,
    parse_scorer_spec,
)


def score(kind: str, answer: str, targets: tuple[str, ...], **options: object) -> float:
    return make_scorer(ScorerSpec.model_validate({"kind": kind, **options}))(answer, targets)


# (answer, targets, expected score)
EXACT = [
    ("Paris", ("Paris",), 1.0),
    ("  Paris\n", ("Paris",), 1.0),  # surrounding whitespace only
    ("Paris", (" Paris ",), 1.0),  # on the target too
    ("paris", ("Paris",), 0.0),  # case counts
    ("Paris.", ("Paris",), 0.0),  # punctuation counts
    ("Lyon", ("Paris", "Lyon"), 1.0),  # any accepted target
    ("42", ("420",), 0.0),
]
NORMALIZED = [
    ("paris", ("Paris",), 1.0),  # case
    ("Paris.", ("Paris",), 1.0),  # trailing punctuation
    ("The Eiffel Tower", ("eiffel tower",), 1.0),  # leading article
    ("The answer is 42.", ("42",), 1.0),  # answer marker
    ("forty-two", ("42",), 1.0),  # number words
    ("1,000.50", ("1000.5",), 1.0),  # number form
    ("Yes", ("true",), 1.0),  # yes/no synonyms
    ("42", ("420",), 0.0),
    ("not Paris", ("Paris",), 0.0),  # the whole answer must be the target
    ("Paris, France", ("Paris",), 0.0),
]
CONTAINS = [
    ("It is Paris.", ("Paris",), 1.0),
    ("PARIS, of course", ("paris",), 1.0),
    ("I'd say the Eiffel Tower, in Paris", ("The Eiffel Tower",), 1.0),  # phrase, article
    ("about 1,000 people", ("1000",), 1.0),  # number canonicalised on both sides
    ("It measures 3.10 m", ("3.1",), 1.0),
    # Plain containment, no negation handling: documented in the module.
    ("not Paris", ("Paris",), 1.0),
    ("Parisian cafés", ("Paris",), 0.0),  # whole words only
    ("It is 420.", ("42",), 0.0),
    ("pi is 3.14", ("14",), 0.0),  # a decimal is one token
    ("It is -5", ("5",), 0.0),  # a sign belongs to its number
    ("It is -5", ("-5",), 1.0),
    ("Tower Eiffel", ("Eiffel Tower",), 0.0),  # a phrase keeps its order
    ("Lyon", ("Paris", "Lyon"), 1.0),
]


@pytest.mark.parametrize(("answer", "targets", "expected"), EXACT)
def test_exact(answer: str, targets: tuple[str, ...], expected: float) -> None:
    assert score("exact", answer, targets) == expected


@pytest.mark.parametrize(("answer", "targets", "expected"), NORMALIZED)
def test_normalized(answer: str, targets: tuple[str, ...], expected: float) -> None:
    assert score("normalized", answer, targets) == expected


@pytest.mark.parametrize(("answer", "targets", "expected"), CONTAINS)
def test_contains(answer: str, targets: tuple[str, ...], expected: float) -> None:
    assert score("contains", answer, targets) == expected


# --- numeric ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", Decimal(42)),
        ("1,234.5", Decimal("1234.5")),
        ("420", Decimal(420)),
        ("first 3, then 7", Decimal(7)),  # the last number
        ("1,2,3", Decimal(3)),  # a list, not thousands
        ("12,3456", Decimal(3456)),  # not a thousands group: two numbers
        ("-3.5e2", Decimal(-350)),
        ("Score: −7", Decimal(-7)),  # Unicode minus
        ("5-3", Decimal(3)),  # a hyphen after a digit is not a sign
        ("about .5", Decimal("0.5")),
        ("50%", Decimal(50)),
        ("42km", Decimal(42)),  # a unit may follow
        ("x2", None),  # glued to a word
        ("The answer is forty-two", Decimal(42)),  # words, when there are no digits
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_number(text: str, expected: Decimal | None) -> None:
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    ("answer", "target", "options", "expected"),
    [
        ("The answer is 42.", "42", {}, 1.0),
        ("42", "420", {}, 0.0),
        ("420", "42", {}, 0.0),
        ("4200", "420", {}, 0.0),
        ("42.0", "42", {}, 1.0),  # equal values, different forms
        ("1,234.5", "1234.5", {}, 1.0),
        ("I don't know", "42", {}, 0.0),
        # abs_tol 0.5 around 10: |10.5 - 10| = 0.5 is inside, 0.5000001 is not.
        ("10.5", "10", {"abs_tol": 0.5}, 1.0),
        ("9.5", "10", {"abs_tol": 0.5}, 1.0),
        ("10.5000001", "10", {"abs_tol": 0.5}, 0.0),
        # rel_tol 0.01 scales with the larger magnitude: 1% of 101 = 1.01 >= |101 - 100|.
        ("101", "100", {"rel_tol": 0.01}, 1.0),
        ("99", "100", {"rel_tol": 0.01}, 1.0),
        ("98.9", "100", {"rel_tol": 0.01}, 0.0),  # 1.1 > 0.01 * 100
        # Either tolerance suffices: abs 0.1 fails at 0.2 off, rel 0.05 * 4.2 = 0.21 passes.
        ("4.2", "4", {"abs_tol": 0.1, "rel_tol": 0.05}, 1.0),
        # Exact decimals: 0.1 + 0.2 = 0.3 needs no tolerance, as binary floats would.
        ("0.30000000000000004", "0.3", {}, 0.0),
        ("0.3", "0.30", {}, 1.0),
        # Beyond float precision, still distinct.
        ("12345678901234567891", "12345678901234567890", {}, 0.0),
        ("-5", "5", {"abs_tol": 1}, 0.0),
        ("-5", "-5", {}, 1.0),
    ],
)
def test_numeric(answer: str, target: str, options: dict[str, float], expected: float) -> None:
    assert score("numeric", answer, (target,), **options) == expected


def test_numeric_any_target() -> None:
    assert score("numeric", "7", ("6", "7")) == 1.0
    assert score("numeric", "7", ("6", "8")) == 0.0


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=9))
def test_numeric_never_reads_a_prefix(number: int, digit: int) -> None:
    """A number with one more digit is never its prefix ("420" is not "42")."""
    longer = f"{number}{digit}"
    assert score("numeric", f"The answer is {longer}.", (str(number),)) == (
        1.0 if int(longer) == number else 0.0
    )


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_numeric_reads_thousands_separators(number: int) -> None:
    assert extract_number(f"Total: {number:,} units") == number


# --- choice ----------------------------------------------------------------------------

CITIES = ("Paris", "Lyon", "Nice", "Lille")


@pytest.mark.parametrize(
    ("text", "choices", "expected"),
    [
        ("B", None, "B"),
        ("b", None, "B"),
        ("(B)", None, "B"),
        ("(b)", None, "B"),
        ("B.", None, "B"),
        ("Answer: B", None, "B"),
        ("The answer is (C).", None, "C"),
        ("answer is b.", None, "B"),
        ("B) Lyon", None, "B"),
        ("C. Nice", None, "C"),
        ("Reasoning...\nI pick (D) here", None, "D"),
        ("Lyon", CITIES, "B"),  # an option's text maps to its letter
        ("lyon.", CITIES, "B"),
        ("The answer is Paris", CITIES, "A"),
        ("Lyon", None, None),  # without the options, a city is no letter
        ("A city in France", None, None),  # "A" opening prose is no label
        ("e.g. the second", None, None),
        ("E", CITIES, None),  # past the last of four options
        ("E", None, "E"),
        # "I" is past D, so prose; a bare capital inside prose is never read as a letter,
        # since "A" opening a sentence would be too.
        ("Answer: I think B", CITIES, None),
        ("Answer: I think (B)", CITIES, "B"),
        ("", None, None),
    ],
)
def test_extract_choice(text: str, choices: tuple[str, ...] | None, expected: str | None) -> None:
    assert extract_choice(text, choices) == expected


@pytest.mark.parametrize(
    ("answer", "targets", "choices", "expected"),
    [
        ("B", ("B",), None, 1.0),
        ("Answer: (b)", ("B",), None, 1.0),
        ("B) Lyon", ("(B)",), None, 1.0),
        ("C", ("B",), None, 0.0),
        ("Lyon", ("B",), CITIES, 1.0),
        ("B", ("Lyon",), CITIES, 1.0),  # a target may be an option's text
        ("Nice", ("Lyon",), CITIES, 0.0),
        ("I don't know", ("B",), None, 0.0),
    ],
)
def test_choice(
    answer: str, targets: tuple[str, ...], choices: tuple[str, ...] | None, expected: float
) -> None:
    options = {} if choices is None else {"choices": choices}
    assert score("choice", answer, targets, **options) == expected


@given(
    st.sampled_from("ABCD"),
    st.sampled_from(["{}", "({})", "Answer: {}", "The answer is {}.", "{}) text", "{}. text"]),
)
def test_choice_formats(letter: str, template: str) -> None:
    assert extract_choice(template.format(letter), CITIES) == letter


# --- regex -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "targets", "options", "expected"),
    [
        ("It was in 1969.", (r"\b1969\b",), {}, 1.0),  # search: anywhere in the answer
        ("It was in 19690.", (r"\b1969\b",), {}, 0.0),
        ("It was in 1969.", (r"\A1969\Z",), {}, 0.0),  # anchored: the whole answer
        ("1969", (r"\A1969\Z",), {}, 1.0),
        ("PARIS", ("paris",), {}, 0.0),  # case-sensitive
        ("PARIS", ("(?i)paris",), {}, 1.0),
        ("Lyon", ("Paris", "Lyon"), {}, 1.0),  # any target pattern
        # One pattern in the spec replaces the targets (which may then be empty).
        ("answer: 7", (), {"pattern": r"\d"}, 1.0),
        ("answer: seven", ("seven",), {"pattern": r"\d"}, 0.0),
    ],
)
def test_regex(
    answer: str, targets: tuple[str, ...], options: dict[str, str], expected: float
) -> None:
    assert score("regex", answer, targets, **options) == expected


def test_regex_bad_target_pattern_is_a_scorer_error() -> None:
    with pytest.raises(ScorerError, match=r"^scorer 'regex': bad pattern '\(unclosed'"):
        score("regex", "x", ("(unclosed",))


# --- callable --------------------------------------------------------------------------


def test_callable_bool_and_float() -> None:
    letter = make_scorer(ScorerSpec(kind="callable", function="tests.eval_helpers:first_letter"))
    assert letter("paris", ("Paris",)) == 1.0
    assert letter("Lyon", ("Paris",)) == 0.0
    overlap = make_scorer(ScorerSpec(kind="callable", function="tests.eval_helpers:overlap"))
    assert overlap("the Eiffel tower", ("Eiffel Tower of Paris",)) == 0.25  # 1 of 4 words


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("tests.no_such_module:fn", "cannot import module 'tests.no_such_module'"),
        ("tests.eval_helpers:missing", "module 'tests.eval_helpers' has no 'missing'"),
        ("tests.eval_helpers:NOT_CALLABLE", "'tests.eval_helpers:NOT_CALLABLE' is not callable"),
    ],
)
def test_callable_not_found_fails_when_made(function: str, message: str) -> None:
    with pytest.raises(ScorerError) as caught:
        make_scorer(ScorerSpec(kind="callable", function=function))
    text = str(caught.value)
    assert text.startswith(f"scorer 'callable({function})': ")
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("out_of_range", "returned 2.0, not a bool or a number in [0, 1]"),
        ("not_a_number", "returned 'yes', not a bool or a number in [0, 1]"),
        ("nan", "returned nan, not a bool or a number in [0, 1]"),
        ("broken", "raised ValueError: bad scorer"),
    ],
)
def test_callable_bad_result_is_a_one_line_error(function: str, message: str) -> None:
    scorer = make_scorer(ScorerSpec(kind="callable", function=f"tests.eval_helpers:{function}"))
    with pytest.raises(ScorerError) as caught:
        scorer("x", ("y",))
    assert str(caught.value) == f"scorer 'callable(tests.eval_helpers:{function})': {message}"


# --- the spec and its errors -----------------------------------------------------------


def test_scorer_error_is_a_usage_error() -> None:
    assert issubclass(ScorerError, UsageError)


def test_parse_bare_kind_and_describe() -> None:
    assert parse_scorer_spec("exact") == ScorerSpec(kind="exact")
    assert parse_scorer_spec({"kind": "numeric", "abs_tol": 0.01}).describe() == (
        "numeric(abs_tol=0.01)"
    )
    assert ScorerSpec(kind="choice", choices=CITIES).describe() == "choice(choices=4)"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"kind": "fuzzy"}, "exp.yaml:7: scorer.kind: Input should be 'exact', "),
        ({"kind": "exact", "abs_tol": 0.1}, "option 'abs_tol' does not apply to a 'exact'"),
        ({"kind": "numeric", "abs_tol": -1}, "scorer.abs_tol: Input should be greater than"),
        ({"kind": "numeric", "rel_tol": "inf"}, "scorer.rel_tol: Input should be a finite"),
        ({"kind": "numeric", "tol": 1}, "scorer.tol: Extra inputs are not permitted"),
        ({"kind": "callable"}, "a 'callable' scorer needs 'function'"),
        ({"kind": "callable", "function": "no_colon"}, "scorer.function: String should match"),
        ({"kind": "regex", "pattern": "(x"}, "bad pattern '(x'"),
        ({"kind": "choice", "choices": []}, "scorer.choices: Tuple should have at least 1"),
        ({"kind": "choice", "choices": list(string.ascii_letters)}, "at most 26"),
    ],
)
def test_bad_spec_is_one_line_naming_file_line_field(
    data: dict[str, object], expected: str
) -> None:
    with pytest.raises(ScorerError) as caught:
        parse_scorer_spec(data, file="exp.yaml", line=7)
    text = str(caught.value)
    assert text.startswith("exp.yaml:7: scorer")
    assert expected in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("kind", "target", "message"),
    [
        ("numeric", "about 42", "target 'about 42' is not a number"),
        ("choice", "Z", "target 'Z' is not one of the choice letters"),
    ],
)
def test_unreadable_target_is_a_scorer_error(kind: str, target: str, message: str) -> None:
    options = {"choices": CITIES} if kind == "choice" else {}
    with pytest.raises(ScorerError, match=message):
        score(kind, "A", (target,), **options)


@pytest.mark.parametrize("kind", ["exact", "normalized", "numeric", "choice", "contains", "regex"])
def test_no_targets_is_a_scorer_error(kind: str) -> None:
    with pytest.raises(ScorerError, match=rf"^scorer '{kind}': the item has no targets$"):
        score(kind, "A", ())


# --- properties ------------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@given(_TEXT, _TEXT)
@pytest.mark.parametrize("kind", ["exact", "normalized", "numeric", "contains"])
def test_scores_are_zero_or_one(kind: str, answer: str, target: str) -> None:
    targets = ("42",) if kind == "numeric" else (target or "x",)
    assert score(kind, answer, targets) in {0.0, 1.0}


@given(_TEXT)
def test_an_answer_matches_itself(text: str) -> None:
    assert score("exact", f"  {text}\t", (text,)) == 1.0
    assert score("normalized", text, (text,)) == 1.0


@given(st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8), min_size=1))
def test_contains_finds_words_in_a_sentence(words: list[str]) -> None:
    phrase = " ".join(words)
    assert score("contains", f"I believe it is {phrase.upper()}, surely.", (phrase,)) == 1.0
