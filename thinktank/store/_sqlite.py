"""How the store connects to SQLite: the settings of every connection and transaction.

Every connection of the store's engine (aiosqlite, over ``sqlite3``) is a
:class:`ConfiguredConnection`: ``sqlite3.connect``
builds it with the store's settings already applied (busy timeout, WAL, ``synchronous
= NORMAL``, foreign keys, no implicit transactions), in the thread that connects. Set
through SQLAlchemy's ``connect`` event instead, each setting was a statement sent from
the event loop through aiosqlite's adapter, three or four trips to its thread apiece.

:func:`configure` makes every transaction SQLAlchemy begins a ``BEGIN IMMEDIATE``
(writes) or a deferred ``BEGIN`` (connections marked with :data:`READ_OPTION`).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

__all__ = [
    "BUSY_TIMEOUT_MS",
    "READ_OPTION",
    "ConfiguredConnection",
    "configure",
]

BUSY_TIMEOUT_MS = 30_000
READ_OPTION = "thinktank_read"
"""Execution option marking a connection that only reads (deferred BEGIN)."""


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode (it stays so: the mode is kept in the file).

    Switching takes an exclusive lock, and when several connections open a new file at
    once SQLite may refuse at once ("database is locked") rather than wait under the
    busy timeout: each would wait for the others (a deadlock). It happens only then,
    so the retry sleeps a few milliseconds, in the connecting thread.
    """
    row = conn.execute("PRAGMA journal_mode").fetchone()
    if row is not None and str(row[0]).lower() in ("wal", "memory"):
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _read_only(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``sqlite3.connect`` was asked for a read-only URI (``file:...?mode=ro``)."""
    database = args[0] if args else kwargs.get("database", "")
    if not (kwargs.get("uri") and isinstance(database, str)):
        return False
    _, _, query = database.partition("?")
    return "mode=ro" in query.split("&")


class ConfiguredConnection(sqlite3.Connection):
    """A ``sqlite3`` connection with the store's settings (pass it as ``factory``).

    WAL journal, a 30 s busy timeout (or the ``timeout`` given to ``connect``, which a
    ``?timeout=`` in the URL sets), ``synchronous = NORMAL`` and foreign keys on; no
    implicit ``BEGIN`` from the driver (``isolation_level = None``): the store begins
    its transactions itself (:func:`configure`).

    A read-only URI (``file:...?mode=ro``) leaves the journal mode as the file has it
    (switching it is a write) and sets ``query_only``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        timeout = kwargs.get("timeout")
        busy_ms = BUSY_TIMEOUT_MS if timeout is None else round(float(timeout) * 1000)
        try:
            self.isolation_level = None
            self.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if _read_only(args, kwargs):
                self.execute("PRAGMA query_only = ON")
                return
            _use_wal(self)
            self.execute("PRAGMA synchronous = NORMAL")
            self.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            self.close()
            raise


CONNECT_ARGS: dict[str, Any] = {"factory": ConfiguredConnection}
"""``connect_args`` of an engine whose connections are :class:`ConfiguredConnection`."""


def configure(engine: Engine) -> None:
    """BEGIN IMMEDIATE for the transactions of ``engine``, BEGIN for marked readers."""

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
