"""The sessions API: run a session file on the server, read it, follow its events live,
cancel, resume and replay it.

This module owns the ``/v1/sessions`` routes and :class:`SessionRunner`, the registry
of the sessions this server process runs in the background (a task group the app's
lifespan opens: on shutdown every running session is cancelled, which the engine
stores as ``interrupted``, so ``/resume`` or ``thinktank resume`` can finish it).
Several server processes may share one database (``--workers N``, or several
``thinktank serve`` behind a load balancer): a cancel that reaches a process which does
not run the session is stored as a request (:meth:`~thinktank.store.Store.request_cancel`)
that the running process's :class:`SessionRunner` picks up within
:data:`CANCEL_POLL_S`.

A server started with ``--queue`` (``ServerConfig.queue``) runs no session itself: a
posted session is checked as a run checks it, stored ``queued`` and handed to the
``thinktank worker`` processes on the same database (``app.state.pool``, a
:class:`~thinktank.distributed.executor.DistributedExecutor`); its events, its state and
its cancel are served from the store as for any session another process runs. Every
session body carries ``worker``: the ``--name`` of the pool worker that holds the
session's lease (running it, or about to), else None.

Routes (every one authenticates like every ``/v1`` route):

- ``POST /v1/sessions``: start a session; answers 202 ``{"id", "status": "running",
  "links"}`` as soon as the session is stored (``"status": "queued"`` with
  ``--queue``). The body is either the session file itself, as ``Content-Type:
  application/yaml`` (or ``text/yaml``), or, as ``application/json``, the envelope
  ``{"session": <the file as a mapping, or its YAML or JSON text>, "inputs": {<name>:
  <value>}}`` (``inputs`` optional). A session that does not validate is a 400 whose
  message has one ``step/field: problem`` line per problem (the loader's
  :class:`~thinktank.errors.SpecErrors`).
- ``GET /v1/sessions?limit=N``: the stored sessions, newest first.
- ``GET /v1/sessions/{id}``: the stored session (status, steps, calls, consensus,
  cost); ``GET /v1/sessions/{id}/export``: what ``thinktank export`` writes. An id may
  be a unique prefix, as in the CLI; an unknown one is a 404.
- ``GET /v1/sessions/{id}/events``: the session's typed events (:mod:`thinktank.events`)
  as server-sent events: ``id:`` is the event's 1-based sequence in the session's
  history, ``event:`` its type, ``data:`` its JSON (the first also carries ``retry:``,
  :data:`RECONNECT_MS`). Live while this process runs the
  session; read from the store otherwise, and followed there (polled every
  :data:`TAIL_POLL_S`) while another process holds its lease (another worker,
  ``thinktank run``), or while it waits, ``queued``, for a worker to start it. A
  ``Last-Event-ID`` header (or ``?after=N``) resumes after that event. The stream ends
  with the session.
- ``POST /v1/sessions/{id}/cancel``: cancel a running session and answer its stored
  state once it has wound down. One this process runs is cancelled at once; one
  another process runs is asked to cancel through the store, and this process waits
  (up to :data:`CANCEL_WAIT_S`) for it to end: still running then, the answer is 202
  with its state and a ``message``. A ``queued`` session ends ``interrupted`` and never
  starts (on the pool, its workflow is cancelled too, so only a ``--queue`` server
  cancels a pool session: elsewhere that is a 409). A session that has finished, or
  that no process runs any more (its run died: resume it), is a 409.
- ``POST /v1/sessions/{id}/resume``: finish an interrupted session in the background
  (:func:`thinktank.replay.resume`), 202 as for a new one.
- ``POST /v1/sessions/{id}/replay``: re-merge from the recording with another
  ``synthesis`` and/or ``threshold`` (no model call, zero cost) and answer the
  :class:`~thinktank.replay.ReplayReport`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from thinktank._safeload import LoadError, load_json, load_yaml
from thinktank.distributed import QUEUE
from thinktank.errors import (
    SpecErrors,
    StoreError,
    ThinkTankError,
    UnknownSessionError,
    UsageError,
)
from thinktank.events import Event, encode_event
from thinktank.server.deps import CallerDep, store_of
from thinktank.server.errors import ApiError
from thinktank.server.middleware import request_id

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from thinktank.distributed.executor import DistributedExecutor
    from thinktank.server.auth import Caller
    from thinktank.session.spec import SessionSpec
    from thinktank.store import Store

__all__ = ["SessionRunner", "router", "running_sessions"]

_LOG = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/sessions")

_OPEN = ("queued", "running")
"""Statuses of a session that has not ended."""

_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")

Listener = Callable[[Event], None]

TAIL_POLL_S = 0.25
"""How often the event stream of a session another process runs reads the store."""

CANCEL_POLL_S = 1.0
"""How often a :class:`SessionRunner` running sessions reads the cancels requested of
them by other server processes (one read by primary key per poll, only while it runs
sessions)."""

CANCEL_WAIT_S = 10.0
"""How long a cancel of a session another process runs waits for it to end before
answering 202."""

RECONNECT_MS = 1000
"""The ``retry:`` the event stream advises: how long a client whose stream dropped
waits before it reconnects with ``Last-Event-ID`` (EventSource does this by itself)."""


class _Live:
    """One session this process runs: its events so far, in order, and how it ended.

    ``history`` is how many events the session had stored before this run (a resumed
    session's), so the run's n-th event is event ``history + n`` of the session.
    """

    def __init__(self, history: int = 0) -> None:
        self.history = history
        self.events: list[Event] = []
        self.session_id: str | None = None
        self.error: Exception | None = None
        self.done = False
        self.started = anyio.Event()
        self.ended = anyio.Event()
        self.scope = anyio.CancelScope()
        self._changed = anyio.Event()

    def add(self, event: Event) -> None:
        if self.session_id is None:
            self.session_id = event.session_id
            self.started.set()
        self.events.append(event)
        self._notify()

    def end(self, error: Exception | None) -> None:
        self.error = error
        self.done = True
        self.started.set()  # a run that failed before its first event
        self.ended.set()
        self._notify()

    def _notify(self) -> None:
        # Wake every follower; the next wait is on a fresh event.
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def follow(self, after: int) -> AsyncIterator[tuple[int, bytes]]:
        """Every event of this run after sequence ``after`` as (sequence, JSON), live,
        to the end (the stored history before the run is not here)."""
        index = max(after - self.history, 0)
        while True:
            changed = self._changed
            while index < len(self.events):
                index += 1
                yield self.history + index, encode_event(self.events[index - 1])
            if self.done:
                return
            await changed.wait()


class SessionRunner:
    """The sessions this server process runs, by id, in the lifespan's task group.

    :meth:`watch` (started by :func:`running_sessions`) cancels those whose cancel
    another server process requested in the store.
    """

    def __init__(self, store: Store, tg: TaskGroup) -> None:
        self._store = store
        self._tg = tg
        self._live: dict[str, _Live] = {}
        # The runs whose stale cancel request (from an earlier run) has been cleared:
        # only these are watched, so a request never reaches a later run.
        self._watched: set[str] = set()
        self._busy = anyio.Event()

    def get(self, session_id: str) -> _Live | None:
        """The running session ``session_id`` (a full id), if this process runs it."""
        return self._live.get(session_id)

    async def start(
        self, work: Callable[[Store, Listener], Awaitable[object]], *, history: int = 0
    ) -> str:
        """Run ``work(store, listener)`` in the background; its session id once its first
        event is out.

        Raises:
            ThinkTankError: what ``work`` raised before its first event (bad inputs, a
                session that cannot be resumed).
        """
        live = _Live(history)
        self._tg.start_soon(self._run, live, work)
        await live.started.wait()
        if live.session_id is None:
            assert live.error is not None
            raise live.error
        sid = live.session_id
        try:
            await self._store.clear_cancel(sid)
        except StoreError as exc:  # the run goes on; only a cancel from elsewhere misses it
            _LOG.warning("session %s: cannot clear its cancel request: %s", sid, exc)
            return sid
        if not live.done:
            self._watched.add(sid)
            self._busy.set()
        return sid

    async def watch(self) -> None:
        """Cancel, every :data:`CANCEL_POLL_S` while sessions run here, those whose
        cancel another process requested (:meth:`~thinktank.store.Store.request_cancel`).

        A request for a session that ended meanwhile finds no run here and does nothing.
        """
        while True:
            await self._busy.wait()
            ids = [sid for sid in self._watched if sid in self._live]
            if not ids:
                self._busy = anyio.Event()  # idle until the next start
                continue
            try:
                asked = await self._store.cancels_requested(ids)
            except StoreError as exc:  # the database is down: try again at the next poll
                _LOG.warning("cannot read cancel requests: %s", exc)
                asked = set()
            for sid in asked:
                live = self._live.get(sid)
                if live is not None:
                    live.scope.cancel()
            await anyio.sleep(CANCEL_POLL_S)

    async def _run(self, live: _Live, work: Callable[[Store, Listener], Awaitable[object]]) -> None:
        def listen(event: Event) -> None:
            if live.session_id is None:
                self._live[event.session_id] = live
            live.add(event)

        error: Exception | None = None
        try:
            with live.scope:  # cancelled by /cancel only; the lifespan's cancel goes on
                await work(self._store, listen)
        except ThinkTankError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a bug must not take the server's task group down
            _LOG.exception("session %s failed", live.session_id)
            error = exc
        finally:
            if live.session_id is not None:
                self._live.pop(live.session_id, None)
                self._watched.discard(live.session_id)
            live.end(error)


@asynccontextmanager
async def running_sessions(store: Store) -> AsyncIterator[SessionRunner]:
    """A :class:`SessionRunner` for the app's lifespan; leaving it cancels every session
    still running (stored as ``interrupted``, resumable)."""
    async with anyio.create_task_group() as tg:
        runner = SessionRunner(store, tg)
        tg.start_soon(runner.watch)
        yield runner
        tg.cancel_scope.cancel()


def _runner(request: Request) -> SessionRunner:
    runner: SessionRunner = request.app.state.sessions
    return runner


def _links(session_id: str) -> dict[str, str]:
    base = f"/v1/sessions/{session_id}"
    return {
        "self": base,
        "events": base + "/events",
        "export": base + "/export",
        "cancel": base + "/cancel",
        "resume": base + "/resume",
        "replay": base + "/replay",
    }


def _accepted(session_id: str, status: str = "running") -> JSONResponse:
    body = {"id": session_id, "status": status, "links": _links(session_id)}
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/sessions/{session_id}"})


def _spec_error(exc: SpecErrors) -> ApiError:
    return ApiError(400, "invalid session:\n" + str(exc), param="session", code="invalid_session")


def _parsed(text: str, *, yaml: bool) -> Any:
    try:
        return load_yaml(text) if yaml else load_json(text)
    except LoadError as exc:
        where = f" (line {exc.line})" if exc.line is not None else ""
        kind = "YAML" if yaml else "JSON"
        raise ApiError(400, f"not valid {kind}{where}: {exc.message}") from None


async def _session_request(request: Request) -> tuple[Any, dict[str, Any]]:
    """The session file's mapping and the inputs a POST carries (module docstring)."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8") from None
    if kind in _YAML_TYPES:
        return _parsed(text, yaml=True), {}
    if kind != "application/json":
        raise ApiError(415, f"send application/json or application/yaml, not {kind}")
    envelope = _parsed(text, yaml=False)
    if not isinstance(envelope, Mapping) or "session" not in envelope:
        raise ApiError(400, 'a JSON body is {"session": ..., "inputs": {...}}', param="session")
    extra = set(envelope) - {"session", "inputs"}
    if extra:
        raise ApiError(400, f"unknown field {sorted(extra)[0]!r}", param=sorted(extra)[0])
    inputs = envelope.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        raise ApiError(400, "inputs must be an object", param="inputs")
    session = envelope["session"]
    if isinstance(session, str):
        session = _parsed(session, yaml=True)  # YAML is a superset of JSON
    return session, dict(inputs)


def _usage_status(exc: ThinkTankError) -> ApiError:
    if isinstance(exc, UnknownSessionError):
        return ApiError(404, str(exc), code="session_not_found")
    if isinstance(exc, UsageError):
        return ApiError(409 if "leased" in str(exc) or "completed" in str(exc) else 400, str(exc))
    return ApiError(500, str(exc))


@router.post("", status_code=202)
async def create_session(request: Request, caller: CallerDep) -> JSONResponse:
    from thinktank.engine.stream import run
    from thinktank.session.loading import parse_session

    data, inputs = await _session_request(request)
    try:
        spec: SessionSpec = parse_session(data, file="session")
    except SpecErrors as exc:
        raise _spec_error(exc) from None
    pool: DistributedExecutor | None = request.app.state.pool
    if pool is not None:
        return await _queued(request, caller, pool, spec, inputs)

    async def work(store: Store, listener: Listener) -> object:
        return await run(
            spec,
            inputs=inputs,
            store=store,
            on_event=listener,
            source="http",
            http=request.app.state.http,
            key_id=caller.key_id,
            request_id=request_id(request.scope),
        )

    try:
        sid = await _runner(request).start(work)
    except ThinkTankError as exc:
        raise ApiError(400, str(exc), param="inputs") from None
    return _accepted(sid)


async def _queued(
    request: Request,
    caller: Caller,
    pool: DistributedExecutor,
    spec: SessionSpec,
    inputs: dict[str, Any],
) -> JSONResponse:
    """``serve --queue``: the session is checked as a run checks it, stored ``queued``
    with its provenance and handed to the workers; 202 at once."""
    try:
        sid = await pool.submit(
            spec,
            inputs=inputs,
            source="http",
            key_id=caller.key_id,
            request_id=request_id(request.scope),
        )
    except StoreError as exc:
        raise ApiError(503, str(exc), code="queue_unavailable") from None
    except ThinkTankError as exc:
        raise ApiError(400, str(exc), param="inputs") from None
    return _accepted(sid, "queued")


async def _record_provenance(request: Request, caller: Caller, session_id: str) -> None:
    """Store the caller's key id and the request id on the session (its row is written
    before its first event is out, which ``start`` waits for)."""
    await store_of(request).set_session_provenance(
        session_id, key_id=caller.key_id, request_id=request_id(request.scope)
    )


@router.get("")
async def list_sessions(
    request: Request, caller: CallerDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> dict[str, Any]:
    store = store_of(request)
    rows = await store.list_sessions(limit=limit)
    return {"object": "list", "data": [row.model_dump(mode="json") for row in rows]}


async def _stored(request: Request, session_id: str) -> Any:
    try:
        return await store_of(request).get_session(session_id)
    except UnknownSessionError as exc:
        raise _usage_status(exc) from None


@router.get("/{session_id}")
async def get_session(request: Request, caller: CallerDep, session_id: str) -> dict[str, Any]:
    stored = await _stored(request, session_id)
    body: dict[str, Any] = stored.model_dump(mode="json")
    body["links"] = _links(stored.id)
    return body


@router.get("/{session_id}/export")
async def export(request: Request, caller: CallerDep, session_id: str) -> dict[str, Any]:
    from thinktank.transfer import export_session

    try:
        exported = await export_session(store_of(request), session_id)
    except UnknownSessionError as exc:
        raise _usage_status(exc) from None
    body: dict[str, Any] = exported.model_dump(mode="json")
    return body


def _sse(sequence: int, kind: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (sequence, kind.encode(), data)


async def _stored_events(
    store: Store, session_id: str, after: int, upto: int | None = None
) -> AsyncIterator[bytes]:
    events = await store.events_of(session_id)
    for sequence, event in enumerate(events[after:upto], start=after + 1):
        yield _sse(sequence, str(event["type"]), json.dumps(event).encode())


async def _tailed_events(store: Store, session_id: str, after: int) -> AsyncIterator[bytes]:
    """A session this process does not run: its stored events, then, while another
    process holds its lease (another worker, ``thinktank run``), the ones it writes."""
    while True:
        events = await store.events_of(session_id)
        for sequence, event in enumerate(events[after:], start=after + 1):
            yield _sse(sequence, str(event["type"]), json.dumps(event).encode())
        after = max(after, len(events))
        if events and events[-1]["type"] == "session_finished":
            return
        if await store.lease_of(session_id) is None and not await _waiting(store, session_id):
            # Nobody runs it (it died, or ended between the two reads): what it wrote last.
            async for chunk in _stored_events(store, session_id, after):
                yield chunk
            return
        await anyio.sleep(TAIL_POLL_S)


async def _waiting(store: Store, session_id: str) -> bool:
    """Whether the session is queued, so a worker (or an executor) will start it."""
    states = await store.session_states([session_id])
    return states.get(session_id, ("", None))[0] == "queued"


async def _advising_retry(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``stream`` with ``retry:`` in its first message (not a message of its own, which
    a client counting ``id:``-less blocks would take for an event)."""
    first = True
    async for chunk in stream:
        yield b"retry: %d\n%s" % (RECONNECT_MS, chunk) if first else chunk
        first = False


async def _live_events(store: Store, live: _Live, after: int) -> AsyncIterator[bytes]:
    if after < live.history:  # a resumed session: its earlier history is stored
        assert live.session_id is not None
        async for chunk in _stored_events(store, live.session_id, after, live.history):
            yield chunk
    async for sequence, data in live.follow(after):
        yield _sse(sequence, live.events[sequence - live.history - 1].type, data)


@router.get("/{session_id}/events")
async def events(
    request: Request,
    caller: CallerDep,
    session_id: str,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> StreamingResponse:
    stored = await _stored(request, session_id)
    header = request.headers.get("last-event-id")
    if after is None:
        try:
            after = int(header) if header else 0
        except ValueError:
            raise ApiError(400, "Last-Event-ID must be an event sequence number") from None
    live = _runner(request).get(stored.id)
    stream = (
        _live_events(store_of(request), live, after)
        if live is not None
        else _tailed_events(store_of(request), stored.id, after)
    )
    return StreamingResponse(
        _advising_retry(stream),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _not_running(session_id: str, status: str, where: str = "has finished") -> ApiError:
    return ApiError(409, f"session {session_id} {where} (status {status})", code="not_running")


@router.post("/{session_id}/cancel", response_model=None)
async def cancel(
    request: Request, caller: CallerDep, session_id: str
) -> dict[str, Any] | JSONResponse:
    stored = await _stored(request, session_id)
    live = _runner(request).get(stored.id)
    if live is not None:
        live.scope.cancel()
        await live.ended.wait()
        return await get_session(request, caller, stored.id)
    store = store_of(request)
    pool: DistributedExecutor | None = request.app.state.pool
    if pool is not None and stored.queue == QUEUE and stored.status in _OPEN:
        # The workflow is cancelled, so no worker starts it or recovers it later; a
        # worker running it stops at once, and through the store request below too.
        await pool.cancel(stored.id)
        await store.request_cancel(stored.id)
        return await _wound_down(request, caller, stored.id)
    if stored.status == "queued":
        if stored.queue == QUEUE:
            raise _not_running(
                stored.id,
                stored.status,
                "waits for the worker pool: cancel it on a server started with --queue",
            )
        if await store.drop_queued(stored.id, reason="cancelled before it started"):
            return await get_session(request, caller, stored.id)
        stored = await _stored(request, stored.id)  # claimed meanwhile: it runs
    if stored.status != "running":
        raise _not_running(stored.id, stored.status)
    if await store.lease_of(stored.id) is None:
        where = "is not running anywhere (its run stopped before it finished: resume it)"
        raise _not_running(stored.id, stored.status, where)
    if not await store.request_cancel(stored.id):  # it finished meanwhile
        raise _not_running(stored.id, (await _stored(request, stored.id)).status)
    return await _wound_down(request, caller, stored.id)


async def _wound_down(
    request: Request, caller: Caller, session_id: str
) -> dict[str, Any] | JSONResponse:
    """The session's state once another process has stopped it (it sees the request
    within its poll), or 202 with a message after :data:`CANCEL_WAIT_S`."""
    with anyio.move_on_after(CANCEL_WAIT_S):
        while True:
            state = await get_session(request, caller, session_id)
            if state["status"] not in _OPEN:
                return state
            await anyio.sleep(TAIL_POLL_S)
    state = await get_session(request, caller, session_id)
    if state["status"] not in _OPEN:
        return state
    state["message"] = (
        f"cancel requested; the process running session {session_id} has not "
        f"stopped it within {CANCEL_WAIT_S:g} s"
    )
    return JSONResponse(state, status_code=202)


@router.post("/{session_id}/resume", status_code=202)
async def resume(request: Request, caller: CallerDep, session_id: str) -> JSONResponse:
    from thinktank.replay import resume as resume_session

    stored = await _stored(request, session_id)
    store = store_of(request)
    history = len(await store.events_of(stored.id))

    async def work(db: Store, listener: Listener) -> object:
        return await resume_session(stored.id, store=db, on_event=listener)

    try:
        sid = await _runner(request).start(work, history=history)
    except ThinkTankError as exc:
        raise _usage_status(exc) from None
    await _record_provenance(request, caller, sid)  # the request that ran it last
    return _accepted(sid)


class ReplayRequest(BaseModel):
    """How ``/replay`` re-merges a stored session (as ``thinktank replay``)."""

    model_config = ConfigDict(extra="forbid")

    synthesis: str | None = None
    """Re-merge every multi-model step with this method (majority, medoid, ...)."""
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """Re-merge with this consensus threshold."""
    record: bool | None = None
    """Store the replay as a new session (default: when re-merging)."""


@router.post("/{session_id}/replay")
async def replay(
    request: Request, caller: CallerDep, session_id: str, body: ReplayRequest | None = None
) -> dict[str, Any]:
    from thinktank.replay import replay as replay_session

    asked = body or ReplayRequest()
    stored = await _stored(request, session_id)
    try:
        report = await replay_session(
            stored.id,
            store=store_of(request),
            synthesis=asked.synthesis,
            threshold=asked.threshold,
            record=asked.record,
        )
    except ThinkTankError as exc:
        raise _usage_status(exc) from None
    if report.replay_id is not None:
        await _record_provenance(request, caller, report.replay_id)
    result: dict[str, Any] = report.model_dump(mode="json")
    return result
