"""Step time-outs end one attempt each: a hypothesis test on random DAGs where
attempts hang or answer at once, with retries, limits and other steps running at the
same time. Every step ends exactly as its attempts say, no attempt outlives its
deadline, the limit holds, and nothing hangs."""

from __future__ import annotations

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinktank
from thinktank.events import CallFinished, Event, StepFinished, StepStarted
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.session.loading import parse_session

TIMEOUT_MS = 30


class ScriptedModel:
    """Hangs on the attempts its script says, answers at once on the others."""

    name = "m"
    provider = "test"

    def __init__(self, hangs: dict[str, set[int]]) -> None:
        self.hangs = hangs
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if request.attempt in self.hangs.get(request.step_id, set()):
                await anyio.sleep(60)
            await anyio.lowlevel.checkpoint()
            return ModelResponse(content=f"{request.step_id}:{request.attempt}", model="m")
        finally:
            self.in_flight -= 1


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[dict[str, object]], dict[str, set[int]], int]:
    n = draw(st.integers(min_value=1, max_value=25))
    steps: list[dict[str, object]] = []
    hangs: dict[str, set[int]] = {}
    for i in range(n):
        deps = draw(st.lists(st.integers(min_value=0, max_value=max(i - 1, 0)), max_size=3))
        retries = draw(st.integers(min_value=0, max_value=2))
        steps.append(
            {
                "id": f"s{i}",
                "prompt": "p",
                "model": "m",
                "depends_on": sorted({f"s{d}" for d in deps if d < i}),
                "retries": retries,
                "timeout_ms": TIMEOUT_MS,
            }
        )
        hangs[f"s{i}"] = set(
            draw(st.lists(st.integers(min_value=1, max_value=retries + 1), max_size=3))
        )
    limit = draw(st.integers(min_value=1, max_value=6))
    return steps, hangs, limit


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_timed_out_attempts_are_retried_and_steps_go_on(
    case: tuple[list[dict[str, object]], dict[str, set[int]], int],
) -> None:
    steps, hangs, limit = case
    spec = parse_session(
        {
            "name": "timeouts",
            "parallelExecution": {"maxConcurrentSteps": limit},
            "steps": steps,
        },
        known_models=["m"],
    )
    model = ScriptedModel(hangs)
    events: list[Event] = []

    async def main() -> thinktank.SessionResult:
        with anyio.fail_after(60):
            return await thinktank.run(
                spec, store=None, models={"m": model}, on_event=events.append
            )

    result = anyio.run(main, backend="asyncio")
    assert model.max_in_flight <= limit
    for step in steps:
        sid = str(step["id"])
        tries = int(str(step["retries"])) + 1
        hung = hangs[sid]
        good = [a for a in range(1, tries + 1) if a not in hung]
        got = result.steps[sid]
        failed_before = [d for d in step["depends_on"] if result.steps[d].status != "completed"]  # type: ignore[attr-defined]
        if failed_before:
            assert got.status == "skipped"
            continue
        if good:
            # Completed at its first attempt that does not hang, after timing out on
            # every attempt before it.
            assert got.status == "completed", (sid, got.error)
            assert got.attempts == good[0]
            assert got.output == f"{sid}:{good[0]}"
        else:
            assert got.status == "failed"
            assert got.attempts == tries
            assert got.error == f"timed out after {TIMEOUT_MS} ms"
        started = [e.attempt for e in events if isinstance(e, StepStarted) and e.step_id == sid]
        assert started == list(range(1, got.attempts + 1))
        ended = [e for e in events if isinstance(e, CallFinished) and e.step_id == sid]
        assert [c.status for c in ended] == [
            "cancelled" if a in hung else "ok" for a in range(1, got.attempts + 1)
        ]
        # No attempt outlives its deadline by much (the loop is shared and noisy).
        assert all(c.latency_ms < TIMEOUT_MS + 2000 for c in ended)
        assert sum(1 for e in events if isinstance(e, StepFinished) and e.step_id == sid) == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_fail_fast_with_timed_out_attempts_ends_every_step_once(
    case: tuple[list[dict[str, object]], dict[str, set[int]], int],
) -> None:
    """Under fail_fast a step that times out for good stops the session while other
    attempts time out and are retried: every step still ends exactly once, in a
    final state, and what completed completed as its attempts say."""
    steps, hangs, limit = case
    spec = parse_session(
        {
            "name": "timeouts-fail-fast",
            "parallelExecution": {"maxConcurrentSteps": limit, "failureStrategy": "fail_fast"},
            "steps": steps,
        },
        known_models=["m"],
    )
    events: list[Event] = []

    async def main() -> thinktank.SessionResult:
        with anyio.fail_after(60):
            return await thinktank.run(
                spec, store=None, models={"m": ScriptedModel(hangs)}, on_event=events.append
            )

    result = anyio.run(main, backend="asyncio")
    for step in steps:
        sid = str(step["id"])
        got = result.steps[sid]
        assert got.status in ("completed", "failed", "cancelled", "skipped"), (sid, got.status)
        finished = [e for e in events if isinstance(e, StepFinished) and e.step_id == sid]
        assert len(finished) == (0 if got.status == "skipped" else 1)
        if got.status == "completed":
            assert got.attempts not in hangs[sid]
            assert got.output == f"{sid}:{got.attempts}"


def test_outside_a_scheduler_a_hung_attempt_is_cut_and_retried() -> None:
    """Called directly (no scheduler), the executor cuts a hung attempt at its
    deadline and goes on with the next attempt itself."""
    from thinktank.engine.steps import StepExecutor

    spec = parse_session(
        {
            "name": "direct",
            "steps": [
                {"id": "s", "prompt": "p", "model": "m", "retries": 1, "timeout_ms": TIMEOUT_MS}
            ],
        },
        known_models=["m"],
    )
    events: list[Event] = []
    executor = StepExecutor(
        session_id="x",
        spec=spec,
        clients={"m": ScriptedModel({"s": {1}})},
        inputs={},
        emit=events.append,
    )

    async def main() -> object:
        with anyio.fail_after(30):
            return await executor("s")

    assert anyio.run(main, backend="asyncio") is None
    assert executor.outputs["s"] == "s:2"
    ended = [e for e in events if isinstance(e, CallFinished)]
    assert [c.status for c in ended] == ["cancelled", "ok"]
    finished = [e for e in events if isinstance(e, StepFinished)]
    assert len(finished) == 1 and finished[0].attempts == 2
