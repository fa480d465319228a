"""Precision and recall of answer equivalence on the shipped labelled pairs.

Reads ``thinktank/eval/data/equivalence.jsonl`` (pairs of real model answers, and
hand-written hard cases, labelled same / not same) and prints, per answer format, how
``exact`` agreement (equal normalised answers) and ``equivalent`` agreement
(:func:`thinktank.consensus.equivalence.equivalence_reason`, once undeclared as
``auto`` uses it, once with the pair's declared format) do: precision and recall with
95% Wilson intervals, and the reasons the merges gave.

    python bench/equivalence.py                 # the figures
    python bench/equivalence.py build --db results/local.db [--db ...] > pairs.jsonl

``build`` re-derives the pairs drawn from real outputs: pairs of distinct answers to one
item across the two local families and their samples, from every stored run in the
databases given (issue #14's runs and #15's ``equivalence-capitals``): a few random pairs
per item and, for capitals, every pair labelled the same or naming the item's capital;
labelled by the rules and the hand checks in this file (see ``_HAND_LABELS``). The
hand-written pairs are appended from the shipped file as they are.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sqlite3
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from thinktank.consensus.equivalence import equivalence_reason  # noqa: E402
from thinktank.consensus.formats import AnswerFormat  # noqa: E402
from thinktank.consensus.normalize import normalize_answer  # noqa: E402
from thinktank.eval.stats import wilson  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "thinktank" / "eval" / "data"
PAIRS = DATA / "equivalence.jsonl"

Pair = dict[str, Any]


def declared(pair: Pair) -> AnswerFormat:
    """The pair's declared answer format."""
    schema = {} if pair["format"] == "json" else None  # any JSON value: equality is what counts
    return AnswerFormat(pair["format"], tuple(pair.get("choices", ())), schema)


def judges() -> dict[str, Callable[[Pair], str | None]]:
    """Each compared measure: pair -> reason when it merges, else None."""

    def exact(pair: Pair) -> str | None:
        a, b = normalize_answer(pair["a"]), normalize_answer(pair["b"])
        return "same_normalized" if a and a == b else None

    return {
        "exact": exact,
        "equivalent": lambda pair: equivalence_reason(
            pair["a"], pair["b"], question=pair.get("question", "")
        ),
        "equivalent+format": lambda pair: equivalence_reason(
            pair["a"], pair["b"], declared(pair), question=pair.get("question", "")
        ),
    }


def _interval(successes: int, n: int) -> str:
    if n == 0:
        return "    -"
    found = wilson(successes, n)
    return f"{found.estimate:6.1%} [{found.low:5.1%}, {found.high:5.1%}]"


def report(pairs: Sequence[Pair]) -> None:
    """Print precision and recall per format and measure."""
    formats = sorted({pair["format"] for pair in pairs})
    print(f"{len(pairs)} pairs ({sum(p['same'] for p in pairs)} same) from {PAIRS.name}")
    print(
        f"{'format':<8} {'measure':<18} {'n':>4} {'precision [95% Wilson]':>26} "
        f"{'recall [95% Wilson]':>26}  reasons"
    )
    for fmt, (name, judge) in itertools.product(["all", *formats], judges().items()):
        chosen = [pair for pair in pairs if fmt in ("all", pair["format"])]
        reasons = [judge(pair) for pair in chosen]
        merged = [pair["same"] for pair, reason in zip(chosen, reasons, strict=True) if reason]
        positives = sum(pair["same"] for pair in chosen)
        true = sum(merged)
        why = Counter(reason for reason in reasons if reason)
        print(
            f"{fmt:<8} {name:<18} {len(chosen):>4} {_interval(true, len(merged)):>26} "
            f"{_interval(true, positives):>26}  {dict(why)}"
        )


# --- build: the pairs drawn from real outputs -------------------------------------

_CITY = r"([A-Z][\w'. -]*?)"
_END = r"\s*(?:[.,;!\n]|$)"
_CAPITAL_RES = (
    # "The capital of France is Paris.", "France's capital city is: Paris"
    re.compile(
        r"\b(?:capital(?: city)? of [A-Z][\w ]*?|[A-Z][\w ]*?['’]s capital(?: city)?)"
        rf" is:? (?:the city of )?{_CITY}{_END}"
    ),
    # "Paris is the capital of France.", "Paris, the capital of France"
    re.compile(rf"^{_CITY}(?: is|,) the capital(?: city)? of "),
)
_HEDGE_RE = re.compile(r"\b(not|or|no|isn't)\b", re.IGNORECASE)
_ARITHMETIC_RE = re.compile(r"\s*-?\d+\s*[-+*x×]\s*-?\d+\s*=\s*(-?\d+)\.?\s*")
_STATED_RE = re.compile(r"(?:The answer is|The result is) (-?\d+)\.?")


class _Whole(str):
    """A hand snippet that matches only the whole answer (its words occur in others)."""


_HAND_LABELS: dict[tuple[str, str], bool | None] = {}
"""Pairs the rules cannot label (``None`` from the rules) or label wrongly, checked by
eye: (a, b) -> same, or None to leave the pair out (no confident label). Filled from
``_HAND`` below."""
_HAND = [
    # No confident label (issue #15's second round of checks): the sentence names the
    # city as the capital of something else, or contradicts itself.
    ("Bochum, also known as Berlin", "", None),
    ("Malaysia is the capital of the Malay archipelago", "", None),
    ("El Salvador is the capital of the 22nd", "", None),
    ("London, not London itself", "", None),
    ("Capital of Colombia is the capital of the country", "", None),
    ("Capital of Ghana is the capital of Ghana", "", None),
    ("Egypt is the capital of the ancient Egyptian empire", "", None),
    ("Myanmar also has a capital called", "", None),
    ("Nepal is the capital of the 12th kingdom", "", None),
    ("Poland is the capital of the Baltic states", "", None),
    ("the capital of the state of New York", "", None),
    ('The answer is: "MEX"', "", None),
    ("Portspring", "", None),
    ("Portugal is home to the city of Lisbon, not just one capital", "", None),
    ("The capital of Denmark is the capital of the city of Copenhagen", "", None),
    ('of Hungary is "Buda"', "", None),
    ("Hanoi, Ho Chi Minh, Saigon", "", None),
    ("two main capitals, Hanoi and Saigon", "", None),
    ("Spain also has its own capital, Madrid", "", None),
    # Rules wrong: these name the capital but state another city (or none) as it.
    ("Manchester is the capital of the United Kingdom", "Manchester is the capital of", False),
    ("Nairobi, 800 km (430 mi) from the capital of Kenya", "", False),
    ("The capital is the capital city of Kerman", "", False),
    # Rules wrong: both state the same (wrong) capital.
    ("Ciudad Bolío", "Ciudad Bolío", True),
    # Rules wrong (found in #15's second round): a list marker before the one answer
    # stated ("1. Colombia" states Colombia, as "Colombia" does).
    (_Whole("1. Colombia"), _Whole("Colombia"), True),
    # Capitals: sentences that state the same city, in ways the rules do not parse.
    ("Answer: Buenos Aires", "Buenos Aires", True),
    ("its capital city is Dhaka", "Dhaka", True),
    ("known as Tehran", "Tehran", True),
    ("which is Reykjavík", "Reykjavik", True),
    ("Amsterdam, Netherlands", "Amsterdam.", True),
    ("New Zealand's capital is Wellington", "New Zealand is Wellington", True),
    ("New Zealand's capital is Auckland", "New Zealand is Auckland", True),
    ("is Manila", "Manila", True),
    ("London", "London", True),
    ("New York", "New York", True),
    ("Athens", "Athens", True),
    ("Tokyo", "Tokyo", True),
    ("also called Brussels", "is Brussels", True),
    ("Santiago", "Santiago", True),
    ("Germany is Berlin", "Berlin", True),
    ("Kyiv", "Kiev", True),
    # Arithmetic: both state the same result.
    ("= 64.", "= 64", True),
    ("15 * 5 = 75", "15 * 5 = 75", True),
    ("37 * 5 = 175", "37 * 5 = 175", True),
    ("34 = 34", "indeed 34", True),
    # No confident label: garbled or self-contradicting answers.
    ("Paris, France - No.", "", None),
    ("Mexico City - the capital of the world.", "", None),
    ("The capital city of Vienna", "", None),
    ("Reykjavíð", "", None),
    ("119 = 119 + 640", "", None),
    ("56 is equal to 17.", "", None),
    ("To find 13 * 10", "", None),
    ("613 = 613-662", "", None),
    ("238 + 901 = 238 + 180", "", None),
]


def _hand_label(a: str, b: str) -> tuple[bool, bool | None]:
    """(matched, label) from ``_HAND``: a hand rule matches when its two snippets are
    found in the two answers (either order; see :func:`_matches`); the first match wins."""
    for first, second, label in _HAND:
        for x, y in ((a, b), (b, a)):
            if _matches(first, x) and _matches(second, y):
                return True, label
    return False, None


def _matches(snippet: str, answer: str) -> bool:
    """A hand snippet is found in the answer (a :class:`_Whole` one is the answer)."""
    return answer == snippet if isinstance(snippet, _Whole) else snippet in answer


def _city(text: str) -> str | None:
    bare = normalize_answer(text)
    if bare and len(bare.split()) <= 3 and not _HEDGE_RE.search(bare):
        return bare
    cities = {found.casefold() for pattern in _CAPITAL_RES for found in pattern.findall(text)}
    if len(cities) == 1 and not _HEDGE_RE.search(text):
        return cities.pop()
    return None


def _number(text: str) -> str | None:
    bare = normalize_answer(text)
    if re.fullmatch(r"-?\d+", bare):
        return bare
    found = _ARITHMETIC_RE.fullmatch(text) or _STATED_RE.fullmatch(text.strip())
    return found.group(1) if found else None


def _stored(db: str) -> dict[tuple[str, str, str], tuple[dict[str, str], str]]:
    """Per (experiment, name, item): answer -> the first model that gave it, and the
    question the models were asked (the scored step's rendered prompt)."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = connection.execute(
        "select s.experiment_id, e2.name, s.item_id, e.model_id, e.response, st.prompt"
        " from thinktank_experiment_samples s"
        " join thinktank_parallel_executions e on e.session_id = s.session_id"
        " join thinktank_steps st on st.id = e.step_id"
        " join thinktank_experiments e2 on e2.id = s.experiment_id"
        " where e.response is not null and e.status = 'ok'"
        " order by s.item_id, e.model_id, s.config_id"
    ).fetchall()
    connection.close()
    items: dict[tuple[str, str, str], tuple[dict[str, str], str]] = {}
    for experiment, name, item, model, response, prompt in rows:
        answers, _ = items.setdefault((experiment, name, item), ({}, prompt or ""))
        if response.strip():
            answers.setdefault(response.strip(), model)
    return items


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def _targets() -> dict[str, list[str]]:
    """Each capitals item's accepted capitals, folded (case and diacritics)."""
    found = {}
    for line in (DATA / "capitals.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        target = item["target"] if isinstance(item["target"], list) else [item["target"]]
        found[item["id"]] = [_fold(name) for name in target]
    return found


def _both_name(a: str, b: str, names: Sequence[str]) -> bool:
    """Whether both answers name one of ``names`` (whole words, folded): a candidate
    for a positive the rules cannot read, so it is drawn and checked by eye."""
    return any(
        all(re.search(rf"\b{re.escape(name)}\b", _fold(text)) for text in (a, b)) for name in names
    )


def _label(a: str, b: str, names: Sequence[str] | None) -> tuple[bool, bool | None]:
    """(by hand, label): the hand label when one matches, else the rules': the same
    city (capitals, ``names`` the item's accepted capitals) or result stated, or, for
    capitals, both answers naming an accepted capital (every such pair was checked by
    eye, and the few that name it without stating it as the answer are in ``_HAND``)."""
    matched, label = _hand_label(a, b)
    if not matched:
        read = _number if names is None else _city
        first, second = read(a), read(b)
        label = (first is not None and first == second) or (
            names is not None and _both_name(a, b, names)
        )
    return matched, label


def build(dbs: Sequence[str]) -> Iterable[Pair]:
    """The pairs of real outputs in the runs of ``dbs`` (see the module docstring)."""
    items = {key: stored for db in dbs for key, stored in _stored(db).items()}
    targets = _targets()
    rng = random.Random(15)
    for (experiment, name, item), (answers, question) in sorted(items.items()):
        capitals = item.startswith("capitals")
        gemma = [(a, m) for a, m in answers.items() if m.startswith("local")]
        smol = [(a, m) for a, m in answers.items() if m.startswith("smollm2")]
        pairs = [
            *itertools.product(gemma, smol),
            *itertools.combinations(gemma, 2),
            *itertools.combinations(smol, 2),
        ]
        rng.shuffle(pairs)
        for index, ((a, model_a), (b, model_b)) in enumerate(pairs):
            names = targets[item] if capitals else None
            matched, label = _label(a, b, names)
            # A few random pairs per item, and every other pair of capitals labelled
            # same or naming the capital (the hard positives, and negatives like them).
            drawn = index < (4 if capitals else 3) or (
                capitals and (label is not False or _both_name(a, b, targets[item]))
            )
            if label is None or not drawn:
                continue
            yield {
                "a": a,
                "b": b,
                "same": label,
                "reason": _reason(label, capitals, matched),
                "format": "short" if capitals else "number",
                "question": question,
                "source": f"thinktank eval run {experiment} ({name}), item {item},"
                f" {model_a} vs {model_b}",
            }


def _reason(same: bool, capitals: bool, by_hand: bool) -> str:
    what = "capital" if capitals else "result"
    how = "checked by hand" if by_hand else "labelled by rule, checked by eye"
    if same:
        return f"both state the same {what} ({how})"
    return f"different {what}s, or one states none ({how})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="report", choices=["report", "build"])
    parser.add_argument(
        "--db",
        action="append",
        default=[],
        help="build: a database of stored runs to draw real outputs from (repeatable)",
    )
    args = parser.parse_args(argv)
    shipped = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
    if args.command == "report":
        report(shipped)
        return
    if not args.db:
        parser.error("build needs --db")
    for pair in [*build(args.db), *(p for p in shipped if p["source"] == "hand-written")]:
        print(json.dumps(pair, ensure_ascii=False))


if __name__ == "__main__":
    main()
