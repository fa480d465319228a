"""The events table's hot INSERT, and an event's stored payload (its JSON text).

:class:`EventLog` builds the ``thinktank_events`` rows of a batch as ready tuples
(four of every six rows a session writes are events); :func:`event_json` and
:func:`event_payload` write an event as ``event.to_dict()`` would, faster. The fold
(``thinktank.store._fold``) calls both.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from datetime import datetime
from operator import attrgetter
from typing import Any

import orjson
from sqlalchemy import insert
from sqlalchemy.engine import Dialect

from thinktank._text import repaired
from thinktank.events import Event
from thinktank.store._json import dumps
from thinktank.store._sql import Executor, same, sqlite_datetime
from thinktank.store.tables import EVENTS

__all__ = ["EVENT_COLUMNS", "EventLog", "event_json", "event_payload"]

_INSERT_EVENT = insert(EVENTS).inline()

EVENT_COLUMNS = ("session_id", "type", "step_key", "at", "payload")
"""Column order of the rows :class:`EventLog` inserts."""


_Plan = tuple[tuple[str, ...], Callable[[Any], Any], tuple[int, ...]]
"""A dataclass's field names, a getter of their values, and which need converting."""

_PLANS: dict[type, _Plan] = {}


def _is_scalar(annotation: Any) -> bool:
    """Whether a field so annotated holds only JSON scalars (str, int, float, bool, None)."""
    if annotation in (str, int, float, bool, type(None)):
        return True
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return all(arg is None or isinstance(arg, (str, int, float, bool)) for arg in args)
    if origin is typing.Union or origin is types.UnionType:
        return all(_is_scalar(arg) for arg in args)
    return False


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        try:
            hints = typing.get_type_hints(cls)
        except (NameError, TypeError):  # unresolvable annotations: convert every field
            hints = {}
        convert = tuple(i for i, name in enumerate(names) if not _is_scalar(hints.get(name)))
        get: Callable[[Any], Any] = attrgetter(*names)
        if len(names) == 1:
            single = get

            def get(obj: Any) -> tuple[Any, ...]:
                return (single(obj),)

        plan = _PLANS[cls] = (names, get, convert)
    return plan


def _fields(value: Any) -> tuple[tuple[str, ...], list[Any]]:
    """A dataclass's field names and JSON-ready values."""
    names, get, convert = _plan(value.__class__)
    values = list(get(value))
    for i in convert:
        values[i] = _plain(values[i])
    return names, values


def _plain(value: Any) -> Any:
    """What ``thinktank.events`` makes JSON-ready, made the same way, faster."""
    cls = value.__class__
    if cls is str or cls is int or cls is float or cls is bool or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dict(zip(*_fields(value), strict=True))
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def event_payload(event: Event) -> dict[str, Any]:
    """Equal to ``event.to_dict()``; fields typed as scalars are taken as they are."""
    names, values = _fields(event)
    data: dict[str, Any] = {"type": event.type}
    data.update(zip(names, values, strict=True))
    return data


_JSON_PREFIXES: dict[type, bytes | None] = {}
"""Event class -> ``b'{"type":"<its type>",'``, or None when orjson cannot write it whole."""


def _json_prefix(cls: type) -> bytes | None:
    """The payload's opening for events of ``cls``; None if orjson would write it wrong.

    orjson writes a dataclass as its fields in order, like ``to_dict()``, except that it
    skips fields whose name begins with ``_`` and writes a non-slotted instance's
    ``__dict__`` (which may hold more than the fields): such classes take the slow path.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    slotted = getattr(cls, "__dictoffset__", 1) == 0
    if not names or not slotted or any(name.startswith("_") for name in names):
        return None
    type_name = getattr(cls, "type", None)
    if not isinstance(type_name, str):
        return None
    return b'{"type":' + orjson.dumps(type_name) + b","


def event_json(event: Event) -> str | None:
    """``event.to_dict()`` as the JSON text the store writes, or None if it needs the
    slow path (:func:`event_payload`, then the column's serializer).

    orjson writes the event itself (dataclasses, datetimes as ``isoformat()``, tuples as
    arrays) with ``"type"`` put in front: no Python per field. The text is the same as
    that of ``dumps(event_payload(event))``. orjson refuses what that would write
    differently: a dict key that is not a string (``to_dict()`` turns it into ``str(key)``)
    or an integer beyond 64 bits.
    """
    cls = event.__class__
    try:
        prefix = _JSON_PREFIXES[cls]
    except KeyError:
        prefix = _JSON_PREFIXES[cls] = _json_prefix(cls)
    if prefix is None:
        return None
    try:
        body = orjson.dumps(event)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None
    return (prefix + body[1:]).decode()


class EventLog:
    """The hot INSERT into ``thinktank_events``: rows built as ready tuples.

    Four of every six rows a session writes are events, so their rows skip the
    generic per-row conversion: the batch builds each row in :data:`EVENT_COLUMNS`
    order with the dialect's processors already applied.
    """

    def __init__(self, dialect: Dialect) -> None:
        """Compile for ``dialect``."""
        compiled: Any = _INSERT_EVENT.compile(dialect=dialect, column_keys=list(EVENT_COLUMNS))
        self.sql: str = compiled.string
        names = list(compiled.positiontup or compiled.binds)
        at_type, payload_type = EVENTS.c.at.type, EVENTS.c.payload.type
        self.at: Callable[[datetime], Any] = (
            sqlite_datetime
            if dialect.name == "sqlite"
            else at_type.dialect_impl(dialect).bind_processor(dialect) or same
        )
        process: Callable[[dict[str, Any]], Any] = (
            payload_type.dialect_impl(dialect).bind_processor(dialect) or same
        )
        self._process = process
        # The column takes JSON text on SQLite and asyncpg: the text of event_json will
        # do. Other drivers may want their own object (psycopg: a Json wrapper).
        probe = {"type": "x"}
        self._text = process(probe) == dumps(probe)
        self._postgres = dialect.name == "postgresql"
        order = [EVENT_COLUMNS.index(name) for name in names]
        self._adapt: Callable[[tuple[Any, ...]], Any] | None = None
        if not compiled.positional:
            self._adapt = lambda row: {name: row[i] for name, i in zip(names, order, strict=True)}
        elif order != list(range(len(EVENT_COLUMNS))):
            self._adapt = lambda row: tuple(row[i] for i in order)

    def payload(self, event: Event) -> tuple[Event, Any, list[str]]:
        """``event`` as it can be stored, the payload column's value for it
        (``event.to_dict()``, converted), and where its text had to be repaired.

        Text no database takes (lone surrogates, NUL) is replaced by U+FFFD throughout
        the event, so its rows and its payload agree. orjson's text tells when to look:
        it refuses surrogates, and writes NUL as ``\\u0000``.
        """
        if self._text:
            text = event_json(event)
            if text is not None and "\\u0000" not in text:
                return event, text, []
        found: list[str] = []
        event = repaired(event, event.type, found)
        if self._text:
            text = event_json(event)
            if text is not None:
                return event, text, found
        return event, self._process(event_payload(event)), found

    async def run(self, executor: Executor, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows``, each in :data:`EVENT_COLUMNS` order."""
        adapt = self._adapt
        await executor.run_many(self.sql, rows if adapt is None else [adapt(r) for r in rows])
