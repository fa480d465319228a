"""Model limits shared across processes (``shared_limit``): config, slot rows, windows.

Several :class:`Store` objects on one database stand for processes in the property
test (each has its own engine and connections); the tests marked ``slow`` start real
processes (:func:`tests.test_store_concurrency.run_workers`) against the loopback fake
server, which counts the requests it answers at once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests import pg
from tests.fakeserver import run_fake_server
from tests.test_store_concurrency import REPO, _wait_for_go, run_workers
from thinktank.errors import SpecErrors, StoreError
from thinktank.providers.config import load_config
from thinktank.providers.registry import ModelRegistry
from thinktank.providers.shared_limit import SharedLimiter
from thinktank.store import Store
from thinktank.store.tables import SLOTS

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

_CHILD = "import sys; from tests.test_provider_slots import worker; worker(sys.argv[1:])"


# -- configuration ---------------------------------------------------------------------


def test_shared_limit_is_read_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "thinktank.toml"
    path.write_text(
        '[models.gpt]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n'
        "[models.gpt.shared_limit]\nmax_concurrent = 50\nrequests_per_minute = 500\n"
    )
    limit = load_config(path).models["gpt"].shared_limit
    assert (limit.max_concurrent, limit.requests_per_minute, limit.key) == (50, 500, None)


def test_bad_shared_limits_are_one_line_each_naming_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[models.a]\nprovider = "openai"\nmodel = "x"\n[models.a.shared_limit]\n'
        "max_concurrent = 0\n"
        '[models.b]\nprovider = "openai"\nmodel = "x"\n[models.b.shared_limit]\n'
        '[models.c]\nprovider = "openai"\nmodel = "x"\n[models.c.shared_limit]\n'
        'key = "acct"\nmax_concurrent = 5\n'
        '[models.d]\nprovider = "openai"\nmodel = "y"\n[models.d.shared_limit]\n'
        'key = "acct"\nmax_concurrent = 6\nrpm = 3\n'
    )
    with pytest.raises(SpecErrors) as info:
        load_config(path)
    lines = info.value.lines()
    assert any(line.startswith(f"{path}: models.a.shared_limit.max_concurrent:") for line in lines)
    assert any(
        line.startswith(f"{path}: models.b.shared_limit:") and "max_concurrent" in line
        for line in lines
    )
    assert any(line.startswith(f"{path}: models.d.shared_limit.rpm:") for line in lines)
    assert all("\n" not in line for line in lines)
    path.write_text(
        '[models.c]\nprovider = "openai"\nmodel = "x"\n[models.c.shared_limit]\n'
        'key = "acct"\nmax_concurrent = 5\n'
        '[models.d]\nprovider = "openai"\nmodel = "y"\n[models.d.shared_limit]\n'
        'key = "acct"\nmax_concurrent = 6\n'
    )
    with pytest.raises(SpecErrors) as info:
        load_config(path)
    assert info.value.lines() == [
        f"{path}: models.d.shared_limit: shares the limit 'acct' with model 'c' but sets "
        "other numbers"
    ]


async def test_only_models_asking_for_a_shared_limit_get_one(tmp_path: Path) -> None:
    """A plain model keeps its in-process limiter; samples share their model's key."""
    path = tmp_path / "thinktank.toml"
    path.write_text(
        '[models.plain]\nprovider = "openai"\nmodel = "p"\nbase_url = "http://h/v1"\n'
        "max_concurrency = 3\n"
        '[models.shared]\nprovider = "openai"\nmodel = "s"\nbase_url = "http://h/v1"\n'
        "max_concurrency = 2\n[models.shared.shared_limit]\nmax_concurrent = 9\n"
    )
    registry = ModelRegistry(config=load_config(path), environ={})
    async with await Store.open(str(tmp_path / "t.db")) as store:
        pool = registry.build(["plain", "shared", "shared#2"], http=object(), store=store)  # type: ignore[arg-type]
        assert isinstance(pool["plain"].limiter, anyio.CapacityLimiter)
        shared = pool["shared"].limiter
        assert isinstance(shared, SharedLimiter) and shared.key == "shared"
        assert shared.max_concurrent == 9
        sample = pool["shared#2"].limiter
        assert isinstance(sample, SharedLimiter) and sample.key == "shared"
        # Without a store (a pool built outside a run), the in-process limit only.
        alone = registry.build(["shared"], http=object())  # type: ignore[arg-type]
        assert isinstance(alone["shared"].limiter, anyio.CapacityLimiter)


# -- the store -------------------------------------------------------------------------


async def test_slots_are_taken_given_and_lapse(db_url: str) -> None:
    async with await Store.open(db_url) as store:
        first = await store.take_slot("k", 2, holder="a", ttl_s=60)
        second = await store.take_slot("k", 2, holder="b", ttl_s=60)
        assert {first, second} == {0, 1}
        assert await store.take_slot("k", 2, holder="c", ttl_s=60) is None
        assert not await store.give_slot("k", 0 if first == 0 else 1, holder="c")
        assert await store.give_slot("k", first, holder="a")
        assert await store.take_slot("k", 2, holder="c", ttl_s=0) == first
        # c's hold lapsed at once: d takes it, and c can neither renew nor free it.
        assert await store.take_slot("k", 2, holder="d", ttl_s=60) == first
        assert not await store.renew_slot("k", first, holder="c", ttl_s=60)
        assert not await store.give_slot("k", first, holder="c")
        assert await store.renew_slot("k", first, holder="d", ttl_s=60)
        # A smaller limit uses the lowest slots only.
        assert await store.take_slot("k", 1, holder="e", ttl_s=60) is None


async def _refuse_connections(server: str, url: str, refuse: bool) -> None:
    """Make the database of ``url`` refuse new connections and cut its open ones (what a
    restart of the server looks like to a store), or accept them again."""
    name = url.rsplit("/", 1)[1]
    await pg.admin(server, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {not refuse}')
    if refuse:
        await pg.admin(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )


async def test_a_give_the_database_missed_is_made_when_it_is_back(
    pg_server: str, pg_url: str
) -> None:
    """A slot whose give fails (the database is away) is owed by the store, which gives
    it with its next change of a limit or at give_owed_slots(): the slot does not wait
    for its hold to lapse."""
    async with await Store.open(pg_url) as store:
        first = await store.take_slot("k", 1, holder="a", ttl_s=600)
        other = await store.take_slot("k2", 1, holder="c", ttl_s=600)
        assert first == other == 0
        await _refuse_connections(pg_server, pg_url, refuse=True)
        try:
            for key, holder in (("k", "a"), ("k2", "c")):
                with pytest.raises(StoreError):
                    await store.give_slot(key, 0, holder=holder)
            with pytest.raises(StoreError):
                await store.give_owed_slots()
        finally:
            await _refuse_connections(pg_server, pg_url, refuse=False)
        # The next take gives the owed slots first, in its own transaction.
        assert await store.take_slot("k", 1, holder="b", ttl_s=600) == 0
        assert await _holders(pg_url, "k2") == [None]
        assert await store.give_owed_slots() == 0
        # And without a take, give_owed_slots() makes them.
        await _refuse_connections(pg_server, pg_url, refuse=True)
        try:
            with pytest.raises(StoreError):
                await store.give_slot("k", 0, holder="b")
        finally:
            await _refuse_connections(pg_server, pg_url, refuse=False)
        assert await _holders(pg_url, "k") == ["b"]
        assert await store.give_owed_slots() == 1
        assert await _holders(pg_url, "k") == [None]


async def test_requests_per_minute_are_counted_in_one_window(db_url: str) -> None:
    async with await Store.open(db_url) as store, await Store.open(db_url) as other:
        admitted = [await s.count_limit_request("r", 3, window_s=60) for s in (store, other)]
        admitted += [await store.count_limit_request("r", 3, window_s=60)]
        assert admitted == [None, None, None]
        left = await other.count_limit_request("r", 3, window_s=60)
        assert left is not None and 0 < left <= 60
        # A window that is over admits again.
        assert await store.count_limit_request("r", 3, window_s=0) is None


async def _holders(url: str, key: str) -> list[str | None]:
    async with await Store.open(url) as store:
        engine = store._engine  # our own store's engine: read the rows as they are
        async with engine.connect() as conn:
            rows = await conn.execute(select(SLOTS.c.holder).where(SLOTS.c.limit_key == key))
            return [row[0] for row in rows]


_calls = st.lists(
    st.tuples(
        st.integers(0, 2),  # which store (process)
        st.floats(0, 0.02),  # latency
        st.sampled_from(["run", "run", "deadline", "cancel-running"]),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(calls=_calls, cap=st.integers(1, 4), stores=st.integers(2, 3), rpm=st.booleans())
async def test_property_the_shared_limit_holds_across_stores(
    db_url: str, calls: list[tuple[int, float, str]], cap: int, stores: int, rpm: bool
) -> None:
    """Calls from 2-3 stores at once, with latencies and cancellations (a deadline that
    may fall while it waits for a slot or while it runs, or a cancel while it runs):
    never more than ``cap`` run at once, every call that is not cancelled runs once,
    nothing hangs, and every slot is free at the end."""
    key = f"m-{uuid.uuid4().hex[:8]}"
    running = 0
    most = 0
    ran: list[int] = []
    opened = [await Store.open(db_url) for _ in range(stores)]
    try:
        limiters = [
            SharedLimiter(
                store,
                key,
                max_concurrent=cap,
                # A minute's room for every call: counted, never waited for.
                requests_per_minute=len(calls) if rpm else None,
                ttl_s=60,
                local=anyio.CapacityLimiter(cap),
            )
            for store in opened
        ]

        async def call(i: int, which: int, latency: float, fate: str) -> None:
            nonlocal running, most
            with anyio.CancelScope() as scope:
                if fate == "deadline":
                    scope.deadline = anyio.current_time() + latency
                async with limiters[which % stores]:
                    running += 1
                    most = max(most, running)
                    try:
                        if fate == "cancel-running":
                            scope.cancel()
                        await anyio.sleep(latency)
                        ran.append(i)
                    finally:
                        running -= 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, (which, latency, fate) in enumerate(calls):
                    tg.start_soon(call, i, which, latency, fate)
    finally:
        for store in opened:
            await store.close()
    assert most <= cap
    assert len(set(ran)) == len(ran)
    fates = [calls[i][2] for i in ran]
    assert "cancel-running" not in fates
    assert fates.count("run") == [c[2] for c in calls].count("run")
    assert all(holder is None for holder in await _holders(db_url, key))


# -- real processes --------------------------------------------------------------------


async def _run_session(url: str, base_url: str, steps: int) -> dict[str, Any]:
    import thinktank
    from thinktank.session.loading import parse_session

    spec = parse_session(
        {
            "name": "slots",
            "models": {
                "gpt": {
                    "provider": "openai",
                    "model": "gpt",
                    "base_url": base_url,
                    "api_key_env": "TT_SLOTS_KEY",
                    "max_concurrency": 5,
                    "shared_limit": {"max_concurrent": 5},
                }
            },
            "steps": [{"id": f"s{i}", "prompt": f"p{i}", "model": "gpt"} for i in range(steps)],
        },
        file="slots",
    )
    result = await thinktank.run(spec, store=url)
    return {"status": result.status, "error": result.error}


async def _work(argv: list[str]) -> Any:
    command, url, *args = argv
    if command == "session":  # run one session of STEPS parallel calls to BASE_URL
        base_url, steps = args[0], int(args[1])
        await _wait_for_go()
        return await _run_session(url, base_url, steps)
    if command == "count":  # count TIMES requests against a limit of RPM a minute
        key, rpm, times = args[0], int(args[1]), int(args[2])
        async with await Store.open(url) as store:
            await _wait_for_go()
            return [
                await store.count_limit_request(key, rpm, window_s=3600) is None
                for _ in range(times)
            ]
    if command == "hold":  # take a slot, say so, and wait to be killed
        async with await Store.open(url) as store:
            slot = await store.take_slot(args[0], 1, holder="doomed", ttl_s=float(args[1]))
            print(json.dumps(slot), flush=True)
            await anyio.sleep_forever()
    raise SystemExit(f"worker: unknown command {command!r}")


def worker(argv: list[str]) -> None:
    """Entry point of a subprocess (``python -c``): prints one JSON line."""
    print(json.dumps(anyio.run(_work, argv)), flush=True)


@pytest.mark.slow
async def test_processes_sharing_a_cap_of_five_never_exceed_it(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three processes run 8 parallel calls each to one model with a shared cap of 5
    (and a per-process cap of 5): the server never answers more than 5 at once."""
    monkeypatch.setenv("TT_SLOTS_KEY", "sk-test")
    with run_fake_server(record=False) as server:
        server.answer_delay_s = 0.05
        commands = [["session", db_url, server.url + "/v1", "8"] for _ in range(3)]
        results = await run_workers(commands, tmp_path, child=_CHILD)
        assert results == [{"status": "completed", "error": None}] * 3
        assert 1 <= server.most_in_flight <= 5
    assert all(holder is None for holder in await _holders(db_url, "gpt"))


@pytest.mark.slow
async def test_requests_per_minute_hold_across_two_processes(db_url: str, tmp_path: Path) -> None:
    """Two processes each ask 6 times at once against 5 a minute: 5 admitted in all."""
    admitted = await run_workers([["count", db_url, "rpm", "5", "6"]] * 2, tmp_path, child=_CHILD)
    assert sum(sum(flags) for flags in admitted) == 5


@pytest.mark.slow
async def test_a_killed_holders_slot_comes_back_after_its_lapse(db_url: str) -> None:
    """A process takes the only slot and is SIGKILLed: a call waiting for the slot gets
    it once the dead process's hold lapses."""
    async with await anyio.open_process(
        [sys.executable, "-c", _CHILD, "hold", db_url, "dead", "1.0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 1 << 16)
        assert json.loads(line) == 0
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert await _holders(db_url, "dead") == ["doomed"]
    async with await Store.open(db_url) as store:
        limiter = SharedLimiter(
            store, "dead", max_concurrent=1, requests_per_minute=None, ttl_s=60, local=None
        )
        with anyio.fail_after(30):
            async with limiter:
                held = await _holders(db_url, "dead")
    assert held != ["doomed"] and held[0] is not None
    assert await _holders(db_url, "dead") == [None]
