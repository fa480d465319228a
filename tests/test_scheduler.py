"""The DAG scheduler: property tests on random DAGs, latencies, failures and limits."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Literal

import anyio
import anyio.lowlevel
import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CallLog, CountingModel
from thinktank import run
from thinktank.engine.outcome import Abstained
from thinktank.engine.scheduler import Scheduler
from thinktank.session.graph import StepGraph
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec, StepSpec


def make_graph(deps: list[list[int]]) -> StepGraph:
    """A StepGraph whose step i depends on the steps listed in deps[i] (all < i)."""
    steps = [
        StepSpec(id=f"s{i}", prompt="p", model="m", depends_on=[f"s{d}" for d in ds])
        for i, ds in enumerate(deps)
    ]
    return StepGraph(SessionSpec(name="t", steps=steps))


@st.composite
def dags(draw: st.DrawFn, max_steps: int = 200) -> list[list[int]]:
    """Random DAGs: step i depends on up to 3 random earlier steps."""
    n = draw(st.integers(min_value=1, max_value=max_steps))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = random.Random(seed)
    density = draw(st.sampled_from([0, 1, 2, 3]))
    return [sorted(set(rng.sample(range(i), min(i, rng.randint(0, density))))) for i in range(n)]


@dataclass
class Probe:
    """What the fake executor saw."""

    graph: StepGraph
    failing: set[str]
    latencies: dict[str, float]
    layered: bool = False
    runs: dict[str, int] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    order_violations: list[str] = field(default_factory=list)

    async def execute(self, step: str) -> str | None:
        self.runs[step] = self.runs.get(step, 0) + 1
        missing = [d for d in self.graph.dependencies(step) if d not in self.done]
        if missing:
            self.order_violations.append(f"{step} before {missing}")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.latencies[step])
        finally:
            self.in_flight -= 1
        if step in self.failing:
            return "boom"
        self.done.add(step)
        return None


def _probe(deps: list[list[int]], seed: int) -> Probe:
    """A probe with up to 4 failing steps and mostly-instant, sometimes slow latencies."""
    # Drawn from a seed rather than st.data(): drawing inside an async test body
    # upsets hypothesis' buffer accounting under anyio.
    graph = make_graph(deps)
    names = [f"s{i}" for i in range(len(deps))]
    rng = random.Random(seed)
    failing = set(rng.sample(names, min(len(names), rng.randint(0, 4))))
    lat = {n: rng.choice([0.0, 0.0, 0.0, 0.0005, 0.001, 0.003]) for n in names}
    return Probe(graph, failing, lat)


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(
    deps=dags(),
    limit=st.one_of(st.integers(1, 8), st.just("unlimited")),
    layered=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
async def test_best_effort_runs_each_step_once_after_its_deps_within_the_limit(
    deps: list[list[int]], limit: int | Literal["unlimited"], layered: bool, seed: int
) -> None:
    """Every step runs at most once, after its deps, under the limit; skips = descendants."""
    probe = _probe(deps, seed)
    scheduler = Scheduler(
        probe.graph,
        probe.execute,
        max_concurrent_steps=limit,
        scheduling="layered" if layered else "eager",
        failure_strategy="best_effort",
    )
    with anyio.fail_after(30):
        outcome = await scheduler.run()

    g = probe.graph.graph
    assert probe.order_violations == []
    assert all(n == 1 for n in probe.runs.values())
    if limit != "unlimited":
        assert probe.max_in_flight <= limit
        assert outcome.max_in_flight <= limit
    assert outcome.max_in_flight == probe.max_in_flight
    failed = set(outcome.failed)
    expected_skipped = set().union(*(nx.descendants(g, f) for f in failed)) - failed
    assert set(outcome.skipped) == expected_skipped
    # A failing step that was skipped never ran, so it is not failed.
    assert failed == {f for f in probe.failing if f in probe.runs}
    assert set(outcome.completed) | failed | set(outcome.skipped) == set(g)
    assert set(probe.runs) == set(outcome.completed) | failed
    assert scheduler.in_flight == 0


@SETTINGS
@given(deps=dags(max_steps=80), limit=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
async def test_fail_fast_stops_starting_steps_after_the_first_failure(
    deps: list[list[int]], limit: int, seed: int
) -> None:
    """Under fail_fast nothing starts after a failure, and every step is accounted for."""
    probe = _probe(deps, seed)
    started_after_failure: list[str] = []
    inner = probe.execute
    failed_seen: list[str] = []

    async def execute(step: str) -> str | None:
        if failed_seen:
            started_after_failure.append(step)
        result = await inner(step)
        if result is not None:
            failed_seen.append(step)
        return result

    scheduler = Scheduler(
        probe.graph, execute, max_concurrent_steps=limit, failure_strategy="fail_fast"
    )
    with anyio.fail_after(30):
        outcome = await scheduler.run()
    assert started_after_failure == []
    assert probe.order_violations == []
    accounted = set(outcome.completed) | set(outcome.failed) | set(outcome.skipped)
    accounted |= set(outcome.cancelled)
    assert accounted == set(probe.graph.graph)
    if probe.failing & set(probe.runs):
        assert outcome.aborted_by in probe.failing
        assert len(outcome.failed) >= 1
    else:
        assert outcome.aborted_by is None
        assert len(outcome.completed) == len(deps)


@SETTINGS
@given(deps=dags(max_steps=60), limit=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
async def test_layered_runs_one_generation_at_a_time(
    deps: list[list[int]], limit: int, seed: int
) -> None:
    """In layered mode no step of generation k+1 starts before generation k is over."""
    probe = _probe(deps, seed)
    probe.failing = set()
    generation = {n: i for i, gen in enumerate(probe.graph.generations()) for n in gen}
    running_gens: list[int] = []
    finished_per_gen: dict[int, int] = {}
    sizes = {i: len(g) for i, g in enumerate(probe.graph.generations())}
    violations: list[str] = []

    async def execute(step: str) -> str | None:
        k = generation[step]
        for j in range(k):
            if finished_per_gen.get(j, 0) != sizes[j]:
                violations.append(f"{step} (gen {k}) started before gen {j} finished")
        running_gens.append(k)
        result = await probe.execute(step)
        finished_per_gen[k] = finished_per_gen.get(k, 0) + 1
        return result

    scheduler = Scheduler(probe.graph, execute, max_concurrent_steps=limit, scheduling="layered")
    with anyio.fail_after(30):
        outcome = await scheduler.run()
    assert violations == []
    assert len(outcome.completed) == len(deps)


async def test_eager_starts_a_step_as_soon_as_its_last_dependency_finishes() -> None:
    """A short chain does not wait for an unrelated slow step of the same generation."""
    # a (slow) ; b (fast) -> c : c must start long before a ends.
    graph = make_graph([[], [], [1]])
    starts: dict[str, float] = {}
    lat = {"s0": 0.3, "s1": 0.01, "s2": 0.0}

    async def execute(step: str) -> str | None:
        starts[step] = anyio.current_time()
        await anyio.sleep(lat[step])
        return None

    t0 = anyio.current_time()
    await Scheduler(graph, execute, max_concurrent_steps=3).run()
    assert starts["s2"] - t0 < 0.2


async def test_resume_set_skips_steps_already_done() -> None:
    """Steps passed as done are not run again and count as satisfied dependencies."""
    graph = make_graph([[], [0], [1]])
    ran: list[str] = []

    async def execute(step: str) -> str | None:
        ran.append(step)
        return None

    outcome = await Scheduler(graph, execute, done={"s0"}).run()
    assert ran == ["s1", "s2"]
    assert outcome.completed == ["s1", "s2"]


async def test_zero_limit_is_rejected() -> None:
    """A limit below one is a programming error."""
    with pytest.raises(ValueError, match="max_concurrent_steps"):
        Scheduler(make_graph([[]]), lambda s: anyio.lowlevel.checkpoint(), max_concurrent_steps=0)  # type: ignore[arg-type,return-value]


async def test_unlimited_starts_every_ready_step_with_a_task_per_step_in_flight() -> None:
    """``unlimited``: all 200 independent steps are in flight at once, and a chain of
    300 steps after them runs on one task (no task is spawned per step of the session,
    none waits idle)."""
    deps = [[] for _ in range(200)] + [[199 + i] if i else list(range(200)) for i in range(300)]
    graph = make_graph(deps)
    tasks_during_chain: list[int] = []
    in_flight = 0
    most = 0

    async def execute(step: str) -> str | None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if int(step[1:]) >= 200:
            tasks_during_chain.append(len(asyncio.all_tasks()))
        await anyio.sleep(0.01 if int(step[1:]) < 200 else 0)
        in_flight -= 1
        return None

    baseline = len(asyncio.all_tasks())
    outcome = await Scheduler(graph, execute, max_concurrent_steps="unlimited").run()
    assert len(outcome.completed) == 500
    assert most == outcome.max_in_flight == 200
    # The test's own task plus the one running the chain.
    assert max(tasks_during_chain) <= baseline + 1


async def test_an_unlimited_session_file_runs_every_ready_step_at_once() -> None:
    """``maxConcurrentSteps: unlimited`` in a session: 40 independent steps, 40 calls
    in flight at once."""
    spec = parse_session(
        {
            "name": "wide",
            "parallelExecution": {"maxConcurrentSteps": "unlimited"},
            "steps": [{"id": f"s{i}", "prompt": "p", "model": "m"} for i in range(40)],
        },
        known_models=["m"],
    )
    log = CallLog()
    result = await run(spec, store=None, models={"m": CountingModel("m", log, delay_s=0.05)})
    assert result.status == "completed"
    assert log.max_in_flight == 40


@SETTINGS
@given(
    deps=dags(max_steps=80),
    limit=st.integers(1, 6),
    strategy=st.sampled_from(["best_effort", "fail_fast"]),
    seed=st.integers(0, 2**32 - 1),
)
async def test_abstaining_steps_complete_and_skip_exactly_their_descendants(
    deps: list[list[int]], limit: int, strategy: Literal["best_effort", "fail_fast"], seed: int
) -> None:
    """An abstaining step completes; its descendants (only) are skipped, each other step
    runs once after its deps; under either strategy nothing is cancelled or aborted."""
    probe = _probe(deps, seed)
    abstaining, probe.failing = probe.failing, set()
    inner = probe.execute

    async def execute(step: str) -> str | Abstained | None:
        await inner(step)
        return Abstained("split vote") if step in abstaining else None

    scheduler = Scheduler(
        probe.graph, execute, max_concurrent_steps=limit, failure_strategy=strategy
    )
    with anyio.fail_after(30):
        outcome = await scheduler.run()
    g = probe.graph.graph
    assert probe.order_violations == []
    assert all(n == 1 for n in probe.runs.values())
    ran_abstaining = abstaining & set(probe.runs)
    assert set(outcome.abstained) == ran_abstaining
    expected_skipped = set().union(*(nx.descendants(g, a) for a in ran_abstaining))
    assert set(outcome.skipped) == expected_skipped
    assert set(outcome.completed) == set(g) - expected_skipped == set(probe.runs)
    assert (outcome.failed, outcome.cancelled, outcome.aborted_by) == ({}, [], None)
    assert probe.max_in_flight <= limit
