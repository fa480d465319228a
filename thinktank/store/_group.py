"""Group commit: concurrent writers share write transactions.

Every running session writes its events in batches of its own, a few per session, and
before this each batch was a transaction: on SQLite one writer at a time takes the
database's write lock, so a hundred sessions in flight queued a hundred transactions
(``BEGIN IMMEDIATE``, the statements, a commit, and the driver thread's round trips
for each). Here a writer that finds the store busy queues its batch; whoever takes the
store's write lock next writes every batch queued by then in one transaction, and each
writer learns the outcome of its own batch.

One batch's failure must not fail the others: when a shared transaction fails, the
batches in it are written again one transaction each, and only the failing one reports
the error. A writer cancelled before anyone took its batch withdraws it; a writer
cancelled while writing hands the batches it took back to the queue, for the next
writer (their owners are waiting for the lock), and re-raises its cancellation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from thinktank.events import Event

__all__ = ["GroupCommit", "Job"]


@dataclass(eq=False)
class Job:
    """One writer's batch, and what became of it."""

    events: Sequence[Event]
    claim: tuple[str, str, float] | None = None
    """Lease (session id, to worker id, for seconds): a session the batch inserts."""
    release: tuple[str, str] | None = None
    """Give up the lease of (session id, worker id) if that worker holds it."""
    released: bool = False
    """Whether ``release`` found the lease held by its worker."""
    done: bool = False
    error: Exception | None = field(default=None, repr=False)


Commit = Callable[[list[Job]], Awaitable[None]]
"""Write these jobs in one transaction (all or none), or raise."""


class GroupCommit:
    """Jobs queued by concurrent writers, written by whoever holds ``lock`` next.

    ``failures`` are the errors that belong to a job (its own batch could not be
    written); anything else is a fault of the writer and propagates from it, the jobs
    it took going back to the queue.
    """

    def __init__(
        self, lock: anyio.Lock, commit: Commit, failures: tuple[type[Exception], ...]
    ) -> None:
        self._lock = lock
        self._commit = commit
        self._failures = failures
        self._queued: list[Job] = []

    async def submit(self, job: Job) -> None:
        """Write ``job`` (with whatever else is queued); raise its own error if it failed."""
        self._queued.append(job)
        try:
            async with self._lock:
                if not job.done:
                    await self._write_queued()
        finally:
            if not job.done and job in self._queued:
                self._queued.remove(job)  # cancelled before any writer took it
        if job.error is not None:
            raise job.error

    async def _write_queued(self) -> None:
        jobs, self._queued = self._queued, []
        try:
            try:
                await self._commit(jobs)
            except self._failures as exc:
                if len(jobs) == 1:
                    jobs[0].error = exc
                else:
                    await self._one_by_one(jobs)
        except BaseException:
            # Cancelled: what was not written goes back for the next writer.
            self._queued[:0] = [job for job in jobs if not job.done]
            raise
        for job in jobs:
            job.done = True

    async def _one_by_one(self, jobs: list[Job]) -> None:
        """After a shared transaction failed: each job in a transaction of its own."""
        for job in jobs:
            try:
                await self._commit([job])
            except self._failures as exc:
                job.error = exc
            job.done = True
