"""The Google Gemini ``generateContent`` wire protocol.

Each :meth:`GeminiModel.complete` makes exactly one HTTP attempt; retrying is the call
layer's job (see :mod:`thinktank.providers.retry`), so every attempt is recorded.

Wire format: ``POST {base_url}/v1beta/models/{model}:generateContent`` with the key in
the ``x-goog-api-key`` header (never in the URL, where it would end up in logs and
error messages); the body carries ``contents`` (the user prompt),
``systemInstruction`` and ``generationConfig`` (``maxOutputTokens``, ``temperature``,
``seed``, and for a request with a ``response_schema`` ``responseMimeType:
application/json`` with the schema as ``responseSchema``; for a ``response_enum``
``responseMimeType: text/x.enum`` with a ``STRING`` enum ``responseSchema``, so the
answer is the bare string).
The answer is the text of ``candidates[0].content.parts`` (thought summaries skipped),
``finishReason`` the finish reason, and ``usageMetadata`` the tokens: output tokens
include ``thoughtsTokenCount``, which is billed as output. A 429 without a
``retry-after`` header takes its hint from the body's ``RetryInfo.retryDelay``.

A request someone listens to (``ModelRequest.stream``: a judge streamed to a client)
goes to ``:streamGenerateContent?alt=sse`` instead: each event is a
``GenerateContentResponse`` holding the next piece of text; the finish reason and the
usage come with the last ones. The answer is the same as the one-body answer's.
"""

from __future__ import annotations

import json
import re
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

__all__ = ["GeminiModel"]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class GeminiModel(WireModel):
    """A :class:`~thinktank.providers.base.ModelClient` for Gemini ``generateContent``."""

    PROVIDER = "gemini"

    def __init__(
        self,
        *,
        name: str,
        model: str,
        http: AsyncClient,
        base_url: str = "https://generativelanguage.googleapis.com",
        api_key: str | None = None,
        headers: Mapping[str, str] = _NO_HEADERS,
        timeout_s: float = 60.0,
        input_cost_per_mtok: float | None = None,
        output_cost_per_mtok: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """Configure the client; nothing is sent until :meth:`complete`.

        Args:
            name: The model name sessions use (also ``ModelResponse.model``).
            model: The Gemini model id (``gemini-2.0-flash`` or ``models/...``).
            http: The shared client from
                :func:`~thinktank.providers.http.create_http_client`.
            base_url: The API root, without ``/v1beta``.
            api_key: Sent as ``x-goog-api-key`` when given; never logged or shown.
            headers: Extra headers; they override the defaults.
            timeout_s: Connect, write, pool and per-read timeout of one attempt.
            input_cost_per_mtok: USD per million prompt tokens, if known.
            output_cost_per_mtok: USD per million output tokens, if known.
            max_response_bytes: Most bytes of a response read; a larger one fails
                the call (not retried).
        """
        model = model.removeprefix("models/")
        super().__init__(
            name=name,
            model=model,
            http=http,
            url=f"{base_url.rstrip('/')}/v1beta/models/{model}:generateContent",
            api_key=api_key,
            key_header=("x-goog-api-key", api_key or ""),
            base_headers={"content-type": "application/json", "accept": "application/json"},
            headers=headers,
            timeout_s=timeout_s,
            input_cost_per_mtok=input_cost_per_mtok,
            output_cost_per_mtok=output_cost_per_mtok,
            max_response_bytes=max_response_bytes,
        )

    def __repr__(self) -> str:
        return f"GeminiModel(name={self._name!r}, model={self._model!r})"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Send one ``generateContent`` request.

        Args:
            request: The prompt and its settings.

        Returns:
            The answer with tokens (None when the server reports no usage), latency,
            cost and finish reason.

        Raises:
            ProviderError: Any failure: transport (retryable), non-2xx status (per
                status and ``x-should-retry``), malformed body (not retryable), or a
                blocked prompt (not retryable).
        """
        content = json.dumps(self._body(request)).encode()
        start = time.perf_counter()
        if request.stream:
            return await self._complete_streaming(content, start, request.on_delta)
        # Gemini puts its retry hint in the body (RetryInfo.retryDelay).
        status, body = await self._post(content, retry_hint=_retry_delay)
        return self._from_body(self._decode(body, status), start)

    async def _complete_streaming(
        self, content: bytes, start: float, on_delta: Callable[[str], None] | None
    ) -> ModelResponse:
        """The answer streamed, as :meth:`_from_body` would read it whole."""
        state = StreamedText(start, on_delta)
        last: dict[str, Any] = {}
        usage: object = None
        finish: object = None
        url = self._url.removesuffix(":generateContent") + ":streamGenerateContent?alt=sse"
        with translate_errors(
            provider="gemini", model=self._name, secrets=self._secrets, partial=state.partial
        ):
            async with self._send(content, stream=True, url=url) as response:
                await self._check_stream_status(response)
                async with aclosing(iter_sse(self._lines(response, state.partial))) as events:
                    async for event in events:
                        last = self._chunk(event.data, state.partial())
                        candidates = last.get("candidates")
                        candidate = candidates[0] if isinstance(candidates, list) else None
                        if isinstance(candidate, dict):
                            state.add(_text(candidate))
                            finish = candidate.get("finishReason") or finish
                        usage = last.get("usageMetadata") or usage
        if finish is None:
            raise self._ended_early(state.partial())
        parts = [{"text": "".join(state.parts)}]
        whole = {
            **last,
            "candidates": [{"content": {"parts": parts}, "finishReason": finish}],
            "usageMetadata": usage,
        }
        return self._from_body(whole, start)

    def _chunk(self, data: str, partial: str | None) -> dict[str, Any]:
        """One streamed response, or the error it carries raised."""
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise self._shape_error(
                f"a stream event was not a JSON object: {data[:200]!r}", partial
            )
        if "error" in chunk and "candidates" not in chunk:
            raise error_from_payload(
                chunk,
                provider="gemini",
                model=self._name,
                secrets=self._secrets,
                partial=partial,
                where="the stream",
            )
        return chunk

    def _body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "contents": [{"role": "user", "parts": [{"text": request.prompt}]}],
        }
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.seed is not None:
            config["seed"] = request.seed
        if request.response_schema is not None:
            config["responseMimeType"] = "application/json"
            config["responseSchema"] = dict(request.response_schema)
        elif request.response_enum:
            config["responseMimeType"] = "text/x.enum"
            config["responseSchema"] = {"type": "STRING", "enum": list(request.response_enum)}
        if config:
            body["generationConfig"] = config
        return body

    def _fail(self, what: str) -> ProviderError:
        return ProviderError(
            f"gemini model {self._name!r}: {what}",
            provider="gemini",
            model=self._name,
            retryable=False,
        )

    def _from_body(self, data: dict[str, Any], start: float) -> ModelResponse:
        if "error" in data and "candidates" not in data:
            raise error_from_payload(
                data,
                provider="gemini",
                model=self._name,
                secrets=self._secrets,
                where="the response",
            )
        candidates = data.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = data.get("promptFeedback")
            if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
                raise self._fail(f"the prompt was blocked ({feedback['blockReason']})")
            raise self._fail("unexpected response: no candidates in the body")
        candidate = candidates[0]
        if not isinstance(candidate, dict):
            raise self._fail("unexpected response: the first candidate is not an object")
        text = _text(candidate)
        input_tokens, output_tokens = _usage(data.get("usageMetadata"))
        finish = candidate.get("finishReason")
        extra: dict[str, object] = {}
        if isinstance(data.get("modelVersion"), str):
            extra["served_model"] = data["modelVersion"]
        if isinstance(data.get("responseId"), str):
            extra["response_id"] = data["responseId"]
        return ModelResponse(
            content=text,
            model=self._name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=(time.perf_counter() - start) * 1000,
            cost_usd=cost_usd(input_tokens, output_tokens, self._input_cost, self._output_cost),
            finish_reason=finish if isinstance(finish, str) else None,
            extra=extra,
        )


def _text(candidate: dict[str, Any]) -> str:
    """The text of a candidate's parts (thought summaries skipped)."""
    content = candidate.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        return ""
    return "".join(
        part["text"]
        for part in content["parts"]
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")
    )


def _usage(meta: object) -> tuple[int | None, int | None]:
    if not isinstance(meta, dict):
        return None, None
    prompt = as_count(meta.get("promptTokenCount"))
    candidates = as_count(meta.get("candidatesTokenCount"))
    thoughts = as_count(meta.get("thoughtsTokenCount"))
    if candidates is None and thoughts is None:
        # proto3 JSON omits zero counts: with a total present, no output count means 0.
        output = 0 if as_count(meta.get("totalTokenCount")) is not None else None
    else:
        output = (candidates or 0) + (thoughts or 0)
    return prompt, output


def _retry_delay(body_text: str) -> float | None:
    # google.rpc.RetryInfo in error.details: {"@type": ".../RetryInfo", "retryDelay": "37s"}.
    try:
        data = json.loads(body_text)
    except ValueError:
        return None
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and isinstance(detail.get("retryDelay"), str):
            match = _DURATION.match(detail["retryDelay"])
            if match:
                return float(match.group(1))
    return None
