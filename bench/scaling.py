"""The worker pool's figures (#17): sessions per second and added latency per session at
1, 2 and 4 ``thinktank worker`` processes, and PostgreSQL writes per model call.

Run from the repo root (``docs/scaling.md`` shows the figures and what they mean)::

    python bench/scaling.py [--sessions 48] [--workers 1,2,4] [--concurrency 8]
                            [--latency 0.5] [--poll 0.25] [--db postgres,sqlite] [--pg-url URL]
                            [--ceiling-s 5] [--ceiling-clients 16]

Workload: each session is one step asking 3 models at once (mode ``all``) whose
answers a 4th model merges (``synthesis: judge``): 4 model calls, 2 rounds of
``--latency`` seconds, against ``tests/fakeserver.py`` over loopback. All
``--sessions`` are submitted, 16 at a time, with ``DistributedExecutor`` to a fresh database
served by N real worker processes (``tests/workerproc.py``, each ``--concurrency``);
before each pool run, a baseline runs the same sessions in this one process without
the pool (``LocalExecutor``) with as many session slots as the pool has (N x
``--concurrency``), so the queue is the same and the difference is the pool.

Per session, from the store: ``start->end`` (``finished_at - started_at``: running
time) and ``submit->end`` (``finished_at - queued_at``: with the queue wait). ``added``
is a pool percentile minus the same percentile of its baseline (sessions are not
paired). ``sess/s`` is sessions over first submit to last end; ``submit ms`` the time
all the submissions took over their number (16 are in flight at once); ``cpu ms`` the
worker processes' CPU time per session, ``bench cpu ms`` this process's (the fake
provider and the submitter; in-process, the sessions too).

On PostgreSQL (a throwaway durable cluster from ``tests/pg.py``: fsync and
synchronous commit on, unless ``--pg-url``), each run also reads, in its own fresh
database, ``pg_stat_user_tables`` (rows inserted + updated + deleted, by table:
thinktank's and DBOS's schema ``dbos``), ``pg_stat_database.xact_commit`` (every
commit, read-only ones included), the cluster's WAL position and the database's size,
before the submissions and 11 s after the last session ended (statistics reach the
views up to 10 s late). The same counters over a 10 s idle window of the pool
(heartbeats, queue polls) are subtracted for the settle time and printed as ``idle
.../s``. Finally ``--ceiling-s`` seconds of ``--ceiling-clients`` connections each
committing one-row INSERTs measure what this machine's primary sustains
(``--ceiling-s 0`` skips it).

Nothing is asserted; the machine is shared: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402

from bench._report import cpu_model, table, version  # noqa: E402
from tests import pg  # noqa: E402
from tests.fakeserver import FakeServer, run_fake_server  # noqa: E402
from tests.workerproc import fan_session, workers  # noqa: E402
from thinktank.executor import LocalExecutor  # noqa: E402
from thinktank.session.loading import parse_session  # noqa: E402
from thinktank.session.spec import SessionSpec  # noqa: E402
from thinktank.store import Store  # noqa: E402

CALLS_PER_SESSION = 4
SUBMITTERS = 16
"""Submissions in flight at once: one after the other, submitting 48 sessions took
about as long as running them, and the submitter, not the pool, set the rate."""
SETTLE_S = 11.0
"""Wait after the run before reading PostgreSQL's statistics views: a backend sends its
counters at most once a second at the end of a transaction, and one left idle (a pooled
connection the run used last) only after 10 s."""
IDLE_S = 10.0
"""The idle pool's window (heartbeats, queue polls), subtracted for ``SETTLE_S``."""


def fan_spec(base_url: str) -> SessionSpec:
    """3 models in parallel, merged by a judge model: 4 calls, 2 rounds of latency."""
    model = {"provider": "openai", "base_url": base_url + "/v1", "max_retries": 0}
    names = ["a", "b", "c", "j"]
    models = {name: {**model, "model": name, "timeout_s": 60} for name in names}
    data = {**fan_session(models), "name": "scaling-fan"}
    return parse_session(data, known_models=names)


@dataclass
class Timing:
    """One run's per-session timings, from the store."""

    rate: float
    """Sessions per second, first submit to last end."""
    run: list[float]
    """Each session's start->end, seconds."""
    total: list[float]
    """Each session's submit->end, seconds."""
    wall: float
    """First submit to last end, seconds."""
    bad: int
    """Sessions that did not complete."""
    submit_s: float = 0.0
    """How long submitting them all took, seconds."""
    cpu_s: float | None = None
    """CPU time (user + system) the worker processes spent on the run, seconds."""
    own_cpu_s: float = 0.0
    """CPU time of this process over the run (the fake provider, the submitter, and
    in-process the sessions), seconds."""


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def timings(store: Store, ids: Sequence[str]) -> Timing:
    """Per-session times of ``ids`` as the store recorded them."""
    wanted = set(ids)
    rows = [s for s in await store.list_sessions() if s.id in wanted]
    queued: list[datetime] = [s.queued_at or s.started_at for s in rows]
    ends: list[datetime] = [s.finished_at or s.started_at for s in rows]
    wall = (max(ends) - min(queued)).total_seconds()
    return Timing(
        rate=len(rows) / wall,
        run=[(e - s.started_at).total_seconds() for s, e in zip(rows, ends, strict=True)],
        total=[(e - q).total_seconds() for q, e in zip(queued, ends, strict=True)],
        wall=wall,
        bad=sum(s.status != "completed" for s in rows) + len(wanted) - len(rows),
    )


async def submit_all(
    submit: Callable[..., Awaitable[str]], spec: SessionSpec, n: int
) -> tuple[list[str], float]:
    """Submit ``n`` sessions, ``SUBMITTERS`` at a time: (their ids, seconds it took)."""
    ids: list[str] = [""] * n
    limit = anyio.CapacityLimiter(SUBMITTERS)

    async def one(i: int) -> None:
        async with limit:
            ids[i] = await submit(spec, inputs={"q": f"q{i}"})

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return ids, time.monotonic() - started


async def local_run(db: str, spec: SessionSpec, slots: int, args: argparse.Namespace) -> Timing:
    """The baseline: the sessions in this process, ``slots`` at once."""
    async with (
        await Store.open(db) as store,
        LocalExecutor(store=store, max_sessions=slots) as executor,
    ):
        own = time.process_time()
        ids, submit_s = await submit_all(executor.submit, spec, args.sessions)
        for sid in ids:
            await executor.wait(sid)
        own = time.process_time() - own
    async with await Store.open(db) as store:
        result = await timings(store, ids)
    result.submit_s = submit_s
    result.own_cpu_s = own
    return result


# -- PostgreSQL counters ----------------------------------------------------------------


@dataclass
class Counters:
    """Cumulative PostgreSQL counters of one database (WAL: of the cluster)."""

    rows: dict[str, int]
    """Rows inserted + updated + deleted, by ``schema.table`` (schema ``public``:
    thinktank's, ``dbos``: DBOS's)."""
    commits: int
    wal: int
    size: int
    """The database's size on disk, bytes."""
    """WAL position, bytes."""

    def minus(self, other: Counters) -> dict[str, float]:
        out: dict[str, float] = {"rows_public": 0.0, "rows_dbos": 0.0}
        for table_name, n in self.rows.items():
            change = float(n - other.rows.get(table_name, 0))
            out[f"table:{table_name}"] = change
            schema = table_name.split(".", 1)[0]
            out[f"rows_{schema}"] = out.get(f"rows_{schema}", 0.0) + change
        out["commits"] = float(self.commits - other.commits)
        out["wal"] = float(self.wal - other.wal)
        out["size"] = float(self.size - other.size)
        return out


async def read_counters(url: str) -> Counters:
    """The counters now (a fresh connection: no cached statistics snapshot)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT schemaname || '.' || relname AS name, "
            "n_tup_ins + n_tup_upd + n_tup_del AS n FROM pg_stat_user_tables"
        )
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        wal = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    return Counters(
        rows={r["name"]: int(r["n"]) for r in rows},
        commits=int(commits),
        wal=int(wal),
        size=int(size),
    )


@dataclass
class Writes:
    """A pool run's PostgreSQL writes, net of the idle pool's."""

    busy: dict[str, float]
    idle_per_s: dict[str, float]


async def measured(url: str | None, body: Callable[[], Any]) -> tuple[Any, Writes | None]:
    """Run ``body()``; on PostgreSQL, with the counters' change net of an idle window."""
    if url is None:
        return await body(), None
    before = await read_counters(url)
    result = await body()
    await anyio.sleep(SETTLE_S)
    after = await read_counters(url)
    await anyio.sleep(IDLE_S)
    idle = (await read_counters(url)).minus(after)
    idle_per_s = {k: v / IDLE_S for k, v in idle.items()}
    busy = {k: v - idle_per_s.get(k, 0.0) * SETTLE_S for k, v in after.minus(before).items()}
    return result, Writes(busy=busy, idle_per_s=idle_per_s)


async def pool_run(
    db: str, spec: SessionSpec, n_workers: int, args: argparse.Namespace, pg_url: str | None
) -> tuple[Timing, Writes | None]:
    """The sessions on ``n_workers`` worker processes."""
    from thinktank.distributed.executor import DistributedExecutor

    names = [f"w{i + 1}" for i in range(n_workers)]
    with (
        tempfile.TemporaryDirectory(prefix="tt-bench-scaling-") as logs,
        workers(
            db,
            names,
            "--concurrency",
            str(args.concurrency),
            "--poll-interval",
            str(args.poll),
            log_dir=Path(logs),
        ) as procs,
    ):
        pids = [p.proc.pid for p in procs]
        async with DistributedExecutor(db=db) as pool:
            # Until the statistics of the set-up (migrations, DBOS's tables, the
            # workers' first heartbeats) have reached the views.
            await anyio.sleep(SETTLE_S if pg_url else 1.0)

            async def body() -> tuple[list[str], float, float, float]:
                cpu, own = cpu_seconds(pids), time.process_time()
                ids, submit_s = await submit_all(pool.submit, spec, args.sessions)
                async for _ in pool.as_completed(ids):
                    pass
                return ids, submit_s, cpu_seconds(pids) - cpu, time.process_time() - own

            (ids, submit_s, cpu_s, own), writes = await measured(pg_url, body)
            result = await timings(pool.store, ids)
            result.submit_s = submit_s
            result.cpu_s = cpu_s
            result.own_cpu_s = own
            return result, writes


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system) the processes ``pids`` have used so far (Linux)."""
    total = 0
    for pid in pids:
        # The fields after the command's closing parenthesis; utime and stime are 14, 15.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- PostgreSQL's ceiling ---------------------------------------------------------------


async def ceiling(url: str, seconds: float, clients: int) -> float:
    """Single-row INSERT commits per second that ``clients`` connections sustain."""
    import asyncpg

    setup = await asyncpg.connect(url)
    await setup.execute(
        "CREATE TABLE ceiling (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), "
        "payload text)"
    )
    await setup.close()
    payload = "x" * 400
    done = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        conn = await asyncpg.connect(url)
        try:
            while time.monotonic() < deadline:
                await conn.execute("INSERT INTO ceiling (payload) VALUES ($1)", payload)
                done += 1
        finally:
            await conn.close()

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(client)
    return done / (time.monotonic() - started)


# -- report -----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def latency_row(name: str, t: Timing, base: Timing | None) -> list[str]:
    """A row of the sessions table."""
    cells = [name, f"{t.rate:.2f}", _ms(pct(t.run, 50)), _ms(pct(t.run, 95))]
    cells += [_ms(pct(t.total, 50)), _ms(pct(t.total, 95))]
    if base is None:
        cells += ["-", "-", "-", "-"]
    else:
        for ours, theirs in ((t.run, base.run), (t.total, base.total)):
            cells += [_ms(pct(ours, p) - pct(theirs, p)) for p in (50, 95)]
    cpu = "-" if t.cpu_s is None else f"{t.cpu_s / len(t.run) * 1000:.0f}"
    own = f"{t.own_cpu_s / len(t.run) * 1000:.0f}"
    return [*cells, f"{t.submit_s / len(t.run) * 1000:.1f}", cpu, own, str(t.bad)]


LATENCY_HEAD = [
    "run",
    "sess/s",
    "run p50",
    "run p95",
    "total p50",
    "total p95",
    "+run p50",
    "+run p95",
    "+total p50",
    "+total p95",
    "submit ms",
    "cpu ms",
    "bench cpu ms",
    "not ok",
]


def writes_row(name: str, w: Writes, sessions: int) -> list[str]:
    """A row of the PostgreSQL writes table (per model call, net of idle)."""
    calls = sessions * CALLS_PER_SESSION
    busy = w.busy
    idle = w.idle_per_s
    return [
        name,
        f"{busy.get('rows_public', 0) / calls:.1f}",
        f"{busy.get('rows_dbos', 0) / calls:.1f}",
        f"{busy['commits'] / calls:.1f}",
        f"{busy['commits'] / sessions:.1f}",
        f"{busy['wal'] / calls / 1024:.1f}",
        f"{busy['size'] / sessions / 1024:.1f}",
        f"{idle['commits']:.1f}",
        f"{(idle.get('rows_public', 0) + idle.get('rows_dbos', 0)):.1f}",
        f"{idle['wal'] / 1024:.1f}",
    ]


WRITES_HEAD = [
    "run",
    "rows/call ours",
    "rows/call dbos",
    "commits/call",
    "commits/session",
    "WAL KiB/call",
    "disk KiB/session",
    "idle commits/s",
    "idle rows/s",
    "idle WAL KiB/s",
]


def tables_rows(w: Writes, sessions: int) -> list[list[str]]:
    """Rows changed per session by table, most first (net of the idle pool)."""
    per_table = {
        k.removeprefix("table:"): v / sessions
        for k, v in w.busy.items()
        if k.startswith("table:") and v / sessions >= 0.05
    }
    ordered = sorted(per_table.items(), key=lambda kv: -kv[1])
    return [[name, f"{n:.1f}"] for name, n in ordered]


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as markdown, to paste into docs/scaling.md."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def show(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print(table(title, headers, rows))
    print()
    print(markdown(headers, rows))
    print()


# -- main -------------------------------------------------------------------------------


async def backend_runs(
    backend: str, server: str | None, fake: FakeServer, args: argparse.Namespace, tmp: Path
) -> tuple[list[list[str]], list[list[str]]]:
    """The baseline and every worker count on one backend: (latency rows, write rows)."""
    spec = fan_spec(fake.url)
    counter = iter(range(1_000_000))

    def fresh() -> str:
        if server is None:
            return str(tmp / f"{backend}-{next(counter)}.db")
        return pg.create_database(server)

    def done(db: str) -> None:
        if server is not None:
            pg.drop_database(db)

    async def once(run: Callable[[str], Any]) -> Any:
        db = fresh()
        try:
            fake.most_in_flight = 0
            return await run(db)
        finally:
            done(db)

    lat: list[list[str]] = []
    wr: list[list[str]] = []
    by_table: tuple[str, list[list[str]]] | None = None
    for n in args.workers:
        slots = n * args.concurrency
        base: Timing = await once(lambda db: local_run(db, spec, slots, args))  # noqa: B023
        lat.append(latency_row(f"{backend} in-process, {slots} at once", base, None))
        t, w = await once(lambda db: pool_run(db, spec, n, args, db if server else None))  # noqa: B023
        name = f"{backend} {n} worker{'s' if n > 1 else ''}"
        lat.append(latency_row(name, t, base))
        if w is not None:
            wr.append(writes_row(name, w, args.sessions))
            by_table = (name, tables_rows(w, args.sessions))
        print(
            f"  {name}: {t.rate:.2f} sessions/s (in-process {base.rate:.2f}), "
            f"{fake.most_in_flight} calls at most",
            flush=True,
        )
    if by_table is not None:
        show(f"Rows per session by table ({by_table[0]})", ["table", "rows"], by_table[1])
    return lat, wr


async def main_async(args: argparse.Namespace) -> None:
    print(
        f"{args.sessions} sessions of 3 parallel calls + 1 judge, {args.latency} s a call, "
        f"--concurrency {args.concurrency} per worker, --poll-interval {args.poll}; "
        f"workers {args.workers}"
    )
    print(
        f"{cpu_model()}; thinktank {version('thinktank')}, dbos {version('dbos')}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    cluster = None
    lat: list[list[str]] = []
    wr: list[list[str]] = []
    commits_s: float | None = None
    with (
        tempfile.TemporaryDirectory(prefix="tt-bench-scaling-") as tmp,
        run_fake_server(record=False) as fake,
    ):
        fake.answer_delay_s = args.latency
        try:
            for backend in args.db:
                server = None
                if backend == "postgres":
                    if args.pg_url is None:
                        cluster = pg.start_cluster(durable=True)
                    server = args.pg_url or cluster.url  # type: ignore[union-attr]
                more_lat, more_wr = await backend_runs(backend, server, fake, args, Path(tmp))
                lat += more_lat
                wr += more_wr
                if server is not None and args.ceiling_s > 0:
                    db = pg.create_database(server)
                    try:
                        commits_s = await ceiling(db, args.ceiling_s, args.ceiling_clients)
                    finally:
                        pg.drop_database(db)
        finally:
            if cluster is not None:
                cluster.stop()
    print()
    show("Sessions (ms; + = minus the in-process run above it)", LATENCY_HEAD, lat)
    if wr:
        show("PostgreSQL writes (net of the idle pool)", WRITES_HEAD, wr)
    if commits_s is not None:
        print(
            f"PostgreSQL ceiling: {commits_s:,.0f} single-row INSERT commits/s "
            f"({args.ceiling_clients} connections, {args.ceiling_s} s, durable cluster)"
        )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=48)
    parser.add_argument("--workers", type=_ints, default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--poll", type=float, default=0.25, help="workers' --poll-interval")
    parser.add_argument(
        "--db", type=lambda s: s.split(","), default=["postgres", "sqlite"], help="backends"
    )
    parser.add_argument("--pg-url", help="a server whose role may CREATE DATABASE")
    parser.add_argument("--ceiling-s", type=float, default=5.0)
    parser.add_argument("--ceiling-clients", type=int, default=16)
    args = parser.parse_args(argv)
    anyio.run(main_async, args)


if __name__ == "__main__":
    main()
