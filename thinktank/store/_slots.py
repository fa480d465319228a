"""Slot rows and request windows: model limits shared by every process on the database.

A limit of N concurrent calls is N rows of ``thinktank_slots`` (``limit_key``, slot
0..N-1). A call takes one with ONE conditional ``UPDATE`` (the lowest free slot: no
holder, or a hold whose ``expires_at`` is past) and gives it back with another, so two
row writes per call. A hold lapses at ``expires_at``: the slots of a process that was
killed come back without anyone sweeping them, like the budget reservations of
``store/_keys.py``. Giving back only clears a slot its holder still holds, so a call
whose hold lapsed and was taken by another never frees the other's.

A requests-per-minute limit is one row of ``thinktank_limit_windows`` per limit key,
counted with one conditional ``UPDATE`` as ``_keys.count_request`` counts an API key's.

SQLite runs each in a ``BEGIN IMMEDIATE`` transaction (writers take turns). On
PostgreSQL the slot is picked by a ``FOR UPDATE SKIP LOCKED`` subquery (two takers
never wait for, or pick, the same row) and re-checked by the ``UPDATE``'s own
condition. Times are the database server's clock on PostgreSQL, this machine's on SQLite.

These functions run on a connection the :class:`~thinktank.store.Store` opened, inside
its write transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from thinktank.store._keys import _now, count_in_window
from thinktank.store.tables import LIMIT_WINDOWS, SLOTS

__all__ = ["count", "free_held_by", "give", "give_all", "make_rows", "renew", "take"]

_s = SLOTS.c
_w = LIMIT_WINDOWS.c


async def make_rows(conn: AsyncConnection, key: str, slots: int, *, postgres: bool) -> None:
    """Create the key's slot rows 0..``slots``-1 and its window row where missing (rows
    another process made, or a larger limit configured before, stay as they are)."""
    insert = postgresql.insert if postgres else sqlite.insert
    if slots:
        rows = [{"limit_key": key, "slot": n} for n in range(slots)]
        await conn.execute(insert(SLOTS).values(rows).on_conflict_do_nothing())
    await conn.execute(
        insert(LIMIT_WINDOWS).values(limit_key=key, window_count=0).on_conflict_do_nothing()
    )


def _free(now: Any) -> Any:
    return or_(_s.holder.is_(None), _s.expires_at <= now)


async def take(
    conn: AsyncConnection, key: str, limit: int, *, holder: str, ttl_s: float, postgres: bool
) -> int | None:
    """Hold the lowest free slot below ``limit`` for ``ttl_s`` seconds: its number, or
    None when every one is held."""
    now = _now(postgres)
    pick = (
        select(_s.slot)
        .where(_s.limit_key == key, _s.slot < limit, _free(now))
        .order_by(_s.slot)
        .limit(1)
    )
    if postgres:
        pick = pick.with_for_update(skip_locked=True)
    taken = await conn.execute(
        update(SLOTS)
        .where(_s.limit_key == key, _s.slot == pick.scalar_subquery(), _free(now))
        .values(holder=holder, expires_at=now + ttl_s)
        .returning(_s.slot)
    )
    row = taken.first()
    return None if row is None else int(row[0])


async def renew(
    conn: AsyncConnection, key: str, slot: int, *, holder: str, ttl_s: float, postgres: bool
) -> bool:
    """Push the hold's lapse to ``ttl_s`` from now; False when ``holder`` lost it."""
    done = await conn.execute(
        update(SLOTS)
        .where(_s.limit_key == key, _s.slot == slot, _s.holder == holder)
        .values(expires_at=_now(postgres) + ttl_s)
    )
    return bool(done.rowcount)


async def give(conn: AsyncConnection, key: str, slot: int, *, holder: str) -> bool:
    """Free the slot if ``holder`` still holds it; whether it did."""
    done = await conn.execute(
        update(SLOTS)
        .where(_s.limit_key == key, _s.slot == slot, _s.holder == holder)
        .values(holder=None, expires_at=None)
    )
    return bool(done.rowcount)


async def give_all(conn: AsyncConnection, gives: Sequence[tuple[str, int, str]]) -> None:
    """Free each ``(key, slot, holder)`` slot its holder still holds."""
    for key, slot, holder in gives:
        await give(conn, key, slot, holder=holder)


async def free_held_by(conn: AsyncConnection, prefix: str) -> int:
    """Free every slot whose holder id starts with ``prefix`` (a dead process's
    ``host:pid:``, so its slots come back before they lapse); how many."""
    done = await conn.execute(
        update(SLOTS)
        .where(func.substr(_s.holder, 1, len(prefix)) == prefix)
        .values(holder=None, expires_at=None)
    )
    return int(done.rowcount or 0)


async def count(
    conn: AsyncConnection, key: str, rpm: int, *, window_s: float, postgres: bool
) -> float | None:
    """Count one request in the key's window if fewer than ``rpm`` were: None when
    counted, else the seconds until the window ends (the row must exist: ``make_rows``)."""
    left = await count_in_window(
        conn,
        LIMIT_WINDOWS,
        _w.limit_key == key,
        _w.window_count < rpm,
        now=_now(postgres),
        window_s=window_s,
    )
    return None if left is None else max(0.0, left)
