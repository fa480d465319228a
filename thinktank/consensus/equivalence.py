"""Answer equivalence: whether two short answers state the same answer, and why.

This module owns the layered test that merges answers worded differently ("Paris" =
"The capital of France is Paris." = "Paris, France"; "42" = "The answer is 42.";
"B" = "(B) Lyon" when the choices are known; "yes" = "Yes, it is.") and the reasons it
records. Each layer that says "the same" names itself with one of the reason constants
below; a pair no layer accepts is not equivalent (None).

The layers are built for precision: a merge that joins two contradicting answers
corrupts a vote, a missed merge only weakens it. So a sentence never agrees with a bare
answer when it negates or hedges ("not Paris", "Paris or Lyon"), when it names another
candidate answer of the panel, or when the bare answer does not sit where a sentence
states its answer (after "is", ":" or "=", or opening it, and ending a clause).
Given the question (the step's prompt), a sentence opening
"X is the P" states X when P restates the question ("Paris is the capital of France."),
never otherwise ("Venezuela is the 18th largest country" is about Venezuela). A list
marker ("1. Oslo") and a repeated bare answer ("Oslo, Oslo") are read as the answer; a
text of several sentences states what its first stating sentence states, unless a later
one takes it back. Numbers are whole tokens ("42" is never "420" nor "4.2"). With a declared
:class:`~thinktank.consensus.formats.AnswerFormat` other than ``short`` and ``free``, the
format alone decides: two answers agree when
:func:`~thinktank.consensus.formats.extract_formatted` gives both the same value.
Every function here is pure and symmetric in its two answers.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection, Sequence

from thinktank.consensus.formats import AnswerFormat, extract_formatted
from thinktank.consensus.normalize import normalize_answer
from thinktank.consensus.readers import is_number, stated_number

__all__ = [
    "BARE_WORDS",
    "FIRST_STATEMENT",
    "REASONS",
    "SAME_CHOICE",
    "SAME_JSON",
    "SAME_NORMALIZED",
    "SAME_NUMBER",
    "SAME_YES_NO",
    "STATES_ANSWER",
    "answer_tokens",
    "canonical_answer",
    "equivalence_reason",
    "is_bare",
]

SAME_NORMALIZED = "same_normalized"
"""Equal :func:`~thinktank.consensus.normalize.normalize_answer` (or equal extracted
answers under a ``short`` format)."""
STATES_ANSWER = "states_answer"
"""A sentence states the bare answer ("The capital of France is Paris." and "Paris"),
perhaps behind a list marker ("1. Oslo") or repeated ("Oslo, Oslo")."""
FIRST_STATEMENT = "first_statement"
"""The first sentence stating an answer in each states the same one, and nothing later
takes it back ("The capital of Thailand is Bangkok. The answer is a name." and
"Bangkok")."""
SAME_NUMBER = "same_number"
"""The same number stated as the result ("42", "42 km", "The answer is 42.")."""
SAME_CHOICE = "same_choice"
"""The same choice letter ("B", "(B) Lyon", "Lyon" when Lyon is choice B)."""
SAME_YES_NO = "same_yes_no"
"""The same yes/no answer ("yes", "Yes, it is.")."""
SAME_JSON = "same_json"
"""The same JSON value (key order and spacing aside)."""
REASONS = (
    SAME_NORMALIZED,
    STATES_ANSWER,
    FIRST_STATEMENT,
    SAME_NUMBER,
    SAME_CHOICE,
    SAME_YES_NO,
    SAME_JSON,
)
"""Every reason :func:`equivalence_reason` may give."""

BARE_WORDS = 3
"""A canonical answer of at most this many words is a bare answer (a name, a number, a
short phrase): a candidate a sentence may state."""

_FORMAT_REASONS = {
    "number": SAME_NUMBER,
    "choice": SAME_CHOICE,
    "yes_no": SAME_YES_NO,
    "json": SAME_JSON,
}

_TOKEN_RE = re.compile(r"\n|\d+(?:[.,]\d+)*|\w+(?:['’]\w+)*|[^\w\s]")
"""Words (with their apostrophes), whole numbers (``4.2`` and ``420`` are one token
each), single punctuation marks and line breaks, which end a clause."""
_VETO = frozenset(
    {
        "not",
        "no",
        "never",
        "nor",
        "neither",
        "either",
        "or",
        "except",
        "instead",
        "rather",
        "cannot",
        "unlike",
        "formerly",
    }
)
"""Words that make a sentence deny, hedge or name alternatives: it states no single answer."""
_STATING = frozenset(
    {
        "is",
        "are",
        "was",
        "be",
        "being",
        "answer",
        "equals",
        "called",
        "named",
        ":",
        "=",
        "it's",
        "it’s",
    }
)
"""Tokens right before a bare answer where a sentence states it ("... is Paris")."""
_STATING_PAIRS = frozenset({("known", "as")})
"""Two-token phrases right before a stated answer ("... is known as Tehran")."""
_OPENING_WORDS = 6
"""A bare answer opening a sentence is stated only in a sentence this short ("Paris,
France"), not in one about it ("Finland, officially ..., is a Nordic country")."""
_CLAUSE_END = frozenset({".", ",", ";", "!", "?", ")", "(", "\n", '"', "“", "”"})
"""Tokens right after a stated answer: it ends a clause ("Paris." / "Paris, France")."""
_SENTENCE_END = frozenset({".", "!", "?", "\n"})
"""Tokens that end a sentence."""
_FILLERS = (
    ("indeed",),
    ("actually",),
    ('"',),
    ("“",),
    ("the", "city", "of"),
)
"""Tokens between a stating token and the answer it states ("is indeed Cairo", "is
actually Dublin", 'is "Tokyo"', "is the city of Mosul")."""
_NAMING = frozenset({"is", "was", ","})
"""Tokens after an opening answer that say what it is ("Paris is the capital ...")."""
_PREDICATE_END = frozenset({"and", "but", "which", "that", "while", "whose", *_STATING})
"""Words that end the predicate of "X is the P" (what follows says something else)."""
_QUESTION_STOPWORDS = frozenset(
    [
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "where",
        "when",
        "why",
        "how",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "do",
        "does",
        "did",
        "the",
        "a",
        "an",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "as",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "your",
        "you",
        "please",
        "answer",
        "only",
        "name",
        "give",
    ]
)
"""Words of a question that carry no content an answer would restate."""
_MARKER_RE = re.compile(r"\s*(?:\d{1,2}[.)]|\(?[A-Za-z]\))\s+(?=[^\W\d])")
"""A list marker opening an answer ("1. ", "(b) ", "a) ") before a word."""
_LINE_MARKER_RE = re.compile(r"\s(?:\d{1,2}[.)]|\(?[A-Za-z]\))\s")
"""A later list marker ("1. England 2. Wales"): the answer is a list."""
_REPEAT_SPLIT_RE = re.compile(r"\s*[,;\n]\s*")
"""What separates the copies of a repeated answer."""


def canonical_answer(text: str, fmt: AnswerFormat | None = None) -> str:
    """The comparable answer of ``text``: :func:`extract_formatted` under a declared
    format (``""`` when it gives none), else
    :func:`~thinktank.consensus.normalize.normalize_answer`."""
    if fmt is None:
        return normalize_answer(text)
    return extract_formatted(text, fmt) or ""


def answer_tokens(text: str) -> tuple[str, ...]:
    """The tokens the equivalence rules read: case-folded words without diacritics,
    whole numbers, single punctuation marks and line breaks; ``n't`` reads as ``not``."""
    return _tokens(text)


def is_bare(canonical: str) -> bool:
    """Whether a canonical answer is bare (non-empty, at most :data:`BARE_WORDS` words)."""
    return 0 < len(canonical.split()) <= BARE_WORDS


def equivalence_reason(
    a: str,
    b: str,
    fmt: AnswerFormat | None = None,
    candidates: Collection[str] = (),
    question: str = "",
) -> str | None:
    """Why answers ``a`` and ``b`` state the same answer, or None when they do not.

    Layers, in order: a declared format other than ``short``/``free`` decides alone
    (``same_number``, ``same_choice``, ``same_yes_no``, ``same_json``; a negated
    ``number`` never agrees); then equal canonical answers (``same_normalized``); then,
    for short answers, ``same_yes_no`` (a bare yes/no and an answer opening with it),
    ``same_number`` (the same number stated as the result by two answers, one of them
    bare, neither negated) and ``states_answer`` (see the module docstring). Blank
    answers are never equivalent to anything.

    Args:
        a: One raw response.
        b: The other.
        fmt: The step's declared answer format (None: undeclared).
        candidates: The canonical answers of the whole panel: a sentence that names one
            of them besides the bare answer states no single answer.
        question: The prompt both answered (the step's rendered prompt; "" when
            unknown). With it, "X is the P" states X when P restates the question
            ("Paris is the capital of France." to "What is the capital of France?").

    Returns:
        One of :data:`REASONS`, or None.
    """
    return _reason(a, b, fmt, frozenset(candidates), _question_words(question))


@functools.lru_cache(maxsize=256)
def _question_words(question: str) -> frozenset[str]:
    """The content words of ``question``'s first sentence ending with "?" (the whole
    prompt when none does): the words an answer restating it repeats."""
    words = _tokens(question)
    asked = next((s for s in _sentences(words) if s[-1] == "?"), words)
    return frozenset(w for w in asked if w[0].isalpha() and w not in _QUESTION_STOPWORDS)


# Pure and hot: quorum asks again for every pair on each arrival.
@functools.lru_cache(maxsize=8192)
def _reason(
    a: str, b: str, fmt: AnswerFormat | None, candidates: frozenset[str], question: frozenset[str]
) -> str | None:
    """:func:`equivalence_reason`, cached (``question``: its content words)."""
    ca, cb = canonical_answer(a, fmt), canonical_answer(b, fmt)
    if not ca or not cb:
        return None
    if fmt is not None and fmt.kind in _FORMAT_REASONS:
        if ca != cb or (fmt.kind == "number" and (_vetoed(a) or _vetoed(b))):
            return None
        return _FORMAT_REASONS[fmt.kind]
    if ca == cb:
        return SAME_NORMALIZED
    if fmt is not None and fmt.kind == "free":
        return None
    if {ca, cb} <= {"yes", "no"}:
        return None
    read_a, read_b = _read(a), _read(b)
    if (read_a, read_b) != (a, b):
        ca, cb = canonical_answer(read_a, fmt), canonical_answer(read_b, fmt)
        if ca and ca == cb:
            return STATES_ANSWER
    return _short_reason(read_a, read_b, ca, cb, candidates, question)


def _short_reason(
    a: str, b: str, ca: str, cb: str, candidates: frozenset[str], question: frozenset[str]
) -> str | None:
    """The short-answer layers, on answers read by :func:`_read`."""
    return (
        _same_yes_no(a, b, ca, cb)
        or _same_number(a, b, ca, cb)
        or _states_answer(a, b, ca, cb, candidates, question)
        or _state_same_answer(a, b, candidates, question)
        or _first_statements_agree(a, b, ca, cb, candidates, question)
    )


def _read(text: str) -> str:
    """``text`` without what is not part of its answer: one leading list marker
    ("1. Oslo", "(b) The capital of Greece is Athens.") when no other line opens with
    one (a list names several answers), and a bare answer repeated ("Bangkok, Bangkok,
    Bangkok") said once."""
    found = _MARKER_RE.match(text)
    if found and not _LINE_MARKER_RE.search(text, found.end()):
        text = text[found.end() :]
    parts = [part.strip(" .") for part in _REPEAT_SPLIT_RE.split(text.strip())]
    if len(parts) > 1 and len(set(parts)) == 1 and is_bare(normalize_answer(parts[0])):
        return parts[0]
    return text


def _same_yes_no(a: str, b: str, ca: str, cb: str) -> str | None:
    """One answer is a bare yes/no and the other's first clause is the same word."""
    for bare, other, other_text in ((ca, cb, b), (cb, ca, a)):
        if bare in {"yes", "no"} and other not in {"yes", "no"}:
            stated = extract_formatted(other_text, AnswerFormat("yes_no"))
            return SAME_YES_NO if stated == bare else None
    return None


def _same_number(a: str, b: str, ca: str, cb: str) -> str | None:
    """Both state the same number as their result, one is a bare number or a short
    phrase opening with one, and neither negates or hedges."""
    if not (_short_number(ca) or _short_number(cb)) or _vetoed(a) or _vetoed(b):
        return None
    first, second = stated_number(a), stated_number(b)
    if first is None or second is None or first != second:
        return None
    return SAME_NUMBER


def _short_number(canonical: str) -> bool:
    """A bare answer that opens with a number in digits ("42", "42 km")."""
    return is_bare(canonical) and is_number(canonical.split()[0])


def _states_answer(
    a: str, b: str, ca: str, cb: str, candidates: frozenset[str], question: frozenset[str]
) -> str | None:
    """Either answer is bare and the other is a sentence stating it (module docstring)."""
    for bare, sentence in ((ca, b), (cb, a)):
        if is_bare(bare) and _states(_tokens(bare), _tokens(sentence), candidates, question):
            return STATES_ANSWER
    return None


def _states(
    run: Sequence[str], words: Sequence[str], candidates: frozenset[str], question: frozenset[str]
) -> bool:
    """Whether the tokens ``words`` state the bare answer ``run`` and nothing else."""
    if not run or _denies_or_hedges(words, run) or _names_another(words, run, candidates):
        return False
    if not any(
        _at_answer_position(words, start, len(run), question) for start in _find(words, run)
    ):
        return False
    # Another phrase stated as an answer ("Tehran is the capital. The answer is
    # Ashgabat."): the words state two answers. A phrase restating the question
    # ("..., which is Canada's capital city") is no answer.
    return not _states_another(words, run, question)


def _states_another(words: Sequence[str], run: Sequence[str], question: frozenset[str]) -> bool:
    """Whether ``words`` state a phrase other than ``run`` as an answer: one that neither
    holds nor is part of it, is no description ("a large city") and does not restate
    the question ("..., which is Canada's capital city")."""
    return any(
        not (_find(phrase, run) or _find(run, phrase))
        and phrase[0] not in {"a", "an"}
        and not any(w.removesuffix("'s").removesuffix("’s") in question for w in phrase)
        for phrase in _stated_phrases(words, question)
    )


def _names_another(words: Sequence[str], run: Sequence[str], candidates: frozenset[str]) -> bool:
    """Whether ``words`` name a bare candidate other than ``run`` (nor part of it)."""
    for candidate in candidates:
        other = _tokens(candidate)
        if (
            is_bare(candidate)
            and other
            and _find(words, other)
            and not _find(run, other)
            and not _find(other, run)
        ):
            return True
    return False


def _state_same_answer(
    a: str, b: str, candidates: frozenset[str], question: frozenset[str]
) -> str | None:
    """Two sentences that each state one and the same bare answer ("The capital is
    Ottawa." and "The capital of Canada is Ottawa, in the east.")."""
    words_a, words_b = _tokens(a), _tokens(b)
    stated = _stated_phrases(words_a, question)
    if len(stated) != 1 or stated != _stated_phrases(words_b, question):
        return None
    (phrase,) = stated
    if _states(phrase, words_a, candidates, question) and _states(
        phrase, words_b, candidates, question
    ):
        return STATES_ANSWER
    return None


def _first_statements_agree(
    a: str, b: str, ca: str, cb: str, candidates: frozenset[str], question: frozenset[str]
) -> str | None:
    """Both answers state the same answer in their first sentence that states one, and
    nothing later takes it back ("The capital of Thailand is Bangkok. The answer is a
    name, word or short phrase." and "Bangkok"); a bare answer states itself."""
    first_a = _first_statement(_tokens(a), candidates, question) or (
        _tokens(ca) if is_bare(ca) else None
    )
    first_b = _first_statement(_tokens(b), candidates, question) or (
        _tokens(cb) if is_bare(cb) else None
    )
    if first_a and first_a == first_b:
        return FIRST_STATEMENT
    return None


def _first_statement(
    words: Sequence[str], candidates: frozenset[str], question: frozenset[str]
) -> tuple[str, ...] | None:
    """The answer the first sentence of ``words`` that states one states, when it
    states exactly one and no later sentence names another candidate, or negates or
    hedges it (or is a short denial: "It is not.")."""
    sentences = _sentences(words)
    for index, sentence in enumerate(sentences):
        stated = _stated_phrases(sentence, question)
        if not stated:
            continue
        if len(stated) != 1:
            return None
        (run,) = stated
        if not _states(run, sentence, candidates, question):
            return None
        for later in sentences[index + 1 :]:
            if (
                _names_another(later, run, candidates)
                or _answers_another(later, run)
                or (
                    _VETO.intersection(later)
                    and (_find(later, run) or _word_count(later) <= _OPENING_WORDS)
                )
            ):
                return None
        return run
    return None


def _answers_another(words: Sequence[str], run: Sequence[str]) -> bool:
    """Whether ``words`` say the answer is something other than ``run`` ("The answer is
    Lyon."), a description aside ("The answer is a name, word or short phrase.")."""
    for start in range(2, len(words)):
        if words[start - 1] not in {"is", ":"} or words[start - 2] != "answer":
            continue
        clause = _clause(words, start)
        bare = 0 < _word_count(clause) <= BARE_WORDS
        if bare and clause[0] not in {"a", "an"} and clause != tuple(run):
            return True
    return False


def _sentences(words: Sequence[str]) -> list[tuple[str, ...]]:
    """``words`` cut after each sentence end (empty sentences left out)."""
    sentences, current = [], []
    for word in words:
        current.append(word)
        if word in _SENTENCE_END:
            if _word_count(current):
                sentences.append(tuple(current))
            current = []
    if _word_count(current):
        sentences.append(tuple(current))
    return sentences


def _stated_phrases(words: Sequence[str], question: frozenset[str]) -> frozenset[tuple[str, ...]]:
    """The bare phrases ``words`` put where a sentence states its answer: after a
    stating token (or opening a short sentence, or naming the answer: see
    :func:`_names_as_answer`), up to the end of the clause, at most :data:`BARE_WORDS`
    tokens; only the minimal ones ("known as Tehran" gives "tehran", "Sydney, also
    known as Sydney Opera House" gives "sydney")."""
    starts = [start for start in range(1, len(words)) if _follows_stating(words, start)]
    if _word_count(words) <= _OPENING_WORDS:
        starts.append(0)
    phrases = {
        tuple(words[:end])
        for end in range(1, min(BARE_WORDS, len(words)) + 1)
        if _names_as_answer(words, 0, end, question)
    }
    for start in starts:
        for end in range(start + 1, min(start + BARE_WORDS, len(words)) + 1):
            if end == len(words) or words[end] in _CLAUSE_END:
                if words[start][0].isalnum():
                    phrases.add(tuple(words[start:end]))
                break
    return frozenset(
        phrase
        for phrase in phrases
        if not any(other != phrase and _find(phrase, other) for other in phrases)
    )


def _word_count(words: Sequence[str]) -> int:
    """How many of ``words`` are words or numbers (not punctuation)."""
    return sum(1 for word in words if word[0].isalnum())


def _denies_or_hedges(words: Sequence[str], run: Sequence[str]) -> bool:
    """Whether a veto word occurs in ``words``, other than a correction right after the
    stated ``run`` that denies something else ("Tehran, not Ashgabat")."""
    width = len(run)
    for index, word in enumerate(words):
        if word not in _VETO:
            continue
        corrects = (
            word == "not"
            and index > width
            and words[index - 1] == ","
            and tuple(words[index - 1 - width : index - 1]) == tuple(run)
            and _clause(words, index + 1) != tuple(run)
        )
        if not corrects:
            return True
    return False


def _clause(words: Sequence[str], start: int) -> tuple[str, ...]:
    """``words`` from ``start`` up to the next clause end."""
    end = start
    while end < len(words) and words[end] not in _CLAUSE_END:
        end += 1
    return tuple(words[start:end])


def _follows_stating(words: Sequence[str], start: int) -> bool:
    """Whether ``words[start]`` comes right after a stating token or phrase, perhaps
    through filler ("is indeed the city of Cairo", 'is "Tokyo"')."""
    while start >= 1:
        if (
            words[start - 1] in _STATING
            or tuple(words[max(0, start - 2) : start]) in _STATING_PAIRS
        ):
            return True
        width = next(
            (
                len(f)
                for f in _FILLERS
                if start > len(f) and tuple(words[start - len(f) : start]) == f
            ),
            0,
        )
        if not width:
            return False
        start -= width
    return False


def _at_answer_position(
    words: Sequence[str], start: int, width: int, question: frozenset[str]
) -> bool:
    """The run ``words[start:start + width]`` follows a stating token (or opens a short
    sentence), and ends the sentence or a clause; or it opens a sentence naming it as
    the answer to ``question`` (:func:`_names_as_answer`)."""
    end = start + width
    if start == 0 and _names_as_answer(words, 0, end, question):
        return True
    before = _word_count(words) <= _OPENING_WORDS if start == 0 else _follows_stating(words, start)
    after = end == len(words) or words[end] in _CLAUSE_END
    return before and after


def _names_as_answer(words: Sequence[str], start: int, end: int, question: frozenset[str]) -> bool:
    """Whether ``words`` open with the run ``words[start:end]`` said to be what the
    question asks: "X is/was the P", "X, the P" (a parenthesis after X aside), where P
    holds every content word of the question that X does not ("Paris is the capital of
    France." to "What is the capital of France?"), so a sentence about X ("Venezuela
    is the 18th largest country") states nothing. Never without a question."""
    if start != 0 or not question or end >= len(words):
        return False
    link = end
    if words[link] == "(":
        link = words.index(")", link) + 1 if ")" in words[link:] else len(words)
    if link + 1 >= len(words) or words[link] not in _NAMING or words[link + 1] not in {"the", "a"}:
        return False
    predicate = _clause(words, link + 1)
    cut = next((i for i, word in enumerate(predicate) if word in _PREDICATE_END), len(predicate))
    wanted = question.difference(words[start:end])
    return bool(wanted) and wanted <= set(predicate[:cut])


def _find(words: Sequence[str], run: Sequence[str]) -> list[int]:
    """Every start index where ``run`` occurs as consecutive items of ``words``."""
    width = len(run)
    if not width:
        return []
    return [
        start
        for start in range(len(words) - width + 1)
        if tuple(words[start : start + width]) == tuple(run)
    ]


def _vetoed(text: str) -> bool:
    """Whether ``text`` negates, hedges or names alternatives (see ``_VETO``)."""
    return bool(_VETO.intersection(_tokens(text)))


@functools.lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[str, ...]:
    """Case-folded tokens of ``text`` without diacritics ("Reykjavík" is "reykjavik";
    see ``_TOKEN_RE``); ``n't`` counts as ``not``."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    folded = unicodedata.normalize("NFKC", stripped)
    return tuple(
        "not" if token.endswith(("n't", "n’t")) else token for token in _TOKEN_RE.findall(folded)
    )
