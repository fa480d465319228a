"""A real ``thinktank serve`` process on 127.0.0.1 for the server's tests.

:func:`serve` starts the command as a user would (uvicorn, a free port, the given
database and environment), waits until ``/healthz`` answers, yields the base URL and
stops the process (SIGTERM, then SIGKILL) at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx

__all__ = ["free_port", "serve", "serve_process"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(
    db: str | Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    ready_s: float = 30.0,
    log: Path | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Run ``thinktank serve --db DB --port P ARGS...`` and yield ``http://127.0.0.1:P``
    (P: ``port``, or a free one); its output goes to ``log`` (default: beside a SQLite
    DB)."""
    with serve_process(db, *args, env=env, cwd=cwd, ready_s=ready_s, log=log, port=port) as (
        url,
        _,
    ):
        yield url


@contextmanager
def serve_process(
    db: str | Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    ready_s: float = 30.0,
    log: Path | None = None,
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`serve`, yielding the process too (to signal it)."""
    port = port or free_port()
    command: Sequence[str] = [
        sys.executable,
        "-m",
        "thinktank",
        "serve",
        "--db",
        str(db),
        "--port",
        str(port),
        *args,
    ]
    # Beside a SQLite file; in the working directory for a database URL.
    where = str(db) if "://" not in str(db) else str(Path(cwd or ".") / "db")
    log = log or Path(where + f".serve-{port}.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env={**os.environ, **(env or {})}, cwd=cwd, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"thinktank serve exited {proc.returncode}: {log.read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"thinktank serve not ready in {ready_s} s: {log.read_text()}")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
