"""API keys, per-key requests per minute and budgets: the ``thinktank keys`` commands,
real ``thinktank serve`` processes (one, and two sharing a PostgreSQL database), and
budget reservations racing from two processes on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import httpx2 as httpx
import pytest
from click.testing import CliRunner

from tests import pg
from tests.test_store_concurrency import _wait_for_go, run_workers
from thinktank.cli.commands import main
from thinktank.server.auth import ANONYMOUS, Caller
from thinktank.server.errors import ApiError
from thinktank.server.keys import StoreKeys, hash_key, reserve, settle
from thinktank.store import Store

from .serverproc import serve

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

_CHILD = "import sys; from tests.test_server_keys import reserve_worker as w; w(sys.argv[1:])"


def create_key(db: str, *args: str) -> tuple[str, str]:
    """``thinktank keys create --name t ARGS`` on ``db``: (the key, its id)."""
    result = CliRunner().invoke(main, ["keys", "create", "--name", "t", "--db", db, *args])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    listed = json.loads(CliRunner().invoke(main, ["keys", "list", "--db", db, "--json"]).stdout)
    kid = next(row["id"] for row in listed if key.startswith(row["prefix"]))
    return key, kid


def _models(url: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url + "/v1/models", headers=headers)


# -- the commands --------------------------------------------------------------------


def test_keys_are_printed_once_and_stored_hashed(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    key, kid = create_key(db, "--budget-usd", "2.5", "--rpm", "7")
    assert key.startswith("tt_") and len(key) == 3 + 43
    other, _ = create_key(db)
    assert other != key
    listed = CliRunner().invoke(main, ["keys", "list", "--db", db, "--json"])
    rows = json.loads(listed.stdout)
    first = rows[0]
    assert first["id"] == kid
    assert first["budget_usd"] == 2.5 and first["spent_usd"] == 0 and first["rpm"] == 7
    assert first["revoked_at"] is None and first["name"] == "t"
    table = CliRunner().invoke(main, ["keys", "list", "--db", db]).stdout
    assert key not in listed.stdout and key not in table and kid in table
    # Only the hash reaches the database.
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert key.encode() not in stored and hash_key(key).encode() in stored

    revoked = CliRunner().invoke(main, ["keys", "revoke", kid[:13], "--db", db])
    assert revoked.exit_code == 0 and kid in revoked.stdout
    rows = json.loads(CliRunner().invoke(main, ["keys", "list", "--db", db, "--json"]).stdout)
    assert rows[0]["revoked_at"] is not None and rows[1]["revoked_at"] is None
    unknown = CliRunner().invoke(main, ["keys", "revoke", "ffffffff", "--db", db])
    assert unknown.exit_code == 2 and "no stored API key matches" in unknown.stderr


def test_serve_beyond_loopback_needs_a_live_key(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    _, kid = create_key(db)
    CliRunner().invoke(main, ["keys", "revoke", kid, "--db", db])
    refused = CliRunner().invoke(main, ["serve", "--host", "10.1.2.3", "--db", db])
    assert refused.exit_code == 2 and "thinktank keys create" in refused.stderr
    key, _ = create_key(db)
    with serve(db, "--host", "0.0.0.0") as url:
        assert _models(url, key).status_code == 200


@pytest.mark.parametrize(
    ("env", "value"),
    [("THINKTANK_RESERVATION_MARGIN_S", "soon"), ("THINKTANK_RESERVATION_SWEEP_S", "0")],
)
def test_serve_refuses_bad_reservation_settings_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    """Checked before uvicorn starts: a bad value would otherwise fail every request."""
    monkeypatch.setenv(env, value)
    refused = CliRunner().invoke(main, ["serve", "--no-auth", "--db", str(tmp_path / "k.db")])
    assert refused.exit_code == 2
    assert refused.stderr.strip() == f"error: ${env} must be " + (
        f"a number of seconds, not {value!r}"
        if value == "soon"
        else f"more than 0 seconds, not {value!r}"
    )


# -- a real server -------------------------------------------------------------------


def test_a_server_accepts_its_keys_until_revoked(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    key, kid = create_key(db)
    with serve(db) as url:
        assert _models(url).status_code == 401
        assert _models(url, key + "x").json()["error"]["code"] == "invalid_api_key"
        assert _models(url, key).json()["object"] == "list"
        assert CliRunner().invoke(main, ["keys", "revoke", kid, "--db", db]).exit_code == 0
        refused = _models(url, key)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        logs = b"".join(p.read_bytes() for p in tmp_path.glob("*.log"))
    assert key.encode() not in logs


def _assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60


def test_requests_per_minute_are_limited(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    key, _ = create_key(db, "--rpm", "3")
    unlimited, _ = create_key(db)
    with serve(db) as url:
        assert [_models(url, key).status_code for _ in range(3)] == [200] * 3
        _assert_rate_limited(_models(url, key))
        # Other keys have their own limits.
        assert [_models(url, unlimited).status_code for _ in range(6)] == [200] * 6


@pytest.fixture
def pg_only(pg_url: str) -> str:
    return pg_url


def test_two_servers_on_one_postgres_share_the_limit(pg_only: str, tmp_path: Path) -> None:
    key, _ = create_key(pg_only, "--rpm", "4")
    with serve(pg_only) as first, serve(pg_only) as second:
        codes = [_models(url, key).status_code for url in (first, second) * 4]
        assert codes == [200] * 4 + [429] * 4
        _assert_rate_limited(_models(first, key))
        _assert_rate_limited(_models(second, key))


async def test_the_checker_counts_atomically(db_url: str) -> None:
    """60 concurrent checks of a key limited to 25 rpm (two stores): exactly 25 pass."""
    async with await Store.open(db_url) as one, await Store.open(db_url) as two:
        kid = await one.create_api_key(name="t", prefix="tt_x", key_hash=hash_key("k"), rpm=25)
        results: list[str] = []

        async def check(store: Store) -> None:
            try:
                caller = await StoreKeys(lambda: store).check("k")
                results.append("ok" if caller == Caller(key_id=kid) else "none")
            except ApiError as exc:
                assert exc.status == 429 and exc.headers["Retry-After"].isdigit()
                results.append("429")

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(check, (one, two)[i % 2])
        assert sorted(results) == ["429"] * 35 + ["ok"] * 25
        assert await StoreKeys(lambda: one).check("wrong") is None


# -- budgets -------------------------------------------------------------------------


async def _reserve_many(url: str, key_id: str, count: int) -> int:
    """``count`` concurrent $1 reservations; how many were admitted."""
    admitted = 0
    async with await Store.open(url) as store:
        await _wait_for_go()

        async def one() -> None:
            nonlocal admitted
            try:
                await reserve(store, Caller(key_id=key_id), 1.0, ttl_s=60)
                admitted += 1
            except ApiError as exc:
                assert exc.status == 402 and exc.code == "insufficient_quota"

        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(one)
    return admitted


def reserve_worker(argv: list[str]) -> None:
    """Entry point of a subprocess: ``URL KEY_ID COUNT``."""
    url, key_id, count = argv
    print(json.dumps(anyio.run(_reserve_many, url, key_id, int(count))), flush=True)


@pytest.mark.slow
async def test_concurrent_reservations_never_overspend(db_url: str, tmp_path: Path) -> None:
    """50 reservations of $1 at once against a $10 budget, from two processes: 10 pass."""
    async with await Store.open(db_url) as store:
        kid = await store.create_api_key(
            name="t", prefix="tt_x", key_hash=hash_key("k"), budget_micro_usd=10_000_000
        )
    admitted = await run_workers([[db_url, kid, "25"]] * 2, tmp_path, child=_CHILD)
    assert sum(admitted) == 10
    async with await Store.open(db_url) as store:
        (key,) = await store.api_keys()
        assert key.reserved_micro_usd == 10_000_000 and key.spent_micro_usd == 0


async def test_reserve_refuses_past_the_budget_and_settle_charges(db_url: str) -> None:
    async with await Store.open(db_url) as store:
        kid = await store.create_api_key(
            name="t", prefix="tt_x", key_hash=hash_key("k"), budget_micro_usd=1_000_000
        )
        caller = Caller(key_id=kid)
        first = await reserve(store, caller, 0.6, ttl_s=60)
        with pytest.raises(ApiError) as refused:
            await reserve(store, caller, 0.5, ttl_s=60)
        assert refused.value.status == 402 and refused.value.code == "insufficient_quota"
        assert "$0.400000 of its $1.00 budget left" in refused.value.message
        await settle(store, first, 0.25)  # cost less than reserved: the rest is free again
        second = await reserve(store, caller, 0.75, ttl_s=60)
        (key,) = await store.api_keys()
        assert (key.spent_micro_usd, key.reserved_micro_usd) == (250_000, 750_000)
        await settle(store, second, 0.75)
        with pytest.raises(ApiError):
            await reserve(store, caller, 0.000002, ttl_s=60)
        # The anonymous caller of a --no-auth server has no budget to keep.
        free = await reserve(store, ANONYMOUS, 100.0, ttl_s=60)
        await settle(store, free, 100.0)
        (key,) = await store.api_keys()
        assert (key.spent_micro_usd, key.reserved_micro_usd) == (1_000_000, 0)
        await store.revoke_api_key(kid)
        with pytest.raises(ApiError) as revoked:
            await reserve(store, caller, 0.0, ttl_s=60)
        assert revoked.value.status == 401


def test_keys_need_no_server_extra() -> None:
    import subprocess

    code = "import sys, thinktank.server.keys; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
