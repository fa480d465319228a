"""Running a session: validate, open the store, schedule, record, and fold a result.

``run`` is the one execution path: a validated spec, a model pool, the scheduler and
the step executor, with every event fanned out to the result collector, the caller's
listener (the CLI's progress display) and the store recorder. Bad input raises before
the store is opened, so it writes nothing.

The recorder writes events in batches as they queue up (each batch one transaction,
shielded from cancellation so no half-written batch exists), so a crash or Ctrl-C
loses nothing that finished: after an interruption the rest of the queue is written
before the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from thinktank._ids import new_id, new_ids
from thinktank.engine.budget import Budget
from thinktank.engine.calls import OnDelta
from thinktank.engine.result import ResultCollector, SessionResult
from thinktank.engine.scheduler import ScheduleOutcome, Scheduler
from thinktank.engine.steps import StepExecutor, sum_known
from thinktank.errors import SpecError, SpecErrors, StoreError, UsageError
from thinktank.events import (
    CallFinished,
    CallStarted,
    Event,
    SessionFinished,
    SessionStarted,
    StepFinished,
    StepInfo,
    StepsAdded,
    StepSkipped,
    utcnow,
)
from thinktank.providers.base import ModelClient, PooledModel
from thinktank.providers.config import load_config
from thinktank.providers.http import create_http_client
from thinktank.providers.registry import ModelRegistry
from thinktank.session.graph import StepGraph
from thinktank.session.selection import apply_selection
from thinktank.session.spec import SessionSpec, StepSpec, validate_inputs
from thinktank.session.validation import validate_spec
from thinktank.store import Store

__all__ = [
    "DEFAULT_STORE",
    "LEASE_TTL_ENV",
    "Restart",
    "SeedStep",
    "lease_ttl",
    "new_worker_id",
    "run",
    "run_sync",
]


class _DefaultStore:
    def __repr__(self) -> str:
        return "DEFAULT_STORE"


DEFAULT_STORE: Final[Any] = _DefaultStore()
"""Sentinel: record in ``$THINKTANK_DB`` or ``./thinktank.db``. Pass ``store=None`` to
record nothing."""

Listener = Callable[[Event], None]

LEASE_TTL_ENV: Final = "THINKTANK_LEASE_TTL"
"""Environment variable: seconds a session's lease lasts without a renewal (default 30)."""

_DEFAULT_LEASE_TTL_S: Final = 30.0


def lease_ttl(ttl_s: float | None = None) -> float:
    """The lease time to live: ``ttl_s``, else ``$THINKTANK_LEASE_TTL``, else 30 s.

    A run renews its lease every third of it; a killed run's session can be resumed
    once it has passed.

    Raises:
        UsageError: the value is not a positive number of seconds.
    """
    where = "lease_ttl_s"
    value: object = ttl_s
    if ttl_s is None:
        where, value = f"${LEASE_TTL_ENV}", os.environ.get(LEASE_TTL_ENV)
        if not value:
            return _DEFAULT_LEASE_TTL_S
        with contextlib.suppress(ValueError):  # not a number: reported below
            value = float(str(value))
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{where} must be a positive number of seconds, not {value!r}")
    return float(value)


def new_worker_id() -> str:
    """A lease holder's id: this host and process, and a random part so that two runs
    in one process never share a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _keep_lease(
    store: Store,
    session_id: str,
    worker_id: str,
    ttl_s: float,
    scope: anyio.CancelScope,
    stop: Callable[[str], None],
) -> None:
    """Renew the lease every third of its life until ``scope`` is cancelled.

    A renewal re-claims the lease, so a run that stalled past its expiry keeps it
    unless another worker took the session meanwhile; then this run starts no more
    steps (``stop``), since the other worker runs them. A failed renewal (the database
    busy) is tried again at the next tick.
    """
    with scope:
        while True:
            await anyio.sleep(ttl_s / 3)
            try:
                if await store.claim_session(session_id, worker_id=worker_id, ttl_s=ttl_s):
                    continue
                owner = await store.lease_of(session_id)
            except StoreError:
                continue
            stop(f"another worker ({owner[0] if owner else '?'}) took the session over")
            return


class _Recorder:
    """Writes queued events to the store, a batch per transaction.

    A write that fails (the database locked past its busy timeout, a full disk, a
    dropped connection) loses nothing: its events stay in memory, in order, and go
    with the next attempt, retried with backoff (up to every 2 s) while the session
    runs. The session runs on meanwhile: its calls are paid for, and a store back
    within ``store.write_retry_s`` gets all of them. Past that the recorder calls
    ``on_give_up`` once (the scheduler's ``stop``: no new step starts, the calls in
    flight finish, so no more money goes into answers that may not be kept). When the
    session ends it still tries until ``write_retry_s`` is out: a store writable again
    by then gets the session marked ``partial`` or ``failed`` with the store error.
    ``pending`` holds what was never written.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        self.send: MemoryObjectSendStream[Event] = send
        self.receive: MemoryObjectReceiveStream[Event] = receive
        self.pending: list[Event] = []
        """Events not written yet, in emission order."""
        self.error: StoreError | None = None
        """The last write failure, while ``pending`` has not been written since."""
        self.on_give_up: Callable[[str], None] | None = None
        self._failing_since: float | None = None
        self._gave_up = False
        self._ended = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for event in self.receive:
            self.pending.append(event)
            self._take_queued()
            await self._flush()
        self._ended = True
        await self._flush()

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
        while True:
            try:
                self.pending.append(self.receive.receive_nowait())
            except (anyio.WouldBlock, anyio.ClosedResourceError):
                return
            except anyio.EndOfStream:
                self._ended = True
                return

    async def _flush(self) -> None:
        """Write ``pending``, retrying with backoff until it is written, or the session
        has ended and the retry time is out; stop the session once that time is out."""
        delay = 0.05
        while self.pending:
            try:
                await self._write(self.pending)
            except StoreError as exc:
                self.error = exc
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                out = now - self._failing_since >= self.store.write_retry_s
                if out and not self._gave_up:
                    self._gave_up = True
                    if self.on_give_up is not None:
                        self.on_give_up(f"store failure: {exc}")
                if out and self._ended:
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._take_queued()
            else:
                self.pending, self.error, self._failing_since = [], None, None

    async def _write(self, batch: list[Event]) -> None:
        with anyio.CancelScope(shield=True):
            await self.store.write(batch)


@dataclass(frozen=True, kw_only=True)
class SeedStep:
    """The state a step starts in when a run continues from an earlier one."""

    status: Literal["completed", "failed"]
    """completed (not run again) or failed (stays failed)."""
    output: str | None = None
    """Its output, for completed steps."""
    error: str | None = None
    """Why it failed."""
    input_tokens: int | None = 0
    output_tokens: int | None = 0
    cost_usd: float | None = 0.0


@dataclass(kw_only=True)
class Restart:
    """How a run continues from stored state: resume, replay and fork use it.

    ``run`` with a ``Restart`` is still the one execution path: the same scheduler,
    executor and recorder, started from ``seed`` instead of from nothing.
    """

    session_id: str | None = None
    """Continue this session (resume) instead of starting a new one."""
    seed: dict[str, SeedStep] = field(default_factory=dict)
    """Steps that need no run: completed ones are skipped, failed ones stay failed."""
    record_seed: bool = True
    """Write the seeded steps into the (new) session's rows (fork, replay); a resumed
    session already has them."""
    extra_steps: list[tuple[StepSpec, str, tuple[str, ...]]] = field(default_factory=list)
    """Steps an earlier run's decompose steps added: (spec, parent, provenance)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """decompose step -> its synthesis step."""
    attempt_base: dict[str, int] = field(default_factory=dict)
    """Attempts each step already made."""
    lost_calls: list[CallStarted] = field(default_factory=list)
    """Calls an earlier run started and never finished: closed as lost first."""
    wrap: Callable[[str, PooledModel], PooledModel] | None = None
    """Replaces model clients (recorded responses for replay and resume)."""
    origin: dict[str, Any] | None = None
    """What this run was made from (kind and session), stored with the session."""
    validated: bool = False
    """The spec is a stored session's, already validated when it ran, and every model
    it names is given as a client (recorded replay): skip re-validating the graph."""
    lease: tuple[str, float] | None = None
    """(worker id, time to live) of the lease the caller holds on ``session_id``
    (resume): the run renews it while it runs and leaves releasing it to the caller."""


def _step_info(
    spec: SessionSpec,
    step: StepSpec,
    position: int,
    parent: str | None = None,
    provenance: tuple[str, ...] = (),
    models: list[str] | None = None,
    row_id: str | None = None,
) -> StepInfo:
    if models is None:
        models = spec.step_models(step)
    multi = len(models) > 1 and step.kind == "prompt"
    return StepInfo(
        step_id=step.id,
        row_id=row_id or new_id(),
        kind="decompose" if step.kind == "decompose" else ("multi" if multi else "prompt"),
        depends_on=tuple(step.depends_on),
        models=tuple(models),
        mode=step.mode if multi else None,
        synthesis=step.synthesis if multi else None,
        prompt_template=step.prompt,
        position=position,
        parent=parent,
        provenance=provenance,
    )


def _steps_info(
    spec: SessionSpec, step_models: Mapping[str, list[str]] | None = None
) -> tuple[StepInfo, ...]:
    if step_models is None:
        step_models = {step.id: spec.step_models(step) for step in spec.steps}
    rows = new_ids(len(spec.steps))
    return tuple(
        _step_info(spec, step, i, models=step_models[step.id], row_id=rows[i])
        for i, step in enumerate(spec.steps)
    )


def _session_status(outcome: ScheduleOutcome, total: int) -> tuple[Any, str | None]:
    if outcome.stopped is not None:
        return ("partial" if outcome.completed else "failed"), outcome.stopped
    if outcome.aborted_by is not None:
        reason = outcome.failed[outcome.aborted_by]
        return "failed", f"step {outcome.aborted_by!r} failed (fail_fast): {reason}"
    if len(outcome.completed) == total:
        return "completed", None
    first = next(iter(outcome.failed.items()), None)
    detail = f"; first: step {first[0]!r}: {first[1]}" if first else ""
    summary = f"{len(outcome.failed)} step(s) failed, {len(outcome.skipped)} skipped{detail}"
    return ("failed" if not outcome.completed else "partial"), summary


async def run(
    spec: SessionSpec,
    *,
    inputs: Mapping[str, Any] | None = None,
    store: Store | str | None = DEFAULT_STORE,
    models: Mapping[str, ModelClient] | None = None,
    on_event: Listener | None = None,
    source: str | None = None,
    max_cost_usd: float | None = None,
    max_tokens: int | None = None,
    restart: Restart | None = None,
    on_delta: OnDelta | None = None,
    lease_ttl_s: float | None = None,
) -> SessionResult:
    """Run a session to the end and return its result.

    A recorded session is leased to this run from the moment its row is written until
    it ends (renewed every third of ``lease_ttl_s``), so ``resume`` elsewhere refuses
    it while this run is alive.

    Args:
        spec: A validated session (``thinktank.load_session``).
        inputs: Values for the session's declared inputs.
        store: A :class:`Store`, a database URL or path, None to record nothing, or
            by default ``$THINKTANK_DB`` / ``./thinktank.db``.
        models: Model clients by name, added to (or replacing) the session's own.
        on_event: Called with every event as it happens (progress displays).
        source: The session file, recorded with the session.
        max_cost_usd: Overrides the session's ``budget.max_cost_usd``.
        max_tokens: Overrides the session's ``budget.max_tokens``.
        restart: Continue from stored state (``thinktank.replay`` builds these).
        on_delta: Called as (step, model, text) with each piece of text a streaming
            model sends, as it arrives (live progress; set ``stream = true`` on the model).
        lease_ttl_s: How long the session's lease lasts unless renewed (default
            ``$THINKTANK_LEASE_TTL`` or 30 s): how soon a killed run's session can
            be resumed.

    Raises:
        SpecErrors: the spec names models that cannot be used (unknown, no key), or
            ``thinktank.toml`` is invalid (it is read only when a model the session
            names is not among its own ``models`` or the ``models`` clients).
        InputError: inputs missing, unknown or of the wrong type.
        StoreError: the database could not be opened or written.
    """
    registry = ModelRegistry(session_models=spec.models, config=load_config, clients=models)
    spec, selected = apply_selection(spec, registry)
    if max_cost_usd is not None or max_tokens is not None:
        limits = spec.budget.model_copy(
            update={
                k: v
                for k, v in {"max_cost_usd": max_cost_usd, "max_tokens": max_tokens}.items()
                if v is not None
            }
        )
        spec = spec.model_copy(update={"budget": limits})
    if restart is None or not restart.validated:
        problems = validate_spec(spec, file=source, check_model=registry.check)
        if problems:
            raise SpecErrors(problems)
    values = validate_inputs(spec, inputs)
    ttl = lease_ttl(lease_ttl_s)
    all_steps = [*spec.steps, *(st for st, _, _ in (restart.extra_steps if restart else []))]
    step_models = {step.id: spec.step_models(step) for step in all_steps}
    named: dict[str, None] = {}
    for step in all_steps:
        named.update(dict.fromkeys(step_models[step.id]))
        named.update(dict.fromkeys(step.extra_models()))
    names = list(named)
    if spec.budget.max_cost_usd is not None:
        unpriced = [n for n in dict.fromkeys(names) if registry.price_of(n) is None]
        if unpriced:
            listed = ", ".join(repr(n) for n in unpriced)
            raise SpecErrors(
                [
                    SpecError(
                        f"a cost budget needs a price for every model; {listed} has none "
                        "(set input_cost_per_mtok and output_cost_per_mtok)",
                        file=source,
                        field="budget.max_cost_usd",
                    )
                ]
            )

    owned: Store | None = None
    if store is DEFAULT_STORE or isinstance(store, str):
        store = owned = await Store.open(None if store is DEFAULT_STORE else store)
    # Keep-alive for every pooled connection: a closed one costs a TLS handshake.
    http = (
        create_http_client(max_connections=100, max_keepalive=100)
        if registry.needs_http(names)
        else None
    )
    try:
        pool = registry.build(names, http)
        if restart is not None and restart.wrap is not None:
            pool = {name: restart.wrap(name, pooled) for name, pooled in pool.items()}
        return await _run_recorded(
            spec,
            values,
            store,
            pool,
            on_event,
            source,
            selected,
            restart or Restart(),
            on_delta,
            step_models,
            ttl,
        )
    finally:
        # Shielded: an interrupted run must still release its connections.
        with anyio.CancelScope(shield=True):
            if http is not None:
                await http.aclose()
            if owned is not None:
                await owned.close()


async def _run_recorded(
    spec: SessionSpec,
    values: dict[str, Any],
    store: Store | None,
    clients: Mapping[str, PooledModel],
    on_event: Listener | None,
    source: str | None,
    selected: dict[str, str],
    restart: Restart,
    on_delta: OnDelta | None = None,
    step_models: dict[str, list[str]] | None = None,
    lease_ttl_s: float = _DEFAULT_LEASE_TTL_S,
) -> SessionResult:
    # uuid4, not v7: a random prefix keeps `thinktank show <first 8 chars>` unambiguous.
    session_id = restart.session_id or str(uuid.uuid4())
    settings = spec.parallel_execution.effective()
    collector = ResultCollector()
    recorder = _Recorder(store) if store is not None else None
    listeners: list[Listener] = [collector]
    if on_event is not None:
        listeners.append(on_event)
    if recorder is not None:
        listeners.append(recorder.send.send_nowait)

    def emit_all(event: Event) -> None:
        for listener in listeners:
            listener(event)

    # Most runs have one listener (no store, no progress display): call it directly.
    emit: Listener = listeners[0] if len(listeners) == 1 else emit_all

    graph = StepGraph(spec)
    executor = StepExecutor(
        session_id=session_id,
        spec=spec,
        clients=clients,
        inputs=values,
        emit=emit,
        call_limiter=(
            anyio.CapacityLimiter(settings.max_concurrent_calls)
            if settings.max_concurrent_calls is not None
            else None
        ),
        cache=store.find_consensus if store is not None else None,
        budget=Budget(max_cost_usd=spec.budget.max_cost_usd, max_tokens=spec.budget.max_tokens),
        step_models=step_models,
    )
    scheduler = Scheduler(
        graph,
        executor,
        max_concurrent_steps=settings.max_concurrent_steps,
        scheduling=settings.scheduling,
        failure_strategy=settings.failure_strategy,
        on_skip=lambda step, reason: emit(
            StepSkipped(session_id=session_id, step_id=step, reason=reason)
        ),
        done=[k for k, v in restart.seed.items() if v.status == "completed"],
        failed={k: v.error or "failed" for k, v in restart.seed.items() if v.status == "failed"},
    )

    def grow_dag(parent: str, added: list[StepSpec], sink: str) -> list[str]:
        """Grow the graph and the executor together: the steps that now wait for sink."""
        rewired = graph.grow(parent, added, sink)
        executor.adopt(parent, added, sink)
        return rewired

    # The DAG an earlier run grew, rebuilt the way it grew (before the scheduler counts).
    for parent, added in _added_by_parent(restart.extra_steps).items():
        grow_dag(parent, added, restart.aliases[parent])
    executor.attempt_base.update(restart.attempt_base)
    for key, seeded in restart.seed.items():
        if seeded.status == "completed":
            executor.outputs[key] = seeded.output

    def grow(
        parent: str, added: list[StepSpec], sink: str, provenance: dict[str, tuple[str, ...]]
    ) -> None:
        base = len(graph)
        emit(
            StepsAdded(
                session_id=session_id,
                parent=parent,
                steps=tuple(
                    _step_info(spec, st, base + i, parent, provenance.get(st.id, ()))
                    for i, st in enumerate(added)
                ),
            )
        )
        rewired = grow_dag(parent, added, sink)
        scheduler.grown([st.id for st in added], rewired)

    executor.on_delta = on_delta
    # Only the store and the caller's listener read CallStarted (the result does not).
    executor.record_starts = recorder is not None or on_event is not None
    executor.on_grow = grow
    executor.on_stop = scheduler.stop
    if recorder is not None:
        recorder.on_give_up = scheduler.stop
    started_at = utcnow()
    start = time.perf_counter()
    started = SessionStarted(
        session_id=session_id,
        name=spec.name,
        # Dumping a 10,000-step spec costs ~0.1 s: only the store needs it.
        spec=spec.model_dump(mode="json") if recorder is not None else {},
        inputs=values,
        parallel_execution_config=spec.parallel_execution_wire(),
        steps=_steps_info(spec, step_models)
        + tuple(
            _step_info(spec, st, len(spec.steps) + i, parent, prov)
            for i, (st, parent, prov) in enumerate(restart.extra_steps)
        ),
        source=source,
        model_selection=selected,
        origin=restart.origin,
        at=started_at,
    )
    lease = restart.lease
    claimed = False

    def finish(status: Any, error: str | None) -> None:
        usages = [u for k in collector.steps if (u := collector.step_usage(k)) is not None]
        counts = {"completed": 0, "failed": 0, "skipped": 0}
        for st in collector.steps.values():
            if st.status == "completed":
                counts["completed"] += 1
            elif st.status in ("failed", "cancelled"):
                counts["failed"] += 1
            elif st.status == "skipped":
                counts["skipped"] += 1
        emit(
            SessionFinished(
                session_id=session_id,
                status=status,
                started_at=started_at,
                error=error,
                input_tokens=sum_known([u[0] for u in usages]) if usages else 0,
                output_tokens=sum_known([u[1] for u in usages]) if usages else 0,
                cost_usd=sum_known([u[2] for u in usages]) if usages else 0.0,
                wall_ms=(time.perf_counter() - start) * 1000,
                steps_completed=counts["completed"],
                steps_failed=counts["failed"],
                steps_skipped=counts["skipped"],
            )
        )

    async def drive() -> None:
        try:
            try:
                outcome = await scheduler.run()
            except anyio.get_cancelled_exc_class():
                finish("interrupted", "interrupted before the session finished")
                raise
            reused = sum(1 for v in restart.seed.values() if v.status == "completed")
            finish(*_session_status(outcome, len(graph) - reused))
        finally:
            executor.close()
            if recorder is not None:
                recorder.send.close()

    renewal = anyio.CancelScope()
    try:
        if store is not None and restart.session_id is None:
            # A new session: write its row and lease it to this run before anything else
            # sees it, so a resume elsewhere refuses it while this run is alive.
            await store.write([started])
            lease = (new_worker_id(), lease_ttl_s)
            claimed = await store.claim_session(session_id, worker_id=lease[0], ttl_s=lease_ttl_s)
            if not claimed:
                raise UsageError(f"session {session_id} was leased by another worker at once")
            collector(started)  # the listeners but the recorder: it is written
            if on_event is not None:
                on_event(started)
        else:
            emit(started)
        _seed(restart, session_id, collector, emit, started_at)
        if recorder is None:
            await drive()
        else:
            async with anyio.create_task_group() as tg:
                await tg.start(recorder.run)
                if lease is not None:
                    tg.start_soon(
                        _keep_lease, recorder.store, session_id, *lease, renewal, scheduler.stop
                    )
                try:
                    await drive()
                finally:
                    renewal.cancel()
    except anyio.get_cancelled_exc_class():
        if recorder is not None:
            with anyio.CancelScope(shield=True):
                await recorder.drain()
        raise
    finally:
        if recorder is not None:
            recorder.send.close()
            recorder.receive.close()
        if claimed and store is not None and lease is not None:
            # Shielded: an interrupted run gives its session up at once, so it can be
            # resumed without waiting for the lease to expire.
            with anyio.CancelScope(shield=True):
                # A failed release is harmless (the lease expires by itself) and must
                # not hide how the run ended.
                with contextlib.suppress(StoreError):
                    await store.release(session_id, worker_id=lease[0])
    if recorder is not None and recorder.pending:
        raise StoreError(
            f"{recorder.error}; {len(recorder.pending)} event(s) of session {session_id} "
            "are not stored (retried until the session ended)"
        )
    result = collector.result
    assert result is not None
    return result


def _added_by_parent(
    extra_steps: Sequence[tuple[StepSpec, str, tuple[str, ...]]],
) -> dict[str, list[StepSpec]]:
    """The steps each decompose step added, in the order they were added."""
    added: dict[str, list[StepSpec]] = {}
    for step, parent, _provenance in extra_steps:
        added.setdefault(parent, []).append(step)
    return added


def _seed(
    restart: Restart,
    session_id: str,
    collector: ResultCollector,
    emit: Callable[[Event], None],
    at: datetime,
) -> None:
    """Put seeded steps and lost calls where the run's result and store expect them."""
    for lost in restart.lost_calls:
        emit(
            CallFinished(
                session_id=session_id,
                step_id=lost.step_id,
                call_id=lost.call_id,
                model=lost.model,
                attempt=lost.attempt,
                status="cancelled",
                started_at=lost.at,
                error="lost: the process stopped before the call finished",
            )
        )
    for key, seeded in restart.seed.items():
        finished = StepFinished(
            session_id=session_id,
            step_id=key,
            status=seeded.status,
            attempts=restart.attempt_base.get(key, 0),
            started_at=at,
            output=seeded.output,
            error=seeded.error,
            input_tokens=seeded.input_tokens,
            output_tokens=seeded.output_tokens,
            cost_usd=seeded.cost_usd,
        )
        if restart.record_seed:
            emit(finished)
        else:
            collector(finished)


def run_sync(spec: SessionSpec, **kwargs: Any) -> SessionResult:
    """``run`` for scripts and notebooks; works inside a running event loop too.

    Inside a running loop (Jupyter), the session runs on a worker thread with its own
    loop, and this call blocks until it ends.
    """
    job = functools.partial(anyio.run, functools.partial(run, spec, **kwargs), backend="asyncio")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return job()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(job).result()
