"""Prompt templates: identifier-only placeholders, one-pass rendering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinktank._text import clean_text
from thinktank.session.templates import Reference, parse_template, render_template


def test_parse_finds_inputs_and_step_outputs() -> None:
    """Both placeholder kinds are found, with or without spaces."""
    refs, problems = parse_template("{{ inputs.q }} and {{steps.plan-1.output}}")
    assert problems == []
    assert refs == [Reference("input", "q"), Reference("step", "plan-1")]


@pytest.mark.parametrize(
    "template",
    [
        "{{ inputs.q.upper }}",
        "{{ steps.a }}",
        "{{ steps.a.prompt }}",
        "{{ q }}",
        "{{ inputs.__class__.__mro__ }}",
        "{{ 1 + 1 }}",
        "{{ inputs['q'] }}",
    ],
)
def test_anything_but_identifiers_is_rejected(template: str) -> None:
    """Attribute walking, expressions and unknown roots are syntax errors."""
    refs, problems = parse_template(template)
    assert refs == []
    assert len(problems) == 1 and "not allowed" in problems[0]


def test_output_is_inserted_as_data_and_never_rendered_again() -> None:
    """A model output that contains a placeholder stays literal text."""
    out = render_template(
        "A: {{ steps.a.output }} / Q: {{ inputs.q }}",
        {"q": "{{ inputs.secret }}"},
        {"a": "{{ inputs.q }} {0} %s"},
    )
    assert out == "A: {{ inputs.q }} {0} %s / Q: {{ inputs.secret }}"


def test_non_string_inputs_render_as_json() -> None:
    """Lists and objects render as JSON, booleans in lower case."""
    out = render_template(
        "{{ inputs.a }}|{{ inputs.b }}|{{ inputs.c }}|{{ inputs.d }}",
        {"a": [1, "x"], "b": {"k": 1}, "c": True, "d": 2.5},
        {},
    )
    assert out == '[1, "x"]|{"k": 1}|true|2.5'


@given(st.text(), st.text())
def test_rendering_is_one_pass_for_any_text(value: str, output: str) -> None:
    """Whatever the inserted text holds, the result is the template with it spliced in
    (a step's output as providers can take it: U+FFFD for lone surrogates and NUL)."""
    out = render_template("<{{ inputs.v }}|{{ steps.s.output }}>", {"v": value}, {"s": output})
    assert out == f"<{value}|{clean_text(output)}>"
