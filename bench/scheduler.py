"""Scheduler benchmark at realistic model latency: makespan against the greedy list
schedule, LangGraph and a plain anyio loop side by side, and the engine's CPU per step.

Run from the repo root: ``python bench/scheduler.py`` (a few minutes), ``--quick``
(smaller DAGs), ``--latency-ms 10`` (median model latency), ``--sigma 0.5``,
``--seed N``, ``--repo PATH`` (time another checkout's thinktank, e.g. main's, with
this script's workloads and harness: its code is put first on ``sys.path`` of the
engine processes). LangGraph comes from the ``bench`` extra
(``pip install -e '.[bench]'``); the library never imports it.

Workloads (``bench/_workloads.py``, all seeded): layered random 6x8, fan-out 1->50->1
and a chain of 20 at C=4, 1,000 independent steps at C=32, and a random 10,000-step
DAG (0-3 dependencies per step, biased to recent steps) at C=64 and unlimited. Every
step takes a lognormal latency (median ``--latency-ms``, ``--sigma``).

Each engine runs each workload in a fresh interpreter of its own, one after the other
(never at once), so none runs on a heap another left behind: thinktank without a store
(``store=None``), thinktank with a fresh SQLite file, the plain anyio loop (a task per
ready step and a semaphore: the floor of this harness) and LangGraph (a ``StateGraph``
node per step, ``max_concurrency = C``; LangGraph runs in supersteps). Two runs each:

makespan  the model sleeps each step's latency with ``sleep_precisely`` (a plain loop
          timer wakes up to 1 ms late, which would add to every step on the critical
          path). ``greedy`` is the event-driven simulation of the same DAG, latencies
          and C with thinktank's policy and zero overhead. ``run/greedy`` is the whole
          ``run()`` call (validation, graph, events, result) over greedy; ``sched/greedy``
          the schedule alone, first model call to last (target <= 1.03).
CPU       the same run with a plain ``anyio.sleep`` (``sleep_precisely`` spins for its
          last millisecond and would bury the engine's own CPU): process CPU time
          (``time.process_time``) of the run over the number of steps, in us. Targets:
          thinktank <= 2x the anyio loop; with SQLite <= 2x thinktank without a store.

Session specs are built with the public ``thinktank.parse_session``, outside the timed
runs. Timings are wall-clock on whatever else the machine does: the load average is
printed at the start and the end.
"""

# ruff: noqa: E402 - sys.path is fixed below, before any other import.
from __future__ import annotations

import os
import sys

# ``python bench/scheduler.py`` puts bench/ first on sys.path, where a sibling script's
# name (bench/http.py) would shadow the standard-library module of the same name for
# every later import (httpx -> http.client). Import from the repo root instead.
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH_DIR]
sys.path.insert(0, os.path.dirname(_BENCH_DIR))

import argparse
import json
import math
import operator
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel

from bench import _workloads as wl
from bench._report import cpu_model, table, version

# thinktank is imported in the engine processes only, after ``--repo`` is on sys.path.

MODEL = "m"
ENGINES = ("anyio", "tt", "tt+sqlite", "langgraph")
TARGET_SCHEDULE = 1.03
TARGET_CPU = 2.0
LANGGRAPH_TIMEOUT_S = 900.0
_TIMER_SLACK_S = 0.0011


async def sleep_precisely(seconds: float) -> None:
    """Sleep ``seconds``, waking within tens of microseconds of the deadline (a copy of
    ``thinktank.providers.simulated.sleep_precisely``, so the other engines' processes
    need not import thinktank)."""
    deadline = anyio.current_time() + seconds
    if seconds > _TIMER_SLACK_S:
        await anyio.sleep(seconds - _TIMER_SLACK_S)
    while anyio.current_time() < deadline:
        await anyio.lowlevel.checkpoint()


Sleep = Callable[[float], Any]


@dataclass
class Timed:
    """One run of one engine."""

    wall: float
    """Seconds, the whole run."""
    cpu: float
    """Process CPU seconds of the run."""
    span: float
    """Seconds from the first model call's start to the last one's end."""
    ok: bool
    note: str = ""


class Span:
    """When the first call began and the last one ended."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0

    async def step(self, sleep: Sleep, seconds: float) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        await sleep(seconds)
        self.last = time.perf_counter()


# -- engines (each runs in a process of its own) ----------------------------------------


async def run_thinktank(w: wl.Workload, sleep: Sleep, store: str | None) -> Timed:
    """``thinktank.run`` on the workload: the model sleeps each step's latency."""
    import thinktank
    from thinktank.providers.base import ModelRequest, ModelResponse

    data = w.session_data(MODEL)
    note = ""
    try:
        spec = thinktank.parse_session(data, known_models=[MODEL])
    except Exception:  # noqa: BLE001 - an older thinktank has no "unlimited"
        data["parallel_execution"] = {"max_concurrent_steps": w.n}
        spec = thinktank.parse_session(data, known_models=[MODEL])
        note = "C = steps (no 'unlimited')"
    latency = w.latency_by_id()
    span = Span()
    response = ModelResponse(content="ok", model=MODEL)

    class Model:
        name = MODEL
        provider = "bench"

        async def complete(self, request: ModelRequest) -> ModelResponse:
            await span.step(sleep, latency[request.step_id])
            return response

    cpu, start = time.process_time(), time.perf_counter()
    result = await thinktank.run(spec, store=store, models={MODEL: Model()})
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    completed = sum(1 for s in result.steps.values() if s.status == "completed")
    ok = completed == w.n
    if not ok:
        note = f"{completed}/{w.n} completed"
    return Timed(wall, cpu, span.last - (span.first or span.last), ok, note)


async def run_anyio(w: wl.Workload, sleep: Sleep) -> Timed:
    """The DAG on a minimal hand-written anyio loop: a task per ready step, a semaphore."""
    succ = w.successors()
    waiting = [len(ds) for ds in w.deps]
    latency = w.latency
    sem = anyio.Semaphore(w.slots)
    span = Span()
    done = 0

    async def step(i: int) -> None:
        nonlocal done
        async with sem:
            await span.step(sleep, latency[i])
        done += 1
        for s in succ[i]:
            waiting[s] -= 1
            if waiting[s] == 0:
                tg.start_soon(step, s)

    cpu, start = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(w.n):
            if waiting[i] == 0:
                tg.start_soon(step, i)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ok = done == w.n
    return Timed(wall, cpu, span.last - (span.first or span.last), ok, "" if ok else "lost steps")


class LGState(TypedDict):
    """LangGraph state: a counter every node adds 1 to (concurrent writes sum)."""

    n: Annotated[int, operator.add]


async def run_langgraph(w: wl.Workload, sleep: Sleep) -> Timed:
    """``ainvoke`` on a compiled ``StateGraph`` (building it is not timed)."""
    from langgraph.graph import END, START, StateGraph

    span = Span()

    def node(seconds: float) -> Callable[[LGState], Any]:
        async def run(state: LGState) -> dict[str, int]:
            await span.step(sleep, seconds)
            return {"n": 1}

        return run

    graph = StateGraph(LGState)
    ids = w.ids
    for i, name in enumerate(ids):
        graph.add_node(name, node(w.latency[i]))
    for i, ds in enumerate(w.deps):
        if not ds:
            graph.add_edge(START, ids[i])
        elif len(ds) == 1:
            graph.add_edge(ids[ds[0]], ids[i])
        else:
            # A waiting edge: the step runs once all of its dependencies have.
            graph.add_edge([ids[d] for d in ds], ids[i])
    for i in w.sinks():
        graph.add_edge(ids[i], END)
    app = graph.compile()
    config = {"max_concurrency": w.limit, "recursion_limit": w.n + 10}
    cpu, start = time.process_time(), time.perf_counter()
    try:
        with anyio.fail_after(LANGGRAPH_TIMEOUT_S):
            state = await app.ainvoke({"n": 0}, config=config)
    except Exception as exc:  # noqa: BLE001 - any LangGraph failure is a reported result
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        return Timed(wall, cpu, 0.0, False, f"{type(exc).__name__}: {str(exc)[:60]}")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ok = isinstance(state, dict) and state.get("n") == w.n
    return Timed(wall, cpu, span.last - (span.first or span.last), ok, "" if ok else "lost steps")


async def engine_child(args: argparse.Namespace) -> None:
    """One engine on one workload, in this fresh process: the makespan run, then the CPU
    run; print both as JSON."""
    w = workloads(args)[args.workload]
    # An untimed warm-up on a 1-step DAG first: the first run in a process imports
    # what each engine loads lazily (providers, the store, ...).
    tiny = wl.chain(random.Random(0), 1, limit=1, median_ms=1.0, sigma=0.0)
    engine = args.child
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="thinktank-bench-") as tmp:
        for label, sleep, work in (
            ("warm-up", anyio.sleep, tiny),
            ("makespan", sleep_precisely, w),
            ("cpu", anyio.sleep, w),
        ):
            if engine == "anyio":
                timed = await run_anyio(work, sleep)
            elif engine == "langgraph":
                timed = await run_langgraph(work, sleep)
            else:
                store = f"{tmp}/{label}.db" if engine == "tt+sqlite" else None
                timed = await run_thinktank(work, sleep, store)
            runs[label] = asdict(timed)
    print(json.dumps(runs))


# -- the parent: workloads, children, table -----------------------------------------------


def workloads(args: argparse.Namespace) -> list[wl.Workload]:
    """The six workloads, each drawn from its own seeded stream."""
    ms, sigma = args.latency_ms, args.sigma
    n_indep, n_random = (300, 1000) if args.quick else (1000, 10_000)

    def rng(stream: int) -> random.Random:
        return random.Random(args.seed * 1_000 + stream)

    big = wl.random_dag(rng(5), n_random, limit=64, median_ms=ms, sigma=sigma)
    return [
        wl.layered_random(rng(1), 6, 8, limit=4, median_ms=ms, sigma=sigma),
        wl.fan_out(rng(2), 50, limit=4, median_ms=ms, sigma=sigma),
        wl.chain(rng(3), 20, limit=4, median_ms=ms, sigma=sigma),
        wl.independent(rng(4), n_indep, limit=32, median_ms=ms, sigma=sigma),
        big,
        big.with_limit(None),
    ]


def _child(args: argparse.Namespace, engine: str, index: int) -> dict[str, Any]:
    """Run :func:`engine_child` in a fresh interpreter and read what it printed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine]
    cmd += ["--workload", str(index), "--seed", str(args.seed)]
    cmd += ["--latency-ms", str(args.latency_ms), "--sigma", str(args.sigma)]
    if args.quick:
        cmd.append("--quick")
    if args.repo is not None:
        cmd += ["--repo", str(Path(args.repo).resolve())]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} child failed: {done.stderr.strip()[-2000:]}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def _ratio(x: float, y: float) -> str:
    return f"{x / y:.3f}" if y > 0 and math.isfinite(x) else "-"


def _us(timed: dict[str, Any], n: int) -> float:
    return float(timed["cpu"]) / n * 1e6


def _row(w: wl.Workload, greedy: float, got: dict[str, dict[str, Any]]) -> list[str]:
    mk = {e: got[e]["makespan"] for e in got}
    cpu = {e: _us(got[e]["cpu"], w.n) for e in got}
    lg = mk.get("langgraph")
    notes = sorted({r[k]["note"] for r in got.values() for k in r if r[k]["note"]})
    return [
        w.name,
        str(w.n),
        w.limit_label,
        f"{greedy:.3f}",
        _ratio(mk["tt"]["wall"], greedy),
        _ratio(mk["tt"]["span"], greedy),
        _ratio(mk["anyio"]["wall"], greedy),
        _ratio(lg["wall"], greedy) if lg else "-",
        _ratio(mk["tt+sqlite"]["wall"], greedy),
        f"{cpu['anyio']:.0f}",
        f"{cpu['tt']:.0f}",
        _ratio(cpu["tt"], cpu["anyio"]),
        f"{cpu['langgraph']:.0f}" if "langgraph" in cpu else "-",
        f"{cpu['tt+sqlite']:.0f}",
        _ratio(cpu["tt+sqlite"], cpu["tt"]),
        "; ".join(notes),
    ]


HEADERS = [
    "workload",
    "steps",
    "C",
    "greedy s",
    "run/greedy",
    "sched/greedy",
    "anyio/greedy",
    "LG/greedy",
    "sqlite/greedy",
    "anyio us",
    "tt us",
    "tt/anyio",
    "LG us",
    "sqlite us",
    "sqlite/tt",
    "notes",
]


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def main(args: argparse.Namespace) -> None:
    engines = [e for e in ENGINES if e != "langgraph" or version("langgraph") != "-"]
    print("thinktank scheduler benchmark at model latency")
    print(f"machine   {cpu_model()}; {os.cpu_count()} cores; {platform.system()}")
    print(
        f"python    {platform.python_version()}, anyio {version('anyio')}, "
        f"langgraph {version('langgraph')}, sqlalchemy {version('sqlalchemy')}"
    )
    print(f"code      {Path(args.repo).resolve() if args.repo else 'this checkout'}")
    print(
        f"latency   lognormal, median {args.latency_ms} ms, sigma {args.sigma}; "
        f"seed {args.seed}; loadavg {_load()} (start)"
    )
    rows = []
    for index, w in enumerate(workloads(args)):
        greedy = wl.greedy_makespan(w)
        got = {}
        for engine in engines:
            print(f"  .. {w.name} C={w.limit_label}: {engine}", file=sys.stderr, flush=True)
            got[engine] = _child(args, engine, index)
        rows.append(_row(w, greedy, got))
    print()
    print(
        table(
            "makespan over greedy (targets: sched/greedy <= 1.03); CPU us per step "
            "(targets: tt/anyio <= 2, sqlite/tt <= 2)",
            HEADERS,
            rows,
        )
    )
    print(f"loadavg {_load()} (end)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller DAGs, a smoke run")
    parser.add_argument("--seed", type=int, default=20240601, help="workload seed")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="median model latency")
    parser.add_argument("--sigma", type=float, default=0.5, help="lognormal sigma of latency")
    parser.add_argument("--repo", help="checkout whose thinktank is timed (default: this one)")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--workload", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    if parsed.child is not None:
        if parsed.repo is not None:
            sys.path.insert(0, parsed.repo)  # its thinktank, before this checkout's
        anyio.run(engine_child, parsed, backend="asyncio")
    else:
        main(parsed)
