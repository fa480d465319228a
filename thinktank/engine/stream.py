"""A run as a stream of its events: ``thinktank.iter``, and ``thinktank.run`` built on it.

``iter`` is an async context manager, not an async generator: the session runs in a
task group of its own, and an async generator cannot hold a task group across
``yield`` safely (a consumer that stops iterating would leave it open)::

    async with thinktank.iter(spec, store=None) as run:
        async for event in run:
            ...
    print(run.result.status)

The events reach the consumer through a bounded memory object stream. The engine emits
them synchronously (from inside its steps), so it cannot wait for room at each one;
instead no model call starts while the consumer is behind: a call waits until every
event emitted so far fits in the stream. A slow consumer slows the session down
instead of letting the queue grow: it holds at most ``buffer`` events plus the few that
steps and calls already under way emit.

Leaving the block before the last event (``break``, an exception) cancels the session:
the store marks it ``interrupted`` and its unfinished steps ``cancelled``. A
cancellation from outside propagates as it came, once the session has been wound down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, TypedDict, Unpack, cast

import anyio
from anyio.abc import TaskGroup

from thinktank.engine.calls import OnDelta
from thinktank.engine.multi import OnSynthesis
from thinktank.engine.restart import Restart
from thinktank.engine.result import SessionResult
from thinktank.engine.runner import Listener, execute, fan_out
from thinktank.errors import RunError
from thinktank.events import Event
from thinktank.providers.base import ModelClient, PooledModel
from thinktank.providers.http import AsyncClient
from thinktank.session.spec import SessionSpec
from thinktank.store import Store

__all__ = ["DEFAULT_BUFFER", "RunOptions", "SessionRun", "iter", "run", "run_sync"]


class RunOptions(TypedDict, total=False):
    """The keyword arguments of ``run`` and ``iter`` (documented on ``run``)."""

    inputs: Mapping[str, Any] | None
    store: Store | str | None
    models: Mapping[str, ModelClient] | None
    on_event: Listener | None
    source: str | None
    max_cost_usd: float | None
    max_tokens: int | None
    restart: Restart | None
    on_delta: OnDelta | None
    lease_ttl_s: float | None
    on_synthesis: OnSynthesis | None
    http: AsyncClient | None
    key_id: str | None
    request_id: str | None


DEFAULT_BUFFER: Final = 64
"""Events ``iter`` holds for a consumer that is behind before calls wait for it."""


class _Room:
    """Makes a model call wait, before it starts, until the consumer has caught up.

    Entered like the model's own concurrency limiter, in whose place it stands (and
    which it then enters): the wait is outside the call's time limit.
    """

    def __init__(self, pipe: _Pipe, inner: anyio.CapacityLimiter | None) -> None:
        self._pipe = pipe
        self._inner = inner

    async def __aenter__(self) -> None:
        await self._pipe.room()
        if self._inner is not None:
            await self._inner.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        if self._inner is not None:
            await self._inner.__aexit__(None, None, None)


class _Pipe:
    """The events on their way to the consumer, in emission order.

    ``put`` is the engine's (synchronous) listener: an event goes into the bounded
    stream when it has room and nothing waits before it, else into ``overflow``,
    which the consumer empties before the stream takes events again.
    """

    def __init__(self, buffer: int) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[Event](buffer)
        self.overflow: deque[Event] = deque()
        self._caught_up = anyio.Event()
        self.high_water = 0
        """The most events queued at once (stream and overflow), for tests and benches."""
        self.abandoned = False
        """The consumer left: what the session emits while it winds down is dropped."""

    def put(self, event: Event) -> None:
        if self.abandoned:
            return
        if not self.overflow:
            try:
                self.send.send_nowait(event)
            except anyio.WouldBlock:
                pass
            else:
                self._mark()
                return
        self.overflow.append(event)
        self._mark()

    def _mark(self) -> None:
        queued = self.send.statistics().current_buffer_used + len(self.overflow)
        if queued > self.high_water:
            self.high_water = queued

    def pop_overflow(self) -> Event:
        event = self.overflow.popleft()
        if not self.overflow:
            self._caught_up.set()
        return event

    async def room(self) -> None:
        """Return once nothing waits outside the stream."""
        while self.overflow:
            if self._caught_up.is_set():
                self._caught_up = anyio.Event()
            await self._caught_up.wait()

    def gate(self, name: str, pooled: PooledModel) -> PooledModel:
        # The limiter slot takes any async context manager; _Room is one.
        room = cast(anyio.CapacityLimiter, _Room(self, pooled.limiter))
        return dataclasses.replace(pooled, limiter=room)


class SessionRun:
    """One session running in the background, as an async iterator of its events.

    Made by :func:`iter`; ``async with`` starts it, ``async for`` reads its events, and
    :attr:`result` is its :class:`SessionResult` once the events have ended.
    """

    def __init__(
        self, spec: SessionSpec, options: RunOptions, *, buffer: int, events: bool = True
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, not {buffer}")
        self._spec = spec
        self._options = options
        self._pipe = _Pipe(buffer)
        self._events = events
        self._tg: TaskGroup | None = None
        self._result: SessionResult | None = None
        self._error: Exception | None = None
        self._ended = False
        self._closed = False

    async def __aenter__(self) -> SessionRun:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._drive)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        tg = self._tg
        assert tg is not None, "SessionRun.__aexit__ without __aenter__"
        if not self._ended:
            # The consumer left before the last event: the session stops with it.
            self._pipe.abandoned = True
            tg.cancel_scope.cancel()
        try:
            # Not the consumer's exception: a task group would wrap it in a group. It
            # propagates as it came once the session has wound down.
            await tg.__aexit__(None, None, None)
        finally:
            self._closed = True
            self._pipe.receive.close()

    def __aiter__(self) -> SessionRun:
        return self

    async def __anext__(self) -> Event:
        pipe = self._pipe
        try:
            return pipe.receive.receive_nowait()
        except anyio.WouldBlock:
            if pipe.overflow:
                return pipe.pop_overflow()
            try:
                return await pipe.receive.receive()
            except anyio.EndOfStream:
                pass
        except anyio.EndOfStream:
            pass
        if pipe.overflow:
            return pipe.pop_overflow()
        self._ended = True
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    @property
    def result(self) -> SessionResult:
        """The session's result, once its events have ended.

        Raises:
            RunError: the session has not ended, or was cancelled before it did.
        """
        if self._result is None:
            state = "was cancelled" if self._ended or self._closed else "is still running"
            raise RunError(f"no result: the session {state}")
        return self._result

    @property
    def high_water(self) -> int:
        """The most events that waited for the consumer at once."""
        return self._pipe.high_water

    async def wait(self) -> SessionResult:
        """Read the remaining events and return the result (what ``run`` does)."""
        async for _ in self:
            pass
        return self.result

    async def _drive(self) -> None:
        options = self._options.copy()
        if self._events:
            put = self._pipe.put
            listener = options.get("on_event")
            options["on_event"] = put if listener is None else fan_out([listener, put])
            restart = options.get("restart") or Restart()
            options["restart"] = dataclasses.replace(
                restart, wrap=_then(restart.wrap, self._pipe.gate)
            )
        try:
            self._result = await execute(self._spec, **options)
        except Exception as exc:  # noqa: BLE001 - raised to the consumer at the end of the events
            self._error = exc
        finally:
            self._pipe.send.close()


Wrap = Callable[[str, PooledModel], PooledModel]


def _then(first: Wrap | None, then: Wrap) -> Wrap:
    if first is None:
        return then
    return lambda name, pooled: then(name, first(name, pooled))


def iter(  # the public name (as pydantic_graph's Graph.iter); shadows the builtin here only
    spec: SessionSpec, *, buffer: int = DEFAULT_BUFFER, **options: Unpack[RunOptions]
) -> SessionRun:
    """Run a session and stream its typed events as they happen::

        async with thinktank.iter(spec, store=None) as run:
            async for event in run:
                ...
        print(run.result.status)

    Takes ``run``'s arguments (``store=`` follows the rule in the README's Python API
    section), and ``buffer``: how many events wait for a slow consumer before the
    session's model calls wait for it. Errors ``run`` raises are raised by the
    ``async for`` once the events end. Leaving the block before the last event
    cancels the session (stored as ``interrupted``); ``run.result`` then raises
    :class:`RunError`.
    """
    return SessionRun(spec, options, buffer=buffer)


async def run(spec: SessionSpec, **options: Unpack[RunOptions]) -> SessionResult:
    """Run a session to the end and return its result: ``iter`` with nobody reading
    (no event is queued; only ``on_event`` sees them).

    A recorded session is leased to this run from the moment its row is written until
    it ends (renewed every third of ``lease_ttl_s``), so ``resume`` elsewhere refuses
    it while this run is alive.

    Args:
        spec: A validated session (``thinktank.load_session``).
        inputs: Values for the session's declared inputs.
        store: Where the session is recorded; the rule is in the README's Python API
            section (omitted: the default store; a str: opened and closed here; a
            :class:`Store`: used and left open; None: nothing is recorded).
        models: Model clients by name, added to (or replacing) the session's own.
        on_event: Called with every event as it happens (progress displays).
        source: The session file, recorded with the session.
        max_cost_usd: Overrides the session's ``budget.max_cost_usd``.
        max_tokens: Overrides the session's ``budget.max_tokens``.
        on_delta: Called as (step, model, text) with each piece of text a streaming
            model sends, as it arrives (live progress; set ``stream = true`` on the model).
        lease_ttl_s: How long the session's lease lasts unless renewed (default
            ``$THINKTANK_LEASE_TTL`` or 30 s): how soon a killed run's session can
            be resumed.
        on_synthesis: Called as (step, text so far) each time a judge's merged answer
            grows while the judge writes it (the judge's call streams; not recorded:
            the stored synthesis is the final text, stripped).
        http: An HTTP client (``thinktank.providers.http.create_http_client``) for the
            session's provider calls, kept open: a program running many sessions shares
            one, and its open connections (default: a client of the run's own).
        key_id: The API key whose request made the session, recorded with it
            (``thinktank serve`` sets it; never the key itself).
        request_id: The request that made the session (``X-Request-Id``), recorded.

    Raises:
        SpecErrors: the spec names models that cannot be used (unknown, no key), or
            ``thinktank.toml`` is invalid (it is read only when a model the session
            names is not among its own ``models`` or the ``models`` clients).
        InputError: inputs missing, unknown or of the wrong type.
        StoreError: the database could not be opened or written.
    """
    async with SessionRun(spec, options, buffer=1, events=False) as session:
        return await session.wait()


def run_sync(spec: SessionSpec, **options: Unpack[RunOptions]) -> SessionResult:
    """``run`` for scripts and notebooks; works inside a running event loop too.

    Inside a running loop (Jupyter), the session runs on a worker thread with its own
    loop, and this call blocks until it ends.
    """
    call: Any = functools.partial(run, spec, **options)
    job = functools.partial(anyio.run, call, backend="asyncio")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        result: SessionResult = job()
        return result
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        result = pool.submit(job).result()
        return result
