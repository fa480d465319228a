"""Running sessions end to end: limits measured at the models, failures, retries, store."""

from __future__ import annotations

import random
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinktank
from thinktank.engine import recorder
from thinktank.engine.recorder import MAX_UNWRITTEN
from thinktank.errors import InputError, SpecErrors
from thinktank.events import Event, SessionStarted, StepFinished, StepStarted
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec
from thinktank.store import Store

from .conftest import CallLog, CountingModel


def spec_of(steps: list[dict[str, Any]], **extra: Any) -> SessionSpec:
    """A session over externally supplied models a, b, c, d."""
    return parse_session({"name": "t", "steps": steps, **extra}, known_models=["a", "b", "c", "d"])


def pool(log: CallLog, **kw: Any) -> dict[str, thinktank.ModelClient]:
    return {n: CountingModel(n, log, **kw) for n in "abcd"}


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Random DAGs of single- and multi-model steps with random limits."""
    n = draw(st.integers(1, 30))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    steps = []
    for i in range(n):
        deps = sorted(set(rng.sample(range(i), min(i, rng.randint(0, 2)))))
        models = rng.sample("abcd", rng.randint(1, 4))
        step: dict[str, Any] = {
            "id": f"s{i}",
            "prompt": f"p{i}",
            "depends_on": [f"s{d}" for d in deps],
        }
        if len(models) == 1:
            step["model"] = models[0]
        else:
            step["models"] = models
        steps.append(step)
    limits = {
        "max_concurrent_steps": draw(st.integers(1, 6)),
        "max_concurrent_models": draw(st.integers(1, 4)),
        "max_concurrent_calls": draw(st.one_of(st.none(), st.integers(1, 8))),
    }
    return steps, limits


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sessions(), delay=st.sampled_from([0.0, 0.001]))
async def test_model_limits_are_never_exceeded(
    case: tuple[list[dict[str, Any]], dict[str, Any]], delay: float
) -> None:
    """maxConcurrentModels per step and maxConcurrentCalls per session hold at the models."""
    steps, limits = case
    spec = spec_of(steps, parallel_execution=limits)
    log = CallLog()
    with anyio.fail_after(30):
        result = await thinktank.run(spec, store=None, models=pool(log, delay_s=delay))
    assert result.status == "completed"
    per_step = limits["max_concurrent_models"]
    assert all(v <= per_step for v in log.max_per_step.values())
    session_cap = limits["max_concurrent_calls"]
    steps_cap = limits["max_concurrent_steps"]
    worst = steps_cap * per_step if session_cap is None else session_cap
    assert log.max_in_flight <= worst
    # every model of every step called exactly once
    expected = sorted((s["id"], m, 1) for s in steps for m in (s.get("models") or [s.get("model")]))
    assert sorted(log.calls) == expected


async def test_parallel_disabled_runs_one_call_at_a_time() -> None:
    """enabled: false means one step and one model call at a time."""
    steps = [{"id": f"s{i}", "prompt": "p", "models": ["a", "b", "c"]} for i in range(4)]
    spec = spec_of(steps, parallel_execution={"enabled": False})
    log = CallLog()
    await thinktank.run(spec, store=None, models=pool(log, delay_s=0.002))
    assert log.max_in_flight == 1


async def test_best_effort_skips_descendants_with_the_reason() -> None:
    """A failed step skips exactly its descendants; the rest completes; session partial."""
    spec = spec_of(
        [
            {"id": "root", "prompt": "p", "model": "a"},
            {"id": "bad", "prompt": "p", "model": "a", "depends_on": ["root"]},
            {"id": "child", "prompt": "p", "model": "a", "depends_on": ["bad"]},
            {"id": "grandchild", "prompt": "p", "model": "a", "depends_on": ["child"]},
            {"id": "other", "prompt": "p", "model": "a", "depends_on": ["root"]},
        ]
    )
    log = CallLog()
    result = await thinktank.run(spec, store=None, models=pool(log, fail_steps=frozenset({"bad"})))
    assert result.status == "partial"
    st_ = {k: v.status for k, v in result.steps.items()}
    assert st_ == {
        "root": "completed",
        "bad": "failed",
        "child": "skipped",
        "grandchild": "skipped",
        "other": "completed",
    }
    assert result.steps["child"].skip_reason == (
        "upstream step 'bad' failed: model 'a': injected failure"
    )
    assert result.error is not None and "1 step(s) failed, 2 skipped" in result.error


async def test_fail_fast_cancels_running_steps_and_fails_the_session() -> None:
    """Under fail_fast the first failure cancels steps in flight and skips the rest."""
    spec = spec_of(
        [
            {"id": "bad", "prompt": "p", "model": "a"},
            {"id": "slow", "prompt": "p", "model": "b"},
            {"id": "after", "prompt": "p", "model": "a", "depends_on": ["slow"]},
        ],
        parallel_execution={"failure_strategy": "fail_fast"},
    )
    log = CallLog()
    models: dict[str, thinktank.ModelClient] = {
        "a": CountingModel("a", log, fail_steps=frozenset({"bad"})),
        "b": CountingModel("b", log, delay_s=5),
    }
    with anyio.fail_after(3):
        result = await thinktank.run(spec, store=None, models=models)
    assert result.status == "failed"
    assert result.steps["bad"].status == "failed"
    assert result.steps["slow"].status == "cancelled"
    assert result.steps["slow"].calls[0].status == "cancelled"
    assert result.steps["after"].status == "skipped"


async def test_step_timeout_and_retries() -> None:
    """A step that times out is retried; each attempt's calls are recorded."""
    spec = spec_of([{"id": "s", "prompt": "p", "model": "a", "timeout_ms": 20, "retries": 2}])
    log = CallLog()
    result = await thinktank.run(spec, store=None, models=pool(log, delay_s=1))
    step = result.steps["s"]
    assert step.status == "failed"
    assert step.attempts == 3
    assert step.error == "timed out after 20 ms"
    assert [c.attempt for c in step.calls] == [1, 2, 3]
    assert all(c.status == "cancelled" for c in step.calls)


async def test_retry_recovers_from_a_flaky_model() -> None:
    """A simulated model that fails on attempt 1 succeeds on a retry."""
    # failure_rate 0.5 with a fixed seed: find a seed where attempt 1 fails, 2 succeeds.
    spec = parse_session(
        {
            "name": "flaky",
            "models": {
                "f": {
                    "provider": "simulated",
                    "seed": 0,
                    "failure_rate": 0.5,
                    "default_reply": "done",
                }
            },
            "steps": [{"id": "s", "prompt": "p", "model": "f", "retries": 5}],
        }
    )
    result = await thinktank.run(spec, store=None)
    step = result.steps["s"]
    assert step.status == "completed" and step.output == "done"
    assert step.attempts == len(step.calls)
    assert [c.status for c in step.calls][-1] == "ok"


async def test_call_timeout_is_recorded_as_timeout() -> None:
    """call_timeout_ms bounds one call; the call is recorded as timed out."""
    spec = spec_of([{"id": "s", "prompt": "p", "model": "a", "call_timeout_ms": 10}])
    result = await thinktank.run(spec, store=None, models=pool(CallLog(), delay_s=1))
    call = result.steps["s"].calls[0]
    assert call.status == "timeout" and call.error == "no answer within 0.01 s"


async def test_multi_model_step_merges_by_majority() -> None:
    """Three models, two agree after normalisation: majority wins with score 2/3."""
    spec = parse_session(
        {
            "name": "vote",
            "models": {
                "x": {"provider": "simulated", "default_reply": "Paris"},
                "y": {"provider": "simulated", "default_reply": "The answer is paris."},
                "z": {"provider": "simulated", "default_reply": "Lyon"},
            },
            "parallel_execution": {"consensus_threshold": 0.6},
            "steps": [{"id": "q", "prompt": "capital?", "models": ["x", "y", "z"]}],
        }
    )
    result = await thinktank.run(spec, store=None)
    step = result.steps["q"]
    assert step.output == "Paris"
    assert step.consensus is not None
    assert step.consensus.score == pytest.approx(2 / 3)
    assert step.consensus.reached and step.consensus.outcome == "ok"
    included = {c.model: c.included_in_consensus for c in step.calls}
    assert included == {"x": True, "y": True, "z": False}
    # The result round-trips through its JSON-able dump unchanged.
    again = thinktank.SessionResult.model_validate(result.model_dump())
    assert again == result
    assert again.model_dump_json() == result.model_dump_json()
    for built, checked in zip(result.steps.values(), again.steps.values(), strict=True):
        assert built.model_fields_set == set(type(built).model_fields)
        assert built.usage.model_fields_set == set(type(built.usage).model_fields)
        assert list(built.model_dump()) == list(checked.model_dump())


async def test_low_consensus_can_fail_the_step() -> None:
    """on_low_consensus: fail turns disagreement into a failed step."""
    spec = parse_session(
        {
            "name": "vote",
            "models": {
                "x": {"provider": "simulated", "default_reply": "1"},
                "y": {"provider": "simulated", "default_reply": "2"},
            },
            "steps": [{"id": "q", "prompt": "?", "models": ["x", "y"], "on_low_consensus": "fail"}],
        }
    )
    result = await thinktank.run(spec, store=None)
    assert result.steps["q"].status == "failed"
    assert result.steps["q"].error == "consensus 0.50 is below the threshold 0.7"


async def test_some_models_failing_still_merges_k_of_n() -> None:
    """If one of three models fails, the step merges the two answers and says k_of_n."""
    spec = spec_of([{"id": "q", "prompt": "?", "models": ["a", "b", "c"]}])
    log = CallLog()
    models: dict[str, thinktank.ModelClient] = {
        "a": CountingModel("a", log),
        "b": CountingModel("b", log),
        "c": CountingModel("c", log, fail_steps=frozenset({"q"})),
    }
    result = await thinktank.run(spec, store=None, models=models)
    consensus = result.steps["q"].consensus
    assert result.steps["q"].status == "completed"
    assert consensus is not None and consensus.outcome == "k_of_n" and consensus.score == 1.0


async def test_events_stream_in_order_for_each_step() -> None:
    """on_event sees StepStarted before StepFinished for each step."""
    seen: list[Event] = []
    spec = spec_of(
        [
            {"id": "a", "prompt": "p", "model": "a"},
            {"id": "b", "prompt": "{{ steps.a.output }}!", "model": "b", "depends_on": ["a"]},
        ]
    )
    result = await thinktank.run(
        spec, store=None, models=pool(CallLog(), reply="hi"), on_event=seen.append
    )
    kinds = [(type(e).__name__, getattr(e, "step_id", None)) for e in seen]
    assert kinds.index(("StepFinished", "a")) < kinds.index(("StepStarted", "b"))
    started_b = next(e for e in seen if isinstance(e, StepStarted) and e.step_id == "b")
    assert started_b.prompt == "hi!"
    assert isinstance(seen[-2], StepFinished)
    assert result.usage.total_tokens == 8 and result.usage.total_cost_usd == pytest.approx(0.002)


async def test_session_round_trip_through_the_store(tmp_path: Path) -> None:
    """Every step and call row is in the SQLite file with tokens and latency."""
    db = tmp_path / "tt.db"
    spec = thinktank.load_session(Path(__file__).parent.parent / "sessions" / "consensus.yaml")
    result = await thinktank.run(spec, store=str(db))
    async with await thinktank.Store.open(str(db)) as store:
        stored = await store.get_session(result.session_id)
    assert stored.status == result.status
    assert [s.step_key for s in stored.steps] == ["ask", "explain"]
    ask = stored.steps[0]
    assert len(ask.calls) == 3 and ask.consensus is not None
    assert ask.consensus.score == pytest.approx(result.steps["ask"].consensus.score)  # type: ignore[union-attr]
    for call in ask.calls:
        assert call.tokens_used is not None and call.tokens_used > 0
        assert call.latency_ms is not None and call.completed_at is not None
    assert stored.total_tokens == result.usage.total_tokens


async def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    """Unknown models and bad inputs raise before the database is even created."""
    db = tmp_path / "tt.db"
    spec = spec_of(
        [{"id": "s", "prompt": "{{ inputs.q }}", "model": "a"}], inputs={"q": {"type": "integer"}}
    )
    with pytest.raises(SpecErrors, match="unknown model 'a'"):
        await thinktank.run(spec, store=str(db))  # no model pool given
    with pytest.raises(InputError, match="input 'q': expected integer"):
        await thinktank.run(spec, store=str(db), inputs={"q": "x"}, models=pool(CallLog()))
    assert not db.exists()


async def test_interrupt_marks_session_interrupted_and_keeps_finished_steps(
    tmp_path: Path,
) -> None:
    """Cancelling a run records it as interrupted with its finished steps kept."""
    db = tmp_path / "tt.db"
    spec = spec_of(
        [{"id": "fast", "prompt": "p", "model": "a"}, {"id": "slow", "prompt": "p", "model": "b"}]
    )
    log = CallLog()
    models: dict[str, thinktank.ModelClient] = {
        "a": CountingModel("a", log),
        "b": CountingModel("b", log, delay_s=10),
    }
    seen: list[Event] = []
    with anyio.move_on_after(0.3):
        await thinktank.run(spec, store=str(db), models=models, on_event=seen.append)
    sid = seen[0].session_id
    con = sqlite3.connect(db)
    try:
        status = con.execute("select status from thinktank_sessions where id=?", (sid,)).fetchone()
        steps = dict(
            con.execute(
                "select step_key, status from thinktank_steps where session_id=?", (sid,)
            ).fetchall()
        )
        calls = con.execute("select status from thinktank_parallel_executions").fetchall()
    finally:
        con.close()
    assert status == ("interrupted",)
    assert steps == {"fast": "completed", "slow": "cancelled"}
    assert sorted(c[0] for c in calls) == ["cancelled", "ok"]


def test_run_sync_works_inside_a_running_loop() -> None:
    """run_sync from inside an event loop (as in Jupyter) still runs the session."""
    spec = spec_of([{"id": "s", "prompt": "p", "model": "a"}])

    async def inside() -> thinktank.SessionResult:
        return thinktank.run_sync(spec, store=None, models=pool(CallLog()))

    result = anyio.run(inside)
    assert result.status == "completed"
    assert thinktank.run_sync(spec, store=None, models=pool(CallLog())).status == "completed"


async def test_retried_call_is_one_call_with_its_attempts_in_the_store(tmp_path: Path) -> None:
    """A model that fails then answers: one call row, tries=N, every attempt stored."""
    spec = parse_session(
        {
            "name": "retry",
            "models": {
                "flaky": {
                    "provider": "simulated",
                    "failure_rate": 0.6,
                    "max_retries": 6,
                    "default_reply": "done",
                }
            },
            "steps": [{"id": f"s{i}", "prompt": f"p{i}", "model": "flaky"} for i in range(6)],
        }
    )
    # Simulated faults are drawn per (prompt, step attempt): keep retries fast.
    import thinktank.engine.calls as calls_module
    from thinktank.providers.retry import RetryPolicy

    calls_module._JITTER.seed(0)
    original = RetryPolicy.delay_s
    RetryPolicy.delay_s = lambda self, n, hint, rng: 0.0  # type: ignore[method-assign]
    try:
        result = await thinktank.run(spec, store=str(tmp_path / "t.db"))
    finally:
        RetryPolicy.delay_s = original  # type: ignore[method-assign]
    async with await thinktank.Store.open(str(tmp_path / "t.db")) as store:
        stored = await store.get_session(result.session_id)
    calls = [c for s in stored.steps for c in s.calls]
    assert len(calls) == 6  # one logical call per step, whatever the retries
    retried = [c for c in calls if c.tries > 1]
    assert retried, "with failure_rate 0.6 some call must have been retried"
    for call in calls:
        if call.tries == 1:
            assert call.attempts == []
        else:
            assert [a.number for a in call.attempts] == list(range(1, call.tries + 1))
            assert all(a.status == "failed" for a in call.attempts[:-1])
            assert all(a.retry_in_s == 0.0 for a in call.attempts[:-1])
            assert call.attempts[-1].retry_in_s is None
            assert call.attempts[-1].status == call.status


class SlowStore(Store):
    """A real SQLite store whose every write first waits: a store that is behind."""

    written = 0
    delay_s = 0.2

    async def write(self, events: Sequence[Event]) -> None:
        await anyio.sleep(self.delay_s)
        await super().write(events)
        self.written += len(events)

    async def start_session(self, started: SessionStarted, *, worker_id: str, ttl_s: float) -> None:
        await anyio.sleep(self.delay_s)
        await super().start_session(started, worker_id=worker_id, ttl_s=ttl_s)
        self.written += 1


async def test_a_store_that_is_behind_holds_new_steps_back(tmp_path: Path) -> None:
    """Events waiting for a slow store never pile up past the recorder's limit (plus the
    few the steps already running emit): the run waits for the store instead."""
    concurrency = 8
    n = MAX_UNWRITTEN // 2  # about five events a step: far more than the limit in all
    spec = spec_of(
        [{"id": f"s{i}", "prompt": "p", "model": "a"} for i in range(n)],
        parallel_execution={"max_concurrent_steps": concurrency},
    )
    store = await SlowStore.open(str(tmp_path / "tt.db"))
    emitted = 0
    backlog = 0

    def watch(event: Event) -> None:
        nonlocal emitted, backlog
        emitted += 1
        backlog = max(backlog, emitted - store.written)

    try:
        result = await thinktank.run(spec, store=store, models=pool(CallLog()), on_event=watch)
    finally:
        await store.close()
    assert result.status == "completed" and len(result.steps) == n
    assert emitted == store.written > MAX_UNWRITTEN
    # StepStarted, CallStarted, CallAttempt, CallFinished, StepFinished per running step.
    assert backlog <= MAX_UNWRITTEN + concurrency * 5, backlog


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sessions(), delay=st.sampled_from([0.0, 0.002, 0.01]), limit=st.integers(1, 40))
async def test_the_unwritten_backlog_never_exceeds_the_limit(
    case: tuple[list[dict[str, Any]], dict[str, Any]], delay: float, limit: int
) -> None:
    """Random DAGs against a store that is behind by a random amount, under a random
    limit: every event is written, the run ends, and the backlog stays within the limit
    plus what the steps in flight emit."""
    steps, limits = case
    spec = spec_of(steps, parallel_execution=limits)
    emitted = 0
    backlog = 0
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(recorder, "MAX_UNWRITTEN", limit)
        store = await SlowStore.open(str(Path(tmp) / "tt.db"))
        store.delay_s = delay

        def watch(event: Event) -> None:
            nonlocal emitted, backlog
            emitted += 1
            backlog = max(backlog, emitted - store.written)

        try:
            with anyio.fail_after(60):
                result = await thinktank.run(
                    spec, store=store, models=pool(CallLog()), on_event=watch
                )
        finally:
            await store.close()
    assert result.status == "completed"
    assert emitted == store.written
    # A step in flight emits at most: started, 4 calls started and finished, the
    # consensus, finished; and the session's own last event.
    assert backlog <= limit + limits["max_concurrent_steps"] * 11 + 1, backlog
