"""Answer extraction and normalisation: the notion of "the same answer" used by consensus.

This module owns how a raw model response is reduced to a short, comparable answer
string. Two responses agree exactly when :func:`normalize_answer` maps them to the same
string. Everything here is a pure function of its input: no I/O, no model calls.

Extraction (:func:`extract_answer`) picks, in order of preference:

1. the content of the last LaTeX ``\\boxed{...}``;
2. the text after the last ``Answer:`` / ``Final answer:`` / ``The answer is``;
3. for multi-line text, the last non-empty line;
4. otherwise the whole text.

Normalisation (:func:`normalize_answer`) then applies Unicode NFKC, case folding,
stripping of surrounding punctuation, quotes and leading articles, whitespace
collapsing, and canonical forms for numbers (digits or English words) and for yes/no
answers. It is idempotent: ``normalize_answer(normalize_answer(x)) == normalize_answer(x)``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation

__all__ = ["extract_answer", "format_decimal", "normalize_answer"]

_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""Every character :meth:`str.splitlines` splits on."""

_BOXED_RE = re.compile(r"\\boxed\s*\{", re.IGNORECASE)
_ANSWER_MARKER_RE = re.compile(
    r"\banswer(?:[ \t*_]*[:：]|[ \t*_]+is\b[ \t*_]*[:：]?)[\s*_]*", re.IGNORECASE
)
"""``Answer:``, ``Final answer:``, ``The answer is`` (markdown emphasis allowed around)."""
_REST_OF_LINE_RE = re.compile(rf"[^{_LINE_BREAKS}]*")
_NUMBER_RE = re.compile(
    r"(?P<sign>[+\-−]?)(?P<int>\d{1,3}(?:,\d{3})+|\d*)(?:\.(?P<frac>\d+))?(?P<percent>%?)"
)
_SIGNED_NUMBER_START_RE = re.compile(r"[+\-]?\.?\d")
_WORD_SPLIT_RE = re.compile(r"[\s,\-]+")

_KEPT_PUNCTUATION = frozenset("\\#%&@")
"""Punctuation that carries meaning at the edge of an answer and is never stripped."""
_EXTRA_STRIPPED = frozenset("`$")
"""Non-punctuation characters that are still stripped as decoration (code, LaTeX math)."""
_ARTICLES = ("a", "an", "the")

_YES = frozenset({"yes", "y", "true", "correct"})
_NO = frozenset({"no", "n", "false", "incorrect"})

_UNITS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_SMALL = _UNITS | _TEENS
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}

_MAX_PASSES = 32
"""Bound on repeated normalisation passes; real inputs settle in one or two."""


def extract_answer(text: str) -> str:
    """Extract the answer part of a model response.

    Preference order: the last ``\\boxed{...}`` (braces may nest), then the text after
    the last ``Answer:`` / ``Final answer:`` / ``The answer is`` (case-insensitive, up
    to the end of its line, or the next non-empty line when the marker ends its line),
    then the last non-empty line of multi-line text, then the whole text. Extraction
    repeats on its own result until it no longer changes, so ``\\boxed{Answer: 4}``
    gives ``4``.

    Args:
        text: A raw model response.

    Returns:
        The extracted answer, stripped of surrounding whitespace (``""`` for blank text).
    """
    current = text.strip()
    while True:
        extracted = _extract_once(current)
        if extracted == current:
            return current
        current = extracted


# Pure and hot: quorum re-checks agreement on every arrival, so the same answers are
# normalised again and again (~27 times per 5-model quorum run before caching).
@functools.lru_cache(maxsize=4096)
def normalize_answer(text: str) -> str:
    """Reduce a model response to a canonical answer string for comparison.

    The answer is first extracted (see :func:`extract_answer`), then: Unicode NFKC and
    case folding; surrounding punctuation, quotes and unbalanced brackets stripped (a
    trailing period included); leading articles (a, an, the) dropped; whitespace
    collapsed. A whole answer that is a number (``"+1,000.50"``, ``"forty-two"``,
    ``"one thousand"``) becomes its canonical decimal form without trailing zeros
    (``"1000.5"``, ``"42"``, ``"1000"``); a whole answer that is a yes/no synonym becomes
    ``"yes"`` or ``"no"``.

    Args:
        text: A raw model response or an already extracted answer.

    Returns:
        The normalised answer; ``""`` when nothing is left.
    """
    current = text
    for _ in range(_MAX_PASSES):
        normalized = _normalize_once(current)
        if normalized == current:
            break
        current = normalized
    return current


def _extract_once(text: str) -> str:
    """Apply one round of the extraction rules to stripped ``text``."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    for marker in reversed(list(_ANSWER_MARKER_RE.finditer(text))):
        rest = _REST_OF_LINE_RE.match(text, marker.end())
        answer = "" if rest is None else rest.group().strip()
        if answer:
            return answer
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return lines[-1]
    return text.strip()


def _last_boxed(text: str) -> str | None:
    """Return the stripped content of the last balanced, non-blank ``\\boxed{...}``."""
    markers = list(_BOXED_RE.finditer(text))
    if not markers:
        return None
    pairs = _bracket_pairs(text, lambda char: char == "{", lambda char: char == "}")
    for marker in reversed(markers):
        closer = pairs.get(marker.end() - 1)
        if closer is not None:
            content = text[marker.end() : closer].strip()
            if content:
                return content
    return None


def _normalize_once(text: str) -> str:
    """One normalisation pass; :func:`normalize_answer` repeats it to a fixed point."""
    folded = _fold(text)
    answer = " ".join(extract_answer(folded).split())
    answer = _strip_decoration(answer)
    return _canonical_number(answer) or _canonical_yes_no(answer) or answer


def _fold(text: str) -> str:
    """NFKC plus case folding, repeated until stable (casefolding can denormalise)."""
    current = unicodedata.normalize("NFKC", text)
    for _ in range(_MAX_PASSES):
        folded = unicodedata.normalize("NFKC", current.casefold())
        if folded == current:
            break
        current = folded
    return current


def _strip_decoration(text: str) -> str:
    """Strip surrounding whitespace, punctuation, quotes and leading articles.

    Repeats until nothing more can be stripped: decoration characters from either end
    (a leading sign or decimal point of a number is kept), an opening bracket without
    its closing one (and vice versa), a bracket pair enclosing the whole text, and a
    leading article followed by more text. Linear in the length of ``text``.
    """
    pairs = _bracket_pairs(text, _is_opening, _is_closing)
    low, high = 0, len(text)
    while True:
        before = (low, high)
        while low < high and text[low].isspace():
            low += 1
        while high > low and text[high - 1].isspace():
            high -= 1
        if low < high:
            low, high = _strip_front(text, pairs, low, high)
        if low < high:
            high = _strip_back(text, pairs, low, high)
        if (low, high) == before:
            return text[low:high]


def _strip_front(text: str, pairs: dict[int, int], low: int, high: int) -> tuple[int, int]:
    """One step of stripping at the front of ``text[low:high]`` (which is not empty)."""
    first = text[low]
    if _is_opening(first):
        partner = pairs.get(low)
        if partner is None or partner >= high:
            return low + 1, high
        if partner == high - 1:
            return low + 1, high - 1
        return low, high
    if _is_decoration(first):
        if _SIGNED_NUMBER_START_RE.match(text, low, high):
            return low, high
        return low + 1, high
    return _skip_article(text, low, high), high


def _strip_back(text: str, pairs: dict[int, int], low: int, high: int) -> int:
    """One step of stripping at the back of ``text[low:high]`` (which is not empty)."""
    last = text[high - 1]
    if _is_closing(last):
        partner = pairs.get(high - 1)
        if partner is None or partner < low:
            return high - 1
        return high
    if _is_decoration(last):
        return high - 1
    return high


def _skip_article(text: str, low: int, high: int) -> int:
    """Index after a leading article and its space in ``text[low:high]``, else ``low``.

    The article is only skipped when more text follows it, so ``"a"`` stays ``"a"``.
    """
    for article in _ARTICLES:
        end = low + len(article)
        if end < high and text.startswith(article, low) and text[end].isspace():
            return end
    return low


def _is_opening(char: str) -> bool:
    """Whether ``char`` is an opening bracket (Unicode category ``Ps``)."""
    return unicodedata.category(char) == "Ps"


def _is_closing(char: str) -> bool:
    """Whether ``char`` is a closing bracket (Unicode category ``Pe``)."""
    return unicodedata.category(char) == "Pe"


def _is_decoration(char: str) -> bool:
    """Whether ``char`` is punctuation or a quote that may be stripped from an edge."""
    if char in _KEPT_PUNCTUATION:
        return False
    return char in _EXTRA_STRIPPED or unicodedata.category(char).startswith("P")


def _bracket_pairs(
    text: str, is_opening: Callable[[str], bool], is_closing: Callable[[str], bool]
) -> dict[int, int]:
    """Match brackets by nesting: maps the index of each paired bracket to its partner's.

    Only nesting depth counts (any opening bracket pairs with any closing one); brackets
    left unpaired are absent from the result.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for index, char in enumerate(text):
        if is_opening(char):
            stack.append(index)
        elif is_closing(char) and stack:
            partner = stack.pop()
            pairs[index] = partner
            pairs[partner] = index
    return pairs


def _canonical_number(text: str) -> str | None:
    """Canonical decimal string when the whole of ``text`` is a number, else None."""
    match = _NUMBER_RE.fullmatch(text)
    if match is not None and (match.group("int") or match.group("frac")):
        digits = match.group("int").replace(",", "") or "0"
        frac = match.group("frac") or "0"
        sign = "-" if match.group("sign") in {"-", "−"} else ""
        try:
            value = Decimal(f"{sign}{digits}.{frac}")
        except InvalidOperation:
            return None
        return format_decimal(value) + match.group("percent")
    words = _words_to_int(text)
    return None if words is None else str(words)


def format_decimal(value: Decimal) -> str:
    """Plain (non-exponent) form of ``value`` without trailing zeros; zero is ``"0"``."""
    if value.is_zero():
        return "0"
    exact = Context(prec=max(28, len(value.as_tuple().digits)))
    return format(value.normalize(exact), "f")


def _canonical_yes_no(text: str) -> str | None:
    """``"yes"`` or ``"no"`` when the whole of ``text`` is a synonym of one, else None."""
    if text in _YES:
        return "yes"
    if text in _NO:
        return "no"
    return None


def _words_to_int(text: str) -> int | None:
    """Parse an English number in words (``"one million two hundred and five"``).

    Grammar: ``zero``, or groups below one thousand each optionally followed by a scale
    word (thousand, million, billion) in strictly decreasing order. Words may be
    separated by spaces, hyphens or commas; ``and`` may follow ``hundred`` or a scale
    word. A scale or ``hundred`` without a count means one of it (``"a hundred"``
    reaches here as ``"hundred"``).

    Returns:
        The integer value, or None when ``text`` is not entirely a number in words.
    """
    tokens = [token for token in _WORD_SPLIT_RE.split(text) if token]
    if not tokens:
        return None
    if tokens == ["zero"]:
        return 0
    total = 0
    last_scale: int | None = None
    index = 0
    while index < len(tokens):
        value, index = _parse_group(tokens, index)
        if index < len(tokens) and tokens[index] in _SCALES:
            scale = _SCALES[tokens[index]]
            if last_scale is not None and scale >= last_scale:
                return None
            total += (1 if value is None else value) * scale
            last_scale = scale
            index += 1
            if index + 1 < len(tokens) and tokens[index] == "and":
                index += 1
            continue
        if value is None or index != len(tokens):
            return None
        total += value
    return total


def _parse_group(tokens: list[str], index: int) -> tuple[int | None, int]:
    """Parse a number below one thousand at ``tokens[index]``.

    Returns:
        The value (None when no number word was consumed) and the next index.
    """
    value: int | None = None
    if index < len(tokens) and tokens[index] == "hundred":
        value, index = 100, index + 1
    elif index + 1 < len(tokens) and tokens[index] in _SMALL and tokens[index + 1] == "hundred":
        value, index = _SMALL[tokens[index]] * 100, index + 2
    if (
        value is not None
        and index + 1 < len(tokens)
        and tokens[index] == "and"
        and (tokens[index + 1] in _SMALL or tokens[index + 1] in _TENS)
    ):
        index += 1
    if index < len(tokens) and tokens[index] in _TENS:
        tens = _TENS[tokens[index]]
        index += 1
        if index < len(tokens) and tokens[index] in _UNITS:
            tens += _UNITS[tokens[index]]
            index += 1
        value = (value or 0) + tens
    elif index < len(tokens) and tokens[index] in _SMALL:
        value = (value or 0) + _SMALL[tokens[index]]
        index += 1
    return value, index
