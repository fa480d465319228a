"""A step's declared answer format, as the session file writes it and as the prompt says it.

This module owns the session side of :class:`~thinktank.consensus.formats.AnswerFormat`:
the instruction a step's rendered prompt gets for its format (:func:`instruction`,
:func:`with_instruction`), the schema a provider with structured output is given
(:func:`response_schema`) and the light structural check of a ``json`` format's schema
(:func:`schema_problem`). The pydantic model of the ``answer_format`` field is
:class:`~thinktank.session.spec.AnswerFormatSpec`; it converts to an ``AnswerFormat``
in one place (``AnswerFormatSpec.to_format``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from thinktank.consensus.formats import AnswerFormat

__all__ = [
    "instruction",
    "response_enum",
    "response_schema",
    "schema_problem",
    "with_instruction",
]

_INSTRUCTIONS: Mapping[str, str] = {
    "short": "Answer with the answer only: a name, word or short phrase.",
    "number": "Answer with the number only.",
    "yes_no": "Answer yes or no.",
    "choice": "Answer with the letter only.",
}

_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def instruction(fmt: AnswerFormat | None, asking: str | None = None) -> str:
    """The instruction that asks for ``fmt`` (empty for ``free`` or no format).

    ``choice`` lists its options one per line (``A) Paris``) before asking for the
    letter; ``json`` quotes its schema. ``asking`` replaces the sentence that asks
    (a ``choice`` still lists its options); the empty string asks nothing at all.
    """
    if fmt is None or fmt.kind == "free" or asking == "":
        return ""
    if fmt.kind == "json":
        schema = json.dumps(dict(fmt.schema or {}), ensure_ascii=False, sort_keys=True)
        default = f"Answer with JSON only, matching this schema: {schema}"
    else:
        default = _INSTRUCTIONS[fmt.kind]
    sentence = default if asking is None else asking
    if fmt.kind == "choice":
        options = "\n".join(
            f"{letter}) {text}" for letter, text in zip(fmt.letters, fmt.choices, strict=True)
        )
        return f"{options}\n{sentence}"
    return sentence


def with_instruction(prompt: str, fmt: AnswerFormat | None, asking: str | None = None) -> str:
    """``prompt`` with the instruction for ``fmt`` appended: the prompt that is sent
    (and stored). ``asking`` is the step's own asking sentence (see
    :func:`instruction`).

    A one-sentence instruction follows the question on its line, so a base model's
    few-shot ``Q:`` line stays one line; the options of ``choice`` start on the next
    line.
    """
    text = instruction(fmt, asking)
    if not text:
        return prompt
    separator = "\n" if fmt is not None and fmt.kind == "choice" else " "
    return f"{prompt.rstrip()}{separator}{text}"


def response_schema(fmt: AnswerFormat | None) -> Mapping[str, Any] | None:
    """The JSON Schema a provider with structured output is given: a ``json`` format's
    schema, else None (``choice`` and ``yes_no`` are constrained by
    :func:`response_enum`, the other kinds asked for by the instruction alone)."""
    if fmt is None or fmt.kind != "json":
        return None
    return fmt.schema


def response_enum(fmt: AnswerFormat | None) -> tuple[str, ...]:
    """The strings a provider with structured output may constrain the answer to: a
    ``choice`` format's letters, ``yes``/``no`` for ``yes_no``, else none."""
    if fmt is None:
        return ()
    if fmt.kind == "choice":
        return fmt.letters
    if fmt.kind == "yes_no":
        return ("yes", "no")
    return ()


def schema_problem(schema: object, path: str = "") -> str | None:
    """Why ``schema`` is not a JSON Schema object, or None when it looks like one.

    A structural check, not a validator (jsonschema is not a dependency, and providers
    check the schema again): the schema is a mapping (nested ones may be booleans);
    ``type`` is a JSON type name or a list of them; ``properties`` maps names to
    schemas; ``required`` is a list of strings; ``enum`` a non-empty list; ``items`` a
    schema. Nested schemas are checked the same way, and the problem names where
    (``properties.age.type``).
    """
    where = f"{path}: " if path else ""
    if isinstance(schema, bool) and path:
        return None  # true/false: a nested schema that accepts anything or nothing
    if not isinstance(schema, Mapping):
        return f"{where}a JSON Schema must be a mapping, got {type(schema).__name__}"
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for name in kinds:
        if name not in _JSON_TYPES:
            known = ", ".join(sorted(_JSON_TYPES))
            return f"{where}'type' {name!r} is not a JSON type ({known})"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return f"{where}'required' must be a list of property names"
    enum = schema.get("enum")
    if enum is not None and not (isinstance(enum, list) and enum):
        return f"{where}'enum' must be a non-empty list"
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        return f"{where}'properties' must map property names to schemas"
    nested = [(f"properties.{name}", sub) for name, sub in properties.items()]
    if "items" in schema:
        nested.append(("items", schema["items"]))
    for sub_path, sub in nested:
        problem = schema_problem(sub, f"{path}.{sub_path}" if path else sub_path)
        if problem is not None:
            return problem
    return None
