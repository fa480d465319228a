"""``--queue``: the commands that hand their sessions to the pool of ``thinktank worker``
processes (``pip install "thinktank[distributed]"``) instead of running them here.

A queued session belongs to the pool, not to the command that submitted it: the
command waits for it (reading its state from the store) and prints the result exactly
as a local run does, but Ctrl-C only stops the waiting. The session goes on; ``thinktank
show ID`` tells how it ended, and ``thinktank sessions`` which worker runs it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from thinktank.cli._shared import EXIT_INTERRUPTED, _fail, _run_async

if TYPE_CHECKING:
    from thinktank.batch import BatchItem, BatchResult
    from thinktank.distributed.executor import DistributedExecutor
    from thinktank.engine.result import SessionResult
    from thinktank.session.spec import SessionSpec

__all__ = ["check_pool", "refuse_with_queue", "run_many_queued", "run_queued_session"]

Say = Callable[[str], None]

POLL_S = 0.5
"""How often the waiting command reads the sessions' states (status and worker)."""


def check_pool(db: str | None, *, option: str | None = None) -> None:
    """Exit 2 with one line when the pool cannot be used: no DBOS, or a database no
    worker process can open (in-memory SQLite); the line names ``option`` when given.
    Nothing is written before this (``worker``, ``--queue`` on ``run``, ``run-many``
    and ``serve``)."""
    from thinktank.distributed import require_dbos, system_database_url
    from thinktank.errors import UsageError
    from thinktank.store import default_db_url, normalize_db_url

    try:
        require_dbos()
        system_database_url(normalize_db_url(db or default_db_url()))
    except UsageError as exc:
        _fail([f"{option}: {exc}"] if option else str(exc).splitlines())


def _still_runs(session_id: str | None) -> NoReturn:
    """Ctrl-C while waiting: the session is the pool's, so it is not cancelled."""
    if session_id is None:
        click.echo("interrupted before the session was queued", err=True)
    else:
        click.echo(
            f"session {session_id} still runs on the pool: thinktank show {session_id}",
            err=True,
        )
    sys.exit(EXIT_INTERRUPTED)


def _say(enabled: bool) -> Say:
    start = time.perf_counter()

    def say(line: str) -> None:
        if enabled:
            click.echo(f"[{time.perf_counter() - start:7.2f}s] {line}", err=True)

    return say


async def _watch(pool: DistributedExecutor, session_ids: Sequence[str], say: Say) -> None:
    """Say each change of a session's status or worker until cancelled."""
    import anyio

    from thinktank.store._read import worker_name

    seen: dict[str, tuple[str, str | None]] = {}
    while True:
        states = await pool.store.session_states(list(session_ids))
        for sid, (status, owner) in states.items():
            now = (status, worker_name(owner))
            if seen.get(sid) != now:
                seen[sid] = now
                where = f" on worker {now[1]}" if now[1] else ""
                say(f"session {sid}: {status}{where}")
        await anyio.sleep(POLL_S)


def run_queued_session(
    spec: SessionSpec,
    values: Mapping[str, Any],
    *,
    db: str | None,
    source: str,
    no_wait: bool,
    progress: bool,
) -> SessionResult | None:
    """Submit one session to the pool; its result once a worker ended it (None with
    ``no_wait``: its id is printed on stdout and nothing waits)."""
    import anyio

    from thinktank.distributed.executor import DistributedExecutor

    submitted: list[str] = []
    say = _say(progress)

    async def go() -> SessionResult | None:
        async with DistributedExecutor(db=db, poll_s=POLL_S) as pool:
            sid = await pool.submit(spec, inputs=values, source=source)
            submitted.append(sid)
            if no_wait:
                click.echo(sid)
                return None
            click.echo(f"session {sid} queued (thinktank show {sid})", err=True)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch, pool, [sid], say)
                result = await pool.wait(sid)
                tg.cancel_scope.cancel()
            return result

    try:
        return _run_async(go)
    except KeyboardInterrupt:
        _still_runs(submitted[0] if submitted else None)


def run_many_queued(
    spec: SessionSpec,
    rows: Sequence[Mapping[str, Any]],
    *,
    db: str | None,
    source: str,
    on_done: Callable[[BatchItem], None],
) -> BatchResult:
    """Submit one session per row to the pool and report each as it ends."""
    from thinktank.batch import run_many_on
    from thinktank.distributed.executor import DistributedExecutor

    async def go() -> BatchResult:
        async with DistributedExecutor(db=db, poll_s=POLL_S) as pool:
            return await run_many_on(pool, spec, rows, on_done=on_done, source=source)

    try:
        return _run_async(go)
    except KeyboardInterrupt:
        click.echo(
            "interrupted: the queued sessions still run on the pool (thinktank sessions)",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)


def refuse_with_queue(given: Mapping[str, bool]) -> None:
    """Exit 2 naming the options that mean nothing for a queued session."""
    bad = [name for name, present in given.items() if present]
    if bad:
        _fail([f"{', '.join(bad)}: not with --queue (the workers run the session)"])
