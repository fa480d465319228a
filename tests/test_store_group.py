"""Group commit: concurrent writers of one store share write transactions, and each
still gets the outcome of its own batch (``thinktank.store._group``).

On a real SQLite file and a real PostgreSQL database: random numbers of sessions
written at once in random batch sizes, one writer whose batch cannot be written, and
writers cancelled at random moments. Every batch is stored whole or not at all, once;
a failing batch fails only its writer; a cancelled writer's batches are a prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import pg
from tests.test_store import at, simple_session
from thinktank.errors import StoreError, UnknownSessionError
from thinktank.events import Event, StepStarted
from thinktank.store import Store
from thinktank.store._group import Job

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url


class CountingStore(Store):
    """A real store that counts its write transactions and the batches in each."""

    transactions: list[int]

    async def _commit(self, jobs: list[Job]) -> None:
        await super()._commit(jobs)
        self.transactions = [*getattr(self, "transactions", []), len(jobs)]


def batches_of(events: Sequence[Event], size: int) -> list[list[Event]]:
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


def poisoned(events: list[Event]) -> list[Event]:
    """``events`` with a step no SessionStarted wrote (the store refuses the batch)."""
    bad = StepStarted(
        session_id=events[0].session_id, at=at(0), step_id="nowhere", attempt=1, prompt="p"
    )
    return [bad, *events]


async def play(store: Store, batches: list[list[Event]], written: list[int]) -> None:
    """Write the batches in order, noting each one's size once it is written."""
    for batch in batches:
        await store.write(batch)
        written.append(len(batch))
        await anyio.lowlevel.checkpoint()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    sessions=st.integers(1, 8),
    size=st.integers(1, 6),
    bad=st.one_of(st.none(), st.integers(0, 7)),
    cancels=st.dictionaries(st.integers(0, 7), st.integers(0, 12), max_size=3),
)
async def test_each_batch_is_stored_whole_once_and_fails_alone(
    db_url: str, sessions: int, size: int, bad: int | None, cancels: dict[int, int]
) -> None:
    plays = [batches_of(simple_session(3, name=f"g{i}"), size) for i in range(sessions)]
    if bad is not None and bad < sessions and len(plays[bad]) > 1:
        plays[bad][1] = poisoned(plays[bad][1])
        cancels.pop(bad, None)
    else:
        bad = None
    written: list[list[int]] = [[] for _ in plays]
    failed: dict[int, Exception] = {}
    scopes = [anyio.CancelScope() for _ in plays]

    async def writer(i: int) -> None:
        with scopes[i]:
            try:
                await play(store, plays[i], written[i])
            except StoreError as exc:  # the store's one error for a batch it refused
                failed[i] = exc

    async def canceller(i: int, after: int) -> None:
        for _ in range(after):
            await anyio.lowlevel.checkpoint()
        scopes[i].cancel()

    async with await Store.open(db_url) as store:
        async with anyio.create_task_group() as tg:
            for i in range(len(plays)):
                tg.start_soon(writer, i)
            for i, after in cancels.items():
                if i < len(plays):
                    tg.start_soon(canceller, i, after)
        for i, batches in enumerate(plays):
            if i == bad:
                assert set(failed) == {bad} and "nowhere" in str(failed[bad])
                assert written[i] == [len(batches[0])]
            whole = i != bad and not scopes[i].cancel_called
            await check_stored(store, batches, len(written[i]), whole=whole)


async def check_stored(store: Store, batches: list[list[Event]], done: int, *, whole: bool) -> None:
    """The session's stored events are whole batches, in order, each once: a prefix of
    ``batches``, the ``done`` its writer saw written (a cancelled writer may have had one
    more written after it stopped waiting), all of them when ``whole``."""
    sid = batches[0][0].session_id
    sizes = [len(b) for b in batches]
    try:
        stored = len(await store.events_of(sid))
    except UnknownSessionError:
        stored = 0
    prefixes = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    assert stored in (prefixes[done], prefixes[min(done + 1, len(sizes))])
    if whole:
        assert stored == sum(sizes)
        session = await store.get_session(sid)
        assert session.status == "completed" and len(session.steps) == 3


async def test_writers_at_once_share_transactions(tmp_path: Path) -> None:
    """Ten sessions written at once take far fewer transactions than batches."""
    plays = [batches_of(simple_session(4, name=f"t{i}"), 2) for i in range(10)]
    async with await CountingStore.open(str(tmp_path / "g.db")) as store:
        async with anyio.create_task_group() as tg:
            for batches in plays:
                tg.start_soon(play, store, batches, [])
        assert sum(store.transactions) == sum(len(b) for b in plays)
        assert max(store.transactions) > 1
        assert len(store.transactions) < sum(len(b) for b in plays) / 2


async def test_a_new_session_is_leased_as_it_is_written(db_url: str) -> None:
    events = simple_session(1)
    sid = events[0].session_id
    async with await Store.open(db_url) as store:
        await store.start_session(events[0], worker_id="w1", ttl_s=30)  # type: ignore[arg-type]
        lease = await store.lease_of(sid)
        assert lease is not None and lease[0] == "w1"
        assert not await store.claim_session(sid, worker_id="w2", ttl_s=30)
        assert await store.claim_session(sid, worker_id="w1", ttl_s=30)
        assert not await store.release(sid, worker_id="w2")
        assert await store.release(sid, worker_id="w1")
        assert await store.lease_of(sid) is None
        with pytest.raises(UnknownSessionError, match="nope"):
            await store.release("nope", worker_id="w1")
