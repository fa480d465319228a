"""A caller's cancellation always propagates out of ``thinktank.run``.

Hypothesis runs random DAGs of one-model and multi-model steps (modes all, race and
quorum) with random model latencies and failures, with a SQLite store and without one,
inside the caller's own task group, and cancels that task group at a random moment.
``run()`` must end by the caller's cancellation, soon; no model call may start after
the cancel; and every step must end in a final state. A second test
checks anyio's rule directly: a step's own time-out, expiring at about the moment of an
outer cancel, never turns that cancel into a step failure.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinktank
from thinktank.errors import ProviderError
from thinktank.events import (
    CallStarted,
    Event,
    SessionFinished,
    SessionStarted,
    StepFinished,
    StepSkipped,
    StepStarted,
)
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec
from thinktank.store import Store

FINAL = {"completed", "failed", "cancelled", "skipped"}
CANCEL_WITHIN_S = 0.1
"""How soon ``run()`` must give the caller its cancellation back."""


MODELS = ("m", "m2", "m3")


class StampedModel:
    """Sleeps each (step, model)'s latency, fails the ones it is told to, and appends
    every call it receives to ``starts``, a list shared by all the session's models."""

    provider = "test"

    def __init__(
        self,
        name: str,
        latency: dict[tuple[str, str], float],
        failing: set[tuple[str, str]],
        starts: list[tuple[str, str]],
    ) -> None:
        self.name = name
        self.latency = latency
        self.failing = failing
        self.starts = starts

    async def complete(self, request: ModelRequest) -> ModelResponse:
        key = (request.step_id, self.name)
        self.starts.append(key)
        await anyio.sleep(self.latency[key])
        if key in self.failing:
            raise ProviderError("injected failure", provider="test", model=self.name)
        return ModelResponse(content=f"{request.step_id} done", model=self.name)


def _models(rng: random.Random) -> dict[str, Any]:
    """A step's model fields: one model, or two or three in a random multi-model mode."""
    if rng.random() < 0.5:
        return {"model": "m"}
    models = list(MODELS[: rng.randint(2, 3)])
    return {"models": models, "mode": rng.choice(["all", "race", "quorum"])}


@st.composite
def sessions(
    draw: st.DrawFn,
) -> tuple[SessionSpec, dict[str, StampedModel], float | AtEvent]:
    """A random DAG (up to 12 steps, 0-3 dependencies each, half of them multi-model),
    latencies of 0-15 ms, some failing calls, a random limit (or none), failure strategy
    and scheduling, and the moment to cancel at (0-40 ms, or as one of the first 40
    steps or calls starts)."""
    n = draw(st.integers(min_value=1, max_value=12))
    rng = random.Random(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    steps = [
        {
            "id": f"s{i}",
            "prompt": "p",
            **_models(rng),
            "depends_on": sorted(
                {f"s{d}" for d in rng.sample(range(i), min(i, rng.randint(0, 3)))}
            ),
            "retries": rng.choice([0, 0, 1]),
        }
        for i in range(n)
    ]
    limit = draw(st.sampled_from([1, 2, 4, None]))
    spec = parse_session(
        {
            "name": "cancel",
            "parallelExecution": {
                "maxConcurrentSteps": "unlimited" if limit is None else limit,
                "failureStrategy": draw(st.sampled_from(["best_effort", "fail_fast"])),
                "scheduling": draw(st.sampled_from(["eager", "layered"])),
            },
            "steps": steps,
        },
        known_models=list(MODELS),
    )
    calls = [(f"s{i}", name) for i in range(n) for name in MODELS]
    latency = {key: rng.uniform(0, 0.015) for key in calls}
    failing = {key for key in calls if rng.random() < 0.15}
    starts: list[tuple[str, str]] = []
    models = {name: StampedModel(name, latency, failing, starts) for name in MODELS}
    moment = draw(st.floats(min_value=0, max_value=0.04) | st.builds(AtEvent, st.integers(1, 40)))
    return spec, models, moment


@dataclass(frozen=True)
class AtEvent:
    """Cancel from inside the listener of the ``n``-th event that starts a step or a
    call: the task that emitted it goes on without awaiting, the moment a call could
    start after the cancel, which a random moment on the clock rarely hits. (Never at
    other events: after the last step's end the session may end without an await,
    and so not as interrupted, as anyio allows.)"""

    n: int


@dataclass
class Cancelled:
    """What a caller saw when it cancelled a run (times on anyio's clock)."""

    events: list[Event] = field(default_factory=list)
    cancel_at: float | None = None
    """When the caller cancelled (None: the run ended first)."""
    starts: int = 0
    """Steps and calls started so far."""
    calls_before_cancel: int = 0
    """How many model calls had started when the caller cancelled."""
    finished_at: float | None = None
    """When the engine emitted the session's end."""
    end: float = 0.0
    """When ``run()`` returned or raised."""
    returned: bool = False


async def _cancel_during_run(
    spec: SessionSpec, models: dict[str, StampedModel], at: float | AtEvent, store: str | None
) -> Cancelled:
    """Run ``spec`` in the caller's task group and cancel that ``at`` s after the session
    started (or at event ``at.n``), unless the run ended first."""
    seen = Cancelled()
    started = anyio.Event()
    ended = anyio.Event()

    def on_event(event: Event) -> None:
        seen.events.append(event)
        if isinstance(event, SessionStarted):
            started.set()
        elif isinstance(event, SessionFinished):
            seen.finished_at = anyio.current_time()
        if isinstance(event, StepStarted | CallStarted):
            seen.starts += 1
            if isinstance(at, AtEvent) and seen.starts == at.n and not ended.is_set():
                # A CallStarted's call has started: its model receives it right after.
                cancel(started=isinstance(event, CallStarted))

    def cancel(started: bool = False) -> None:
        seen.cancel_at = anyio.current_time()
        seen.calls_before_cancel = len(models["m"].starts) + started
        tg.cancel_scope.cancel()

    async def caller() -> None:
        try:
            await thinktank.run(spec, store=store, models=models, on_event=on_event)
            seen.returned = True
        finally:
            seen.end = anyio.current_time()
            ended.set()
            started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        # Counted from the session's start (a store takes a while to open): the cancel
        # comes while the DAG runs.
        await started.wait()
        with anyio.move_on_after(at if isinstance(at, float) else math.inf):
            await ended.wait()
        if not ended.is_set() and seen.cancel_at is None:
            cancel()
    if seen.cancel_at is not None and not seen.returned:
        # The run ended by the caller's cancel, which the caller's task group caught.
        assert tg.cancel_scope.cancelled_caught
    return seen


def _check(spec: SessionSpec, models: dict[str, StampedModel], seen: Cancelled) -> None:
    ids = {s.id for s in spec.steps}
    ended = {e.step_id for e in seen.events if isinstance(e, StepFinished | StepSkipped)}
    assert ids <= ended, f"steps without an end: {ids - ended}"
    [finished] = [e for e in seen.events if isinstance(e, SessionFinished)]
    cancel_at = seen.cancel_at
    if cancel_at is None:
        assert seen.returned and finished.status != "interrupted"
        return
    assert seen.finished_at is not None
    if seen.finished_at <= cancel_at:
        # The session had ended and the run was releasing the store in a shielded
        # scope: it may return its result (no checkpoint is left), as anyio allows.
        assert finished.status != "interrupted"
    else:
        assert not seen.returned, "run() returned although its caller cancelled it"
        assert finished.status == "interrupted"
        # The engine's part: every step cancelled or skipped, the session's end emitted.
        assert seen.finished_at - cancel_at <= CANCEL_WITHIN_S
    late = models["m"].starts[seen.calls_before_cancel :]
    assert not late, f"model calls (step, model) started after the cancel: {late}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sessions())
def test_a_cancelled_caller_gets_its_cancellation_without_a_store(
    case: tuple[SessionSpec, dict[str, StampedModel], float | AtEvent],
) -> None:
    spec, models, at = case
    seen = anyio.run(_cancel_during_run, spec, models, at, None, backend="asyncio")
    _check(spec, models, seen)
    if seen.cancel_at is not None and not seen.returned:
        # Without a store there is nothing to release: run() itself is that fast.
        assert seen.end - seen.cancel_at <= CANCEL_WITHIN_S


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sessions())
def test_a_cancelled_caller_leaves_every_stored_step_final(
    tmp_path_factory: Any, case: tuple[SessionSpec, dict[str, StampedModel], float | AtEvent]
) -> None:
    spec, models, at = case
    db = str(Path(tmp_path_factory.mktemp("cancel")) / "t.db")

    async def main() -> None:
        seen = await _cancel_during_run(spec, models, at, db)
        _check(spec, models, seen)
        if seen.cancel_at is not None and not seen.returned:
            # After the engine's part, the run writes the queued events, releases its
            # lease and closes the store, shielded: SQLite I/O on a loaded machine
            # (~10-70 ms here), so a generous bound.
            assert seen.end - seen.cancel_at <= CANCEL_WITHIN_S + 2.0
        [started] = [e for e in seen.events if isinstance(e, SessionStarted)]
        [finished] = [e for e in seen.events if isinstance(e, SessionFinished)]
        store = await Store.open(db, read_only=True)
        try:
            stored = await store.get_session(started.session_id)
        finally:
            await store.close()
        assert {s.step_key for s in stored.steps} == {s.id for s in spec.steps}
        assert {s.status for s in stored.steps} <= FINAL, [
            (s.step_key, s.status) for s in stored.steps
        ]
        assert stored.status == finished.status

    anyio.run(main, backend="asyncio")


class Hanging:
    """Answers nothing, ever."""

    name = "m"
    provider = "test"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offset_ms=st.floats(min_value=-1.5, max_value=1.5), retries=st.sampled_from([0, 1]))
def test_a_step_time_out_never_turns_an_outer_cancel_into_a_failure(
    offset_ms: float, retries: int
) -> None:
    """An outer ``move_on_after`` expires at about the moment a step's own time-out
    does. The outer one is honoured (``run()`` does not return), and no step is
    recorded as failed once the outer cancel was called: the step's scope catches only
    its own deadline."""
    timeout_ms = 30
    spec = parse_session(
        {
            "name": "outer",
            "steps": [
                {"id": "a", "prompt": "p", "model": "m", "timeout_ms": timeout_ms},
                {
                    "id": "b",
                    "prompt": "p",
                    "model": "m",
                    "timeout_ms": timeout_ms,
                    "retries": retries,
                },
                {"id": "c", "prompt": "p", "model": "m", "timeout_ms": 60_000},
            ],
        },
        known_models=["m"],
    )
    failed_after_cancel: list[str] = []
    outer: list[anyio.CancelScope] = []

    def on_event(event: Event) -> None:
        if isinstance(event, StepFinished) and event.status == "failed" and outer[0].cancel_called:
            failed_after_cancel.append(event.step_id)

    async def main() -> bool:
        with anyio.move_on_after((timeout_ms + offset_ms) / 1000) as scope:
            outer.append(scope)
            await thinktank.run(spec, store=None, models={"m": Hanging()}, on_event=on_event)
            return True
        assert scope.cancelled_caught
        return False

    assert anyio.run(main, backend="asyncio") is False
    assert failed_after_cancel == []


async def test_a_session_cancelled_as_it_starts_is_stored_interrupted(tmp_path: Path) -> None:
    """Cancelled right after its first event is written, before a step is scheduled
    (the next checkpoint starts the recorder): the stored session is interrupted and
    unleased, not left "running"."""
    spec = parse_session(
        {
            "name": "early",
            "models": {"m": {"provider": "simulated", "default_reply": "x"}},
            "steps": [{"id": "a", "prompt": "p", "model": "m"}],
        }
    )
    db = str(tmp_path / "t.db")
    seen: list[str] = []
    with anyio.CancelScope() as scope:

        def listen(event: Any) -> None:
            if isinstance(event, SessionStarted):
                seen.append(event.session_id)
                scope.cancel()

        await thinktank.run(spec, store=db, on_event=listen)
    assert scope.cancelled_caught and len(seen) == 1
    async with await Store.open(db) as store:
        stored = await store.get_session(seen[0])
        assert stored.status == "interrupted"
        assert await store.lease_of(seen[0]) is None
