"""``thinktank.Client`` and ``thinktank.AsyncClient`` over real HTTP to a real
``thinktank serve`` process, its models answered by the loopback fake provider:
typed results (sync and async), typed streams, and the server's errors as typed
exceptions (401, 400 naming the field, 404, 429 with Retry-After, 502; 402 and the rest parsed
from built responses, as the chat endpoint does not reserve budgets yet)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2 as httpx
import pytest

import thinktank
from thinktank.client import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    Completion,
    InsufficientQuotaError,
    ModelAnswer,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StreamItem,
    TextDelta,
    _error_of,
)
from thinktank.errors import UsageError

from .fakeserver import FakeServer, Fault, run_fake_server
from .serverproc import free_port, serve
from .test_eval_runner import write_config
from .test_server_keys import create_key

MODELS = ["a", "b", "c"]
QUESTION = [{"role": "user", "content": "Capital of France?"}]
PANEL = {"models": MODELS, "mode": "all", "threshold": 0.6, "cache": False}
"""Three models asked afresh (no cached consensus: every test sees real calls)."""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with run_fake_server() as server:
        yield server


def _priced_config(directory: Path, fake: FakeServer) -> Path:
    """The fake's models, each priced (1 $ per million input tokens, 2 output)."""
    path = write_config(directory / "thinktank.toml", fake, MODELS)
    priced = "max_retries = 0\ninput_cost_per_mtok = 1.0\noutput_cost_per_mtok = 2.0"
    path.write_text(path.read_text().replace("max_retries = 0", priced))
    return path


@pytest.fixture(scope="module")
def url(fake: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("client") / "tt.db"
    config = _priced_config(db.parent, fake)
    with serve(db, "--no-auth", env={"THINKTANK_CONFIG": str(config)}) as base:
        yield base


@pytest.fixture(scope="module")
def keyed(fake: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    db = tmp_path_factory.mktemp("keyed") / "tt.db"
    config = _priced_config(db.parent, fake)
    with serve(db, env={"THINKTANK_CONFIG": str(config)}) as base:
        yield base, db


@pytest.fixture(autouse=True)
def _fresh(fake: FakeServer) -> None:
    fake.reset()
    fake.set_reply("a", "Paris")
    fake.set_reply("b", "Paris")
    fake.set_reply("c", "Lyon")


def _check_panel(result: Completion) -> None:
    """The typed result of PANEL asked QUESTION: the majority and every answer."""
    assert result.synthesis.content == result.content == "Paris"
    assert result.synthesis.method == "majority" and result.synthesis.reached
    assert result.synthesis.consensus_score == pytest.approx(2 / 3)
    by_model = {r.model: r for r in result.responses}
    assert set(by_model) == set(MODELS)
    assert by_model["c"].content == "Lyon" and not by_model["c"].included_in_consensus
    assert all(r.status == "ok" and r.latency_ms > 0 for r in result.responses)
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in result.responses)
    assert result.usage.total_tokens == sum(r.tokens or 0 for r in result.responses)
    assert result.usage.total_cost_usd == pytest.approx(
        sum(r.cost_usd or 0 for r in result.responses)
    )
    assert result.id == f"chatcmpl-{result.session_id}" and result.mode == "all"
    assert not result.cached


def test_sync_parallel_result_is_typed(url: str, fake: FakeServer) -> None:
    """``with Client``: the panel's merged answer as typed fields; OpenAI's body fields
    reach the models; the connections are closed at the end."""
    with thinktank.Client(url + "/v1/") as client:
        result = client.chat.completions.create(
            messages=QUESTION, parallel=PANEL, max_tokens=7, temperature=0.5
        )
    _check_panel(result)
    assert client.http.is_closed
    assert len(fake.requests) == 3
    assert {r.json["max_tokens"] for r in fake.requests} == {7}
    assert {r.json["temperature"] for r in fake.requests} == {0.5}


def test_async_one_model(url: str, fake: FakeServer) -> None:
    """``async with AsyncClient``: one model without ``parallel`` is a result too."""

    async def ask() -> tuple[Completion, Completion]:
        async with thinktank.AsyncClient(url) as client:
            one = await client.chat.completions.create(messages=QUESTION, model="c")
            panel = await client.chat.completions.create(messages=QUESTION, parallel=PANEL)
        assert client.http.is_closed
        return one, panel

    one, panel = anyio.run(ask, backend="asyncio")
    assert one.content == "Lyon" and one.model == "c"
    assert [r.model for r in one.responses] == ["c"] and one.synthesis.consensus_score == 1
    _check_panel(panel)
    assert one.session_id != panel.session_id


def _split(items: list[StreamItem]) -> tuple[list[ModelAnswer], list[str], Completion]:
    assert isinstance(items[-1], Completion)
    assert not any(isinstance(item, Completion) for item in items[:-1])
    answers = [i for i in items if isinstance(i, ModelAnswer)]
    texts = [i.content for i in items if isinstance(i, TextDelta)]
    return answers, texts, items[-1]


def test_sync_stream_yields_text_then_the_result(url: str, fake: FakeServer) -> None:
    """A stream yields the synthesis in pieces, then the whole typed result (with the
    usage the server sends last); opted in, each model's answer comes first."""
    fake.set_reply("a", "It is Paris, of course")
    fake.set_reply("b", "It is Paris, of course")
    with (
        thinktank.Client(url) as client,
        client.chat.completions.create(
            messages=QUESTION,
            parallel={**PANEL, "agreement": "exact", "progress_events": True},
            stream=True,
        ) as stream,
    ):
        items = list(stream)
    answers, texts, result = _split(items)
    assert len(texts) > 1 and "".join(texts) == result.content == "It is Paris, of course"
    assert sorted(a.model for a in answers) == MODELS
    assert max(items.index(a) for a in answers) < min(
        i for i, item in enumerate(items) if isinstance(item, TextDelta)
    )
    assert result.synthesis.consensus_score == pytest.approx(2 / 3)
    assert result.usage.total_tokens == sum(r.tokens or 0 for r in result.responses) > 0


def test_async_stream(url: str) -> None:
    """``async for`` over an AsyncStream: text pieces, then the typed result."""

    async def ask() -> list[StreamItem]:
        async with thinktank.AsyncClient(url) as client:
            stream = await client.chat.completions.create(
                messages=QUESTION, parallel=PANEL, stream=True
            )
            async with stream:
                return [item async for item in stream]

    answers, texts, result = _split(anyio.run(ask, backend="asyncio"))
    assert answers == [] and "".join(texts) == "Paris"
    _check_panel(result)


def test_errors_are_typed(url: str, fake: FakeServer) -> None:
    """400 names the field, 404 an unknown model, 502 when every model fails (also
    mid-stream, where the 200 was already sent); nothing listening is a connection
    error."""
    with thinktank.Client(url) as client:
        with pytest.raises(BadRequestError) as bad:
            client.chat.completions.create(messages=QUESTION, model="a", temperature=5)
        assert bad.value.status == 400 and bad.value.param == "temperature"
        assert bad.value.type == "invalid_request_error"
        with pytest.raises(NotFoundError) as missing:
            client.chat.completions.create(messages=QUESTION, model="nope")
        assert missing.value.param == "model" and missing.value.code == "model_not_found"
        assert "nope" in missing.value.message
        fake.add_faults(*[Fault.http_error(400)] * 3)
        with pytest.raises(ServerError) as failed:
            client.chat.completions.create(messages=QUESTION, parallel=PANEL)
        assert failed.value.status == 502 and failed.value.code == "upstream_failed"
        fake.add_faults(*[Fault.http_error(400)] * 3)
        stream = client.chat.completions.create(messages=QUESTION, parallel=PANEL, stream=True)
        with pytest.raises(ServerError) as mid_stream:
            list(stream)
        assert mid_stream.value.status == 502 and "no model answered" in mid_stream.value.message
    nowhere = thinktank.Client(f"http://127.0.0.1:{free_port()}")
    with nowhere, pytest.raises(APIConnectionError) as refused:
        nowhere.chat.completions.create(messages=QUESTION, model="a")
    assert refused.value.status is None and refused.value.__cause__ is not None


def test_keys_and_rate_limits_are_typed(
    keyed: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """401 without a key or with a wrong one; the key from ``$THINKTANK_API_KEY``;
    429 with its Retry-After."""
    base, db = keyed
    monkeypatch.delenv("THINKTANK_API_KEY", raising=False)
    for key in (None, "tt_wrong"):
        anonymous = thinktank.Client(base, api_key=key)
        with anonymous, pytest.raises(AuthenticationError) as denied:
            anonymous.chat.completions.create(messages=QUESTION, model="a")
        assert denied.value.status == 401 and denied.value.type == "authentication_error"
    limited, _ = create_key(str(db), "--rpm", "1")
    monkeypatch.setenv("THINKTANK_API_KEY", limited)
    with thinktank.Client(base) as client:
        assert client.chat.completions.create(messages=QUESTION, model="a").content == "Paris"
        with pytest.raises(RateLimitError) as limit:
            client.chat.completions.create(messages=QUESTION, model="a")
    assert limit.value.status == 429 and limit.value.retry_after is not None
    assert limit.value.retry_after > 0


def test_spec_shape_is_refused_before_sending(url: str, fake: FakeServer) -> None:
    """The client parses OpenAI's shape; asking for the spec's is a local error."""
    with thinktank.Client(url) as client, pytest.raises(UsageError, match="response_shape"):
        client.chat.completions.create(
            messages=QUESTION, parallel={**PANEL, "response_shape": "spec"}
        )
    assert fake.requests == []


@pytest.mark.parametrize(
    ("status", "kind"),
    [(402, InsufficientQuotaError), (403, PermissionDeniedError), (503, ServerError)],
)
def test_error_bodies_become_their_class(status: int, kind: type[APIError]) -> None:
    """Parsing only: each status its class, the body's fields and Retry-After kept; a
    body that is not OpenAI's still gives a message."""
    body = {"error": {"message": "no", "type": "t", "param": "p", "code": "c"}}
    response = httpx.Response(status, json=body, headers={"Retry-After": "3"})
    error = _error_of(response)
    assert type(error) is kind and error.status == status and error.retry_after == 3
    assert (error.message, error.type, error.param, error.code) == ("no", "t", "p", "c")
    plain = _error_of(httpx.Response(status, text="Bad Gateway"))
    assert type(plain) is kind and plain.message == "Bad Gateway" and plain.retry_after is None


def test_the_client_loads_neither_engine_nor_store() -> None:
    """A client process imports httpx and pydantic, not the engine, SQLAlchemy or the
    server's FastAPI."""
    code = (
        "import sys, thinktank; thinktank.Client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'sqlmodel', 'fastapi', 'openai') or m.startswith('thinktank.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['thinktank.client', 'thinktank.errors']"
