"""Scorers: whether a model's answer is correct against an item's accepted targets.

This module owns the scorer configuration (:class:`ScorerSpec`, the ``scorer`` block of an
experiment file) and the scoring functions built from it (:func:`make_scorer`). A scorer
is ``(answer, targets) -> float``: 1.0 when the answer matches any accepted target, 0.0
when none does, or a user callable's value in [0, 1]. Scoring is pure: no I/O and no
model call, so stored answers can be re-scored at zero cost.

Kinds:

``exact``
    The answer equals a target after stripping surrounding whitespace (case counts).
``normalized``
    :func:`thinktank.consensus.normalize.normalize_answer` maps the answer and a target
    to the same string: the notion of "the same answer" consensus votes with (case,
    punctuation, articles, ``Answer:`` markers, number forms such as ``forty-two``).
``numeric``
    The last number in the answer (``"The answer is 1,234.5."`` -> 1234.5; a number in
    words when there is no digit) is within tolerance of a target:
    ``|a - t| <= max(abs_tol, rel_tol * max(|a|, |t|))``, computed in exact decimals.
    Numbers are whole tokens: ``"420"`` never reads as 42. A percent sign is ignored
    (``"50%"`` is 50).
``choice``
    A multiple-choice letter extracted from the answer (``"B"``, ``"(B)"``,
    ``"Answer: B"``, ``"B) Lyon"``) equals a target letter. With ``choices`` (the option
    texts, lettered A, B, ... in order) an answer that is exactly an option's text (after
    normalisation) counts as its letter, and a target may be an option's text.
``contains``
    A target appears in the answer as a whole word or phrase, after case folding,
    punctuation removal, a target's leading article dropped and numbers in digits
    compared by value (``"Paris"`` is in ``"It is Paris."``, not in ``"Parisian"``;
    ``"1000"`` is in ``"1,000 people"``; numbers in words are words). It is plain
    containment and knows nothing of negation: ``"not Paris"`` contains ``"Paris"``. Use
    it for answers that name the target among other words; use ``normalized`` when the
    answer should be the target.
``regex``
    ``re.search`` of a pattern in the answer (the pattern may match anywhere; anchor with
    ``\\A...\\Z`` for the whole answer; case-sensitive unless the pattern says ``(?i)``).
    The patterns are the item's targets, or the one ``pattern`` of the spec, which then
    replaces the targets.
``callable``
    A user function named ``module:function``, imported when the scorer is made, with
    signature ``(answer: str, targets: tuple[str, ...]) -> bool | float``.

An answer a scorer cannot read (no number, no letter) scores 0.0; a misconfigured scorer,
a target it cannot read or a callable returning something that is not a score raises a
one-line :class:`~thinktank.errors.ScorerError` naming the scorer.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import string
import unicodedata
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from thinktank.consensus.normalize import normalize_answer
from thinktank.consensus.readers import extract_choice, extract_number, is_number, option_letter
from thinktank.errors import ScorerError

__all__ = [
    "Scorer",
    "ScorerKind",
    "ScorerSpec",
    "extract_choice",
    "extract_number",
    "make_scorer",
    "parse_scorer_spec",
]

ScorerKind = Literal["exact", "normalized", "numeric", "choice", "contains", "regex", "callable"]
Scorer = Callable[[str, tuple[str, ...]], float]
"""``(answer, targets) -> score in [0, 1]``."""

_LETTERS = string.ascii_uppercase

_CONTAINS_TOKEN_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])|\w+")
_DECIMAL_TOKEN_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_ARTICLES = frozenset({"a", "an", "the"})
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CALLABLE_RE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class ScorerSpec(BaseModel):
    """How an experiment scores answers: the ``scorer`` block of an experiment file.

    Only the options of the chosen ``kind`` may be set; any other is an error, so a
    misplaced option never silently does nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ScorerKind = Field(description="Which scorer; see the module docstring.")
    abs_tol: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="numeric only")
    rel_tol: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="numeric only")
    choices: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        max_length=len(_LETTERS),
        description="choice only: option texts, lettered A, B, ... in order",
    )
    pattern: str | None = Field(default=None, description="regex only: replaces the targets")
    function: str | None = Field(
        default=None, pattern=_CALLABLE_RE, description="callable only: module:function"
    )

    @model_validator(mode="after")
    def _options_fit_kind(self) -> ScorerSpec:
        allowed = {
            "numeric": {"abs_tol", "rel_tol"},
            "choice": {"choices"},
            "regex": {"pattern"},
            "callable": {"function"},
        }.get(self.kind, set())
        misplaced = sorted(self.model_fields_set - {"kind"} - allowed)
        if misplaced:
            raise ValueError(f"option {misplaced[0]!r} does not apply to a {self.kind!r} scorer")
        if self.kind == "callable" and self.function is None:
            raise ValueError("a 'callable' scorer needs 'function' (module:function)")
        if self.pattern is not None:
            try:
                _compile_cached(self.pattern)
            except re.error as exc:
                raise ValueError(f"bad pattern {self.pattern!r}: {exc}") from None
        return self

    def describe(self) -> str:
        """A short name for messages and reports: ``numeric(abs_tol=0.01)``, ``callable(m:f)``."""
        if self.kind == "callable":
            return f"callable({self.function})"
        options = [
            f"{name}={getattr(self, name)!r}"
            for name in ("abs_tol", "rel_tol", "pattern")
            if name in self.model_fields_set
        ]
        if self.choices is not None:
            options.append(f"choices={len(self.choices)}")
        return f"{self.kind}({', '.join(options)})" if options else self.kind


def parse_scorer_spec(
    data: str | Mapping[str, Any],
    *,
    file: str | None = None,
    line: int | None = None,
    field: str = "scorer",
) -> ScorerSpec:
    """Validate a ``scorer`` block (a mapping, or a bare kind such as ``"exact"``).

    Raises:
        ScorerError: One line naming ``file``, ``line`` and the offending field
            (``scorer.abs_tol``) when the block is invalid.
    """
    raw: Mapping[str, Any] = {"kind": data} if isinstance(data, str) else data
    try:
        return ScorerSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join([field, *(str(part) for part in error["loc"])])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ScorerError(message, file=file, line=line, field=where) from None


def make_scorer(spec: ScorerSpec) -> Scorer:
    """The scoring function ``(answer, targets) -> float`` that ``spec`` describes.

    Raises:
        ScorerError: For a ``callable`` spec whose module or function cannot be found or
            is not callable (raised here, before any answer is scored); and, when
            scoring, for a target the scorer cannot read, no targets, or a callable
            returning something other than a bool or a number in [0, 1].
    """
    name = spec.describe()
    if spec.kind == "callable":
        return _callable_scorer(spec, name)
    match: Callable[[str, tuple[str, ...]], bool]
    if spec.kind == "exact":
        match = _exact
    elif spec.kind == "normalized":
        match = _normalized
    elif spec.kind == "numeric":
        match = functools.partial(_numeric, spec=spec, name=name)
    elif spec.kind == "choice":
        match = functools.partial(_choice, choices=spec.choices, name=name)
    elif spec.kind == "contains":
        match = _contains
    else:
        match = functools.partial(_regex, pattern=spec.pattern, name=name)
    needs_targets = not (spec.kind == "regex" and spec.pattern is not None)

    def score(answer: str, targets: tuple[str, ...]) -> float:
        if needs_targets and not targets:
            raise ScorerError("the item has no targets", scorer=name)
        return 1.0 if match(answer, targets) else 0.0

    return score


def _exact(answer: str, targets: tuple[str, ...]) -> bool:
    stripped = answer.strip()
    return any(stripped == target.strip() for target in targets)


def _normalized(answer: str, targets: tuple[str, ...]) -> bool:
    normalized = normalize_answer(answer)
    return any(normalized == normalize_answer(target) for target in targets)


def _numeric(answer: str, targets: tuple[str, ...], *, spec: ScorerSpec, name: str) -> bool:
    # Targets first: a target that is no number is the user's error, whatever the answer.
    expected_values = [_target_number(target, name) for target in targets]
    value = extract_number(answer)
    if value is None:
        return False
    abs_tol = Decimal(str(spec.abs_tol))
    rel_tol = Decimal(str(spec.rel_tol))
    for expected in expected_values:
        allowed = max(abs_tol, rel_tol * max(abs(value), abs(expected)))
        if abs(value - expected) <= allowed:
            return True
    return False


def _target_number(target: str, name: str) -> Decimal:
    """A numeric target: the whole target must be one number."""
    value = extract_number(target) if is_number(target) else None
    if value is None:
        raise ScorerError(f"target {target!r} is not a number", scorer=name)
    return value


def _choice(
    answer: str, targets: tuple[str, ...], *, choices: tuple[str, ...] | None, name: str
) -> bool:
    # Targets first: a target that is no letter is the user's error, whatever the answer.
    letters = {_target_letter(target, choices, name) for target in targets}
    return extract_choice(answer, choices) in letters


def _target_letter(target: str, choices: tuple[str, ...] | None, name: str) -> str:
    """A choice target: a letter (``"B"``, ``"(b)"``), or with ``choices`` an option's text."""
    stripped = target.strip().strip("()").strip()
    count = len(choices) if choices is not None else len(_LETTERS)
    if len(stripped) == 1 and stripped.upper() in _LETTERS[:count]:
        return stripped.upper()
    letter = option_letter(target, choices) if choices is not None else None
    if letter is None:
        raise ScorerError(f"target {target!r} is not one of the choice letters", scorer=name)
    return letter


def _contains(answer: str, targets: tuple[str, ...]) -> bool:
    words = _tokens(answer)
    for target in targets:
        # The target is tokenised, not normalize_answer'd: that would read "n" as "no".
        phrase = _tokens(target)
        if len(phrase) > 1 and phrase[0] in _ARTICLES:
            phrase = phrase[1:]
        if phrase and _has_run(words, phrase):
            return True
    return False


def _tokens(text: str) -> tuple[str, ...]:
    """Case-folded words and canonical numbers of ``text``; punctuation dropped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = _THOUSANDS_RE.sub("", folded)
    return tuple(_canonical_token(token) for token in _CONTAINS_TOKEN_RE.findall(folded))


def _canonical_token(token: str) -> str:
    """Numbers compare by value ("3.10" is "3.1"); other words as they are."""
    if _DECIMAL_TOKEN_RE.fullmatch(token):
        value = Decimal(token)
        return "0" if value.is_zero() else format(value.normalize(), "f")
    return token


def _has_run(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    """Whether ``phrase`` occurs as consecutive items of ``words``."""
    width = len(phrase)
    return any(words[start : start + width] == phrase for start in range(len(words) - width + 1))


def _regex(answer: str, targets: tuple[str, ...], *, pattern: str | None, name: str) -> bool:
    patterns = (pattern,) if pattern is not None else targets
    return any(_compile(item, name).search(answer) is not None for item in patterns)


@functools.lru_cache(maxsize=1024)
def _compile_cached(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _compile(pattern: str, name: str) -> re.Pattern[str]:
    try:
        return _compile_cached(pattern)
    except re.error as exc:
        raise ScorerError(f"bad pattern {pattern!r}: {exc}", scorer=name) from None


def _callable_scorer(spec: ScorerSpec, name: str) -> Scorer:
    function = _import_function(str(spec.function), name)

    def score(answer: str, targets: tuple[str, ...]) -> float:
        try:
            value = function(answer, targets)
        except Exception as exc:  # the user's code: report it as theirs, on one line
            first_line = (str(exc).splitlines() or [""])[0]
            raise ScorerError(f"raised {type(exc).__name__}: {first_line}", scorer=name) from exc
        return _as_score(value, name)

    return score


def _import_function(target: str, name: str) -> Callable[..., object]:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: a missing one or one that fails to load
        first_line = (str(exc).splitlines() or [""])[0]
        message = f"cannot import module {module_name!r}: {type(exc).__name__}: {first_line}"
        raise ScorerError(message, scorer=name) from exc
    function = getattr(module, attribute, None)
    if function is None:
        raise ScorerError(f"module {module_name!r} has no {attribute!r}", scorer=name)
    if not callable(function):
        raise ScorerError(f"{target!r} is not callable", scorer=name)
    return function  # type: ignore[no-any-return]


def _as_score(value: object, name: str) -> float:
    """A callable's result as a score: a bool, or a finite number in [0, 1]."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    raise ScorerError(f"returned {value!r}, not a bool or a number in [0, 1]", scorer=name)
