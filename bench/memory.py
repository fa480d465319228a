"""Memory of one long session: resident set per step, with and without the SQLite store.

Run from the repo root: ``python bench/memory.py`` (a 100,000-step session, twice: a
few minutes), ``--quick`` (10,000 steps), ``--steps N``, ``--every N`` (sample period
in steps), ``--shape wide|chain``, ``--latency-ms X``, ``--concurrency N``. Linux only
(it reads ``/proc/self/statm``).

The session is ``--steps`` one-model steps, either independent (``wide``: the
scheduler has every step ready at once and runs ``--concurrency`` of them) or a chain
(each step waits for the one before). Each step asks a simulated model (next to free:
$0.0001 a call) that answers a 400-character reply after ``--latency-ms`` (default
1 ms: a real model's latency would make 100,000 steps take hours, and more latency
changes what is in flight, not what is kept). The run is ``thinktank.run`` as a user calls it, once
with ``store=None`` and once recording into a fresh SQLite file.

The resident set (RSS) is sampled from the run's own events (``on_event``) every
``--every`` finished steps. The table prints it at a few points, and the growth per
step between the end of warm-up (the first tenth of the steps) and the last sample:
that slope is what a longer session costs per step. A flat line is ~0 bytes/step, but
``run()`` returns every step's result, and the engine keeps each finished step's
state until then, so some growth per step is the session's own data.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path: put the repo root there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402

import thinktank  # noqa: E402
from bench._report import cpu_model, version  # noqa: E402
from bench.store import InstantModel  # noqa: E402
from thinktank.events import Event, StepFinished  # noqa: E402
from thinktank.session.loading import parse_session  # noqa: E402
from thinktank.session.spec import SessionSpec  # noqa: E402

MODEL = "sim"
REPLY = ("The answer is 42, because " + "it follows from the premises. " * 14)[:400]
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The process's resident set now (``/proc/self/statm``)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def make_spec(steps: int, shape: str, concurrency: int) -> SessionSpec:
    """``steps`` one-model steps, independent (``wide``) or a chain."""
    step_list: list[dict[str, Any]] = []
    for i in range(steps):
        step: dict[str, Any] = {"id": f"s{i:06d}", "prompt": f"Question {i}?", "model": MODEL}
        if shape == "chain" and i:
            step["depends_on"] = [f"s{i - 1:06d}"]
        step_list.append(step)
    data = {
        "name": f"bench-memory-{shape}",
        "parallel_execution": {"max_concurrent_steps": concurrency},
        "steps": step_list,
    }
    return parse_session(data, known_models=[MODEL])


@dataclass
class Samples:
    """RSS every ``every`` finished steps."""

    every: int
    points: list[tuple[int, int]] = field(default_factory=list)
    finished: int = 0

    def on_event(self, event: Event) -> None:
        if isinstance(event, StepFinished):
            self.finished += 1
            if self.finished % self.every == 0:
                self.points.append((self.finished, rss_bytes()))


@dataclass
class Outcome:
    """One run: where its samples went, and what it took."""

    label: str
    samples: Samples
    before: int
    after_run: int
    seconds: float
    status: str


async def measure(
    label: str, spec: SessionSpec, store: str | None, latency_s: float, every: int
) -> Outcome:
    samples = Samples(every)
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    result = await thinktank.run(
        spec,
        store=store,
        models={MODEL: InstantModel(MODEL, REPLY, latency_s)},
        on_event=samples.on_event,
    )
    seconds = time.perf_counter() - start
    after = rss_bytes()
    return Outcome(label, samples, before, after, seconds, result.status)


def slope(points: list[tuple[int, int]], warm: int) -> float:
    """Bytes per step from the first sample at or after ``warm`` steps to the last."""
    later = [p for p in points if p[0] >= warm]
    if len(later) < 2:
        return float("nan")
    (s0, r0), (s1, r1) = later[0], later[-1]
    return (r1 - r0) / (s1 - s0)


def print_outcome(outcome: Outcome, steps: int) -> None:
    points = outcome.samples.points
    warm = steps // 10
    mb = 1024 * 1024
    print(
        f"{outcome.label}: {outcome.status} in {outcome.seconds:.1f} s "
        f"({outcome.seconds / steps * 1e6:.0f} us/step); RSS before the run "
        f"{outcome.before / mb:.1f} MB, after it {outcome.after_run / mb:.1f} MB"
    )
    shown = {p[0] for p in points[:: max(1, len(points) // 10)]} | {points[-1][0]}
    print(f"  {'steps':>9} {'RSS MB':>8} {'growth MB':>10}")
    base = next((r for s, r in points if s >= warm), points[0][1])
    for s, r in points:
        if s in shown:
            print(f"  {s:>9,} {r / mb:>8.1f} {(r - base) / mb:>10.1f}")
    print(f"  after warm-up ({warm:,} steps): {slope(points, warm):,.0f} bytes/step")
    print()


async def main_async(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print("thinktank memory benchmark")
    print(f"  machine   {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}")
    packages = ("thinktank", "anyio", "sqlalchemy", "aiosqlite")
    print(
        f"  python    {platform.python_version()}; "
        + ", ".join(f"{p} {version(p)}" for p in packages)
    )
    print(
        f"  session   {args.steps:,} one-model steps, {args.shape}, {args.concurrency} in "
        f"flight, model latency {args.latency_ms:g} ms; RSS sampled every {args.every:,} steps"
    )
    print(f"  load avg  {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    spec = make_spec(args.steps, args.shape, args.concurrency)
    latency_s = args.latency_ms / 1000
    print_outcome(await measure("no store", spec, None, latency_s, args.every), args.steps)
    with tempfile.TemporaryDirectory(prefix="tt-bench-memory-") as tmp:
        path = str(Path(tmp) / "memory.db")
        outcome = await measure("SQLite store", spec, path, latency_s, args.every)
        print_outcome(outcome, args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 steps")
    parser.add_argument("--steps", type=int, default=None, help="steps of the session")
    parser.add_argument("--every", type=int, default=None, help="sample RSS every N steps")
    parser.add_argument("--shape", choices=("wide", "chain"), default="wide")
    parser.add_argument("--latency-ms", type=float, default=1.0, help="model latency")
    parser.add_argument("--concurrency", type=int, default=64, help="steps in flight")
    args = parser.parse_args()
    args.steps = args.steps or (10_000 if args.quick else 100_000)
    args.every = args.every or max(1, args.steps // 50)
    anyio.run(main_async, args)


if __name__ == "__main__":
    main()
