"""Export a whole session as JSON, import it elsewhere, and prune old sessions.

An export holds the session as ``show --json`` reads it (for people and tools) and the
session's full event history. Import writes those events through the store's one write
path, so an imported session has exactly the rows the original had — same ids — and
replays like it. The format is ``schemas/export.schema.json``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from thinktank.errors import UsageError
from thinktank.events import event_from_dict
from thinktank.store import Store, StoredSession

__all__ = [
    "EXPORT_FORMAT",
    "SessionExport",
    "export_session",
    "import_session",
    "parse_age",
    "prune",
]

EXPORT_FORMAT: Literal["thinktank.session/1"] = "thinktank.session/1"


class SessionExport(BaseModel):
    """One session, exported."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["thinktank.session/1"] = EXPORT_FORMAT
    """The export format and its version."""
    exported_at: datetime
    """When it was exported (UTC)."""
    session: StoredSession
    """The session as stored: steps, calls, attempts, consensus."""
    events: list[dict[str, Any]]
    """Every event of the session, in the order it was written."""


async def export_session(store: Store, session_id: str) -> SessionExport:
    """The session ``session_id`` (or a unique prefix) as a :class:`SessionExport`."""
    stored = await store.get_session(session_id)
    events = await store.events_of(stored.id)
    return SessionExport(exported_at=datetime.now(UTC), session=stored, events=events)


async def import_session(store: Store, data: str | bytes | dict[str, Any]) -> str:
    """Write an exported session into ``store``; returns its id.

    Raises:
        UsageError: the data is not an export, or the session already exists there.
    """
    try:
        raw = json.loads(data) if isinstance(data, (str, bytes)) else data
        export = SessionExport.model_validate(raw)
        events = [event_from_dict(e) for e in export.events]
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"not a thinktank session export: {first}") from None
    sid = export.session.id
    if any(s.id == sid for s in await store.list_sessions()):
        raise UsageError(f"session {sid} already exists in {store.url}; not importing")
    if not events or events[0].type != "session_started":
        raise UsageError("not a thinktank session export: its events do not start the session")
    await store.write(events)
    return sid


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` or ``45s`` as a timedelta.

    Raises:
        UsageError: anything else.
    """
    text = text.strip()
    unit = text[-1:].lower()
    try:
        amount = float(text[:-1])
    except ValueError:
        amount = -1
    if unit not in _UNITS or amount < 0:
        raise UsageError(f"age {text!r}: use a number and one of s, m, h, d, w (e.g. 30d)")
    return timedelta(seconds=amount * _UNITS[unit])


async def prune(store: Store, older_than: timedelta, *, dry_run: bool = False) -> list[str]:
    """Delete sessions started more than ``older_than`` ago; returns their ids."""
    cutoff = datetime.now(UTC) - older_than
    old = [s.id for s in await store.list_sessions() if s.started_at < cutoff]
    if old and not dry_run:
        await store.delete_sessions(old)
    return old
