"""Real ``thinktank worker`` processes for the pool's tests.

:func:`start_worker` runs the command as a user would (``python -m thinktank worker``
from the repository root, the given database and environment, its output in a log
file) and waits until it says it started. :func:`workers` starts several and stops them
all at the end (SIGTERM, then SIGKILL after ``stop_s``), whatever the test did to them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["WorkerProcess", "fan_session", "start_worker", "workers"]

REPO = Path(__file__).resolve().parent.parent


def fan_session(models: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pool's usual session (the issue's shape): models ``a``, ``b`` and ``c`` asked
    at once, merged by the judge ``j``; ``models`` defines them in the session (else a
    thinktank.toml must)."""
    data: dict[str, Any] = {
        "name": "fan",
        "inputs": {"q": {"type": "string"}},
        "steps": [
            {
                "id": "s",
                "prompt": "{{ inputs.q }}",
                "models": ["a", "b", "c"],
                "mode": "all",
                "synthesis": "judge",
                "synthesizer": "j",
                "consensus_threshold": 0.0,
            }
        ],
    }
    if models is not None:
        data["models"] = models
    return data


@dataclass
class WorkerProcess:
    """A running worker: its process, name and log."""

    proc: subprocess.Popen[bytes]
    name: str
    log: Path

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def signal(self, signum: int) -> None:
        """Send ``signum`` (SIGKILL, SIGTERM) unless it has exited."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 60.0, *, signalled: bool = False) -> int:
        """SIGTERM (a drain; not again when ``signalled``), then SIGKILL after
        ``timeout_s``; the exit status."""
        if not signalled:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_worker(
    db: str | Path,
    name: str,
    *args: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    ready_s: float = 60.0,
) -> WorkerProcess:
    """Start ``thinktank worker --db DB --name NAME ARGS...`` and wait for its
    "started" line (the process is stopped and AssertionError raised if it exits or
    takes longer than ``ready_s``)."""
    log = log_dir / f"worker-{name}.log"
    env_all = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "thinktank", "worker", "--db", str(db), "--name", name, *args],
            cwd=REPO,
            env=env_all,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(proc, name, log)
    deadline = time.monotonic() + ready_s
    while " started (" not in worker.output():
        if proc.poll() is not None or time.monotonic() > deadline:
            worker.stop(5)
            raise AssertionError(f"worker {name} did not start:\n{worker.output()}")
        time.sleep(0.05)
    return worker


@contextmanager
def workers(
    db: str | Path,
    names: Sequence[str],
    *args: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    stop_s: float = 60.0,
) -> Iterator[list[WorkerProcess]]:
    """Start one worker per name (each with ``args``); stop every one at the end."""
    started: list[WorkerProcess] = []
    try:
        for name in names:
            started.append(start_worker(db, name, *args, log_dir=log_dir, env=env))
        yield started
    finally:
        for worker in started:
            worker.signal(signal.SIGTERM)
        for worker in started:
            worker.stop(stop_s, signalled=True)
