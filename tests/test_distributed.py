"""The worker pool (#17) with real ``thinktank worker`` processes, a real database and
a fake provider over loopback: load under a shared cap, drains, a database that drops
every connection, the workflow's determinism, fencing, and what ``import`` pulls in.

The kill -9 tests are in ``test_distributed_recovery.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

pytest.importorskip("dbos")

from tests.fakeserver import FakeServer, Fault
from tests.pg import (  # noqa: F401 - fixtures
    REQUIRE_PG_ENV,
    Cluster,
    db_url,
    find_bindir,
    pg_server,
    pg_url,
    start_cluster,
)
from tests.pool import (
    CALLS_PER_SESSION,
    DELAY_S,
    call_keys,
    check_store,
    config,  # noqa: F401 - fixture
    executor_id,
    fake,  # noqa: F401 - fixture
    fan_spec,
    submit_all,
    sync_engine,
    wait_all,
)
from tests.workerproc import WorkerProcess, start_worker, workers
from thinktank.distributed import APP_VERSION, system_database_url
from thinktank.distributed.executor import DistributedExecutor
from thinktank.store import Store, normalize_db_url
from thinktank.store.tables import SESSIONS

LIMIT = 50


async def _run(
    db: str, cfg: Path, n: int, first: int = 0
) -> tuple[list[str], dict[str, str], float]:
    """Submit ``n`` sessions, wait for all; (ids, statuses, sessions per second)."""
    async with DistributedExecutor(db=db) as pool:
        started = time.monotonic()
        ids = await submit_all(pool, fan_spec(cfg), n, first=first)
        statuses = await wait_all(pool, ids)
        return ids, statuses, n / (time.monotonic() - started)


def _check_calls_once(server: FakeServer, n: int) -> None:
    """Every call reached the fake exactly once."""
    keys = call_keys(server)
    assert len(keys) == CALLS_PER_SESSION * n
    assert set(keys.values()) == {1}
    assert not server.errors


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_four_workers_finish_a_thousand_sessions_under_the_shared_cap(
    pg_url: str,  # noqa: F811
    fake: FakeServer,  # noqa: F811
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """1,000 sessions of 3 calls + a judge on four workers: each completes once, each
    call reaches the provider once, and the provider never sees more than the cap."""
    fake.answer_delay_s = DELAY_S
    with workers(pg_url, ["solo"], "--concurrency", "16", log_dir=tmp_path):
        solo_ids, solo, solo_rate = anyio.run(_run, pg_url, config, 100)
    assert set(solo.values()) == {"completed"}
    fake.reset()
    names = ["w1", "w2", "w3", "w4"]
    with workers(pg_url, names, "--concurrency", "16", log_dir=tmp_path) as pool:
        ids, statuses, rate = anyio.run(_run, pg_url, config, 1000, 100)
        ran = {w.name: _finished_by(w) for w in pool}
    print(
        f"\n1 worker: {solo_rate:.1f} sessions/s (100); 4 workers: {rate:.1f} sessions/s"
        f" (1000), {fake.most_in_flight} calls in flight at most, by worker {ran}"
    )
    assert set(statuses.values()) == {"completed"}
    assert fake.most_in_flight <= LIMIT
    _check_calls_once(fake, 1000)
    check_store(pg_url, solo_ids + ids)
    assert all(ran.values()), f"a worker ran nothing: {ran}"


def _finished_by(worker: WorkerProcess) -> int:
    """How many sessions a drained worker says it finished."""
    worker.stop()
    tail = worker.output().rsplit("drained: ", 1)[1]
    return int(tail.split(" finished", 1)[0])


async def _until_running(db: str, ids: list[str], timeout_s: float = 60.0) -> None:
    """Wait until every session is running on a worker."""
    async with await Store.open(db) as store:
        with anyio.fail_after(timeout_s):
            # Another process changes the rows: there is no event to wait on.
            while True:
                states = await store.session_states(ids)
                if {status for status, _ in states.values()} == {"running"}:
                    return
                await anyio.sleep(0.1)


async def _submit(db: str, cfg: Path, n: int) -> list[str]:
    async with DistributedExecutor(db=db) as pool:
        return await submit_all(pool, fan_spec(cfg), n)


async def _wait(db: str, ids: list[str]) -> dict[str, str]:
    async with DistributedExecutor(db=db) as pool:
        return await wait_all(pool, ids)


@pytest.mark.slow
def test_sigterm_lets_running_sessions_finish_and_exits_0(
    fake: FakeServer,  # noqa: F811
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A drained worker finishes the sessions it runs within --drain-timeout, exits 0,
    and leaves no row behind."""
    db = str(tmp_path / "pool.db")
    fake.add_faults(*[Fault.slow(2.0) for _ in range(3 * 4)])
    worker = start_worker(db, "w", "--concurrency", "4", "--drain-timeout", "60", log_dir=tmp_path)
    try:
        ids = anyio.run(_submit, db, config, 4)
        anyio.run(_until_running, db, ids)
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(90) == 0, worker.output()
    finally:
        worker.stop(5)
    assert "drained: 4 finished, 0 handed back" in worker.output()
    assert not fake.hangups
    _check_calls_once(fake, 4)
    check_store(db, ids)
    assert anyio.run(_workers_listed, db) == []


async def _workers_listed(db: str) -> list[str]:
    async with await Store.open(db) as store:
        return [w.executor_id for w in await store.list_workers()]


@pytest.mark.slow
def test_a_short_drain_hands_sessions_back_to_another_worker(
    fake: FakeServer,  # noqa: F811
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Past --drain-timeout a drained worker stops its sessions, exits 0 and hands them
    back; another worker finishes them, re-sending only the calls that were cut off."""
    db = str(tmp_path / "pool.db")
    fake.add_faults(*[Fault.slow(30.0) for _ in range(3 * 4)])
    first = start_worker(
        db, "first", "--concurrency", "4", "--drain-timeout", "1", "--ttl", "3", log_dir=tmp_path
    )
    second = None
    try:
        ids = anyio.run(_submit, db, config, 4)
        anyio.run(_until_running, db, ids)
        second = start_worker(db, "second", "--concurrency", "4", "--ttl", "3", log_dir=tmp_path)
        first.signal(signal.SIGTERM)
        assert first.proc.wait(60) == 0, first.output()
        statuses = anyio.run(_wait, db, ids)
    finally:
        first.stop(5)
        if second is not None:
            second.stop(30)
    assert set(statuses.values()) == {"completed"}
    assert "drained: 0 finished, 4 handed back" in first.output()
    assert f"recovered 4 session(s) of dead worker {executor_id(first)}" in second.output()
    # Only the 12 calls cut off by the hand-back went out twice, and each was cut off.
    sent_twice = Counter(model for (model, _), n in call_keys(fake).items() if n > 1)
    assert sent_twice == Counter(model for model, _ in fake.hangups) == {"a": 4, "b": 4, "c": 4}
    assert max(call_keys(fake).values()) == 2
    check_store(db, ids)


def _terminate_connections(db: str) -> int:
    """Drop every other connection to the test database (what a restart does to them)."""
    engine = sync_engine(db)
    try:
        with engine.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return int(killed)


def _through_two_outages(
    db: str, server: FakeServer, cfg: Path, tmp_path: Path, outage: Callable[[], str]
) -> list[WorkerProcess]:
    """60 sessions on two workers, with ``outage()`` (which says what it did) after the
    40th and the 120th call: every session completes and the store is whole; the
    workers, for their output."""
    server.answer_delay_s = DELAY_S
    n = 60

    async def main() -> dict[str, str]:
        async with DistributedExecutor(db=db) as pool:
            ids = await submit_all(pool, fan_spec(cfg), n)
            for after in (40, 120):
                while len(server.requests) < after:  # noqa: ASYNC110 - the fake's thread
                    await anyio.sleep(0.05)
                did = await anyio.to_thread.run_sync(outage)
                print(f"\n{did} after {after} calls")
            return await wait_all(pool, ids)

    with workers(db, ["w1", "w2"], "--concurrency", "8", log_dir=tmp_path) as pool:
        statuses = anyio.run(main)
    assert set(statuses.values()) == {"completed"}
    assert len(statuses) == n
    sent_twice = sum(count - 1 for count in call_keys(server).values())
    print(f"calls sent twice: {sent_twice}, cut off: {len(server.hangups)}")
    # Slots whose give failed while the database was away are given when it is back.
    check_store(db, list(statuses))
    return pool


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_pool_survives_losing_every_database_connection(
    pg_url: str,  # noqa: F811
    fake: FakeServer,  # noqa: F811
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Mid-run, every connection to PostgreSQL is cut, twice (a restart, as the
    workers and the submitter see it): no session is lost."""

    def cut() -> str:
        return f"terminated {_terminate_connections(pg_url)} connection(s)"

    _through_two_outages(pg_url, fake, config, tmp_path, cut)


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of this test's own (durable, as in production), which the test
    may restart without disturbing the others'."""
    if find_bindir() is None and os.environ.get(REQUIRE_PG_ENV) != "1":
        pytest.skip("PostgreSQL is not installed (no initdb found)")
    cluster = start_cluster(durable=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_pool_survives_a_restart_of_postgresql(
    own_cluster: Cluster,
    fake: FakeServer,  # noqa: F811
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Mid-run, PostgreSQL is restarted twice and refuses connections for 3 s each time:
    the workers and the submitter wait for it, and no session is lost."""

    def restart() -> str:
        own_cluster.restart(3.0)
        return "restarted PostgreSQL"

    pool = _through_two_outages(own_cluster.url, fake, config, tmp_path, restart)
    for worker in pool:
        # The outage is in the log one line a record: DBOS's included, no traceback.
        lines = worker.output().splitlines()
        assert any(line.split(" ", 2)[1:2] == ["dbos"] for line in lines), lines[:5]
        assert all(line[:8].count(":") == 2 for line in lines), worker.output()


@pytest.mark.slow
def test_the_workflow_is_one_recorded_step_that_is_never_run_again(
    fake: FakeServer,  # noqa: F811
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A finished session's workflow (of the pinned version, enqueued by this process)
    has exactly one step; resuming it runs nothing, and a fork of it from after that
    step returns the recorded output without calling a model."""
    from dbos import DBOSClient

    db = str(tmp_path / "pool.db")
    with workers(db, ["w"], "--concurrency", "2", log_dir=tmp_path):
        (sid,) = anyio.run(_submit, db, config, 1)
        assert anyio.run(_wait, db, [sid]) == {sid: "completed"}
        sent = len(fake.requests)
        client = DBOSClient(system_database_url=system_database_url(normalize_db_url(db)))
        try:
            (flow,) = client.list_workflows(workflow_ids=[sid])
            assert (flow.status, flow.app_version) == ("SUCCESS", APP_VERSION)
            steps = client.list_workflow_steps(sid)
            assert [(s["function_name"], s["output"]) for s in steps] == [
                ("thinktank.run_session", "completed")
            ]
            client.resume_workflow(sid)
            (flow,) = client.list_workflows(workflow_ids=[sid])
            assert flow.status == "SUCCESS"
            fork = client.fork_workflow(sid, steps[0]["function_id"] + 1)
            assert fork.get_result(polling_interval_sec=0.1) == "completed"
            assert [s["function_name"] for s in client.list_workflow_steps(fork.workflow_id)] == [
                "thinktank.run_session"
            ]
        finally:
            client.destroy()
    assert len(fake.requests) == sent == CALLS_PER_SESSION
    check_store(db, [sid])


def test_a_worker_whose_row_was_claimed_exits_4(tmp_path: Path) -> None:
    """A worker declared dead by another (its row claimed) stops at its next beat with
    the fenced status, rather than run sessions that are finished elsewhere."""
    db = str(tmp_path / "pool.db")
    worker = start_worker(db, "w", "--ttl", "1", log_dir=tmp_path)
    try:
        engine = sync_engine(db)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE thinktank_workers SET recovered_by = 'another' WHERE name = 'w'")
            )
        engine.dispose()
        assert worker.proc.wait(30) == 4
    finally:
        worker.stop(5)
    assert "was declared dead by another" in worker.output()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_worker_picks_up_sessions_a_dead_submitter_left_queued(
    tmp_path: Path,
    config: Path,  # noqa: F811
    fake: FakeServer,  # noqa: F811
) -> None:
    """A submitter killed between its two writes leaves a session queued in the store
    with no workflow on DBOS's queue; a canceller killed between cancelling the workflow
    and ending the row leaves one queued whose workflow is cancelled. Once they have
    waited STRANDED_AFTER_S, a worker runs the first and ends the second; a session
    queued just now with no workflow (its submitter may still be enqueueing it) is left."""
    from dbos import DBOSClient

    from thinktank.distributed import QUEUE
    from thinktank.distributed.worker import STRANDED_AFTER_S
    from thinktank.executor import enqueue

    db = str(tmp_path / "pool.db")
    spec = fan_spec(config)

    async def leave_behind() -> tuple[str, str, str]:
        async with DistributedExecutor(db=db) as pool:
            lost = await enqueue(spec, store=pool.store, inputs={"q": "lost"}, queue=QUEUE)
            fresh = await enqueue(spec, store=pool.store, inputs={"q": "fresh"}, queue=QUEUE)
            cancelled = await pool.submit(spec, inputs={"q": "cancelled"})
        client = DBOSClient(system_database_url=system_database_url(normalize_db_url(db)))
        try:
            await client.cancel_workflow_async(cancelled)  # and the canceller dies
        finally:
            client.destroy()
        return lost, fresh, cancelled

    lost, fresh, cancelled = anyio.run(leave_behind)
    engine = sync_engine(db)
    long_ago = datetime.now(UTC) - timedelta(seconds=STRANDED_AFTER_S + 5)
    with engine.begin() as conn:
        conn.execute(
            sa.update(SESSIONS)
            .where(SESSIONS.c.id.in_([lost, cancelled]))
            .values(queued_at=long_ago)
        )
    engine.dispose()

    async def states() -> dict[str, tuple[str, str | None]]:
        async with await Store.open(db) as store:
            return await store.session_states([lost, fresh, cancelled])

    with workers(db, ["w"], log_dir=tmp_path) as (worker,):
        deadline = time.monotonic() + 120
        while anyio.run(states)[lost][0] in ("queued", "running"):
            assert time.monotonic() < deadline, worker.output()
            time.sleep(0.2)
    assert "1 put on the queue, 1 whose workflow was cancelled ended" in worker.output()
    got = anyio.run(states)
    assert {sid: status for sid, (status, _) in got.items()} == {
        lost: "completed",
        fresh: "queued",
        cancelled: "interrupted",
    }
    assert len(fake.requests) == CALLS_PER_SESSION  # the lost session's calls, once each


def test_importing_the_library_or_the_submitter_does_not_import_dbos() -> None:
    """DBOS is imported by the worker command and DistributedExecutor's __aenter__ only."""
    code = (
        "import sys, thinktank, thinktank.distributed, thinktank.distributed.executor;"
        "print(sorted(m for m in sys.modules if m == 'dbos' or m.startswith('dbos.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("claimers", [2, 4])
async def test_racing_survivors_claim_each_dead_worker_exactly_once(
    db_url: str,  # noqa: F811
    claimers: int,
) -> None:
    """Several live workers looking for dead ones at the same moment, each through its
    own connection: every dead row goes to exactly one of them, live rows to none."""
    stores = [await Store.open(db_url) for _ in range(claimers)]
    try:
        for n in range(20):
            await stores[0].register_worker(
                f"dead-{n}", name="d", host="h", pid=n, version="v", concurrency=1, ttl_s=-1.0
            )
        await stores[0].register_worker(
            "alive", name="a", host="h", pid=99, version="v", concurrency=1, ttl_s=600.0
        )
        claimed: list[list[str]] = [[] for _ in stores]

        async def claim(i: int) -> None:
            for _ in range(5):
                got = await stores[i].claim_dead_workers(f"live-{i}", ttl_s=600.0)
                claimed[i].extend(dead.executor_id for dead in got)

        async with anyio.create_task_group() as tg:
            for i in range(claimers):
                tg.start_soon(claim, i)
    finally:
        for store in stores:
            await store.close()
    every = [eid for ids in claimed for eid in ids]
    assert sorted(every) == sorted(f"dead-{n}" for n in range(20))
