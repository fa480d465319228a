"""Session leases: which worker runs a session when several share one database.

A lease is two columns of ``thinktank_sessions``: ``lease_owner`` (a worker id) and
``lease_expires_at``. A worker claims a session that is unleased, whose lease expired,
or that it already holds; it keeps the lease alive with heartbeats shorter than the
time to live, and releases it when done. A worker that dies simply stops renewing, and
once the lease expires another worker may take the session over.

SQLite: each operation is one ``UPDATE ... WHERE <the lease is free or ours>`` in a
``BEGIN IMMEDIATE`` transaction (the store's engine begins every write that way), so
claims are serialised by the database's write lock; time is this machine's clock.

PostgreSQL: a claim locks the session row with ``SELECT ... FOR NO KEY UPDATE SKIP
LOCKED`` (``FOR UPDATE``'s weaker form, which does not wait for, or block, the key-share
locks that inserting the session's steps and calls takes), decides, and updates it in
the same transaction. A row another claim holds at that moment is skipped: that worker
wins and this one is told no at once, without waiting. Time is the server's clock
(``now()``), so workers on machines whose clocks disagree still agree on expiry.

Two lease changes ride in the store's shared write transactions instead of a
transaction each (``thinktank.store._group``): the lease of a new session, taken with
its first event (no other worker can have seen the session yet, so it cannot be held),
and a release. They are compiled once, as the write path's statements are:
:func:`claim_new_rows` and :data:`RELEASE`.

Cancel requests ride on the same row: ``cancel_requested_at`` is set (only on a
session whose status is ``running``) by whichever server process a cancel reaches;
the process running the session polls it for its running sessions by primary key and
cancels them; a run clears it when it starts, so a stale request never cancels a
later resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Interval,
    and_,
    bindparam,
    func,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from thinktank.errors import UnknownSessionError
from thinktank.store.tables import SESSIONS

__all__ = [
    "RELEASE",
    "cancels_requested",
    "claim",
    "claim_new_rows",
    "claim_new_statement",
    "clear_cancel",
    "clock",
    "heartbeat",
    "lease_of",
    "request_cancel",
    "unleased",
]

_c = SESSIONS.c

RELEASE = (
    update(SESSIONS)
    .where(_c.id == bindparam("b_id"), _c.lease_owner == bindparam("b_owner"))
    .values(lease_owner=null(), lease_expires_at=null())
    .returning(_c.id)
)
"""Give up the lease of session ``b_id`` if ``b_owner`` holds it; the id when it did."""

_CLAIM_NEW_SQLITE = (
    update(SESSIONS)
    .where(_c.id == bindparam("b_id"))
    .values(
        lease_owner=bindparam("b_owner", type_=_c.lease_owner.type),
        lease_expires_at=bindparam("b_expires", type_=_c.lease_expires_at.type),
    )
)
_CLAIM_NEW_POSTGRES = (
    update(SESSIONS)
    .where(_c.id == bindparam("b_id"))
    .values(
        lease_owner=bindparam("b_owner", type_=_c.lease_owner.type),
        lease_expires_at=func.now() + bindparam("b_ttl", type_=Interval()),
    )
)


def claim_new_statement(postgres: bool) -> Any:
    """The UPDATE that leases a session just inserted (rows from :func:`claim_new_rows`)."""
    return _CLAIM_NEW_POSTGRES if postgres else _CLAIM_NEW_SQLITE


def claim_new_rows(
    session_id: str, worker_id: str, ttl_s: float, *, postgres: bool
) -> dict[str, Any]:
    """The parameters of :func:`claim_new_statement` for one session: its lease ends
    ``ttl_s`` from now by the server's clock on PostgreSQL, this machine's on SQLite."""
    ttl = timedelta(seconds=ttl_s)
    if postgres:
        return {"b_id": session_id, "b_owner": worker_id, "b_ttl": ttl}
    return {"b_id": session_id, "b_owner": worker_id, "b_expires": datetime.now(UTC) + ttl}


def clock(postgres: bool, ttl_s: float = 0.0) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """The lease clock as SQL: ``(now, now + ttl_s)``.

    The server's clock on PostgreSQL; this machine's (UTC) on SQLite, where every
    worker is on this machine.
    """
    ttl = timedelta(seconds=ttl_s)
    if postgres:
        return func.now(), func.now() + ttl
    now = datetime.now(UTC)
    return literal(now, _c.lease_expires_at.type), literal(now + ttl, _c.lease_expires_at.type)


def unleased(now: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL: the session row has no live lease at ``now`` (see :func:`clock`)."""
    return or_(_c.lease_owner.is_(None), _c.lease_expires_at.is_(None), _c.lease_expires_at <= now)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _require(conn: AsyncConnection, session_id: str) -> None:
    """Raise UnknownSessionError unless the session is stored."""
    if (await conn.execute(select(_c.id).where(_c.id == session_id))).first() is None:
        raise UnknownSessionError(f"no stored session has the id {session_id!r}")


async def claim(
    conn: AsyncConnection, session_id: str, worker_id: str, ttl_s: float, *, postgres: bool
) -> bool:
    """Take the lease of a session if it is free, expired or ours; in ``conn``'s transaction.

    Raises:
        UnknownSessionError: no session has the id ``session_id``.
    """
    now, expiry = clock(postgres, ttl_s)
    if postgres:
        locked = (
            await conn.execute(
                select(_c.lease_owner, _c.lease_expires_at, func.now())
                .where(_c.id == session_id)
                .with_for_update(skip_locked=True, key_share=True)
            )
        ).first()
        if locked is None:
            await _require(conn, session_id)
            return False  # another transaction holds the row: a competing claim
        owner, expires, server_now = locked
        held = owner is not None and owner != worker_id and expires is not None
        if held and expires > server_now:
            return False
        await conn.execute(
            update(SESSIONS)
            .where(_c.id == session_id)
            .values(lease_owner=worker_id, lease_expires_at=expiry)
        )
        return True
    result = await conn.execute(
        update(SESSIONS)
        .where(_c.id == session_id, or_(unleased(now), _c.lease_owner == worker_id))
        .values(lease_owner=worker_id, lease_expires_at=expiry)
    )
    if result.rowcount == 1:
        return True
    await _require(conn, session_id)
    return False


async def heartbeat(
    conn: AsyncConnection, session_id: str, worker_id: str, ttl_s: float, *, postgres: bool
) -> bool:
    """Extend the lease by ``ttl_s`` from now if ``worker_id`` holds it and it is live.

    Raises:
        UnknownSessionError: no session has the id ``session_id``.
    """
    now, expiry = clock(postgres, ttl_s)
    result = await conn.execute(
        update(SESSIONS)
        .where(and_(_c.id == session_id, _c.lease_owner == worker_id, _c.lease_expires_at > now))
        .values(lease_expires_at=expiry)
    )
    if result.rowcount == 1:
        return True
    await _require(conn, session_id)
    return False


async def lease_of(
    conn: AsyncConnection, session_id: str, *, postgres: bool
) -> tuple[str, datetime] | None:
    """The live lease of a session (owner, expiry in UTC), or None when it has none.

    Raises:
        UnknownSessionError: no session has the id ``session_id``.
    """
    server_clock = func.now() if postgres else literal(None)
    row = (
        await conn.execute(
            select(_c.lease_owner, _c.lease_expires_at, server_clock).where(_c.id == session_id)
        )
    ).first()
    if row is None:
        raise UnknownSessionError(f"no stored session has the id {session_id!r}")
    owner, expires, server_now = row
    if owner is None or expires is None:
        return None
    expires = _as_utc(expires)
    now = _as_utc(server_now) if server_now is not None else datetime.now(UTC)
    return (owner, expires) if expires > now else None


async def request_cancel(conn: AsyncConnection, session_id: str, *, postgres: bool) -> bool:
    """Ask whoever runs the session to cancel it: True if it is running (the request is
    stored), False if it has finished (nothing is stored).

    Raises:
        UnknownSessionError: no session has the id ``session_id``.
    """
    now, _ = clock(postgres)
    result = await conn.execute(
        update(SESSIONS)
        .where(_c.id == session_id, _c.status == "running")
        .values(cancel_requested_at=now)
    )
    if result.rowcount == 1:
        return True
    await _require(conn, session_id)
    return False


async def clear_cancel(conn: AsyncConnection, session_id: str) -> None:
    """Forget any cancel request of the session (a new run of it starts)."""
    await conn.execute(
        update(SESSIONS)
        .where(_c.id == session_id, _c.cancel_requested_at.is_not(None))
        .values(cancel_requested_at=None)
    )


async def cancels_requested(conn: AsyncConnection, session_ids: Sequence[str]) -> set[str]:
    """Which of ``session_ids`` have a cancel requested (one lookup by primary key)."""
    if not session_ids:
        return set()
    rows = await conn.execute(
        select(_c.id).where(_c.id.in_(list(session_ids)), _c.cancel_requested_at.is_not(None))
    )
    return {row[0] for row in rows}
