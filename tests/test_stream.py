"""``thinktank.iter``: a run as a stream of its events, and ``run`` built on it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinktank
from thinktank import events as ev
from thinktank.errors import InputError, RunError
from thinktank.events import Event
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec

from .conftest import CallLog, CountingModel


def _chain(n: int, **extra: Any) -> SessionSpec:
    steps = [
        {"id": f"s{i}", "model": "a", "prompt": f"p{i}", "depends_on": [f"s{i - 1}"] if i else []}
        for i in range(n)
    ]
    return parse_session({"name": "t", "steps": steps, **extra}, known_models=["a", "b"])


def _wide(n: int) -> SessionSpec:
    steps = [{"id": f"s{i}", "models": ["a", "b"], "prompt": f"p{i}"} for i in range(n)]
    return parse_session(
        {"name": "wide", "steps": steps, "parallel_execution": {"max_concurrent_steps": 2}},
        known_models=["a", "b"],
    )


def _models(delay_s: float = 0.0) -> dict[str, thinktank.ModelClient]:
    log = CallLog()
    return {n: CountingModel(n, log, delay_s=delay_s) for n in "ab"}


def _essence(result: thinktank.SessionResult) -> dict[str, Any]:
    """A result without what differs between two runs (ids, times)."""
    data = result.model_dump(exclude={"session_id", "started_at", "finished_at", "wall_ms"})
    for step in data["steps"].values():
        step.pop("latency_ms")
        for call in step["calls"]:
            call.pop("call_id")
            call.pop("latency_ms")
    return data


@pytest.mark.anyio
async def test_events_arrive_in_order_and_result_equals_run(tmp_path: Path) -> None:
    """The stream yields every event the store records, in order, and ``result`` is what
    ``run`` returns for the same session (ids and times aside)."""
    spec = _chain(3)
    seen: list[Event] = []
    async with thinktank.iter(spec, store=None, models=_models()) as run:
        async for event in run:
            seen.append(event)
    kinds = [type(e) for e in seen]
    assert kinds[0] is ev.SessionStarted and kinds[-1] is ev.SessionFinished
    assert kinds[1:-1] == [ev.StepStarted, ev.CallStarted, ev.CallFinished, ev.StepFinished] * 3
    assert [e.step_id for e in seen if isinstance(e, ev.StepFinished)] == ["s0", "s1", "s2"]
    streamed = run.result
    direct = await thinktank.run(spec, store=None, models=_models())
    assert _essence(streamed) == _essence(direct)
    assert streamed.status == "completed" and streamed.outputs == direct.outputs
    # on_event= still sees every event, the same ones.
    also: list[Event] = []
    async with thinktank.iter(spec, store=None, models=_models(), on_event=also.append) as run2:
        mine = [e async for e in run2]
    assert mine == also and len(mine) == len(seen)


@pytest.mark.anyio
async def test_errors_are_run_s_errors() -> None:
    """Bad inputs raise what ``run`` raises, from the ``async for``; no result."""
    spec = parse_session(
        {
            "name": "t",
            "inputs": {"q": {"type": "string"}},
            "steps": [{"id": "s", "model": "a", "prompt": "p"}],
        },
        known_models=["a"],
    )
    with pytest.raises(InputError):
        await thinktank.run(spec, store=None, models=_models())
    with pytest.raises(InputError):
        async with thinktank.iter(spec, store=None, models=_models()) as run:
            async for _ in run:
                pass
    with pytest.raises(RunError):
        run.result  # noqa: B018 - the property raises


@pytest.mark.anyio
async def test_early_break_cancels_the_session_in_the_store(tmp_path: Path) -> None:
    """Leaving the loop early cancels the session: the store shows it interrupted,
    the step in flight cancelled, and the steps after it skipped (never started)."""
    db = str(tmp_path / "t.db")
    async with await thinktank.Store.open(db) as store:
        async with thinktank.iter(_chain(3), store=store, models=_models(0.2)) as run:
            async for event in run:
                if isinstance(event, ev.CallStarted):
                    break
        with pytest.raises(RunError, match="cancelled"):
            run.result  # noqa: B018 - the property raises
        (summary,) = await store.list_sessions()
        stored = await store.get_session(summary.id)
    assert stored.status == "interrupted"
    assert [s.status for s in stored.steps] == ["cancelled", "skipped", "skipped"]


@pytest.mark.anyio
async def test_outer_cancellation_propagates_and_session_ends_in_store(tmp_path: Path) -> None:
    """A cancellation from outside is not swallowed: code after the block never runs,
    and the session is recorded as interrupted."""
    db = str(tmp_path / "t.db")
    after = False
    with anyio.CancelScope() as outer:
        async with thinktank.iter(_chain(3), store=db, models=_models(0.2)) as run:
            async for event in run:
                if isinstance(event, ev.StepFinished):
                    outer.cancel()
        after = True
    assert outer.cancelled_caught and not after
    async with await thinktank.Store.open(db) as store:
        (summary,) = await store.list_sessions()
        stored = await store.get_session(summary.id)
    assert stored.status == "interrupted"
    assert stored.steps[0].status == "completed"
    assert "running" not in {s.status for s in stored.steps}


@pytest.mark.anyio
async def test_outer_cancel_while_waiting_for_an_event() -> None:
    """Cancelled while the consumer waits for the next event: the cancellation
    propagates within the step's model latency (the model call is cancelled)."""
    with anyio.move_on_after(0.3) as scope:
        async with thinktank.iter(_chain(2), store=None, models=_models(30.0)) as run:
            async for _ in run:
                pass
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_a_slow_consumer_bounds_the_queue() -> None:
    """With a consumer slower than the models, the queue never grows past the buffer
    plus the events of the steps under way; without the bound it would hold the whole
    session's events."""
    n, buffer = 40, 4
    spec = _wide(n)
    emitted = 0
    ahead = 0

    def count(event: Event) -> None:
        nonlocal emitted
        emitted += 1

    received = 0
    async with thinktank.iter(
        spec, store=None, models=_models(), on_event=count, buffer=buffer
    ) as run:
        async for _ in run:
            received += 1
            ahead = max(ahead, emitted - received)
            await anyio.sleep(0.002)
    total = received
    # Each step: started, 2 x (call started, call finished), consensus, finished.
    assert run.result.ok and total == 2 + n * 7
    # Two steps at a time, each at most 7 events past the gate, plus the buffer.
    assert run.high_water <= buffer + 2 * 7 + 2
    assert ahead <= buffer + 2 * 7 + 2
    assert ahead < total // 4


@st.composite
def _cases(draw: st.DrawFn) -> tuple[SessionSpec, int, int, list[float], int | None]:
    """A random DAG over models a and b, a buffer, a consumer's delays, and maybe the
    event after which it stops reading."""
    n = draw(st.integers(1, 12))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    steps: list[dict[str, Any]] = []
    for i in range(n):
        deps = sorted(set(rng.sample(range(i), min(i, rng.randint(0, 2)))))
        step: dict[str, Any] = {"id": f"s{i}", "prompt": "p", "depends_on": [f"s{d}" for d in deps]}
        if rng.random() < 0.5:
            step["models"] = ["a", "b"]
        else:
            step["model"] = rng.choice("ab")
        steps.append(step)
    k = draw(st.integers(1, 4))
    spec = parse_session(
        {"name": "h", "steps": steps, "parallel_execution": {"max_concurrent_steps": k}},
        known_models=["a", "b"],
    )
    buffer = draw(st.integers(1, 8))
    delays = draw(st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.003]), min_size=1, max_size=8))
    stop = draw(st.one_of(st.none(), st.integers(0, 4 * n)))
    return spec, k, buffer, delays, stop


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases())
def test_stream_property(case: tuple[SessionSpec, int, int, list[float], int | None]) -> None:
    """Random DAGs, consumer speeds and early stops: the consumer sees the emitted
    events in order, the queue stays bounded, every step starts at most once, no call
    starts after the consumer left, and nothing hangs."""
    spec, k, buffer, delays, stop = case

    async def main() -> None:
        log = CallLog()
        emitted: list[Event] = []
        received: list[Event] = []
        with anyio.fail_after(20):
            async with thinktank.iter(
                spec,
                store=None,
                models={n: CountingModel(n, log, delay_s=0.002) for n in "ab"},
                on_event=emitted.append,
                buffer=buffer,
            ) as run:
                async for event in run:
                    received.append(event)
                    if stop is not None and len(received) > stop:
                        break
                    await anyio.sleep(delays[len(received) % len(delays)])
            calls_when_left = len(log.calls)
            await anyio.sleep(0.02)
        assert len(log.calls) == calls_when_left
        assert received == emitted[: len(received)]
        starts = [e.step_id for e in emitted if isinstance(e, ev.StepStarted)]
        assert len(starts) == len(set(starts))
        # Each of k steps in flight emits at most 7 events (2 models) past the gate.
        assert run.high_water <= buffer + k * 7 + 2
        if stop is None:
            assert run.result.ok and received == emitted
            assert len(starts) == len(spec.steps)

    anyio.run(main)
