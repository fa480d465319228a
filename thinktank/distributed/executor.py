"""The submitting side of the pool: :class:`DistributedExecutor`.

It implements ``thinktank.executor.SessionExecutor`` over DBOS's client: ``submit``
writes the session to the store as ``queued`` and enqueues its id on the workers'
queue; ``wait`` follows the store (one read for every session waited on, every
``poll_s``); ``cancel`` cancels the workflow (DBOS stops the worker's step, and the
session records ``interrupted``) and ends a session that had not started.

``DBOSClient`` launches nothing in this process (no threads of DBOS's own beyond its
connection pool, no loop or logging changes), so a server or a script can submit.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from thinktank.distributed import (
    APP_NAME,
    APP_VERSION,
    QUEUE,
    WORKFLOW,
    require_dbos,
    system_database_url,
)
from thinktank.engine.result import SessionResult, result_of
from thinktank.errors import StoreError, UsageError
from thinktank.executor import FINISHED, enqueue
from thinktank.session.spec import SessionSpec
from thinktank.store import Store, default_db_url, normalize_db_url

if TYPE_CHECKING:
    from dbos import DBOSClient

__all__ = ["READ_RETRY_S", "DistributedExecutor", "open_client", "queue_options"]

READ_RETRY_S = 60.0
"""How long ``wait`` and ``as_completed`` keep reading a database that fails (a
PostgreSQL restart) before they raise."""


class DistributedExecutor:
    """A :class:`~thinktank.executor.SessionExecutor` whose sessions run on ``thinktank
    worker`` processes sharing the database.

    Example::

        async with DistributedExecutor(db="postgresql://...") as pool:
            sid = await pool.submit(spec, inputs={"q": "..."})
            result = await pool.wait(sid)

    Leaving the block does not wait for submitted sessions: they are in the database,
    and the workers run them whether or not anyone waits.
    """

    def __init__(
        self,
        *,
        db: str | None = None,
        store: Store | None = None,
        poll_s: float = 0.5,
    ) -> None:
        """Submit to the workers of ``db`` (a URL or a SQLite file; default
        ``$THINKTANK_DB``). ``store`` is an open store on that database to use (else one
        is opened); ``poll_s`` is how often ``wait`` reads the sessions' states."""
        if not (math.isfinite(poll_s) and poll_s > 0):
            raise UsageError(f"poll_s must be a positive number of seconds, not {poll_s!r}")
        self._url = normalize_db_url(db or default_db_url())
        self._given_store = store
        self._store: Store | None = store
        self._client: DBOSClient | None = None
        self._poll_s = poll_s

    @property
    def store(self) -> Store:
        """The store sessions are written to (open inside the ``async with``)."""
        if self._store is None:
            raise UsageError("DistributedExecutor: use it in `async with` first")
        return self._store

    async def __aenter__(self) -> DistributedExecutor:
        require_dbos()
        sysdb = system_database_url(self._url)
        if self._store is None:
            self._store = await Store.open(self._url)
        try:
            self._client = await anyio.to_thread.run_sync(open_client, sysdb)
        except Exception as exc:
            where = self.store.where  # as the store names it: no password
            await self._close_store()
            raise StoreError(f"cannot open the workers' queue in {where}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        with anyio.CancelScope(shield=True):
            if client is not None:
                await anyio.to_thread.run_sync(client.destroy)
            await self._close_store()

    async def _close_store(self) -> None:
        if self._store is not None and self._given_store is None:
            await self._store.close()
            self._store = None

    def _queue(self) -> DBOSClient:
        if self._client is None:
            raise UsageError("DistributedExecutor: use it in `async with` first")
        return self._client

    async def submit(
        self,
        spec: SessionSpec,
        *,
        inputs: Mapping[str, Any] | None = None,
        source: str | None = None,
        key_id: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a session for the workers; its id (stored, and on the queue, when this
        returns).

        Raises:
            UsageError: the executor is not open.
            SpecError, InputError: the session or its inputs are invalid (nothing is
                written).
            StoreError: the database could not be written.
        """
        client = self._queue()
        sid = await enqueue(
            spec,
            store=self.store,
            inputs=inputs,
            source=source,
            key_id=key_id,
            request_id=request_id,
            queue=QUEUE,
        )
        await self._enqueue(client, sid)
        return sid

    async def _enqueue(self, client: DBOSClient, session_id: str) -> None:
        try:
            await client.enqueue_async(queue_options(session_id), session_id)
        except Exception as exc:
            # Stored but not on the queue: end the row rather than leave it queued for
            # ever (nothing has run, so nothing is lost but the submission).
            with anyio.CancelScope(shield=True):
                await self.store.drop_queued(
                    session_id, reason=f"could not be queued: {exc}", status="failed"
                )
            raise StoreError(f"cannot queue session {session_id}: {exc}") from exc

    async def wait(self, session_id: str) -> SessionResult:
        """How a session ended, once it has (whichever worker ran it).

        Raises:
            UnknownSessionError: no session has that id.
            StoreError: the database could not be read for :data:`READ_RETRY_S`.
        """
        async for _sid, result in self.as_completed([session_id]):
            return result
        raise AssertionError("unreachable: as_completed yields every id")  # pragma: no cover

    async def as_completed(
        self, session_ids: Iterable[str]
    ) -> AsyncIterator[tuple[str, SessionResult]]:
        """Each of ``session_ids`` with its result, as it ends (one read of all the
        open ones every ``poll_s``).

        A session counts as ended when it completed, ended partial or failed, or was
        ``interrupted`` and its workflow is over (cancelled): a session interrupted by a
        worker that died or drained is still the pool's, and goes on elsewhere.

        Raises:
            UnknownSessionError: one of the ids names no session.
            StoreError: the database could not be read for :data:`READ_RETRY_S`.
        """
        open_ids = dict.fromkeys(session_ids)
        while open_ids:
            for sid, result in await self._ended_riding_out(list(open_ids)):
                del open_ids[sid]
                yield sid, result
            if open_ids:
                await anyio.sleep(self._poll_s)

    async def _ended(self, open_ids: list[str]) -> list[tuple[str, SessionResult]]:
        """The sessions of ``open_ids`` that ended, with their results."""
        states = await self.store.session_states(open_ids)
        missing = [sid for sid in open_ids if sid not in states]
        if missing:
            await self.store.get_session(missing[0])  # raises UnknownSessionError
        ended = [sid for sid, (status, _) in states.items() if status in FINISHED]
        interrupted = [sid for sid, (status, _) in states.items() if status == "interrupted"]
        if interrupted:
            ended += await self._workflows_over(interrupted)
        return [(sid, result_of(await self.store.get_session(sid))) for sid in ended]

    async def _ended_riding_out(self, open_ids: list[str]) -> list[tuple[str, SessionResult]]:
        """:meth:`_ended`, tried again while the database is away for at most
        :data:`READ_RETRY_S`: a restart of PostgreSQL drops every connection, and a
        caller waiting on thousands of sessions should not lose track of them for it
        (the workers ride it out the same way)."""
        backoff = self._poll_s
        deadline: float | None = None
        while True:
            try:
                return await self._ended(open_ids)
            except StoreError:
                now = anyio.current_time()
                deadline = now + READ_RETRY_S if deadline is None else deadline
                if now >= deadline:
                    raise
                await anyio.sleep(min(backoff, deadline - now))
                backoff = min(backoff * 2, 5.0)

    async def _workflows_over(self, session_ids: list[str]) -> list[str]:
        """Which of these sessions' workflows ended (cancelled, or ran to the end)."""
        try:
            flows = await self._queue().list_workflows_async(
                workflow_ids=session_ids, load_input=False, load_output=False
            )
        except Exception as exc:  # DBOS's driver errors: the database is away
            raise StoreError(f"cannot read the workers' queue: {exc}") from exc
        going = {f.workflow_id for f in flows if f.status in ("PENDING", "ENQUEUED", "DELAYED")}
        return [sid for sid in session_ids if sid not in going]

    async def cancel(self, session_id: str) -> None:
        """Stop a session: one still queued never starts (it ends ``interrupted``);
        one running on a worker is stopped there and ends ``interrupted``; one that
        ended stays as it is.

        Raises:
            UnknownSessionError: no session has that id.
            StoreError: the database could not be written.
        """
        client = self._queue()
        await self.store.get_session(session_id)  # raises UnknownSessionError
        await client.cancel_workflow_async(session_id)
        # Not started yet: nothing would ever end the row (a no-op once a worker has it).
        await self.store.drop_queued(session_id, reason="cancelled before it started")


def queue_options(session_id: str) -> Any:
    """DBOS's enqueue options for a session: its workflow on the pool's queue, under
    the pinned application version, with the session id as the workflow id (so a second
    enqueue of one session returns the first's workflow: DBOS starts it once)."""
    return {
        "queue_name": QUEUE,
        "workflow_name": WORKFLOW,
        "workflow_id": session_id,
        "app_version": APP_VERSION,
        "application_name": APP_NAME,
    }


def open_client(sysdb: str) -> DBOSClient:
    """A DBOS client on ``sysdb``, creating DBOS's tables first if no worker has yet (so
    sessions can be queued before any worker starts)."""
    from dbos import DBOS, DBOSClient

    DBOS.migrate(sysdb)
    return DBOSClient(system_database_url=sysdb, application_name=APP_NAME)
