"""Session leases: claim, heartbeat, release and takeover, on SQLite and PostgreSQL.

The race of several processes claiming one session is in ``test_store_concurrency``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest

from tests import pg
from tests.test_store import new_id, simple_session
from thinktank.errors import UnknownSessionError
from thinktank.store import Store

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url


@pytest.fixture
async def stores(db_url: str) -> AsyncIterator[tuple[Store, Store, str]]:
    """Two stores (two workers) on one fresh database holding one started session."""
    first = await Store.open(db_url)
    second = await Store.open(db_url)
    try:
        events = simple_session(2)
        await first.write(events[:1])
        yield first, second, events[0].session_id
    finally:
        await first.close()
        await second.close()


async def test_two_workers_claim_one_session_exactly_one_wins(
    stores: tuple[Store, Store, str],
) -> None:
    """Two workers claim the same session at once: one wins, the other is told no."""
    first, second, sid = stores
    results: dict[str, bool] = {}

    async def claim(store: Store, worker: str) -> None:
        results[worker] = await store.claim_session(sid, worker_id=worker, ttl_s=30)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim, first, "w1")
        tg.start_soon(claim, second, "w2")
    assert sorted(results.values()) == [False, True]
    winner = next(worker for worker, won in results.items() if won)
    loser = "w2" if winner == "w1" else "w1"
    lease = await first.lease_of(sid)
    assert lease is not None and lease[0] == winner
    assert lease[1].tzinfo is UTC and lease[1] > datetime.now(UTC)
    # The loser keeps losing while the lease lives; the winner may claim again (renews).
    assert await second.claim_session(sid, worker_id=loser, ttl_s=30) is False
    assert await first.claim_session(sid, worker_id=winner, ttl_s=60) is True
    renewed = await second.lease_of(sid)
    assert renewed is not None and renewed[0] == winner and renewed[1] > lease[1]
    # Recording the session does not touch its lease.
    await first.write(simple_session(1)[:1])
    assert (await first.lease_of(sid)) == renewed


async def test_expired_lease_is_taken_over(stores: tuple[Store, Store, str]) -> None:
    """Once a lease expires another worker claims the session; the old owner cannot renew."""
    first, second, sid = stores
    assert await first.claim_session(sid, worker_id="w1", ttl_s=0.2)
    await anyio.sleep(0.4)
    assert await first.lease_of(sid) is None  # expired counts as no lease
    assert await second.claim_session(sid, worker_id="w2", ttl_s=30)
    assert not await first.heartbeat(sid, worker_id="w1", ttl_s=30)
    assert not await first.claim_session(sid, worker_id="w1", ttl_s=30)
    lease = await first.lease_of(sid)
    assert lease is not None and lease[0] == "w2"


async def test_heartbeat_keeps_the_lease(stores: tuple[Store, Store, str]) -> None:
    """Heartbeats keep a short lease alive well past its first expiry."""
    first, second, sid = stores
    # A time to live of 3 s renewed every 0.5 s: a loaded machine (CI runs PostgreSQL on
    # 2 cores) may stall a round trip for a second without the lease lapsing, which a
    # 0.8 s lease renewed every 0.25 s did not survive.
    ttl = 3.0
    assert await first.claim_session(sid, worker_id="w1", ttl_s=ttl)
    claimed = await first.lease_of(sid)
    assert claimed is not None
    for _ in range(8):  # 4 s in all, past the first expiry
        await anyio.sleep(0.5)
        assert await first.heartbeat(sid, worker_id="w1", ttl_s=ttl)
        assert not await second.claim_session(sid, worker_id="w2", ttl_s=ttl)
    lease = await second.lease_of(sid)
    assert lease is not None and lease[0] == "w1" and lease[1] > claimed[1]
    assert not await second.heartbeat(sid, worker_id="w2", ttl_s=ttl)  # not its lease


async def test_release_frees_the_session(stores: tuple[Store, Store, str]) -> None:
    """Only the holder releases a lease; after that another worker claims at once."""
    first, second, sid = stores
    assert await first.claim_session(sid, worker_id="w1", ttl_s=30)
    assert await second.release(sid, worker_id="w2") is False
    assert (await second.lease_of(sid) or ("", None))[0] == "w1"
    assert await first.release(sid, worker_id="w1") is True
    assert await first.lease_of(sid) is None
    assert await first.release(sid, worker_id="w1") is False  # nothing left to release
    assert await second.claim_session(sid, worker_id="w2", ttl_s=30)
    assert not await first.heartbeat(sid, worker_id="w1", ttl_s=30)


async def test_lease_calls_check_their_arguments(stores: tuple[Store, Store, str]) -> None:
    """Unknown sessions raise UnknownSessionError; an empty worker or bad ttl ValueError."""
    first, _, sid = stores
    unknown = new_id()
    with pytest.raises(UnknownSessionError, match=unknown):
        await first.claim_session(unknown, worker_id="w1", ttl_s=1)
    with pytest.raises(UnknownSessionError):
        await first.heartbeat(unknown, worker_id="w1", ttl_s=1)
    with pytest.raises(UnknownSessionError):
        await first.release(unknown, worker_id="w1")
    with pytest.raises(UnknownSessionError):
        await first.lease_of(unknown)
    for ttl in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="ttl_s"):
            await first.claim_session(sid, worker_id="w1", ttl_s=ttl)
    with pytest.raises(ValueError, match="worker_id"):
        await first.heartbeat(sid, worker_id="", ttl_s=1)
    assert await first.lease_of(sid) is None
