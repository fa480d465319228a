"""Budget reservations that survive a killed server: each reservation is a row that
lapses after its request's bound, and is released (credited back to its key) exactly
once, by the next reservation on the key or by a server's periodic sweep. Store-level
races on SQLite and PostgreSQL, and a real ``thinktank serve`` killed with SIGKILL."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import pg
from thinktank.server.auth import Caller
from thinktank.server.keys import hash_key, held, reserve
from thinktank.store import Store
from thinktank.store.tables import RESERVATIONS

from . import test_server_budget as budget
from .fakeserver import FakeServer, Fault
from .serverproc import serve
from .test_server_budget import MAX_TOKENS, PROMPT, REPLY, priced_config
from .test_server_keys import create_key

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

LAPSED = -1.0
"""A ``ttl_s`` whose reservation has lapsed as it is made (no waiting in the tests)."""


async def _key(store: Store, budget_usd: float | None = 10.0) -> str:
    return await store.create_api_key(
        name="t",
        prefix="tt_x",
        key_hash=hash_key(os.urandom(8).hex()),
        budget_micro_usd=None if budget_usd is None else round(budget_usd * 1e6),
    )


async def _held(store: Store) -> dict[str, tuple[int, int, int]]:
    """Each key's (reserved, spent, sum of its reservation rows)."""
    from sqlalchemy import func, select

    async with store._engine.connect() as conn:  # a test reads the table directly
        sums = dict(
            (
                await conn.execute(
                    select(RESERVATIONS.c.key_id, func.sum(RESERVATIONS.c.micro_usd)).group_by(
                        RESERVATIONS.c.key_id
                    )
                )
            ).all()
        )
    return {
        k.id: (k.reserved_micro_usd, k.spent_micro_usd, int(sums.get(k.id) or 0))
        for k in await store.api_keys()
    }


async def _reserve(store: Store, key_id: str, micro: int, ttl_s: float) -> str:
    got = await store.reserve_budget(key_id, micro, holder="test", ttl_s=ttl_s)
    assert isinstance(got, str), got
    return got


async def test_two_sweepers_release_each_lapsed_reservation_once(db_url: str) -> None:
    """Two stores (two connection pools) sweep at once: every lapsed reservation is
    released by exactly one of them, live ones stay, and each key's reserved sum is
    its remaining rows."""
    async with await Store.open(db_url) as one, await Store.open(db_url) as two:
        # One per key: a reservation on a key would release the key's lapsed ones.
        keys = [await _key(one) for _ in range(13)]
        for kid in keys[1:]:
            await _reserve(one, kid, 100_000, LAPSED)
        await _reserve(one, keys[0], 250_000, 60.0)
        released: list[int] = []

        async def sweep(store: Store) -> None:
            released.append(await store.sweep_reservations())

        async with anyio.create_task_group() as tg:
            for store in (one, two, one, two):
                tg.start_soon(sweep, store)
        assert sum(released) == 12
        held = await _held(one)
        assert held[keys[0]] == (250_000, 0, 250_000)
        assert all(held[kid] == (0, 0, 0) for kid in keys[1:])


async def test_a_reservation_first_releases_the_keys_lapsed_ones(db_url: str) -> None:
    """A key whose whole budget a dead request holds can spend it again once that
    reservation lapses: the next reservation on the key releases it."""
    async with await Store.open(db_url) as store:
        kid = await _key(store, budget_usd=1.0)
        await _reserve(store, kid, 1_000_000, LAPSED)
        await _reserve(store, kid, 1_000_000, 60.0)
        assert (await _held(store))[kid] == (1_000_000, 0, 1_000_000)
        refused = await store.reserve_budget(kid, 1, holder="test", ttl_s=60.0)
        assert not isinstance(refused, str) and refused.reserved_micro_usd == 1_000_000


async def test_settling_a_released_reservation_charges_it_once(db_url: str) -> None:
    """A request that settles after its reservation lapsed and was swept is charged
    what it cost, and the reservation is not credited back twice."""
    async with await Store.open(db_url) as store:
        kid = await _key(store, budget_usd=1.0)
        live = await _reserve(store, kid, 300_000, 60.0)
        late = await _reserve(store, kid, 600_000, LAPSED)
        assert await store.sweep_reservations() == 1
        await store.settle_budget(late, kid, 500_000)
        assert (await _held(store))[kid] == (300_000, 500_000, 300_000)
        await store.settle_budget(live, kid, 200_000)
        await store.settle_budget(live, kid, 0)  # settling twice releases nothing more
        assert (await _held(store))[kid] == (0, 700_000, 0)


@st.composite
def _ledger_ops(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    """Random reservations (live or lapsed), settles and sweeps on two keys."""
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["reserve", "settle", "sweep"]),
                st.integers(0, 1),
                st.sampled_from([LAPSED, 60.0]),
            ),
            min_size=1,
            max_size=25,
        )
    )
    return [(kind, key, ttl) for kind, key, ttl in ops]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=_ledger_ops(), amounts=st.lists(st.integers(0, 400_000), min_size=25, max_size=25))
async def test_ledger_property_concurrent_ops_keep_the_sums(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, int, float]],
    amounts: list[int],
) -> None:
    """Reservations, settles and sweeps racing on two stores of one SQLite database:
    a key never holds more than its budget (what it spent may pass it: a request that
    settles after its reservation lapsed is still charged), its reserved sum always
    equals its rows,
    and what it spent is exactly what the settled requests cost."""
    db = str(tmp_path_factory.mktemp("ledger") / "l.db")
    charged = {0: 0, 1: 0}
    async with await Store.open(db) as one, await Store.open(db) as two:
        keys = [await _key(one, budget_usd=1.0) for _ in range(2)]

        async def run(i: int, op: tuple[str, int, float]) -> None:
            kind, k, ttl = op
            store = (one, two)[i % 2]
            if kind == "sweep":
                await store.sweep_reservations()
                return
            got = await store.reserve_budget(keys[k], amounts[i], holder="t", ttl_s=ttl)
            if kind == "settle" and isinstance(got, str):
                cost = amounts[i] // 2
                await store.settle_budget(got, keys[k], cost)
                charged[k] += cost

        async with anyio.create_task_group() as tg:
            for i, op in enumerate(ops):
                tg.start_soon(run, i, op)
        held = await _held(one)
        for k, kid in enumerate(keys):
            reserved, spent, rows = held[kid]
            assert reserved == rows and spent == charged[k]
            assert reserved <= 1_000_000


# -- a real server, killed -----------------------------------------------------------------


fake = budget.fake  # the loopback provider (by assignment so that pytest finds it)


def _pid_of(log: Path) -> int:
    """The uvicorn process of a ``serve`` log."""
    found = re.search(r"Started server process \[(\d+)\]", log.read_text())
    assert found, log.read_text()
    return int(found.group(1))


async def _reserved(db: str) -> int:
    async with await Store.open(db) as store:
        (key,) = await store.api_keys()
        return int(key.reserved_micro_usd)


async def _until_reserved(db: str, micro: int) -> None:
    while await _reserved(db) != micro:  # noqa: ASYNC110 - another process changes it
        await anyio.sleep(0.05)


def _body() -> dict[str, Any]:
    return {
        "model": "a",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "parallel": {"models": ["a"], "timeout_per_step_ms": 2000},
    }


async def _killed_mid_requests(url: str, key: str, db: str, log: Path, fake: FakeServer) -> None:
    """Two requests reserve the whole budget and hang on the slow provider; the server
    is killed (SIGKILL) while they are in flight."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> None:
            with pytest.raises(httpx.TransportError):
                await client.post(url + "/v1/chat/completions", json=_body(), headers=headers)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
            await _until_reserved(db, 20_000_000)
            while len(fake.requests) < 2:  # noqa: ASYNC110 - the fake's thread fills it
                await anyio.sleep(0.02)
            os.kill(_pid_of(log), signal.SIGKILL)


def test_a_killed_servers_reservations_come_back(tmp_path: Path, fake: FakeServer) -> None:
    """A server killed while two requests hold a $20 budget: the next server's sweep
    releases their reservations once they lapse, and the key spends its whole budget."""
    fake.reset()
    fake.set_reply("a", REPLY)
    fake.add_faults(Fault.slow(20.0), Fault.slow(20.0), model="a")
    db = str(tmp_path / "k.db")
    config = priced_config(tmp_path / "thinktank.toml", fake, ["a"])
    key, _ = create_key(db, "--budget-usd", "20")
    env = {
        "THINKTANK_CONFIG": str(config),
        "THINKTANK_RESERVATION_MARGIN_S": "0.5",
        "THINKTANK_RESERVATION_SWEEP_S": "0.2",
    }
    log = tmp_path / "first.log"
    with serve(db, env=env, log=log) as url:
        anyio.run(_killed_mid_requests, url, key, db, log, fake, backend="asyncio")
    assert anyio.run(_reserved, db, backend="asyncio") == 20_000_000  # nobody settled
    with serve(db, env=env, log=tmp_path / "second.log") as url:
        anyio.run(_until_reserved, db, 0, backend="asyncio")  # swept, with no request
        headers = {"Authorization": f"Bearer {key}"}
        codes = [
            httpx.post(
                url + "/v1/chat/completions", json=_body(), headers=headers, timeout=30
            ).status_code
            for _ in range(3)
        ]
    assert codes == [200, 200, 402]

    async def spent() -> int:
        async with await Store.open(db) as store:
            (k,) = await store.api_keys()
            return int(k.spent_micro_usd)

    assert anyio.run(spent, backend="asyncio") == 20_000_000


async def test_a_held_reservation_is_renewed_and_lapses_once_let_go(db_url: str) -> None:
    """While its request is alive (``held``) a reservation outlives its time to live
    and no sweep releases it; once let go without settling (its process died) it
    lapses and the sweep releases it."""
    async with await Store.open(db_url) as store:
        kid = await _key(store, budget_usd=1.0)
        reservation = await reserve(store, Caller(key_id=kid), 0.5, ttl_s=0.6)
        async with held(store, reservation):
            await anyio.sleep(1.5)  # two and a half lifetimes
            assert await store.sweep_reservations() == 0
        while not await store.sweep_reservations():  # noqa: ASYNC110 - the clock changes it
            await anyio.sleep(0.1)
        assert (await _held(store))[kid] == (0, 0, 0)
