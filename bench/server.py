"""What the HTTP server adds to a parallel call: ``POST /v1/chat/completions`` on a real
``thinktank serve`` process against ``execute_parallel`` called directly, side by side.

Both ask the same two-model panel of simulated models that answer after a fixed 50 ms
(the ``simulated`` provider, declared in a ``thinktank.toml`` both read), and both
store every call in a fresh SQLite file, so the difference is the server: HTTP over
loopback, JSON, FastAPI, authentication (``--no-auth`` here) and the response body.
Each level makes ``requests`` calls with at most ``clients`` in flight
(``bench/http.py``'s ``timed_run``); every latency is measured by the caller, from send
to the parsed answer, and percentiles are nearest-rank.

    python bench/server.py [--clients 1,100,1000] [--requests 300] [--latency-ms 50]
                           [--rate R] [--db sqlite|postgres] [--workers N]

Prints, per level, p50 and p99 of both paths, the server's added p50 and p99 (the
difference of the two percentiles) and each path's completed calls per second. The
issue's target is p50 added <= 3 ms and p99 <= 15 ms at 100 clients on 2 cores. Nothing
is asserted: run it on a quiet machine.

By default each client sends its next call as soon as it is answered (closed loop), so
from some number of clients both paths run at their ceiling and latency is queueing.
``--rate R`` starts calls at R a second instead (open loop, at most ``clients`` in
flight; latency counted from when each call was due): the added latency at a load both
paths sustain. ``--db postgres`` stores in a throwaway PostgreSQL cluster (durable
settings; ``tests/pg.py`` finds the binaries) instead of SQLite files, and
``--workers N`` runs the server with N processes (the direct path stays one process).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402
import httpx2 as httpx  # noqa: E402

from bench.http import Call, RunResult, paced_run, timed_run  # noqa: E402
from tests import pg  # noqa: E402
from tests.serverproc import serve  # noqa: E402
from thinktank.ask import execute_parallel  # noqa: E402
from thinktank.store import Store  # noqa: E402

PANEL = ["sim-a", "sim-b"]


def write_config(path: Path, latency_ms: float) -> Path:
    """A thinktank.toml with the two simulated models of the panel."""
    lines = []
    for name in PANEL:
        lines += [
            f"[models.{name}]",
            'provider = "simulated"',
            f'default_reply = "answer of {name}"',
            f'latency = {{ kind = "fixed", ms = {latency_ms} }}',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


async def run_calls(
    name: str, call: Call, requests: int, clients: int, rate: float | None
) -> RunResult:
    """Closed loop (:func:`timed_run`), or open loop at ``rate`` (:func:`paced_run`)."""
    if rate is None:
        return await timed_run(name, call, requests, clients)
    return await paced_run(name, call, requests, clients, rate)


async def direct(db: str, clients: int, requests: int, rate: float | None) -> RunResult:
    async with await Store.open(db) as store:

        async def call(index: int) -> None:
            result = await execute_parallel(f"question {index}", {"models": PANEL}, store=store)
            assert result.synthesis.content, result

        return await run_calls("direct", call, requests, clients, rate)


async def served(url: str, clients: int, requests: int, rate: float | None) -> RunResult:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def call(index: int) -> None:
            body = {
                "model": PANEL[0],
                "messages": [{"role": "user", "content": f"question {index}"}],
                "parallel": {"models": PANEL},
            }
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"]

        for warm in range(4):  # the connection and the server's imports (every worker's)
            await call(-1 - warm)
        return await run_calls("server", call, requests, clients, rate)


@contextmanager
def databases(kind: str, tmp: Path) -> Iterator[Iterator[str]]:
    """Fresh databases, one per ``next()``: SQLite files in ``tmp``, or databases of a
    throwaway PostgreSQL cluster (stopped at the end)."""
    if kind == "sqlite":
        yield (str(tmp / f"bench-{i}.db") for i in itertools.count())
        return
    cluster = pg.start_cluster(durable=True)
    try:
        yield (pg.create_database(cluster.url) for _ in itertools.count())
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,100,1000")
    parser.add_argument("--requests", type=int, default=300, help="calls per level (min 10x1)")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rate", type=float, help="start calls at this rate (open loop)")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    loop = f"open loop at {args.rate:g} calls/s" if args.rate else "closed loop"
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, panel of 2 simulated")
    print(
        f"models at {args.latency_ms:g} ms, {args.db}, {args.requests} calls per level,"
        f" {loop}, server with {args.workers} worker(s)"
    )
    print(
        f"{'clients':>7}  {'direct p50/p99 ms':>18}  {'server p50/p99 ms':>18}"
        f"  {'added p50/p99 ms':>17}  {'direct/server calls/s':>22}"
    )
    workers = ["--workers", str(args.workers)] if args.workers > 1 else []
    with tempfile.TemporaryDirectory() as tmp, databases(args.db, Path(tmp)) as fresh:
        config = write_config(Path(tmp) / "thinktank.toml", args.latency_ms)
        os.environ["THINKTANK_CONFIG"] = str(config)
        env = {"THINKTANK_CONFIG": str(config)}
        for clients in levels:
            requests = max(args.requests, clients)
            base = anyio.run(direct, next(fresh), clients, requests, args.rate, backend="asyncio")
            with serve(next(fresh), "--no-auth", *workers, env=env, cwd=tmp) as url:
                over = anyio.run(served, url, clients, requests, args.rate, backend="asyncio")
            d50, d99 = base.pct(0.5), base.pct(0.99)
            s50, s99 = over.pct(0.5), over.pct(0.99)
            print(
                f"{clients:>7}  {d50:>8.1f} / {d99:<7.1f}  {s50:>8.1f} / {s99:<7.1f}"
                f"  {s50 - d50:>7.1f} / {s99 - d99:<7.1f}"
                f"  {base.calls_per_s:>9.0f} / {over.calls_per_s:<9.0f}"
            )


if __name__ == "__main__":
    main()
