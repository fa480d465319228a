"""``max_response_bytes``: a huge body fails the call with the cap named, without ever
being held in memory; a stream that times out keeps the text it had sent."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.errors import ProviderError
from thinktank.providers.base import ModelRequest
from thinktank.providers.config import DEFAULT_MAX_RESPONSE_BYTES
from thinktank.providers.http import create_http_client, httpx, iter_lines_capped
from thinktank.providers.openai import OpenAICompatibleModel
from thinktank.session.loading import parse_session

from .fakeserver import FakeServer, Fault, run_fake_server

MiB = 1024 * 1024


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as srv:
        yield srv


def _model(server: FakeServer, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "gpt", "base_url": server.url + "/v1", **extra}


def _session(server: FakeServer, **extra: Any) -> dict[str, Any]:
    return {
        "name": "cap",
        "models": {"gpt": _model(server, **extra)},
        "steps": [{"id": "ask", "prompt": "hello", "model": "gpt"}],
    }


@pytest.mark.parametrize("declare_length", [True, False])
@pytest.mark.parametrize("stream", [False, True])
async def test_body_over_the_cap_fails_once_naming_the_cap(
    server: FakeServer, tmp_path: Path, stream: bool, declare_length: bool
) -> None:
    """A 16 MiB answer to a model capped at 1 MiB fails, not retried, error names the cap."""
    server.add_faults(Fault.huge(16 * MiB, declare_length=declare_length))
    spec = parse_session(_session(server, maxResponseBytes=MiB, max_retries=2, stream=stream))
    result = await thinktank.run(spec, store=str(tmp_path / "t.db"))
    error = result.steps["ask"].error or ""
    assert result.steps["ask"].status == "failed"
    assert "openai model 'gpt'" in error and f"max_response_bytes ({MiB} bytes)" in error
    assert len(server.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_memory_stays_bounded_by_the_cap(server: FakeServer, stream: bool) -> None:
    """Reading a 64 MiB chunked body under a 1 MiB cap never holds more than a few MiB."""
    server.add_faults(Fault.huge(64 * MiB, declare_length=False))
    async with create_http_client() as http:
        client = OpenAICompatibleModel(
            name="gpt",
            model="gpt",
            http=http,
            base_url=server.url + "/v1",
            stream=stream,
            max_response_bytes=MiB,
        )
        tracemalloc.start()
        try:
            with pytest.raises(ProviderError, match="max_response_bytes") as info:
                await client.complete(ModelRequest(prompt="hi"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert not info.value.retryable
    assert peak < 8 * MiB


async def test_default_cap_allows_ordinary_answers(server: FakeServer) -> None:
    """The default cap (8 MiB) reads a 1 MiB answer whole."""
    assert 8 * MiB == DEFAULT_MAX_RESPONSE_BYTES
    server.add_faults(Fault.huge(MiB))
    async with create_http_client() as http:
        client = OpenAICompatibleModel(name="gpt", model="gpt", http=http, base_url=server.url)
        response = await client.complete(ModelRequest(prompt="hi"))
    assert response.content == "x" * MiB


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stream_that_times_out_keeps_its_partial_text(
    server: FakeServer, tmp_path: Path, provider: str
) -> None:
    """A stream stalled past timeout_s is a timeout call whose response is the text sent
    so far, stored and shown by ``show``."""
    server.set_reply("gpt", "alpha beta gamma delta")
    server.add_faults(Fault.stream_stall(after=2, delay_s=5.0))
    base = server.url + ("/v1" if provider == "openai" else "")
    spec = _session(server, stream=True, timeout_s=0.5, max_retries=0)
    spec["models"]["gpt"].update(provider=provider, base_url=base)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    db = str(tmp_path / "t.db")
    run = CliRunner().invoke(main, ["run", str(path), "--db", db, "--no-progress"])
    assert run.exit_code == 1, run.output

    async def stored() -> Any:
        async with await thinktank.Store.open(db) as store:
            (session,) = await store.list_sessions()
            return (await store.get_session(session.id)).steps[0].calls[0], session.id

    call, sid = anyio.run(stored, backend="asyncio")
    assert call.status == "timeout"
    assert call.response == "alpha beta "
    assert "no complete answer within 0.5 s" in (call.error or "")
    show = CliRunner().invoke(main, ["show", sid, "--db", db])
    assert "partial: 'alpha beta'" in show.output


async def test_capped_lines_split_like_server_sent_events() -> None:
    """Lines end at LF, CRLF or CR, also when a CRLF or a UTF-8 character straddles two
    chunks; the last line needs no ending."""

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"data: a\r", b"\ndata: b\r\n", b"\r\n", b"data: \xc3", b"\xa9\nx\ry"):
            yield chunk

    response = httpx.Response(200, content=chunks())
    lines = [line async for line in iter_lines_capped(response, 1000, _never)]
    assert lines == ["data: a", "data: b", "", "data: \u00e9", "x", "y"]


def _never() -> ProviderError:
    raise AssertionError("under the cap")
