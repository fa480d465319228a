"""The store's JSON: orjson where it can, the standard library where it cannot."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

import thinktank
from thinktank.session.loading import parse_session
from thinktank.store import Store
from thinktank.store._json import dumps, loads


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1.5, None, True], "c": {"d": "é ✓"}},
        {"big": 2**70, "neg": -(2**65)},
        [],
        "text with \x00 nul",
    ],
)
def test_round_trip(value: object) -> None:
    assert loads(dumps(value)) == value


def test_non_string_keys_become_strings_as_the_standard_library_does() -> None:
    assert loads(dumps({1: "x", 2.5: "y"})) == json.loads(json.dumps({1: "x", 2.5: "y"}))


def test_non_finite_floats_are_written_as_null() -> None:
    assert loads(dumps({"x": math.nan, "y": math.inf})) == {"x": None, "y": None}


def test_text_written_by_older_versions_with_nan_still_reads() -> None:
    assert math.isnan(loads('{"x": NaN}')["x"])


def test_datetimes_are_written_in_iso_format() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert loads(dumps({"at": at})) == {"at": at.isoformat()}


async def test_inputs_beyond_64_bits_are_stored_and_read_back(tmp_path: Path) -> None:
    spec = parse_session(
        {
            "name": "big",
            "inputs": {"n": {"type": "integer"}, "o": {"type": "object"}},
            "models": {"m": {"provider": "simulated", "default_reply": "ok"}},
            "steps": [{"id": "a", "prompt": "n is {{ inputs.n }}", "model": "m"}],
        }
    )
    db = str(tmp_path / "t.db")
    values = {"n": 2**80, "o": {"k": [1, "two", 3.5]}}
    result = await thinktank.run(spec, store=db, inputs=values)
    async with await Store.open(db) as store:
        stored = await store.get_session(result.session_id)
    assert stored.inputs == values
    assert stored.steps[0].calls[0].response == "ok"
