"""The event recorder: a run's events written to the store, in batches, bounded.

Events queue up as they happen (``emit`` never waits: the engine emits from plain
functions) and one task writes what has queued as one transaction, shielded from
cancellation so no half-written batch exists. A crash or Ctrl-C loses nothing that
finished: after an interruption the rest of the queue is written before the
cancellation propagates.

The backlog is bounded: when ``limit`` events are waiting to be written (the store is
behind), :meth:`Recorder.room` makes the run wait before it starts another step, so a
slow store slows the run instead of filling memory. Only the steps already in flight
add to the backlog past ``limit``, a few events each.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
from anyio.abc import TaskStatus

from thinktank.errors import StoreError
from thinktank.events import Event
from thinktank.store import Store

__all__ = ["MAX_UNWRITTEN", "Recorder"]

MAX_UNWRITTEN: Final = 4096
"""Events waiting for the store past which no new step starts until it catches up."""


class Recorder:
    """Writes queued events to the store, a batch per transaction.

    A write that fails (the database locked past its busy timeout, a full disk, a
    dropped connection) loses nothing: its events stay in memory, in order, and go
    with the next attempt, retried with backoff (up to every 2 s) while the session
    runs. The session runs on meanwhile, up to ``limit`` unwritten events: its calls
    are paid for, and a store back within ``store.write_retry_s`` gets all of them.
    Past that the recorder calls ``on_give_up`` once (the scheduler's ``stop``: no new
    step starts, the calls in flight finish, so no more money goes into answers that
    may not be kept) and stops holding steps back. When the session ends it still
    tries until ``write_retry_s`` is out: a store writable again by then gets the
    session marked ``partial`` or ``failed`` with the store error. ``pending`` holds
    what was never written.
    """

    def __init__(
        self, store: Store, on_give_up: Callable[[str], None], limit: int | None = None
    ) -> None:
        self.store = store
        self.limit = MAX_UNWRITTEN if limit is None else limit
        """Unwritten events past which no new step starts (default ``MAX_UNWRITTEN``)."""
        self.pending: list[Event] = []
        """Events taken from the queue and not written yet, in emission order."""
        self.error: StoreError | None = None
        """The last write failure, while ``pending`` has not been written since."""
        self._on_give_up = on_give_up
        self._queue: deque[Event] = deque()
        self._arrived = anyio.Event()
        self._written = anyio.Event()
        self._failing_since: float | None = None
        self._gave_up = False
        self._closed = False

    def emit(self, event: Event) -> None:
        """Queue ``event`` for the store (never waits)."""
        self._queue.append(event)
        self._arrived.set()

    def close(self) -> None:
        """No more events: ``run`` writes what is queued and returns."""
        self._closed = True
        self._arrived.set()

    @property
    def unwritten(self) -> int:
        """Events emitted and not written yet."""
        return len(self._queue) + len(self.pending)

    async def room(self) -> None:
        """Wait until the backlog is under ``limit`` (or the recorder gave up)."""
        while len(self._queue) + len(self.pending) >= self.limit and not self._gave_up:
            await self._written.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write batches as events queue up, until ``close`` and the queue is empty."""
        task_status.started()
        while True:
            await self._arrived.wait()
            self._arrived = anyio.Event()
            self._take_queued()
            await self._flush()
            if self._closed and not self._queue:
                return

    async def drain(self) -> None:
        """Write what is still pending or queued, once (after a cancellation)."""
        self._take_queued()
        if self.pending:
            try:
                await self._write(self.pending)
            except StoreError as exc:
                self.error = exc
            else:
                self.pending, self.error = [], None

    def _take_queued(self) -> None:
        self.pending.extend(self._queue)
        self._queue.clear()

    async def _flush(self) -> None:
        """Write ``pending``, retrying with backoff until it is written, or the session
        has ended and the retry time is out; stop the session once that time is out."""
        delay = 0.05
        while self.pending:
            try:
                await self._write(self.pending)
            except StoreError as exc:
                self.error = exc
                if self._out_of_time(exc) and self._closed:
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._take_queued()
            else:
                self.pending, self.error, self._failing_since = [], None, None
                self._wake_waiters()

    def _out_of_time(self, exc: StoreError) -> bool:
        """True once writes have failed for ``write_retry_s``; then give up (once)."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        out = now - self._failing_since >= self.store.write_retry_s
        if out and not self._gave_up:
            self._gave_up = True
            # Steps held back for room go on now: the stop keeps new ones from starting.
            self._on_give_up(f"store failure: {exc}")
            self._wake_waiters()
        return out

    def _wake_waiters(self) -> None:
        self._written.set()
        self._written = anyio.Event()

    async def _write(self, batch: list[Event]) -> None:
        with anyio.CancelScope(shield=True):
            await self.store.write(batch)
