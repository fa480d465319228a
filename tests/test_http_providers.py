"""The HTTP providers: parsing units (httpx.MockTransport) and behaviour over real loopback
HTTP against tests/fakeserver.py (request shape, response parsing, every fault)."""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from tests.fakeserver import FakeServer, Fault, run_fake_server
from thinktank.errors import CallTimeoutError, ProviderError
from thinktank.providers.anthropic import AnthropicModel
from thinktank.providers.base import ModelClient, ModelRequest
from thinktank.providers.gemini import GeminiModel
from thinktank.providers.http import (
    create_http_client,
    error_from_exception,
    error_message,
    httpx,
    is_retryable_status,
    parse_retry_after,
    redact,
    secrets_of,
    translate_errors,
)
from thinktank.providers.openai import OpenAICompatibleModel
from thinktank.providers.sse import ServerSentEvent, iter_sse

KEY = "sk-SENTINEL-0123456789abcdef"
PROMPT = "what is two plus two"
WIRES = ["openai", "anthropic", "gemini"]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    """One fake server for the module (started in a thread, stopped at the end)."""
    with run_fake_server() as srv:
        yield srv


@pytest.fixture
def fake(server: FakeServer) -> Iterator[FakeServer]:
    """The shared server, cleared; the test must use every fault it queued."""
    server.reset()
    yield server
    assert server.errors == []
    assert server.pending_faults() == 0


@pytest.fixture
async def http(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """A pooled client that ignores proxy variables (loopback must stay loopback)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with create_http_client() as client:
        yield client


def make(
    wire: str, fake: FakeServer, http: httpx.AsyncClient, **kwargs: Any
) -> OpenAICompatibleModel | AnthropicModel | GeminiModel:
    """A client of ``wire`` pointed at the fake server."""
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("name", "m")
    kwargs.setdefault("model", f"{wire}-model")
    if wire == "openai":
        return OpenAICompatibleModel(http=http, base_url=f"{fake.url}/v1", **kwargs)
    if wire == "anthropic":
        return AnthropicModel(http=http, base_url=fake.url, **kwargs)
    return GeminiModel(http=http, base_url=fake.url, **kwargs)


async def fail(client: ModelClient, prompt: str = PROMPT) -> ProviderError:
    """The ProviderError that one call raises."""
    with pytest.raises(ProviderError) as info:
        await client.complete(ModelRequest(prompt=prompt))
    return info.value


def assert_no_key(exc: ProviderError) -> None:
    """The sentinel key appears nowhere in the error."""
    for text in (str(exc), repr(exc), exc.body or "", exc.partial or "", str(exc.args)):
        assert KEY not in text
        assert "SENTINEL" not in text


# --- pure parsing ------------------------------------------------------------------------


def test_parse_retry_after_prefers_ms_then_seconds() -> None:
    """retry-after-ms wins over retry-after; plain seconds and fractions parse."""
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after(httpx.Headers({"Retry-After-Ms": "20"})) == 0.02


def test_parse_retry_after_http_date_and_garbage() -> None:
    """An HTTP date gives the seconds until it (0 if past); junk and negatives give None."""
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 27 <= (parse_retry_after({"retry-after": future}) or 0) <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0
    for junk in ("soon", "-3", "nan", "inf", ""):
        assert parse_retry_after({"retry-after": junk}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (400, {}, False),
        (401, {}, False),
        (404, {}, False),
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (500, {}, True),
        (503, {}, True),
        (529, {}, True),
        (500, {"x-should-retry": "false"}, False),
        (400, {"X-Should-Retry": "true"}, True),
        (429, {"x-should-retry": "maybe"}, True),
    ],
)
def test_is_retryable_status(status: int, headers: dict[str, str], expected: bool) -> None:
    """408/409/429/5xx retry; x-should-retry true/false overrides the status."""
    assert is_retryable_status(status, headers) is expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"error": {"message": "Bad key", "type": "invalid_request_error"}}', "Bad key"),
        (
            '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            "Overloaded",
        ),
        (
            '{"error": {"code": 429, "message": "Quota hit", "status": "RESOURCE_EXHAUSTED"}}',
            "Quota",
        ),
        ('[{"error": {"code": 500, "message": "Boom", "status": "INTERNAL"}}]', "Boom"),
        ('{"error": "model not found"}', "model not found"),
        ('{"object": "error", "message": "vllm says no"}', "vllm says no"),
        ("<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
    ],
)
def test_error_message_shapes(body: str, expected: str) -> None:
    """The provider's message is pulled out of each known error shape, else the body."""
    assert expected in error_message("openai", 500, body)


def test_error_message_truncates_and_handles_empty() -> None:
    """A long non-JSON body is cut to ~200 chars; an empty one names the status."""
    assert len(error_message("openai", 502, "x" * 5000)) <= 210
    assert "502" in error_message("gemini", 502, "  ")


def test_redact_skips_empty_and_short_values() -> None:
    """Every secret occurrence becomes [REDACTED]; None and tiny strings are ignored."""
    assert redact(f"a {KEY} b {KEY}", [None, "", "ab", KEY]) == "a [REDACTED] b [REDACTED]"


def test_secrets_of_takes_credentials_but_not_the_auth_scheme() -> None:
    """Key, credential headers and a Bearer token are secrets; 'Bearer' itself is not."""
    found = secrets_of(
        None,
        {"Authorization": f"Bearer {KEY}", "X-Custom-Token": "tok-123456", "accept": "text/x"},
    )
    assert set(found) == {f"Bearer {KEY}", KEY, "tok-123456"}
    assert redact("Bearer realm", found) == "Bearer realm"


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_sse_parser_rules() -> None:
    """Comments, BOM, empty events and a cut tail dropped; data joined; names kept."""
    source = _lines(
        "\ufeff: keep-alive",
        "data: one",
        "",
        "event: ping",
        "data:{}",
        "",
        "",
        "event: multi",
        "data: a",
        "data:  b",
        "data",
        "id: 7",
        "",
        "event: lonely",
        "",
        "data: cut",
    )
    events = [event async for event in iter_sse(source)]
    assert events == [
        ServerSentEvent("message", "one"),
        ServerSentEvent("ping", "{}"),
        ServerSentEvent("multi", "a\n b\n"),
    ]


def _mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_openai_parses_list_content_and_null_content() -> None:
    """Content given as typed parts is joined; null content (a refusal) is empty text."""
    bodies = iter(
        [
            {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}]},
            {"choices": [{"message": {"content": None}, "finish_reason": "content_filter"}]},
        ]
    )
    async with _mock_client(lambda request: httpx.Response(200, json=next(bodies))) as http:
        model = OpenAICompatibleModel(name="m", model="x", http=http, base_url="http://t/v1")
        first = await model.complete(ModelRequest(prompt="p"))
        second = await model.complete(ModelRequest(prompt="p"))
    assert (first.content, first.input_tokens, first.cost_usd) == ("ab", None, None)
    assert (second.content, second.finish_reason) == ("", "content_filter")


async def test_openai_error_object_in_a_200_body() -> None:
    """A 200 carrying only an error object (OpenRouter does this) raises, retryable per code."""
    body = {"error": {"code": 502, "message": "upstream failed"}}
    async with _mock_client(lambda request: httpx.Response(200, json=body)) as http:
        model = OpenAICompatibleModel(name="m", model="x", http=http, base_url="http://t/v1")
        exc = await fail(model)
    assert exc.retryable and "upstream failed" in str(exc)


async def test_gemini_thoughts_retry_info_and_blocked_prompt() -> None:
    """Thoughts skipped but billed; RetryInfo gives the hint; a blocked prompt is final."""
    answer = {
        "candidates": [
            {
                "content": {"parts": [{"text": "hmm", "thought": True}, {"text": "4"}]},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 7,
            "candidatesTokenCount": 1,
            "thoughtsTokenCount": 5,
            "totalTokenCount": 13,
        },
    }
    quota = {
        "error": {
            "code": 429,
            "message": "Quota exceeded",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
        }
    }
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}}
    responses = iter(
        [
            httpx.Response(200, json=answer),
            httpx.Response(429, json=quota),
            httpx.Response(200, json=blocked),
        ]
    )
    async with _mock_client(lambda request: next(responses)) as http:
        model = GeminiModel(name="g", model="models/gemini-x", http=http, base_url="http://t")
        ok = await model.complete(ModelRequest(prompt="p"))
        limited = await fail(model)
        refused = await fail(model)
    assert (ok.content, ok.input_tokens, ok.output_tokens) == ("4", 7, 6)
    assert (limited.status_code, limited.retryable, limited.retry_after_s) == (429, True, 37.0)
    assert "RESOURCE_EXHAUSTED: Quota exceeded" in str(limited)
    assert not refused.retryable and "blocked (SAFETY)" in str(refused)


async def test_anthropic_counts_cache_tokens_as_input() -> None:
    """Prompt-cache reads and writes are added to input tokens and kept apart in extra."""
    body = {
        "content": [{"type": "thinking", "thinking": "..."}, {"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 2},
    }
    async with _mock_client(lambda request: httpx.Response(200, json=body)) as http:
        model = AnthropicModel(name="a", model="x", http=http, base_url="http://t")
        answer = await model.complete(ModelRequest(prompt="p"))
    assert (answer.content, answer.input_tokens, answer.output_tokens) == ("hi", 13, 2)
    assert answer.extra["cache_read_input_tokens"] == 10


@pytest.mark.parametrize(
    ("exc", "kind", "retryable"),
    [
        (httpx.ConnectTimeout("t"), CallTimeoutError, True),
        (httpx.ReadTimeout("t"), CallTimeoutError, True),
        (httpx.PoolTimeout("t"), CallTimeoutError, True),
        (httpx.ConnectError("refused"), ProviderError, True),
        (httpx.ReadError("reset"), ProviderError, True),
        (httpx.RemoteProtocolError("closed"), ProviderError, True),
        (httpx.LocalProtocolError("bad"), ProviderError, False),
        (httpx.UnsupportedProtocol("ftp"), ProviderError, False),
        (httpx.InvalidURL("bad"), ProviderError, False),
    ],
)
def test_httpx_errors_translate(exc: Exception, kind: type[ProviderError], retryable: bool) -> None:
    """Each httpx failure maps to the right error class and retryability, chained."""
    with pytest.raises(ProviderError) as info, translate_errors(provider="openai", model="m"):
        raise exc
    assert type(info.value) is kind
    assert info.value.retryable is retryable
    assert info.value.__cause__ is exc


def test_translate_errors_leaves_other_exceptions_alone() -> None:
    """Non-httpx exceptions pass through untouched."""
    with pytest.raises(KeyError), translate_errors(provider="openai", model="m"):
        raise KeyError("x")


def test_exception_messages_are_redacted() -> None:
    """A key quoted by an httpx exception never reaches the ProviderError."""
    error = error_from_exception(
        httpx.ConnectError(f"refused for {KEY}"), provider="openai", model="m", secrets=[KEY]
    )
    assert_no_key(error)


# --- behaviour over loopback HTTP ------------------------------------------------------


async def test_openai_happy_path_request_and_response(
    fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """Path, auth and body fields go out; content, tokens, finish, cost and name come back."""
    model = make(
        "openai",
        fake,
        http,
        name="gpt",
        model="gpt-x",
        headers={"X-Title": "thinktank"},
        input_cost_per_mtok=2.0,
        output_cost_per_mtok=8.0,
    )
    request = ModelRequest(prompt=PROMPT, system="Be brief", max_tokens=50, temperature=0.2)
    answer = await model.complete(request)
    [sent] = fake.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-title"] == "thinktank"
    assert sent.json == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 50,
        "temperature": 0.2,
    }
    assert answer.content == f"echo: {PROMPT}"
    assert answer.model == "gpt"
    assert (answer.input_tokens, answer.output_tokens) == (7, 6)
    assert answer.finish_reason == "stop"
    assert answer.cost_usd == pytest.approx((7 * 2.0 + 6 * 8.0) / 1e6)
    assert answer.latency_ms > 0
    assert answer.extra["served_model"] == "gpt-x"
    assert model.name == "gpt" and model.provider == "openai"


async def test_openai_minimal_request_without_key(
    fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """No key, no auth header; unset fields omitted; one price missing: cost unknown."""
    model = make(
        "openai",
        fake,
        http,
        api_key=None,
        input_cost_per_mtok=1.0,
        max_tokens_param="max_completion_tokens",
    )
    answer = await model.complete(ModelRequest(prompt="hi"))
    await model.complete(ModelRequest(prompt="hi", max_tokens=1))
    first, second = fake.requests
    assert "authorization" not in first.headers
    assert first.json == {"model": "openai-model", "messages": [{"role": "user", "content": "hi"}]}
    assert second.json["max_completion_tokens"] == 1
    assert answer.cost_usd is None


@pytest.mark.parametrize("wire", WIRES)
async def test_unknown_usage_is_none(wire: str, fake: FakeServer, http: httpx.AsyncClient) -> None:
    """A response without usage gives None tokens and None cost, never 0."""
    fake.add_faults(Fault.no_usage())
    model = make(wire, fake, http, input_cost_per_mtok=1.0, output_cost_per_mtok=1.0)
    answer = await model.complete(ModelRequest(prompt=PROMPT))
    assert answer.content == f"echo: {PROMPT}"
    assert (answer.input_tokens, answer.output_tokens, answer.cost_usd) == (None, None, None)


@pytest.mark.parametrize(
    ("wire", "finish"),
    [("openai", "length"), ("anthropic", "max_tokens"), ("gemini", "MAX_TOKENS")],
)
async def test_max_tokens_truncation_reports_finish_reason(
    wire: str, finish: str, fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A reply cut at max_tokens comes back with the provider's length finish reason."""
    answer = await make(wire, fake, http).complete(ModelRequest(prompt=PROMPT, max_tokens=2))
    assert answer.content == "echo: what"
    assert answer.output_tokens == 2
    assert answer.finish_reason == finish


async def test_anthropic_happy_path_request_and_response(
    fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """Anthropic headers, top-level system and max_tokens 1024 go out; text and usage back."""
    model = make(
        "anthropic",
        fake,
        http,
        model="claude-x",
        input_cost_per_mtok=3.0,
        output_cost_per_mtok=15.0,
    )
    answer = await model.complete(ModelRequest(prompt=PROMPT, system="Be brief", temperature=0.0))
    [sent] = fake.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-x",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": PROMPT}],
        "system": "Be brief",
        "temperature": 0.0,
    }
    assert (answer.content, answer.input_tokens, answer.output_tokens) == (f"echo: {PROMPT}", 7, 6)
    assert answer.finish_reason == "end_turn"
    assert answer.cost_usd == pytest.approx((7 * 3.0 + 6 * 15.0) / 1e6)
    assert model.provider == "anthropic"


async def test_gemini_happy_path_request_and_response(
    fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """Key in a header (not the URL), systemInstruction, generationConfig; text and usage."""
    model = make("gemini", fake, http, model="gemini-x")
    answer = await model.complete(
        ModelRequest(prompt=PROMPT, system="Be brief", max_tokens=64, temperature=0.5)
    )
    [sent] = fake.requests
    assert sent.path == "/v1beta/models/gemini-x:generateContent"
    assert KEY not in sent.path
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json == {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "systemInstruction": {"parts": [{"text": "Be brief"}]},
        "generationConfig": {"maxOutputTokens": 64, "temperature": 0.5},
    }
    assert (answer.content, answer.input_tokens, answer.output_tokens) == (f"echo: {PROMPT}", 7, 6)
    assert answer.finish_reason == "STOP"
    assert model.provider == "gemini"


async def test_openai_streaming(fake: FakeServer, http: httpx.AsyncClient) -> None:
    """SSE with a keep-alive comment and a usage chunk gives the full text, tokens and finish."""
    model = make(
        "openai", fake, http, stream=True, input_cost_per_mtok=1.0, output_cost_per_mtok=1.0
    )
    answer = await model.complete(ModelRequest(prompt=PROMPT))
    [sent] = fake.requests
    assert sent.json["stream"] is True
    assert sent.json["stream_options"] == {"include_usage": True}
    assert sent.headers["accept"] == "text/event-stream"
    assert answer.content == f"echo: {PROMPT}"
    assert (answer.input_tokens, answer.output_tokens, answer.finish_reason) == (5, 6, "stop")
    assert answer.cost_usd == pytest.approx(11 / 1e6)
    first_token_ms = answer.extra["first_token_ms"]
    assert isinstance(first_token_ms, float) and 0 < first_token_ms <= answer.latency_ms


async def test_anthropic_streaming(fake: FakeServer, http: httpx.AsyncClient) -> None:
    """The Messages event stream (with a ping) gives the text, both token counts and stop reason."""
    model = make("anthropic", fake, http, stream=True)
    answer = await model.complete(ModelRequest(prompt=PROMPT, max_tokens=3))
    [sent] = fake.requests
    assert sent.json["stream"] is True and sent.json["max_tokens"] == 3
    assert answer.content == "echo: what is"
    assert (answer.input_tokens, answer.output_tokens, answer.finish_reason) == (5, 3, "max_tokens")
    assert answer.extra["served_model"] == "anthropic-model"
    assert "first_token_ms" in answer.extra


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_streaming_without_usage(
    wire: str, fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A stream that reports no usage gives unknown (None) tokens."""
    fake.add_faults(Fault.no_usage())
    answer = await make(wire, fake, http, stream=True).complete(ModelRequest(prompt=PROMPT))
    assert answer.content == f"echo: {PROMPT}"
    assert (answer.input_tokens, answer.output_tokens) == (None, None)


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
@pytest.mark.parametrize("abrupt", [False, True])
async def test_stream_cut_before_finish_is_retryable_with_partial(
    wire: str, abrupt: bool, fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A stream ending early (cleanly or dropped) is retryable and carries the partial text."""
    fake.add_faults(Fault.stream_cut(after=3, abrupt=abrupt))
    exc = await fail(make(wire, fake, http, stream=True))
    assert exc.retryable
    assert exc.partial == "echo: what is "
    assert exc.status_code is None
    if abrupt:
        assert isinstance(exc.__cause__, httpx.RemoteProtocolError)


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_error_event_mid_stream(wire: str, fake: FakeServer, http: httpx.AsyncClient) -> None:
    """An error event mid-stream raises with the provider's message and the partial text."""
    fake.add_faults(Fault.stream_error(after=2))
    exc = await fail(make(wire, fake, http, stream=True))
    assert exc.partial == "echo: what "
    assert exc.retryable  # server_error / overloaded_error
    expected = "overloaded_error: Overloaded" if wire == "anthropic" else "while streaming"
    assert expected in str(exc)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    ("headers", "hint"),
    [({"Retry-After": "2"}, 2.0), ({"retry-after-ms": "1500"}, 1.5), ({}, None)],
)
async def test_rate_limit_429_with_retry_hint(
    wire: str,
    headers: dict[str, str],
    hint: float | None,
    fake: FakeServer,
    http: httpx.AsyncClient,
) -> None:
    """429 is retryable and carries the retry-after / retry-after-ms hint in seconds."""
    fake.add_faults(Fault.http_error(429, headers=headers))
    exc = await fail(make(wire, fake, http))
    assert (exc.status_code, exc.retryable, exc.retry_after_s) == (429, True, hint)
    assert "Rate limit reached" in (exc.body or "")
    assert exc.provider == wire and exc.model == "m"


@pytest.mark.parametrize("wire", WIRES)
async def test_500_then_success(wire: str, fake: FakeServer, http: httpx.AsyncClient) -> None:
    """A 500 is retryable; the next call succeeds; one complete() is one HTTP attempt."""
    fake.add_faults(Fault.http_error(500), model=f"{wire}-model")
    model = make(wire, fake, http)
    exc = await fail(model)
    assert (exc.status_code, exc.retryable) == (500, True)
    answer = await model.complete(ModelRequest(prompt=PROMPT))
    assert answer.content == f"echo: {PROMPT}"
    assert len(fake.requests) == 2


async def test_anthropic_529_overloaded_is_retryable(
    fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """Anthropic's 529 is retryable and its message names the error type."""
    fake.add_faults(Fault.http_error(529))
    exc = await fail(make("anthropic", fake, http))
    assert (exc.status_code, exc.retryable) == (529, True)
    assert exc.body == "overloaded_error: Overloaded"


@pytest.mark.parametrize("wire", WIRES)
async def test_x_should_retry_false_overrides_500(
    wire: str, fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """x-should-retry: false on a 500 makes the error not retryable."""
    fake.add_faults(Fault.http_error(500, headers={"x-should-retry": "false"}))
    exc = await fail(make(wire, fake, http))
    assert (exc.status_code, exc.retryable) == (500, False)


@pytest.mark.parametrize("wire", WIRES)
async def test_slow_response_times_out(
    wire: str, fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A response slower than timeout_s raises a retryable CallTimeoutError quickly."""
    fake.add_faults(Fault.slow(2.0))
    started = time.perf_counter()
    exc = await fail(make(wire, fake, http, timeout_s=0.2))
    assert time.perf_counter() - started < 1.5
    assert isinstance(exc, CallTimeoutError)
    assert exc.retryable
    assert isinstance(exc.__cause__, httpx.ReadTimeout)


@pytest.mark.parametrize("wire", WIRES)
async def test_malformed_json_is_not_retryable(
    wire: str, fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A 200 whose body is not JSON raises a non-retryable error quoting the body."""
    fake.add_faults(Fault.malformed_json())
    exc = await fail(make(wire, fake, http))
    assert not exc.retryable
    assert exc.status_code == 200
    assert "was not valid JSON" in str(exc)
    assert '{"id": "broken"' in str(exc)
    assert len(exc.body or "") <= 210


@pytest.mark.parametrize("wire", WIRES)
async def test_dropped_connection_is_retryable(
    wire: str, fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A connection closed without a response is a retryable error chained to httpx's."""
    fake.add_faults(Fault.drop())
    model = make(wire, fake, http)
    exc = await fail(model)
    assert exc.retryable and exc.status_code is None
    assert isinstance(exc.__cause__, httpx.RemoteProtocolError)
    assert "broke the connection" in str(exc)
    await model.complete(ModelRequest(prompt=PROMPT))  # the pool recovers


@pytest.mark.parametrize(
    ("wire", "stream"),
    [
        ("openai", False),
        ("openai", True),
        ("anthropic", False),
        ("anthropic", True),
        ("gemini", False),
    ],
)
async def test_401_says_check_the_key_and_never_shows_it(
    wire: str, stream: bool, fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """401 is final, says to check the key, and never shows the key the server echoes."""
    fake.add_faults(Fault.http_error(401, echo_key=True))
    kwargs = {"stream": True} if stream else {}
    exc = await fail(make(wire, fake, http, **kwargs))
    assert (exc.status_code, exc.retryable) == (401, False)
    assert "check the API key" in str(exc)
    assert "Incorrect API key provided" in (exc.body or "")
    assert "[REDACTED]" in (exc.body or "")
    assert_no_key(exc)


async def test_401_without_a_key_says_none_is_configured(
    fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A 401 to a client with no key says no key is configured."""
    fake.add_faults(Fault.http_error(401))
    exc = await fail(make("openai", fake, http, api_key=None))
    assert "no API key is configured for openai model 'm'" in str(exc)


async def test_secret_header_echoed_back_is_redacted(
    fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A credential passed as an extra header (not api_key) is redacted like the key."""
    fake.add_faults(Fault.http_error(403, echo_key=True))
    model = make("openai", fake, http, api_key=None, headers={"Authorization": f"Bearer {KEY}"})
    exc = await fail(model)
    assert "check the API key" in str(exc)
    assert_no_key(exc)


async def test_cancelled_call_leaves_the_pool_usable(
    fake: FakeServer, http: httpx.AsyncClient
) -> None:
    """A call cancelled by the caller's deadline frees its connection for the next call."""
    fake.add_faults(Fault.slow(2.0))
    model = make("openai", fake, http)
    with pytest.raises(TimeoutError), anyio.fail_after(0.1):
        await model.complete(ModelRequest(prompt=PROMPT))
    answer = await model.complete(ModelRequest(prompt=PROMPT))
    assert answer.content == f"echo: {PROMPT}"


async def test_connection_refused_is_retryable(http: httpx.AsyncClient) -> None:
    """Nothing listening on the port: a retryable 'could not connect' error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAICompatibleModel(
        name="m", model="x", http=http, base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY
    )
    exc = await fail(model)
    assert exc.retryable and "could not connect" in str(exc)
    assert_no_key(exc)


async def test_fixed_reply_for_one_model(fake: FakeServer, http: httpx.AsyncClient) -> None:
    """set_reply makes one model answer a fixed text while the others still echo."""
    fake.set_reply("gemini-model", "four")
    fixed = await make("gemini", fake, http).complete(ModelRequest(prompt=PROMPT))
    echoed = await make("openai", fake, http).complete(ModelRequest(prompt=PROMPT))
    assert (fixed.content, echoed.content) == ("four", f"echo: {PROMPT}")


async def test_64_concurrent_calls_share_the_pool(fake: FakeServer) -> None:
    """64 calls at once over one client all succeed against the fake server."""
    results: list[str] = []
    async with create_http_client(max_keepalive=64) as http:
        model = make("openai", fake, http)

        async def one(i: int) -> None:
            answer = await model.complete(ModelRequest(prompt=f"n {i}"))
            results.append(answer.content)

        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, i)
    assert sorted(results) == sorted(f"echo: n {i}" for i in range(64))
    assert len(fake.requests) == 64


def test_fake_server_from_sync_code_leaves_no_thread() -> None:
    """The server serves a plain sync client and its thread is gone after the block."""
    before = threading.active_count()
    with run_fake_server() as srv, httpx.Client(trust_env=False) as client:
        response = client.post(
            f"{srv.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi there"}]},
        )
        assert response.json()["choices"][0]["message"]["content"] == "echo: hi there"
        assert json.loads(srv.requests[0].body)["model"] == "m"
    assert threading.active_count() == before
