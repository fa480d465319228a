"""Prompt templates: identifier-only placeholders, rendered in one pass.

A prompt may contain ``{{ inputs.NAME }}`` and ``{{ steps.ID.output }}`` and nothing
else between double braces: no attribute walking, no expressions, no ``str.format``
on user text. Rendering is a single regex substitution over the *template*, so text
inserted from an input or a model's output is data: braces inside it are never
rendered again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from thinktank._text import clean_text

__all__ = ["Reference", "TemplateSyntaxError", "parse_template", "render_template"]

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_INPUT_REF = re.compile(r"\s*inputs\.([A-Za-z_][A-Za-z0-9_]*)\s*")
_STEP_REF = re.compile(r"\s*steps\.([A-Za-z_][A-Za-z0-9_-]*)\.output\s*")


class TemplateSyntaxError(ValueError):
    """A placeholder that is not ``inputs.NAME`` or ``steps.ID.output``."""


@dataclass(frozen=True, slots=True)
class Reference:
    """One placeholder: an input or a step's output."""

    kind: Literal["input", "step"]
    """What it refers to."""
    name: str
    """The input name or the step id."""


def _reference(body: str) -> Reference:
    if m := _INPUT_REF.fullmatch(body):
        return Reference("input", m.group(1))
    if m := _STEP_REF.fullmatch(body):
        return Reference("step", m.group(1))
    raise TemplateSyntaxError(
        f"placeholder {{{{{body}}}}} is not allowed: use {{{{ inputs.NAME }}}} "
        "or {{ steps.ID.output }}"
    )


def parse_template(template: str) -> tuple[list[Reference], list[str]]:
    """Every reference in ``template`` and every malformed placeholder's message."""
    refs: list[Reference] = []
    problems: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        try:
            refs.append(_reference(match.group(1)))
        except TemplateSyntaxError as exc:
            problems.append(str(exc))
    return refs, problems


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def render_template(
    template: str, inputs: Mapping[str, Any], outputs: Mapping[str, str | None]
) -> str:
    """Fill ``template`` from ``inputs`` and dependency ``outputs`` in one pass.

    Raises:
        TemplateSyntaxError: for a malformed placeholder (validation catches it first).
        KeyError: for a reference to an input or output that is not given.
    """

    if "{{" not in template:
        # No placeholder (every placeholder opens with two braces): nothing to fill.
        return template

    def fill(match: re.Match[str]) -> str:
        ref = _reference(match.group(1))
        if ref.kind == "input":
            return _as_text(inputs[ref.name])
        output = outputs[ref.name]
        # A model's output may hold text no provider takes (a lone surrogate from a bad
        # JSON escape): the prompt gets U+FFFD there, the store records the repair.
        return "" if output is None else clean_text(output)

    return _PLACEHOLDER.sub(fill, template)
