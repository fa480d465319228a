"""A Python client of a ``thinktank serve`` server, in the spec's SDK shape.

This module owns the client side of ``POST /v1/chat/completions``: :class:`Client`
and :class:`AsyncClient` (``client.chat.completions.create(...)``), the typed result
(:class:`Completion`: ``synthesis``, every model's ``responses``, ``usage``), the
typed stream items (:class:`TextDelta`, :class:`ModelAnswer`, then the
:class:`Completion`) and the typed errors the server's OpenAI-shaped error bodies
become (:class:`APIError` and its subclasses)::

    import thinktank

    with thinktank.Client("http://127.0.0.1:8000", api_key="tt_...") as client:
        result = client.chat.completions.create(
            messages=[{"role": "user", "content": "Capital of France?"}],
            parallel={"models": ["gpt-4o", "claude-3-5-sonnet"], "mode": "all"},
        )
    print(result.synthesis.content, result.synthesis.consensus_score)

The client reads the server's default (OpenAI) shape, not ``response_shape: "spec"``:
a streamed answer ends with the same ``parallel`` block, so one parser serves both,
and that shape also carries the completion id, ``model`` and token usage the spec
shape lacks. Only httpx and pydantic are imported: a client process loads neither
the engine nor the store.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, overload

import httpx2 as httpx
from pydantic import BaseModel, ConfigDict

from thinktank.errors import ThinkTankError, UsageError

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "Completion",
    "InsufficientQuotaError",
    "ModelAnswer",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "Stream",
    "StreamItem",
    "Synthesis",
    "TextDelta",
    "Usage",
]

API_KEY_ENV = "THINKTANK_API_KEY"
"""Where the key is read from when none is given."""

DEFAULT_TIMEOUT_S = 600.0
"""Per request: a parallel answer waits for its slowest model (and a judge)."""


# -- errors ---------------------------------------------------------------------------


class APIError(ThinkTankError):
    """The server answered with an error (or could not be reached: ``status`` None).

    ``type``, ``param`` and ``code`` are those of the server's OpenAI-shaped body
    (``param`` names the request field at fault, dotted: ``parallel.models``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers: Mapping[str, str] = headers or {}

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asks to wait before trying again (``Retry-After``)."""
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:  # an HTTP date: not sent by thinktank, not worth parsing
            return None


class BadRequestError(APIError):
    """400: a field of the request is wrong (``param`` names it)."""


class AuthenticationError(APIError):
    """401: no API key, or one the server does not know."""


class InsufficientQuotaError(APIError):
    """402: the key's budget cannot cover the request."""


class PermissionDeniedError(APIError):
    """403: the key may not do this."""


class NotFoundError(APIError):
    """404: no such model, session or route."""


class RateLimitError(APIError):
    """429: the key is over its requests per minute (see :attr:`retry_after`)."""


class ServerError(APIError):
    """5xx: the server failed, or no model answered (502; 504 when they timed out)."""


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke mid-answer."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the client's timeout."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientQuotaError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}

_STREAM_STATUS = {"upstream_error": 502, "timeout_error": 504}
"""A stream's error object has no status (the 200 was sent): the types the server
sends there (no model answered, or they timed out) give it back."""


def _error(status: int, body: Any, headers: Mapping[str, str]) -> APIError:
    """The typed error of an error response (its body decoded, or its text)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(body) or f"HTTP {status}"}
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return kind(
        str(error.get("message") or f"HTTP {status}"),
        status=status,
        type=error.get("type"),
        param=error.get("param"),
        code=error.get("code"),
        headers=headers,
    )


def _error_of(response: httpx.Response) -> APIError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return _error(response.status_code, body, response.headers)


@contextmanager
def _translated() -> Iterator[None]:
    """httpx's transport errors as :class:`APIConnectionError` (chained)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError(f"no answer in time: {exc}") from exc
    except httpx.TransportError as exc:
        raise APIConnectionError(f"cannot reach the server: {exc}") from exc


# -- results --------------------------------------------------------------------------


class _Model(BaseModel):
    # Fields a newer server adds are kept (``model_extra``), not refused.
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelAnswer(_Model):
    """One model's answer: in :attr:`Completion.responses`, and streamed as it arrives
    when ``parallel.progress_events`` is on."""

    model: str
    content: str | None
    status: str
    """``ok``, ``error``, ``timeout``, ``cancelled``..."""
    error: str | None = None
    latency_ms: float
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens: int | None = None
    cost_usd: float | None
    included_in_consensus: bool = True
    """False for an answer outside the consensus (a dissenter, or one that failed)."""


class Synthesis(_Model):
    """The merged answer and how far the models agreed."""

    content: str
    consensus_score: float
    """Share of the answers that agree with the synthesis (0..1)."""
    method: str
    """How the answers were merged: ``majority``, ``judge``, ``medoid``..."""
    reached: bool
    """Whether ``consensus_score`` reached the threshold."""
    threshold: float
    outcome: str


class Usage(_Model):
    """Tokens and money of every call of the answer (a judge's too)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    total_cost_usd: float | None
    """None when some model has no price."""


class Completion(_Model):
    """A completed answer: the synthesis, every model's answer, usage, the session."""

    id: str
    """The completion's id (``chatcmpl-<session id>``)."""
    session_id: str
    """The stored session (``/v1/sessions/<id>``, ``thinktank show``)."""
    model: str
    created: int
    content: str
    """The synthesis' text (OpenAI's ``choices[0].message.content``)."""
    mode: str
    synthesis: Synthesis
    responses: list[ModelAnswer]
    usage: Usage
    total_latency_ms: float
    early_termination: bool
    cached: bool


class TextDelta(_Model):
    """A piece of the synthesis' text, streamed."""

    content: str


StreamItem = TextDelta | ModelAnswer | Completion
"""What a stream yields: text pieces (and, opted in, each model's answer), then the
:class:`Completion` last."""


def _completion(body: Mapping[str, Any]) -> Completion:
    """The :class:`Completion` of an OpenAI-shaped ``chat.completion`` body."""
    block = body.get("parallel")
    if not isinstance(block, dict):
        raise APIError("the answer has no 'parallel' block: is this a thinktank server?")
    choice = body["choices"][0]
    return Completion.model_validate(
        {
            **{k: v for k, v in block.items() if k != "total_cost_usd"},
            "id": body["id"],
            "model": body["model"],
            "created": body["created"],
            "content": choice["message"]["content"],
            "usage": {**body["usage"], "total_cost_usd": block.get("total_cost_usd")},
        }
    )


class _Reader:
    """Server-sent events of a streamed completion, line by line, as stream items.

    The ``chat.completion.chunk`` objects give the text (a judge's as it writes it);
    the finish chunk carries the ``parallel`` block and the usage chunk (always asked
    for) the tokens; ``[DONE]`` makes the :class:`Completion` of them all. A
    ``thinktank.synthesis`` event replaces the text streamed so far (the judge failed
    after writing some, and another method merged)."""

    def __init__(self) -> None:
        self.done = False
        self._event: str | None = None
        self._data: list[str] = []
        self._text: list[str] = []
        self._finish: dict[str, Any] | None = None
        self._usage: dict[str, Any] | None = None

    def line(self, line: str) -> list[StreamItem]:
        """The items ``line`` completes (an event ends at a blank line)."""
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                self._event = value
            elif field == "data":
                self._data.append(value)
            return []
        event, data = self._event, "\n".join(self._data)
        self._event, self._data = None, []
        return self._dispatch(event, data) if data else []

    def _dispatch(self, event: str | None, data: str) -> list[StreamItem]:
        if data == "[DONE]":
            self.done = True
            return [self._completion()]
        payload = json.loads(data)
        if event == "thinktank.model":
            return [ModelAnswer.model_validate(payload)]
        if event == "thinktank.synthesis":
            # A judge failed after its text was streamed: the answer is a fallback's.
            self._text = [payload["content"]]
            return []
        if "error" in payload:
            kind = str((payload["error"] or {}).get("type"))
            raise _error(_STREAM_STATUS.get(kind, 500), payload, {})
        if payload.get("usage"):
            self._usage = payload["usage"]
        items: list[StreamItem] = []
        for choice in payload.get("choices") or []:
            if text := (choice.get("delta") or {}).get("content"):
                self._text.append(text)
                items.append(TextDelta(content=text))
            if choice.get("finish_reason"):
                self._finish = payload
        return items

    def _completion(self) -> Completion:
        if self._finish is None or self._usage is None:
            raise APIConnectionError("the stream ended without its final chunks")
        message = {"message": {"content": "".join(self._text)}}
        return _completion({**self._finish, "choices": [message], "usage": self._usage})


def _cut() -> APIConnectionError:
    return APIConnectionError("the stream ended before [DONE]")


class Stream:
    """The items of a streamed completion (iterate; ``with`` closes the connection)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def __iter__(self) -> Iterator[StreamItem]:
        reader = _Reader()
        try:
            with _translated():
                for line in self.response.iter_lines():
                    yield from reader.line(line)
                    if reader.done:
                        return
            raise _cut()
        finally:
            self.response.close()

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream:
    """The items of a streamed completion (``async for``; ``async with`` closes it)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        reader = _Reader()
        try:
            with _translated():
                async for line in self.response.aiter_lines():
                    for item in reader.line(line):
                        yield item
                    if reader.done:
                        return
            raise _cut()
        finally:
            await self.response.aclose()

    async def close(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- the clients ----------------------------------------------------------------------

_PATH = "/v1/chat/completions"

_C = TypeVar("_C")
_H = TypeVar("_H", httpx.Client, httpx.AsyncClient)


def _body(
    messages: Sequence[Mapping[str, Any]],
    model: str | None,
    parallel: Mapping[str, Any] | None,
    stream: bool,
    fields: Mapping[str, Any],
) -> dict[str, Any]:
    """The request body; a stream always asks for the usage chunk (the result's).

    Raises:
        UsageError: ``parallel.response_shape`` other than ``openai``.
    """
    body: dict[str, Any] = {**fields, "messages": list(messages), "stream": stream}
    if model is not None:
        body["model"] = model
    if parallel is not None:
        if parallel.get("response_shape", "openai") != "openai":
            raise UsageError("the client reads the OpenAI shape: leave out response_shape")
        body["parallel"] = dict(parallel)
    if stream:
        body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
    return body


def _settings(base_url: str, api_key: str | None, timeout: float | httpx.Timeout) -> dict[str, Any]:
    """httpx client arguments: the server's root (a trailing ``/v1`` is accepted), the
    key as a bearer token (default: ``$THINKTANK_API_KEY``), the timeout."""
    root = base_url.rstrip("/").removesuffix("/v1")
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return {"base_url": root, "headers": headers, "timeout": timeout}


class _Completions:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    @overload
    def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = ...,
        parallel: Mapping[str, Any] | None = ...,
        stream: Literal[False] = ...,
        **fields: Any,
    ) -> Completion: ...
    @overload
    def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = ...,
        parallel: Mapping[str, Any] | None = ...,
        stream: Literal[True],
        **fields: Any,
    ) -> Stream: ...
    def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        parallel: Mapping[str, Any] | None = None,
        stream: bool = False,
        **fields: Any,
    ) -> Completion | Stream:
        """Ask ``model`` (or the ``parallel`` panel) and wait for the merged answer, or
        with ``stream`` return the :class:`Stream` of it; other keyword arguments are
        OpenAI's body fields (``temperature``, ``max_tokens``, ``seed``...).

        Raises:
            APIError: the server's error, typed by status (:class:`NotFoundError`...).
        """
        body = _body(messages, model, parallel, stream, fields)
        with _translated():
            request = self._http.build_request("POST", _PATH, json=body)
            response = self._http.send(request, stream=True)
            if response.is_error:
                response.read()
                response.close()
                raise _error_of(response)
            if stream:
                return Stream(response)
            response.read()
        return _completion(response.json())


class _AsyncCompletions:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @overload
    async def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = ...,
        parallel: Mapping[str, Any] | None = ...,
        stream: Literal[False] = ...,
        **fields: Any,
    ) -> Completion: ...
    @overload
    async def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = ...,
        parallel: Mapping[str, Any] | None = ...,
        stream: Literal[True],
        **fields: Any,
    ) -> AsyncStream: ...
    async def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        parallel: Mapping[str, Any] | None = None,
        stream: bool = False,
        **fields: Any,
    ) -> Completion | AsyncStream:
        """As :meth:`Client.chat.completions.create <_Completions.create>`, awaited."""
        body = _body(messages, model, parallel, stream, fields)
        with _translated():
            request = self._http.build_request("POST", _PATH, json=body)
            response = await self._http.send(request, stream=True)
            if response.is_error:
                await response.aread()
                await response.aclose()
                raise _error_of(response)
            if stream:
                return AsyncStream(response)
            await response.aread()
        return _completion(response.json())


class _Chat(Generic[_C]):
    """``client.chat``: the namespace of OpenAI's SDK."""

    def __init__(self, completions: _C) -> None:
        self.completions = completions


class _Base(Generic[_H, _C]):
    """What both clients share: the settings, the httpx client, ``chat``."""

    _http_type: type[_H]
    _completions_type: Callable[[_H], _C]

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
    ) -> None:
        """``base_url`` is the server's root (a trailing ``/v1`` is accepted);
        ``api_key`` defaults to ``$THINKTANK_API_KEY``; ``timeout`` is per request."""
        self.http: _H = self._http_type(**_settings(base_url, api_key, timeout))
        self.chat = _Chat(type(self)._completions_type(self.http))


class Client(_Base[httpx.Client, _Completions]):
    """A synchronous client of a thinktank server (``with`` closes its connections)."""

    _http_type = httpx.Client
    _completions_type = _Completions

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(_Base[httpx.AsyncClient, _AsyncCompletions]):
    """An asyncio/trio client of a thinktank server (``async with`` closes it)."""

    _http_type = httpx.AsyncClient
    _completions_type = _AsyncCompletions

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
