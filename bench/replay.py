"""Replay time of a large stored session (part of the store benchmark; see bench/store.py).

Runs an N-step session (a random DAG of zero-latency simulated steps) into a fresh SQLite
file, then times ``thinktank.replay`` of it from the recording: loading the session from
the database, re-executing it through the scheduler with recorded answers, and comparing
every step. Prints the figures; asserts nothing about time. Target: under 2 s for
10,000 steps on SQLite.

    python bench/replay.py [--steps 10000] [--repeat 3] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds http.py, which would shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

import anyio  # noqa: E402

import thinktank  # noqa: E402
from thinktank.session.loading import parse_session  # noqa: E402


def make_spec(steps: int, seed: int) -> thinktank.SessionSpec:
    rng = random.Random(seed)
    items = []
    for i in range(steps):
        deps = (
            sorted({rng.randrange(max(0, i - 50), i) for _ in range(rng.randint(0, 3))})
            if i
            else []
        )
        items.append(
            {
                "id": f"s{i}",
                "prompt": f"step {i}",
                "model": "m",
                "depends_on": [f"s{d}" for d in deps],
            }
        )
    return parse_session(
        {
            "name": f"replay-{steps}",
            "models": {"m": {"provider": "simulated", "default_reply": "answer"}},
            "parallel_execution": {"max_concurrent_steps": 64},
            "steps": items,
        }
    )


async def once(steps: int, seed: int) -> tuple[float, float, bool]:
    spec = make_spec(steps, seed)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        t0 = time.perf_counter()
        result = await thinktank.run(spec, store=db)
        run_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = await thinktank.replay(result.session_id, store=db)
        replay_s = time.perf_counter() - t0
    return run_s, replay_s, report.matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print("thinktank replay benchmark")
    print(f"machine   {platform.processor() or platform.machine()}; {os.cpu_count()} cores")
    print(f"python    {platform.python_implementation()} {platform.python_version()}")
    print(f"seed      {args.seed}   steps {args.steps}   repeat {args.repeat}")
    runs, replays, ok = [], [], True
    for _ in range(args.repeat):
        run_s, replay_s, matches = anyio.run(once, args.steps, args.seed)
        runs.append(run_s)
        replays.append(replay_s)
        ok = ok and matches
    print(
        f"{'steps':>8} {'run+record s':>13} {'replay s':>9} {'replay us/step':>15} "
        f"{'matches':>8} {'target <2 s':>12}"
    )
    med = statistics.median(replays)
    print(
        f"{args.steps:>8} {statistics.median(runs):>13.3f} {med:>9.3f} "
        f"{med / args.steps * 1e6:>15.1f} {ok!s:>8} {'ok' if med < 2 else 'MISS':>12}"
    )
    print(f"  raw replay seconds: {[round(r, 3) for r in replays]}")


if __name__ == "__main__":
    main()
