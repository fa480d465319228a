"""Running a session: validate, open the store, schedule, record, and fold a result.

``run`` is the one execution path: a validated spec, a model pool, the scheduler and
the step executor, with every event fanned out to the result collector, the caller's
listener (the CLI's progress display) and the store recorder. Bad input raises before
the store is opened, so it writes nothing.

The parts live in their own modules: the event recorder in ``engine.recorder``, the
restart model (resume, replay, fork) in ``engine.restart``, what a step does in
``engine.steps``. This module resolves the run (registry, selection, budget, validation,
model pool) and wires the parts together (``_Run``).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import anyio

from thinktank._ids import new_id
from thinktank.engine.budget import Budget
from thinktank.engine.calls import OnDelta
from thinktank.engine.decompose import Growth
from thinktank.engine.multi import OnSynthesis
from thinktank.engine.outcome import StepEnd
from thinktank.engine.recorder import Recorder
from thinktank.engine.restart import Restart
from thinktank.engine.result import ResultCollector, SessionResult
from thinktank.engine.scheduler import ScheduleOutcome, Scheduler
from thinktank.engine.steps import StepExecutor, sum_known
from thinktank.errors import SpecError, SpecErrors, StoreError, UsageError
from thinktank.events import (
    Event,
    SessionFinished,
    SessionStarted,
    StepInfo,
    StepsAdded,
    StepSkipped,
    utcnow,
)
from thinktank.providers.base import ModelClient, PooledModel
from thinktank.providers.config import load_config
from thinktank.providers.http import AsyncClient, create_http_client
from thinktank.providers.registry import ModelRegistry
from thinktank.session.graph import StepGraph
from thinktank.session.selection import apply_selection
from thinktank.session.spec import SessionSpec, StepSpec, validate_inputs
from thinktank.session.validation import validate_spec
from thinktank.store import Store
from thinktank.store._arg import DEFAULT_STORE, resolve_store

__all__ = [
    "DEFAULT_STORE",
    "LEASE_TTL_ENV",
    "check_session",
    "execute",
    "fan_out",
    "lease_ttl",
    "new_worker_id",
    "release_lease",
    "with_budget",
]


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
    busy) is tried again at the next tick, and so is one refused while the lease is
    still this run's or nobody's: on PostgreSQL a claim passes over a session row that
    another transaction has locked (a write of this very session, say), as it would a
    competing claim.
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
            if owner is None or owner[0] == worker_id:
                continue  # still this run's, or nobody's: the next tick claims it
            stop(f"another worker ({owner[0]}) took the session over")
            return


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
    return tuple(
        _step_info(spec, step, i, models=step_models[step.id], row_id=new_id())
        for i, step in enumerate(spec.steps)
    )


def _session_status(outcome: ScheduleOutcome, total: int) -> tuple[Any, str | None]:
    if outcome.stopped is not None:
        return ("partial" if outcome.completed else "failed"), outcome.stopped
    if outcome.aborted_by is not None:
        reason = outcome.failed[outcome.aborted_by]
        return "failed", f"step {outcome.aborted_by!r} failed (fail_fast): {reason}"
    if len(outcome.completed) == total:
        # Every step ran; one that abstained still completed (its outcome says so).
        return "completed", None
    first = next(iter(outcome.failed.items()), None)
    detail = f"; first: step {first[0]!r}: {first[1]}" if first else ""
    if outcome.abstained:
        # Abstaining is an answer ("no consensus"), not a failure: the session is
        # partial because the steps depending on it could not run.
        detail += f"; no consensus at {', '.join(map(repr, outcome.abstained))}"
    summary = f"{len(outcome.failed)} step(s) failed, {len(outcome.skipped)} skipped{detail}"
    return ("failed" if not outcome.completed else "partial"), summary


def _registry(spec: SessionSpec, models: Mapping[str, ModelClient] | None) -> ModelRegistry:
    return ModelRegistry(session_models=spec.models, config=load_config, clients=models)


def _validate(spec: SessionSpec, registry: ModelRegistry, source: str | None) -> None:
    problems = validate_spec(spec, file=source, check_model=registry.check)
    if problems:
        raise SpecErrors(problems)


async def release_lease(store: Store, session_id: str, worker_id: str) -> None:
    """Give a run's lease up at once, so the session can be resumed without waiting for
    the lease to expire; shielded, so an interrupted run does it too."""
    with anyio.CancelScope(shield=True):
        # A failed release is harmless (the lease expires by itself) and must not hide
        # how the run ended.
        with contextlib.suppress(StoreError):
            await store.release(session_id, worker_id=worker_id)


def check_session(
    spec: SessionSpec,
    *,
    inputs: Mapping[str, Any] | None = None,
    models: Mapping[str, ModelClient] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Check a session as :func:`execute` does before it writes anything (the graph,
    the models it names, its inputs), without running it; the validated inputs.

    ``thinktank.executor.enqueue`` calls it, so that a session that could not start is
    refused when it is queued rather than when a worker picks it up.

    Raises:
        SpecErrors: the spec has problems (every one of them).
        InputError: the inputs do not match the spec's.
    """
    registry = _registry(spec, models)
    selected, _ = apply_selection(spec, registry)
    _validate(selected, registry, source)
    names = [n for step in selected.steps for n in _models_of(selected, step)]
    _require_prices(selected, registry, names, source)
    return validate_inputs(selected, inputs)


def with_budget(
    spec: SessionSpec, *, max_cost_usd: float | None = None, max_tokens: int | None = None
) -> SessionSpec:
    """The spec with its budget's limits replaced by those given (``--max-cost``,
    ``--max-tokens``, ``run(max_cost_usd=, max_tokens=)``); the same spec when none is."""
    given = {"max_cost_usd": max_cost_usd, "max_tokens": max_tokens}
    update = {k: v for k, v in given.items() if v is not None}
    if not update:
        return spec
    return spec.model_copy(update={"budget": spec.budget.model_copy(update=update)})


def _models_of(spec: SessionSpec, step: StepSpec) -> list[str]:
    """Every model a step may call: those it asks and those it names otherwise (a judge)."""
    return [*spec.step_models(step), *step.extra_models()]


def _require_prices(
    spec: SessionSpec, registry: ModelRegistry, names: Sequence[str], source: str | None
) -> None:
    """A cost budget can only be kept with a price for every model the session calls."""
    if spec.budget.max_cost_usd is None:
        return
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


async def execute(
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
    on_synthesis: OnSynthesis | None = None,
    http: AsyncClient | None = None,
    key_id: str | None = None,
    request_id: str | None = None,
) -> SessionResult:
    """The one execution path: run a session to the end and return its result.

    ``thinktank.run`` and ``thinktank.iter`` (``engine.stream``) call it; its arguments
    and errors are documented on ``thinktank.run``. ``restart`` continues from stored
    state (``thinktank.replay`` builds these).
    """
    registry = _registry(spec, models)
    spec, selected = apply_selection(spec, registry)
    spec = with_budget(spec, max_cost_usd=max_cost_usd, max_tokens=max_tokens)
    if restart is None or not restart.validated:
        _validate(spec, registry, source)
    values = validate_inputs(spec, inputs)
    ttl = lease_ttl(lease_ttl_s)
    all_steps = [*spec.steps, *(st for st, _, _ in (restart.extra_steps if restart else []))]
    step_models = {step.id: spec.step_models(step) for step in all_steps}
    names = list(dict.fromkeys(n for step in all_steps for n in _models_of(spec, step)))
    _require_prices(spec, registry, names, source)

    store, owned = await resolve_store(store)
    # Keep-alive for every pooled connection: a closed one costs a TLS handshake.
    own_http = (
        create_http_client(max_connections=100, max_keepalive=100)
        if http is None and registry.needs_http(names)
        else None
    )
    http = http or own_http
    try:
        restart = restart or Restart()
        pool = restart.pool(registry.build(names, http, store))
        return await _run_recorded(
            spec,
            values,
            store,
            pool,
            on_event,
            {"source": source, "key_id": key_id, "request_id": request_id},
            selected,
            restart,
            on_delta,
            step_models,
            ttl,
            on_synthesis,
        )
    finally:
        # Shielded: an interrupted run must still release its connections.
        with anyio.CancelScope(shield=True):
            if own_http is not None:
                await own_http.aclose()
            if owned is not None:
                await owned.close()


async def _run_recorded(
    spec: SessionSpec,
    values: dict[str, Any],
    store: Store | None,
    clients: Mapping[str, PooledModel],
    on_event: Listener | None,
    provenance: dict[str, str | None],
    selected: dict[str, str],
    restart: Restart,
    on_delta: OnDelta | None = None,
    step_models: dict[str, list[str]] | None = None,
    lease_ttl_s: float = _DEFAULT_LEASE_TTL_S,
    on_synthesis: OnSynthesis | None = None,
) -> SessionResult:
    wired = _Run(
        spec, values, store, clients, on_event, restart, on_delta, step_models, on_synthesis
    )
    started = wired.started(provenance, selected)
    return await wired.run(started, lease_ttl_s)


def fan_out(listeners: Sequence[Listener]) -> Listener:
    """One listener that calls every one of ``listeners``, in order."""
    if len(listeners) == 1:
        # Most runs have one listener (no store, no progress display): call it directly.
        return listeners[0]

    def emit_all(event: Event) -> None:
        for listener in listeners:
            listener(event)

    return emit_all


class _Run:
    """One run's parts, wired once: the graph, the executor, the scheduler, the
    recorder, and the listeners every event goes to.

    It is the one owner of the DAG's growth during the run (:meth:`grow`): a decompose
    step's executor hands it the steps it added; a restart's earlier growth is rebuilt
    here, before the scheduler counts.
    """

    def __init__(
        self,
        spec: SessionSpec,
        values: dict[str, Any],
        store: Store | None,
        clients: Mapping[str, PooledModel],
        on_event: Listener | None,
        restart: Restart,
        on_delta: OnDelta | None,
        step_models: dict[str, list[str]] | None,
        on_synthesis: OnSynthesis | None = None,
    ) -> None:
        # uuid4, not v7: a random prefix keeps `thinktank show <first 8 chars>` unambiguous.
        self.session_id = session_id = restart.session_id or str(uuid.uuid4())
        self.spec = spec
        self.values = values
        self.restart = restart
        self.store = store
        self.on_event = on_event
        self.step_models = step_models
        self.collector = ResultCollector()
        self.recorder = Recorder(store, self.stop) if store is not None else None
        self.ended = False
        """Whether the run's last event (``SessionFinished``) was emitted."""
        listeners: list[Listener] = [self.collector]
        if on_event is not None:
            listeners.append(on_event)
        if self.recorder is not None:
            listeners.append(self.recorder.emit)
        self.emit = emit = fan_out(listeners)
        self.graph = StepGraph(spec)
        # The DAG an earlier run grew, rebuilt the way it grew (before the scheduler counts).
        for parent, added, sink in restart.growths():
            self.graph.grow(parent, added, sink)
        settings = spec.parallel_execution.effective()
        self.executor = StepExecutor(
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
            outputs=restart.completed(),
            cache=store.find_consensus if store is not None else None,
            budget=Budget(max_cost_usd=spec.budget.max_cost_usd, max_tokens=spec.budget.max_tokens),
            step_models=step_models,
            added=[step for step, _, _ in restart.extra_steps],
            aliases=restart.aliases,
            attempt_base=restart.attempt_base,
            on_delta=on_delta,
            on_synthesis=on_synthesis,
            # Only the store and the caller's listener read CallStarted (the result does not).
            record_starts=len(listeners) > 1,
            grow=self.grow,
            on_stop=self.stop,
        )
        self.scheduler = Scheduler(
            self.graph,
            self.executor if self.recorder is None else self._execute_with_room,
            max_concurrent_steps=settings.max_concurrent_steps,
            scheduling=settings.scheduling,
            failure_strategy=settings.failure_strategy,
            on_skip=lambda step, reason: emit(
                StepSkipped(session_id=session_id, step_id=step, reason=reason)
            ),
            done=list(restart.completed()),
            failed=restart.failed(),
            abstained=restart.abstained(),
        )
        self.started_at = utcnow()
        self.start = time.perf_counter()

    def stop(self, reason: str) -> None:
        """Start no new step (a budget ran out, the store failed, the lease was lost)."""
        self.scheduler.stop(reason)

    def grow(self, growth: Growth) -> None:
        """A decompose step added steps: record them, grow the graph, let the scheduler
        count them."""
        base = len(self.graph)
        parent = growth.parent
        self.emit(
            StepsAdded(
                session_id=self.session_id,
                parent=parent,
                steps=tuple(
                    _step_info(self.spec, st, base + i, parent, growth.provenance.get(st.id, ()))
                    for i, st in enumerate(growth.added)
                ),
            )
        )
        rewired = self.graph.grow(parent, growth.added, growth.sink)
        self.scheduler.grown([st.id for st in growth.added], rewired)

    async def _execute_with_room(self, step_id: str) -> StepEnd:
        """Run a step once the recorder has room: a store that is behind holds new
        steps back instead of letting its backlog grow."""
        assert self.recorder is not None
        await self.recorder.room()
        return await self.executor(step_id)

    def started(
        self, provenance: dict[str, str | None], selected: dict[str, str]
    ) -> SessionStarted:
        """The run's first event; ``provenance``: its ``source``, ``key_id`` and
        ``request_id``."""
        spec, restart = self.spec, self.restart
        return SessionStarted(
            session_id=self.session_id,
            name=spec.name,
            # Dumping a 10,000-step spec costs ~0.1 s: only the store needs it.
            spec=spec.model_dump(mode="json") if self.recorder is not None else {},
            inputs=self.values,
            parallel_execution_config=spec.parallel_execution_wire(),
            steps=_steps_info(spec, self.step_models)
            + tuple(
                _step_info(spec, st, len(spec.steps) + i, parent, prov)
                for i, (st, parent, prov) in enumerate(restart.extra_steps)
            ),
            **provenance,
            model_selection=selected,
            origin=restart.origin,
            at=self.started_at,
        )

    def finish(self, status: Any, error: str | None) -> None:
        """Emit the run's last event: how it ended and what it cost."""
        self.ended = True
        collector = self.collector
        usages = [u for k in collector.steps if (u := collector.step_usage(k)) is not None]
        counts = Counter(
            "failed" if st.status == "cancelled" else st.status for st in collector.steps.values()
        )
        self.emit(
            SessionFinished(
                session_id=self.session_id,
                status=status,
                started_at=self.started_at,
                error=error,
                input_tokens=sum_known([u[0] for u in usages]) if usages else 0,
                output_tokens=sum_known([u[1] for u in usages]) if usages else 0,
                cost_usd=sum_known([u[2] for u in usages]) if usages else 0.0,
                wall_ms=(time.perf_counter() - self.start) * 1000,
                steps_completed=counts["completed"],
                steps_failed=counts["failed"],
                steps_skipped=counts["skipped"],
            )
        )

    async def drive(self) -> None:
        """Schedule every step, then emit how the session ended."""
        try:
            try:
                outcome = await self.scheduler.run()
            except anyio.get_cancelled_exc_class():
                self.finish("interrupted", "interrupted before the session finished")
                raise
            reused = len(self.restart.completed())
            self.finish(*_session_status(outcome, len(self.graph) - reused))
        finally:
            if self.recorder is not None:
                self.recorder.close()

    async def announce(
        self, started: SessionStarted, lease_ttl_s: float
    ) -> tuple[str, float] | None:
        """Emit the first event; a new recorded session is written and leased to this
        run before anything else sees it (a resume elsewhere refuses it while this run
        is alive). The lease this run took, if it took one."""
        store = self.store
        if store is None or self.restart.session_id is not None:
            self.emit(started)
            return None
        lease = (new_worker_id(), lease_ttl_s)
        # Shielded: a cancel arriving while another writer commits this batch must not
        # leave a written, leased session that this run does not know it announced.
        with anyio.CancelScope(shield=True):
            await store.start_session(started, worker_id=lease[0], ttl_s=lease_ttl_s)
        self.collector(started)  # the listeners but the recorder: it is written
        if self.on_event is not None:
            self.on_event(started)
        return lease

    async def run(self, started: SessionStarted, lease_ttl_s: float) -> SessionResult:
        """Run the session to its end, recording it; its result."""
        recorder = self.recorder
        claimed: tuple[str, float] | None = None
        announced = False
        try:
            claimed = await self.announce(started, lease_ttl_s)
            announced = True
            recorded, result_only = self.restart.seed_events(self.session_id, self.started_at)
            for event in recorded:
                self.emit(event)
            for event in result_only:
                self.collector(event)
            if recorder is None:
                await self.drive()
            else:
                await self._drive_recorded(recorder, claimed or self.restart.lease)
        except anyio.get_cancelled_exc_class():
            if announced and not self.ended:
                # Cancelled before the scheduler ran (starting the recorder, say): the
                # session is stored, so it must not stay "running".
                self.finish("interrupted", "interrupted before the session finished")
            if recorder is not None:
                with anyio.CancelScope(shield=True):
                    await recorder.drain()
            raise
        finally:
            if claimed is not None:
                await self._release(claimed[0])
        if recorder is not None and recorder.pending:
            raise StoreError(
                f"{recorder.error}; {len(recorder.pending)} event(s) of session "
                f"{self.session_id} are not stored (retried until the session ended)"
            )
        result = self.collector.result
        assert result is not None
        return result

    async def _drive_recorded(self, recorder: Recorder, lease: tuple[str, float] | None) -> None:
        """``drive`` with the recorder writing alongside, and the lease renewed."""
        renewal = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            await tg.start(recorder.run)
            if lease is not None:
                tg.start_soon(
                    _keep_lease, recorder.store, self.session_id, *lease, renewal, self.stop
                )
            try:
                await self.drive()
            finally:
                renewal.cancel()

    async def _release(self, worker_id: str) -> None:
        assert self.store is not None
        await release_lease(self.store, self.session_id, worker_id)
