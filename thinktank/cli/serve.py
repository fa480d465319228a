"""``thinktank serve``: run the HTTP server with uvicorn.

This module owns the command: it checks where the server may listen (a non-loopback
host needs a live API key in the database; ``--no-auth`` is for loopback only; several
``--workers`` need a database they all share, so not an in-memory one; so does
``--queue``, which also needs the ``distributed`` extra), passes
the settings to each uvicorn worker through the environment
(:func:`thinktank.server.app.app_from_env`) and runs uvicorn, whose graceful shutdown
it bounds (``--graceful-timeout``). The server itself is
:mod:`thinktank.server`.
"""

from __future__ import annotations

import ipaddress
import os

import click

from thinktank.cli._shared import _db_option, _fail, _run_async
from thinktank.errors import UsageError

__all__ = ["is_loopback", "serve_command"]


def _has_keys(db: str | None) -> bool:
    """Whether the database has a key that is not revoked (no database: none)."""
    from thinktank.errors import NoDatabaseError
    from thinktank.store import Store

    async def go() -> bool:
        try:
            store = await Store.open(db, read_only=True)
        except NoDatabaseError:
            return False
        async with store:
            return any(key.revoked_at is None for key in await store.api_keys())

    return _run_async(go)


def _private_to_a_process(db: str | None) -> bool:
    """Whether ``db`` is an in-memory SQLite database, which each worker would have to
    itself (a SQLite file is shared: WAL, a busy timeout and ``BEGIN IMMEDIATE`` writes
    keep keys, budgets and sessions correct across processes)."""
    from thinktank.store import default_db_url, in_memory_db, normalize_db_url

    return in_memory_db(normalize_db_url(db or default_db_url()))


def _check_queue(db: str | None) -> None:
    """Fail in one line (exit 2) when ``--queue`` cannot work: no DBOS, or a database
    no worker process can open."""
    from thinktank.cli.queue import check_pool

    if _private_to_a_process(db):
        _fail(
            [
                "--queue needs a database the workers share: an in-memory SQLite "
                "database is private to this process; give a file or a PostgreSQL URL"
            ]
        )
    check_pool(db, option="--queue")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@_db_option
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Processes."
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Serve every request without an API key (only on a loopback host).",
)
@click.option(
    "--graceful-timeout",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="On SIGTERM, seconds requests in flight may take to finish before open streams "
    "close and running sessions stop (stored as interrupted, resumable).",
)
@click.option(
    "--queue",
    is_flag=True,
    help="POST /v1/sessions queues sessions for the 'thinktank worker' processes on the "
    "same database instead of running them in this server (needs the distributed extra "
    "and a SQLite file or PostgreSQL). Chat completions still run in this server: they "
    "are interactive.",
)
def serve_command(
    host: str,
    port: int,
    db: str | None,
    workers: int,
    no_auth: bool,
    graceful_timeout: int,
    queue: bool,
) -> None:
    """Serve thinktank over HTTP, with uvicorn.

    \b
    Without --no-auth every request needs an API key; a server on a non-loopback
    host must have keys and refuses --no-auth.
    """
    try:
        import uvicorn

        from thinktank.server.app import ENV_DB, ENV_NO_AUTH, ENV_QUEUE
    except ImportError as exc:
        _fail([f'the server needs its extra: pip install "thinktank[server]" ({exc.name})'])
    try:
        from thinktank.server.keys import check_settings

        check_settings()
    except UsageError as exc:
        _fail([str(exc)])
    if workers > 1 and _private_to_a_process(db):
        _fail(
            [
                f"--workers {workers} needs a database every worker shares: an in-memory "
                "SQLite database is private to each; give a file or a PostgreSQL URL"
            ]
        )
    if queue:
        _check_queue(db)
    if not is_loopback(host):
        if no_auth:
            _fail([f"--no-auth serves anyone: only on a loopback host, not {host!r}"])
        if not _has_keys(db):
            _fail(
                [
                    f"serving on {host!r} (not loopback) needs API keys: "
                    "create one with 'thinktank keys create --name NAME'"
                ]
            )
    if db is not None:
        os.environ[ENV_DB] = db
    os.environ[ENV_NO_AUTH] = "1" if no_auth else "0"
    os.environ[ENV_QUEUE] = "1" if queue else "0"
    uvicorn.run(
        "thinktank.server.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        # Without a bound, an open events stream (a watched session) holds shutdown for
        # as long as its session runs: a deploy would wait on every watcher.
        timeout_graceful_shutdown=graceful_timeout,
    )
