"""Sessions run by id: queue a session, run a queued one, and the executor seam.

A caller that wants a session run somewhere, by something else, hands over its id
only. :func:`enqueue` writes the session to the store before anything runs it (status
``queued``: spec, inputs and provenance in the row, no lease, no steps).
:func:`run_queued` is the one function on the executing side: it claims the session's
lease (of two workers asking at once, one gets it and the other is told so), then
starts the session through ``engine.runner.execute`` under the id it was queued with,
or, when a run of it was interrupted or killed, continues it as ``replay.resume``
does (finished calls are served from the store, not sent again).

:class:`SessionExecutor` is the seam between whoever submits sessions and whatever
runs them; :class:`LocalExecutor` runs them in a task group of this process, at most
``max_sessions`` at once. Another implementation (a queue that worker processes read)
keeps the same three verbs and ends in :func:`run_queued` too.

This module sits with the entry points (not in ``engine/``) because continuing an
interrupted session is ``replay.resume``'s job, and the engine does not import the
entry points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskGroup

from thinktank.engine.restart import Restart
from thinktank.engine.result import SessionResult, result_of
from thinktank.engine.runner import (
    check_session,
    execute,
    lease_ttl,
    new_worker_id,
    release_lease,
)
from thinktank.errors import InputError, SpecError, StoreError, UsageError
from thinktank.events import Event
from thinktank.providers.base import ModelClient
from thinktank.providers.http import AsyncClient
from thinktank.replay import resume
from thinktank.session.spec import SessionSpec
from thinktank.store import Store, StoredSession

__all__ = ["LocalExecutor", "QueuedRun", "SessionExecutor", "enqueue", "run_queued"]

Listener = Callable[[Event], None]

FINISHED: frozenset[str] = frozenset({"completed", "partial", "failed"})
"""Statuses of a session that ended by itself: :func:`run_queued` does not run it again
(an ``interrupted`` one, whose run was cancelled or drained, is continued)."""


async def enqueue(
    spec: SessionSpec,
    *,
    store: Store,
    inputs: Mapping[str, Any] | None = None,
    models: Mapping[str, ModelClient] | None = None,
    source: str | None = None,
    key_id: str | None = None,
    request_id: str | None = None,
    queue: str | None = None,
) -> str:
    """Check a session as ``run`` would and write it as ``queued``; its id.

    Nothing runs it: :func:`run_queued` does, here or in another process on the same
    database.

    Args:
        spec: The session.
        store: Where it is written.
        inputs: Its inputs (defaults filled in and checked now).
        models: Model clients by name, as for ``run`` (only checked here: a worker
            that runs the session passes its own).
        source: The session file, when it came from one.
        key_id: The API key whose request made it.
        request_id: The ``X-Request-Id`` of that request.
        queue: The queue it waits on.

    Raises:
        SpecErrors: the spec has problems; nothing is written.
        InputError: the inputs do not match the spec's; nothing is written.
        StoreError: the database could not be written.
    """
    values = check_session(spec, inputs=inputs, models=models, source=source)
    return await store.enqueue_session(
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        inputs=values,
        parallel_execution_config=spec.parallel_execution_wire(),
        source=source,
        key_id=key_id,
        request_id=request_id,
        queue=queue,
    )


@dataclass(frozen=True, kw_only=True)
class QueuedRun:
    """What :func:`run_queued` did with a session."""

    session_id: str
    """The session."""
    how: Literal["started", "resumed", "finished", "busy"]
    """``started``: it was queued and this call ran it; ``resumed``: a run of it had
    been interrupted or killed and this call finished it; ``finished``: it had already
    ended, nothing ran; ``busy``: another worker holds it (it runs there), nothing ran."""
    result: SessionResult | None
    """How the session ended (None only when ``busy``)."""
    holder: str | None = None
    """``busy``: the worker that holds the session's lease, if it is still held."""


async def run_queued(
    session_id: str,
    *,
    store: Store,
    models: Mapping[str, ModelClient] | None = None,
    on_event: Listener | None = None,
    http: AsyncClient | None = None,
    worker_id: str | None = None,
    lease_ttl_s: float | None = None,
) -> QueuedRun:
    """Run a stored session to its end, unless another worker runs it.

    The session's lease is claimed first, atomically (``Store.claim_session``): of
    several callers at once, in any processes, one runs it and the others get ``busy``.
    Under the lease: a ``queued`` session starts through ``engine.runner.execute`` with
    its own id (its first event fills the queued row); a ``running`` one (its worker
    died and its lease expired) or an ``interrupted`` one is continued as
    ``replay.resume`` continues it; a finished one is returned as stored. So a worker
    that recovers sessions calls this one function for each.

    A queued session that can no longer start (its spec names a model this worker
    does not know) ends ``failed`` with the reason, and the error is raised.

    Args:
        session_id: The session's full id.
        store: Where it is stored.
        models: Model clients by name, added to (or replacing) the session's own.
        on_event: Called with every event of the run.
        http: An HTTP client for the providers (kept open).
        worker_id: This worker's lease id (default: host, process and a random part).
        lease_ttl_s: How long the lease lasts unless renewed (default
            ``$THINKTANK_LEASE_TTL`` or 30 s).

    Raises:
        UnknownSessionError: no session has that id.
        SpecError, InputError: a queued session cannot start (it is marked failed).
        StoreError: the database could not be read or written.
    """
    ttl = lease_ttl(lease_ttl_s)
    worker = worker_id or new_worker_id()
    # The claim is inside the try: a cancellation that lands as the claim commits must
    # still give the lease up (a release by a worker that does not hold it is a no-op).
    try:
        if not await store.claim_session(session_id, worker_id=worker, ttl_s=ttl):
            owner = await store.lease_of(session_id)
            holder = owner[0] if owner else None
            return QueuedRun(session_id=session_id, how="busy", result=None, holder=holder)
        stored = await store.get_session(session_id)  # read under the lease
        if stored.status in FINISHED or _dropped(stored):
            return QueuedRun(session_id=session_id, how="finished", result=result_of(stored))
        if stored.status != "queued":
            # resume claims again as the same worker (a renewal) and releases at the end.
            result = await resume(
                session_id,
                store=store,
                models=models,
                on_event=on_event,
                worker_id=worker,
                lease_ttl_s=ttl,
            )
            return QueuedRun(session_id=session_id, how="resumed", result=result)
        result = await _start(stored, store, models, on_event, http, (worker, ttl))
        return QueuedRun(session_id=session_id, how="started", result=result)
    finally:
        await release_lease(store, session_id, worker)


def _dropped(stored: StoredSession) -> bool:
    """Whether the session was ended before it ever started (``Store.drop_queued``: a
    cancel while queued): ``interrupted`` with no steps, since the first event of any
    run writes its steps. It is not run: its cancel stands."""
    return stored.status == "interrupted" and not stored.steps


async def _start(
    stored: StoredSession,
    store: Store,
    models: Mapping[str, ModelClient] | None,
    on_event: Listener | None,
    http: AsyncClient | None,
    lease: tuple[str, float],
) -> SessionResult:
    """Run a queued session under ``lease``; a spec that cannot start fails it."""
    try:
        return await execute(
            SessionSpec.model_validate(stored.spec),
            inputs=stored.inputs,
            store=store,
            models=models,
            on_event=on_event,
            source=stored.source,
            http=http,
            restart=Restart(session_id=stored.id, lease=lease),
        )
    except (SpecError, InputError) as exc:
        # Nothing was written (bad input raises before the store is touched): end the
        # row, or every worker would pick it up and fail again. Released first, since
        # only an unclaimed queued session can be ended.
        with anyio.CancelScope(shield=True):
            await store.release(stored.id, worker_id=lease[0])
            await store.drop_queued(stored.id, reason=f"cannot start: {exc}", status="failed")
        raise


class SessionExecutor(Protocol):
    """Runs sessions given to it; whoever submits knows them by id only."""

    async def submit(
        self,
        spec: SessionSpec,
        *,
        inputs: Mapping[str, Any] | None = None,
        source: str | None = None,
        key_id: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a session to be run; its id (stored before this returns)."""
        ...

    async def wait(self, session_id: str) -> SessionResult:
        """How a submitted session ended, once it has."""
        ...

    async def cancel(self, session_id: str) -> None:
        """Stop a submitted session: one not started never starts, a running one ends
        ``interrupted``; one that ended is left as it is."""
        ...


@dataclass
class _Job:
    """One submitted session in a :class:`LocalExecutor`."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    run: QueuedRun | None = None
    error: Exception | None = None


class LocalExecutor:
    """A :class:`SessionExecutor` that runs sessions in a task group of this process.

    ``submit`` writes the session as queued (:func:`enqueue`) and starts
    :func:`run_queued` of it in the background, at most ``max_sessions`` at once (the
    others wait, still ``queued`` in the store). Use it as an async context manager:
    leaving the block waits for every submitted session to end.

    Example::

        async with await Store.open(url) as store, LocalExecutor(store=store) as sessions:
            sid = await sessions.submit(spec, inputs={"q": "..."})
            result = await sessions.wait(sid)
    """

    def __init__(
        self,
        *,
        store: Store,
        models: Mapping[str, ModelClient] | None = None,
        http: AsyncClient | None = None,
        max_sessions: int | None = None,
        lease_ttl_s: float | None = None,
        on_event: Listener | None = None,
    ) -> None:
        """Run on ``store`` with ``models`` (as ``run``'s), ``http`` for the providers,
        at most ``max_sessions`` sessions at once (None: no limit); ``on_event`` gets
        every event of every session."""
        if max_sessions is not None and max_sessions < 1:
            raise UsageError(f"max_sessions must be at least 1, not {max_sessions!r}")
        self._store = store
        self._models = models
        self._http = http
        self._lease_ttl_s = lease_ttl(lease_ttl_s)
        self._on_event = on_event
        self._limiter = anyio.CapacityLimiter(max_sessions) if max_sessions else None
        self._jobs: dict[str, _Job] = {}
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> LocalExecutor:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    async def submit(
        self,
        spec: SessionSpec,
        *,
        inputs: Mapping[str, Any] | None = None,
        source: str | None = None,
        key_id: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a session and start running it in the background; its id.

        Raises:
            UsageError: the executor is not open (outside its ``async with``).
            SpecError, InputError: the session or its inputs are invalid (nothing is
                written).
            StoreError: the database could not be written.
        """
        if self._tg is None:
            raise UsageError("LocalExecutor.submit: use the executor in `async with` first")
        sid = await enqueue(
            spec,
            store=self._store,
            inputs=inputs,
            models=self._models,
            source=source,
            key_id=key_id,
            request_id=request_id,
        )
        job = self._jobs[sid] = _Job()
        self._tg.start_soon(self._run, sid, job)
        return sid

    async def _run(self, sid: str, job: _Job) -> None:
        try:
            with job.scope:
                await self._run_limited(sid, job)
        except Exception as exc:  # noqa: BLE001 - raised by wait(), not in the task group
            job.error = exc
        finally:
            if job.scope.cancelled_caught:
                # Cancelled before its first event was written (waiting for room, or
                # while claiming): the row would stay queued for ever. A session that
                # started is not queued any more, and this changes nothing.
                with anyio.CancelScope(shield=True):
                    try:
                        await self._store.drop_queued(sid, reason="cancelled before it started")
                    except StoreError as exc:
                        job.error = exc
            job.done.set()

    async def _run_limited(self, sid: str, job: _Job) -> None:
        async with self._limiter or contextlib.nullcontext():
            job.run = await run_queued(
                sid,
                store=self._store,
                models=self._models,
                on_event=self._on_event,
                http=self._http,
                lease_ttl_s=self._lease_ttl_s,
            )

    def _job(self, session_id: str) -> _Job:
        try:
            return self._jobs[session_id]
        except KeyError:
            raise UsageError(f"session {session_id} was not submitted to this executor") from None

    async def wait(self, session_id: str) -> SessionResult:
        """How a submitted session ended, once it has (a cancelled one: ``interrupted``).

        Raises:
            UsageError: the session was not submitted here, or another worker runs it.
            ThinkTankError: what running it raised.
        """
        job = self._job(session_id)
        await job.done.wait()
        if job.error is not None:
            raise job.error
        run = job.run
        if run is not None and run.result is not None:
            return run.result
        if run is not None and run.how == "busy":
            raise UsageError(f"session {session_id} is run by another worker ({run.holder})")
        # Cancelled: the run recorded how far it got.
        return result_of(await self._store.get_session(session_id))

    async def cancel(self, session_id: str) -> None:
        """Stop a submitted session (see :meth:`SessionExecutor.cancel`).

        Raises:
            UsageError: the session was not submitted here.
        """
        self._job(session_id).scope.cancel()
