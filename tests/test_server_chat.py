"""``POST /v1/chat/completions`` over real HTTP to a real ``thinktank serve`` process,
its models answered by the loopback fake provider: the official openai SDK (sync and
async, ``extra_body={"parallel": ...}``), the stored session, the spec's shape, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import openai
import pytest

from thinktank.store import Store

from .fakeserver import FakeServer, Fault, run_fake_server
from .serverproc import serve
from .test_eval_runner import write_config

MODELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with run_fake_server() as server:
        yield server


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chat") / "tt.db"


@pytest.fixture(scope="module")
def url(fake: FakeServer, db: Path) -> Iterator[str]:
    config = write_config(db.parent / "thinktank.toml", fake, MODELS)
    with serve(db, "--no-auth", env={"THINKTANK_CONFIG": str(config)}) as base:
        yield base


@pytest.fixture(autouse=True)
def _fresh(fake: FakeServer) -> None:
    fake.reset()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _stored(db: Path, session_id: str) -> Any:
    async def read() -> Any:
        async with await Store.open(str(db)) as store:
            return await store.get_session(session_id)

    return anyio.run(read, backend="asyncio")


def test_one_model_without_parallel(url: str, fake: FakeServer) -> None:
    """Without ``parallel`` the model named answers; system and user messages reach it."""
    fake.set_reply("a", "Paris")
    reply = _client(url).chat.completions.create(
        model="a",
        messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of France?"},
        ],
        max_tokens=5,
    )
    assert reply.object == "chat.completion" and reply.model == "a"
    assert reply.choices[0].message.content == "Paris"
    assert reply.choices[0].finish_reason == "stop"
    sent = fake.requests[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert sent["max_tokens"] == 5
    assert reply.usage is not None and reply.usage.completion_tokens == 1
    parallel = (reply.model_extra or {})["parallel"]
    assert [r["model"] for r in parallel["responses"]] == ["a"]


def test_parallel_merges_and_is_a_stored_session(url: str, fake: FakeServer, db: Path) -> None:
    """``extra_body`` parallel: three models asked, the majority is the message, the
    block has every answer, usage sums every call, and the session is stored with the
    request id."""
    fake.set_reply("a", "Paris")
    fake.set_reply("b", "Paris")
    fake.set_reply("c", "Lyon")
    raw = _client(url).chat.completions.with_raw_response.create(
        model="a",
        messages=[{"role": "user", "content": "Capital of France?"}],
        extra_body={"parallel": {"models": MODELS, "mode": "all", "threshold": 0.6}},
        extra_headers={"X-Request-Id": "req-chat-1"},
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "Paris"
    block = (reply.model_extra or {})["parallel"]
    by_model = {r["model"]: r for r in block["responses"]}
    assert set(by_model) == set(MODELS)
    assert by_model["c"]["content"] == "Lyon" and not by_model["c"]["included_in_consensus"]
    assert by_model["a"]["included_in_consensus"] and by_model["a"]["status"] == "ok"
    assert by_model["a"]["tokens"] == by_model["a"]["input_tokens"] + 1
    synthesis = block["synthesis"]
    assert synthesis["method"] == "majority" and synthesis["reached"]
    assert synthesis["consensus_score"] == pytest.approx(2 / 3)
    assert reply.usage is not None
    assert reply.usage.total_tokens == sum(r["tokens"] for r in block["responses"])
    assert reply.id == f"chatcmpl-{block['session_id']}"
    stored = _stored(db, block["session_id"])
    assert stored.status == "completed"
    assert stored.source == "http" and stored.request_id == "req-chat-1"
    assert len(fake.requests) == 3


def test_requests_reuse_the_servers_provider_connections(url: str, fake: FakeServer) -> None:
    """The server's sessions share one HTTP client: five requests to a panel of three
    open at most one connection per model (a client per request would open fifteen)."""
    client = _client(url)
    client.chat.completions.create(model="a", messages=[{"role": "user", "content": "warm"}])
    before = fake.connections
    for n in range(5):
        client.chat.completions.create(
            model="a",
            messages=[{"role": "user", "content": f"question {n}"}],
            extra_body={"parallel": {"models": MODELS}},
        )
    assert fake.connections - before <= len(MODELS)


def test_conversation_renders_as_a_transcript(url: str, fake: FakeServer) -> None:
    """Several turns reach the model as one transcript ending with the user's turn."""
    _client(url).chat.completions.create(
        model="a",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        ],
    )
    sent = fake.requests[-1].json["messages"]
    assert sent == [
        {"role": "user", "content": "User: Hi\n\nAssistant: Hello\n\nUser: Capital of France?"}
    ]


async def test_async_sdk_and_the_spec_shape(url: str, fake: FakeServer) -> None:
    """The async SDK gets the same completion; ``response_shape: spec`` answers the
    spec's ``parallel.completion`` object."""
    fake.set_reply("a", "4")
    fake.set_reply("b", "4")
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="thinktank",
            messages=[{"role": "user", "content": "2+2?"}],
            extra_body={"parallel": {"models": ["a", "b"]}},
        )
    assert reply.choices[0].message.content == "4"
    assert (reply.model_extra or {})["parallel"]["synthesis"]["consensus_score"] == 1.0
    async with httpx.AsyncClient(base_url=url) as http:
        spec = await http.post(
            "/api/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "2+2, again?"}],
                "parallel": {"enabled": True, "models": ["a", "b"], "responseShape": "spec"},
            },
        )
    body = spec.json()
    assert spec.status_code == 200 and body["object"] == "parallel.completion"
    assert [r["content"] for r in body["responses"]] == ["4", "4"]
    assert body["synthesis"]["content"] == "4" and "total_cost_usd" in body["usage"]


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        (
            {"messages": [{"role": "user", "content": "x"}], "parallel": {"models": ["a", "z"]}},
            400,
            "parallel.models",
        ),
        ({"model": "a", "messages": []}, 400, "messages"),
        ({"model": "a", "messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        (
            {"model": "a", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            400,
            "temperature",
        ),
        (
            {
                "model": "a",
                "messages": [{"role": "user", "content": "x"}],
                "parallel": {"mode": "sometimes"},
            },
            400,
            "parallel.mode",
        ),
    ],
)
def test_bad_requests_name_the_field(
    url: str, body: dict[str, Any], status: int, param: str
) -> None:
    """A bad field is answered in OpenAI's error shape with ``param`` naming it."""
    error = _error(httpx.post(url + "/v1/chat/completions", json=body), status)
    assert error["param"] == param, error


def test_every_model_failing_is_502_and_timing_out_504(url: str, fake: FakeServer) -> None:
    """No answer: 502 when the providers failed, 504 when they timed out."""
    fake.add_faults(Fault.http_error(500), Fault.http_error(500))
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "parallel": {"models": ["a", "b"]},
    }
    error = _error(httpx.post(url + "/v1/chat/completions", json=body), 502)
    assert error["type"] == "upstream_error" and "no model answered" in error["message"]
    fake.add_faults(Fault.slow(3), Fault.slow(3))
    slow = {**body, "parallel": {"models": ["a", "b"], "timeout_ms": 300}}
    error = _error(httpx.post(url + "/v1/chat/completions", json=slow, timeout=20), 504)
    assert error["type"] == "timeout_error"


def test_sync_sdk_streams_the_synthesis(url: str, fake: FakeServer) -> None:
    """``stream``: chunks with one id and index 0, the synthesis word by word, the
    ``parallel`` block on the finish chunk, a usage chunk when asked, then the end."""
    for model in MODELS:
        fake.set_reply(model, "It is Paris." if model != "c" else "Lyon")
    stream = _client(url).chat.completions.create(
        model="panel",
        messages=[{"role": "user", "content": "Capital of France, streamed?"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"parallel": {"models": MODELS}},
    )
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "panel" for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert all(c.choices[0].index == 0 for c in with_choices)
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == "It is Paris."
    assert sum(1 for c in with_choices if c.choices[0].delta.content) == 3
    finish = with_choices[-1]
    assert finish.choices[0].finish_reason == "stop"
    block = (finish.model_extra or {})["parallel"]
    assert chunks[0].id == f"chatcmpl-{block['session_id']}"
    assert {r["model"] for r in block["responses"]} == set(MODELS)
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.total_tokens == sum(r["tokens"] for r in block["responses"])


async def test_async_sdk_streams(url: str, fake: FakeServer) -> None:
    """The async SDK reads the same stream; without ``include_usage`` no usage chunk."""
    fake.set_reply("a", "four")
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="a", messages=[{"role": "user", "content": "2+2 streamed?"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "four"


def _sse_events(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines.get("event"), lines["data"]))
    return events


def test_progress_events_are_named_and_opt_in(url: str, fake: FakeServer) -> None:
    """``progress_events``: each model's answer as a named ``thinktank.model`` event
    before the synthesis; a stream whose models all fail ends with an error object."""
    fake.set_reply("a", "yes")
    fake.set_reply("b", "yes")
    body = {
        "messages": [{"role": "user", "content": "Progress?"}],
        "stream": True,
        "parallel": {"models": ["a", "b"], "progress_events": True},
    }
    events = _sse_events(httpx.post(url + "/v1/chat/completions", json=body).text)
    named = [json.loads(data) for name, data in events if name == "thinktank.model"]
    assert sorted(e["model"] for e in named) == ["a", "b"]
    assert all(e["content"] == "yes" and e["status"] == "ok" for e in named)
    first_content = next(
        i for i, (name, data) in enumerate(events) if name is None and '"content":"yes"' in data
    )
    assert all(i < first_content for i, (name, _) in enumerate(events) if name)
    assert events[-1] == (None, "[DONE]")
    quiet = {
        **body,
        "parallel": {"models": ["a", "b"]},
        "messages": [{"role": "user", "content": "q"}],
    }
    assert all(
        name is None
        for name, _ in _sse_events(httpx.post(url + "/v1/chat/completions", json=quiet).text)
    )
    fake.add_faults(Fault.http_error(500), Fault.http_error(500))
    failed = {**quiet, "messages": [{"role": "user", "content": "fails"}]}
    with pytest.raises(openai.APIError, match="no model answered"):
        list(
            _client(url).chat.completions.create(
                model="a",
                stream=True,
                messages=failed["messages"],
                extra_body={"parallel": failed["parallel"]},
            )
        )


async def _session_of(db: Path, request_id: str) -> Any:
    """The stored session of ``request_id`` once it has ended."""
    with anyio.fail_after(20):
        while True:
            async with await Store.open(str(db)) as store:
                for summary in await store.list_sessions(limit=20):
                    if summary.request_id == request_id and (summary.status != "running"):
                        return await store.get_session(summary.id)
            await anyio.sleep(0.1)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_hangs_up_cancels_every_call(
    url: str, fake: FakeServer, db: Path, stream: bool
) -> None:
    """The client leaves while both models are still thinking (60 s): both upstream
    connections are closed long before they would have answered, and the session is
    stored interrupted with its calls cancelled."""
    fake.add_faults(Fault.slow(60), model="a")
    fake.add_faults(Fault.slow(60), model="b")
    request_id = f"req-hangup-{stream}"
    body = {
        "messages": [{"role": "user", "content": f"Take your time ({stream})"}],
        "stream": stream,
        "parallel": {"models": ["a", "b"]},
    }
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:

                async def ask() -> None:
                    headers = {"X-Request-Id": request_id}
                    async with http.stream(
                        "POST", "/v1/chat/completions", json=body, headers=headers
                    ) as response:
                        async for _ in response.aiter_bytes():
                            pass

                tg.start_soon(ask)
                while len(fake.requests) < 2:  # noqa: ASYNC110 - another thread fills it
                    await anyio.sleep(0.02)
                tg.cancel_scope.cancel()  # closes the connection: the client hangs up
            while len(fake.hangups) < 2:  # noqa: ASYNC110 - another thread fills it
                await anyio.sleep(0.02)
    assert sorted(model for model, _ in fake.hangups) == ["a", "b"]
    stored = await _session_of(db, request_id)
    assert stored.status == "interrupted"
    assert {call.status for call in stored.step("ask").calls} == {"cancelled"}


def test_system_prompts_join_in_order() -> None:
    """``parallel.system`` comes first, then system and developer messages in order; a
    single user turn is the prompt as it is."""
    from thinktank.server.chat import render_conversation
    from thinktank.server.schemas import ChatMessage

    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="developer", content=[{"type": "text", "text": "Answer in French."}]),
        ChatMessage(role="user", content="Capital of Italy?"),
    ]
    rendered = render_conversation(messages, system="You are a panel.")
    assert rendered.system == "You are a panel.\n\nBe brief.\n\nAnswer in French."
    assert rendered.prompt == "Capital of Italy?"
