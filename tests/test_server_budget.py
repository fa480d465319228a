"""Budgets on chat completions over real HTTP: a real ``thinktank serve`` process (two
on one PostgreSQL database), its priced models answered by the loopback fake provider.
Every request reserves the most it can cost before any call and settles what it cost."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest

from tests import pg
from thinktank.providers.config import ThinkTankConfig, load_config
from thinktank.providers.registry import ModelRegistry
from thinktank.server.keys import DEFAULT_MAX_TOKENS, cost_bound
from thinktank.session.spec import ParallelExecutionConfig
from thinktank.store import Store

from .fakeserver import FakeServer, Fault, run_fake_server
from .serverproc import serve
from .test_eval_runner import write_config
from .test_server_keys import create_key

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

PROMPT = "aaa bbb ccc ddd eee fff"
"""Six words (the fake provider's token count) and 23 characters (six tokens by the
server's estimate): a call's cost is exactly its bound when it answers four words."""
REPLY = "one two three four"
MAX_TOKENS = 4
PER_REQUEST_USD = 10.0
"""$1 a token (both prices 1e6 per Mtok) x (6 prompt tokens + 4 output tokens)."""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with run_fake_server() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(fake: FakeServer) -> None:
    fake.reset()


def priced_config(path: Path, fake: FakeServer, names: Sequence[str]) -> Path:
    """``write_config`` with every model at $1 a token, in and out."""
    write_config(path, fake, list(names))
    priced = path.read_text().replace(
        'provider = "openai"',
        'provider = "openai"\ninput_cost_per_mtok = 1000000\noutput_cost_per_mtok = 1000000',
    )
    path.write_text(priced)
    return path


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "a", "messages": [{"role": "user", "content": PROMPT}], **extra}


async def _post_many(urls: Sequence[str], key: str, count: int) -> list[httpx.Response]:
    """``count`` chat completions at once, spread over ``urls``."""
    headers = {"Authorization": f"Bearer {key}"}
    responses: list[httpx.Response] = []
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(url: str) -> None:
            body = _chat(max_tokens=MAX_TOKENS)
            responses.append(
                await client.post(url + "/v1/chat/completions", json=body, headers=headers)
            )

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, urls[i % len(urls)])
    return responses


async def _key(db: str) -> Any:
    async with await Store.open(db) as store:
        (key,) = await store.api_keys()
        return key


def _assert_ten_of_fifty(responses: list[httpx.Response], fake: FakeServer, db: str) -> None:
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 10 + [402] * 40, [r.text for r in responses if r.status_code >= 500]
    for refused in (r for r in responses if r.status_code == 402):
        assert refused.json()["error"]["code"] == "insufficient_quota"
    # Only the admitted requests reached the provider.
    assert len(fake.requests) == 10
    costs = [r.json()["parallel"]["total_cost_usd"] for r in responses if r.status_code == 200]
    assert costs == [PER_REQUEST_USD] * 10
    key = anyio.run(_key, db, backend="asyncio")
    assert key.reserved_micro_usd == 0 and key.spent_micro_usd == 100_000_000


def test_fifty_requests_against_a_budget_of_ten(tmp_path: Path, fake: FakeServer) -> None:
    """50 concurrent requests on a key whose budget covers 10: 10 answered, 40 refused
    with 402 before any call; the key spent exactly what the 10 cost."""
    fake.set_reply("a", REPLY)
    fake.add_faults(*[Fault.slow(1.0)] * 10, model="a")
    db = str(tmp_path / "b.db")
    config = priced_config(tmp_path / "thinktank.toml", fake, ["a"])
    key, _ = create_key(db, "--budget-usd", "100")
    with serve(db, env={"THINKTANK_CONFIG": str(config)}) as url:
        responses = anyio.run(_post_many, [url], key, 50, backend="asyncio")
    _assert_ten_of_fifty(responses, fake, db)


@pytest.fixture
def pg_only(pg_url: str) -> str:
    return pg_url


def test_two_servers_on_postgres_share_the_budget(
    pg_only: str, tmp_path: Path, fake: FakeServer
) -> None:
    fake.set_reply("a", REPLY)
    fake.add_faults(*[Fault.slow(1.0)] * 10, model="a")
    config = priced_config(tmp_path / "thinktank.toml", fake, ["a"])
    key, _ = create_key(pg_only, "--budget-usd", "100")
    env = {"THINKTANK_CONFIG": str(config)}
    with serve(pg_only, env=env, cwd=tmp_path) as one, serve(pg_only, env=env, cwd=tmp_path) as two:
        responses = anyio.run(_post_many, [one, two], key, 50, backend="asyncio")
    _assert_ten_of_fifty(responses, fake, pg_only)


def test_the_bound_counts_every_model_and_the_judge(tmp_path: Path, fake: FakeServer) -> None:
    config = load_config(priced_config(tmp_path / "thinktank.toml", fake, ["a", "b"]))
    registry = ModelRegistry(config=config)
    panel = ParallelExecutionConfig(models=["a", "b"], max_tokens=MAX_TOKENS)
    assert cost_bound(registry, panel, PROMPT).usd == 2 * PER_REQUEST_USD
    judged = panel.model_copy(update={"synthesis": "judge", "synthesizer": "b"})
    bound = cost_bound(registry, judged, PROMPT)
    # The judge reads the prompt and both answers (4 tokens each) in its template.
    assert bound.usd > 2 * PER_REQUEST_USD + 6 + 2 * MAX_TOKENS + MAX_TOKENS
    assert bound.per_call["b"] == bound.usd - 2 * PER_REQUEST_USD
    unpriced = ModelRegistry(
        config=ThinkTankConfig(
            models={"a": config.models["a"].model_copy(update={"input_cost_per_mtok": None})}
        )
    )
    assert cost_bound(unpriced, panel.model_copy(update={"models": ["a"]}), PROMPT).usd == 0


def _post(url: str, key: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, **kw)


def _settled(db: str) -> Any:
    """The key once no reservation is held (a hung-up request settles after the client
    has gone)."""
    for _ in range(200):
        key = anyio.run(_key, db, backend="asyncio")
        if key.reserved_micro_usd == 0:
            return key
        anyio.run(anyio.sleep, 0.05)
    raise AssertionError(f"still reserved: {key}")


def test_streams_defaults_and_hangups_settle(tmp_path: Path, fake: FakeServer) -> None:
    """A request without max_tokens is capped at the default (sent to the model); a
    streamed one settles when it ends; one whose client hangs up is charged its
    cancelled call's bound (its cost is unknown) and releases the rest."""
    fake.set_reply("a", REPLY)
    db = str(tmp_path / "b.db")
    config = priced_config(tmp_path / "thinktank.toml", fake, ["a"])
    key, _ = create_key(db, "--budget-usd", "100000")
    with serve(db, env={"THINKTANK_CONFIG": str(config)}) as url:
        assert _post(url, key, _chat()).status_code == 200
        assert fake.requests[-1].json["max_tokens"] == DEFAULT_MAX_TOKENS
        assert _settled(db).spent_micro_usd == 10_000_000  # what it cost, not its bound

        streamed = _post(url, key, _chat(max_tokens=MAX_TOKENS, stream=True))
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        assert _settled(db).spent_micro_usd == 20_000_000

        fake.add_faults(Fault.slow(30.0), model="a")
        with pytest.raises(httpx.ReadTimeout):
            _post(url, key, _chat(max_tokens=MAX_TOKENS), timeout=2.0)
        assert _settled(db).spent_micro_usd == 30_000_000
        assert len(fake.hangups) == 1


def _stored_key_ids(db: str) -> dict[str, str | None]:
    async def read() -> dict[str, str | None]:
        async with await Store.open(db) as store:
            return {s.id: s.key_id for s in await store.list_sessions()}

    return anyio.run(read, backend="asyncio")


def test_sessions_record_the_key_id_never_the_key(tmp_path: Path, fake: FakeServer) -> None:
    """Chat completions (plain and streamed) and POST /v1/sessions store the id of the
    key that asked; sessions made otherwise have none."""
    fake.set_reply("a", REPLY)
    db = str(tmp_path / "b.db")
    config = priced_config(tmp_path / "thinktank.toml", fake, ["a"])
    key, kid = create_key(db)
    other, other_id = create_key(db)
    session = {"name": "s", "steps": [{"id": "ask", "prompt": "say hi", "model": "a"}]}
    headers = {"Authorization": f"Bearer {other}"}
    with serve(db, env={"THINKTANK_CONFIG": str(config)}) as url:
        plain = _post(url, key, _chat(max_tokens=MAX_TOKENS)).json()["parallel"]["session_id"]
        streamed = _post(url, key, _chat(max_tokens=MAX_TOKENS, stream=True))
        assert streamed.status_code == 200
        made = httpx.post(url + "/v1/sessions", json={"session": session}, headers=headers)
        assert made.status_code == 202, made.text
        started = made.json()["id"]
        shown = httpx.get(f"{url}/v1/sessions/{started}", headers=headers).json()
        assert shown["key_id"] == other_id
    stored = _stored_key_ids(db)
    assert stored.pop(plain) == kid and stored.pop(started) == other_id
    assert list(stored.values()) == [kid]  # the streamed one
    assert key.encode() not in Path(db).read_bytes()


ENSEMBLE = """
[ensembles.quorum-3]
models = ["a", "b", "c"]
mode = "quorum"
min_models = 2
consensus_threshold = 0.6
"""


def test_named_ensembles_serve_as_models(tmp_path: Path, fake: FakeServer) -> None:
    """An ensemble of thinktank.toml is listed by GET /v1/models and answers as a
    model: its panel is asked, merged by its mode, and the budget bounds all three."""
    for name in ("a", "b", "c"):
        fake.set_reply(name, REPLY)
    db = str(tmp_path / "b.db")
    config = priced_config(tmp_path / "thinktank.toml", fake, ["a", "b", "c"])
    config.write_text(config.read_text() + ENSEMBLE)
    key, _ = create_key(db, "--budget-usd", "30")
    headers = {"Authorization": f"Bearer {key}"}
    with serve(db, env={"THINKTANK_CONFIG": str(config)}) as url:
        listed = httpx.get(url + "/v1/models", headers=headers).json()["data"]
        (ensemble,) = [m for m in listed if m["owned_by"] == "thinktank-ensemble"]
        assert ensemble["id"] == "quorum-3" and ensemble["thinktank"]["mode"] == "quorum"
        assert {"a", "b", "c", "quorum-3"} <= {m["id"] for m in listed}

        body = _chat(max_tokens=MAX_TOKENS) | {"model": "quorum-3"}
        answer = _post(url, key, body)
        assert answer.status_code == 200, answer.text
        reply = answer.json()
        assert reply["model"] == "quorum-3" and reply["choices"][0]["message"]["content"] == REPLY
        assert reply["parallel"]["mode"] == "quorum"
        assert {r.json["model"] for r in fake.requests} <= {"a", "b", "c"}
        assert len(fake.requests) >= 2
        # $30 covers exactly one request of three models: what it spent is gone.
        assert _post(url, key, body).status_code == 402


def test_bad_ensembles_are_named(tmp_path: Path, fake: FakeServer) -> None:
    from thinktank.errors import SpecErrors
    from thinktank.server.app import ensembles_of

    config = priced_config(tmp_path / "thinktank.toml", fake, ["a"])
    base = config.read_text()
    config.write_text(base + "[ensembles.a]\nmodels = ['a']\n")
    with pytest.raises(SpecErrors, match=r"ensembles\.a.*also the name of a model"):
        load_config(config)
    config.write_text(base + "[ensembles.e]\nmodels = ['a']\nmode = 'vote'\n")
    with pytest.raises(SpecErrors, match=r"ensembles\.e\.mode"):
        ensembles_of(ModelRegistry(config=load_config(config)))
    config.write_text(base + "[ensembles.e]\nmodels = []\n")
    with pytest.raises(SpecErrors, match=r"ensembles\.e.*give 'models'"):
        ensembles_of(ModelRegistry(config=load_config(config)))
