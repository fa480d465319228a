"""What the three HTTP wire clients share: naming, headers, keys, error shapes, and the
text a stream has sent so far.

``OpenAICompatibleModel``, ``AnthropicModel`` and ``GeminiModel`` differ in their
request and response formats; how they hold their settings, merge headers, keep the
key out of every message, and turn a bad status or body into ``ProviderError`` is the
same, and lives here once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from thinktank.errors import ProviderError
from thinktank.providers.base import ModelRequest
from thinktank.providers.http import (
    AsyncClient,
    Response,
    decode_json,
    error_from_response,
    httpx,
    iter_lines_capped,
    read_capped,
    redact,
    response_too_big,
    secrets_of,
    translate_errors,
)

__all__ = ["StreamedText", "WireModel"]


class WireModel:
    """Base of the HTTP model clients (one attempt per ``complete`` call)."""

    PROVIDER: ClassVar[str]
    """The wire protocol's name: ``openai``, ``anthropic`` or ``gemini``."""
    _stream: bool = False
    """Every request streams (the model's ``stream = true``); set by subclasses."""

    def __init__(
        self,
        *,
        name: str,
        model: str,
        http: AsyncClient,
        url: str,
        api_key: str | None,
        key_header: tuple[str, str] | None,
        base_headers: Mapping[str, str],
        headers: Mapping[str, str],
        timeout_s: float,
        input_cost_per_mtok: float | None,
        output_cost_per_mtok: float | None,
        max_response_bytes: int,
    ) -> None:
        self._name = name
        self._model = model
        self._http = http
        self._url, self._auth = _split_credentials(url)
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._input_cost = input_cost_per_mtok
        self._output_cost = output_cost_per_mtok
        base = dict(base_headers)
        if api_key and key_header is not None:
            base[key_header[0]] = key_header[1]
        # The caller's headers win, compared case-insensitively.
        self._headers = {**base, **{k.lower(): v for k, v in headers.items()}}
        self._secrets = secrets_of(api_key, self._headers, url)
        self._key_configured = bool(self._secrets)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, model={self._model!r}, url={self._url!r})"
        )

    @property
    def name(self) -> str:
        """The model name sessions use."""
        return self._name

    @property
    def provider(self) -> str:
        """The wire protocol (whoever serves it)."""
        return self.PROVIDER

    async def _post(
        self, content: bytes, retry_hint: Callable[[str], float | None] | None = None
    ) -> tuple[int, bytes]:
        """POST ``content`` and read the answer under ``max_response_bytes``.

        Args:
            content: The request body.
            retry_hint: Finds a retry hint in an error body (Gemini puts it there).

        Returns:
            The status and the body of a 2xx response.

        Raises:
            ProviderError: a transport failure, a body over the cap, or a non-2xx status.
        """
        with translate_errors(provider=self.PROVIDER, model=self._name, secrets=self._secrets):
            async with self._send(content) as response:
                body = await self._read(response)
        if not 200 <= response.status_code < 300:
            text = body.decode("utf-8", "replace")
            self._raise_for_status(response, text, retry_hint(text) if retry_hint else None)
        return response.status_code, body

    async def _check_stream_status(self, response: Response) -> None:
        """Raise the provider's error when a streamed response is not a 2xx (its error
        body read under the cap)."""
        if not 200 <= response.status_code < 300:
            body = await self._read(response)
            self._raise_for_status(response, body.decode("utf-8", "replace"))

    def _streams(self, request: ModelRequest) -> bool:
        """Ask for an event stream: the model is configured to stream, or someone reads
        this request's text as it is written (``ModelRequest.stream``)."""
        return self._stream or request.stream

    def _send(
        self, content: bytes, *, stream: bool = False, url: str | None = None
    ) -> AbstractAsyncContextManager[Response]:
        """POST ``content`` (to ``url``, default the model's); the response is streamed
        (read it with :meth:`_read` or :meth:`_lines`, inside the ``async with``);
        ``stream``: an event stream is asked."""
        headers = self._headers
        if stream and headers.get("accept") == "application/json":
            # Streamed for a listener on a model not configured to stream.
            headers = {**headers, "accept": "text/event-stream"}
        return self._http.stream(
            "POST",
            url or self._url,
            content=content,
            headers=headers,
            timeout=self._timeout_s,
            auth=self._auth,
        )

    async def _read(self, response: Response) -> bytes:
        """The body of a streamed response, at most ``max_response_bytes`` of it."""
        return await read_capped(response, self._max_response_bytes, self._too_big)

    def _lines(
        self, response: Response, partial: Callable[[], str | None]
    ) -> AsyncGenerator[str, None]:
        """The lines of a streamed response, at most ``max_response_bytes`` in all; past
        the cap the error keeps the text received (``partial``)."""
        return iter_lines_capped(
            response, self._max_response_bytes, lambda: self._too_big(partial())
        )

    def _too_big(self, partial: str | None = None) -> ProviderError:
        return response_too_big(
            provider=self.PROVIDER,
            model=self._name,
            limit=self._max_response_bytes,
            partial=redact(partial, self._secrets) if partial else partial,
        )

    def _raise_for_status(
        self, response: Response, body_text: str, retry_after_s: float | None = None
    ) -> None:
        """Raise the provider's error for a non-2xx response (``retry_after_s``: a hint
        found in the body, used when the headers give none)."""
        if 200 <= response.status_code < 300:
            return
        raise error_from_response(
            provider=self.PROVIDER,
            model=self._name,
            status=response.status_code,
            headers=response.headers,
            body_text=body_text,
            secrets=self._secrets,
            retry_after_s=retry_after_s,
            key_configured=self._key_configured,
        )

    def _decode(self, body: bytes, status: int) -> dict[str, Any]:
        return decode_json(
            body, provider=self.PROVIDER, model=self._name, status=status, secrets=self._secrets
        )

    def _ended_early(self, received: str | None) -> ProviderError:
        """A stream that ended before the model finished (retryable, keeping
        ``received``, the text streamed so far)."""
        return ProviderError(
            f"{self.PROVIDER} model {self._name!r}: the stream ended before the model"
            f" finished ({len(received or '')} characters received)",
            provider=self.PROVIDER,
            model=self._name,
            retryable=True,
            partial=received,
        )

    def _shape_error(self, what: str, partial: str | None = None) -> ProviderError:
        return ProviderError(
            f"{self.PROVIDER} model {self._name!r}: unexpected response: {what}",
            provider=self.PROVIDER,
            model=self._name,
            retryable=False,
            partial=partial,
        )


def _split_credentials(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """``url`` without its userinfo, and that userinfo as basic auth.

    httpx would send URL credentials as basic auth itself, but it also logs the URL
    it requests: taken out of the URL, they reach no log line.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url, None  # the request reports the bad URL
    if not parsed.userinfo:
        return url, None
    auth = httpx.BasicAuth(parsed.username, parsed.password)
    return str(parsed.copy_with(userinfo=b"")), auth


class StreamedText:
    """The text a streaming answer has sent so far, when its first piece came, and who
    hears each piece as it comes (what a timeout or a cut keeps is :meth:`partial`)."""

    def __init__(self, start: float, on_delta: Callable[[str], None] | None) -> None:
        self.start = start
        """perf_counter() when the request was sent."""
        self.on_delta = on_delta
        self.parts: list[str] = []
        self.first_token_ms: float | None = None

    def partial(self) -> str | None:
        return "".join(self.parts) or None

    def add(self, text: object) -> None:
        """Keep one piece of text (anything else, or nothing, is no piece)."""
        if isinstance(text, str) and text:
            if not self.parts:
                self.first_token_ms = (time.perf_counter() - self.start) * 1000
            self.parts.append(text)
            if self.on_delta is not None:
                self.on_delta(text)
