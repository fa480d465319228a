"""Store benchmark: model calls recorded per second, and database bytes per call, on SQLite
and on PostgreSQL.

Run from the repo root: ``python bench/store.py`` (2,000-step sessions, 3 runs each, a
minute or two), ``--quick`` (200 steps, 1 run), ``--steps N``, ``--repeat N``,
``--reply-chars N``, ``--pg-url URL`` (a server whose role may CREATE DATABASE; without
it a throwaway cluster is started with ``tests/pg.py`` and stopped at the end; needs
PostgreSQL's binaries, ``apt-get install postgresql``), ``--no-pg``.

Event streams. Each run first executes a real session with ``thinktank.run``, on
zero-latency models (each answers at once with a fixed reply of ``--reply-chars``
characters, 20 tokens in and 100 out), recording into an in-memory SQLite store whose
``write`` also keeps a copy of every batch: these are the batches exactly as the
run's recorder sends them (their count and mean size are printed). That part is not
timed. The batches are then written again, in order, into the database under test,
and only those ``Store.write`` calls are timed. Two workloads, N independent steps
each, at most 16 in flight:

  1 model    every step asks one model (4 events a step: step started, call
             started, call finished, step finished);
  3 models   every step asks three models (mode ``all``, ``majority`` merge: 3 calls,
             a consensus, 9 events a step).

Rows. ``calls/s`` is the model calls of a run over the time spent in its writes, ``ev/s``
the same for events, ``us/batch`` the mean time of one write; all three from the median
run (by time). ``batch 2`` writes the same events two at a time, as the recorder does
when model calls take a realistic second or so and events arrive apart: there
``us/batch`` is the store's cost per write at a realistic event rate. ``4 workers``
writes four such streams at once, each through its own store (four workers of one
database, in one process: the Python side is one core), and divides all their calls by
the wall time. ``bytes/call`` is the database's size after every run of
the row over all the calls those runs recorded: the SQLite file (after the last store
closes, so the WAL is checkpointed into it) and, on PostgreSQL, the sum of
``pg_total_relation_size`` over the thinktank tables (heap, indexes and TOAST).

Backends. ``sqlite`` is a fresh file per run, as thinktank opens it (WAL, synchronous
NORMAL: a commit does not wait for the disk). ``postgres`` is a fresh database per
row on the server, at its own settings (the throwaway cluster keeps PostgreSQL's
defaults: every commit waits for its WAL to be flushed); ``postgres async`` sets
``synchronous_commit = off`` on its database, which is SQLite's WAL-NORMAL trade (a
crash of the machine may lose the last commits, never consistency). Timings are
wall-clock on whatever else the machine is doing; the load average is printed.
"""

# ruff: noqa: E402 - sys.path is fixed below, before any other import.
from __future__ import annotations

import os
import sys

# ``python bench/store.py`` puts bench/ first on sys.path, where a sibling script's name
# (bench/http.py) would shadow the standard-library module of the same name. Import
# from the repo root instead.
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH_DIR]
sys.path.insert(0, os.path.dirname(_BENCH_DIR))

import argparse
import importlib
import platform
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

import thinktank
from bench._report import cpu_model, version
from thinktank.events import CallFinished, ConsensusComputed, Event
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec
from thinktank.store import Store

MODELS = ("m1", "m2", "m3")
LIMIT = 16
WORKERS = 4
SMALL_BATCH = 2
"""Events per write in the ``batch 2`` rows (realistic model latency: events come apart)."""


class InstantModel:
    """Answers with a fixed reply at once (after yielding to the event loop once), or
    after ``latency_s``; 20 tokens in, 100 out (bench/memory.py uses it too)."""

    def __init__(self, name: str, reply: str, latency_s: float = 0.0) -> None:
        self._name = name
        self._latency_s = latency_s
        self._response = ModelResponse(
            content=reply,
            model=name,
            input_tokens=20,
            output_tokens=100,
            cost_usd=0.0001,
            finish_reason="stop",
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def provider(self) -> str:
        return "bench"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if self._latency_s:
            await anyio.sleep(self._latency_s)
        else:
            await anyio.lowlevel.checkpoint()
        return self._response


@dataclass(frozen=True)
class Workload:
    """A session shape: how many models each of its steps asks."""

    name: str
    models_per_step: int


WORKLOADS = (Workload("1 model", 1), Workload("3 models", 3))


def make_spec(workload: Workload, steps: int) -> SessionSpec:
    """N independent steps, each asking ``models_per_step`` models."""
    step_list: list[dict[str, Any]] = []
    for i in range(steps):
        step: dict[str, Any] = {
            "id": f"s{i:05d}",
            "prompt": f"Question {i}: what is the answer, and why? Explain briefly.",
        }
        if workload.models_per_step == 1:
            step["model"] = MODELS[0]
        else:
            step["models"] = list(MODELS[: workload.models_per_step])
            step["mode"] = "all"
            step["synthesis"] = "majority"
        step_list.append(step)
    data = {
        "name": f"bench-store-{workload.models_per_step}",
        "parallel_execution": {"max_concurrent_steps": LIMIT},
        "steps": step_list,
    }
    return parse_session(data, known_models=MODELS)


async def capture(spec: SessionSpec, reply: str) -> list[list[Event]]:
    """Run ``spec`` for real and return the batches its recorder wrote (fresh ids)."""
    batches: list[list[Event]] = []
    async with await Store.open(":memory:") as store:
        write = store.write

        async def recording(events: Sequence[Event]) -> None:
            batches.append(list(events))
            await write(events)

        store.write = recording  # type: ignore[method-assign]
        clients = {name: InstantModel(name, reply) for name in MODELS}
        result = await thinktank.run(spec, store=store, models=clients)
    if result.status != "completed":
        raise RuntimeError(f"the captured session ended {result.status}")
    return batches


def rechunk(batches: list[list[Event]], size: int) -> list[list[Event]]:
    """The same events in batches of at most ``size``: what the recorder sends when
    model calls take a realistic time (a second or so), so that events come apart."""
    events = [e for batch in batches for e in batch]
    return [events[i : i + size] for i in range(0, len(events), size)]


def calls_in(batches: list[list[Event]]) -> int:
    """Model calls recorded by ``batches``."""
    return sum(isinstance(e, CallFinished) for batch in batches for e in batch)


async def write_all(store: Store, batches: list[list[Event]]) -> float:
    """Write ``batches`` in order; return the seconds spent inside ``Store.write``."""
    spent = 0.0
    for batch in batches:
        start = time.perf_counter()
        await store.write(batch)
        spent += time.perf_counter() - start
    return spent


# -- databases -------------------------------------------------------------------------


@dataclass
class Backend:
    """Where a row of the table writes: a fresh database per run or per row."""

    name: str
    new_database: Callable[[], Awaitable[str]]
    """Make an empty database; return its URL (or SQLite path)."""
    size: Callable[[str], Awaitable[int]]
    """Bytes the thinktank tables of that database take."""
    drop: Callable[[str], Awaitable[None]]
    """Delete it."""
    fresh_per_run: bool
    """Whether every run gets its own database (else one per row)."""


def sqlite_backend(directory: Path) -> Backend:
    """Fresh SQLite files in ``directory``."""

    async def new() -> str:
        return str(directory / f"bench-{uuid.uuid4().hex[:8]}.db")

    def file_size(path: str) -> int:
        return sum(
            os.path.getsize(path + suffix)
            for suffix in ("", "-wal")
            if os.path.exists(path + suffix)
        )

    def remove(path: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)

    async def size(path: str) -> int:
        return await anyio.to_thread.run_sync(file_size, path)

    async def drop(path: str) -> None:
        await anyio.to_thread.run_sync(remove, path)

    return Backend("sqlite", new, size, drop, fresh_per_run=True)


def postgres_backend(server_url: str, *, synchronous_commit: bool) -> Backend:
    """Fresh databases on the PostgreSQL server of ``server_url``."""
    asyncpg: Any = importlib.import_module("asyncpg")  # optional, untyped

    plain = server_url.replace("postgresql+asyncpg://", "postgresql://")
    head = plain.rpartition("/")[0]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(plain)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def new() -> str:
        name = f"tt_bench_{uuid.uuid4().hex[:12]}"
        await admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        if not synchronous_commit:
            await admin(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        return f"{head}/{name}"

    async def size(url: str) -> int:
        conn = await asyncpg.connect(url)
        try:
            total = await conn.fetchval(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND c.relname LIKE 'thinktank%' "
                "AND n.nspname = current_schema()"
            )
        finally:
            await conn.close()
        return int(total)

    async def drop(url: str) -> None:
        await admin(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')

    name = "postgres" if synchronous_commit else "postgres async"
    return Backend(name, new, size, drop, fresh_per_run=False)


async def server_facts(url: str) -> str:
    """The PostgreSQL server's version and its durability settings."""
    asyncpg: Any = importlib.import_module("asyncpg")

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        sync = await conn.fetchval("SHOW synchronous_commit")
        buffers = await conn.fetchval("SHOW shared_buffers")
    finally:
        await conn.close()
    settings = f"fsync={fsync}, synchronous_commit={sync}, shared_buffers={buffers}"
    return f"PostgreSQL {version} ({settings})"


# -- measuring -------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table."""

    backend: str
    workload: str
    mode: str
    calls: int
    events: int
    batches: int
    seconds: float
    bytes_total: int
    calls_total: int

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def us_per_batch(self) -> float:
        return self.seconds / self.batches * 1e6 if self.batches else 0.0

    @property
    def bytes_per_call(self) -> float:
        return self.bytes_total / self.calls_total if self.calls_total else 0.0


async def measure(
    backend: Backend,
    workload: Workload,
    spec: SessionSpec,
    *,
    repeat: int,
    reply: str,
    workers: int,
    chunk: int | None = None,
) -> tuple[Row, list[int]]:
    """The median of ``repeat`` runs of one row; also the batch sizes of its capture."""
    runs: list[tuple[float, int, int, int, list[int]]] = []
    """Per run: seconds writing, calls, events, batches, and the first stream's sizes."""
    bytes_total = calls_total = 0
    shared = None if backend.fresh_per_run else await backend.new_database()
    try:
        for _ in range(repeat):
            streams = [await capture(spec, reply) for _ in range(workers)]
            if chunk is not None:
                streams = [rechunk(stream, chunk) for stream in streams]
            target = shared or await backend.new_database()
            stores = [await Store.open(target) for _ in range(workers)]
            try:
                if workers == 1:
                    seconds = await write_all(stores[0], streams[0])
                else:
                    start = time.perf_counter()
                    async with anyio.create_task_group() as tg:
                        for store, stream in zip(stores, streams, strict=True):
                            tg.start_soon(write_all, store, stream)
                    seconds = time.perf_counter() - start
            finally:
                for store in stores:
                    await store.close()
            calls = sum(calls_in(stream) for stream in streams)
            runs.append(
                (
                    seconds,
                    calls,
                    sum(len(batch) for stream in streams for batch in stream),
                    sum(len(stream) for stream in streams),
                    [len(batch) for batch in streams[0]],
                )
            )
            calls_total += calls
            if shared is None:
                bytes_total += await backend.size(target)
                await backend.drop(target)
        if shared is not None:
            bytes_total = await backend.size(shared)
    finally:
        if shared is not None:
            await backend.drop(shared)
    mode = "1 stream" if workers == 1 else f"{workers} workers"
    if chunk is not None:
        mode = f"batch {chunk}"
    seconds, calls, events, batches_n, sizes = sorted(runs)[len(runs) // 2]
    row = Row(
        backend.name,
        workload.name,
        mode,
        calls,
        events,
        batches_n,
        seconds,
        bytes_total,
        calls_total,
    )
    return row, sizes


def print_header(pg_facts: str | None, args: argparse.Namespace) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print("thinktank store benchmark")
    print(f"  machine   {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"  python    {platform.python_version()}; SQLite {sqlite3.sqlite_version}")
    packages = ("thinktank", "sqlalchemy", "aiosqlite", "asyncpg", "anyio")
    print("  packages  " + ", ".join(f"{p} {version(p)}" for p in packages))
    if pg_facts:
        print(f"  server    {pg_facts}")
    print(
        f"  workload  {args.steps} independent steps, {LIMIT} in flight, zero-latency "
        f"models, {args.reply_chars}-char replies; median of {args.repeat} run(s)"
    )
    print(f"  load avg  {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'backend':<15} {'workload':<9} {'mode':<10} {'calls':>7} {'calls/s':>9} "
        f"{'ev/s':>9} {'us/batch':>9} {'bytes/call':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.backend:<15} {r.workload:<9} {r.mode:<10} {r.calls:>7} "
            f"{r.calls_per_s:>9,.0f} {r.events_per_s:>9,.0f} {r.us_per_batch:>9,.0f} "
            f"{r.bytes_per_call:>10,.0f}"
        )


async def main_async(args: argparse.Namespace) -> None:
    from tests import pg

    cluster: pg.Cluster | None = None
    pg_url: str | None = args.pg_url
    with tempfile.TemporaryDirectory(prefix="tt-bench-store-") as tmp:
        try:
            if pg_url is None and not args.no_pg:
                if pg.find_bindir() is None:
                    print("(no PostgreSQL binaries: PostgreSQL rows skipped; --pg-url URL)")
                else:
                    cluster = pg.start_cluster(durable=True)
                    pg_url = cluster.url
            backends = [sqlite_backend(Path(tmp))]
            facts = None
            if pg_url is not None and not args.no_pg:
                facts = await server_facts(pg_url)
                backends.append(postgres_backend(pg_url, synchronous_commit=True))
                backends.append(postgres_backend(pg_url, synchronous_commit=False))
            print_header(facts, args)
            rows: list[Row] = []
            reply = ("The answer is 42, because " + "it follows from the premises. " * 80)[
                : args.reply_chars
            ]
            for workload in WORKLOADS:
                spec = make_spec(workload, args.steps)
                for backend in backends:
                    for workers, chunk in ((1, None), (WORKERS, None), (1, SMALL_BATCH)):
                        row, sizes = await measure(
                            backend,
                            workload,
                            spec,
                            repeat=args.repeat,
                            reply=reply,
                            workers=workers,
                            chunk=chunk,
                        )
                        rows.append(row)
                        if backend is backends[0] and workers == 1 and chunk is None:
                            print(
                                f"{workload.name}: {len(sizes)} batches per session, "
                                f"{statistics.mean(sizes):.1f} events each on average "
                                f"(median {statistics.median(sizes):.0f}, max {max(sizes)})"
                            )
            print()
            print_table(rows)
            await print_open(Path(tmp), max(args.repeat, 5))
            await print_cache_lookup(Path(tmp), args.steps, reply, 1000)
            if args.replay_steps:
                await print_replay(args.replay_steps, args.repeat)
        finally:
            if cluster is not None:
                cluster.stop()


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.2f}"


async def print_open(directory: Path, repeat: int) -> None:
    """Time of ``Store.open`` + ``close`` on a new SQLite file and on an existing one."""
    fresh: list[float] = []
    existing: list[float] = []
    for i in range(repeat):
        path = str(directory / f"open-{i}.db")
        start = time.perf_counter()
        store = await Store.open(path)
        await store.close()
        fresh.append(time.perf_counter() - start)
        for _ in range(5):
            start = time.perf_counter()
            store = await Store.open(path)
            await store.close()
            existing.append(time.perf_counter() - start)
    print()
    print("opening a SQLite store (Store.open + close; target: existing <= 20 ms)")
    print(f"{'file':>10} {'median ms':>10} {'min ms':>8}")
    for name, samples in (("new", fresh), ("existing", existing)):
        print(f"{name:>10} {_median_ms(samples):>10} {min(samples) * 1e3:>8.2f}")


async def print_cache_lookup(directory: Path, steps: int, reply: str, lookups: int) -> None:
    """Time of one consensus-cache lookup (``Store.find_consensus``) on SQLite, in a store
    holding a recorded ``steps``-step 3-model session (one cached consensus per step)."""
    spec = make_spec(WORKLOADS[1], steps)
    batches = await capture(spec, reply)
    keys = [
        e.cache_key
        for batch in batches
        for e in batch
        if isinstance(e, ConsensusComputed) and e.cache_key is not None
    ]
    path = str(directory / "cache.db")
    async with await Store.open(path) as store:
        await write_all(store, batches)
        missing = "sha256:" + "0" * 64
        samples: dict[str, list[float]] = {"hit": [], "miss": []}
        for i in range(lookups):
            for name, key in (("hit", keys[i % len(keys)]), ("miss", missing)):
                start = time.perf_counter()
                found = await store.find_consensus(key)
                samples[name].append(time.perf_counter() - start)
                if (found is None) != (name == "miss"):
                    raise RuntimeError(f"cache {name} expected for {key}")
    print()
    print(
        f"consensus-cache lookup on SQLite, {len(keys):,} cached 3-model consensus rows "
        f"(target: <= 100 us)"
    )
    print(f"{'lookup':>10} {'median us':>10} {'min us':>8}")
    for name, got in samples.items():
        print(f"{name:>10} {statistics.median(got) * 1e6:>10.0f} {min(got) * 1e6:>8.0f}")


async def print_replay(steps: int, repeat: int) -> None:
    """Replay time of a stored N-step session on SQLite (bench/replay.py measures it)."""
    from bench.replay import once

    print()
    print(f"replay of a stored {steps:,}-step session on SQLite (target: under 2 s)")
    timings = [await once(steps, seed=7) for _ in range(repeat)]
    replay_s = statistics.median(t[1] for t in timings)
    matches = all(t[2] for t in timings)
    print(f"{'steps':>8} {'run+record s':>13} {'replay s':>9} {'us/step':>8} {'matches':>8}")
    print(
        f"{steps:>8,} {statistics.median(t[0] for t in timings):>13.3f} {replay_s:>9.3f} "
        f"{replay_s / steps * 1e6:>8.1f} {matches!s:>8}   "
        f"{'ok' if replay_s < 2 else 'MISS'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 steps, 1 run")
    parser.add_argument("--steps", type=int, default=None, help="steps per session")
    parser.add_argument("--repeat", type=int, default=None, help="runs per row (median)")
    parser.add_argument("--reply-chars", type=int, default=400, help="length of each reply")
    parser.add_argument("--pg-url", default=None, help="PostgreSQL server to use")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument(
        "--replay-steps",
        type=int,
        default=None,
        help="steps of the replayed session (default 10,000; 0 skips it)",
    )
    args = parser.parse_args()
    args.steps = args.steps or (200 if args.quick else 2000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.replay_steps is None:
        args.replay_steps = 1000 if args.quick else 10_000
    anyio.run(main_async, args)


if __name__ == "__main__":
    main()
