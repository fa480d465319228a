"""Decomposition: parsing and repairing plans, merging them, and growing the DAG."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import anyio
import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import thinktank
from thinktank.engine.calls import Caller, CallResult
from thinktank.engine.decompose import (
    Proposal,
    SubProblem,
    decompose,
    merge_proposals,
    parse_proposal,
)
from thinktank.events import Event, StepFinished, StepsAdded, StepStarted
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.session.loading import parse_session

PLAN = {
    "subproblems": [
        {"id": "a", "prompt": "What does A cost?"},
        {"id": "b", "prompt": "How long does B take?", "depends_on": ["a"]},
    ]
}


def test_parse_valid_fenced_and_list_answers() -> None:
    """Plain JSON, JSON in a code fence or prose, and a bare list all give a plan."""
    plain, _ = parse_proposal(json.dumps(PLAN))
    fenced, _ = parse_proposal("Sure!\n```json\n" + json.dumps(PLAN) + "\n```\nDone.")
    listed, _ = parse_proposal("Plan:\n1. First question\n2) Second question\n- Third")
    assert plain is not None and fenced is not None and plain == fenced
    assert listed is not None
    assert [s.prompt for s in listed.subproblems] == ["First question", "Second question", "Third"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("I cannot help with that.", "no JSON object"),
        ('{"subproblems": []}', "at least 1"),
        ('{"subproblems": [{"id": "a", "prompt": "x", "depends_on": ["b"]}]}', "unknown 'b'"),
        ('{"subproblems": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]}', "repeat"),
        (
            '{"subproblems": [{"id": "a", "prompt": "x", "depends_on": ["b"]},'
            ' {"id": "b", "prompt": "y", "depends_on": ["a"]}]}',
            "cycle",
        ),
    ],
)
def test_bad_plans_say_why(text: str, why: str) -> None:
    """Malformed, empty, dangling, duplicated and cyclic plans are rejected with a reason."""
    proposal, problem = parse_proposal(text)
    assert proposal is None and problem is not None and why in problem


def test_merge_collapses_duplicates_and_credits_models() -> None:
    """Near-duplicate sub-problems merge with provenance; coverage is the union."""
    a = Proposal(
        subproblems=[
            SubProblem(id="x", prompt="Which speed limits cut deaths most?"),
            SubProblem(id="y", prompt="What do junction rebuilds cost?"),
        ]
    )
    b = Proposal(
        subproblems=[
            SubProblem(id="s", prompt="Which speed limits cut deaths the most?"),
            SubProblem(id="t", prompt="Do speed cameras work?"),
        ]
    )
    plan = merge_proposals([("ma", a), ("mb", b)], threshold=0.6, max_items=8)
    assert [i.models for i in plan.items] == [["ma", "mb"], ["ma"], ["mb"]]
    assert len(plan.items) == 3


def test_merge_keeps_dependencies_acyclic() -> None:
    """Two proposals with opposite dependencies: the second edge is dropped."""
    p1 = Proposal(
        subproblems=[
            SubProblem(id="a", prompt="alpha question here"),
            SubProblem(id="b", prompt="beta question here", depends_on=["a"]),
        ]
    )
    p2 = Proposal(
        subproblems=[
            SubProblem(id="a", prompt="alpha question here", depends_on=["b"]),
            SubProblem(id="b", prompt="beta question here"),
        ]
    )
    plan = merge_proposals([("m1", p1), ("m2", p2)], threshold=0.9, max_items=8)
    graph: nx.DiGraph[int] = nx.DiGraph()
    for i, item in enumerate(plan.items):
        graph.add_node(i)
        for d in item.depends_on:
            graph.add_edge(d, i)
    assert nx.is_directed_acyclic_graph(graph)
    assert plan.dropped_edges == [(1, 0)]


def test_merge_caps_the_plan() -> None:
    """Past max_items the least-proposed sub-problems are left out and counted."""
    subs = [
        SubProblem(id=f"s{i}", prompt=f"unrelated topic number {i} {'x' * i}") for i in range(5)
    ]
    plan = merge_proposals([("m", Proposal(subproblems=subs))], threshold=0.95, max_items=3)
    assert len(plan.items) == 3 and plan.truncated == 2
    assert "2 more sub-problems left out" in plan.describe()


class Planner:
    """A model client: plans for decompose prompts, plain answers otherwise."""

    def __init__(self, name: str, replies: list[str], log: dict[str, Any]) -> None:
        self._name = name
        self.replies = replies
        self.log = log

    @property
    def name(self) -> str:
        return self._name

    @property
    def provider(self) -> str:
        return "test"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        log = self.log
        log["calls"].append((request.step_id, self._name, request.retry))
        log["in_flight"] += 1
        log["peak"] = max(log["peak"], log["in_flight"])
        try:
            await anyio.sleep(log["delay"])
            if "Break this problem" in request.prompt:
                n = sum(1 for s, m, _ in log["calls"] if s == request.step_id and m == self._name)
                text = self.replies[min(n - 1, len(self.replies) - 1)]
            else:
                text = f"answer to {request.step_id}"
            return ModelResponse(
                content=text, model=self._name, input_tokens=1, output_tokens=1, cost_usd=0.0
            )
        finally:
            log["in_flight"] -= 1


def session(
    planners: dict[str, list[str]], log: dict[str, Any], **extra: Any
) -> tuple[thinktank.SessionSpec, dict[str, thinktank.ModelClient]]:
    clients: dict[str, thinktank.ModelClient] = {
        name: Planner(name, replies, log) for name, replies in planners.items()
    }
    spec = parse_session(
        {
            "name": "decompose",
            "parallel_execution": extra.pop("parallel_execution", {}),
            "steps": [
                {"id": "root", "prompt": "Solve the big problem", "model": next(iter(planners))},
                {
                    "id": "plan",
                    "kind": "decompose",
                    "models": list(planners),
                    "prompt": "Big one",
                    "depends_on": ["root"],
                    **extra,
                },
                {
                    "id": "after",
                    "prompt": "Use {{ steps.plan.output }}",
                    "model": next(iter(planners)),
                    "depends_on": ["plan"],
                },
            ],
        },
        known_models=list(planners),
    )
    return spec, clients


def new_log(delay: float = 0.0) -> dict[str, Any]:
    return {"calls": [], "in_flight": 0, "peak": 0, "delay": delay}


async def test_malformed_plan_is_retried_once_then_dropped(tmp_path: Path) -> None:
    """A model whose plan is bad twice is dropped; the others' plans still run."""
    log = new_log()
    spec, clients = session(
        {"good": [json.dumps(PLAN)], "bad": ["nonsense", "still nonsense"]}, log
    )
    result = await thinktank.run(spec, store=None, models=clients)
    assert result.status == "completed"
    bad_calls = [c for c in log["calls"] if c[1] == "bad" and c[0] == "plan"]
    assert len(bad_calls) == 2
    assert {"plan-1", "plan-2", "plan-synthesis"} <= set(result.steps)
    # `after` waited for the synthesis and got its answer through plan's output.
    assert result.steps["after"].prompt == "Use answer to plan-synthesis"


async def test_repaired_on_retry() -> None:
    """A bad first answer followed by a good one is used."""
    log = new_log()
    spec, clients = session({"m": ["??", json.dumps(PLAN)]}, log)
    result = await thinktank.run(spec, store=None, models=clients)
    assert result.status == "completed" and "plan-2" in result.steps


async def test_every_model_failing_fails_the_step_quoting_the_output(tmp_path: Path) -> None:
    """No usable plan: the step fails, quoting what came back; no step is added or stored."""
    log = new_log()
    spec, clients = session({"m1": ["I refuse"], "m2": ['{"subproblems": []}']}, log)
    db = tmp_path / "t.db"
    seen: list[Event] = []
    result = await thinktank.run(spec, store=str(db), models=clients, on_event=seen.append)
    step = result.steps["plan"]
    assert step.status == "failed"
    assert "no usable decomposition" in (step.error or "")
    assert "'I refuse'" in (step.error or "")
    assert not any(isinstance(e, StepsAdded) for e in seen)
    assert result.steps["after"].status == "skipped"
    async with await thinktank.Store.open(str(db)) as store:
        stored = await store.get_session(result.session_id)
    assert [s.step_key for s in stored.steps] == ["root", "plan", "after"]


@st.composite
def plans(draw: st.DrawFn) -> list[str]:
    """Random valid plans (random DAGs over random, sometimes shared, prompts)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    n_models = draw(st.integers(1, 3))
    topics = [f"topic {w} question {w * 7}" for w in range(12)]
    out = []
    for _ in range(n_models):
        k = rng.randint(1, 6)
        chosen = rng.sample(topics, k)
        subs = []
        for i, prompt in enumerate(chosen):
            deps = sorted(set(rng.sample(range(i), min(i, rng.randint(0, 2)))))
            subs.append({"id": f"s{i}", "prompt": prompt, "depends_on": [f"s{d}" for d in deps]})
        out.append(json.dumps({"subproblems": subs}))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies=plans(), limit=st.integers(1, 4), layered=st.booleans())
async def test_grown_dag_stays_acyclic_within_limits_and_runs_each_step_once(
    replies: list[str], limit: int, layered: bool
) -> None:
    """Inserted steps run once each, after their dependencies, with the step limit held."""
    log = new_log(delay=0.001)
    planners = {f"m{i}": [r] for i, r in enumerate(replies)}
    spec, clients = session(
        planners,
        log,
        parallel_execution={
            "max_concurrent_steps": limit,
            "scheduling": "layered" if layered else "eager",
        },
    )
    seen: list[Event] = []
    running = 0
    peak = 0

    def watch(event: Event) -> None:
        nonlocal running, peak
        seen.append(event)
        if isinstance(event, StepStarted):
            running += 1
            peak = max(peak, running)
        elif isinstance(event, StepFinished):
            running -= 1

    with anyio.fail_after(30):
        result = await thinktank.run(spec, store=None, models=clients, on_event=watch)
    assert result.status == "completed", result.error
    assert peak <= limit
    added = next(e for e in seen if isinstance(e, StepsAdded))
    graph: nx.DiGraph[str] = nx.DiGraph()
    for info in added.steps:
        graph.add_node(info.step_id)
        for dep in info.depends_on:
            graph.add_edge(dep, info.step_id)
    assert nx.is_directed_acyclic_graph(graph)
    finished_at = {e.step_id: i for i, e in enumerate(seen) if isinstance(e, StepFinished)}
    started_at = {e.step_id: i for i, e in enumerate(seen) if isinstance(e, StepStarted)}
    starts = [e.step_id for e in seen if isinstance(e, StepStarted)]
    assert len(starts) == len(set(starts)) == len(result.steps)
    for info in added.steps:
        for dep in info.depends_on:
            assert finished_at[dep] < started_at[info.step_id]
    sink = next(i.step_id for i in added.steps if i.step_id.endswith("synthesis"))
    assert finished_at[sink] < started_at["after"]


async def test_a_decompose_attempt_returns_the_steps_to_add_and_grows_nothing() -> None:
    """``decompose`` hands back what the plan adds (fresh ids, wired to the decompose
    step, a synthesis step over all of them, credited to the models that proposed
    them); growing the DAG is the run's job, so it emits only its calls."""
    plan = json.dumps(PLAN)
    log = new_log()
    spec, clients = session({"m1": [plan], "m2": [plan]}, log)
    step = spec.step("plan")
    events: list[Event] = []
    caller = Caller(session_id="s", clients=clients, emit=events.append, max_concurrent_models=4)
    request = ModelRequest(prompt="Big one", step_id="plan", attempt=1)
    calls: list[CallResult] = []
    output, error, growth = await decompose(
        caller, step, ["m1", "m2"], request, calls, {"root", "plan", "after", "plan-1"}
    )
    assert error is None and output is not None and "What does A cost?" in output
    assert growth is not None and growth.parent == "plan"
    first, second, sink = growth.added
    assert (first.id, second.id, sink.id) == ("plan-1-2", "plan-2", "plan-synthesis")
    assert first.depends_on == ["plan"] and second.depends_on == ["plan", "plan-1-2"]
    assert growth.sink == sink.id and sink.depends_on == ["plan-1-2", "plan-2"]
    assert growth.provenance == {"plan-1-2": ("m1", "m2"), "plan-2": ("m1", "m2")}
    assert len(calls) == 2 and {type(e).__name__ for e in events} == {"CallStarted", "CallFinished"}
