"""The store's JSON: orjson where it can, the standard library where it cannot; and the
events' one JSON form (``thinktank.events``), which older stored payloads still read as."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import typing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinktank
from thinktank.events import (
    EVENT_TYPES,
    ConsensusComputed,
    Event,
    SessionStarted,
    StepInfo,
    StepsAdded,
    StepStarted,
    decode_event,
    encode_event,
    event_from_dict,
    to_builtins,
)
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


# One payload of each event type exactly as the store wrote them before events were
# msgspec structs (commit 0da29d6): times with ``+00:00``, every field present.
EARLIER_PAYLOADS = (
    (Path(__file__).parent / "data" / "events-0.x.jsonl").read_text("utf-8").splitlines()
)


ADDED_SINCE = {"session_started": ("key_id", "request_id")}
"""Fields events gained after ``events-0.x.jsonl`` was written."""


@pytest.mark.parametrize("payload", EARLIER_PAYLOADS, ids=lambda p: loads(p)["type"])
def test_payloads_written_by_earlier_versions_still_decode(payload: str) -> None:
    """Stored events decode to the same values, and encode to the same JSON but for the
    spelling of UTC (``Z``, which reads back as the same time)."""
    event = decode_event(payload)
    assert event.type == loads(payload)["type"] and type(event) is EVENT_TYPES[event.type]
    written = to_builtins(event)
    for name in ADDED_SINCE.get(event.type, ()):  # fields added later decode to None
        assert written.pop(name) is None
    assert written == loads(payload.replace("+00:00", "Z"))
    assert event.at == datetime.fromisoformat(loads(payload)["at"])
    assert decode_event(encode_event(event)) == event


def test_decoded_events_have_their_declared_types() -> None:
    """Nested steps are StepInfo values, sequences tuples, times aware datetimes."""
    started, added = (decode_event(p) for p in EARLIER_PAYLOADS[:2])
    assert isinstance(started, SessionStarted) and isinstance(added, StepsAdded)
    assert all(isinstance(s, StepInfo) for s in started.steps + added.steps)
    assert added.steps[0].provenance == ("m1", "m2") and started.steps[1].depends_on == ("a",)
    merged = decode_event(EARLIER_PAYLOADS[6])
    assert isinstance(merged, ConsensusComputed)
    assert merged.escalation == (("m1",), ("m2", "m3")) and merged.included_call_ids == ("c1", "c2")
    assert started.at.tzinfo is not None and started.at.utcoffset() == timedelta(0)


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Usage:
    tokens: int


def test_event_json_writes_values_as_before() -> None:
    """Non-finite floats become null; enums their value; dataclasses objects; tuples
    arrays; datetimes ISO text; other time zones keep their offset; big ints stay."""
    plus2 = timezone(timedelta(hours=2))
    event = SessionStarted(
        session_id="s",
        at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=plus2),
        name="n",
        spec={"x": math.nan, "y": -math.inf},
        inputs={"c": Colour.RED, "u": Usage(3), "t": (1, 2), "big": 2**80},
        parallel_execution_config={},
        steps=(),
    )
    data = to_builtins(event)
    assert data["at"] == "2026-01-02T03:04:05.000006+02:00"
    assert data["spec"] == {"x": None, "y": None}
    assert data["inputs"] == {"c": "red", "u": {"tokens": 3}, "t": [1, 2], "big": 2**80}
    assert loads(encode_event(event)) == data
    assert list(data) == [
        "type",
        "session_id",
        "at",
        "name",
        "spec",
        "inputs",
        "parallel_execution_config",
        "steps",
        "source",
        "model_selection",
        "origin",
        "key_id",
        "request_id",
    ]


def test_unknown_types_and_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="type"):
        decode_event('{"type": "bogus", "session_id": "s"}')
    with pytest.raises(ValueError, match="unknown field `extra`"):
        decode_event(EARLIER_PAYLOADS[2].replace('"attempt"', '"extra":1,"attempt"'))
    assert isinstance(event_from_dict(loads(EARLIER_PAYLOADS[2])), StepStarted)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_OBJECTS = st.dictionaries(st.text(), _JSON, max_size=4)
_ZONES = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))


def _field_strategy(hint: Any) -> st.SearchStrategy[Any] | None:
    """What to build a field with where hypothesis's own choice would not survive JSON:
    JSON has no NaN or infinity, and a tuple inside a free-form dict reads back a list."""
    text = repr(hint)
    optional = "None" in text
    if text.startswith("tuple[dict"):
        return st.lists(_OBJECTS, max_size=3).map(tuple)
    if text.startswith("dict[str, typing.Any]"):
        return _OBJECTS | st.none() if optional else _OBJECTS
    if text.startswith("<class 'datetime.datetime'>"):
        return st.datetimes(timezones=st.none() | _ZONES)
    if "float" in text:
        finite = st.floats(allow_nan=False, allow_infinity=False)
        return finite | st.none() if optional else finite
    return None


def _events(cls: type[Event]) -> st.SearchStrategy[Event]:
    hints = typing.get_type_hints(cls)
    fields = {name: _field_strategy(hints[name]) for name in cls.__struct_fields__}
    return st.builds(cls, **{name: s for name, s in fields.items() if s is not None})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
def test_every_event_decodes_to_itself(cls: type[Event], data: st.DataObject) -> None:
    """Any event of any type (any text, ints of any size, any times and zones, finite
    floats, nested steps) reads back equal from its JSON and from its plain values."""
    event = data.draw(_events(cls))
    assert decode_event(encode_event(event)) == event
    assert event_from_dict(to_builtins(event)) == event
