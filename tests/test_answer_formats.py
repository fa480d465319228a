"""AnswerFormat: the declared format of a step's answers, validated once."""

from __future__ import annotations

import pytest

from thinktank.consensus.formats import AnswerFormat
from thinktank.consensus.options import MergeOptions


def test_a_valid_format_is_frozen_and_hashable() -> None:
    fmt = AnswerFormat("choice", choices=["Paris", "Lyon", "Nice"])
    assert fmt.choices == ("Paris", "Lyon", "Nice") and fmt.letters == ("A", "B", "C")
    schema = {"type": "object"}
    js = AnswerFormat("json", schema=schema)
    schema["type"] = "array"  # the format kept its own copy
    assert js.schema == {"type": "object"}
    assert hash(js) == hash(AnswerFormat("json", schema={"type": "object"}))
    assert MergeOptions(answer_format=fmt).answer_format is fmt
    assert MergeOptions().answer_format is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "essay"}, "unknown answer format 'essay'"),
        ({"kind": "choice", "choices": ["only"]}, "at least two distinct choices"),
        ({"kind": "choice", "choices": ["a", "a"]}, "at least two distinct choices"),
        ({"kind": "choice", "choices": [str(i) for i in range(27)]}, "at most 26"),
        ({"kind": "short", "choices": ["a", "b"]}, "choices are for answer format 'choice'"),
        ({"kind": "json"}, "needs a schema"),
        ({"kind": "number", "schema": {}}, "a schema is for answer format 'json'"),
    ],
)
def test_an_invalid_format_says_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnswerFormat(**kwargs)  # type: ignore[arg-type]
