"""Export a whole session as JSON, import it elsewhere, and prune old sessions.

An export holds the session as ``show --json`` reads it (for people and tools) and the
session's full event history. Import writes those events through the store's one write
path, so an imported session has exactly the rows the original had — same ids — and
replays like it. The format is ``schemas/export.schema.json``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, ValidationError

from thinktank._safeload import LoadError, load_json
from thinktank.errors import UsageError
from thinktank.events import (
    EVENT_TYPES,
    CallAttempt,
    CallFinished,
    CallStarted,
    Event,
    SessionStarted,
    StepsAdded,
    decode_event,
)
from thinktank.session.schema import render_schema, schema_document
from thinktank.store import Store, StoredSession

__all__ = [
    "EXPORT_FORMAT",
    "SessionExport",
    "export_schema",
    "export_session",
    "import_session",
    "parse_age",
    "prune",
    "render_export_schema",
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

    The whole document is checked before anything is written, and the events are
    written in one transaction, so a bad export leaves the database as it was.

    Raises:
        UsageError: the data is not an export (one line naming the event index and
            field), or the session already exists there.
    """
    try:
        if isinstance(data, (str, bytes)):
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            raw = load_json(text)
        else:
            raw = data
        export = SessionExport.model_validate(raw)
    except (LoadError, UnicodeDecodeError) as exc:
        raise UsageError(f"not a thinktank session export: {exc}") from None
    except ValidationError as exc:
        raise UsageError(f"not a thinktank session export: {_first_error(exc)}") from None
    events = [_event(i, e) for i, e in enumerate(export.events)]
    _check_history(export.session.id, events)
    sid = export.session.id
    if any(s.id == sid for s in await store.list_sessions()):
        raise UsageError(f"session {sid} already exists in {store.url}; not importing")
    await store.write(events)
    return sid


def _event(index: int, data: dict[str, Any]) -> Event:
    """Event ``index`` of an export, checked field by field (types, required fields,
    timezone-aware times) as JSON carries it, by the events' own decoder."""
    where = f"not a thinktank session export: events[{index}]"
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise UsageError(f"{where}: type: unknown event type {kind!r}")
    where += f" ({kind})"
    try:
        event = decode_event(msgspec.json.encode(data))
    except msgspec.ValidationError as exc:
        raise UsageError(f"{where}: {_decode_problem(exc)}") from None
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if isinstance(value, datetime) and value.tzinfo is None:
            raise UsageError(f"{where}: {name}: a time without a timezone")
    return event


_FIELD_PROBLEM = re.compile(r"Object (missing required|contains unknown) field `(.+)`")


def _decode_problem(exc: msgspec.ValidationError) -> str:
    """msgspec's message as ``field.path: problem`` (``steps[1].depends_on: Field
    required``, ``at: Expected `datetime`, got `int```)."""
    message, _, at = str(exc).partition(" - at `$")
    path = at.removesuffix("`").lstrip(".")
    missing = _FIELD_PROBLEM.fullmatch(message)
    if missing:
        path = f"{path}.{missing[2]}" if path else missing[2]
        message = "Field required" if missing[1] == "missing required" else "unknown field"
    return f"{path}: {message}" if path else message


def _check_history(sid: str, events: list[Event]) -> None:
    """The events tell one session's story: it starts the session, and every step and
    call they name was declared or started before."""
    if not events or not isinstance(events[0], SessionStarted):
        raise UsageError("not a thinktank session export: its events do not start the session")
    steps: set[str] = set()
    calls: set[str] = set()
    for index, event in enumerate(events):
        where = f"not a thinktank session export: events[{index}] ({event.type})"
        if event.session_id != sid:
            raise UsageError(f"{where}: session_id: not the exported session {sid}")
        if isinstance(event, SessionStarted) and index > 0 and not _resumes(event, sid):
            raise UsageError(f"{where}: the session starts twice")
        if isinstance(event, SessionStarted | StepsAdded):
            steps.update(info.step_id for info in event.steps)
        step_id = getattr(event, "step_id", None)
        if step_id is not None and step_id not in steps:
            raise UsageError(f"{where}: step_id: no step {step_id!r} in the session")
        if isinstance(event, CallStarted):
            calls.add(event.call_id)
        elif isinstance(event, CallFinished | CallAttempt) and event.call_id not in calls:
            raise UsageError(f"{where}: call_id: call {event.call_id!r} was never started")


def _resumes(event: SessionStarted, sid: str) -> bool:
    """Whether ``event`` is a resume of session ``sid`` starting it again (a resumed
    session's history holds one more ``session_started`` per resume)."""
    origin = event.origin or {}
    return origin.get("kind") == "resume" and origin.get("session_id") == sid


def _first_error(exc: ValidationError) -> str:
    """The first problem of a validation error, as ``field.path: message``."""
    err = exc.errors(include_url=False)[0]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    return f"{path}: {err['msg']}" if path else err["msg"]


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


def export_schema() -> dict[str, Any]:
    """The JSON Schema of ``thinktank export`` output."""
    return schema_document(
        "https://thinktank.dev/schemas/export.schema.json",
        "Generated by `thinktank schema` from thinktank/transfer.py; do not edit.",
        SessionExport.model_json_schema(mode="serialization"),
    )


def render_export_schema() -> str:
    """The export schema as committed in ``schemas/export.schema.json``."""
    return render_schema(export_schema())
