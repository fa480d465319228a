"""The server's pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` hides client
disconnects from the app, so none is used): request ids, the body size limit and the
cap on concurrent requests.

* :class:`RequestId`: an ``X-Request-Id`` header of at most 256 printable ASCII bytes is
  kept, anything else replaced by a new id; it is echoed on the response and put in
  ``scope["state"]["request_id"]`` for the handlers (a session stores it).
* :class:`BodyLimit`: a body over the limit is refused with 413 before the app reads
  it (by ``Content-Length``, and by counting when the body is chunked).
* :class:`ConcurrencyCap`: beyond ``limit`` requests in flight the server answers 503
  at once rather than queueing without bound. Health checks are not counted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from thinktank.server.errors import error_body

__all__ = ["MAX_REQUEST_ID", "BodyLimit", "ConcurrencyCap", "RequestId", "request_id"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_REQUEST_ID = 256
"""The longest ``X-Request-Id`` kept, in bytes."""
_UNCOUNTED = frozenset({"/healthz", "/readyz"})


def request_id(scope: Scope) -> str:
    """The request id :class:`RequestId` gave this request ("" outside it)."""
    return str(scope.get("state", {}).get("request_id", ""))


def _valid_id(raw: bytes) -> bool:
    return 0 < len(raw) <= MAX_REQUEST_ID and all(0x21 <= b <= 0x7E for b in raw)


async def _reply_error(send: Send, status: int, message: str, headers: list[Any]) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestId:
    """Keep a valid ``X-Request-Id`` or make one, and echo it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"")
        rid = given.decode("ascii") if _valid_id(given) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        too_big = f"request body over {self.max_bytes} bytes"
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _reply_error(send, 413, too_big, [])
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _reply_error(send, 413, too_big, [])


class _TooLarge(Exception):
    """A chunked body passed the limit while the app read it."""


class ConcurrencyCap:
    """Answer 503 beyond ``limit`` requests in flight (health checks not counted)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _UNCOUNTED:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            retry = [(b"retry-after", b"1")]
            await _reply_error(send, 503, f"server busy: {self.limit} requests in flight", retry)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
