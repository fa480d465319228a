"""The four modes: property tests with models that finish in a scripted order."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinktank
from thinktank.consensus import Answer, MergeOptions, agreement
from thinktank.engine.calls import CallResult
from thinktank.engine.parallel import gather, order_by_price
from thinktank.events import CallFinished, CallStarted, Event, utcnow
from thinktank.session.loading import parse_session

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Script:
    """Models finish in ``order``; each gives ``answers[m]`` or fails when in ``failing``."""

    order: list[str]
    answers: dict[str, str]
    failing: set[str] = field(default_factory=set)
    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.turns = {m: anyio.Event() for m in self.order}

    async def call(self, model: str) -> CallResult:
        self.started.append(model)
        self.running.add(model)
        i = self.order.index(model)
        try:
            # Let every call of this round register first, then wait for the model before
            # this one in the finishing order (if it is part of this run).
            await anyio.lowlevel.checkpoint()
            for prev in self.order[:i][::-1]:
                if prev in self.started:
                    await self.turns[prev].wait()
                    break
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(model)
            self.running.discard(model)
            self.turns[model].set()
            raise
        self.running.discard(model)
        self.finished.append(model)
        self.turns[model].set()
        ok = model not in self.failing
        return CallResult(
            call_id=f"c-{model}",
            model=model,
            status="ok" if ok else "failed",
            started_at=utcnow(),
            content=self.answers[model] if ok else None,
            error=None if ok else "boom",
        )


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    n = draw(st.integers(1, 6))
    models = [f"m{i}" for i in range(n)]
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    order = models[:]
    rng.shuffle(order)
    vocab = draw(st.sampled_from([["A"], ["A", "B"], ["A", "B", "C"]]))
    answers = {m: rng.choice(vocab) for m in models}
    failing = {m for m in models if rng.random() < draw(st.sampled_from([0.0, 0.2, 0.5]))}
    return Script(order=order, answers=answers, failing=failing)


def _agree(script: Script, done: list[str], need: int, threshold: float) -> bool:
    ok = [m for m in done if m not in script.failing]
    if len(ok) < need:
        return False
    answers = [Answer(key=m, model=m, text=script.answers[m]) for m in ok]
    clusters, score = agreement(answers, MergeOptions())
    return score >= threshold and len(clusters[0].keys) >= need


@SETTINGS
@given(script=scripts())
async def test_all_returns_every_success(script: Script) -> None:
    """all waits for every model and returns every success and failure."""
    models = sorted(script.order)
    with anyio.fail_after(10):
        out = await gather(models, script.call, mode="all")
    assert set(out.results) == set(models)
    assert {m for m, r in out.results.items() if r.ok} == set(models) - script.failing
    assert not out.early_termination and script.running == set()


@SETTINGS
@given(script=scripts())
async def test_race_returns_the_earliest_success_and_stops_the_rest(script: Script) -> None:
    """race: the first success in finishing order wins; nothing keeps running."""
    models = sorted(script.order)
    with anyio.fail_after(10):
        out = await gather(models, script.call, mode="race")
    winners = [m for m in script.order if m not in script.failing]
    answered = [m for m, r in out.results.items() if r.ok]
    if winners:
        assert answered == [winners[0]]
        # everything that finished before the winner was a failure; the rest never finished
        idx = script.order.index(winners[0])
        assert set(script.finished) == set(script.order[: idx + 1])
    else:
        assert answered == []
    assert script.running == set()


@SETTINGS
@given(script=scripts(), threshold=st.sampled_from([0.5, 0.6, 0.7, 1.0]), need=st.integers(1, 4))
async def test_quorum_returns_at_the_response_that_completes_it(
    script: Script, threshold: float, need: int
) -> None:
    """quorum stops exactly when min_models agree at the threshold, else waits for all."""
    models = sorted(script.order)
    with anyio.fail_after(10):
        out = await gather(models, script.call, mode="quorum", min_models=need, threshold=threshold)
    expected_stop = next(
        (
            k
            for k in range(1, len(script.order) + 1)
            if _agree(script, script.order[:k], need, threshold)
        ),
        None,
    )
    if expected_stop is None:
        assert set(out.results) == set(models)  # never hangs, returns what there is
        assert not out.early_termination
    else:
        assert set(out.results) == set(script.order[:expected_stop])
        assert out.early_termination == (expected_stop < len(models))
    assert script.running == set()


@SETTINGS
@given(script=scripts(), threshold=st.sampled_from([0.5, 0.7, 1.0]))
async def test_cascade_never_calls_a_dearer_model_when_cheap_ones_agree(
    script: Script, threshold: float
) -> None:
    """cascade goes cheapest first and escalates one model at a time only on disagreement."""
    models = sorted(script.order)
    prices = {m: float(i) for i, m in enumerate(models)}
    with anyio.fail_after(10):
        out = await gather(models, script.call, mode="cascade", threshold=threshold, prices=prices)
    asked = [m for r in out.escalation for m in r]
    assert asked == order_by_price(models, prices)[: len(asked)]
    # after each round but the last, the answers so far did not agree
    seen: list[str] = []
    for i, batch in enumerate(out.escalation):
        seen += batch
        agreed = _agree(script, seen, 2, threshold)
        if i < len(out.escalation) - 1:
            assert not agreed
    assert set(out.results) == set(asked)


@SETTINGS
@given(script=scripts())
async def test_fail_fast_stops_everything_at_the_first_failure(script: Script) -> None:
    """fail_fast: the first failed call aborts; nothing keeps running."""
    models = sorted(script.order)
    with anyio.fail_after(10):
        out = await gather(models, script.call, mode="all", failure_strategy="fail_fast")
    first_failure = next((m for m in script.order if m in script.failing), None)
    if first_failure is None:
        assert out.aborted is None
    else:
        assert out.aborted == f"model {first_failure!r}: boom"
        idx = script.order.index(first_failure)
        assert set(script.finished) == set(script.order[: idx + 1])
    assert script.running == set()


def test_order_by_price_puts_unknown_prices_last() -> None:
    """Cheapest first, unknown prices last, ties in the given order."""
    assert order_by_price(["a", "b", "c", "d"], {"a": 2.0, "b": None, "c": 1.0, "d": 1.0}) == [
        "c",
        "d",
        "a",
        "b",
    ]


@pytest.mark.parametrize("mode", ["all", "race", "quorum", "cascade"])
async def test_empty_answers_never_hang(mode: str) -> None:
    """Every mode returns when every model fails."""
    script = Script(
        order=["a", "b", "c"], answers=dict.fromkeys("abc", "x"), failing={"a", "b", "c"}
    )
    with anyio.fail_after(5):
        out = await gather(["a", "b", "c"], script.call, mode=mode)  # type: ignore[arg-type]
    assert all(not r.ok for r in out.results.values())


# -- timeouts: no call outlives its time limit ----------------------------------------

SLACK_S = 0.05
"""How late a call may end after its time limit (the machine is shared and noisy)."""
EARLY_S = 0.005
"""How early a deadline may fire (the event loop's clock granularity)."""


@dataclass
class TimedModel:
    """One simulated model of a timed session."""

    latency_ms: float
    failing: bool
    answer: str
    timeout_ms: int | None
    """The model's own ``timeout_s`` (in ms), None for none."""
    price: float | None


@dataclass
class TimedCase:
    """A one-step multi-model session whose calls have time limits."""

    mode: str
    models: dict[str, TimedModel]
    call_timeout_ms: int | None
    """The step's ``call_timeout_ms``."""
    max_concurrent_models: int
    min_models: int | None
    threshold: float
    failure_strategy: str

    def limit_s(self, model: str) -> float:
        """The time limit of one call to ``model``: the tighter of the step's and its own."""
        bounds = [t for t in (self.call_timeout_ms, self.models[model].timeout_ms) if t]
        return min(bounds) / 1000

    def spec(self) -> thinktank.SessionSpec:
        models: dict[str, Any] = {}
        for name, m in self.models.items():
            entry: dict[str, Any] = {
                "provider": "simulated",
                "default_reply": m.answer,
                "latency": {"kind": "fixed", "ms": m.latency_ms},
                "failure_rate": 1.0 if m.failing else 0.0,
            }
            if m.timeout_ms is not None:
                entry["timeout_s"] = m.timeout_ms / 1000
            if m.price is not None:
                entry["input_cost_per_mtok"] = entry["output_cost_per_mtok"] = m.price
            models[name] = entry
        step: dict[str, Any] = {
            "id": "q",
            "prompt": "capital of France?",
            "models": list(self.models),
            "mode": self.mode,
            "consensus_threshold": self.threshold,
            "failure_strategy": self.failure_strategy,
        }
        if self.call_timeout_ms is not None:
            step["call_timeout_ms"] = self.call_timeout_ms
        if self.min_models is not None:
            step["min_models"] = self.min_models
        return parse_session(
            {
                "name": "timeouts",
                "models": models,
                "parallel_execution": {"max_concurrent_models": self.max_concurrent_models},
                "steps": [step],
            }
        )


@st.composite
def timed_cases(draw: st.DrawFn) -> TimedCase:
    """Random modes and limits; some models take 10-20x their time limit, some fail."""
    mode = draw(st.sampled_from(["all", "race", "quorum", "cascade"]))
    n = draw(st.integers(2, 5))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    # Where the limit comes from: the step, the models' own timeout_s, or both.
    where = draw(st.sampled_from(["step", "model", "both"]))
    call_timeout_ms = rng.randint(20, 40) if where != "model" else None
    p_slow = draw(st.sampled_from([0.2, 0.5, 1.0]))
    p_fail = draw(st.sampled_from([0.0, 0.3]))
    vocab = draw(st.sampled_from([["Paris"], ["Paris", "Lyon"]]))
    models: dict[str, TimedModel] = {}
    for i in range(n):
        own = rng.randint(20, 40) if where != "step" else None
        limit = min(t for t in (call_timeout_ms, own) if t is not None)
        slow = rng.random() < p_slow
        models[f"m{i}"] = TimedModel(
            # Slow: far past limit + slack, so an unenforced limit cannot pass unnoticed.
            # Fast: well inside the limit.
            latency_ms=rng.uniform(10, 20) * limit if slow else rng.uniform(0, limit / 4),
            failing=rng.random() < p_fail,
            answer=rng.choice(vocab),
            timeout_ms=own,
            price=rng.choice([None, 1.0, 2.0, 5.0]),
        )
    return TimedCase(
        mode=mode,
        models=models,
        call_timeout_ms=call_timeout_ms,
        max_concurrent_models=draw(st.integers(1, 4)),
        min_models=draw(st.one_of(st.none(), st.integers(1, n))),
        threshold=draw(st.sampled_from([0.5, 0.7, 1.0])),
        failure_strategy=draw(st.sampled_from(["best_effort", "fail_fast"])),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=timed_cases())
async def test_no_call_outlives_its_timeout(case: TimedCase) -> None:
    """In every mode, every started call ends within its time limit (plus slack); a call
    that would take longer ends as timeout (or cancelled, when the mode stopped it
    first), a timeout never fires early, and the step always returns."""
    started: dict[str, tuple[float, CallStarted]] = {}
    finished: dict[str, tuple[float, CallFinished]] = {}

    def on_event(event: Event) -> None:
        now = time.perf_counter()
        if isinstance(event, CallStarted):
            started[event.call_id] = (now, event)
        elif isinstance(event, CallFinished):
            finished[event.call_id] = (now, event)

    with anyio.fail_after(10):
        result = await thinktank.run(case.spec(), store=None, on_event=on_event)
    step = result.steps["q"]
    assert step.status in ("completed", "failed")
    assert started, "no call was started"
    assert set(finished) == set(started), "a started call never finished"
    assert {c.call_id: c.status for c in step.calls} == {
        k: ev.status for k, (_, ev) in finished.items()
    }
    for call_id, (t0, ev) in started.items():
        t1, end = finished[call_id]
        took, limit = t1 - t0, case.limit_s(ev.model)
        model = case.models[ev.model]
        where = f"{ev.model} ({model}) ended {end.status} after {took * 1000:.1f} ms"
        assert took <= limit + SLACK_S, f"{where}: past its {limit * 1000:g} ms limit"
        if end.status == "timeout":
            assert took >= limit - EARLY_S, f"{where}: timed out early"
        if model.latency_ms > limit * 1000:
            # Nothing but the limit (or the mode's stopping) can end it this soon.
            assert end.status in ("timeout", "cancelled"), where
            if case.mode in ("all", "cascade") and case.failure_strategy == "best_effort":
                assert end.status == "timeout", where
        elif end.status != "timeout":
            # A fast call ends as scripted unless the mode stopped it first (or, on a
            # loaded machine, it really ran out of time: checked above).
            expected = "failed" if model.failing else "ok"
            assert end.status in (expected, "cancelled"), where
