"""Native memory of local models over many ``execute_parallel`` calls in one process.

Run from the repo root: ``python bench/local_memory.py`` (3,000 calls), or
``--calls N --every K --models local,local-s1 --db PATH|none``. Needs the ``local``
extra; Linux only (it reads ``/proc/self/status``).

Each call asks the models (default ``local`` and ``local-s1``, the packaged Gemma 3
270M) a different short question (``What is i + j?``, 8 tokens at most) as
:func:`thinktank.execute_parallel` does: its one-step session, recorded in a fresh
SQLite file unless ``--db none``, but with a 10-minute step deadline instead of 30 s
(a machine whose cores are all busy can exceed 30 s for one call). The resident set
(``VmRSS``) is printed after the first call (the model loaded) and every ``--every``
calls, with the growth since the first call. A flat line means memory is bounded.

What it showed: each call of llama-cpp-python's ``create_completion`` left its sampler
(a ~3 MB token array of the 262k-token vocabulary) in a reference cycle that only a
full garbage collection frees, so memory grew ~3 MB per local call; the provider now
builds and frees its own sampler per call.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path: put the repo root there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402

from thinktank.ask import session_for, to_parallel_result  # noqa: E402
from thinktank.engine.stream import run  # noqa: E402
from thinktank.session.spec import ParallelExecutionConfig  # noqa: E402

STEP_TIMEOUT_MS = 600_000


def rss_mb() -> float:
    """The resident set size of this process in MB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


async def main(calls: int, every: int, models: list[str], db: str | None) -> None:
    config = ParallelExecutionConfig(models=models, mode="all", max_tokens=8)
    spec = session_for(config)
    settings = spec.parallel_execution.model_copy(update={"timeout_per_step_ms": STEP_TIMEOUT_MS})
    spec = spec.model_copy(update={"parallel_execution": settings})
    start = time.perf_counter()
    base = 0.0
    print(f"{'calls':>6} {'rss_mb':>8} {'growth_mb':>10} {'s':>7}")
    for i in range(1, calls + 1):
        prompt = f"What is {i % 97} + {i // 97}?"
        session = await run(spec, inputs={"prompt": prompt}, store=db)
        result = to_parallel_result(session, config.mode)
        if result.error:
            raise SystemExit(f"call {i} failed: {result.error}")
        if i == 1:
            base = rss_mb()
        if i == 1 or i % every == 0 or i == calls:
            rss = rss_mb()
            print(f"{i:>6} {rss:>8.1f} {rss - base:>10.1f} {time.perf_counter() - start:>7.1f}")
            sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="execute_parallel calls")
    parser.add_argument("--every", type=int, default=250, help="print RSS every N calls")
    parser.add_argument("--models", default="local,local-s1", help="comma-separated names")
    parser.add_argument("--db", default=None, help="SQLite file, or 'none' (default: temp file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "bench.db")
        anyio.run(
            main, args.calls, args.every, args.models.split(","), None if db == "none" else db
        )
