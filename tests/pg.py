"""A throwaway PostgreSQL server for the store tests, CI and ``bench/store.py``.

:func:`start_cluster` runs ``initdb`` in a fresh temporary directory, starts the server
with ``pg_ctl`` on 127.0.0.1 and a free port (no Unix socket outside that directory),
and creates the database ``thinktank``; :meth:`Cluster.stop` stops it and deletes the
directory. PostgreSQL refuses to run as root, so when this runs as root the cluster
belongs to the ``postgres`` user (Debian's package creates it). The binaries come from
``$THINKTANK_PG_BINDIR``, the newest ``/usr/lib/postgresql/*/bin`` or ``PATH``.

From a shell (``.ci/run``), with the venv's python, from the repo root::

    read -r dir url < <(python -m tests.pg start)   # prints "<directory> <url>"
    python -m tests.pg stop "$dir"

For pytest, the fixtures below (import them into a test module):

- ``pg_server`` (session): the URL of a server. ``$THINKTANK_TEST_PG_URL`` when set
  (its role must be allowed to CREATE DATABASE); else a throwaway cluster, started once
  for the whole run and stopped at its end, when the binaries exist; else the
  PostgreSQL tests are skipped, unless ``THINKTANK_REQUIRE_PG=1``, which makes a
  missing server a failure.
- ``pg_url`` (function): a fresh, empty database on that server, dropped afterwards.
- ``db_url``: parametrised over ``sqlite`` (a file in the test's tmp dir) and
  ``postgres`` (``pg_url``): the backends every store test runs on.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import glob
import importlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

__all__ = [
    "BACKENDS",
    "PG_URL_ENV",
    "REQUIRE_PG_ENV",
    "Cluster",
    "admin",
    "create_database",
    "db_url",
    "drop_database",
    "find_bindir",
    "pg_server",
    "pg_url",
    "start_cluster",
]

PG_URL_ENV = "THINKTANK_TEST_PG_URL"
"""A server to test against (``postgresql://user@host:port/db``)."""
REQUIRE_PG_ENV = "THINKTANK_REQUIRE_PG"
"""``1``: a missing PostgreSQL fails the PostgreSQL tests instead of skipping them."""
BINDIR_ENV = "THINKTANK_PG_BINDIR"
"""Where ``initdb`` and ``pg_ctl`` are, when not in the usual places."""
BACKENDS = ("sqlite", "postgres")
"""The store backends the tests are parametrised over (their test ids)."""

# Read at import (collection) time: the suite's autouse fixture clears THINKTANK_*
# variables around each test.
_ENV_URL = os.environ.get(PG_URL_ENV) or None
_REQUIRE = os.environ.get(REQUIRE_PG_ENV) == "1"

_SUPERUSER = "postgres"
_DATABASE = "thinktank"
_T = TypeVar("_T")


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when there is none."""
    candidates: list[Path] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]))

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)
    candidates += [Path(p).parent for p in found]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway cluster."""

    directory: Path
    """Holds ``data/`` (the cluster), the server log and its socket."""
    port: int
    """The TCP port on 127.0.0.1."""
    bindir: Path
    """Where its binaries are."""
    os_user: str | None
    """The OS user that owns it (None: the current user)."""
    options: str = ""
    """The server's ``-c`` settings, which a restart passes again."""

    @property
    def url(self) -> str:
        """The URL of its ``thinktank`` database (trust authentication, no password)."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{_DATABASE}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Idempotent."""
        stop_directory(self.directory, bindir=self.bindir, os_user=self.os_user)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (fast shutdown: every connection is cut), leave it down for
        ``down_s`` seconds (connections are refused), and start it on the same port."""
        data = str(self.directory / "data")
        pg_ctl = str(self.bindir / "pg_ctl")
        _run([pg_ctl, "stop", "-D", data, "-m", "fast", "-w"], os_user=self.os_user)
        time.sleep(down_s)
        _start(pg_ctl, self.directory, f"-p {self.port} {self.options}", os_user=self.os_user)


def _run(cmd: list[str], *, os_user: str | None, timeout: float = 120) -> None:
    """Run ``cmd`` (as ``os_user`` when given); raise with its output when it fails."""
    kwargs: dict[str, Any] = {}
    if os_user is not None:
        entry = pwd.getpwnam(os_user)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "LANG": "C",
        "HOME": "/tmp" if os_user is not None else os.environ.get("HOME", "/tmp"),
        "TZ": "UTC",
    }
    done = subprocess.run(
        cmd,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}): {output}")


def _owner() -> str | None:
    """Who the cluster runs as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_SUPERUSER)
    except KeyError:
        raise RuntimeError(
            "running as root and there is no 'postgres' user to own the cluster "
            "(PostgreSQL refuses to run as root)"
        ) from None
    return _SUPERUSER


def _start(pg_ctl: str, directory: Path, options: str, *, os_user: str | None) -> None:
    """Start the cluster in ``directory`` with the server ``options``; wait until it
    accepts connections."""
    _run(
        [
            pg_ctl,
            "start",
            "-D",
            str(directory / "data"),
            "-l",
            str(directory / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
        ],
        os_user=os_user,
    )


def start_cluster(*, durable: bool = False, bindir: Path | None = None) -> Cluster:
    """Create and start a throwaway cluster with a ``thinktank`` database.

    Args:
        durable: Keep PostgreSQL's default durability (fsync, synchronous commit). By
            default they are off: a test cluster is thrown away, never recovered.
        bindir: Where ``initdb`` and ``pg_ctl`` are; default :func:`find_bindir`.

    Raises:
        RuntimeError: no binaries, or initdb or the server failed (with their output).
    """
    bindir = bindir or find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb found)")
    os_user = _owner()
    directory = Path(tempfile.mkdtemp(prefix="thinktank-pg-"))
    try:
        if os_user is not None:
            entry = pwd.getpwnam(os_user)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        data = directory / "data"
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                _SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            os_user=os_user,
        )
        settings = [
            "listen_addresses=127.0.0.1",
            f"unix_socket_directories={directory}",
            "max_connections=200",
            "timezone=UTC",
        ]
        if not durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        options = " ".join(f"-c {s}" for s in settings)
        last: RuntimeError | None = None
        for _ in range(3):  # the free port may be taken before the server binds it
            port = _free_port()
            try:
                _start(str(bindir / "pg_ctl"), directory, f"-p {port} {options}", os_user=os_user)
            except RuntimeError as exc:
                last = exc
                continue
            cluster = Cluster(
                directory=directory, port=port, bindir=bindir, os_user=os_user, options=options
            )
            try:
                _run(
                    [
                        str(bindir / "createdb"),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-U",
                        _SUPERUSER,
                        _DATABASE,
                    ],
                    os_user=os_user,
                )
            except BaseException:
                cluster.stop()
                raise
            return cluster
        log = directory / "server.log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {last}\n{detail}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def stop_directory(
    directory: Path, *, bindir: Path | None = None, os_user: str | None = None
) -> None:
    """Stop the cluster in ``directory`` (if it runs) and delete the directory."""
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        bindir = bindir or find_bindir()
        if bindir is not None:
            if os_user is None and os.geteuid() == 0:
                os_user = _SUPERUSER
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run(
                    [str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"],
                    os_user=os_user,
                    timeout=60,
                )
    shutil.rmtree(directory, ignore_errors=True)


# -- databases -------------------------------------------------------------------------


def _in_thread(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to the end on a private event loop in a worker thread.

    Usable from sync code whether or not an event loop runs in this thread.
    """

    async def main() -> _T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def _with_database(url: str, name: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{name}"


async def admin(url: str, sql: str) -> None:
    """Run ``sql`` on a connection of its own to ``url`` (outside any transaction, as
    CREATE DATABASE needs)."""
    asyncpg: Any = importlib.import_module("asyncpg")  # optional, untyped

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(server_url: str, name: str | None = None) -> str:
    """Create an empty database on the server of ``server_url``; return its URL."""
    name = name or f"tt_{uuid.uuid4().hex[:16]}"
    _in_thread(lambda: admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE template0'))
    return _with_database(server_url, name)


def drop_database(url: str) -> None:
    """Drop the database of ``url``, disconnecting whoever is still connected."""
    name = url.rpartition("/")[2]
    server = _with_database(url, "postgres")
    _in_thread(lambda: admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- pytest fixtures -------------------------------------------------------------------


class _Shared:
    """One cluster for the whole pytest run, however many modules import the fixture."""

    cluster: Cluster | None = None
    users = 0


def _unavailable(reason: str) -> NoReturn:
    """Skip the PostgreSQL tests for ``reason``, or fail them under THINKTANK_REQUIRE_PG=1."""
    if _REQUIRE:
        pytest.fail(f"{REQUIRE_PG_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for the store tests (see the module docstring)."""
    # The store needs asyncpg for PostgreSQL (the dev and postgres extras bring it); a
    # server without it is a skip, not an error in every PostgreSQL test.
    if importlib.util.find_spec("asyncpg") is None:
        _unavailable("asyncpg is not installed: pip install -e '.[postgres]'")
    if _ENV_URL is not None:
        yield _ENV_URL
        return
    if _Shared.cluster is None:
        if find_bindir() is None:
            _unavailable(
                f"PostgreSQL is not available: set {PG_URL_ENV} or install it "
                "(apt-get install postgresql)"
            )
        _Shared.cluster = start_cluster()
    _Shared.users += 1
    try:
        yield _Shared.cluster.url
    finally:
        _Shared.users -= 1
        if _Shared.users == 0:
            cluster, _Shared.cluster = _Shared.cluster, None
            cluster.stop()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh database on the test server, dropped after the test."""
    url = create_database(pg_server)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each backend: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "tt.db")
    return str(request.getfixturevalue("pg_url"))


# -- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``start`` prints ``<directory> <url>`` of a new cluster; ``stop DIR`` ends it."""
    parser = argparse.ArgumentParser(prog="python -m tests.pg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a throwaway cluster")
    start.add_argument("--durable", action="store_true", help="keep fsync and sync commit")
    stop = sub.add_parser("stop", help="stop a cluster and delete its directory")
    stop.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "start":
        started = time.monotonic()
        try:
            cluster = start_cluster(durable=args.durable)
        except RuntimeError as exc:
            print(f"tests.pg: {exc}", file=sys.stderr)
            return 1
        print(f"{cluster.directory} {cluster.url}")
        print(f"tests.pg: started in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return 0
    stop_directory(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
