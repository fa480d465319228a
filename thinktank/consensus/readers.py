"""Reading a number or a choice letter out of an answer.

This module owns how a response's number (``"The answer is 1,234.5."`` -> 1234.5) and
multiple-choice letter (``"(B) Lyon"`` -> ``B``) are found. The scorers of
:mod:`thinktank.eval.scoring` and the answer formats of
:mod:`thinktank.consensus.formats` both read answers through these functions, so an
answer is scored and voted on as the same value. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from thinktank.consensus.normalize import _ANSWER_MARKER_RE, normalize_answer

__all__ = [
    "extract_choice",
    "extract_number",
    "is_number",
    "option_letter",
    "stated_number",
    "structured_answer",
]

_LETTERS = string.ascii_uppercase
"""The choice letters, ``A`` for the first option."""

# A number is a whole token: not glued to a letter, digit or decimal point on its left
# (so "x2" and "3.14"'s "14" are not numbers) nor to a digit on its right (so "420" is
# never 42; a unit may follow, "42km" is 42). Thousands
# separators only in groups of exactly three, so "1,2,3" is three numbers.
_NUMBER_RE = re.compile(
    r"(?<![\w.])(?P<sign>[+\-−]?)"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?"
    r"(?:(?<=\d)|(?=\.\d))(?P<frac>\.\d+)?"
    r"(?P<exp>[eE][+\-]?\d+)?(?!\d|\.\d)"
)
# A choice letter: bracketed in any case, a capital standing alone, or a lower-case letter
# that ends the text or is followed by ")", "." or ":" (a bare "a" is usually an article).
_LETTER_TOKEN = r"(?:\((?P<b>[A-Za-z])\)|(?P<u>[A-Z])(?![\w'’])|(?P<l>[a-z])(?=[).:]|\s*$))"
_LETTER_AFTER_MARKER_RE = re.compile(_LETTER_TOKEN)
_LETTER_AT_START_RE = re.compile(r"(?:\((?P<b>[A-Za-z])\)|(?P<u>[A-Za-z])(?:[).:](?!\w)|\s*$))")
_BRACKETED_LETTER_RE = re.compile(r"\((?P<b>[A-Z])\)")


def extract_number(text: str) -> Decimal | None:
    """The last number in ``text``, or None.

    Digits first (``"-1,234.5e3"``, ``".5"``; thousands separators in groups of three;
    a trailing ``%`` ignored); when ``text`` has no number in digits, an English number
    in words that is the whole extracted answer (``"The answer is forty-two"``).
    """
    last: Decimal | None = None
    for found in _NUMBER_RE.finditer(text):
        if not (found.group("int") or found.group("frac")):
            continue
        sign = "-" if found.group("sign") in {"-", "−"} else ""
        digits = (found.group("int") or "0").replace(",", "")
        literal = f"{sign}{digits}{found.group('frac') or ''}{found.group('exp') or ''}"
        try:
            last = Decimal(literal)
        except InvalidOperation:  # pragma: no cover - the pattern only admits decimals
            continue
    if last is not None:
        return last
    # No digits: the normaliser reads a whole answer written in words ("forty-two").
    canonical = normalize_answer(text)
    if canonical and canonical[0].isdigit() and not canonical.endswith("%"):
        try:
            return Decimal(canonical)
        except InvalidOperation:
            return None
    return None


def extract_choice(text: str, choices: tuple[str, ...] | None = None) -> str | None:
    """The multiple-choice letter ``text`` answers with (upper case), or None.

    In order: the letter after the last ``Answer:`` / ``The answer is``; a letter opening
    the text (``"B"``, ``"(b)"``, ``"B) Lyon"``, ``"C. 12"``); with ``choices``, the
    letter of the option whose text the whole answer is (after normalisation); the last
    bracketed capital (``"I pick (C) here"``). With ``choices``, a letter beyond the
    last option is not an answer.
    """
    count = len(choices) if choices is not None else len(_LETTERS)
    stripped = structured_answer(text).strip()
    readers: list[Callable[[str], str | None]] = [_letter_after_marker, _letter_at_start]
    if choices is not None:
        readers.append(functools.partial(option_letter, choices=choices))
    readers.append(_last_bracketed_letter)
    for reader in readers:
        found = reader(stripped)
        # A letter past the last option ("I think..." with four options) is prose.
        if found is not None and _LETTERS.index(found.upper()) < count:
            return found.upper()
    return None


def structured_answer(text: str) -> str:
    """The ``answer`` of a structured reply (``{"answer": "B"}`` gives ``"B"``), else
    ``text`` unchanged.

    A provider with structured output answers a ``choice`` or ``yes_no`` step with
    that object (OpenAI's strict mode needs an object at the root), so the value is
    read out before any letter or yes/no is looked for.
    """
    stripped = text.strip()
    if not stripped.startswith("{"):
        return text
    try:
        value = json.loads(stripped)
    except ValueError:
        return text
    if isinstance(value, dict) and isinstance(value.get("answer"), str) and len(value) == 1:
        return str(value["answer"])
    return text


def _last_bracketed_letter(text: str) -> str | None:
    """The last bracketed capital (``"I pick (C) here"``)."""
    bracketed = list(_BRACKETED_LETTER_RE.finditer(text))
    return bracketed[-1].group("b") if bracketed else None


def _letter_after_marker(text: str) -> str | None:
    """The letter right after the last answer marker that is followed by one."""
    for marker in reversed(list(_ANSWER_MARKER_RE.finditer(text))):
        found = _LETTER_AFTER_MARKER_RE.match(text, marker.end())
        if found is not None:
            return found.group("b") or found.group("u") or found.group("l")
    return None


def _letter_at_start(text: str) -> str | None:
    """The letter opening ``text`` as a choice label (``"B"``, ``"B) Lyon"``, ``"(b)"``)."""
    found = _LETTER_AT_START_RE.match(text)
    if found is None:
        return None
    return found.group("b") or found.group("u")


def option_letter(text: str, choices: tuple[str, ...]) -> str | None:
    """The letter of the option whose normalised text the whole answer is, if exactly one."""
    answer = normalize_answer(text)
    letters = [
        _LETTERS[index]
        for index, option in enumerate(choices)
        if answer and normalize_answer(option) == answer
    ]
    return letters[0] if len(letters) == 1 else None


# Where a sentence states its result: "=", "equals", a copula. ("The answer is" is
# _ANSWER_MARKER_RE, which outranks them.)
_STATED_MARKER_RE = re.compile(
    r"(?:=|\bequals\b|\bis\b|\bare\b|\bwas\b|\bgives\b)[ \t*_:：$]*",
    re.IGNORECASE,
)


def is_number(text: str) -> bool:
    """Whether the whole of ``text`` (stripped, a trailing ``%`` allowed) is one number
    in digits."""
    return _NUMBER_RE.fullmatch(text.strip().removesuffix("%")) is not None


def stated_number(text: str) -> Decimal | None:
    """The number ``text`` states as its answer, or None when it states none clearly.

    In order: the number right after the last ``"the answer is"`` / ``"Answer:"`` that
    a number follows (``"The answer is 42 (6 x 7)"`` -> 42); else the last number when
    it follows ``"="``, ``"equals"`` or a copula (``"119 + 640 = 759"`` -> 759) or is
    the only number (``"42 km"`` -> 42); else, with no digits at all, a whole answer in
    words (``"forty-two"``). A text whose last number is not stated
    (``"729 + 783 = 783 + 279"``, ``"656 and 538 are the same"``) states none.
    Numbers are whole tokens: ``"420"`` never reads as 42.
    """
    found = [m for m in _NUMBER_RE.finditer(text) if m.group("int") or m.group("frac")]
    if not found:
        return extract_number(text)
    starts = {match.start(): match for match in found}
    for marker in reversed(list(_ANSWER_MARKER_RE.finditer(text))):
        if marker.end() in starts:
            return extract_number(starts[marker.end()].group())
    last = found[-1]
    stated = any(marker.end() == last.start() for marker in _STATED_MARKER_RE.finditer(text))
    if stated or len(found) == 1:
        return extract_number(last.group())
    return None
