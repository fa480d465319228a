"""Scheduler benchmark: how close thinktank's eager scheduler gets to the ideal schedule,
how it compares with LangGraph, and what each step costs.

Run from the repo root: ``python bench/scheduler.py`` (full, a few minutes),
``--quick`` (smoke run, under a minute), ``--only a|b|c``, ``--seed N``, ``--repeat N``,
``--profile`` (instead of the sections: cProfile and garbage-collector figures of a
zero-latency run, per step). LangGraph comes from the ``bench`` extra
(``pip install -e '.[bench]'``); the library never imports it.

Workloads (``bench/_workloads.py``, all seeded): layered random 6x8, fan-out 1->50->1,
chain of 20, 1,000 independent steps, and a random 10,000-step DAG (0-3 dependencies
per step, biased to recent steps). Every step has a lognormal (heavy-tailed) latency;
the tables give its median (ms) and sigma.

(a) Makespan. Each workload runs once through ``thinktank.run`` for real: the model
    client sleeps the step's latency (looked up by ``request.step_id``), ``store=None``.
    Every path sleeps with ``sleep_precisely``, the simulated models' sleep: a plain
    asyncio timer wakes up to a millisecond late (epoll rounds up to whole
    milliseconds), which would add ~0.5 ms to every step on the critical path.
    The same latencies give three references in virtual time:
      LB       max(critical path, total work / C): no schedule beats it;
      greedy   eager list scheduling, FIFO ready queue (order of becoming ready, ties
               in file order) - thinktank's own policy with zero overhead;
      layered  one topological generation at a time, each list-scheduled on C slots.
    ``tt`` is the wall time of the whole ``run()`` call (validation, graph, events and
    result included); ``tt in/out`` splits off the time before the first model call
    and after the last one, ``tt gc`` the time in garbage collection, and
    ``calls/greedy`` is the schedule alone (first call to last) over greedy. ``anyio``
    is a minimal hand-written task group + semaphore loop sleeping the same latencies:
    the floor of this harness (anyio/greedy is a little above 1: the event loop still
    has to run every wake-up). Read tt/greedy:
    1.00 means thinktank adds nothing to the ideal schedule of its policy (target:
    within 2 %); tt/LB is how far the run is from any schedule's best; layered/LB is
    what waiting for whole generations would cost.
(b) The same DAGs and latencies on a LangGraph ``StateGraph`` in the same process, right
    after thinktank: one node per step, ``add_edge([deps...], step)`` (a waiting edge)
    for several dependencies, START -> roots, sinks -> END, ``max_concurrency = C`` and
    a recursion limit above the number of supersteps. The state is one counter with an
    ``operator.add`` reducer (concurrent writes sum; a list would be copied whole on
    every write, a cost of this harness rather than of LangGraph). LG is the ``ainvoke`` wall
    time; building and compiling the graph is shown apart. LG/tt > 1: LangGraph slower.
    LangGraph runs in supersteps, so compare LG with ``layered``.
(c) Overhead per step: zero-latency models (the client yields once, with
    ``anyio.lowlevel.checkpoint()``), C = 64, wall time / steps in microseconds, the
    median of 3 runs after one untimed warm-up: thinktank without a store, thinktank
    with a fresh SQLite file per run (``store=<tmp>/bench.db``: open, schema, every
    event written, close), the plain anyio loop, and LangGraph (``ainvoke`` only).
    Each engine runs each workload in a fresh interpreter of its own (one after the
    other, never at once), so none runs on a heap another left behind: in one
    process, a LangGraph run before thinktank's added ~2.5 us a step to it.
    Targets: <= 30 us/step without the store, <= 150 us/step with it. A second table
    splits the median thinktank run into setup (before the first model call), the calls
    (first to last) and teardown (after the last call: for SQLite, writing the queued
    events and closing), with the time spent in garbage collection and the number of
    full (generation-2) collections; the fixed cost of a run is that of a 1-step session.

Session specs are built with the public path, ``thinktank.parse_session`` (pydantic
validation plus graph checks); its time is printed but counted in no run. Timings are
wall-clock on whatever else the machine is doing: the load average is printed at the
start and at the end.
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

import abc
import argparse
import cProfile
import dataclasses
import gc
import json
import math
import operator
import platform
import pstats
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import anyio.lowlevel

import thinktank
from bench import _workloads as wl
from bench._report import component, cpu_model, short, table, version
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.providers.simulated import sleep_precisely
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec

MODEL = "m"
OVERHEAD_LIMIT = 64
TARGET_GREEDY = 0.02
TARGET_US_NO_STORE = 30.0
TARGET_US_STORE = 150.0
LANGGRAPH_TIMEOUT_S = 600.0


# -- model clients ---------------------------------------------------------------------


class _Client(abc.ABC):
    """Remembers when the first call began and the last one ended (the run's span)."""

    def __init__(self) -> None:
        self._response = ModelResponse(content="ok", model=MODEL)
        self.first_start: float | None = None
        self.last_end = 0.0

    @property
    def name(self) -> str:
        return MODEL

    @property
    def provider(self) -> str:
        return "bench"

    @abc.abstractmethod
    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer ``request`` (each client its own way)."""


class SleepModel(_Client):
    """Sleeps each step's latency, looked up by ``request.step_id``."""

    def __init__(self, latency: dict[str, float]) -> None:
        super().__init__()
        self._latency = latency

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if self.first_start is None:
            self.first_start = time.perf_counter()
        await sleep_precisely(self._latency[request.step_id])
        self.last_end = time.perf_counter()
        return self._response


class InstantModel(_Client):
    """Answers at once, after yielding to the event loop once."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if self.first_start is None:
            self.first_start = time.perf_counter()
        await anyio.lowlevel.checkpoint()
        self.last_end = time.perf_counter()
        return self._response


# -- garbage-collector meter -----------------------------------------------------------


class GcMeter:
    """Counts garbage collections by generation, and the time spent in them."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = info["generation"]
            self.count[gen] += 1
            self.seconds[gen] += time.perf_counter() - self._t0

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self, n: int) -> str:
        per_gen = ", ".join(
            f"gen{g}: {c} in {s * 1000:.0f} ms"
            for g, (c, s) in enumerate(zip(self.count, self.seconds, strict=True))
        )
        total = sum(self.seconds)
        return f"{total * 1000:.0f} ms = {total / n * 1e6:.1f} us/step ({per_gen})"


# -- the three runners -----------------------------------------------------------------


@dataclass
class Outcome:
    """One timed run."""

    seconds: float
    ok: bool = True
    note: str = ""
    setup: float = 0.0
    """thinktank: from calling run() to the first model call."""
    span: float = 0.0
    """thinktank: from the first model call's start to the last one's end."""
    teardown: float = 0.0
    """thinktank: from the last model call's end until run() returns."""
    gc_seconds: float = 0.0
    """thinktank: time in garbage collections during the run."""
    gc_full: int = 0
    """thinktank: full (generation 2) collections during the run."""


def make_spec(w: wl.Workload) -> tuple[SessionSpec, float]:
    """The workload as a validated session, via the public ``parse_session``."""
    start = time.perf_counter()
    spec = parse_session(w.session_data(MODEL), known_models=[MODEL])
    return spec, time.perf_counter() - start


async def run_thinktank(
    spec: SessionSpec,
    w: wl.Workload,
    *,
    sleep: bool,
    store_dir: Path | None = None,
    collect: bool = True,
) -> Outcome:
    """``thinktank.run`` on the workload; ``store_dir`` set: a fresh SQLite file in it."""
    client: _Client = SleepModel(w.latency_by_id()) if sleep else InstantModel()
    store = str(store_dir / "bench.db") if store_dir is not None else None
    if collect:
        gc.collect()
    with GcMeter() as meter:
        start = time.perf_counter()
        result = await thinktank.run(spec, store=store, models={MODEL: client})
        end = time.perf_counter()
    completed = sum(1 for s in result.steps.values() if s.status == "completed")
    ok = result.status == "completed" and completed == w.n
    note = "" if ok else f"status {result.status}, {completed}/{w.n} completed"
    first = client.first_start if client.first_start is not None else end
    return Outcome(
        end - start,
        ok,
        note,
        setup=first - start,
        span=client.last_end - first,
        teardown=end - client.last_end,
        gc_seconds=sum(meter.seconds),
        gc_full=meter.count[2],
    )


async def run_anyio(w: wl.Workload, *, sleep: bool) -> Outcome:
    """The DAG on a minimal hand-written anyio loop: a task per ready step, a semaphore."""
    gc.collect()
    start = time.perf_counter()
    succ = w.successors()
    waiting = [len(ds) for ds in w.deps]
    latency = w.latency
    sem = anyio.Semaphore(w.limit)
    done = 0

    async def step(i: int) -> None:
        nonlocal done
        async with sem:
            if sleep:
                await sleep_precisely(latency[i])
            else:
                await anyio.lowlevel.checkpoint()
        done += 1
        for s in succ[i]:
            waiting[s] -= 1
            if waiting[s] == 0:
                tg.start_soon(step, s)

    async with anyio.create_task_group() as tg:
        for i in range(w.n):
            if waiting[i] == 0:
                tg.start_soon(step, i)
    seconds = time.perf_counter() - start
    return Outcome(seconds, done == w.n, "" if done == w.n else f"{done}/{w.n} ran")


class LGState(TypedDict):
    """LangGraph state: a counter every node adds 1 to (concurrent writes sum)."""

    n: Annotated[int, operator.add]


class LGNode:
    """A LangGraph node: sleeps its step's latency, or yields once; adds 1 to ``n``."""

    def __init__(self, latency: float, sleep: bool) -> None:
        self.latency = latency
        self.sleep = sleep

    async def __call__(self, state: LGState) -> dict[str, int]:
        if self.sleep:
            await sleep_precisely(self.latency)
        else:
            await anyio.lowlevel.checkpoint()
        return {"n": 1}


def build_langgraph(w: wl.Workload, *, sleep: bool) -> tuple[Any, float]:
    """The workload as a compiled LangGraph ``StateGraph``, and the time it took."""
    from langgraph.graph import END, START, StateGraph

    start = time.perf_counter()
    graph = StateGraph(LGState)
    ids = w.ids
    for i, name in enumerate(ids):
        graph.add_node(name, LGNode(w.latency[i], sleep))
    for i, ds in enumerate(w.deps):
        if not ds:
            graph.add_edge(START, ids[i])
        elif len(ds) == 1:
            graph.add_edge(ids[ds[0]], ids[i])
        else:
            graph.add_edge([ids[d] for d in ds], ids[i])
    for i in w.sinks():
        graph.add_edge(ids[i], END)
    app = graph.compile()
    return app, time.perf_counter() - start


async def run_langgraph(app: Any, w: wl.Workload) -> Outcome:
    """``ainvoke`` on a compiled graph; a failure or timeout is reported, not raised."""
    config = {"max_concurrency": w.limit, "recursion_limit": w.n + 10}
    gc.collect()
    start = time.perf_counter()
    try:
        with anyio.fail_after(LANGGRAPH_TIMEOUT_S):
            state = await app.ainvoke({"n": 0}, config=config)
    except TimeoutError:
        seconds = time.perf_counter() - start
        return Outcome(seconds, False, f"timed out after {seconds:.0f} s")
    except Exception as exc:  # noqa: BLE001 - any LangGraph failure is a reported result
        seconds = time.perf_counter() - start
        return Outcome(seconds, False, f"{type(exc).__name__}: {str(exc)[:80]}")
    seconds = time.perf_counter() - start
    ran = state.get("n") if isinstance(state, dict) else None
    ok = ran == w.n
    return Outcome(seconds, ok, "" if ok else f"state n={ran}, expected {w.n}")


def langgraph_available() -> str | None:
    """LangGraph's version, or None when the ``bench`` extra is not installed."""
    try:
        import langgraph.graph  # noqa: F401
    except ImportError:
        return None
    return version("langgraph")


# -- output ----------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else "-"


def header(args: argparse.Namespace) -> str:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return "\n".join(
        [
            "thinktank scheduler benchmark",
            f"machine   {cpu_model()}; {os.cpu_count()} cores ({affinity} usable); "
            f"{platform.system()} {platform.release()}",
            f"python    {platform.python_implementation()} {platform.python_version()}",
            f"versions  thinktank {thinktank.__version__}, anyio {version('anyio')}, "
            f"langgraph {version('langgraph')}, langchain-core {version('langchain-core')}, "
            f"pydantic {version('pydantic')}, sqlalchemy {version('sqlalchemy')}, "
            f"aiosqlite {version('aiosqlite')}",
            f"loadavg   {load} (at start)",
            f"seed      {args.seed}    mode: {'quick' if args.quick else 'full'}",
        ]
    )


# -- sections --------------------------------------------------------------------------


def makespan_workloads(seed: int, quick: bool) -> list[wl.Workload]:
    """The five workloads of (a)/(b), each drawn from its own seeded stream."""
    small_ms = 20.0 if quick else 50.0
    n_indep, n_random = (300, 600) if quick else (1000, 10_000)
    return [
        wl.layered_random(_rng(seed, 1), 6, 8, limit=4, median_ms=small_ms, sigma=0.9),
        wl.fan_out(_rng(seed, 2), 50, limit=4, median_ms=small_ms, sigma=0.9),
        wl.chain(_rng(seed, 3), 20, limit=4, median_ms=small_ms, sigma=0.9),
        wl.independent(
            _rng(seed, 4), n_indep, limit=32, median_ms=20.0 if quick else 40.0, sigma=0.9
        ),
        wl.random_dag(
            _rng(seed, 5), n_random, limit=64, median_ms=20.0 if quick else 30.0, sigma=0.9
        ),
    ]


def _rng(seed: int, stream: int) -> random.Random:
    return random.Random(seed * 1_000 + stream)


@dataclass
class MakespanRow:
    w: wl.Workload
    lb: float
    greedy: float
    layered: float
    gens: int
    parse_s: float
    tt: Outcome | None = None
    anyio: Outcome | None = None
    lg: Outcome | None = None
    lg_build: float | None = None


def _progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


async def section_ab(args: argparse.Namespace, do_a: bool, do_b: bool) -> list[str]:
    lg_version = langgraph_available() if do_b else None
    rows: list[MakespanRow] = []
    for w in makespan_workloads(args.seed, args.quick):
        row = MakespanRow(
            w,
            wl.lower_bound(w),
            wl.greedy_makespan(w),
            wl.layered_makespan(w),
            len(wl.generations(w)),
            0.0,
        )
        spec, row.parse_s = make_spec(w)
        _progress(f"(a) {w.name}: thinktank")
        row.tt = await run_thinktank(spec, w, sleep=True)
        if do_a:
            _progress(f"(a) {w.name}: plain anyio")
            row.anyio = await run_anyio(w, sleep=True)
        if do_b and lg_version is not None:
            _progress(f"(b) {w.name}: LangGraph build + compile")
            app, row.lg_build = build_langgraph(w, sleep=True)
            _progress(f"(b) {w.name}: LangGraph ainvoke")
            row.lg = await run_langgraph(app, w)
            del app
        rows.append(row)

    out: list[str] = []
    if do_a:
        body = []
        for r in rows:
            assert r.tt is not None and r.anyio is not None
            vs_greedy = r.tt.seconds / r.greedy
            met = abs(vs_greedy - 1) <= TARGET_GREEDY and r.tt.ok
            body.append(
                [
                    r.w.name,
                    str(r.w.n),
                    str(r.w.limit),
                    f"{r.w.median_ms:g}/{r.w.sigma:g}",
                    str(r.gens),
                    fmt_s(r.lb),
                    fmt_s(r.greedy),
                    fmt_s(r.layered),
                    fmt_s(r.anyio.seconds),
                    fmt_s(r.tt.seconds),
                    f"{r.tt.setup * 1000:.0f}/{r.tt.teardown * 1000:.0f}",
                    f"{r.tt.gc_seconds * 1000:.0f}",
                    fmt_ratio(r.tt.seconds / r.lb),
                    fmt_ratio(vs_greedy),
                    fmt_ratio(r.tt.span / r.greedy),
                    fmt_ratio(r.anyio.seconds / r.greedy),
                    fmt_ratio(r.layered / r.lb),
                    ("ok" if met else "MISS") + ("" if r.tt.ok else f" ({r.tt.note})"),
                ]
            )
        out.append(
            table(
                "(a) makespan, sleeping models, store=None (seconds; ratios are wall / reference)",
                [
                    "workload",
                    "steps",
                    "C",
                    "med ms/sig",
                    "gens",
                    "LB",
                    "greedy",
                    "layered",
                    "anyio",
                    "tt",
                    "tt in/out ms",
                    "tt gc ms",
                    "tt/LB",
                    "tt/greedy",
                    "calls/greedy",
                    "anyio/greedy",
                    "layered/LB",
                    "target",
                ],
                body,
            )
        )
        out.append(
            "  tt in/out ms: from calling run() to the first model call / from the last "
            "call's end to run() returning; tt gc ms: in garbage collection.\n"
            "  calls/greedy: first call start to last call end, over greedy (the schedule "
            "alone, without setup and teardown).\n"
            "  target: |tt/greedy - 1| <= 2 % (whole run() wall).  spec parse "
            "(parse_session, not timed in tt): "
            + ", ".join(f"{r.w.n} steps {r.parse_s * 1000:.0f} ms" for r in rows)
        )
    if do_b:
        if lg_version is None:
            out.append("(b) LangGraph: not installed - pip install -e '.[bench]'")
        else:
            body = []
            for r in rows:
                assert r.tt is not None and r.lg is not None and r.lg_build is not None
                lg_s = r.lg.seconds
                body.append(
                    [
                        r.w.name,
                        str(r.w.n),
                        str(r.w.limit),
                        fmt_s(r.lb),
                        fmt_s(r.layered),
                        fmt_s(r.tt.seconds),
                        fmt_ratio(r.tt.seconds / r.lb),
                        fmt_s(lg_s),
                        fmt_ratio(lg_s / r.lb) if r.lg.ok else "-",
                        fmt_ratio(lg_s / r.tt.seconds) if r.lg.ok else "-",
                        fmt_ratio(lg_s / r.layered) if r.lg.ok else "-",
                        fmt_s(r.lg_build),
                        "ok" if r.lg.ok else r.lg.note,
                    ]
                )
            out.append(
                table(
                    f"(b) the same DAGs and latencies on LangGraph {lg_version} "
                    "(seconds; LG = ainvoke wall)",
                    [
                        "workload",
                        "steps",
                        "C",
                        "LB",
                        "layered",
                        "tt",
                        "tt/LB",
                        "LG",
                        "LG/LB",
                        "LG/tt",
                        "LG/layered",
                        "LG build s",
                        "LG run",
                    ],
                    body,
                )
            )
    return out


def overhead_workloads(seed: int, quick: bool) -> list[wl.Workload]:
    """Zero-latency DAGs for (c): the random shape and independent steps, C = 64."""
    out: list[wl.Workload] = []
    for n in (1000,) if quick else (1000, 10_000):
        out.append(wl.random_dag(_rng(seed, 10 + n), n, limit=OVERHEAD_LIMIT, median_ms=1, sigma=0))
        out.append(
            wl.independent(_rng(seed, 20 + n), n, limit=OVERHEAD_LIMIT, median_ms=1, sigma=0)
        )
    return [w.with_zero_latency() for w in out]


@dataclass
class OverheadRow:
    w: wl.Workload
    anyio: list[float] = field(default_factory=list)
    tt: list[Outcome] = field(default_factory=list)
    tt_store: list[Outcome] = field(default_factory=list)
    lg: list[float] = field(default_factory=list)
    lg_build: float | None = None
    notes: list[str] = field(default_factory=list)


def _median_run(runs: list[Outcome]) -> Outcome:
    return sorted(runs, key=lambda o: o.seconds)[len(runs) // 2]


async def _fixed_cost(tmp_dir: Path, repeat: int) -> tuple[float, float]:
    """Median wall of a 1-step session: without a store, and with a fresh SQLite file."""
    w = wl.independent(_rng(0, 0), 1, limit=OVERHEAD_LIMIT, median_ms=1, sigma=0)
    w = w.with_zero_latency()
    spec, _ = make_spec(w)
    await run_thinktank(spec, w, sleep=False)  # warm-up: imports, caches
    bare, stored = [], []
    for rep in range(repeat):
        bare.append((await run_thinktank(spec, w, sleep=False)).seconds)
        store_dir = tmp_dir / f"fixed-{rep}"
        store_dir.mkdir()
        stored.append((await run_thinktank(spec, w, sleep=False, store_dir=store_dir)).seconds)
    return statistics.median(bare), statistics.median(stored)


ENGINES = ("anyio", "tt", "tt+sqlite", "langgraph")


async def overhead_child(args: argparse.Namespace) -> None:
    """One engine's runs of one (c) workload, in this fresh process: print them as JSON.

    Each engine gets a process of its own, so no engine runs on a heap another one
    left behind (measured: a LangGraph run before it added ~2.5 us a step to
    thinktank's next one, and the anyio loop's 10,000 tasks add their own).
    """
    engine, index = args.overhead_child, args.workload
    w = overhead_workloads(args.seed, args.quick)[index]
    runs: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="thinktank-bench-") as tmp:
        tmp_dir = Path(tmp)
        if engine == "anyio":
            await run_anyio(w, sleep=False)  # warm-up
            runs = [dataclasses.asdict(await run_anyio(w, sleep=False)) for _ in range(args.repeat)]
        elif engine in ("tt", "tt+sqlite"):
            spec, _ = make_spec(w)
            for rep in range(args.repeat + 1):  # the first is the warm-up
                store_dir = None
                if engine == "tt+sqlite":
                    store_dir = tmp_dir / f"run-{rep}"
                    store_dir.mkdir()
                o = await run_thinktank(spec, w, sleep=False, store_dir=store_dir)
                if rep:
                    runs.append(dataclasses.asdict(o))
        else:
            app, extra["lg_build"] = build_langgraph(w, sleep=False)
            await run_langgraph(app, w)  # warm-up
            runs = [dataclasses.asdict(await run_langgraph(app, w)) for _ in range(args.repeat)]
    print(json.dumps({"runs": runs, **extra}))


def _child_runs(args: argparse.Namespace, engine: str, index: int) -> dict[str, Any]:
    """Run :func:`overhead_child` in a fresh interpreter and read what it printed."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--overhead-child",
        engine,
        "--workload",
        str(index),
        "--seed",
        str(args.seed),
        "--repeat",
        str(args.repeat),
    ]
    if args.quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"(c) {engine} child failed: {done.stderr.strip()[-2000:]}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


async def section_c(args: argparse.Namespace) -> list[str]:
    lg_version = langgraph_available()
    rows: list[OverheadRow] = []
    with tempfile.TemporaryDirectory(prefix="thinktank-bench-") as tmp:
        _progress("(c) fixed cost: 1-step sessions")
        fixed_bare, fixed_store = await _fixed_cost(Path(tmp), args.repeat)
    for index, w in enumerate(overhead_workloads(args.seed, args.quick)):
        row = OverheadRow(w)
        for engine in ENGINES:
            if engine == "langgraph" and lg_version is None:
                continue
            _progress(f"(c) {w.name}: {engine} (a fresh process)")
            data = _child_runs(args, engine, index)
            outcomes = [Outcome(**o) for o in data["runs"]]
            for o in outcomes:
                if not o.ok:
                    row.notes.append(f"{engine}: {o.note}")
            if engine == "anyio":
                row.anyio = [o.seconds for o in outcomes]
            elif engine == "tt":
                row.tt = outcomes
            elif engine == "tt+sqlite":
                row.tt_store = outcomes
            else:
                row.lg = [o.seconds for o in outcomes if o.ok]
                row.lg_build = data.get("lg_build")
        rows.append(row)

    def us(samples: list[float], n: int) -> float:
        return statistics.median(samples) / n * 1e6 if samples else math.nan

    body = []
    for r in rows:
        n = r.w.n
        a = us(r.anyio, n)
        t = us([o.seconds for o in r.tt], n)
        ts = us([o.seconds for o in r.tt_store], n)
        g = us(r.lg, n)
        verdict = [
            "ok" if t <= TARGET_US_NO_STORE else "MISS",
            "ok" if ts <= TARGET_US_STORE else "MISS",
        ]
        body.append(
            [
                r.w.name,
                str(n),
                f"{a:.1f}",
                f"{t:.1f}",
                fmt_ratio(t / a),
                f"{ts:.1f}",
                fmt_ratio(ts / a),
                f"{g:.1f}" if r.lg else "-",
                fmt_ratio(g / t) if r.lg else "-",
                f"{r.lg_build:.2f}" if r.lg_build is not None else "-",
                f"{verdict[0]} / {verdict[1]}",
            ]
        )
    title = (
        f"(c) overhead per step, zero-latency models, C={OVERHEAD_LIMIT} "
        f"(us/step = median wall of {args.repeat} runs / steps)"
    )
    out = [
        table(
            title,
            [
                "DAG",
                "steps",
                "anyio",
                "tt",
                "tt/anyio",
                "tt+sqlite",
                "sqlite/anyio",
                "LangGraph",
                "LG/tt",
                "LG build s",
                "target <=30 / <=150",
            ],
            body,
        ),
        "  tt: thinktank.run(store=None); tt+sqlite: a fresh SQLite file per run (open, "
        "schema, every event written, close);\n  anyio: hand-written task group + "
        "semaphore; LangGraph: ainvoke of a compiled graph (build+compile shown apart).",
    ]
    phases = []
    for r in rows:
        for label, runs in (("no store", r.tt), ("sqlite", r.tt_store)):
            m = _median_run(runs)
            n = r.w.n
            phases.append(
                [
                    r.w.name,
                    label,
                    f"{m.seconds / n * 1e6:.1f}",
                    f"{m.setup * 1000:.0f}",
                    f"{m.setup / n * 1e6:.1f}",
                    f"{m.span / n * 1e6:.1f}",
                    f"{m.teardown * 1000:.0f}",
                    f"{m.teardown / n * 1e6:.1f}",
                    f"{m.gc_seconds / n * 1e6:.1f}",
                    str(m.gc_full),
                ]
            )
    out.append(
        table(
            "(c) where thinktank's time goes (the median run): before the first model call, "
            "first call to last, after the last",
            [
                "DAG",
                "store",
                "us/step",
                "setup ms",
                "setup us/step",
                "calls us/step",
                "teardown ms",
                "teardown us/step",
                "gc us/step",
                "full gcs",
            ],
            phases,
        )
    )
    out.append(
        f"  fixed cost of a run (1-step session, median): {fixed_bare * 1000:.1f} ms without "
        f"a store, {fixed_store * 1000:.1f} ms with a fresh SQLite file."
    )
    for r in rows:
        for note in r.notes:
            out.append(f"  note {r.w.name}: {note}")
    out.append(
        "  raw seconds per run: "
        + "; ".join(
            f"{r.w.name}: anyio {_list(r.anyio)} tt {_list([o.seconds for o in r.tt])} "
            f"sqlite {_list([o.seconds for o in r.tt_store])} LG {_list(r.lg)}"
            for r in rows
        )
    )
    return out


def _list(xs: list[float]) -> str:
    return "[" + " ".join(f"{x:.3f}" for x in xs) + "]"


async def section_profile(args: argparse.Namespace) -> list[str]:
    """Where thinktank's time per step goes, on the zero-latency random DAG of (c)."""
    n = 1000 if args.quick else 10_000
    w = wl.random_dag(_rng(args.seed, 10 + n), n, limit=OVERHEAD_LIMIT, median_ms=1, sigma=0)
    w = w.with_zero_latency()
    spec, _ = make_spec(w)
    out: list[str] = []
    await run_thinktank(spec, w, sleep=False)  # warm-up
    with tempfile.TemporaryDirectory(prefix="thinktank-prof-") as tmp:
        for label, with_store in (("store=None", False), ("SQLite store", True)):
            walls: dict[str, list[float]] = {"gc on": [], "gc off": []}
            for rep in range(args.repeat):
                for mode in walls:
                    store_dir = Path(tmp) / f"{label[:3]}-{mode[-2:]}-{rep}"
                    store_dir.mkdir()
                    gc.collect()
                    if mode == "gc off":
                        gc.disable()
                    try:
                        o = await run_thinktank(
                            spec,
                            w,
                            sleep=False,
                            store_dir=store_dir if with_store else None,
                            collect=False,
                        )
                    finally:
                        gc.enable()
                    walls[mode].append(o.seconds)
            plain = statistics.median(walls["gc on"]) / n * 1e6
            no_gc = statistics.median(walls["gc off"]) / n * 1e6
            store_dir = Path(tmp) / f"{label[:3]}-gc"
            store_dir.mkdir()
            gc.collect()
            with GcMeter() as meter:
                metered = await run_thinktank(
                    spec, w, sleep=False, store_dir=store_dir if with_store else None, collect=False
                )
            store_dir = Path(tmp) / f"{label[:3]}-profiled"
            store_dir.mkdir()
            # Profiled with the collector off: its pauses would land in whatever function
            # happens to allocate, blurring the breakdown. GC is reported on its own above.
            gc.collect()
            gc.disable()
            prof = cProfile.Profile()
            try:
                prof.enable()
                o = await run_thinktank(
                    spec, w, sleep=False, store_dir=store_dir if with_store else None, collect=False
                )
                prof.disable()
            finally:
                gc.enable()
            out.append(
                f"profile: {w.name}, C={w.limit}, {label}: unprofiled {plain:.1f} us/step "
                f"(median of {args.repeat}; {no_gc:.1f} with the garbage collector off), "
                f"{o.seconds / n * 1e6:.1f} us/step under cProfile (collector off)\n"
                f"  garbage collection in one more run ({metered.seconds / n * 1e6:.1f} us/step): "
                f"{meter.summary(n)}"
            )
            out.extend(_profile_tables(prof, n, no_gc))
    return out


def _profile_tables(prof: cProfile.Profile, n: int, wall_us: float) -> list[str]:
    """By component (self time, C builtins charged to their callers) and top functions."""
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values()) or 1.0
    by_comp: dict[str, float] = {}
    for (file, _line, _func), (_cc, _nc, tt, _ct, callers) in stats.items():
        if file != "~":
            by_comp[component(file)] = by_comp.get(component(file), 0.0) + tt
            continue
        # A C builtin: split its self time among its callers' components.
        share = sum(c[2] for c in callers.values()) or 0.0
        if not callers or share <= 0:
            by_comp["C builtins"] = by_comp.get("C builtins", 0.0) + tt
            continue
        for (cfile, _cl, _cf), c in callers.items():
            comp = component(cfile) if cfile != "~" else "C builtins"
            by_comp[comp] = by_comp.get(comp, 0.0) + tt * c[2] / share

    def est(seconds: float) -> str:
        return f"{seconds / total * wall_us:.2f}"

    comp_rows = [
        [name, f"{100 * t / total:.1f}", f"{t / n * 1e6:.2f}", est(t)]
        for name, t in sorted(by_comp.items(), key=lambda kv: kv[1], reverse=True)[:18]
    ]
    entries = [
        (short(file, line, func), nc, tt, ct, file)
        for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.items()
    ]
    self_rows = [
        [name[-80:], str(nc), f"{100 * tt / total:.1f}", f"{tt / n * 1e6:.2f}", est(tt)]
        for name, nc, tt, _ct, _f in sorted(entries, key=lambda e: e[2], reverse=True)[:25]
    ]
    ours = [e for e in entries if component(e[4]).startswith("thinktank")]
    cum_rows = [
        [name[-80:], str(nc), f"{100 * ct / total:.1f}", f"{ct / n * 1e6:.2f}", est(ct)]
        for name, nc, _tt, ct, _f in sorted(ours, key=lambda e: e[3], reverse=True)[:25]
    ]
    note = (
        "  profiled us/step: under cProfile (inflated); est. us/step: the share of profiled "
        "time x the unprofiled us/step with the collector off.\n"
        "  Main thread only: SQLite itself runs in aiosqlite's worker thread (waiting for it "
        "shows as epoll/select time)."
    )
    return [
        table(
            "by component (self time)",
            ["component", "% time", "profiled us/step", "est. us/step"],
            comp_rows,
        ),
        table(
            "top functions by self time",
            ["function", "calls", "% time", "profiled us/step", "est. us/step"],
            self_rows,
        ),
        table(
            "thinktank functions by cumulative time (coroutines: calls = resumptions)",
            ["function", "calls", "% time", "profiled us/step", "est. us/step"],
            cum_rows,
        ),
        note,
    ]


async def main(args: argparse.Namespace) -> None:
    if args.overhead_child:
        await overhead_child(args)
        return
    wall = time.perf_counter()
    print(header(args), flush=True)
    if args.profile:
        for block in await section_profile(args):
            print("\n" + block, flush=True)
        return
    sections = {args.only} if args.only else {"a", "b", "c"}
    if sections & {"a", "b"}:
        for block in await section_ab(args, "a" in sections, "b" in sections):
            print("\n" + block, flush=True)
    if "c" in sections:
        for block in await section_c(args):
            print("\n" + block, flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"\nbenchmark wall time: {time.perf_counter() - wall:.1f} s; loadavg {load} (at end)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a smoke run")
    parser.add_argument("--seed", type=int, default=20240601, help="workload seed")
    parser.add_argument("--only", choices=["a", "b", "c"], help="run one section")
    parser.add_argument("--repeat", type=int, default=3, help="runs per overhead figure")
    parser.add_argument("--profile", action="store_true", help="cProfile zero-latency runs instead")
    parser.add_argument("--overhead-child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--workload", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
