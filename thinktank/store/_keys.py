"""API key rows: the keys of ``thinktank serve``, their request windows and budgets.

Every change that enforces a limit is ONE conditional ``UPDATE`` of the key's row, so
that servers in several processes (or on several machines, over PostgreSQL) sharing
the database never admit more than the limit between them:

- a request: ``UPDATE ... SET window_count = window_count + 1 (or 1 in a new window)
  WHERE id = ? AND (the window is over OR window_count < rpm)``;
- a budget reservation: ``UPDATE ... SET reserved = reserved + ? WHERE id = ? AND
  spent + reserved + ? <= budget``, and a row in ``thinktank_reservations`` saying
  what it holds, for whom and until when.

A reservation is a row so that one whose request never settles it (its process was
killed: SIGKILL, OOM, a deploy) comes back: past its ``expires_at`` the next
reservation on its key, or any server's periodic :func:`sweep`, deletes it and credits
the key. The key's ``reserved_micro_usd`` stays as the sum of its rows (so the budget
check is one conditional UPDATE, and ``keys list`` reads it as it is): every change of
a key's reservations first locks the key's row (``SELECT ... FOR UPDATE``) and changes
the rows and the sum in one transaction; a row is credited back only by the
transaction whose ``DELETE`` removed it, so a reservation is released exactly once
whoever releases it (its request settling, a reservation, two sweepers at once).

SQLite runs each in a ``BEGIN IMMEDIATE`` transaction (the store's write transactions),
so writers take turns. PostgreSQL's ``UPDATE`` locks the row, and under READ COMMITTED
an update that waited for another re-evaluates its ``WHERE`` and ``SET`` on the row
that one committed: the condition always sees every admission before it. The window
is fixed, one minute from its first request, on the database server's clock on
PostgreSQL (servers whose clocks disagree still share one window) and this machine's
on SQLite. Money is in integer micro-dollars, so the budget check is exact.

These functions run on a connection the :class:`~thinktank.store.Store` opened, inside
its read or write transaction.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Table,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from thinktank._ids import new_id
from thinktank.errors import UsageError
from thinktank.store._lease import _as_utc
from thinktank.store._read import resolve_id
from thinktank.store.tables import API_KEYS, RESERVATIONS, SESSIONS

__all__ = [
    "WINDOW_S",
    "ApiKey",
    "count_request",
    "create_key",
    "key_by_hash",
    "list_keys",
    "renew",
    "reserve",
    "revoke_key",
    "set_session_provenance",
    "settle",
    "sweep",
]

WINDOW_S = 60.0
"""The length of a key's request window (its ``rpm`` counts requests in one)."""

_c = API_KEYS.c
_r = RESERVATIONS.c


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, as ``thinktank keys list`` shows it (never the key itself)."""

    id: str
    name: str
    prefix: str
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None
    budget_micro_usd: int | None
    spent_micro_usd: int
    reserved_micro_usd: int
    rpm: int | None

    @classmethod
    def of(cls, row: Any) -> ApiKey:
        """The key of a ``thinktank_api_keys`` row."""
        values = {field.name: row._mapping[field.name] for field in fields(cls)}
        # SQLite hands datetimes back naive: they are UTC.
        for name in ("created_at", "revoked_at"):
            if values[name] is not None:
                values[name] = _as_utc(values[name])
        return cls(**values)


def _now(postgres: bool) -> ColumnElement[Any]:
    """Now in epoch seconds: the server's clock on PostgreSQL, this machine's on SQLite."""
    if postgres:
        return cast(func.extract("epoch", func.now()), Float)
    return literal(time.time(), Float)


async def create_key(conn: AsyncConnection, **values: Any) -> str:
    """Store a new key (``name``, ``prefix``, ``key_hash``, ``created_at``,
    ``budget_micro_usd``, ``rpm``); return its id."""
    kid = new_id()
    await conn.execute(
        insert(API_KEYS).values(
            id=kid, spent_micro_usd=0, reserved_micro_usd=0, window_count=0, **values
        )
    )
    return kid


async def list_keys(conn: AsyncConnection) -> list[ApiKey]:
    """Every key, oldest first."""
    rows = await conn.execute(select(API_KEYS).order_by(_c.created_at, _c.id))
    return [ApiKey.of(row) for row in rows]


async def revoke_key(conn: AsyncConnection, id_or_prefix: str, at: datetime) -> ApiKey:
    """Revoke the key with this id (or unique id prefix); a revoked key stays revoked.

    Raises:
        UsageError: no key, or several, match.
    """
    row = await resolve_id(conn, API_KEYS, id_or_prefix, what="API key", error=UsageError)
    await conn.execute(
        update(API_KEYS).where(_c.id == row.id, _c.revoked_at.is_(None)).values(revoked_at=at)
    )
    found = (await conn.execute(select(API_KEYS).where(_c.id == row.id))).one()
    return ApiKey.of(found)


async def key_by_hash(conn: AsyncConnection, key_hash: str) -> ApiKey | None:
    """The key whose hash is ``key_hash``, revoked or not; None if there is none."""
    row = (await conn.execute(select(API_KEYS).where(_c.key_hash == key_hash))).first()
    return None if row is None else ApiKey.of(row)


async def count_in_window(
    conn: AsyncConnection,
    table: Table,
    row: ColumnElement[bool],
    under_limit: ColumnElement[bool],
    *,
    now: ColumnElement[Any],
    window_s: float,
) -> float | None:
    """Count one request in the fixed window of ``row`` (a row of ``table``, which has
    ``window_start`` and ``window_count``) if a new window begins or ``under_limit``
    holds: one conditional UPDATE, so it holds across processes.

    Returns:
        None when counted; else the seconds until the window ends.

    Raises:
        LookupError: the row is not there.
    """
    c = table.c
    new_window = or_(c.window_start.is_(None), c.window_start <= now - window_s)
    admitted = await conn.execute(
        update(table)
        .where(row, or_(new_window, under_limit))
        .values(
            window_start=case((new_window, now), else_=c.window_start),
            window_count=case((new_window, 1), else_=c.window_count + 1),
        )
    )
    if admitted.rowcount:
        return None
    found = (await conn.execute(select(c.window_start, now).where(row))).first()
    if found is None:
        raise LookupError(f"no row of {table.name} to count in")
    return float(found[0] + window_s - found[1])


async def count_request(conn: AsyncConnection, key_id: str, *, postgres: bool) -> float | None:
    """Count one request against the key's per-minute limit, if it is under it.

    Returns:
        None when the request is admitted (or the key has no limit); else the seconds
        until its window ends and requests are admitted again.
    """
    try:
        left = await count_in_window(
            conn,
            API_KEYS,
            _c.id == key_id,
            or_(_c.rpm.is_(None), _c.window_count < _c.rpm),
            now=_now(postgres),
            window_s=WINDOW_S,
        )
    except LookupError:
        return None  # the key was deleted under us: authentication refuses it next time
    return None if left is None else max(1.0, float(math.ceil(left)))


def _locked(key_id: str) -> Any:
    """The key's row, locked until the transaction ends (PostgreSQL; SQLite's
    ``BEGIN IMMEDIATE`` already holds the whole database). Every change of a key's
    reservations takes this lock first, so they never deadlock and the key's
    ``reserved_micro_usd`` stays the sum of its rows."""
    return select(API_KEYS).where(_c.id == key_id).with_for_update()


async def _release_expired(conn: AsyncConnection, key_id: str, now: Any) -> int:
    """Delete the key's lapsed reservations and credit them back (the key is locked):
    how many there were."""
    gone = await conn.execute(
        delete(RESERVATIONS)
        .where(_r.key_id == key_id, _r.expires_at <= now)
        .returning(_r.micro_usd)
    )
    amounts = [row[0] for row in gone]
    await _credit(conn, key_id, sum(amounts))
    return len(amounts)


async def _credit(conn: AsyncConnection, key_id: str, released: int, spent: int = 0) -> None:
    """Take ``released`` off the key's reserved sum and charge it ``spent``."""
    if not released and not spent:
        return
    left = _c.reserved_micro_usd - released
    await conn.execute(
        update(API_KEYS)
        .where(_c.id == key_id)
        .values(
            reserved_micro_usd=case((left < 0, 0), else_=left),
            spent_micro_usd=_c.spent_micro_usd + spent,
        )
    )


async def reserve(
    conn: AsyncConnection,
    key_id: str,
    micro_usd: int,
    *,
    holder: str,
    ttl_s: float,
    postgres: bool,
) -> str | ApiKey:
    """Reserve ``micro_usd`` of the key's budget for ``ttl_s`` if spent + reserved + it
    fits, after releasing the key's lapsed reservations.

    Returns:
        The reservation's id when reserved; else the key as it is (to say why not).
    """
    if (await conn.execute(_locked(key_id))).first() is None:
        raise UsageError(f"no API key has the id {key_id!r}")
    now = _now(postgres)
    await _release_expired(conn, key_id, now)
    fits = or_(
        _c.budget_micro_usd.is_(None),
        _c.spent_micro_usd + _c.reserved_micro_usd + micro_usd <= _c.budget_micro_usd,
    )
    done = await conn.execute(
        update(API_KEYS)
        .where(_c.id == key_id, _c.revoked_at.is_(None), fits)
        .values(reserved_micro_usd=_c.reserved_micro_usd + micro_usd)
    )
    if not done.rowcount:
        row = (await conn.execute(select(API_KEYS).where(_c.id == key_id))).one()
        return ApiKey.of(row)
    rid = new_id()
    await conn.execute(
        insert(RESERVATIONS).values(
            id=rid,
            key_id=key_id,
            micro_usd=micro_usd,
            holder=holder,
            created_at=now,
            expires_at=now + ttl_s,
        )
    )
    return rid


async def settle(conn: AsyncConnection, reservation_id: str, key_id: str, actual: int) -> None:
    """End a reservation: release what it holds (unless it lapsed and was released
    already) and charge the key what the request cost (always: the money was spent)."""
    await conn.execute(_locked(key_id))
    gone = await conn.execute(
        delete(RESERVATIONS).where(_r.id == reservation_id).returning(_r.micro_usd)
    )
    await _credit(conn, key_id, sum(row[0] for row in gone), actual)


async def renew(
    conn: AsyncConnection, reservation_id: str, ttl_s: float, *, postgres: bool
) -> bool:
    """Push a reservation's lapse to ``ttl_s`` from now; False when it is gone (it lapsed
    and was released, or was settled). It changes no sum, so it takes no key lock."""
    done = await conn.execute(
        update(RESERVATIONS)
        .where(_r.id == reservation_id)
        .values(expires_at=_now(postgres) + ttl_s)
    )
    return bool(done.rowcount)


async def sweep(conn: AsyncConnection, *, postgres: bool) -> int:
    """Release every lapsed reservation (of requests whose process died); return how
    many. Two sweepers at once release each one once: each takes the key's lock, and
    the second finds the rows gone."""
    now = _now(postgres)
    keys = await conn.execute(
        select(_r.key_id).where(_r.expires_at <= now).distinct().order_by(_r.key_id)
    )
    released = 0
    for (key_id,) in keys.all():  # in id order: two sweepers lock keys in one order
        await conn.execute(_locked(key_id))
        released += await _release_expired(conn, key_id, now)
    return released


async def set_session_provenance(
    conn: AsyncConnection, session_id: str, *, key_id: str | None, request_id: str | None
) -> None:
    """Record which key's request (and which request) made the session ``session_id``."""
    await conn.execute(
        update(SESSIONS)
        .where(SESSIONS.c.id == session_id)
        .values(key_id=key_id, request_id=request_id)
    )
