"""A store that fails under a run: nothing answered is lost while it can come back, the
session is marked honestly, and the CLI exits 1 with one line naming the database.

The failure is real: another connection holds SQLite's write lock (``BEGIN EXCLUSIVE``)
past the store's busy timeout, so every write the run makes fails with "database is
locked" until it lets go.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import yaml

import thinktank
from thinktank.errors import StoreError
from thinktank.events import Event, SessionFinished
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec
from thinktank.store import Store

from .conftest import REPO, SESSIONS

CHAIN = """
name: chain
steps:
  - {id: a, prompt: "first", models: [m]}
  - {id: x, prompt: "beside", models: [m]}
  - {id: b, prompt: "second {{ steps.a.output }}", models: [m], depends_on: [a]}
  - {id: c, prompt: "third {{ steps.b.output }}", models: [m], depends_on: [b]}
"""


class WatchedStore(Store):
    """A real store that notes when its writes fail (so a test can wait for that)."""

    failures: list[float]

    async def write(self, events: Sequence[Event]) -> None:
        try:
            await super().write(events)
        except StoreError:
            self.failures = [*getattr(self, "failures", []), time.monotonic()]
            raise


class Locker:
    """Another connection that takes the database's write lock and gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def session_written(self) -> bool:
        with sqlite3.connect(self.path) as conn:
            return bool(conn.execute("SELECT count(*) FROM thinktank_sessions").fetchone()[0])

    def lock(self) -> None:
        """Take the lock, waiting for a write in progress (call it in a worker thread:
        that write may need the event loop to finish)."""
        self.conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=30, check_same_thread=False
        )
        self.conn.execute("BEGIN EXCLUSIVE")

    async def lock_now(self) -> None:
        await anyio.to_thread.run_sync(self.lock)

    def release(self) -> None:
        if self.conn is not None:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")
            self.conn.close()
            self.conn = None


class StepModel:
    """Answers every step; ``before[step]`` is awaited first (the test's choreography)."""

    name = "m"
    provider = "test"

    def __init__(self, before: dict[str, object]) -> None:
        self.before = before
        self.asked: list[str] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.asked.append(request.step_id)
        hook = self.before.get(request.step_id)
        if hook is not None:
            await hook()  # type: ignore[operator]
        return ModelResponse(
            content=f"answer {request.step_id}", model="m", input_tokens=2, output_tokens=3
        )


def _chain() -> SessionSpec:
    return parse_session(yaml.safe_load(CHAIN), known_models=["m"])


async def _until(condition: object) -> None:
    # Polled: the state is another connection's view of the file, or the store's
    # failures, which nothing signals.
    while not condition():  # type: ignore[operator]  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def _rows(store: Store, session_id: str) -> tuple[str, str | None, dict[str, str], int]:
    stored = await store.get_session(session_id)
    statuses = {step.step_key: step.status for step in stored.steps}
    calls = sum(len(step.calls) for step in stored.steps)
    return stored.status, stored.error, statuses, calls


async def test_a_database_locked_for_a_while_loses_nothing(tmp_path: Path) -> None:
    """Writes that fail while another connection holds the lock are retried; once it is
    released every event is written and the session completes as if nothing happened."""
    path = tmp_path / "tt.db"
    locker = Locker(path)
    store = await WatchedStore.open(str(path), busy_timeout_s=0.05, write_retry_s=600)

    async def lock_after_the_session_row() -> None:
        await _until(locker.session_written)
        await locker.lock_now()

    async def wait_for_a_failed_write() -> None:
        await _until(lambda: getattr(store, "failures", []))
        locker.release()

    model = StepModel({"a": lock_after_the_session_row, "b": wait_for_a_failed_write})
    emitted: list[Event] = []
    try:
        result = await thinktank.run(
            _chain(), store=store, models={"m": model}, on_event=emitted.append
        )
        assert result.status == "completed"
        assert store.failures
        status, error, steps, calls = await _rows(store, result.session_id)
        assert (status, error, calls) == ("completed", None, 4)
        assert set(steps.values()) == {"completed"}
        assert len(await store.events_of(result.session_id)) == len(emitted)
    finally:
        locker.release()
        await store.close()


async def test_a_store_down_past_the_retry_time_stops_the_run_and_marks_it(
    tmp_path: Path,
) -> None:
    """Past write_retry_s the run starts no new step; the step in flight finishes; when the
    lock is gone at the end, the answered call is stored and the session is marked
    partial with the store error, not left running."""
    path = tmp_path / "tt.db"
    locker = Locker(path)
    retry_s = 0.2
    store = await WatchedStore.open(str(path), busy_timeout_s=0.02, write_retry_s=retry_s)

    def gave_up() -> bool:
        # The recorder stops the run right after the first failure that ends past
        # write_retry_s from the first one (no await in between), and retries on: a
        # failure seen ending well past that time means the run has been stopped.
        failures = getattr(store, "failures", [])
        return bool(failures) and failures[-1] - failures[0] >= retry_s + 0.05

    async def lock_then_outlast_the_retries() -> None:
        await _until(locker.session_written)
        await locker.lock_now()
        await _until(gave_up)

    def release_at_the_end(event: Event) -> None:
        if isinstance(event, SessionFinished):
            locker.release()

    async def finish_once_locked() -> None:
        # x's answer is what the store fails to write while a is in flight.
        await _until(lambda: locker.conn is not None)

    model = StepModel({"a": lock_then_outlast_the_retries, "x": finish_once_locked})
    try:
        result = await thinktank.run(
            _chain(), store=store, models={"m": model}, on_event=release_at_the_end
        )
        assert sorted(model.asked) == ["a", "x"]
        assert result.status == "partial"
        status, error, steps, calls = await _rows(store, result.session_id)
        assert status == "partial" and calls == 2
        assert error is not None
        assert error.startswith(f"store failure: cannot write to {path}: database is locked"), error
        assert steps == {"a": "completed", "x": "completed", "b": "skipped", "c": "skipped"}
        stored = await store.get_session(result.session_id)
        assert stored.step("a").calls[0].response == "answer a"
        assert stored.step("x").calls[0].response == "answer x"
    finally:
        locker.release()
        await store.close()


def test_cli_exits_1_naming_the_database_when_it_stays_locked(tmp_path: Path) -> None:
    """A database locked for the whole run: exit 1 (not 2), one line naming the file and
    the error, no traceback; the database is intact afterwards. The run writes and leases
    its session row before any call, so it stops there: nothing was paid, nothing lost."""
    path = tmp_path / "tt.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    diamond = str(SESSIONS / "diamond.yaml")

    def thinktank_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "thinktank", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    assert thinktank_cli("run", diamond, "--db", str(path), "--no-progress").returncode == 0
    locker = Locker(path)
    locker.lock()
    try:
        done = thinktank_cli(
            "run", diamond, "--db", f"sqlite:///{path}?timeout=0.1", "--no-progress"
        )
    finally:
        locker.release()
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"error: cannot write to {path}: database is locked")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT status FROM thinktank_sessions").fetchall() == [("completed",)]
