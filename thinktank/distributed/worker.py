"""``thinktank worker``: one process of the pool that runs queued sessions on DBOS.

Importing this module registers the session workflow with DBOS (decorators fill DBOS's
module-level registry), so only the worker command imports it; :func:`serve_worker`
constructs and launches DBOS, which then runs dequeued workflows on this process's
event loop.

**The workflow** (:data:`~thinktank.distributed.WORKFLOW`) takes the session id and
runs one step, :func:`run_session`, which calls ``thinktank.executor.run_queued``: it
starts a queued session, continues one a dead worker left (finished calls are served
from the store), or returns one that already ended. The step returns the session's
final status only. So the workflow body does no I/O of its own and is deterministic;
a workflow recovered after its step's output was recorded does not run the step again.

**Liveness.** The worker's row in ``thinktank_workers`` is renewed every third of
``ttl_s``; the sessions it runs hold store leases of the same length, so by the time a
worker counts as dead, so do its leases. Every beat also claims dead workers' rows
(one conditional UPDATE: exactly one live worker gets each), puts the dead worker's
pending workflows back on the queue (DBOS's public ``list_workflows`` and
``resume_workflow``: self-hosted DBOS recovers another executor's work only when asked)
and frees the call slots the dead process held. A worker whose own beat finds its row
claimed was declared dead while it still ran (it lost the database for longer than its
time to live): its sessions are being finished elsewhere, so it exits at once
(:data:`EXIT_FENCED`).

**Sessions left queued.** A submitter writes a session to the store, then enqueues it
on DBOS's queue: two transactions (on SQLite, two files). One killed between them
leaves a session ``queued`` that nothing would ever run, and a canceller killed between
cancelling the workflow and ending the row leaves one that looks queued for ever. Every
:data:`SWEEP_S` each worker reads the sessions queued for more than
:data:`STRANDED_AFTER_S` (an index on status and ``queued_at``), enqueues those DBOS has
no workflow for (the session id is the workflow id, so DBOS starts each once whoever
enqueues it) and ends those whose workflow was cancelled.

**Cancellation.** A session cancelled through the store (``POST
/v1/sessions/{id}/cancel`` on any server) is seen within :data:`CANCEL_POLL_S` and stops,
``interrupted``; a workflow cancelled in DBOS (``DistributedExecutor.cancel``) stops its
step (a preemptible step) with the same result.

**Drain.** SIGTERM (or SIGINT) stops dequeuing, waits up to ``drain_s`` for the
sessions running here (the heartbeat goes on, so nobody recovers them), then stops the
rest, which record ``interrupted`` and release their leases, and hands them back: the
worker marks itself dead so that a live worker recovers them at its next beat.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio
from dbos import DBOS, DBOSConfig

from thinktank.distributed import APP_NAME, APP_VERSION, QUEUE, WORKFLOW, system_database_url
from thinktank.distributed.executor import open_client, queue_options
from thinktank.errors import InputError, SpecError, StoreError, UnknownSessionError
from thinktank.executor import run_queued
from thinktank.providers.http import AsyncClient, create_http_client
from thinktank.store import Store, default_db_url, normalize_db_url
from thinktank.store._workers import DeadWorker

if TYPE_CHECKING:
    from dbos import DBOSClient

__all__ = [
    "CANCEL_POLL_S",
    "DEFAULT_DRAIN_S",
    "DEFAULT_TTL_S",
    "EXIT_FENCED",
    "STRANDED_AFTER_S",
    "SWEEP_S",
    "Worker",
    "run_session",
    "serve_worker",
    "session_workflow",
]

DEFAULT_TTL_S = 10.0
"""How long a worker (and a session it runs) counts as alive after its last beat."""
DEFAULT_DRAIN_S = 30.0
"""How long a drained worker waits for its sessions before handing them back."""
CANCEL_POLL_S = 1.0
"""How often a worker reads cancel requests for the sessions it runs."""
QUEUE_POLL_S = 0.25
"""How often DBOS looks for queued sessions by default (the most a session waits for a
free worker that could take it); ``thinktank worker --poll-interval``."""
EXIT_FENCED = 4
"""The exit status of a worker that found itself declared dead."""
STRANDED_AFTER_S = 60.0
"""How long a session may wait ``queued`` in the store with no workflow on DBOS's queue
before a worker enqueues it (its submitter died between the two writes). Far longer
than a submission takes, so a live submitter is never raced."""
SWEEP_S = 30.0
"""How often each worker looks for sessions left queued."""
SWEEP_BATCH = 500
"""The most sessions one look puts back (the rest wait for the next)."""

Say = Callable[[str], None]

_worker: Worker | None = None
"""This process's worker (DBOS itself is one per process)."""


@DBOS.step(name="thinktank.run_session", preemptible=True)
async def run_session(session_id: str) -> str:
    """Run the session to its end on this worker; its final status."""
    if _worker is None:
        raise RuntimeError("no thinktank worker runs in this process")
    return await _worker.run_session(session_id)


@DBOS.workflow(name=WORKFLOW)
async def session_workflow(session_id: str) -> str:
    """One queued session: a single step, so recovery replays nothing but it."""
    return await run_session(session_id)


@dataclass(eq=False)
class Worker:
    """The state of one worker process: its identity, its sessions, its liveness."""

    store: Store
    name: str
    concurrency: int
    ttl_s: float = DEFAULT_TTL_S
    say: Say = print
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    executor_id: str = ""
    http: AsyncClient = field(default_factory=lambda: create_http_client(max_keepalive=100))
    scopes: dict[str, anyio.CancelScope] = field(default_factory=dict)
    finished: int = 0
    draining: bool = False
    handing_back: bool = False
    parked: set[str] = field(default_factory=set)
    """Sessions stopped by a drain, whose steps wait for the process to exit."""
    sysdb: str = ""
    """DBOS's system database (where a session left queued is enqueued again)."""
    _parking: anyio.Event = field(default_factory=anyio.Event)
    _client: DBOSClient | None = None

    def __post_init__(self) -> None:
        if not self.executor_id:
            # Never reused: a restarted worker must not look like the row that died.
            self.executor_id = f"{self.name}:{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"

    async def run_session(self, session_id: str) -> str:
        """Run (or continue, or look up) one session under this worker's lease.

        A store that fails (the database restarts) is retried with backoff: the next
        try resumes where the store says the session is. A session that another
        worker's lease still holds (a dead worker's, not yet lapsed) is waited for.
        """
        backoff = 0.5
        try:
            while True:
                scope = self.scopes[session_id] = anyio.CancelScope()
                with scope:
                    try:
                        run = await run_queued(
                            session_id,
                            store=self.store,
                            http=self.http,
                            worker_id=self.executor_id,
                            lease_ttl_s=self.ttl_s,
                        )
                    except (SpecError, InputError) as exc:
                        self.say(f"session {session_id} cannot start: {exc}")
                        return "failed"
                    except UnknownSessionError:
                        self.say(f"session {session_id} is not in the store (deleted?)")
                        return "unknown"
                    except Exception as exc:
                        # A run whose store fails mid-step raises its StoreError in a
                        # group (from the step's task group): the same retry serves it.
                        failure = _store_failure(exc)
                        if failure is None:
                            raise
                        self.say(f"session {session_id}: {failure}; again in {backoff:.1f} s")
                        await anyio.sleep(backoff)
                        backoff = min(backoff * 2, self.ttl_s)
                        continue
                if scope.cancelled_caught:
                    if self.handing_back:
                        # Stopped by the drain: the workflow must stay pending (it is
                        # recovered elsewhere), so the step never returns.
                        self.parked.add(session_id)
                        self._parking.set()
                        await anyio.sleep_forever()
                    return "interrupted"
                if run.how == "busy":
                    await self._wait_for_lease(session_id)
                    continue
                self.finished += run.how != "finished"
                assert run.result is not None
                return run.result.status
        finally:
            self.scopes.pop(session_id, None)

    async def _wait_for_lease(self, session_id: str) -> None:
        """Sleep until the lease another worker holds on the session lapses (or at most
        one time to live, then look again)."""
        owner = await self.store.lease_of(session_id)
        if owner is None:
            return
        left = owner[1].timestamp() - time.time()  # the database's clock: a bound is enough
        await anyio.sleep(min(self.ttl_s, max(0.2, left + 0.1)))

    async def beat_forever(self) -> None:
        """Renew this worker's row every third of its time to live, and recover dead
        workers; exit the process if this worker was declared dead."""
        while True:
            try:
                alive = await self.store.worker_beat(
                    self.executor_id,
                    ttl_s=self.ttl_s,
                    running=len(self.scopes),
                    finished=self.finished,
                    draining=self.draining,
                )
            except StoreError as exc:  # the database is away: the next beat tries again
                self.say(f"heartbeat failed: {exc}")
            else:
                if not alive:
                    self.say(
                        f"this worker ({self.executor_id}) was declared dead by another "
                        "(no heartbeat for its time to live); its sessions are finished "
                        "elsewhere: exiting"
                    )
                    sys.stderr.flush()
                    os._exit(EXIT_FENCED)
                await self._give_owed_slots()
                if not self.draining:
                    await self._recover_dead()
            await anyio.sleep(self.ttl_s / 3)

    async def _give_owed_slots(self) -> None:
        """Give back the call slots whose give failed while the database was away, even
        when no session of this worker takes another (which would give them too)."""
        try:
            owed = await self.store.give_owed_slots()
        except StoreError as exc:
            self.say(f"cannot give back call slots: {exc}")
            return
        if owed:
            self.say(f"gave back {owed} call slot(s) held while the database was away")

    async def _recover_dead(self) -> None:
        try:
            dead = await self.store.claim_dead_workers(self.executor_id, ttl_s=self.ttl_s * 3)
        except StoreError as exc:
            self.say(f"cannot look for dead workers: {exc}")
            return
        for worker in dead:
            try:
                await self.recover(worker)
            except Exception as exc:  # noqa: BLE001 - the claim lapses and is retaken
                self.say(f"recovering {worker.executor_id} failed: {exc}; retried later")

    async def recover(self, dead: DeadWorker) -> None:
        """Put a dead worker's unfinished sessions back on the queue, free its call
        slots, and forget it (this worker has claimed its row)."""
        flows = await DBOS.list_workflows_async(
            status="PENDING", executor_id=dead.executor_id, load_input=False, load_output=False
        )
        for flow in flows:
            await DBOS.resume_workflow_async(flow.workflow_id, queue_name=QUEUE)
        freed = await self.store.free_slots_of(dead.host, dead.pid)
        await self.store.forget_worker(dead.executor_id, recovered_by=self.executor_id)
        self.say(
            f"recovered {len(flows)} session(s) of dead worker {dead.executor_id}"
            f" ({dead.late_s:.1f} s after it expired; {freed} call slot(s) freed)"
        )

    async def sweep_forever(self) -> None:
        """Every :data:`SWEEP_S`, :meth:`requeue_stranded` (a task of its own: a
        database that hangs must not hold up the heartbeat)."""
        while not self.draining:
            try:
                requeued, ended = await self.requeue_stranded()
            except Exception as exc:  # noqa: BLE001 - the database is away: the next look
                self.say(f"cannot look for sessions left queued: {exc}")
            else:
                if requeued or ended:
                    self.say(
                        f"sessions left queued (their submitter died): {requeued} put on "
                        f"the queue, {ended} whose workflow was cancelled ended"
                    )
            await anyio.sleep(SWEEP_S)

    async def requeue_stranded(self) -> tuple[int, int]:
        """Enqueue the sessions queued in the store for over :data:`STRANDED_AFTER_S`
        that DBOS has no workflow for, and end those whose workflow was cancelled before
        they started (``interrupted``); how many of each."""
        before = datetime.now(UTC) - timedelta(seconds=STRANDED_AFTER_S)
        ids = await self.store.queued_sessions(queue=QUEUE, before=before, limit=SWEEP_BATCH)
        if not ids:
            return 0, 0
        flows = await DBOS.list_workflows_async(
            workflow_ids=ids, load_input=False, load_output=False
        )
        status = {flow.workflow_id: flow.status for flow in flows}
        lost = [sid for sid in ids if sid not in status]
        if lost and self._client is None:
            self._client = await anyio.to_thread.run_sync(open_client, self.sysdb)
        for sid in lost:
            assert self._client is not None
            await self._client.enqueue_async(queue_options(sid), sid)
        ended = 0
        for sid in ids:
            if status.get(sid) == "CANCELLED":
                ended += await self.store.drop_queued(sid, reason="cancelled before it started")
        return len(lost), ended

    async def close(self) -> None:
        """Let go of the HTTP client and DBOS's client (the store is the caller's),
        giving back first any call slot still owed."""
        await self._give_owed_slots()
        client, self._client = self._client, None
        if client is not None:
            await anyio.to_thread.run_sync(client.destroy)
        await self.http.aclose()

    async def watch_cancels(self) -> None:
        """Stop the sessions whose cancel was requested in the store."""
        while True:
            await anyio.sleep(CANCEL_POLL_S)
            ids = list(self.scopes)
            if not ids:
                continue
            try:
                asked = await self.store.cancels_requested(ids)
            except StoreError as exc:
                self.say(f"cannot read cancel requests: {exc}")
                continue
            for sid in asked:
                scope = self.scopes.get(sid)
                if scope is not None:
                    self.say(f"session {sid}: cancel requested")
                    scope.cancel()

    async def hand_back(self) -> int:
        """Stop the sessions still running here (each records ``interrupted``) and
        mark this worker dead so a live one recovers them; how many."""
        self.handing_back = True
        left = set(self.scopes)
        for scope in self.scopes.values():
            scope.cancel()
        # Each cancelled session writes its last events and releases its lease.
        with anyio.move_on_after(30):
            while not left <= self.parked:
                self._parking = anyio.Event()
                await self._parking.wait()
        await self.store.expire_worker(self.executor_id)
        return len(left)


def _store_failure(exc: BaseException) -> StoreError | None:
    """The StoreError a run failed with: ``exc`` itself, or the first of a group made
    of StoreErrors only (anything else in it is a bug to report, not to retry)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(StoreError)
        first: BaseException | None = match
        while rest is None and isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if rest is None and isinstance(first, StoreError):
            return first
    return None


def _package_version() -> str:
    """The installed thinktank's version (shown in ``thinktank workers``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thinktank")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


async def serve_worker(
    db: str | None,
    *,
    name: str | None = None,
    concurrency: int = 8,
    ttl_s: float = DEFAULT_TTL_S,
    drain_s: float = DEFAULT_DRAIN_S,
    poll_s: float = QUEUE_POLL_S,
    say: Say = print,
) -> int:
    """Run a worker until SIGTERM or SIGINT, then drain it; the exit status.

    Args:
        db: The database every worker and submitter shares (a URL or a SQLite file;
            default ``$THINKTANK_DB``).
        name: The worker's name in ``thinktank workers`` (default: the host name).
        concurrency: Sessions run at once by each worker of the pool (DBOS keeps one
            per-worker limit per queue: the last worker started sets it for all).
        ttl_s: How long the worker counts as alive without a heartbeat.
        drain_s: How long a drain waits for running sessions before handing them back.
        poll_s: How often the pool looks for queued sessions (like ``concurrency``, one
            value for the pool: DBOS keeps it with the queue).
        say: Where progress lines go.
    """
    global _worker
    url = normalize_db_url(db or default_db_url())
    sysdb = system_database_url(url)
    store = await Store.open(url)
    worker = Worker(
        store=store,
        name=name or socket.gethostname(),
        concurrency=concurrency,
        ttl_s=ttl_s,
        say=say,
        sysdb=sysdb,
    )
    await store.register_worker(
        worker.executor_id,
        name=worker.name,
        host=worker.host,
        pid=worker.pid,
        version=f"{_package_version()} ({APP_VERSION})",
        concurrency=concurrency,
        ttl_s=ttl_s,
    )
    _worker = worker
    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": sysdb,
        "executor_id": worker.executor_id,
        "application_version": APP_VERSION,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()  # in the running loop: dequeued workflows run on it
    await DBOS.register_queue_async(
        QUEUE,
        worker_concurrency=concurrency,
        polling_interval_sec=poll_s,
        on_conflict="always_update",
    )
    say(
        f"worker {worker.name} started ({worker.executor_id}): {concurrency} session(s)"
        f" at once, looking for queued ones every {poll_s:g} s, on {store.where}"
    )
    # The receiver stays open through the drain: a second signal (a supervisor that
    # repeats SIGTERM) must not kill the process while it hands sessions back.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.beat_forever)
            tg.start_soon(worker.watch_cancels)
            tg.start_soon(worker.sweep_forever)
            async for signum in signals:
                say(f"{signal.Signals(signum).name}: draining ({len(worker.scopes)} running)")
                break
            worker.draining = True
            await anyio.to_thread.run_sync(
                lambda: DBOS.destroy(workflow_completion_timeout_sec=max(1, round(drain_s)))
            )
            left = await worker.hand_back() if worker.scopes else 0
            tg.cancel_scope.cancel()
    if not left:
        await store.forget_worker(worker.executor_id, recovered_by=None)
    await worker.close()
    await store.close()
    say(f"worker {worker.name} drained: {worker.finished} finished, {left} handed back")
    return 0
