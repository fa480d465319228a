"""Queued sessions: a session written before any worker runs it.

A queued session is a row of ``thinktank_sessions`` with status ``queued``, its spec,
inputs and provenance, no lease and no steps (migration ``0012_queued_sessions`` adds
the ``queue`` it waits on and ``queued_at``). Whoever runs it claims its lease as for
any session (``_lease.claim``); its first event (``SessionStarted``) then fills the row
the way it fills a resumed one, and sets ``started_at`` (``store._fold``). Only ids
need to travel between processes: everything a worker needs is in the row.

Each change here is one statement in the caller's write transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from thinktank.store._lease import clock, unleased
from thinktank.store.tables import SESSIONS

__all__ = ["drop_queued", "enqueue", "queued", "states"]

_c = SESSIONS.c


async def enqueue(
    conn: AsyncConnection,
    *,
    name: str,
    spec: Mapping[str, Any],
    inputs: Mapping[str, Any],
    parallel_execution_config: Mapping[str, Any],
    source: str | None,
    key_id: str | None,
    request_id: str | None,
    queue: str | None,
) -> str:
    """Insert a queued session row; its new id."""
    # uuid4, as a run's: a random prefix keeps `thinktank show <first 8 chars>` unambiguous.
    session_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    await conn.execute(
        insert(SESSIONS).values(
            id=session_id,
            name=name,
            status="queued",
            parallel_execution_config=dict(parallel_execution_config),
            spec=dict(spec),
            inputs=dict(inputs),
            source=source,
            model_selection={},
            created_at=now,
            # Not started yet: the time it was queued, until its first event says when.
            started_at=now,
            text_repairs=[],
            key_id=key_id,
            request_id=request_id,
            queue=queue,
            queued_at=now,
        )
    )
    return session_id


async def drop_queued(
    conn: AsyncConnection, session_id: str, reason: str, status: str, *, postgres: bool
) -> bool:
    """End a session that is still queued and that no worker has claimed: it becomes
    ``status`` with ``reason``. False (nothing changed) when it has started or a
    worker holds it."""
    now, _ = clock(postgres)
    result = await conn.execute(
        update(SESSIONS)
        .where(_c.id == session_id, _c.status == "queued", unleased(now))
        .values(status=status, error=reason, finished_at=now)
    )
    return result.rowcount == 1


async def queued(
    conn: AsyncConnection, queue: str | None, limit: int | None, before: datetime | None
) -> list[str]:
    """Ids of the sessions waiting on ``queue`` (None: on any queue), queued before
    ``before`` (None: whenever), oldest first."""
    query = select(_c.id).where(_c.status == "queued")
    if queue is not None:
        query = query.where(_c.queue == queue)
    if before is not None:
        query = query.where(_c.queued_at < before)
    query = query.order_by(_c.queued_at, _c.id)
    if limit is not None:
        query = query.limit(limit)
    return [row[0] for row in await conn.execute(query)]


async def states(
    conn: AsyncConnection, session_ids: Sequence[str]
) -> dict[str, tuple[str, str | None]]:
    """(status, lease owner) of each of ``session_ids`` that exists, in one query (a
    lapsed lease's owner is still named: it is whoever ran the session last)."""
    found: dict[str, tuple[str, str | None]] = {}
    ids = list(session_ids)
    for start in range(0, len(ids), 500):  # bounded IN lists
        rows = await conn.execute(
            select(_c.id, _c.status, _c.lease_owner).where(_c.id.in_(ids[start : start + 500]))
        )
        found.update({row[0]: (row[1], row[2]) for row in rows})
    return found
