"""Seeded DAG workloads and the virtual-time schedules the benchmark compares against.

A workload is a DAG in file order: step ``i`` depends on the steps in ``deps[i]``, all
with smaller indices, and takes ``latency[i]`` seconds (lognormal, heavy-tailed). The
references are computed from the same numbers, in virtual time, with no event loop:

* ``lower_bound``: max(critical path, total work / C). No schedule beats it.
* ``greedy_makespan``: an event-driven simulation of eager list scheduling on C slots,
  a FIFO ready queue in the order steps became ready, ties in file order. This is the
  policy of ``thinktank.engine.scheduler``, so an ideal, zero-overhead thinktank run
  takes exactly this long.
* ``layered_makespan``: one topological generation at a time, each generation
  list-scheduled on C slots in file order (what superstep engines such as LangGraph's
  Pregel loop do).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass

__all__ = [
    "Workload",
    "chain",
    "critical_path",
    "fan_out",
    "generations",
    "greedy_makespan",
    "independent",
    "layered_makespan",
    "layered_random",
    "lower_bound",
    "random_dag",
    "step_id",
]


def step_id(i: int) -> str:
    """The id of step ``i`` (valid as a thinktank step id and a LangGraph node name)."""
    return f"s{i:05d}"


@dataclass(frozen=True, slots=True)
class Workload:
    """A DAG with a latency per step and the concurrency limit it is run at."""

    name: str
    deps: tuple[tuple[int, ...], ...]
    """``deps[i]``: the steps step ``i`` waits for (all < i), sorted."""
    latency: tuple[float, ...]
    """Seconds each step takes."""
    limit: int | None
    """C, the max steps in flight (None: unlimited)."""
    median_ms: float
    sigma: float

    @property
    def n(self) -> int:
        """Number of steps."""
        return len(self.deps)

    @property
    def slots(self) -> int:
        """Steps that may run at once: C, or every step when unlimited."""
        return self.limit if self.limit is not None else max(self.n, 1)

    @property
    def limit_label(self) -> str:
        """C as the tables print it."""
        return str(self.limit) if self.limit is not None else "unlimited"

    @property
    def ids(self) -> list[str]:
        """Step ids in file order."""
        return [step_id(i) for i in range(self.n)]

    def successors(self) -> list[list[int]]:
        """``succ[i]``: the steps that wait for step ``i``, in file order."""
        succ: list[list[int]] = [[] for _ in range(self.n)]
        for i, ds in enumerate(self.deps):
            for d in ds:
                succ[d].append(i)
        return succ

    def sinks(self) -> list[int]:
        """Steps nothing depends on."""
        has_succ = {d for ds in self.deps for d in ds}
        return [i for i in range(self.n) if i not in has_succ]

    def latency_by_id(self) -> dict[str, float]:
        """Latency per step id."""
        return {step_id(i): lat for i, lat in enumerate(self.latency)}

    def session_data(self, model: str = "m") -> dict[str, object]:
        """The workload as a thinktank session mapping (for ``parse_session``)."""
        steps = [
            {
                "id": step_id(i),
                "prompt": "p",
                "model": model,
                "depends_on": [step_id(d) for d in ds],
            }
            for i, ds in enumerate(self.deps)
        ]
        return {
            "name": self.name,
            "parallel_execution": {
                "max_concurrent_steps": self.limit if self.limit is not None else "unlimited"
            },
            "steps": steps,
        }

    def with_limit(self, limit: int | None) -> Workload:
        """The same DAG and latencies at another C."""
        return Workload(self.name, self.deps, self.latency, limit, self.median_ms, self.sigma)


def _latencies(rng: random.Random, n: int, median_ms: float, sigma: float) -> tuple[float, ...]:
    mu = math.log(median_ms / 1000)
    return tuple(rng.lognormvariate(mu, sigma) for _ in range(n))


def _make(
    name: str,
    deps: list[list[int]],
    rng: random.Random,
    limit: int,
    median_ms: float,
    sigma: float,
) -> Workload:
    return Workload(
        name=name,
        deps=tuple(tuple(sorted(set(ds))) for ds in deps),
        latency=_latencies(rng, len(deps), median_ms, sigma),
        limit=limit,
        median_ms=median_ms,
        sigma=sigma,
    )


def layered_random(
    rng: random.Random, layers: int, width: int, *, limit: int, median_ms: float, sigma: float
) -> Workload:
    """``layers`` layers of ``width`` steps; each step past the first layer depends on
    1-3 random steps of the layer before."""
    deps: list[list[int]] = []
    for layer in range(layers):
        for _ in range(width):
            if layer == 0:
                deps.append([])
            else:
                prev = range((layer - 1) * width, layer * width)
                deps.append(rng.sample(prev, rng.randint(1, min(3, width))))
    return _make(f"layered {layers}x{width}", deps, rng, limit, median_ms, sigma)


def fan_out(
    rng: random.Random, width: int, *, limit: int, median_ms: float, sigma: float
) -> Workload:
    """1 -> ``width`` -> 1."""
    deps: list[list[int]] = [[]] + [[0] for _ in range(width)] + [list(range(1, width + 1))]
    return _make(f"fan-out 1->{width}->1", deps, rng, limit, median_ms, sigma)


def chain(rng: random.Random, n: int, *, limit: int, median_ms: float, sigma: float) -> Workload:
    """A chain of ``n`` steps."""
    deps: list[list[int]] = [[]] + [[i - 1] for i in range(1, n)]
    return _make(f"chain {n}", deps, rng, limit, median_ms, sigma)


def independent(
    rng: random.Random, n: int, *, limit: int, median_ms: float, sigma: float
) -> Workload:
    """``n`` steps with no dependencies."""
    return _make(f"independent {n}", [[] for _ in range(n)], rng, limit, median_ms, sigma)


def random_dag(
    rng: random.Random, n: int, *, limit: int, median_ms: float, sigma: float
) -> Workload:
    """Each step depends on 0-3 random earlier steps, biased to recent ones.

    The number of dependencies is 0/1/2/3 with probability 5/40/35/20 %, and each
    dependency lies an exponentially distributed distance back (mean ``n / 30``
    steps), so the DAG has some dozens of generations instead of one huge layer.
    """
    window = max(10.0, n / 30)
    deps: list[list[int]] = []
    for i in range(n):
        k = rng.choices((0, 1, 2, 3), weights=(5, 40, 35, 20))[0] if i else 0
        deps.append([max(0, i - 1 - int(rng.expovariate(1 / window))) for _ in range(k)])
    return _make(f"random DAG {n}", deps, rng, limit, median_ms, sigma)


# -- virtual-time references ----------------------------------------------------------


def critical_path(w: Workload) -> float:
    """The longest dependency chain, weighted by latency."""
    finish = [0.0] * w.n
    for i, ds in enumerate(w.deps):
        finish[i] = w.latency[i] + max((finish[d] for d in ds), default=0.0)
    return max(finish, default=0.0)


def lower_bound(w: Workload) -> float:
    """max(critical path, total work / C)."""
    return max(critical_path(w), sum(w.latency) / w.slots)


def greedy_makespan(w: Workload) -> float:
    """Eager list scheduling, FIFO ready queue (order of becoming ready, ties in file
    order), at most C in flight: the schedule thinktank's eager scheduler follows."""
    succ = w.successors()
    waiting = [len(ds) for ds in w.deps]
    ready: deque[int] = deque(i for i in range(w.n) if waiting[i] == 0)
    running: list[tuple[float, int, int]] = []  # (finish, start order, step)
    now = 0.0
    started = 0
    end = 0.0

    def pump() -> None:
        nonlocal started
        while ready and len(running) < w.slots:
            i = ready.popleft()
            heapq.heappush(running, (now + w.latency[i], started, i))
            started += 1

    pump()
    while running:
        now, _, i = heapq.heappop(running)
        end = max(end, now)
        for s in succ[i]:
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
        pump()
    return end


def generations(w: Workload) -> list[list[int]]:
    """Topological generations (by longest-path depth), each in file order."""
    depth = [0] * w.n
    for i, ds in enumerate(w.deps):
        depth[i] = 1 + max((depth[d] for d in ds), default=-1)
    gens: list[list[int]] = [[] for _ in range(max(depth, default=-1) + 1)]
    for i, d in enumerate(depth):
        gens[d].append(i)
    return gens


def layered_makespan(w: Workload) -> float:
    """One generation at a time, each list-scheduled on C slots in file order."""
    total = 0.0
    for gen in generations(w):
        slots = [0.0] * min(w.slots, len(gen))
        for i in gen:
            free = heapq.heappop(slots)
            heapq.heappush(slots, free + w.latency[i])
        total += max(slots)
    return total
