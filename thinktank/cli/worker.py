"""``thinktank worker`` and ``thinktank workers``: the pool of processes that run queued
sessions (``pip install "thinktank[distributed]"``; :mod:`thinktank.distributed`).

``worker`` exits 0 once drained (SIGTERM or Ctrl-C), 2 on bad input (no DBOS, an
in-memory database), 1 when the database fails, and 4 when it finds it was declared
dead by another worker (it lost the database for longer than ``--ttl``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from thinktank.store._workers import WorkerInfo

from thinktank.cli._shared import _db_option, _json_option, _run_async
from thinktank.cli.queue import check_pool

__all__ = ["one_line_log", "worker_command", "workers_command"]

_TRACEBACK = "Traceback (most recent call last):"


def one_line_log(record: logging.LogRecord) -> str:
    """A log record of DBOS as one line: its message without the traceback DBOS puts in
    some (only the exception it ends with) and without SQLAlchemy's indented hints and
    "Background on this error" links. While the database is away, DBOS's threads log a
    few such records a second; each stays one line in the worker's output."""
    head, found, trace = record.getMessage().partition(_TRACEBACK)

    def kept(text: str) -> list[str]:
        return [
            line.rstrip()
            for line in text.splitlines()
            if line.strip() and not line[0].isspace() and not line.startswith("(Background")
        ]

    parts = kept(head)
    if found and kept(trace):
        parts.append(kept(trace)[-1])
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        parts.append(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    return " ".join(parts)


class _SayHandler(logging.Handler):
    """DBOS's records, one line each, where the worker's own lines go."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__()
        self._say = say

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._say(f"dbos {record.levelname.lower()}: {one_line_log(record)}")
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


@click.command("worker")
@_db_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Sessions each worker runs at once (one value for the whole pool: the last "
    "worker started sets it).",
)
@click.option(
    "--name",
    default=None,
    help="This worker's name in `thinktank workers` (default: the host name).",
)
@click.option(
    "--ttl",
    type=click.FloatRange(min=1.0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="A worker silent this long is dead, and a live one finishes its sessions.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0.0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM, wait this long for running sessions, then hand the rest back.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05, max=60.0),
    default=0.25,
    show_default=True,
    metavar="SECONDS",
    help="How often the pool looks for queued sessions (one value for the whole pool: "
    "the last worker started sets it). Longer: fewer database round trips while idle, a "
    "longer wait before a queued session starts.",
)
def worker_command(
    db: str | None,
    concurrency: int,
    name: str | None,
    ttl: float,
    drain_timeout: float,
    poll_interval: float,
) -> None:
    """Run queued sessions (from `run --queue`, `run-many --queue`, `eval --queue`,
    `serve --queue`) until SIGTERM; any number of workers share one database."""
    check_pool(db)  # before anything starts

    def say(line: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)

    # This process is the worker: DBOS's log (its own console handler is added only to
    # a logger with none) goes to the same place as ours, one line a record.
    dbos_log = logging.getLogger("dbos")
    dbos_log.addHandler(_SayHandler(say))
    dbos_log.propagate = False

    async def go() -> int:
        from thinktank.distributed.worker import serve_worker

        return await serve_worker(
            db,
            name=name,
            concurrency=concurrency,
            ttl_s=ttl,
            drain_s=drain_timeout,
            poll_s=poll_interval,
            say=say,
        )

    sys.exit(_run_async(go))


@click.command("workers")
@_db_option
@_json_option
@click.option("--all", "show_all", is_flag=True, help="Also list dead workers not yet recovered.")
def workers_command(db: str | None, as_json: bool, show_all: bool) -> None:
    """List the workers of the pool: alive or not, load, version."""
    from thinktank.cli.render import print_workers
    from thinktank.store import Store

    async def go() -> list[WorkerInfo]:
        async with await Store.open(db, read_only=True) as store:
            return await store.list_workers()

    rows = [w for w in _run_async(go) if show_all or w.alive]
    if as_json:
        click.echo(json.dumps([w.model_dump(mode="json") for w in rows], indent=2))
    else:
        print_workers(rows)
