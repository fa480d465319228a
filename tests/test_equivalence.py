"""Answer equivalence (issue #15): answers that agree in other words, and never a merge
of answers that contradict.

Covers :func:`thinktank.consensus.formats.extract_formatted`, every layer of
:func:`thinktank.consensus.equivalence.equivalence_reason` (each with positive and
negative cases), the ``equivalent`` agreement mode's clusters and their recorded
reasons, and the quorum example of the issue end to end over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import thinktank
from thinktank.cli.commands import main
from thinktank.consensus import Answer, MergeOptions, cluster_answers, majority, quorum_reached
from thinktank.consensus.equivalence import (
    FIRST_STATEMENT,
    SAME_CHOICE,
    SAME_JSON,
    SAME_NORMALIZED,
    SAME_NUMBER,
    SAME_YES_NO,
    STATES_ANSWER,
    equivalence_reason,
)
from thinktank.consensus.formats import AnswerFormat, extract_formatted
from thinktank.consensus.normalize import normalize_answer
from thinktank.eval.stats import wilson
from thinktank.store import StoredSession

from .fakeserver import FakeServer, Fault, run_fake_server

CHOICES = AnswerFormat("choice", ("Paris", "Lyon", "Marseille"))
NUMBER = AnswerFormat("number")
YES_NO = AnswerFormat("yes_no")
JSON = AnswerFormat("json", schema={"type": "object"})

# --- extract_formatted ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("The answer is 42.", NUMBER, "42"),
        ("42 km", NUMBER, "42"),
        ("420", NUMBER, "420"),
        ("4.20", NUMBER, "4.2"),
        ("119 + 640 = 759", NUMBER, "759"),
        ("The answer is 42 (6 x 7).", NUMBER, "42"),
        ("forty-two", NUMBER, "42"),
        ("no idea", NUMBER, None),
        ("B", CHOICES, "B"),
        ("(B) Lyon", CHOICES, "B"),
        ("Answer: B", CHOICES, "B"),
        ("Lyon", CHOICES, "B"),
        ("I cannot say", CHOICES, None),
        ("Yes, it is.", YES_NO, "yes"),
        ("No.", YES_NO, "no"),
        ("Answer: no", YES_NO, "no"),
        ("I don't know", YES_NO, None),
        ("Yes and no", YES_NO, None),
        ('```json\n{"b": 1, "a": [1, 2]}\n```', JSON, '{"a":[1,2],"b":1}'),
        ('{"a": 1}', JSON, '{"a":1}'),
        ("{not json", JSON, None),
        ("The capital is Paris.", AnswerFormat("short"), "capital is paris"),
        ("  Some long text. ", AnswerFormat("free"), "Some long text."),
        ("   ", AnswerFormat("free"), None),
    ],
)
def test_extract_formatted(text: str, fmt: AnswerFormat, expected: str | None) -> None:
    assert extract_formatted(text, fmt) == expected


# --- equivalence layers -------------------------------------------------------------

SAME = [
    ("paris", "Paris.", None, SAME_NORMALIZED),
    ("42", "The answer is 42.", None, SAME_NORMALIZED),
    ("Paris", "The capital of France is Paris.", None, STATES_ANSWER),
    ("Paris", "Paris, France", None, STATES_ANSWER),
    ("Buenos Aires", "Its capital is Buenos Aires.", None, STATES_ANSWER),
    ("Kabul", "The capital of Afghanistan is Kabul.\n\nJust for reference.", None, STATES_ANSWER),
    ("Tehran", "The capital of Iran is known as Tehran.", None, STATES_ANSWER),
    ("Tehran", "The capital is Tehran, not Ashgabat.", None, STATES_ANSWER),
    ("Reykjavik", "Its capital is Reykjavík.", None, STATES_ANSWER),
    ("The capital of Canada is Ottawa.", "Ottawa, Canada.", None, STATES_ANSWER),
    (
        "The capital is Ottawa.",
        "The capital of Canada is Ottawa, in the east.",
        None,
        STATES_ANSWER,
    ),
    ("Its capital is Sydney, also known as Sydney Harbour.", "It is Sydney.", None, STATES_ANSWER),
    ("42", "42 km", None, SAME_NUMBER),
    ("759", "119 + 640 = 759", None, SAME_NUMBER),
    ("yes", "Yes, it is.", None, SAME_YES_NO),
    ("no", "No, it isn't.", None, SAME_YES_NO),
    ("B", "(B) Lyon", CHOICES, SAME_CHOICE),
    ("Lyon", "Answer: B", CHOICES, SAME_CHOICE),
    ("42", "The answer is 42 (6 x 7).", NUMBER, SAME_NUMBER),
    ("Yes.", "yes, certainly", YES_NO, SAME_YES_NO),
    ('{"a": 1, "b": 2}', '```json\n{"b":2,"a":1}\n```', JSON, SAME_JSON),
]

DIFFERENT = [
    ("Paris", "not Paris", None),
    ("Paris", "It is not Paris.", None),
    ("Paris", "It isn't Paris.", None),
    ("Paris", "Paris or Lyon", None),
    ("Paris", "Either Paris or Lyon.", None),
    ("Paris", "The capital of France is Lyon.", None),
    ("Paris", "Parisian", None),
    ("Paris", "Lyon, not Paris.", None),
    ("Paris", "It is Paris, not Paris.", None),
    ("Finland", "Finland, officially the Republic of Finland, is a Nordic country.", None),
    ("The capital is Paris.", "The capital is Lyon.", None),
    ("The capital is Paris, also called Lyon.", "The capital is Paris.", None),
    ("656", "656 and 538 are the same number.", None),
    ("538", "656 and 538 are the same number.", NUMBER),
    ("8", "67 is 8 times 67.", NUMBER),
    ("Belgium", "Belgium is a country in Western Europe.", None),
    ("Bangladesh", "The capital of Bangladesh is Dhaka.", None),
    ("42", "420", None),
    ("42", "4.2", None),
    ("42", "The answer is not 42.", None),
    ("640", "119 + 640 = 759", None),
    ("783", "729 + 783 = 783 + 279", None),
    ("yes", "no", None),
    ("yes", "I don't know", None),
    ("", "", None),
    ("Paris", "", None),
    ("B", "C", CHOICES),
    ("B", "Paris", CHOICES),
    ("42", "The answer is not 42.", NUMBER),
    ("42", "420", NUMBER),
    ("yes", "No, it is not.", YES_NO),
    ('{"a": 1}', '{"a": 2}', JSON),
    ("Paris", "The capital of France is Paris.", AnswerFormat("free")),
]


@pytest.mark.parametrize(("a", "b", "fmt", "reason"), SAME)
def test_equivalent_pairs_name_their_reason(
    a: str, b: str, fmt: AnswerFormat | None, reason: str
) -> None:
    assert equivalence_reason(a, b, fmt) == reason
    assert equivalence_reason(b, a, fmt) == reason


@pytest.mark.parametrize(("a", "b", "fmt"), DIFFERENT)
def test_contradicting_or_unrelated_pairs_are_not_merged(
    a: str, b: str, fmt: AnswerFormat | None
) -> None:
    assert equivalence_reason(a, b, fmt) is None
    assert equivalence_reason(b, a, fmt) is None


CAPITAL = "What is the capital of France? Answer with the city name only."

QUESTION_SAME = [
    # The inverted copula states the answer when its predicate restates the question.
    ("Paris", "Paris is the capital of France."),
    ("Paris", "Paris, the capital of France, is a large city."),
    ("Paris", "Paris (French: Paris) was the capital of France."),
    ("The capital of France is Paris.", "Paris is the capital of France."),
    ("France", "France is the capital of France."),
    ("France", "France is the capital of the country."),
    # A list marker before the one answer; a bare answer repeated.
    ("Paris", "1. Paris"),
    ("The capital of France is Paris.", "(b) The capital of France is Paris."),
    ("Paris", "Paris, Paris, Paris"),
    # Filler between "is" and the answer; a quoted answer.
    ("Paris", "The capital of France is indeed the city of Paris."),
    ("Paris", "The capital of France is actually Paris, a large city."),
    ("Paris", 'The answer is "Paris"'),
    ("Paris", "France has many cities, its capital being Paris."),
]

QUESTION_DIFFERENT = [
    # A sentence about the answer, not naming it as what the question asks.
    ("Paris", "Paris is the largest city in France."),
    ("Paris", "Paris is a city in France."),
    ("Lyon", "Lyon is a city and the capital of a region."),
    ("France", "France is a country in Europe and its capital is known as Paris."),
    # The vetoes hold for the inverted copula.
    ("Paris", "Paris is not the capital of France."),
    ("Paris", "Paris or Lyon is the capital of France."),
    ("Lyon", "Paris is the capital of France."),
    ("Paris is the capital of France.", "Lyon is the capital of France."),
    # A list names several answers; repeats of different answers are no repeat.
    ("Paris", "1. Paris 2. Lyon"),
    ("Paris", "1. Paris\n2. Lyon"),
    ("Lyon", "Paris, Paris, Paris"),
    ("Paris", "The capital of France is actually Paris, which is in Picardy."),
    ("Paris", "Paris is the capital of the country."),
    # Two answers stated.
    ("Paris", "The capital is Paris. The answer is Lyon."),
]


@pytest.mark.parametrize(("a", "b"), QUESTION_SAME)
def test_question_aware_rules_merge(a: str, b: str) -> None:
    assert equivalence_reason(a, b, question=CAPITAL) is not None
    assert equivalence_reason(b, a, question=CAPITAL) is not None


@pytest.mark.parametrize(("a", "b"), QUESTION_DIFFERENT)
def test_question_aware_rules_keep_apart(a: str, b: str) -> None:
    assert equivalence_reason(a, b, question=CAPITAL) is None
    assert equivalence_reason(b, a, question=CAPITAL) is None


def test_the_inverted_copula_needs_the_question() -> None:
    """Without the question, "Paris is the capital of France." is a sentence about
    Paris (as "Venezuela is the 18th largest country" is): behaviour as before."""
    assert equivalence_reason("Paris", "Paris is the capital of France.") is None
    assert equivalence_reason("Paris", "Paris is the capital of France.", question=CAPITAL)
    # Every content word of the question must be restated ("city" is not one here).
    assert equivalence_reason("Paris", "Paris is the capital.", question=CAPITAL) is None
    asked = "What is the capital city of France?"
    assert equivalence_reason("Paris", "Paris is the capital of France.", question=asked) is None


def test_the_first_statement_counts_and_later_ones_can_take_it_back() -> None:
    """A first sentence stating the answer, then rambling or an echo of the format
    instruction, states it; a later denial, or another candidate named, takes it back."""
    stated = "The capital of France is Paris. The answer is a name, word or short phrase."
    assert equivalence_reason("Paris", stated) == FIRST_STATEMENT
    assert equivalence_reason(stated, "The capital is Paris.") == FIRST_STATEMENT
    rambling = "The capital of France is Paris.\n\nThe answer is not possible to be incorrect."
    assert equivalence_reason("Paris", rambling) == FIRST_STATEMENT
    assert equivalence_reason("Paris", "The capital of France is Paris. It is not.") is None
    assert equivalence_reason("Paris", "The capital is Paris. Paris is not right.") is None
    assert equivalence_reason("Paris", "The capital is Paris. Or Lyon.") is None
    named = "The capital of France is Paris. Many say Lyon."
    assert equivalence_reason("Paris", named) is not None
    assert equivalence_reason("Paris", named, candidates={"paris", "lyon"}) is None
    # Only the FIRST stating sentence counts.
    assert equivalence_reason("Lyon", "The capital is Paris. Lyon is big. It is Lyon.") is None


def test_a_sentence_naming_another_candidate_states_nothing() -> None:
    """With "France" among the panel's answers, a sentence naming France and Paris does
    not count as stating Paris alone."""
    sentence = "The capital of France is Paris."
    assert equivalence_reason("Paris", sentence, candidates={"paris"}) == STATES_ANSWER
    assert equivalence_reason("Paris", sentence, candidates={"paris", "france"}) is None


CITIES = ["Paris", "Lyon", "Buenos Aires", "Kabul", "Canberra", "Sydney", "New Delhi", "Rome"]
NEGATIONS = [
    "not {}",
    "It is not {}.",
    "It isn't {}.",
    "The capital is not {}.",
    "Never {}",
    "{} or Lyon",
    "Either {} or Rome.",
    "No, {}",
]
SENTENCES = ["{}", "The capital is {}.", "Answer: {}", "{}, France", "It is {}."]


SENTENCES = [
    *SENTENCES,
    "{} is the capital of France.",
    "1. {}",
    "{}, {}",
    "{} (x) was the capital.",
]
NEGATIONS = [*NEGATIONS, "{} is not the capital of France.", "The capital is {}. It is not."]
QUESTIONS = ["", CAPITAL, "What is the capital?", "Capital of France"]


@given(
    st.sampled_from(CITIES),
    st.sampled_from(NEGATIONS),
    st.sampled_from(SENTENCES),
    st.sampled_from(QUESTIONS),
)
def test_an_answer_never_joins_its_negation(
    city: str, negation: str, sentence: str, question: str
) -> None:
    stated = sentence.format(city, city)
    denied = negation.format(city)
    assert equivalence_reason(stated, denied, question=question) is None
    assert equivalence_reason(denied, stated, question=question) is None


@given(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from(["{}", "The answer is {}.", "{} km", "x = {}", "Answer: {}"]),
    st.sampled_from([None, NUMBER]),
    st.sampled_from(["", "What is 6 * 7?", "What is the answer?"]),
)
def test_different_numbers_never_join(
    first: int, second: int, template: str, fmt: AnswerFormat | None, question: str
) -> None:
    if first == second:
        second += 1
    pairs = [
        (str(first), template.format(second)),
        (str(first * 10), str(first)),
        (str(first), f"1. {second}"),
        (str(first), f"{second} is the answer."),
    ]
    for a, b in pairs:
        if a != b:
            assert equivalence_reason(a, b, fmt, question=question) is None
    decimal = f"{first}.{abs(second) % 9 + 1}"
    assert equivalence_reason(str(first), decimal, fmt, question=question) is None


TEXTS = [
    *CITIES,
    *(template.format(city, city) for template in SENTENCES + NEGATIONS for city in CITIES[:3]),
    "42",
    "420",
    "42 km",
    "The answer is 42.",
    "yes",
    "Yes, it is.",
    "no",
    "",
    "B",
    "(B) Lyon",
    *(template.format(city, city) for template in SENTENCES[5:] for city in CITIES[:3]),
    "The capital of France is Paris. The answer is a name.",
    "The capital is Lyon. It is not.",
]


@given(
    st.sampled_from(TEXTS),
    st.sampled_from(TEXTS),
    st.sampled_from([None, CHOICES, NUMBER, YES_NO, AnswerFormat("short")]),
    st.sets(st.sampled_from(["paris", "lyon", "france", "42"])),
    st.sampled_from(QUESTIONS),
)
def test_equivalence_is_symmetric(
    a: str, b: str, fmt: AnswerFormat | None, candidates: set[str], question: str
) -> None:
    assert equivalence_reason(a, b, fmt, candidates, question) == equivalence_reason(
        b, a, fmt, candidates, question
    )


# --- clusters ---------------------------------------------------------------------


def test_equivalent_answers_form_one_cluster_with_reasons() -> None:
    answers = [
        Answer("c1", "fa", "The capital of France is Paris."),
        Answer("c2", "fb", "Paris"),
        Answer("c3", "fc", "Paris, France"),
        Answer("c4", "slow", "Lyon"),
    ]
    clusters = cluster_answers(answers)
    assert [c.keys for c in clusters] == [("c1", "c2", "c3"), ("c4",)]
    assert clusters[0].representative == "Paris" and clusters[0].answer == "paris"
    assert dict(clusters[0].reasons) == {"c1": STATES_ANSWER, "c3": STATES_ANSWER}
    result = majority(answers, 0.7)
    assert result.content == "Paris" and result.score == 0.75 and result.agreement == "equivalent"
    exact = cluster_answers(answers, options=MergeOptions(agreement="exact"))
    assert len(exact) == 4 and all(not c.reasons for c in exact)


def test_a_component_with_contradicting_bare_answers_is_split() -> None:
    """Two sentences each stating one city, joined through "Paris, France" and bare
    answers: no cluster may hold both Paris and Lyon."""
    answers = [
        Answer("a", "m1", "Paris"),
        Answer("b", "m2", "Lyon"),
        Answer("c", "m3", "It is Paris."),
        Answer("d", "m4", "Paris, Lyon"),
    ]
    for cluster in cluster_answers(answers):
        assert not {"a", "b"} <= set(cluster.keys)


PANEL_TEXTS = [
    "Paris",
    "Lyon",
    "not Paris",
    "It is not Lyon.",
    "The capital of France is Paris.",
    "The capital is Lyon.",
    "Paris, France",
    "Lyon, not Paris.",
    "Paris or Lyon",
    "France",
    "42",
    "420",
    "The answer is 42.",
    "4.2",
    "",
]


@given(st.lists(st.sampled_from(PANEL_TEXTS), min_size=1, max_size=8))
def test_clusters_never_hold_contradicting_answers(texts: list[str]) -> None:
    """Whatever the panel, no cluster holds two different bare answers that are not
    equivalent, nor an answer with its negation or a different number; and every member
    but the representative has a recorded reason."""
    answers = [Answer(f"k{i}", f"m{i}", text) for i, text in enumerate(texts)]
    contradictions = [
        ("Paris", "Lyon"),
        ("Paris", "not Paris"),
        ("Lyon", "It is not Lyon."),
        ("42", "420"),
        ("42", "4.2"),
        ("Paris", "Lyon, not Paris."),
        ("Paris", "Paris or Lyon"),
    ]
    for cluster in cluster_answers(answers):
        members = {answers[int(key[1:])].text for key in cluster.keys}
        for first, second in contradictions:
            assert not {first, second} <= members
        if not cluster.blank:
            assert len(cluster.reasons) == len(cluster.keys) - 1


def test_declared_format_drives_clusters() -> None:
    answers = [
        Answer("a", "m1", "B"),
        Answer("b", "m2", "(B) Lyon"),
        Answer("c", "m3", "The answer is Lyon"),
        Answer("d", "m4", "A"),
        Answer("e", "m5", "I cannot tell"),
    ]
    clusters = cluster_answers(answers, options=MergeOptions(answer_format=CHOICES))
    assert [(c.answer, c.keys) for c in clusters] == [
        ("B", ("a", "b", "c")),
        ("A", ("d",)),
        ("", ("e",)),
    ]
    assert dict(clusters[0].reasons) == {"b": SAME_CHOICE, "c": SAME_CHOICE}


def test_quorum_counts_equivalent_answers() -> None:
    answers = [Answer("a", "fa", "The capital of France is Paris."), Answer("b", "fb", "Paris")]
    assert quorum_reached(answers, min_models=2, threshold=0.7)
    exact = MergeOptions(agreement="exact")
    assert not quorum_reached(answers, min_models=2, threshold=0.7, options=exact)


# --- end to end: the quorum example over loopback ---------------------------


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as srv:
        yield srv


def _configure(tmp_path: Path, server: FakeServer, *names: str) -> None:
    """A thinktank.toml in ``tmp_path`` with the fake server's models ``names``."""
    models = "".join(
        f'[models.{name}]\nprovider = "openai"\nmodel = "{name}"\nbase_url = "{server.url}/v1"\n'
        for name in names
    )
    (tmp_path / "thinktank.toml").write_text(models)


def test_quorum_stops_when_equivalent_answers_agree(server: FakeServer, tmp_path: Path) -> None:
    """fa says "The capital of France is Paris.", fb "Paris", slow "Lyon" after 6 s: the
    quorum is reached after fb, the answer is "Paris" and the slow call is cancelled."""
    _configure(tmp_path, server, "fa", "fb", "slow")
    server.set_reply("fa", "The capital of France is Paris.")
    server.set_reply("fb", "Paris")
    server.set_reply("slow", "Lyon")
    server.add_faults(Fault.slow(6), model="slow")
    db = str(tmp_path / "t.db")
    args = ["ask", "What is the capital of France?", "-m", "fa", "-m", "fb", "-m", "slow"]
    started = time.monotonic()
    out = CliRunner().invoke(main, [*args, "--mode", "quorum", "--json", "--db", db])
    elapsed = time.monotonic() - started
    assert out.exit_code == 0, out.stderr
    # A behaviour bound, not a benchmark: waiting for the slow model takes 6 s.
    assert elapsed < 5.0
    data = json.loads(out.stdout)
    assert data["synthesis"]["content"] == "Paris"
    (step,) = asyncio.run(_stored_session(db, data["id"])).steps
    assert step.consensus is not None and step.consensus.reached
    assert step.consensus.early_termination
    status = {call.model_id: call.status for call in step.calls}
    assert status == {"fa": "ok", "fb": "ok", "slow": "cancelled"}
    (winner, *_) = step.consensus.clusters
    assert winner["representative"] == "Paris"
    assert set(winner["reasons"].values()) == {STATES_ANSWER}
    shown = CliRunner().invoke(main, ["show", data["id"], "--db", db])
    assert shown.exit_code == 0 and "states_answer" in shown.stdout


def test_the_engine_merges_with_the_step_question(server: FakeServer, tmp_path: Path) -> None:
    """The step's prompt reaches answer equivalence: "Paris is the capital of France."
    (which states Paris only given the question) joins "Paris" against "Lyon"."""
    _configure(tmp_path, server, "fa", "fb", "fc")
    server.set_reply("fa", "Paris is the capital of France.")
    server.set_reply("fb", "Lyon")
    server.set_reply("fc", "Paris")
    db = str(tmp_path / "t.db")
    args = ["ask", "What is the capital of France?", "-m", "fa", "-m", "fb", "-m", "fc"]
    out = CliRunner().invoke(main, [*args, "--mode", "all", "--json", "--db", db])
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["synthesis"]["content"] == "Paris"
    (step,) = asyncio.run(_stored_session(db, data["id"])).steps
    assert step.consensus is not None
    (winner, *_) = step.consensus.clusters
    assert sorted(winner["models"]) == ["fa", "fc"]
    assert set(winner["reasons"].values()) == {STATES_ANSWER}


async def _stored_session(db: str, session_id: str) -> StoredSession:
    async with await thinktank.Store.open(db) as store:
        return await store.get_session(session_id)


# --- the shipped labelled set -------------------------------------------------------

SHIPPED = Path(thinktank.__file__).parent / "eval" / "data" / "equivalence.jsonl"


def _shipped_short() -> list[dict[str, object]]:
    pairs = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]
    assert all(pair["source"] for pair in pairs)
    return [pair for pair in pairs if pair["format"] == "short"]


def _merges(
    pairs: list[dict[str, object]], same: Callable[[str, str, str], bool]
) -> tuple[int, int, int]:
    """(correct merges, merges, positives) of ``same`` (a, b, question) on labelled
    ``pairs``."""
    merged = [
        bool(pair["same"])
        for pair in pairs
        if same(str(pair["a"]), str(pair["b"]), str(pair.get("question", "")))
    ]
    return sum(merged), len(merged), sum(bool(pair["same"]) for pair in pairs)


def _equivalent(a: str, b: str, question: str = "") -> bool:
    return equivalence_reason(a, b, question=question) is not None


def test_shipped_equivalence_set_meets_the_precision_target() -> None:
    """Regression guard on the shipped pairs: on short answers, ``equivalent`` keeps
    precision >= 0.98 (issue #15) with the 95% Wilson lower bound, so enough pairs are
    merged for the target not to be a small sample's luck; ``exact`` misses more; recall
    stays above a floor (the target itself is the next test)."""
    short = _shipped_short()
    true, merged, positives = _merges(short, _equivalent)
    assert positives >= 220
    assert wilson(true, merged).low >= 0.98
    assert true / positives >= 0.70
    exact_true, _, _ = _merges(
        short,
        lambda a, b, _: bool(normalize_answer(a)) and normalize_answer(a) == normalize_answer(b),
    )
    assert exact_true < true


def test_shipped_equivalence_set_meets_the_recall_target() -> None:
    """On short answers ``equivalent``, given each pair's question, finds >= 0.90 of the
    pairs labelled the same, precision's Wilson lower bound still >= 0.98 (issue #15)."""
    pairs = _shipped_short()
    assert sum(bool(pair.get("question")) for pair in pairs) >= 900
    true, merged, positives = _merges(pairs, _equivalent)
    assert true / positives >= 0.90
    assert wilson(true, merged).low >= 0.98


REAL_QUESTION = (
    "What is the capital of {}? Answer with the answer only: a name, word or short phrase."
)


@pytest.mark.parametrize(
    ("a", "b", "country", "reason"),
    [
        # Each from the shipped set (the local families' outputs), labelled the same.
        ("Paris", "Paris is the capital of France.", "France", STATES_ANSWER),
        ("Cuba", "Cuba is the capital of Cuba.", "Cuba", STATES_ANSWER),
        ("Oslo", "1. Oslo", "Norway", STATES_ANSWER),
        (
            "Copenhagen",
            "Denmark is a country in Europe with a population of approximately 43 million"
            " people, the capital being Copenhagen.",
            "Denmark",
            STATES_ANSWER,
        ),
        (
            "The capital of Egypt is Cairo.",
            "The capital of Egypt is indeed the city of Cairo.",
            "Egypt",
            STATES_ANSWER,
        ),
        (
            "Bangkok, Bangkok, Bangkok, Bangkok",
            "The capital of Thailand is Bangkok.",
            "Thailand",
            STATES_ANSWER,
        ),
        (
            "Bangkok",
            "The capital of Thailand is Bangkok. The answer is a name, word or short phrase.",
            "Thailand",
            FIRST_STATEMENT,
        ),
    ],
)
def test_real_pairs_once_missed_are_merged(a: str, b: str, country: str, reason: str) -> None:
    assert equivalence_reason(a, b, question=REAL_QUESTION.format(country)) == reason


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # Aliases: no knowledge base says Kiev is Kyiv, or Santiago de Chile Santiago.
        ("Kiev", "Kyiv"),
        ("Santiago", "Santiago de Chile"),
        # An appositive after the question's words, not after a stating token.
        ("Seoul", "South Korea's capital, Seoul, is a vibrant and multicultural city."),
    ],
)
@pytest.mark.xfail(strict=True, reason="issue #15: misses left by design or not yet read")
def test_real_pairs_equivalence_misses(a: str, b: str) -> None:
    assert equivalence_reason(a, b, question=REAL_QUESTION.format("X")) is not None


@pytest.mark.xfail(strict=True, reason="issue #15: a false merge found by the grown set")
def test_real_pair_stating_another_capital_is_not_merged() -> None:
    """The sentence names Ulaanbaatar after "is", but as the largest city: the capital it
    states is Kerman."""
    sentence = (
        "Mongolia is a country located in the northern part of Asia, bordered by China to"
        " the east and the Caspian Sea to the west. The capital is the capital city of"
        " Kerman, and the largest city in the country is Ulaanbaatar."
    )
    assert equivalence_reason(sentence, "The capital of Mongolia is Ulaanbaatar.") is None
