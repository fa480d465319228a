"""Many writers on one database: stores in one process and in several processes.

Subprocess workers run :func:`worker` (``python -c`` from the repo root). Each prints
``ready`` once it has imported everything (and, for ``claim``, opened its store), waits
for ``go`` on stdin, does its job and prints one JSON line: the test releases them all
at once, so they really race. The tests that start processes are marked ``slow`` (a
few seconds each; ``pytest -m 'not slow'`` skips them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests import pg
from tests.test_store import simple_session
from thinktank.events import Event
from thinktank.store import Store

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

REPO = Path(__file__).resolve().parent.parent
_CHILD = "import sys; from tests.test_store_concurrency import worker; worker(sys.argv[1:])"
STEPS = 8
"""Steps per session in these tests (each: 4 events and one call)."""
BATCH = 3
"""Events per write, about what the recorder sends while steps run."""


# -- the subprocess side ---------------------------------------------------------------


async def play(store: Store, events: Sequence[Event]) -> None:
    """Write ``events`` in small batches, yielding between them as a live run would."""
    for i in range(0, len(events), BATCH):
        await store.write(events[i : i + BATCH])
        await anyio.lowlevel.checkpoint()


async def write_sessions(url: str, count: int, name: str) -> list[str]:
    """Open ``count`` stores on ``url`` and write one session through each, all at once."""
    sessions = [simple_session(STEPS, name=f"{name}-{i}") for i in range(count)]
    stores: list[Store] = []
    try:
        for _ in range(count):
            stores.append(await Store.open(url))
        async with anyio.create_task_group() as tg:
            for store, events in zip(stores, sessions, strict=True):
                tg.start_soon(play, store, events)
    finally:
        for store in stores:
            await store.close()
    return [events[0].session_id for events in sessions]


async def _wait_for_go() -> None:
    print("ready", flush=True)
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"worker: expected 'go', got {line!r}")


async def _work(argv: list[str]) -> Any:
    command, url, *args = argv
    if command == "write":  # write COUNT sessions named NAME-i, opening after "go"
        count, name = int(args[0]), args[1]
        await _wait_for_go()
        return await write_sessions(url, count, name)
    if command == "claim":  # claim SESSION as WORKER
        session_id, worker_id = args
        async with await Store.open(url) as store:
            await _wait_for_go()
            return await store.claim_session(session_id, worker_id=worker_id, ttl_s=60)
    raise SystemExit(f"worker: unknown command {command!r}")


def worker(argv: list[str]) -> None:
    """Entry point of a subprocess: ``write URL COUNT NAME`` or ``claim URL SESSION WORKER``."""
    result = anyio.run(_work, argv)
    print(json.dumps(result), flush=True)


# -- the test side ---------------------------------------------------------------------


async def _line(stream: BufferedByteReceiveStream) -> str:
    return (await stream.receive_until(b"\n", 1 << 20)).decode().strip()


async def _spawn(command: list[str], err_path: Path, child: str = _CHILD) -> Process:
    """One worker subprocess running ``command``, its stderr into ``err_path``."""
    with err_path.open("wb") as err:
        return await anyio.open_process(
            [sys.executable, "-c", child, *command],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )


async def _lines(
    readers: list[BufferedByteReceiveStream],
    failure: Callable[[int, str], AssertionError],
    what: str,
) -> list[str]:
    """The next line of every worker, in order; a worker that ends first ``what``."""
    lines = []
    for i, reader in enumerate(readers):
        try:
            lines.append(await _line(reader))
        except (anyio.IncompleteRead, anyio.EndOfStream):
            raise failure(i, what) from None
    return lines


async def run_workers(
    commands: list[list[str]],
    logs: Path,
    *,
    released: anyio.Event | None = None,
    child: str = _CHILD,
) -> list[Any]:
    """Start one subprocess per command, release them together, return their results.

    ``released`` is set once they are released, so that the caller can race them.
    ``child`` is the ``python -c`` code of a worker (default: :func:`worker`); it must
    print ``ready``, wait for ``go`` on stdin and print one JSON line.

    Raises:
        AssertionError: a worker failed (with its stderr).
    """
    procs: list[Process] = []
    errors: list[Path] = []

    def failure(i: int, what: str) -> AssertionError:
        return AssertionError(f"worker {i} {what}: {errors[i].read_text()[-3000:]}")

    try:
        with anyio.fail_after(120):
            for i, command in enumerate(commands):
                errors.append(logs / f"worker-{i}.err")
                procs.append(await _spawn(command, errors[i], child))
            readers = []
            for proc in procs:
                assert proc.stdout is not None
                readers.append(BufferedByteReceiveStream(proc.stdout))
            assert await _lines(readers, failure, "did not start") == ["ready"] * len(procs)
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.send(b"go\n")
            if released is not None:
                released.set()
            results = [json.loads(line) for line in await _lines(readers, failure, "failed")]
            for i, proc in enumerate(procs):
                if await proc.wait() != 0:
                    raise failure(i, f"exited with {proc.returncode}")
            return results
    finally:
        with anyio.CancelScope(shield=True):
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await proc.aclose()


async def _check_sessions(url: str, session_ids: list[str]) -> None:
    """Every session is stored whole: completed, every step and call there."""
    async with await Store.open(url) as store:
        counts = await store.count_rows()
        for sid in session_ids:
            stored = await store.get_session(sid)
            assert stored.status == "completed"
            assert [s.status for s in stored.steps] == ["completed"] * STEPS
            assert all(len(s.calls) == 1 for s in stored.steps)
    n = len(session_ids)
    per_session = len(simple_session(STEPS))
    assert counts == {
        "thinktank_sessions": n,
        "thinktank_steps": n * STEPS,
        "thinktank_parallel_executions": n * STEPS,
        "thinktank_call_attempts": 0,
        "thinktank_consensus": 0,
        "thinktank_events": n * per_session,
    }


@pytest.mark.slow
async def test_fifty_sessions_on_one_sqlite_file(tmp_path: Path) -> None:
    """50 sessions at once on one new SQLite file (40 stores here, 10 in two subprocesses):
    no 'database is locked', every row there."""
    url = str(tmp_path / "shared.db")
    here: list[str] = []
    there: list[Any] = []
    released = anyio.Event()

    async def in_subprocesses() -> None:
        commands = [["write", url, "5", f"proc{i}"] for i in range(2)]
        there.extend(await run_workers(commands, tmp_path, released=released))

    async def in_this_process() -> None:
        await released.wait()  # all open the new file and write at the same time
        here.extend(await write_sessions(url, 40, "here"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(in_subprocesses)
        tg.start_soon(in_this_process)
    assert len(here) == 40 and [len(ids) for ids in there] == [5, 5]
    await _check_sessions(url, here + [sid for ids in there for sid in ids])


@pytest.mark.slow
async def test_four_processes_write_one_postgres_database(pg_url: str, tmp_path: Path) -> None:
    """Four processes open one new PostgreSQL database at once and write 5 sessions each."""
    results = await run_workers([["write", pg_url, "5", f"proc{i}"] for i in range(4)], tmp_path)
    assert [len(ids) for ids in results] == [5, 5, 5, 5]
    await _check_sessions(pg_url, [sid for ids in results for sid in ids])


@pytest.mark.slow
async def test_four_processes_race_to_claim_one_session(db_url: str, tmp_path: Path) -> None:
    """Four processes claim the same session at the same moment: exactly one wins."""
    events = simple_session(1)
    sid = events[0].session_id
    async with await Store.open(db_url) as store:
        await store.write(events[:1])
        won = await run_workers([["claim", db_url, sid, f"w{i}"] for i in range(4)], tmp_path)
        assert sorted(won) == [False, False, False, True]
        lease = await store.lease_of(sid)
    assert lease is not None and lease[0] == f"w{won.index(True)}"
