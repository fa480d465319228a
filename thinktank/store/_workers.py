"""Worker rows: which ``thinktank worker`` processes are alive, and who recovers the dead.

A worker inserts its row when it starts (:func:`register`) and renews it every third of
its time to live (:func:`beat`), which also records its load. A beat changes only a
row that is still its own and not claimed by a recoverer: once another worker has
declared it dead, the beat finds nothing and the worker knows to stop (its sessions are
being finished elsewhere).

A live worker claims the rows past their expiry with ONE conditional ``UPDATE ...
RETURNING`` (:func:`claim_dead`): of several workers looking at once, each dead row goes
to exactly one. The claim lapses too (``recovery_expires_at``), so a recoverer that dies
before :func:`forget` is itself replaced. Times are epoch seconds: the database server's
clock on PostgreSQL, this machine's on SQLite (one machine).

These functions run on a connection the :class:`~thinktank.store.Store` opened, inside
its write transaction.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from pydantic import BaseModel
from sqlalchemy import Float, and_, cast, delete, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from thinktank.store._keys import _now
from thinktank.store.tables import WORKERS

__all__ = [
    "DeadWorker",
    "WorkerInfo",
    "beat",
    "claim_dead",
    "expire",
    "forget",
    "list_workers",
    "register",
]

_w = WORKERS.c


class WorkerInfo(BaseModel):
    """One worker as ``thinktank workers`` lists it."""

    executor_id: str
    """Its unique id (the lease owner of the sessions it runs)."""
    name: str
    host: str
    pid: int
    version: str
    concurrency: int
    running: int
    """Sessions it runs now (as of its last beat)."""
    finished: int
    """Sessions it ran to their end."""
    draining: bool
    alive: bool
    """Its last beat has not lapsed."""
    age_s: float
    """Seconds since it started."""
    expires_in_s: float
    """Seconds until it counts as dead unless it beats again (negative: it is dead)."""
    recovered_by: str | None
    recovery_expires_at: float | None
    started_at: float
    expires_at: float


async def register(conn: AsyncConnection, *, ttl_s: float, postgres: bool, **row: Any) -> None:
    """Insert the worker's row (``executor_id``, ``name``, ``host``, ``pid``,
    ``version``, ``concurrency``), alive for ``ttl_s`` seconds."""
    now = _now(postgres)
    await conn.execute(
        insert(WORKERS).values(
            **row,
            started_at=now,
            expires_at=now + ttl_s,
            running=0,
            finished=0,
            draining=False,
        )
    )


async def beat(
    conn: AsyncConnection,
    executor_id: str,
    *,
    ttl_s: float,
    running: int,
    finished: int,
    draining: bool,
    postgres: bool,
) -> bool:
    """Renew the worker's row and record its load; False when the row is gone or was
    claimed by a recoverer (the worker was declared dead)."""
    done = await conn.execute(
        update(WORKERS)
        .where(_w.executor_id == executor_id, _w.recovered_by.is_(None))
        .values(
            expires_at=_now(postgres) + ttl_s,
            running=running,
            finished=finished,
            draining=draining,
        )
    )
    return bool(done.rowcount)


async def expire(conn: AsyncConnection, executor_id: str, *, postgres: bool) -> None:
    """Mark the worker dead now, so a live one recovers what it leaves at once."""
    await conn.execute(
        update(WORKERS)
        .where(_w.executor_id == executor_id, _w.recovered_by.is_(None))
        .values(expires_at=_now(postgres) - 1.0, running=0, draining=True)
    )


class DeadWorker(NamedTuple):
    """A dead worker claimed for recovery."""

    executor_id: str
    host: str
    pid: int
    """Its process on ``host`` (the holder of the call slots it left)."""
    late_s: float
    """Seconds since it expired."""


async def claim_dead(
    conn: AsyncConnection, me: str, *, ttl_s: float, postgres: bool
) -> list[DeadWorker]:
    """Claim the dead workers nobody is recovering (or whose recoverer's claim lapsed),
    for ``me`` alone."""
    now = _now(postgres)
    claimed = await conn.execute(
        update(WORKERS)
        .where(
            _w.expires_at < now,
            _w.executor_id != me,
            or_(_w.recovered_by.is_(None), _w.recovery_expires_at < now),
        )
        .values(recovered_by=me, recovery_expires_at=now + ttl_s)
        .returning(_w.executor_id, _w.host, _w.pid, cast(now - _w.expires_at, Float))
    )
    return [DeadWorker(str(e), str(h), int(p), float(late)) for e, h, p, late in claimed]


async def forget(conn: AsyncConnection, executor_id: str, *, recovered_by: str | None) -> None:
    """Delete a worker's row: a dead one its recoverer is done with (only if the claim
    is still ``recovered_by``'s), or with None, one that left with nothing to recover."""
    claim = _w.recovered_by.is_(None) if recovered_by is None else _w.recovered_by == recovered_by
    await conn.execute(delete(WORKERS).where(and_(_w.executor_id == executor_id, claim)))


async def list_workers(conn: AsyncConnection, *, postgres: bool) -> list[WorkerInfo]:
    """Every worker row, alive first, then by name."""
    now = cast(func.extract("epoch", func.now()), Float) if postgres else literal(None)
    rows = (await conn.execute(select(WORKERS, now.label("db_now")))).all()
    infos = []
    for row in rows:
        values = dict(row._mapping)
        clock = values.pop("db_now") or time.time()
        infos.append(
            WorkerInfo(
                **values,
                alive=values["expires_at"] > clock,
                age_s=clock - values["started_at"],
                expires_in_s=values["expires_at"] - clock,
            )
        )
    infos.sort(key=lambda w: (not w.alive, w.name, w.executor_id))
    return infos
