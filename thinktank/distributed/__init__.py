"""Sessions run by a pool of worker processes on DBOS (``pip install "thinktank[distributed]"``).

DBOS (durable workflows and queues in the database we already use) carries the
sessions between processes; thinktank's store stays the one record of each session.

- A session is queued in the store first (``thinktank.executor.enqueue``: spec,
  inputs, provenance), then enqueued on the DBOS queue :data:`QUEUE` as the workflow
  :data:`WORKFLOW` with the session id as both its only argument and its workflow id.
  DBOS's rows hold ids, never model text.
- The workflow is one step, ``thinktank.executor.run_queued(session_id)``, so it is
  deterministic by construction; the session's own durability is the store's (a
  recovered session is resumed: finished calls are served from the store).
- ``thinktank worker`` (:mod:`thinktank.distributed.worker`) launches DBOS, dequeues
  sessions, beats in ``thinktank_workers`` and recovers dead workers' sessions.
- :class:`~thinktank.distributed.executor.DistributedExecutor` is the submitting side
  of the executor seam (``thinktank.executor.SessionExecutor``), built on
  ``DBOSClient``: it never launches DBOS in the caller's process.

This module imports no DBOS code: ``import dbos`` happens in the executor's
``__aenter__`` and in the worker command.
"""

from __future__ import annotations

from pathlib import Path

from thinktank.errors import UsageError

__all__ = [
    "APP_NAME",
    "APP_VERSION",
    "QUEUE",
    "WORKFLOW",
    "require_dbos",
    "system_database_url",
]

APP_NAME = "thinktank"
"""The DBOS application name of every worker and client."""
QUEUE = "thinktank_sessions"
"""The DBOS queue sessions wait on."""
WORKFLOW = "thinktank.session"
"""The registered name of the session workflow."""
APP_VERSION = "thinktank-wf-1"
"""The pinned DBOS application version. Workers dequeue and recover only workflows of
their own version, and DBOS's default version is a hash of the code: pinned, a worker of
a newer thinktank finishes sessions queued or started by an older one (the session's
progress is in the store, which ``resume`` reads whatever wrote it). Bump it only when
the workflow's arguments or its steps change; then drain the old workers first."""


def require_dbos() -> None:
    """Raise a one-line UsageError when the ``distributed`` extra is not installed."""
    try:
        import dbos  # noqa: F401
    except ImportError:
        raise UsageError(
            'distributed sessions need DBOS: pip install "thinktank[distributed]"'
        ) from None


def system_database_url(store_url: str) -> str:
    """The DBOS system database for a store URL (as ``Store.url`` gives it).

    PostgreSQL: the same database (DBOS keeps its tables in schema ``dbos``), through
    its own driver. SQLite: a file beside the store's (``<file>.dbos.sqlite``), so
    DBOS's writers never wait on the store's write lock; one machine only.

    Raises:
        UsageError: the store is an in-memory SQLite database, which no other process
            can reach.
    """
    from sqlalchemy.engine import make_url

    from thinktank.store import in_memory_db

    url = make_url(store_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    if backend == "sqlite":
        if in_memory_db(store_url):
            raise UsageError(
                "distributed sessions need a database other processes can open: "
                "a SQLite file or PostgreSQL, not an in-memory database"
            )
        return f"sqlite:///{Path(url.database or '').resolve()}.dbos.sqlite"
    raise UsageError(f"distributed sessions run on SQLite or PostgreSQL, not {backend}")
