"""A loopback fake of the OpenAI, Anthropic and Gemini HTTP APIs, for tests and benchmarks.

It speaks real HTTP/1.1 over TCP on 127.0.0.1 (a free port), written with anyio and
``h11`` so every byte is under the test's control: that is what makes "drop the
connection", "answer too slowly" and "cut the stream" faults possible.

Routes (any prefix before them is accepted, so ``base_url`` can be the server root):

- ``POST .../chat/completions``: OpenAI chat completions, JSON or SSE (``stream``);
- ``POST .../v1/messages``: Anthropic Messages, JSON or the event stream;
- ``POST .../models/{model}:generateContent``: Gemini.

Answers are deterministic: the reply is ``echo: <prompt>``, cut to ``max_tokens`` words
(finish reason ``length`` / ``max_tokens`` / ``MAX_TOKENS``), and tokens are counted as
whitespace-separated words (system and prompt in, reply out). :meth:`FakeServer.set_reply`
fixes the reply of one model.

Faults (:class:`Fault`): error statuses, slow answers, dropped connections, cut or
stalled streams, huge bodies. They are queued per model name, or for any model, and each
request consumes the first queued fault that applies to it. Every request is recorded
(:attr:`FakeServer.requests`: path, headers, JSON body), so tests can count calls and
check what was sent.

Use it from sync or async code with :func:`run_fake_server`, which runs the server in a
background thread with its own event loop; ``python tests/fakeserver.py`` serves in
the foreground and prints ``listening on http://127.0.0.1:<port>`` (for subprocesses and
benchmarks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc
import h11
from anyio.from_thread import start_blocking_portal

__all__ = ["FakeServer", "Fault", "RecordedRequest", "run_fake_server"]

Wire = Literal["openai", "anthropic", "gemini"]
FaultKind = Literal[
    "http_error",
    "slow",
    "malformed_json",
    "drop",
    "no_usage",
    "stream_cut",
    "stream_error",
    "huge",
    "stream_stall",
]

_GEMINI_PATH = re.compile(r"/models/([^/:]+):generateContent$")
_GEMINI_STREAM_PATH = re.compile(r"/models/([^/:]+):streamGenerateContent$")
"""Gemini's streamed answer (``?alt=sse``): the same body, an event stream back."""
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    409: b"Conflict",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    529: b"Overloaded",
}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by one request. Build it with the class methods."""

    kind: FaultKind
    """What goes wrong."""
    status: int = 500
    """``http_error``: the status to answer."""
    headers: tuple[tuple[str, str], ...] = ()
    """``http_error``: extra response headers (``retry-after``, ``x-should-retry``...)."""
    message: str | None = None
    """``http_error``: the error message inside the provider-shaped body."""
    echo_key: bool = False
    """``http_error``: quote the request's API key in the message (redaction tests)."""
    delay_s: float = 0.0
    """``slow``: seconds to wait before answering normally."""
    after: int = 1
    """``stream_cut`` / ``stream_error``: text chunks sent before the fault."""
    abrupt: bool = False
    """``stream_cut``: close the socket mid-body instead of ending the body cleanly."""
    size: int = 0
    """``huge``: bytes of answer text to send."""
    declare_length: bool = True
    """``huge``: send a content-length (False: chunked, the size known only at the end)."""

    @classmethod
    def http_error(
        cls,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
        echo_key: bool = False,
    ) -> Fault:
        """Answer ``status`` with a provider-shaped JSON error body."""
        return cls(
            "http_error",
            status=status,
            headers=tuple((headers or {}).items()),
            message=message,
            echo_key=echo_key,
        )

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        """Wait ``delay_s`` before answering (longer than the client's timeout)."""
        return cls("slow", delay_s=delay_s)

    @classmethod
    def malformed_json(cls) -> Fault:
        """Answer 200 with a JSON content type and a body that is not JSON."""
        return cls("malformed_json")

    @classmethod
    def drop(cls) -> Fault:
        """Read the request, then close the connection without answering."""
        return cls("drop")

    @classmethod
    def no_usage(cls) -> Fault:
        """Answer normally but report no token usage."""
        return cls("no_usage")

    @classmethod
    def stream_cut(cls, *, after: int = 1, abrupt: bool = False) -> Fault:
        """Stream ``after`` text chunks, then stop before the finish."""
        return cls("stream_cut", after=after, abrupt=abrupt)

    @classmethod
    def stream_error(cls, *, after: int = 1) -> Fault:
        """Stream ``after`` text chunks, then an error event, then end the body."""
        return cls("stream_error", after=after)

    @classmethod
    def huge(cls, size: int, *, declare_length: bool = True) -> Fault:
        """Answer 200 with ``size`` bytes of text, sent in pieces: a JSON completion, or
        for a stream one endless ``data:`` line."""
        return cls("huge", size=size, declare_length=declare_length)

    @classmethod
    def stream_stall(cls, *, after: int = 1, delay_s: float) -> Fault:
        """Stream ``after`` text chunks, then wait ``delay_s`` before the rest."""
        return cls("stream_stall", after=after, delay_s=delay_s)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    method: str
    """HTTP method."""
    path: str
    """Path and query."""
    headers: dict[str, str]
    """Headers, names lower-cased."""
    body: bytes
    """The raw body."""
    json: Any
    """The body decoded as JSON, or None."""
    wire: Wire | None
    """Which API the path belongs to."""
    model: str | None
    """The model asked for."""


@dataclass
class _Parsed:
    wire: Wire
    model: str
    system: str
    prompt: str
    max_tokens: int | None
    stream: bool
    include_usage: bool


@dataclass
class FakeServer:
    """The fake API server's state; :meth:`serve` runs it on a loopback port."""

    record: bool = True
    """Keep every request in :attr:`requests` (benchmarks may switch it off)."""
    requests: list[RecordedRequest] = field(default_factory=list)
    """Every request received, in order."""
    errors: list[BaseException] = field(default_factory=list)
    """Bugs in the server itself (a test should find this empty)."""
    hangups: list[tuple[str, float]] = field(default_factory=list)
    """(model, ``time.monotonic()``) of each slow answer whose client hung up first."""
    port: int = 0
    """The port, once serving."""
    connections: int = 0
    """TCP connections accepted (keep-alive reuses one for many requests)."""
    answer_delay_s: float = 0.0
    """Every model request waits this long before its answer (so calls overlap)."""
    in_flight: int = 0
    """Requests being answered now."""
    most_in_flight: int = 0
    """The most requests answered at once (a concurrency limit's tests check it)."""
    _faults: dict[str | None, deque[Fault]] = field(default_factory=dict)
    _replies: dict[str, str] = field(default_factory=dict)
    _held: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0
    _stop: anyio.Event | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def add_faults(self, *faults: Fault, model: str | None = None) -> None:
        """Queue faults for the next requests to ``model`` (None: to any model)."""
        with self._lock:
            self._faults.setdefault(model, deque()).extend(faults)

    def set_reply(self, model: str, reply: str) -> None:
        """Make ``model`` answer ``reply`` instead of echoing the prompt."""
        with self._lock:
            self._replies[model] = reply

    def hold_last_piece(self, model: str) -> threading.Event:
        """Make ``model``'s streamed answers send every piece of text but the last,
        then wait (until the client hangs up, recorded in :attr:`hangups`) for the
        returned event to be set before the last one: a test sees what arrived while
        the answer was still being written, without timing anything."""
        gate = threading.Event()
        with self._lock:
            self._held[model] = gate
        return gate

    def reset(self) -> None:
        """Forget recorded requests, queued faults, fixed replies, held streams and
        errors."""
        with self._lock:
            self._held.clear()
            self.requests.clear()
            self.errors.clear()
            self.hangups.clear()
            self._faults.clear()
            self._replies.clear()

    def pending_faults(self) -> int:
        """Faults not consumed yet."""
        with self._lock:
            return sum(len(queue) for queue in self._faults.values())

    def _take_fault(self, model: str) -> Fault | None:
        with self._lock:
            for key in (model, None):
                queue = self._faults.get(key)
                if queue:
                    return queue.popleft()
            return None

    async def _wait_unless_hung_up(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, model: str, delay_s: float
    ) -> bool:
        """Wait ``delay_s`` before answering; False (recorded in :attr:`hangups`) when the
        client closes the connection meanwhile, as a cancelled call does."""
        deadline = anyio.current_time() + delay_s
        while True:
            with anyio.move_on_after(deadline - anyio.current_time()):
                try:
                    data = await stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    data = b""
                if not data:
                    with self._lock:
                        self.hangups.append((model, time.monotonic()))
                    return False
                conn.receive_data(data)  # a pipelined request: h11 keeps it for later
                continue
            return True

    def _holder(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, model: str
    ) -> Callable[[], Awaitable[bool]] | None:
        """What a stream of ``model`` awaits before its last piece (None: nothing);
        it answers False when the client hung up meanwhile."""
        with self._lock:
            gate = self._held.get(model)
        if gate is None:
            return None

        async def hold() -> bool:
            while not gate.is_set():
                if not await self._wait_unless_hung_up(conn, stream, model, 0.02):
                    return False
            return True

        return hold

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on 127.0.0.1 (a free port, or :attr:`port` when set) until stopped."""
        self._stop = anyio.Event()
        listener = await anyio.create_tcp_listener(
            local_host="127.0.0.1", local_port=self.port, backlog=1024
        )
        async with listener, anyio.create_task_group() as tg:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            tg.start_soon(listener.serve, self._connection, tg)
            task_status.started(self.port)
            await self._stop.wait()
            tg.cancel_scope.cancel()

    def stop(self) -> None:
        """Stop serving (call it from the server's event loop)."""
        if self._stop is not None:
            self._stop.set()

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    received = await _read_request(conn, stream)
                    if received is None:
                        return
                    self.in_flight += 1
                    self.most_in_flight = max(self.most_in_flight, self.in_flight)
                    try:
                        answered = await self._respond(conn, stream, *received)
                    finally:
                        self.in_flight -= 1
                    if not answered:
                        return
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
        except (
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,
            h11.ProtocolError,
            OSError,
        ):
            return
        except Exception as exc:  # noqa: BLE001 - a bug in this server: tests check .errors
            self.errors.append(exc)

    async def _respond(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        request: h11.Request,
        body: bytes,
    ) -> bool:
        """Answer one request; False when the connection must be closed."""
        path = request.target.decode("ascii", "replace")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        wire, model = _route(path, data)
        if self.record:
            self.requests.append(
                RecordedRequest(request.method.decode(), path, headers, body, data, wire, model)
            )
        if request.method != b"POST" or wire is None:
            await _send(conn, stream, 404, _json({"error": {"message": f"no route {path}"}}))
            return True
        if not isinstance(data, dict):
            await _send(conn, stream, 400, _error_body(wire, 400, "body is not a JSON object"))
            return True
        if self.answer_delay_s:
            await anyio.sleep(self.answer_delay_s)
        parsed = _parse(wire, model or "", data)
        if _GEMINI_STREAM_PATH.search(path.split("?", 1)[0]):
            parsed = dataclasses.replace(parsed, stream=True)
        fault = self._take_fault(parsed.model)
        if fault is not None and fault.kind == "slow":
            if not await self._wait_unless_hung_up(conn, stream, parsed.model, fault.delay_s):
                return False
            fault = None
        if fault is not None and fault.kind in _INSTEAD_OF_AN_ANSWER:
            return await _misbehave(conn, stream, parsed, fault, headers)
        with self._lock:
            self._count += 1
            n = self._count
            fixed = self._replies.get(parsed.model)
        reply = fixed if fixed is not None else f"echo: {parsed.prompt}"
        words = reply.split(" ")
        truncated = parsed.max_tokens is not None and len(words) > parsed.max_tokens
        if truncated:
            words = words[: parsed.max_tokens]
        usage = fault is None or fault.kind != "no_usage"
        if parsed.stream:
            hold = self._holder(conn, stream, parsed.model)
            return await _stream(conn, stream, parsed, n, words, truncated, usage, fault, hold)
        payload = _completion(parsed, n, " ".join(words), truncated, usage)
        await _send(conn, stream, 200, _json(payload))
        return True


_INSTEAD_OF_AN_ANSWER = ("drop", "http_error", "huge", "malformed_json")
"""The faults that replace the answer (the others alter it)."""


async def _misbehave(
    conn: h11.Connection,
    stream: anyio.abc.SocketStream,
    parsed: _Parsed,
    fault: Fault,
    headers: dict[str, str],
) -> bool:
    """Play ``fault`` (one of ``_INSTEAD_OF_AN_ANSWER``) instead of answering; False when
    the connection must be closed."""
    if fault.kind == "drop":
        return False
    if fault.kind == "http_error":
        message = fault.message or _default_message(fault.status)
        if fault.echo_key:
            message += f" (key: {_key_of(headers)})"
        extra = [(k.encode(), v.encode()) for k, v in fault.headers]
        body = _error_body(parsed.wire, fault.status, message)
        await _send(conn, stream, fault.status, body, extra)
    elif fault.kind == "huge":
        await _huge(conn, stream, parsed, fault)
    else:
        await _send(conn, stream, 200, b'{"id": "broken", "choices": [{"message": ')
    return True


async def _read_request(
    conn: h11.Connection, stream: anyio.abc.SocketStream
) -> tuple[h11.Request, bytes] | None:
    request: h11.Request | None = None
    body: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                data = b""
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, b"".join(body)
        else:  # ConnectionClosed, or PAUSED (cannot happen between cycles)
            return None


async def _send(
    conn: h11.Connection,
    stream: anyio.abc.SocketStream,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    out = conn.send(
        h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))
    )
    out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    await stream.send(out)


async def _huge(
    conn: h11.Connection, stream: anyio.abc.SocketStream, parsed: _Parsed, fault: Fault
) -> None:
    """Send ``fault.size`` bytes of text in 64 KiB pieces, never holding them all."""
    if parsed.stream and parsed.wire != "gemini":
        content_type, head, tail = b"text/event-stream", b"data: ", b""
    else:
        content_type, head, tail = (
            b"application/json",
            b'{"choices": [{"message": {"content": "',
            b'"}}]}',
        )
    headers = [(b"content-type", content_type)]
    if fault.declare_length:
        headers.append((b"content-length", str(len(head) + fault.size + len(tail)).encode()))
    try:
        await stream.send(conn.send(h11.Response(status_code=200, headers=headers)))
        await stream.send(conn.send(h11.Data(data=head)))
        piece = b"x" * 65536
        left = fault.size
        while left > 0:
            await stream.send(conn.send(h11.Data(data=piece[:left])))
            left -= len(piece)
        await stream.send(conn.send(h11.Data(data=tail)) + conn.send(h11.EndOfMessage()))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        # The client stopped reading at its cap and closed the connection.
        return


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def _route(path: str, data: Any) -> tuple[Wire | None, str | None]:
    bare = path.split("?", 1)[0]
    body_model = data.get("model") if isinstance(data, dict) else None
    model = body_model if isinstance(body_model, str) else None
    if bare.endswith("/chat/completions"):
        return "openai", model
    if bare.endswith("/v1/messages"):
        return "anthropic", model
    match = _GEMINI_PATH.search(bare) or _GEMINI_STREAM_PATH.search(bare)
    if match:
        return "gemini", match.group(1)
    return None, model


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and "text" in part
        )
    if isinstance(content, dict) and isinstance(content.get("parts"), list):
        return _text(content["parts"])
    return ""


def _parse(wire: Wire, model: str, data: dict[str, Any]) -> _Parsed:
    system = prompt = ""
    max_tokens: int | None = None
    if wire == "openai":
        for message in data.get("messages", []):
            if message.get("role") == "system":
                system = _text(message.get("content"))
            elif message.get("role") == "user":
                prompt = _text(message.get("content"))
        max_tokens = data.get("max_tokens", data.get("max_completion_tokens"))
    elif wire == "anthropic":
        system = _text(data.get("system"))
        for message in data.get("messages", []):
            if message.get("role") == "user":
                prompt = _text(message.get("content"))
        max_tokens = data.get("max_tokens")
    else:
        system = _text(data.get("systemInstruction"))
        for content in data.get("contents", []):
            prompt = _text(content)
        max_tokens = data.get("generationConfig", {}).get("maxOutputTokens")
    options = data.get("stream_options")
    return _Parsed(
        wire=wire,
        model=model,
        system=system,
        prompt=prompt,
        max_tokens=max_tokens,
        stream=bool(data.get("stream")),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
    )


def _count(text: str) -> int:
    return len(text.split())


def _default_message(status: int) -> str:
    return {
        401: "Incorrect API key provided",
        403: "Permission denied",
        429: "Rate limit reached; slow down",
        529: "Overloaded",
    }.get(status, f"The server had an error (status {status})")


def _key_of(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization", "")
    return (
        auth.removeprefix("Bearer ")
        or headers.get("x-api-key")
        or headers.get("x-goog-api-key", "")
    )


def _error_body(wire: Wire, status: int, message: str) -> bytes:
    if wire == "openai":
        kind = "invalid_request_error" if status < 500 else "server_error"
        return _json({"error": {"message": message, "type": kind, "param": None, "code": None}})
    if wire == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return _json({"type": "error", "error": {"type": kind, "message": message}})
    state = _GEMINI_STATUSES.get(status, "UNKNOWN")
    return _json({"error": {"code": status, "message": message, "status": state}})


def _completion(
    parsed: _Parsed, n: int, reply: str, truncated: bool, usage: bool
) -> dict[str, Any]:
    tokens_in = _count(parsed.system) + _count(parsed.prompt)
    tokens_out = _count(reply)
    if parsed.wire == "openai":
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 0,
            "model": parsed.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
        }
        if usage:
            payload["usage"] = {
                "prompt_tokens": tokens_in,
                "completion_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
            }
        return payload
    if parsed.wire == "anthropic":
        payload = {
            "id": f"msg_{n}",
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "max_tokens" if truncated else "end_turn",
            "stop_sequence": None,
        }
        if usage:
            payload["usage"] = {"input_tokens": tokens_in, "output_tokens": tokens_out}
        return payload
    payload = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": reply}]},
                "finishReason": "MAX_TOKENS" if truncated else "STOP",
                "index": 0,
            }
        ],
        "modelVersion": parsed.model,
        "responseId": f"resp-{n}",
    }
    if usage:
        payload["usageMetadata"] = {
            "promptTokenCount": tokens_in,
            "candidatesTokenCount": tokens_out,
            "totalTokenCount": tokens_in + tokens_out,
        }
    return payload


@dataclass
class _SSE:
    """One SSE answer under way: where it goes, its pieces of text, and the fault (a
    cut or a stall) it plays."""

    conn: h11.Connection
    stream: anyio.abc.SocketStream
    pieces: list[str]
    cut: Fault | None
    stall: Fault | None
    hold: Callable[[], Awaitable[bool]] | None = None
    """Awaited before the last piece; False: the client hung up (see
    :meth:`FakeServer.hold_last_piece`)."""

    async def emit(self, chunk: bytes) -> None:
        await self.stream.send(self.conn.send(h11.Data(data=chunk)))

    async def emit_pieces(self, render: Callable[[str], bytes]) -> None:
        """Every piece as ``render`` frames it, stalling where the fault says."""
        for i, piece in enumerate(self.pieces):
            if self.stall is not None and i == self.stall.after:
                await anyio.sleep(self.stall.delay_s)
            if self.hold is not None and i == len(self.pieces) - 1 and not await self.hold():
                raise _HungUp
            await self.emit(render(piece))

    async def end(self) -> bool:
        await self.stream.send(self.conn.send(h11.EndOfMessage()))
        return True

    async def end_after_fault(self, error_event: bytes) -> bool:
        """End a cut stream: with ``error_event``, abruptly (False), or just ended."""
        assert self.cut is not None
        if self.cut.kind == "stream_error":
            await self.emit(error_event)
        elif self.cut.abrupt:
            return False
        return await self.end()


async def _stream(
    conn: h11.Connection,
    stream: anyio.abc.SocketStream,
    parsed: _Parsed,
    n: int,
    words: list[str],
    truncated: bool,
    usage: bool,
    fault: Fault | None,
    hold: Callable[[], Awaitable[bool]] | None = None,
) -> bool:
    """Send an SSE answer; False when the connection was cut on purpose, or the client
    hung up while a held stream waited."""
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await stream.send(conn.send(h11.Response(status_code=200, headers=headers)))
    tokens = (_count(parsed.system) + _count(parsed.prompt), _count(" ".join(words)))
    pieces = [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
    cut = fault if fault is not None and fault.kind in ("stream_cut", "stream_error") else None
    stall = fault if fault is not None and fault.kind == "stream_stall" else None
    if cut is not None:
        pieces = pieces[: cut.after]
    sse = _SSE(conn, stream, pieces, cut, stall, hold)
    try:
        if parsed.wire == "openai":
            return await _stream_openai(sse, parsed, n, truncated, tokens if usage else None)
        if parsed.wire == "gemini":
            return await _stream_gemini(sse, parsed, n, truncated, tokens if usage else None)
        return await _stream_anthropic(sse, parsed, n, truncated, tokens if usage else None)
    except _HungUp:
        return False


class _HungUp(Exception):
    """The client of a held stream left before its last piece."""


async def _stream_openai(
    sse: _SSE, parsed: _Parsed, n: int, truncated: bool, tokens: tuple[int, int] | None
) -> bool:
    """OpenAI's chunks (``tokens``: prompt and completion counts, None: no usage)."""
    head = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": parsed.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**head, "choices": [choice]})

    await sse.emit(chunk({"role": "assistant", "content": ""}, None))
    await sse.emit(b": keep-alive\n\n")
    await sse.emit_pieces(lambda piece: chunk({"content": piece}, None))
    if sse.cut is not None:
        error = {"message": "The server had an error while streaming", "type": "server_error"}
        return await sse.end_after_fault(_sse({"error": error}))
    await sse.emit(chunk({}, "length" if truncated else "stop"))
    if parsed.include_usage:
        counts = None
        if tokens is not None:
            counts = {
                "prompt_tokens": tokens[0],
                "completion_tokens": tokens[1],
                "total_tokens": tokens[0] + tokens[1],
            }
        await sse.emit(_sse({**head, "choices": [], "usage": counts}))
    await sse.emit(_sse("[DONE]"))
    return await sse.end()


async def _stream_anthropic(
    sse: _SSE, parsed: _Parsed, n: int, truncated: bool, tokens: tuple[int, int] | None
) -> bool:
    """Anthropic's events (``tokens``: input and output counts, None: no usage)."""
    message: dict[str, Any] = {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": parsed.model,
        "stop_reason": None,
        "stop_sequence": None,
    }
    if tokens is not None:
        message["usage"] = {"input_tokens": tokens[0], "output_tokens": 1}
    await sse.emit(_sse({"type": "message_start", "message": message}, "message_start"))
    block = {"type": "text", "text": ""}
    start = {"type": "content_block_start", "index": 0, "content_block": block}
    await sse.emit(_sse(start, "content_block_start"))
    await sse.emit(_sse({"type": "ping"}, "ping"))

    def delta(piece: str) -> bytes:
        text = {"type": "text_delta", "text": piece}
        return _sse(
            {"type": "content_block_delta", "index": 0, "delta": text}, "content_block_delta"
        )

    await sse.emit_pieces(delta)
    if sse.cut is not None:
        overloaded = {"type": "overloaded_error", "message": "Overloaded"}
        return await sse.end_after_fault(_sse({"type": "error", "error": overloaded}, "error"))
    await sse.emit(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    final: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens" if truncated else "end_turn", "stop_sequence": None},
    }
    if tokens is not None:
        final["usage"] = {"output_tokens": tokens[1]}
    await sse.emit(_sse(final, "message_delta"))
    await sse.emit(_sse({"type": "message_stop"}, "message_stop"))
    return await sse.end()


async def _stream_gemini(
    sse: _SSE, parsed: _Parsed, n: int, truncated: bool, tokens: tuple[int, int] | None
) -> bool:
    """Gemini's ``streamGenerateContent?alt=sse``: one ``GenerateContentResponse`` per
    piece, the last with the finish reason and the usage (``tokens``; None: none)."""
    head = {"modelVersion": parsed.model, "responseId": f"resp-{n}"}

    def response(text: str, **candidate: Any) -> dict[str, Any]:
        content = {"role": "model", "parts": [{"text": text}]}
        return {"candidates": [{"content": content, "index": 0, **candidate}], **head}

    await sse.emit_pieces(lambda piece: _sse(response(piece)))
    if sse.cut is not None:
        error = {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}
        return await sse.end_after_fault(_sse({"error": error}))
    last = response("", finishReason="MAX_TOKENS" if truncated else "STOP")
    if tokens is not None:
        last["usageMetadata"] = {
            "promptTokenCount": tokens[0],
            "candidatesTokenCount": tokens[1],
            "totalTokenCount": tokens[0] + tokens[1],
        }
    await sse.emit(_sse(last))
    return await sse.end()


@contextmanager
def run_fake_server(*, record: bool = True) -> Iterator[FakeServer]:
    """Run a :class:`FakeServer` in a background thread with its own event loop.

    Usable from sync and async code alike. On exit the server closes its listener and
    every connection, and the thread is joined.

    Args:
        record: Keep every request in :attr:`FakeServer.requests`.

    Yields:
        The running server (see :attr:`FakeServer.url`).
    """
    server = FakeServer(record=record)
    with start_blocking_portal(backend="asyncio", name="fakeserver") as portal:
        portal.start_task(server.serve)
        try:
            yield server
        finally:
            portal.call(server.stop)


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground until interrupted (for subprocesses and benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--no-record", action="store_true", help="keep no request log")
    args = parser.parse_args(argv)
    server = FakeServer(record=not args.no_record, port=args.port)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            print(f"listening on {server.url}", flush=True)

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
