"""Multi-model benchmark: what each mode adds to its ideal latency, and what quorum and
cascade save over ``all`` at (near) equal accuracy.

Run from the repo root: ``python bench/parallel.py`` (full, about 8 minutes),
``--quick`` (smoke run, about a minute), ``--seed N``, ``--trials N`` (trials per mode
and fleet in part 1, default 60), ``--profile`` (instead of the parts: overhead per run
with zero-latency models, hot and after an idle pause, and cProfile tables of where it
goes). The figures are printed, never asserted.

Models are ``thinktank.providers.simulated`` models (seeded; fleets and questions in
``bench/_parallel_data.py``). A simulated call's latency, failure and answer are a pure
function of (seed, model, prompt, attempt, retry), so the harness replays every call
without sleeping (``_parallel_data.predict``) and knows each trial's ideal in advance;
every call the stack runs is checked against that replay ("replay mism.", expect 0).

(1) Added latency over the ideal. Two fleets of five models (lognormal, medians 50, 80,
    110, 150, 200 ms; sigmas all 0.25 = ``tight``, or 0.2..1.0 = ``mixed``; accuracies
    0.65-0.9 over three shared decoy answers; 3 % of calls fail). Each trial is a new
    prompt. The ideal (virtual time, from the drawn latencies): all = the slowest
    response; race = the fastest success; quorum = the success that completes the quorum
    when the arrivals are replayed with the engine's agreement rule (a majority of 5 = 3
    agreeing, threshold 0.7); cascade = the sum of its rounds (2 cheapest, then one at a
    time, each as long as its slowest call) until two answers agree. Then each trial is
    run on four paths, one after the other (their order rotating):
      timer   a hand-written anyio task group sleeping the same latencies with
              ``anyio.sleep`` and stopping at the same call: what the event loop's
              timers alone add (asyncio wakes a sleeper up to ~1 ms late: epoll rounds
              its timeout up to whole milliseconds). Shown for reference only: the
              simulated models sleep precisely (``sleep_precisely``), as a real
              provider's socket wakes the loop with no rounding;
      floor   the same with ``sleep_precisely``, the simulated models' own sleep: the
              harness's floor;
      gather  bare ``thinktank.engine.parallel.gather`` with a minimal call (the client's
              ``complete`` into a ``CallResult``): the mode engine, no call layer;
      run     ``thinktank.run`` of a pre-validated one-step session (inline simulated
              models, ``store=None``): registry, scheduler, call layer, events, consensus
              and result, everything a session pays;
      ask     ``thinktank.execute_parallel(prompt, config, store=None, models=clients)``:
              as ``run`` plus building and validating the session on every call.
    added = wall time of the path - ideal, in ms: median / p90 over the trials. Target:
    median <= 2 ms for run and ask. run-floor / ask-floor: the median over the trials of
    (path - floor), thinktank's own share without the timers' lateness. run in/out: the
    median time from calling run() to the first call's start / from the deciding call's
    end (its CallFinished) to run() returning.
(2) Savings at equal agreement. 200 questions (gold answers are numbers; wrong answers
    come from three shared decoys, so wrong answers collide and can agree), five models
    from cheap/fast/weak to dear/slow/strong, consensus threshold 0.7, majority merge.
    Each mode answers every question through ``thinktank.run`` (``store=None``; 8
    sessions at a time). Per mode: mean latency (measured wall, and the ideal), mean
    calls started, mean cost (USD x 1e6: answered calls; a cancelled simulated call
    costs nothing, where a real provider would bill what it had already streamed),
    accuracy of the merged answer against gold, how often consensus was reached and
    how often the mode stopped early. Then quorum latency / all latency and cascade
    cost / all cost, each with both accuracies, the paired difference (questions right
    in one mode only) and its standard error: a ratio is a saving only when the
    accuracies are near-equal (within 2 points), and the output says which it is.

Timings are wall-clock on whatever else the machine is doing: the load average is
printed at the start and at the end.
"""

# ruff: noqa: E402 - sys.path is fixed below, before any other import.
from __future__ import annotations

import os
import sys

# ``python bench/parallel.py`` puts bench/ first on sys.path, where a sibling script's
# name (bench/http.py) would shadow the standard-library module of the same name for
# every later import (httpx -> http.client). Import from the repo root instead.
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH_DIR]
sys.path.insert(0, os.path.dirname(_BENCH_DIR))

import argparse
import cProfile
import gc
import math
import platform
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, get_args

import anyio

import thinktank
from bench import _parallel_data as pd
from bench._report import component, cpu_model, short, table, version
from thinktank.consensus import normalize_answer
from thinktank.engine.calls import CallResult
from thinktank.engine.parallel import Mode, gather, order_by_price
from thinktank.errors import ProviderError
from thinktank.events import CallFinished, CallStarted, Event
from thinktank.providers.base import ModelRequest
from thinktank.providers.simulated import SimulatedModel, sleep_precisely
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec

MODES: tuple[Mode, ...] = get_args(Mode)
PATHS = ("timer", "floor", "gather", "run", "ask")
THRESHOLD = 0.7
TARGET_MS = 2.0
QA_CONCURRENCY = 8
FAIR_POINTS = 2.0
IDLE_S = 0.1
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


# -- the paths of part 1 ---------------------------------------------------------------


def session_spec(fleet: pd.Fleet, mode: Mode, seed: int) -> SessionSpec:
    """A one-step session asking ``fleet`` in ``mode``, models declared inline."""
    data = {
        "name": f"bench-{fleet.name}-{mode}",
        "inputs": {"prompt": {"type": "string"}},
        "models": {m.name: m.config(seed) for m in fleet.models},
        "parallel_execution": {
            "max_concurrent_models": len(fleet.models),
            "consensus_threshold": THRESHOLD,
        },
        "steps": [
            {
                "id": pd.STEP_ID,
                "prompt": "{{ inputs.prompt }}",
                "models": fleet.names,
                "mode": mode,
                "cache": False,
            }
        ],
    }
    return parse_session(data)


def ask_config(fleet: pd.Fleet, mode: Mode) -> dict[str, Any]:
    """``execute_parallel``'s config for the same step (models listed cheapest first, so
    cascade's order is the same without the price table Python clients lack)."""
    return {
        "models": fleet.names,
        "mode": mode,
        "max_concurrent_models": len(fleet.models),
        "consensus_threshold": THRESHOLD,
        "cache": False,
    }


async def time_floor(
    mode: Mode,
    fleet: pd.Fleet,
    draws: Sequence[pd.Draw],
    ide: pd.Ideal,
    sleep: Callable[[float], Awaitable[None]] = sleep_precisely,
) -> float:
    """Wall seconds of plain anyio sleeping the same latencies, stopping at the same call."""
    start = time.perf_counter()
    if mode == "cascade":
        by_name = {d.model: d.latency_ms / 1000 for d in draws}
        ordered = order_by_price(fleet.names, fleet.prices)
        rounds = [ordered[:2]] + [[m] for m in ordered[2:]]
        for batch in rounds[: ide.rounds]:
            async with anyio.create_task_group() as tg:
                for m in batch:
                    tg.start_soon(sleep, by_name[m])
        return time.perf_counter() - start
    async with anyio.create_task_group() as tg:

        async def one(d: pd.Draw) -> None:
            await sleep(d.latency_ms / 1000)
            if d.model == ide.stop_after:
                tg.cancel_scope.cancel()

        for d in draws:
            tg.start_soon(one, d)
    return time.perf_counter() - start


async def time_gather(
    mode: Mode, fleet: pd.Fleet, clients: dict[str, SimulatedModel], prompt: str
) -> float:
    """Wall seconds of bare ``gather`` with a minimal call (no call layer, no events)."""
    request = ModelRequest(prompt=prompt, step_id=pd.STEP_ID, attempt=1)

    async def call(model: str) -> CallResult:
        try:
            r = await clients[model].complete(request)
        except ProviderError as exc:
            return CallResult(
                call_id=model, model=model, status="failed", started_at=_EPOCH, error=str(exc)
            )
        return CallResult(
            call_id=model,
            model=model,
            status="ok",
            started_at=_EPOCH,
            content=r.content,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            cost_usd=r.cost_usd,
        )

    start = time.perf_counter()
    await gather(fleet.names, call, mode=mode, threshold=THRESHOLD, prices=fleet.prices)
    return time.perf_counter() - start


@dataclass
class StackRun:
    """One timed run through the real stack."""

    seconds: float
    setup: float
    """From the call to the first CallStarted."""
    teardown: float
    """From the deciding call's CallFinished (the last one not cancelled) to the return."""
    finished: dict[str, CallFinished]
    """The calls that ended on their own (ok or failed), by model."""
    result: Any


async def _timed(go: Callable[[Callable[[Event], None]], Awaitable[Any]]) -> StackRun:
    marks: list[tuple[float, Event]] = []

    def on_event(event: Event) -> None:
        marks.append((time.perf_counter(), event))

    start = time.perf_counter()
    result = await go(on_event)
    end = time.perf_counter()
    first = next((t for t, e in marks if isinstance(e, CallStarted)), end)
    ended = [(t, e) for t, e in marks if isinstance(e, CallFinished) and e.status != "cancelled"]
    decided = ended[-1][0] if ended else end
    return StackRun(
        end - start,
        first - start,
        end - decided,
        {e.model: e for _, e in ended},
        result,
    )


async def time_run(spec: SessionSpec, prompt: str) -> StackRun:
    return await _timed(
        lambda on_event: thinktank.run(
            spec, inputs={"prompt": prompt}, store=None, on_event=on_event
        )
    )


async def time_ask(
    config: dict[str, Any], clients: dict[str, SimulatedModel], prompt: str
) -> StackRun:
    return await _timed(
        lambda on_event: thinktank.execute_parallel(
            prompt, config, store=None, models=clients, on_event=on_event
        )
    )


def check_replay(run: StackRun, draws: Sequence[pd.Draw], ide: pd.Ideal) -> tuple[int, int]:
    """(calls whose outcome differs from the replay, 1 if the run stopped elsewhere)."""
    by_name = {d.model: d for d in draws}
    bad = 0
    for model, event in run.finished.items():
        d = by_name[model]
        if (event.status == "ok") != d.ok or (d.ok and event.content != d.content):
            bad += 1
    return bad, int(set(run.finished) != ide.finished)


# -- part 1 ----------------------------------------------------------------------------


@dataclass
class Cell:
    """Part 1 figures of one (fleet, mode)."""

    ideal_ms: list[float] = field(default_factory=list)
    added: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    run_in: list[float] = field(default_factory=list)
    run_out: list[float] = field(default_factory=list)
    mismatches: int = 0
    stopped_elsewhere: int = 0
    checked: int = 0


def _p(xs: Sequence[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


async def part1(args: argparse.Namespace) -> list[str]:
    fleets = pd.latency_fleets()
    cells: dict[tuple[str, Mode], Cell] = {}
    for fleet in fleets:
        clients = {m.name: m.client(args.seed) for m in fleet.models}
        for mode in MODES:
            _progress(f"(1) {fleet.name} / {mode}: {args.trials} trials")
            spec = session_spec(fleet, mode, args.seed)
            config = ask_config(fleet, mode)
            cell = cells[(fleet.name, mode)] = Cell()
            qs = pd.questions(args.seed, args.trials + 2, tag=f"lat-{fleet.name}-{mode}")
            gc.collect()
            for i, q in enumerate(qs):
                draws = [pd.predict(clients[n], q.prompt) for n in fleet.names]
                ide = pd.ideal(mode, draws, prices=fleet.prices, threshold=THRESHOLD)
                timings: dict[str, float] = {}
                runs: dict[str, StackRun] = {}
                # Rotate the order of the paths so no path always runs first.
                for k in range(len(PATHS)):
                    path = PATHS[(i + k) % len(PATHS)]
                    if path == "timer":
                        timings[path] = await time_floor(mode, fleet, draws, ide, anyio.sleep)
                    elif path == "floor":
                        timings[path] = await time_floor(mode, fleet, draws, ide)
                    elif path == "gather":
                        timings[path] = await time_gather(mode, fleet, clients, q.prompt)
                    else:
                        r = (
                            await time_run(spec, q.prompt)
                            if path == "run"
                            else await time_ask(config, clients, q.prompt)
                        )
                        timings[path] = r.seconds
                        runs[path] = r
                if i < 2:
                    continue  # warm-up trials: imports, caches, first regex compiles
                cell.ideal_ms.append(ide.ms)
                for path, seconds in timings.items():
                    cell.added[path].append(seconds * 1000 - ide.ms)
                cell.run_in.append(runs["run"].setup * 1000)
                cell.run_out.append(runs["run"].teardown * 1000)
                for r in runs.values():
                    bad, elsewhere = check_replay(r, draws, ide)
                    cell.mismatches += bad
                    cell.stopped_elsewhere += elsewhere
                    cell.checked += len(r.finished)

    out: list[str] = []
    for fleet in fleets:
        body = []
        for mode in MODES:
            c = cells[(fleet.name, mode)]
            row = [mode, f"{statistics.median(c.ideal_ms):.1f}"]
            for path in PATHS:
                xs = c.added[path]
                row.append(f"{statistics.median(xs):.2f} / {_p(xs, 0.9):.2f}")
            for path in ("run", "ask"):
                paired = [a - f for a, f in zip(c.added[path], c.added["floor"], strict=True)]
                row.append(f"{statistics.median(paired):.2f}")
            row.append(f"{statistics.median(c.run_in):.2f} / {statistics.median(c.run_out):.2f}")
            verdict = [
                "ok" if statistics.median(c.added[p]) <= TARGET_MS else "MISS"
                for p in ("run", "ask")
            ]
            row.append(f"{c.mismatches}/{c.checked}, {c.stopped_elsewhere}")
            row.append(" / ".join(verdict))
            body.append(row)
        out.append(
            table(
                f"(1) added latency over the ideal, fleet '{fleet.name}' (median ms/sigma: "
                f"{fleet.describe()}), {args.trials} trials per mode; ms, median / p90",
                [
                    "mode",
                    "ideal med",
                    "timer",
                    "floor",
                    "gather",
                    "run",
                    "ask",
                    "run-floor",
                    "ask-floor",
                    "run in/out",
                    "replay mism., stopped elsewhere",
                    "target run/ask",
                ],
                body,
            )
        )
    out.append(
        "  ideal med: median of the trials' ideal latency. timer: plain anyio.sleep (the "
        "event loop's timer lateness, for reference);\n  floor: the same with the simulated "
        "models' precise sleep (the harness's floor);\n  gather: bare gather; "
        "run: thinktank.run of a one-step session; ask: execute_parallel. Target: median added <= "
        f"{TARGET_MS:g} ms (run and ask).\n  run-floor, ask-floor: median over the trials "
        "of (path added - floor added), thinktank's own share without the timer lateness."
        "\n  run in/out: median ms from calling run() to "
        "the first call starting / from the deciding call's end to run() returning.\n"
        "  replay mism.: answered calls (run + ask) whose outcome differs from the replay, "
        "over calls checked;\n  stopped elsewhere: runs whose set of finished calls differs "
        "from the ideal's (latency ties within the timer's resolution)."
    )
    return out


# -- part 2 ----------------------------------------------------------------------------


@dataclass
class QARow:
    """One question answered in one mode."""

    wall_ms: float
    ideal_ms: float
    correct: bool
    reached: bool
    early: bool
    calls: int
    cost: float | None


async def qa_mode(
    spec: SessionSpec,
    mode: Mode,
    fleet: pd.Fleet,
    qs: Sequence[pd.Question],
    draws: dict[str, list[pd.Draw]],
) -> list[QARow]:
    """Every question through ``thinktank.run`` in ``mode``, QA_CONCURRENCY at a time."""
    await thinktank.run(spec, inputs={"prompt": "warm-up [gold:1]"}, store=None)
    limiter = anyio.CapacityLimiter(QA_CONCURRENCY)
    got: list[QARow | None] = [None] * len(qs)

    async def one(i: int, q: pd.Question) -> None:
        async with limiter:
            start = time.perf_counter()
            result = await thinktank.run(spec, inputs={"prompt": q.prompt}, store=None)
            wall = time.perf_counter() - start
        step = result.steps[pd.STEP_ID]
        ide = pd.ideal(mode, draws[q.prompt], prices=fleet.prices, threshold=THRESHOLD)
        con = step.consensus
        got[i] = QARow(
            wall * 1000,
            ide.ms,
            step.output is not None and normalize_answer(step.output) == q.gold,
            bool(con and con.reached),
            bool(con and con.early_termination),
            len(step.calls),
            result.usage.total_cost_usd,
        )

    gc.collect()
    async with anyio.create_task_group() as tg:
        for i, q in enumerate(qs):
            tg.start_soon(one, i, q)
    return [r for r in got if r is not None]


async def part2(args: argparse.Namespace) -> list[str]:
    fleet = pd.question_fleet()
    qs = pd.questions(args.seed, 40 if args.quick else 200, tag="qa")
    clients = {m.name: m.client(args.seed) for m in fleet.models}
    draws = {q.prompt: [pd.predict(clients[n], q.prompt) for n in fleet.names] for q in qs}
    rows: dict[Mode, list[QARow]] = {}
    for mode in MODES:
        _progress(f"(2) {mode}: {len(qs)} questions, {QA_CONCURRENCY} at a time")
        rows[mode] = await qa_mode(session_spec(fleet, mode, args.seed), mode, fleet, qs, draws)

    n = len(qs)
    single = []
    for j, m in enumerate(fleet.models):
        right = sum(1 for q in qs if draws[q.prompt][j].ok and draws[q.prompt][j].content == q.gold)
        single.append(
            [
                m.name,
                f"{m.median_ms:g}/{m.sigma:g}",
                f"{m.input_per_mtok:g}/{m.output_per_mtok:g}",
                f"{m.accuracy:.2f}",
                f"{100 * right / n:.1f}",
            ]
        )
    out = [
        table(
            f"(2) the fleet: {n} questions, cheapest first (cascade's order)",
            ["model", "median ms/sigma", "USD/Mtok in/out", "accuracy cfg", "alone correct %"],
            single,
        )
    ]

    def mean(xs: Sequence[float]) -> float:
        return statistics.fmean(xs) if xs else math.nan

    def cost_of(rs: Sequence[QARow]) -> float:
        known = [r.cost for r in rs if r.cost is not None]
        return mean(known) if len(known) == len(rs) else math.nan

    body = []
    for mode in MODES:
        rs = rows[mode]
        body.append(
            [
                mode,
                f"{mean([r.wall_ms for r in rs]):.1f}",
                f"{mean([r.ideal_ms for r in rs]):.1f}",
                f"{mean([r.calls for r in rs]):.2f}",
                f"{cost_of(rs) * 1e6:.1f}",
                f"{100 * mean([r.correct for r in rs]):.1f}",
                f"{100 * mean([r.reached for r in rs]):.1f}",
                f"{100 * mean([r.early for r in rs]):.1f}",
            ]
        )
    out.append(
        table(
            f"(2) every mode on the same {n} questions (threshold {THRESHOLD:g}, majority "
            "merge, thinktank.run, store=None)",
            [
                "mode",
                "latency ms",
                "ideal ms",
                "calls",
                "cost uUSD",
                "accuracy %",
                "consensus %",
                "early stop %",
            ],
            body,
        )
    )
    out.append(
        "  latency: mean measured wall of run(); ideal: mean zero-overhead latency of the "
        "mode on the same draws;\n  calls: mean calls started (cancelled ones included); "
        "cost: mean USD x 1e6 per question (answered calls; a cancelled simulated call "
        "costs nothing);\n  accuracy: merged answer == gold; consensus: agreement >= "
        "threshold; early stop: the mode returned before every model answered."
    )
    base = rows["all"]
    ratios = [
        f"(2) savings over all, at the same threshold {THRESHOLD:g}, on the same {n} questions"
    ]
    for mode, what in (("quorum", "latency"), ("cascade", "cost")):
        rs = rows[mode]
        if what == "latency":
            ratio = mean([r.wall_ms for r in rs]) / mean([r.wall_ms for r in base])
            ideal_ratio = mean([r.ideal_ms for r in rs]) / mean([r.ideal_ms for r in base])
            figure = f"{ratio:.3f} (ideal {ideal_ratio:.3f})"
        else:
            figure = f"{cost_of(rs) / cost_of(base):.3f}"
        acc, acc_all = mean([r.correct for r in rs]), mean([r.correct for r in base])
        # Paired on the same questions: only the discordant ones move the gap.
        only_mode = sum(1 for a, b in zip(rs, base, strict=True) if a.correct and not b.correct)
        only_all = sum(1 for a, b in zip(rs, base, strict=True) if b.correct and not a.correct)
        diff = 100 * (acc - acc_all)
        disc = only_mode + only_all
        se = 100 * math.sqrt(max(0.0, disc - (only_mode - only_all) ** 2 / n)) / n
        verdict = (
            "near-equal accuracy: a fair comparison"
            if abs(diff) <= FAIR_POINTS
            else "accuracy differs: part of the saving is bought with accuracy"
        )
        ratios.append(
            f"  {mode} {what} / all {what} = {figure}\n"
            f"      accuracy {mode} {100 * acc:.1f} % vs all {100 * acc_all:.1f} %: diff "
            f"{diff:+.1f} points (paired SE {se:.1f}; right only in {mode}: {only_mode}, "
            f"only in all: {only_all}) -> {verdict}"
        )
    ratios.append(
        "  A ratio is a saving only at (near) equal accuracy: 'near-equal' = |diff| <= "
        f"{FAIR_POINTS:g} points; latency is measured wall (ideal: the same from the replay)."
    )
    out.append("\n".join(ratios))
    return out


# -- profile ---------------------------------------------------------------------------


async def section_profile(args: argparse.Namespace) -> list[str]:
    """Zero-latency runs: the whole wall is overhead. Per-run medians, then cProfile."""
    fleet = pd.zero_latency_fleet()
    clients = {m.name: m.client(args.seed) for m in fleet.models}
    n = 60 if args.quick else 300
    body = []
    profs: dict[Mode, cProfile.Profile] = {}
    run_ms: dict[Mode, float] = {}
    for mode in MODES:
        _progress(f"(profile) {mode}: {n} zero-latency runs per path")
        spec = session_spec(fleet, mode, args.seed)
        config = ask_config(fleet, mode)
        qs = pd.questions(args.seed, n + 10, tag=f"prof-{mode}")
        walls: dict[str, list[float]] = {"gather": [], "run": [], "ask": [], "idle": []}
        for i, q in enumerate(qs):
            g = await time_gather(mode, fleet, clients, q.prompt)
            r = await time_run(spec, q.prompt)
            a = await time_ask(config, clients, q.prompt)
            if i >= 10:
                walls["gather"].append(g * 1000)
                walls["run"].append(r.seconds * 1000)
                walls["ask"].append(a.seconds * 1000)
        for q in qs[: n // 3]:
            # As in part 1, where the loop idles while the models "think".
            await anyio.sleep(IDLE_S)
            walls["idle"].append((await time_run(spec, q.prompt)).seconds * 1000)
        run_ms[mode] = statistics.median(walls["run"])
        body.append(
            [mode] + [f"{statistics.median(v):.3f} / {_p(v, 0.9):.3f}" for v in walls.values()]
        )
        gc.collect()
        prof = cProfile.Profile()
        prof.enable()
        for q in qs:
            await time_run(spec, q.prompt)
        prof.disable()
        profs[mode] = prof
    out = [
        table(
            f"(profile) overhead per run with zero-latency models (ms, median / p90 of {n})",
            ["mode", "gather", "run", "ask", f"run after {IDLE_S * 1000:g} ms idle"],
            body,
        )
    ]
    for mode, prof in profs.items():
        out.extend(_profile_tables(prof, n + 10, mode, run_ms[mode]))
    out.append(
        "  us/run: profiled time / runs (cProfile inflates it); est. us/run: the share of "
        "profiled time x the unprofiled median run.\n  run after idle: each run after "
        f"{IDLE_S * 1000:g} ms of an idle event loop ({n // 3} runs), as between the "
        "sleeping calls of part 1 (cold caches, CPU clock down).\n  Coroutines: calls = "
        "resumptions; cumulative time counts only the time they ran, not their waits."
    )
    return out


def _profile_tables(prof: cProfile.Profile, runs: int, mode: str, run_ms: float) -> list[str]:
    """By component (self time), top functions by self time, thinktank's by cumulative."""
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values()) or 1.0
    by_comp: dict[str, float] = {}
    for (file, _line, _func), (_cc, _nc, tt, _ct, _callers) in stats.items():
        comp = component(file) if file != "~" else "C builtins"
        by_comp[comp] = by_comp.get(comp, 0.0) + tt
    entries = [
        (short(file, line, func), nc, tt, ct, file)
        for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.items()
    ]

    def us(t: float) -> list[str]:
        return [f"{t / runs * 1e6:.1f}", f"{t / total * run_ms * 1000:.1f}"]

    comp_rows = [
        [name, f"{100 * t / total:.1f}", *us(t)]
        for name, t in sorted(by_comp.items(), key=lambda kv: kv[1], reverse=True)[:12]
    ]
    self_rows = [
        [name[-80:], str(nc), f"{100 * tt / total:.1f}", *us(tt)]
        for name, nc, tt, _ct, _f in sorted(entries, key=lambda e: e[2], reverse=True)[:20]
    ]
    ours = [e for e in entries if component(e[4]).startswith("thinktank")]
    cum_rows = [
        [name[-80:], str(nc), f"{100 * ct / total:.1f}", *us(ct)]
        for name, nc, _tt, ct, _f in sorted(ours, key=lambda e: e[3], reverse=True)[:20]
    ]
    return [
        table(
            f"(profile) {mode}: by component (self time; profiled us per run)",
            ["component", "% time", "us/run", "est. us/run"],
            comp_rows,
        ),
        table(
            f"(profile) {mode}: top functions by self time",
            ["function", "calls", "% time", "us/run", "est. us/run"],
            self_rows,
        ),
        table(
            f"(profile) {mode}: thinktank functions by cumulative time",
            ["function", "calls", "% time", "us/run", "est. us/run"],
            cum_rows,
        ),
    ]


# -- output ----------------------------------------------------------------------------


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def header(args: argparse.Namespace) -> str:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return "\n".join(
        [
            "thinktank multi-model (parallel) benchmark",
            f"machine   {cpu_model()}; {os.cpu_count()} cores ({affinity} usable); "
            f"{platform.system()} {platform.release()}",
            f"python    {platform.python_implementation()} {platform.python_version()}",
            f"versions  thinktank {thinktank.__version__}, anyio {version('anyio')}, "
            f"pydantic {version('pydantic')}",
            f"loadavg   {_load()} (at start)",
            f"seed      {args.seed}    mode: {'quick' if args.quick else 'full'}    "
            f"trials: {args.trials} per mode and fleet",
        ]
    )


def _progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> None:
    wall = time.perf_counter()
    print(header(args), flush=True)
    parts = [section_profile] if args.profile else [part1, part2]
    for part in parts:
        for block in await part(args):
            print("\n" + block, flush=True)
    print(f"\nbenchmark wall time: {time.perf_counter() - wall:.1f} s; loadavg {_load()} (at end)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer trials and questions")
    parser.add_argument("--seed", type=int, default=20240601, help="simulation seed")
    parser.add_argument("--trials", type=int, help="part 1 trials per mode (60; quick 6)")
    parser.add_argument("--profile", action="store_true", help="zero-latency cProfile instead")
    args = parser.parse_args(argv)
    if args.trials is None:
        args.trials = 6 if args.quick else 60
    return args


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
