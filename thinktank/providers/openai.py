"""The OpenAI chat-completions wire protocol, and every server that speaks it.

One client class serves OpenAI itself and the OpenAI-compatible servers: vLLM, Ollama
(``/v1``), the llama.cpp server, LM Studio, OpenRouter, Together, Groq and DeepSeek.
Each :meth:`OpenAICompatibleModel.complete` makes exactly one HTTP attempt; retrying
is the call layer's job (see :mod:`thinktank.providers.retry`), so every attempt is
recorded.

Wire format: ``POST {base_url}/chat/completions`` with ``model``, ``messages`` (an
optional system message and the user prompt), ``max_tokens``, ``temperature`` and
``seed`` when set, ``response_format`` (``json_schema``) when the request carries a
``response_schema`` (or a ``response_enum``: a strict object ``{"answer": ...}`` whose
``answer`` is one of its strings), and ``Authorization: Bearer <key>`` when a key is
configured. With ``stream=True`` the answer arrives as Server-Sent Events of
``chat.completion.chunk`` objects, usage in a last chunk (``stream_options.include_usage``)
and ``data: [DONE]`` at the end.

``ModelResponse.extra`` keeps the server's ``served_model`` and ``response_id`` and, for
a stream, ``first_token_ms`` (time to the first text).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import aclosing
from types import MappingProxyType
from typing import Any, Literal

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

__all__ = ["OpenAICompatibleModel"]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class OpenAICompatibleModel(WireModel):
    """A :class:`~thinktank.providers.base.ModelClient` for chat-completions servers."""

    PROVIDER = "openai"

    def __init__(
        self,
        *,
        name: str,
        model: str,
        http: AsyncClient,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        headers: Mapping[str, str] = _NO_HEADERS,
        stream: bool = False,
        timeout_s: float = 60.0,
        input_cost_per_mtok: float | None = None,
        output_cost_per_mtok: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        """Configure the client; nothing is sent until :meth:`complete`.

        Args:
            name: The model name sessions use (also ``ModelResponse.model``).
            model: The provider's model id sent on the wire.
            http: The shared client from
                :func:`~thinktank.providers.http.create_http_client`.
            base_url: The API root, up to and including ``/v1``.
            api_key: Sent as a Bearer token when given; never logged or shown.
            headers: Extra headers (for example OpenRouter's ``HTTP-Referer``); they
                override the defaults.
            stream: Ask for a Server-Sent Events stream.
            timeout_s: Connect, write, pool and per-read timeout of one attempt.
            input_cost_per_mtok: USD per million prompt tokens, if known.
            output_cost_per_mtok: USD per million completion tokens, if known.
            max_response_bytes: Most bytes of a response read; a larger one fails
                the call (not retried).
            max_tokens_param: The body field for the output limit; OpenAI's reasoning
                models accept only ``max_completion_tokens``.
        """
        super().__init__(
            name=name,
            model=model,
            http=http,
            url=base_url.rstrip("/") + "/chat/completions",
            api_key=api_key,
            key_header=("authorization", f"Bearer {api_key}"),
            base_headers={
                "content-type": "application/json",
                "accept": "text/event-stream" if stream else "application/json",
            },
            headers=headers,
            timeout_s=timeout_s,
            input_cost_per_mtok=input_cost_per_mtok,
            output_cost_per_mtok=output_cost_per_mtok,
            max_response_bytes=max_response_bytes,
        )
        self._stream = stream
        self._max_tokens_param = max_tokens_param

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one chat-completions request.

        Args:
            request: The prompt and its settings.

        Returns:
            The answer with tokens (None when the server reports no usage), latency,
            cost and finish reason.

        Raises:
            ProviderError: Any failure: transport (retryable), non-2xx status (per
                status and ``x-should-retry``), malformed body (not retryable), a
                stream error, or a stream cut before the finish (retryable, with
                ``partial``).
        """
        streams = self._streams(request)
        content = json.dumps(self._body(request, streams)).encode()
        start = time.perf_counter()
        if streams:
            return await self._complete_streaming(content, start, request.on_delta)
        status, body = await self._post(content)
        return self._from_completion(self._decode(body, status), start)

    def _body(self, request: ModelRequest, streams: bool = False) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {"model": self._model, "messages": messages}
        if request.max_tokens is not None:
            body[self._max_tokens_param] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.seed is not None:
            body["seed"] = request.seed
        if request.response_schema is not None:
            body["response_format"] = _response_format(request.response_schema)
        elif request.response_enum:
            body["response_format"] = _response_format(_enum_schema(request.response_enum))
        if streams:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _from_completion(self, data: dict[str, Any], start: float) -> ModelResponse:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            if "error" in data:
                raise error_from_payload(
                    data,
                    provider="openai",
                    model=self._name,
                    secrets=self._secrets,
                    where="the response",
                )
            raise self._shape_error("no choices in the body")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self._shape_error("the first choice has no message")
        input_tokens, output_tokens = _usage(data.get("usage"))
        finish = choice.get("finish_reason")
        return ModelResponse(
            content=_text_of(message.get("content")),
            model=self._name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=(time.perf_counter() - start) * 1000,
            cost_usd=cost_usd(input_tokens, output_tokens, self._input_cost, self._output_cost),
            finish_reason=finish if isinstance(finish, str) else None,
            extra=_extra(data),
        )

    async def _complete_streaming(
        self, content: bytes, start: float, on_delta: Callable[[str], None] | None = None
    ) -> ModelResponse:
        state = _Stream(start, on_delta)
        with translate_errors(
            provider="openai", model=self._name, secrets=self._secrets, partial=state.partial
        ):
            async with self._send(content, stream=True) as response:
                await self._check_stream_status(response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    # The server ignored "stream": it answered with one JSON body.
                    body = await self._read(response)
                    data = self._decode(body, response.status_code)
                    return self._from_completion(data, start)
                async with aclosing(iter_sse(self._lines(response, state.partial))) as events:
                    async for event in events:
                        if event.data == "[DONE]":
                            # Read on to the end of the body (nothing should follow): a
                            # fully read response hands its connection back to the pool.
                            continue
                        chunk = self._decode_chunk(event.data, state.partial())
                        if event.event == "error" or chunk.get("error") is not None:
                            raise error_from_payload(
                                chunk,
                                provider="openai",
                                model=self._name,
                                secrets=self._secrets,
                                partial=state.partial(),
                            )
                        state.take(chunk)
        if state.finish is None:
            raise self._ended_early(state.partial())
        input_tokens, output_tokens = _usage(state.usage)
        return ModelResponse(
            content="".join(state.parts),
            model=self._name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=(time.perf_counter() - start) * 1000,
            cost_usd=cost_usd(input_tokens, output_tokens, self._input_cost, self._output_cost),
            finish_reason=state.finish,
            extra=_extra(state.first, state.first_token_ms),
        )

    def _decode_chunk(self, data: str, partial: str | None) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if isinstance(chunk, dict):
            return chunk
        raise self._shape_error(f"a stream event was not a JSON object: {data[:200]!r}", partial)


class _Stream(StreamedText):
    """What a chat-completions stream has said so far: text, finish reason, usage."""

    def __init__(self, start: float, on_delta: Callable[[str], None] | None) -> None:
        super().__init__(start, on_delta)
        self.finish: str | None = None
        self.usage: object = None
        self.first: dict[str, Any] = {}

    def take(self, chunk: dict[str, Any]) -> None:
        if not self.first:
            self.first = chunk
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return
        delta = choice.get("delta")
        self.add(delta.get("content") if isinstance(delta, dict) else None)
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self.finish = reason


def _usage(usage: object) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    return as_count(usage.get("prompt_tokens")), as_count(usage.get("completion_tokens"))


def _text_of(content: object) -> str:
    # A string for OpenAI; some compatible servers send a list of typed parts; null
    # when the model only refused or called tools.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _extra(data: Mapping[str, Any], first_token_ms: float | None = None) -> dict[str, object]:
    extra: dict[str, object] = {}
    if first_token_ms is not None:
        extra["first_token_ms"] = first_token_ms
    if isinstance(data.get("model"), str):
        extra["served_model"] = data["model"]
    if isinstance(data.get("id"), str):
        extra["response_id"] = data["id"]
    return extra


def _response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Structured output for ``schema``: ``strict`` when the schema is within OpenAI's
    strict subset (so the server enforces it rather than rejecting the request), else
    the schema is sent as guidance."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": dict(schema), "strict": _strict(schema)},
    }


def _enum_schema(values: tuple[str, ...]) -> dict[str, Any]:
    """An object whose one ``answer`` is one of ``values``: strict mode needs an object
    root, so the bare enum is wrapped (the readers unwrap ``{"answer": "B"}``)."""
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": list(values)}},
        "required": ["answer"],
        "additionalProperties": False,
    }


def _strict(schema: object) -> bool:
    """True when every object in ``schema`` lists all its properties as required and
    forbids others, as OpenAI's strict mode demands; the root must be an object."""
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        return False
    return _strict_node(schema)


def _strict_node(node: object) -> bool:
    if not isinstance(node, Mapping):
        return True
    properties = node.get("properties")
    if node.get("type") == "object" or isinstance(properties, Mapping):
        props = properties if isinstance(properties, Mapping) else {}
        if node.get("additionalProperties") is not False:
            return False
        if set(node.get("required") or ()) != set(props):
            return False
        if not all(_strict_node(sub) for sub in props.values()):
            return False
    return _strict_node(node.get("items"))
