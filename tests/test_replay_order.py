"""Replay releases the recorded answers in the recorded order, however late they are asked.

Race, quorum and cascade stop on the order answers arrive in, ties go to the earliest
answer and union wording follows arrival, so a replay is only faithful if every step
attempt's answers arrive in their recorded completion order. Here each recorded answer
is asked for after a random extra delay (what a loaded machine does to the tasks), and
the replay must still come out the same, call for call.
"""

from __future__ import annotations

import importlib
import random
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinktank
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.providers.recorded import RecordedCall, ReplayClient, sequences
from thinktank.session.loading import parse_session
from thinktank.store import StoredSession

REPLIES = ["Paris", "paris.", "The answer is Paris", "Lyon", "Lyon; also Nice", "Marseille"]


@st.composite
def sessions(draw: st.DrawFn) -> dict[str, Any]:
    """One multi-model step with close (often equal) latencies and mixed answers."""
    n = draw(st.integers(2, 4))
    models = {
        f"m{i}": {
            "provider": "simulated",
            "latency": {"kind": "fixed", "ms": draw(st.sampled_from([0, 3, 3, 4, 8, 8, 15]))},
            "default_reply": draw(st.sampled_from(REPLIES)),
            "failure_rate": draw(st.sampled_from([0.0, 0.0, 0.0, 1.0])),
            "input_cost_per_mtok": draw(st.sampled_from([1.0, 2.0, 5.0])),
        }
        for i in range(n)
    }
    step: dict[str, Any] = {
        "id": "ask",
        "models": list(models),
        "prompt": "What is the capital of France?",
        "mode": draw(st.sampled_from(["all", "race", "quorum", "cascade"])),
        "synthesis": draw(st.sampled_from(["majority", "union", "medoid"])),
    }
    if step["mode"] == "quorum":
        step["min_models"] = draw(st.integers(1, n))
    return {
        "name": "order",
        "models": models,
        "parallel_execution": {"consensus_threshold": draw(st.sampled_from([0.5, 0.7, 1.0]))},
        "steps": [
            step,
            {
                "id": "after",
                "model": "m0",
                "prompt": "{{ steps.ask.output }}",
                "depends_on": ["ask"],
            },
        ],
    }


def _arrivals(stored: StoredSession) -> list[tuple[Any, ...]]:
    """Every step's answers (and failures) in the order they arrived, and the calls
    cancelled (in no particular order: the mode cancels them all at once)."""
    out: list[tuple[Any, ...]] = []
    for step in stored.steps:
        calls = sorted(step.calls, key=lambda c: (c.completed_at, c.id))
        arrived = [(c.model_id, c.attempt, c.status) for c in calls if c.status != "cancelled"]
        cancelled = {(c.model_id, c.attempt) for c in calls if c.status == "cancelled"}
        out.append((step.step_key, arrived, cancelled))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session=sessions(), seed=st.integers(0, 2**32 - 1))
async def test_replay_keeps_the_recorded_order_under_jitter(
    session: dict[str, Any], seed: int
) -> None:
    """Each answer asked for after a random delay: the replay matches the recording,
    outputs, merges and the arrival order of every call."""
    jitter = random.Random(seed)

    class Jittered(ReplayClient):
        async def complete(self, request: ModelRequest) -> ModelResponse:
            # A slow loop delays a call already under way; it does not make the call
            # cancellable before the point where the original was (hence the shield).
            with anyio.CancelScope(shield=True):
                await anyio.sleep(jitter.uniform(0, 0.01))
            return await super().complete(request)

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        db = str(Path(tmp) / "t.db")
        result = await thinktank.run(parse_session(session), store=db)
        # (``thinktank.replay`` is the function; the module is reached by its name.)
        mp.setattr(importlib.import_module("thinktank.replay"), "ReplayClient", Jittered)
        report = await thinktank.replay(result.session_id, store=db, record=True)
        assert report.matches, report.diffs
        assert report.replay_id is not None
        async with await thinktank.Store.open(db) as store:
            original = await store.get_session(result.session_id)
            replayed = await store.get_session(report.replay_id)
        assert _arrivals(replayed) == _arrivals(original)


async def test_an_answer_whose_predecessor_is_never_asked_for_goes_on(tmp_path: Path) -> None:
    """A replay that diverged (an earlier recorded answer is never asked for) does not
    hang: the later answer is released after the bounded wait."""
    db = str(tmp_path / "t.db")
    spec = parse_session(
        {
            "name": "two",
            "models": {
                "quick": {"provider": "simulated", "default_reply": "a"},
                "late": {
                    "provider": "simulated",
                    "default_reply": "b",
                    "latency": {"kind": "fixed", "ms": 30},
                },
            },
            "steps": [{"id": "ask", "models": ["quick", "late"], "prompt": "p"}],
        }
    )
    result = await thinktank.run(spec, store=db)
    async with await thinktank.Store.open(db) as store:
        stored = await store.get_session(result.session_id)
    recordings: dict[tuple[str, str, int], deque[RecordedCall]] = {}
    for call in stored.step("ask").calls:
        recordings[("ask", call.model_id, call.attempt)] = deque([call])
    order = sequences(stored.step("ask").calls, wait_s=0.05)
    late = ReplayClient("late", recordings, order)
    with anyio.fail_after(30):  # a hang fails the test instead of the suite
        answer = await late.complete(ModelRequest(prompt="p", step_id="ask", attempt=1))
    assert answer.content == "b"
