"""The sample mark of model ids: which panel member a sampled call belongs to."""

from __future__ import annotations

import pytest

from thinktank.eval.records import base_model


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("local", "local"),
        ("local-s1#2", "local-s1"),
        ("openai/gpt-4o#10", "openai/gpt-4o"),
        ("a#b", "a#b"),  # not digits: part of the name
        ("#3", "#3"),  # nothing before the mark
        ("m#", "m#"),
        ("m#1#2", "m#1"),
    ],
)
def test_base_model_strips_only_a_trailing_sample_mark(model: str, base: str) -> None:
    assert base_model(model) == base
