"""The one HTTP seam of thinktank, and what the HTTP wire modules share.

Only this module imports the HTTP library. The wire modules (``openai``, ``anthropic``,
``gemini``) take an :data:`AsyncClient` made by :func:`create_http_client` and use the
helpers here to turn transport failures and error responses into
:class:`~thinktank.errors.ProviderError`, so moving to another httpx-compatible client
is a change of the import below. Tests and callers that need the library's own types
(``MockTransport``, exception classes) import it from here as ``httpx``.

The library is ``httpx2``, the maintained fork of httpx with the same API (the official
openai SDK uses it). httpx 0.28 (the last release, 2024-12) rides on httpcore 1.0, whose
connection pool rescans every connection for every queued request and probes idle
sockets with a system call each time: measured on loopback at 64 calls in flight it
gave about a third of httpx2's throughput and a p99 latency above one second
(``bench/http.py``).

What lives here:

- :func:`create_http_client`: a pooled HTTP/1.1 client without a default timeout
  (every request passes its own);
- :func:`translate_errors` / :func:`error_from_exception`: httpx exceptions to
  ``ProviderError`` (connect and read/write/pool errors, timeouts and dropped
  connections are retryable), chained with ``from``;
- :func:`error_from_payload`: an error object sent with a 2xx status (a stream's
  ``error`` event);
- :func:`error_from_response`: a non-2xx response to ``ProviderError``, with the
  provider's own message (:func:`error_message`), retryability
  (:func:`is_retryable_status`) and the server's hint (:func:`parse_retry_after`);
- :func:`read_capped` / :func:`iter_lines_capped`: a body or its lines read under the
  model's ``max_response_bytes``, so memory stays bounded whatever the server sends
  (:func:`response_too_big` is the error past it);
- :func:`decode_json`, :func:`as_count`, :func:`cost_usd` (from ``base``), :func:`secrets_of`,
  :func:`redact`: small helpers every wire module needs. API keys never reach an
  error message, body or partial text.
"""

from __future__ import annotations

import codecs
import email.utils
import json
import math
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeAlias

import httpx2 as httpx

from thinktank.errors import CallTimeoutError, ProviderError
from thinktank.providers._redact import redact_userinfo
from thinktank.providers.base import cost_usd

__all__ = [
    "AsyncClient",
    "Response",
    "as_count",
    "cost_usd",
    "create_http_client",
    "decode_json",
    "error_from_exception",
    "error_from_payload",
    "error_from_response",
    "error_message",
    "httpx",
    "is_retryable_status",
    "iter_lines_capped",
    "parse_retry_after",
    "read_capped",
    "redact",
    "response_too_big",
    "secrets_of",
    "translate_errors",
]

AsyncClient: TypeAlias = httpx.AsyncClient
"""The HTTP client type every HTTP provider takes."""
Response: TypeAlias = httpx.Response
"""The response type of :data:`AsyncClient`."""

_SNIPPET_CHARS = 200
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_REDACTED = "[REDACTED]"
# Shorter "secrets" would blank out ordinary words in messages; real keys are far longer.
_MIN_SECRET_CHARS = 6
_SECRET_HEADER_HINTS = ("key", "auth", "token", "secret")
# Error types / statuses (OpenAI, Anthropic, Gemini) that mean "try again later".
_RETRYABLE_ERROR_TYPES = frozenset(
    {
        "server_error",
        "api_error",
        "overloaded_error",
        "rate_limit_error",
        "rate_limit_exceeded",
        "timeout_error",
        "internal",
        "unavailable",
        "resource_exhausted",
        "deadline_exceeded",
    }
)


def create_http_client(*, max_connections: int = 100, max_keepalive: int = 20) -> AsyncClient:
    """A pooled HTTP/1.1 client (``httpx2.AsyncClient``) for the HTTP providers.

    It has no default timeout: each provider passes its own per request. Share one
    client between providers and close it (``await client.aclose()`` or
    ``async with``) when done.

    Args:
        max_connections: Connections open at once, across all hosts.
        max_keepalive: Idle connections kept for reuse. Raise it to the number of calls
            you run at once, or connections beyond it are closed after each call.

    Returns:
        A new client.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive)
    return httpx.AsyncClient(
        limits=limits, timeout=None, http1=True, http2=False, follow_redirects=False
    )


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret in ``secrets`` replaced by ``[REDACTED]``, and the
    credentials of any URL in it hidden (:func:`redact_userinfo`).

    Args:
        text: Any text that may quote a secret (error bodies echo keys and URLs back).
        secrets: API keys and other header values; None and very short values are
            skipped.

    Returns:
        The redacted text.
    """
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, _REDACTED)
    return redact_userinfo(text)


def secrets_of(
    api_key: str | None, headers: Mapping[str, str], url: str | None = None
) -> tuple[str, ...]:
    """The values to redact from errors: the API key, credential-like header values and
    the user and password of ``url``.

    Args:
        api_key: The configured key, if any.
        headers: Extra headers the user configured.
        url: The request URL, whose userinfo may hold credentials.

    Returns:
        The secrets, longest first (so a key that contains another is removed whole).
    """
    found = {api_key} if api_key else set()
    if url is not None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is not None and parsed.userinfo:
            # Quoted alone too: a server may echo the password without the URL.
            found.update({parsed.userinfo.decode("ascii", "replace"), parsed.password})
    for name, value in headers.items():
        if any(hint in name.lower() for hint in _SECRET_HEADER_HINTS):
            found.add(value)
            # "Bearer <key>": the key alone may be echoed back too (the scheme is no secret).
            _scheme, _, credential = value.strip().partition(" ")
            if credential.strip():
                found.add(credential.strip())
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's retry hint in seconds, or None when it gave none we can read.

    ``retry-after-ms`` (milliseconds) wins over ``retry-after``, which may be seconds or
    an HTTP date. A date in the past gives 0. Negative or non-finite values are ignored.

    Args:
        headers: Response headers (case-insensitive mapping, such as ``httpx.Headers``).

    Returns:
        Seconds to wait, or None.
    """
    lowered = _lower(headers)
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value / scale
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def is_retryable_status(status: int, headers: Mapping[str, str]) -> bool:
    """Whether a response with this status is worth retrying.

    ``x-should-retry: true`` / ``false`` decides when present. Otherwise 408 (request
    timeout), 409 (lock conflict), 429 (rate limit) and every 5xx (including
    Anthropic's 529 "overloaded") are retryable.

    Args:
        status: HTTP status code.
        headers: Response headers.

    Returns:
        True when a retry could succeed.
    """
    override = _lower(headers).get("x-should-retry", "").strip().lower()
    if override == "true":
        return True
    if override == "false":
        return False
    return status in (408, 409, 429) or status >= 500


def error_message(provider: str, status: int, body_text: str) -> str:
    """The provider's own error message from an error body, or a truncated body.

    Understands OpenAI ``{"error": {"message"}}``, Anthropic
    ``{"error": {"type", "message"}}``, Gemini ``{"error": {"code", "message", "status"}}``
    (also inside a one-element list) and the shapes OpenAI-compatible servers use
    (``{"error": "text"}``, ``{"message": ...}``, ``{"detail": ...}``).

    Args:
        provider: Provider kind, used when the body is empty.
        status: HTTP status code.
        body_text: The response body as text.

    Returns:
        One line of text.
    """
    text = body_text.strip()
    if not text:
        return f"{provider} answered HTTP {status} with an empty body"
    try:
        data = json.loads(text)
    except ValueError:
        return _snippet(text)
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        found = _message_in(data)
        if found:
            return found
    return _snippet(text)


def error_from_response(
    *,
    provider: str,
    model: str,
    status: int,
    headers: Mapping[str, str],
    body_text: str,
    secrets: Iterable[str],
    retry_after_s: float | None = None,
    key_configured: bool = True,
) -> ProviderError:
    """The ``ProviderError`` for a non-2xx response.

    Args:
        provider: Provider kind.
        model: The configured model name.
        status: HTTP status code.
        headers: Response headers.
        body_text: Response body.
        secrets: Values to redact.
        retry_after_s: A hint found in the body, used when the headers give none.
        key_configured: Whether the client sent an API key (for the 401/403 advice).

    Returns:
        The error (not raised), with status, the provider's message as ``body``,
        retryability and the retry hint.
    """
    secrets = tuple(secrets)
    message = redact(error_message(provider, status, body_text), secrets)
    if 300 <= status < 400:
        location = _lower(headers).get("location", "?")
        hint = f" (redirect to {location}; check base_url)"
    elif status in (401, 403) and key_configured:
        hint = f": check the API key configured for {provider} model {model!r}"
    elif status in (401, 403):
        hint = f": no API key is configured for {provider} model {model!r}; check the API key"
    else:
        hint = ""
    hint = redact(hint, secrets)
    header_hint = parse_retry_after(headers)
    return ProviderError(
        f"{provider} model {model!r}: HTTP {status}: {message}{hint}",
        provider=provider,
        model=model,
        status_code=status,
        body=message,
        retryable=is_retryable_status(status, headers),
        retry_after_s=header_hint if header_hint is not None else retry_after_s,
    )


def error_from_payload(
    payload: dict[str, Any],
    *,
    provider: str,
    model: str,
    secrets: Iterable[str],
    partial: str | None = None,
    where: str = "the stream",
) -> ProviderError:
    """The ``ProviderError`` for an error object sent with a 2xx status (such as an
    ``error`` event in a stream).

    It is retryable when its code is a retryable HTTP status or its type or status says
    the server was overloaded, rate limited or failed internally.

    Args:
        payload: The decoded JSON that carries ``error``.
        provider: Provider kind.
        model: The configured model name.
        secrets: Values to redact.
        partial: Text received before the error.
        where: Where the error came from, for the message.

    Returns:
        The error (not raised).
    """
    secrets = tuple(secrets)
    message = redact(_message_in(payload) or _snippet(json.dumps(payload)), secrets)
    error = payload.get("error")
    retryable = False
    status: int | None = None
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599:
            status = code
            retryable = is_retryable_status(code, {})
        labels = {str(error.get("type", "")).lower(), str(error.get("status", "")).lower()}
        retryable = retryable or bool(labels & _RETRYABLE_ERROR_TYPES)
    text = f"{provider} model {model!r}: error in {where}: {message}"
    if partial:
        text += f" (after {len(partial)} characters of output)"
    return ProviderError(
        text,
        provider=provider,
        model=model,
        status_code=status,
        body=message,
        retryable=retryable,
        partial=redact(partial, secrets) if partial else partial,
    )


def error_from_exception(
    exc: httpx.HTTPError | httpx.InvalidURL,
    *,
    provider: str,
    model: str,
    secrets: Iterable[str] = (),
    partial: str | None = None,
) -> ProviderError:
    """The ``ProviderError`` for an httpx exception (not raised, not yet chained).

    Timeouts become :class:`~thinktank.errors.CallTimeoutError`. Connect, read, write
    and pool failures, proxy errors and dropped connections are retryable; a bad URL,
    an unsupported scheme, a local protocol error or an undecodable body are not.

    Args:
        exc: What httpx raised.
        provider: Provider kind.
        model: The configured model name.
        secrets: Values to redact.
        partial: Text received before the failure, for an interrupted stream.

    Returns:
        The error.
    """
    secrets = tuple(secrets)
    kind: type[ProviderError] = ProviderError
    if isinstance(exc, httpx.TimeoutException):
        what = {
            httpx.ConnectTimeout: "timed out connecting",
            httpx.ReadTimeout: "timed out waiting for the response",
            httpx.WriteTimeout: "timed out sending the request",
            httpx.PoolTimeout: "timed out waiting for a free connection",
        }.get(type(exc), "timed out")
        kind, retryable = CallTimeoutError, True
    elif isinstance(exc, httpx.ConnectError):
        what, retryable = "could not connect", True
    elif isinstance(exc, httpx.RemoteProtocolError):
        what, retryable = "the server broke the connection", True
    elif isinstance(exc, httpx.ProxyError):
        what, retryable = "the proxy failed", True
    elif isinstance(exc, httpx.NetworkError):
        what, retryable = "network error", True
    elif isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        what, retryable = "bad URL (check base_url)", False
    elif isinstance(exc, httpx.DecodingError):
        what, retryable = "could not decode the response body", False
    else:
        what, retryable = "HTTP error", False
    detail = str(exc) or type(exc).__name__
    where = _url_of(exc)
    text = f"{provider} model {model!r}: {what}{where}: {detail}"
    if partial:
        text += f" (after {len(partial)} characters of output)"
    return kind(
        redact(text, secrets),
        provider=provider,
        model=model,
        retryable=retryable,
        partial=redact(partial, secrets) if partial else partial,
    )


@contextmanager
def translate_errors(
    *,
    provider: str,
    model: str,
    secrets: Iterable[str] = (),
    partial: Callable[[], str | None] | None = None,
) -> Iterator[None]:
    """Re-raise httpx exceptions in the block as ``ProviderError``, chained with ``from``.

    ``ProviderError`` and everything that is not an httpx error (cancellation included)
    pass through untouched.

    Args:
        provider: Provider kind.
        model: The configured model name.
        secrets: Values to redact.
        partial: Called on failure for the text received so far (streams).

    Raises:
        ProviderError: For any ``httpx.HTTPError`` or ``httpx.InvalidURL`` raised in the
            block.
    """
    try:
        yield
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise error_from_exception(
            exc,
            provider=provider,
            model=model,
            secrets=secrets,
            partial=partial() if partial is not None else None,
        ) from exc


def decode_json(
    body: bytes | str,
    *,
    provider: str,
    model: str,
    status: int,
    secrets: Iterable[str],
) -> dict[str, Any]:
    """A successful response's JSON object, or a non-retryable ``ProviderError``.

    Args:
        body: The raw body.
        provider: Provider kind.
        model: The configured model name.
        status: The HTTP status (for the message).
        secrets: Values to redact.

    Returns:
        The decoded object.

    Raises:
        ProviderError: The body is not a JSON object.
    """
    try:
        data = json.loads(body)
        what = "was not a JSON object"
    except ValueError:
        data = None
        what = "was not valid JSON"
    if isinstance(data, dict):
        return data
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    snippet = redact(_snippet(text), secrets)
    raise ProviderError(
        f"{provider} model {model!r}: HTTP {status} but the body {what}: {snippet!r}",
        provider=provider,
        model=model,
        status_code=status,
        body=snippet,
        retryable=False,
    )


def response_too_big(
    *, provider: str, model: str, limit: int, partial: str | None = None
) -> ProviderError:
    """The ``ProviderError`` for a response over ``max_response_bytes`` (not retried:
    the same request would get the same answer).

    Args:
        provider: Provider kind.
        model: The configured model name.
        limit: The cap in bytes.
        partial: Text of a stream received before the cap, if any.

    Returns:
        The error (not raised).
    """
    return ProviderError(
        f"{provider} model {model!r}: the response is larger than max_response_bytes"
        f" ({limit} bytes); raise it in the model's config if this is expected",
        provider=provider,
        model=model,
        retryable=False,
        partial=partial,
    )


async def read_capped(
    response: Response, limit: int, too_big: Callable[[], ProviderError]
) -> bytes:
    """The whole body of a streamed ``response``, refusing to hold more than ``limit``
    bytes (decoded), so a huge or endless body cannot exhaust memory.

    Args:
        response: A response opened with ``client.stream(...)``.
        limit: Most bytes to read.
        too_big: Builds the error raised past the limit.

    Returns:
        The body.

    Raises:
        ProviderError: from ``too_big`` when the body is larger than ``limit``.
    """
    _check_length(response, limit, too_big)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise too_big()
        chunks.append(chunk)
    return b"".join(chunks)


async def iter_lines_capped(
    response: Response, limit: int, too_big: Callable[[], ProviderError]
) -> AsyncGenerator[str, None]:
    """The lines of a streamed ``response`` (UTF-8, without line endings), like
    ``aiter_lines`` but refusing to read more than ``limit`` bytes in all: an endless
    line would otherwise grow the line buffer without bound.

    Args:
        response: A response opened with ``client.stream(...)``.
        limit: Most bytes to read.
        too_big: Builds the error raised past the limit.

    Yields:
        Each line; lines end at LF, CRLF or CR (the Server-Sent Events rules).

    Raises:
        ProviderError: from ``too_big`` when the body is larger than ``limit``.
    """
    _check_length(response, limit, too_big)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise too_big()
        text = pending + decoder.decode(chunk)
        # A CR at the end may be the first half of a CRLF: keep it for the next chunk.
        held = "\r" if text.endswith("\r") else ""
        lines = _LINE_BREAK.split(text[: len(text) - len(held)])
        pending = lines.pop() + held
        for line in lines:
            yield line
    lines = _LINE_BREAK.split(pending + decoder.decode(b"", final=True))
    if lines[-1] == "":
        lines.pop()
    for line in lines:
        yield line


def _check_length(response: Response, limit: int, too_big: Callable[[], ProviderError]) -> None:
    """Refuse at once a body whose declared (unencoded) length is over the limit."""
    declared = response.headers.get("content-length", "")
    encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
    if declared.isdigit() and not encoded and int(declared) > limit:
        raise too_big()


def as_count(value: object) -> int | None:
    """A token count from JSON: a non-negative int, else None (unknown, never 0).

    Args:
        value: Whatever the provider sent.

    Returns:
        The count, or None.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _lower(headers: Mapping[str, str]) -> Mapping[str, str]:
    # httpx.Headers is already case-insensitive; plain dicts from tests are not.
    if isinstance(headers, httpx.Headers):
        return headers
    return {k.lower(): v for k, v in headers.items()}


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SNIPPET_CHARS else flat[:_SNIPPET_CHARS] + "..."


def _message_in(data: dict[str, Any]) -> str | None:
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        label = error.get("type") or error.get("status")
        if isinstance(message, str) and message:
            if isinstance(label, str) and label and label not in message:
                return _snippet(f"{label}: {message}")
            return _snippet(message)
        if isinstance(label, str) and label:
            return _snippet(label)
    if isinstance(error, str) and error:
        return _snippet(error)
    for key in ("message", "detail"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return _snippet(value)
    return None


def _url_of(exc: httpx.HTTPError | httpx.InvalidURL) -> str:
    if not isinstance(exc, httpx.HTTPError):
        return ""
    try:
        request = exc.request
    except RuntimeError:
        return ""
    url = request.url
    return f" ({url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path})"
