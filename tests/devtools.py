"""Headless Chromium for the page's tests: :class:`Browser` drives one page over the
DevTools protocol on a pipe (no Python dependency), :func:`parse` reads a dumped DOM,
and :class:`CuttingProxy` stands between the browser and the server to cut its
connections mid-stream, as a restarted load balancer or a flaky network does."""

from __future__ import annotations

import contextlib
import html.parser
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

WINDOW = (1200, 800)


def chromium_args(chromium: str, tmp: Path) -> list[str]:
    """Headless, offline and quiet, in a fresh profile."""
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / f'profile-{uuid.uuid4().hex[:8]}'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ]


_TRAMPOLINE = """
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for fd in sys.argv[1:3]:
    os.close(int(fd))
for target, fd in zip((3, 4), ends):
    os.dup2(fd, target)
    os.close(fd)
os.execvp(sys.argv[3], sys.argv[3:])
"""


class Browser:
    """A headless Chromium driven over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: the browser reads NUL-ended JSON commands on fd 3 and
    writes answers and events on fd 4), for what ``--dump-dom`` cannot do: wait until
    the page shows a state the live event stream brings."""

    def __init__(self, chromium: str, tmp: Path) -> None:
        child_in, self._to = os.pipe()
        self._from, child_out = os.pipe()
        # The browser wants the pipe on fds 3 and 4: a small exec trampoline moves it
        # there (via fds >= 10, so that neither end is closed by the other's move).
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TRAMPOLINE,
                str(child_in),
                str(child_out),
                *chromium_args(chromium, tmp),
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(child_in, child_out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._next = 0
        self._session: str | None = None

    def __enter__(self) -> Browser:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._to)
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._from)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        while True:  # events and other answers are skipped
            while b"\0" not in self._buffer:
                chunk = os.read(self._from, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, within_s: float = 60.0) -> Any:
        """Poll ``expression`` until it is truthy (a hang guard, not a timing test)."""
        deadline = time.monotonic() + within_s
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"never true: {expression}")
            time.sleep(0.05)
        return value


class _Dom(html.parser.HTMLParser):
    """The dumped DOM's elements as (tag, attributes, text directly inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}, []))
        if tag not in ("input", "meta", "br", "img", "line"):
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self.elements[self._open[-1]][2].append(data)

    def where(self, **attrs: str) -> list[tuple[str, dict[str, str], list[str]]]:
        return [e for e in self.elements if all(e[1].get(k) == v for k, v in attrs.items())]

    def text(self, **attrs: str) -> list[str]:
        return ["".join(e[2]).strip() for e in self.where(**attrs)]


def parse(dom: str) -> _Dom:
    parser = _Dom()
    parser.feed(dom)
    return parser


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 to ``target`` (``http://host:port``) whose
    :meth:`cut` closes every connection open through it (and, ``hold=True``, every new
    one until :meth:`release`: a server that is down); it keeps each request's first
    line, to see what the browser asked after a cut."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[str] = []
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._held = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self.cut()

    def cut(self, *, hold: bool = False) -> None:
        with self._lock:
            self._held = hold
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by its peer
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def release(self) -> None:
        with self._lock:
            self._held = False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                if self._held:
                    raise ConnectionRefusedError
                upstream = socket.create_connection(self._target)
            except OSError:  # held, or the server is down
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while chunk := source.recv(1 << 16):
                if requests:
                    self.requests += [
                        line.decode("latin-1")
                        for line in chunk.split(b"\r\n")
                        if line.startswith((b"GET ", b"POST "))
                    ]
                sink.sendall(chunk)
        except OSError:
            pass  # cut
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
