"""The Anthropic Messages wire protocol.

Each :meth:`AnthropicModel.complete` makes exactly one HTTP attempt; retrying is the
call layer's job (see :mod:`thinktank.providers.retry`), so every attempt is recorded.

Wire format: ``POST {base_url}/v1/messages`` with headers ``x-api-key``,
``anthropic-version: 2023-06-01`` and ``content-type``; the body carries ``model``,
``max_tokens`` (required by the API: 1024 when the request sets none), ``system`` as a
top-level field, ``messages`` with the user prompt, and ``temperature`` when set. The
Messages API has no seed parameter: a request's ``seed`` is not sent, so an Anthropic
model's samples (``NAME#K``) differ only by the provider's own randomness. Nor does
it take a response schema: a ``json``, ``choice`` or ``yes_no`` answer format reaches
Claude as the prompt's instruction alone (``response_schema`` and ``response_enum`` are
not sent). The
answer's text blocks are concatenated; ``stop_reason`` is the finish reason. With
``stream=True`` the answer arrives as the Messages event stream: ``message_start``
(input tokens), ``content_block_delta`` (``text_delta``), ``message_delta``
(``stop_reason``, output tokens), ``message_stop``, ``ping`` and ``error``.

Input tokens are ``input_tokens`` plus the prompt-cache counts when the server reports
them (``cache_creation_input_tokens``, ``cache_read_input_tokens``), so they count
every prompt token the model read; the split is kept in ``ModelResponse.extra``, with
``served_model``, ``response_id`` and, for a stream, ``first_token_ms``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import aclosing
from types import MappingProxyType
from typing import Any

from thinktank.errors import ProviderError
from thinktank.providers._wire import StreamedText, WireModel
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.providers.config import DEFAULT_MAX_RESPONSE_BYTES
from thinktank.providers.http import (
    AsyncClient,
    as_count,
    cost_usd,
    error_from_payload,
    translate_errors,
)
from thinktank.providers.sse import iter_sse

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicModel"]

ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` header sent with every request."""
DEFAULT_MAX_TOKENS = 1024
"""``max_tokens`` when the request sets none (the API requires one)."""

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_CACHE_FIELDS = ("cache_creation_input_tokens", "cache_read_input_tokens")


class AnthropicModel(WireModel):
    """A :class:`~thinktank.providers.base.ModelClient` for the Anthropic Messages API."""

    PROVIDER = "anthropic"

    def __init__(
        self,
        *,
        name: str,
        model: str,
        http: AsyncClient,
        base_url: str = "https://api.anthropic.com",
        api_key: str | None = None,
        headers: Mapping[str, str] = _NO_HEADERS,
        stream: bool = False,
        timeout_s: float = 60.0,
        input_cost_per_mtok: float | None = None,
        output_cost_per_mtok: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """Configure the client; nothing is sent until :meth:`complete`.

        Args:
            name: The model name sessions use (also ``ModelResponse.model``).
            model: The provider's model id sent on the wire.
            http: The shared client from
                :func:`~thinktank.providers.http.create_http_client`.
            base_url: The API root, without ``/v1``.
            api_key: Sent as ``x-api-key`` when given; never logged or shown.
            headers: Extra headers (for example ``anthropic-beta``); they override the
                defaults.
            stream: Ask for the event stream.
            timeout_s: Connect, write, pool and per-read timeout of one attempt.
            input_cost_per_mtok: USD per million input tokens, if known.
            output_cost_per_mtok: USD per million output tokens, if known.
        """
        super().__init__(
            name=name,
            model=model,
            http=http,
            url=base_url.rstrip("/") + "/v1/messages",
            api_key=api_key,
            key_header=("x-api-key", api_key or ""),
            base_headers={
                "content-type": "application/json",
                "accept": "text/event-stream" if stream else "application/json",
                "anthropic-version": ANTHROPIC_VERSION,
            },
            headers=headers,
            timeout_s=timeout_s,
            input_cost_per_mtok=input_cost_per_mtok,
            output_cost_per_mtok=output_cost_per_mtok,
            max_response_bytes=max_response_bytes,
        )
        self._stream = stream

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one Messages request.

        Args:
            request: The prompt and its settings.

        Returns:
            The answer with tokens (None when the server reports no usage), latency,
            cost and stop reason.

        Raises:
            ProviderError: Any failure: transport (retryable), non-2xx status (per
                status and ``x-should-retry``; 529 "overloaded" is retryable),
                malformed body (not retryable), an ``error`` event, or a stream cut
                before ``message_stop`` (retryable, with ``partial``).
        """
        streams = self._streams(request)
        content = json.dumps(self._body(request, streams)).encode()
        start = time.perf_counter()
        if streams:
            return await self._complete_streaming(content, start, request.on_delta)
        status, body = await self._post(content)
        return self._from_message(self._decode(body, status), start)

    def _body(self, request: ModelRequest, streams: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "max_tokens": (
                request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS
            ),
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if request.system:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if streams:
            body["stream"] = True
        return body

    def _error_event(self, payload: dict[str, Any], partial: str | None) -> ProviderError:
        return error_from_payload(
            payload,
            provider="anthropic",
            model=self._name,
            secrets=self._secrets,
            partial=partial,
            where="the stream" if self._stream else "the response",
        )

    def _from_message(self, data: dict[str, Any], start: float) -> ModelResponse:
        if data.get("type") == "error" or ("error" in data and "content" not in data):
            raise self._error_event(data, None)
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise self._shape_error("no content blocks in the body")
        text = "".join(
            block["text"]
            for block in blocks
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        input_tokens = _input_tokens(usage)
        output_tokens = as_count(usage.get("output_tokens"))
        stop = data.get("stop_reason")
        return ModelResponse(
            content=text,
            model=self._name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=(time.perf_counter() - start) * 1000,
            cost_usd=cost_usd(input_tokens, output_tokens, self._input_cost, self._output_cost),
            finish_reason=stop if isinstance(stop, str) else None,
            extra=_extra(data, usage),
        )

    async def _complete_streaming(
        self, content: bytes, start: float, on_delta: Callable[[str], None] | None = None
    ) -> ModelResponse:
        state = _Stream(start, on_delta)
        with translate_errors(
            provider="anthropic", model=self._name, secrets=self._secrets, partial=state.partial
        ):
            async with self._send(content, stream=True) as response:
                await self._check_stream_status(response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    body = await self._read(response)
                    data = self._decode(body, response.status_code)
                    return self._from_message(data, start)
                async with aclosing(iter_sse(self._lines(response, state.partial))) as events:
                    async for event in events:
                        payload = self._decode_event(event.data, state.partial())
                        kind = payload.get("type", event.event)
                        if kind == "error" or event.event == "error":
                            raise self._error_event(payload, state.partial())
                        state.take(kind, payload)
        # message_delta carries the stop reason and the final usage: with it (or with
        # message_stop) the answer is complete.
        if not state.stopped and state.stop is None:
            raise self._ended_early(state.partial())
        usage = state.usage
        input_tokens = _input_tokens(usage)
        output_tokens = as_count(usage.get("output_tokens"))
        return ModelResponse(
            content="".join(state.parts),
            model=self._name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=(time.perf_counter() - start) * 1000,
            cost_usd=cost_usd(input_tokens, output_tokens, self._input_cost, self._output_cost),
            finish_reason=state.stop,
            extra=_extra(state.message, usage, state.first_token_ms),
        )

    def _decode_event(self, data: str, partial: str | None) -> dict[str, Any]:
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            return payload
        raise self._shape_error(f"a stream event was not a JSON object: {data[:200]!r}", partial)


class _Stream(StreamedText):
    """What a Messages stream has said so far: text, stop reason, usage, the message."""

    def __init__(self, start: float, on_delta: Callable[[str], None] | None) -> None:
        super().__init__(start, on_delta)
        self.usage: dict[str, Any] = {}
        self.message: dict[str, Any] = {}
        self.stop: str | None = None
        self.stopped = False

    def take(self, kind: object, payload: dict[str, Any]) -> None:
        if kind == "content_block_delta":
            self._text(payload.get("delta"))
        elif kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self.message = message
                if isinstance(message.get("usage"), dict):
                    self.usage.update(message["usage"])
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop = delta["stop_reason"]
            # Counts here are cumulative: they replace message_start's.
            if isinstance(payload.get("usage"), dict):
                self.usage.update({k: v for k, v in payload["usage"].items() if v is not None})
        elif kind == "message_stop":
            self.stopped = True

    def _text(self, delta: object) -> None:
        if not isinstance(delta, dict) or delta.get("type") != "text_delta":
            return
        self.add(delta.get("text"))


def _input_tokens(usage: Mapping[str, Any]) -> int | None:
    base = as_count(usage.get("input_tokens"))
    if base is None:
        return None
    return base + sum(as_count(usage.get(name)) or 0 for name in _CACHE_FIELDS)


def _extra(
    message: Mapping[str, Any], usage: Mapping[str, Any], first_token_ms: float | None = None
) -> dict[str, object]:
    extra: dict[str, object] = {}
    if first_token_ms is not None:
        extra["first_token_ms"] = first_token_ms
    if isinstance(message.get("model"), str):
        extra["served_model"] = message["model"]
    if isinstance(message.get("id"), str):
        extra["response_id"] = message["id"]
    for name in _CACHE_FIELDS:
        count = as_count(usage.get(name))
        if count:
            extra[name] = count
    return extra
