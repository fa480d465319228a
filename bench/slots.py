"""Shared model limits benchmark: what a ``shared_limit`` costs per call at its cap.

Run from the repo root: ``python bench/slots.py`` (200 calls of 0.2 s, cap 10, from 2
stores standing for 2 processes), ``--calls N``, ``--latency S``, ``--cap N``,
``--stores N``, ``--rpm`` (also count every call in a requests-per-minute window large
enough never to wait), ``--pg-url URL`` (a server whose role may CREATE DATABASE;
without it a throwaway cluster is started with ``tests/pg.py``), ``--no-pg``.

Each call holds the limit for ``--latency`` seconds of sleep (the model's answer) and
all of them start at once, so the cap is the bottleneck: the ideal wall time is
``ceil(calls / cap) * latency``. Rows:

  in-process   one ``anyio.CapacityLimiter(cap)`` shared by every call (today's
               ``max_concurrency``: a cap in one process only);
  shared       a :class:`SharedLimiter` per store on one database (slot rows), each
               behind its own local limiter of ``cap``.

``most`` is the most calls in flight at once; ``+ms/call`` the wall time over the ideal
spread over the calls' waves, i.e. the latency each call adds at the cap (waiting for
a freed slot to be noticed, and the take and give transactions); ``tx/call`` the store
transactions per call (takes, polls that found every slot held, gives, counts);
``writes/call`` the rows they changed (a poll that finds no slot changes none).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thinktank.providers.shared_limit import SharedLimiter
from thinktank.store import Store


async def _burst(
    limiters: list[SharedLimiter] | list[anyio.CapacityLimiter], args: argparse.Namespace
) -> tuple[float, int]:
    """Run the calls, spread over ``limiters``: (wall seconds, most in flight)."""
    running = 0
    most = 0

    async def call(i: int) -> None:
        nonlocal running, most
        async with limiters[i % len(limiters)]:
            running += 1
            most = max(most, running)
            await anyio.sleep(args.latency)
            running -= 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(args.calls):
            tg.start_soon(call, i)
    return time.perf_counter() - started, most


def _row(name: str, wall: float, most: int, args: argparse.Namespace, tx: str, writes: str) -> None:
    waves = math.ceil(args.calls / args.cap)
    ideal = waves * args.latency
    added_ms = (wall - ideal) / waves * 1000
    print(f"{name:<22} {wall:>7.2f} {ideal:>7.2f} {most:>5} {added_ms:>9.1f} {tx:>8} {writes:>11}")


async def _shared(url: str, name: str, args: argparse.Namespace) -> None:
    stores = [await Store.open(url) for _ in range(args.stores)]
    try:
        key = f"bench-{uuid.uuid4().hex[:8]}"
        limiters = [
            SharedLimiter(
                store,
                key,
                max_concurrent=args.cap,
                requests_per_minute=args.calls * 10 if args.rpm else None,
                ttl_s=300,
                local=anyio.CapacityLimiter(args.cap),
            )
            for store in stores
        ]
        # One call per store first: the limit's rows are made once, not timed.
        for limiter in limiters:
            async with limiter:
                pass
            limiter.stats.transactions = limiter.stats.writes = 0
        wall, most = await _burst(limiters, args)
    finally:
        for store in stores:
            await store.close()
    tx = sum(limiter.stats.transactions for limiter in limiters) / args.calls
    writes = sum(limiter.stats.writes for limiter in limiters) / args.calls
    _row(name, wall, most, args, f"{tx:.1f}", f"{writes:.1f}")


async def main_async(args: argparse.Namespace) -> None:
    from tests import pg

    print(
        f"{args.calls} calls of {args.latency} s, cap {args.cap}, {args.stores} stores"
        + (", rpm counted" if args.rpm else "")
    )
    head = (
        f"{'limiter':<22} {'wall s':>7} {'ideal':>7} {'most':>5} {'+ms/call':>9} "
        f"{'tx/call':>8} {'writes/call':>11}"
    )
    print(head)
    print("-" * len(head))
    wall, most = await _burst([anyio.CapacityLimiter(args.cap)], args)
    _row("in-process", wall, most, args, "0", "0")
    with tempfile.TemporaryDirectory(prefix="tt-bench-slots-") as tmp:
        await _shared(str(Path(tmp) / "slots.db"), "shared sqlite", args)
    if args.no_pg:
        return
    cluster = None
    url = args.pg_url
    try:
        if url is None:
            if pg.find_bindir() is None:
                print("(no PostgreSQL binaries: PostgreSQL row skipped; --pg-url URL)")
                return
            cluster = pg.start_cluster(durable=True)
            url = cluster.url
        db = pg.create_database(url)
        try:
            await _shared(db, "shared postgres", args)
        finally:
            pg.drop_database(db)
    finally:
        if cluster is not None:
            cluster.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--cap", type=int, default=10)
    parser.add_argument("--stores", type=int, default=2)
    parser.add_argument("--rpm", action="store_true")
    parser.add_argument("--pg-url")
    parser.add_argument("--no-pg", action="store_true")
    anyio.run(main_async, parser.parse_args(argv))


if __name__ == "__main__":
    main()
