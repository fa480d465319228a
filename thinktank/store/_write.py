"""The events table's hot INSERT, and an event's stored payload (its JSON text).

:class:`EventLog` builds the ``thinktank_events`` rows of a batch as ready tuples
(four of every six rows a session writes are events), each payload the text of
:func:`~thinktank.events.encode_event`. The fold (``thinktank.store._fold``) calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Dialect

from thinktank._text import repaired
from thinktank.events import Event, encode_event
from thinktank.store._json import dumps, loads
from thinktank.store._sql import Executor, same, sqlite_datetime
from thinktank.store.tables import EVENTS

__all__ = ["EVENT_COLUMNS", "EventLog"]

_INSERT_EVENT = insert(EVENTS).inline()

EVENT_COLUMNS = ("session_id", "type", "step_key", "at", "payload")
"""Column order of the rows :class:`EventLog` inserts."""


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
        # The column takes JSON text on SQLite and asyncpg: the encoder's text will do.
        # Other drivers may want their own object (psycopg: a Json wrapper).
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
        """``event`` as it can be stored, the payload column's value for it (the text
        of :func:`~thinktank.events.encode_event`), and where its text had to be repaired.

        Text no database takes (lone surrogates, NUL) is replaced by U+FFFD throughout
        the event, so its rows and its payload agree. The encoder tells when to look:
        it refuses surrogates, and writes NUL as ``\\u0000``.
        """
        try:
            text = encode_event(event).decode()
        except UnicodeEncodeError:
            text = None
        found: list[str] = []
        if text is None or "\\u0000" in text:
            event = repaired(event, event.type, found)
            text = encode_event(event).decode()
        return event, text if self._text else self._process(loads(text)), found

    async def run(self, executor: Executor, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows``, each in :data:`EVENT_COLUMNS` order."""
        adapt = self._adapt
        await executor.run_many(self.sql, rows if adapt is None else [adapt(r) for r in rows])
