"""The answer formats a step may declare: what kind of answer its models are asked for.

This module owns :class:`AnswerFormat`, the one value that says what an answer is
(``short``, ``number``, ``choice`` with its choices, ``yes_no``, ``json`` with a schema,
``free``). A session step declares it (``answer_format:`` in the session file); the
prompt instruction, structured output at the providers, answer extraction and answer
equivalence all read this value, so they cannot disagree about what was asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from thinktank.consensus.normalize import extract_answer, format_decimal, normalize_answer
from thinktank.consensus.readers import extract_choice, stated_number, structured_answer

__all__ = ["AnswerFormat", "FormatKind", "extract_formatted"]

_JSON_FENCE_RE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)```", re.IGNORECASE | re.DOTALL)
_FIRST_CLAUSE_RE = re.compile(r"[^,.;:!?\n]*")

FormatKind = Literal["short", "number", "choice", "yes_no", "json", "free"]
"""What kind of answer a step asks for:

- ``short``: a name, a word or a short phrase;
- ``number``: one number (units and words around it are not the answer);
- ``choice``: one of :attr:`AnswerFormat.choices`, answered by its letter (A, B, ...) or
  its text;
- ``yes_no``: yes or no;
- ``json``: a JSON value matching :attr:`AnswerFormat.schema`;
- ``free``: free text (long answers).
"""


@dataclass(frozen=True, slots=True)
class AnswerFormat:
    """The declared format of a step's answers.

    Raises:
        ValueError: an unknown kind; ``choice`` without at least two distinct choices,
            or choices on another kind; ``json`` without a schema mapping, or a schema
            on another kind.
    """

    kind: FormatKind
    """What kind of answer (see :data:`FormatKind`)."""
    choices: Sequence[str] = ()
    """``choice`` only: the options' texts in letter order (the first is A). Stored as
    a tuple."""
    schema: Mapping[str, Any] | None = field(default=None, hash=False)
    """``json`` only: the JSON Schema an answer must match. Stored read-only (left out
    of the hash)."""

    def __post_init__(self) -> None:
        """Validate the fields and freeze ``choices`` and ``schema``."""
        if self.kind not in get_args(FormatKind):
            known = ", ".join(get_args(FormatKind))
            raise ValueError(f"unknown answer format {self.kind!r}; known: {known}")
        choices = tuple(self.choices)
        if self.kind == "choice":
            if len(choices) < 2 or len(set(choices)) != len(choices):
                raise ValueError("answer format 'choice' needs at least two distinct choices")
            if len(choices) > 26:
                raise ValueError("answer format 'choice' takes at most 26 choices (A to Z)")
        elif choices:
            raise ValueError(f"choices are for answer format 'choice', not {self.kind!r}")
        if self.kind == "json":
            if not isinstance(self.schema, Mapping):
                raise ValueError("answer format 'json' needs a schema (a JSON Schema mapping)")
            object.__setattr__(self, "schema", MappingProxyType(dict(self.schema)))
        elif self.schema is not None:
            raise ValueError(f"a schema is for answer format 'json', not {self.kind!r}")
        object.__setattr__(self, "choices", choices)

    @property
    def letters(self) -> tuple[str, ...]:
        """The choices' letters, ``A`` for the first (``choice`` only; else empty)."""
        return tuple(chr(ord("A") + i) for i in range(len(self.choices)))


def extract_formatted(text: str, fmt: AnswerFormat) -> str | None:
    """The canonical answer ``text`` gives under the declared format ``fmt``, or None
    when it gives none.

    - ``number``: the number stated as the answer
      (:func:`~thinktank.consensus.readers.stated_number`: after ``"the answer is"``,
      else the last number when ``"="`` or ``"is"`` states it or it is the only one),
      in canonical decimal form: ``"The answer is 42."`` and ``"42 km"`` give ``"42"``;
      ``"420"`` never gives ``"42"``; prose whose last number is not stated gives None;
    - ``choice``: the letter (``"B"``, ``"(B) Lyon"``, ``"Answer: B"``, or the text of
      a choice, ``"Lyon"``, gives ``"B"``);
    - ``yes_no``: ``"yes"`` or ``"no"`` from the answer's first clause (``"Yes, it
      is."`` gives ``"yes"``; ``"I don't know"`` gives None);
    - ``choice`` and ``yes_no`` also read a structured reply, ``{"answer": "B"}``
      (:func:`~thinktank.consensus.readers.structured_answer`);
    - ``short``: :func:`~thinktank.consensus.normalize.normalize_answer` of the text;
    - ``json``: the value (from a fenced block if there is one) as compact JSON with
      sorted keys; None when it does not parse;
    - ``free``: the stripped text.

    Args:
        text: A raw model response.
        fmt: The step's declared answer format.
    """
    if fmt.kind == "number":
        # The whole text: its markers ("the answer is", "=") say which number is meant.
        value = stated_number(text)
        return None if value is None else format_decimal(value)
    if fmt.kind == "choice":
        return extract_choice(text, tuple(fmt.choices))
    if fmt.kind == "yes_no":
        return _yes_no(text)
    if fmt.kind == "json":
        return _canonical_json(text)
    answer = normalize_answer(text) if fmt.kind == "short" else text.strip()
    return answer or None


def _yes_no(text: str) -> str | None:
    """``"yes"``/``"no"`` when the extracted answer's first clause is a yes/no word."""
    answer = extract_answer(structured_answer(text))
    clause = _FIRST_CLAUSE_RE.match(answer)
    first = normalize_answer(clause.group() if clause is not None else "")
    if first in {"yes", "no"}:
        return first
    whole = normalize_answer(answer)
    return whole if whole in {"yes", "no"} else None


def _canonical_json(text: str) -> str | None:
    """Compact, key-sorted JSON of the last fenced block, else of the whole text."""
    fences = _JSON_FENCE_RE.findall(text)
    source = fences[-1] if fences else text
    try:
        value = json.loads(source)
    except ValueError:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
