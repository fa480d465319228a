"""``--queue`` on the command line: sessions handed to real ``thinktank worker``
processes (tests/workerproc.py) on a SQLite file or PostgreSQL, calling a fake OpenAI
server over loopback; and which worker runs what (``sessions``, ``show``, ``workers``).

Each command runs as a user runs it: ``python -m thinktank ...`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from . import pg
from .fakeserver import FakeServer, Fault, run_fake_server
from .workerproc import REPO, fan_session, workers

pytest.importorskip("dbos")

pg_server = pg.pg_server
pg_url = pg.pg_url

WAIT_S = 120.0
"""Deadline of any one wait in these tests (never a measured time: a hang fails)."""


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A fake OpenAI server answering after a short latency."""
    with run_fake_server() as server:
        server.answer_delay_s = 0.1
        yield server


def session_file(tmp_path: Path, url: str) -> Path:
    """Three models asked at once, merged by a judge: the pool's usual session shape."""
    model = {"provider": "openai", "base_url": url + "/v1", "max_retries": 0, "timeout_s": 60}
    data = fan_session({name: {**model, "model": name} for name in ("a", "b", "c", "j")})
    path = tmp_path / "fan.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def thinktank(
    *args: str, env: dict[str, str] | None = None, timeout: float = WAIT_S
) -> subprocess.CompletedProcess[str]:
    """``python -m thinktank ARGS`` from the repository root; its result."""
    return subprocess.run(
        [sys.executable, "-m", "thinktank", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sessions(db: str) -> list[dict[str, Any]]:
    done = thinktank("sessions", "--db", db, "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def listed(db: str) -> list[Any]:
    """The stored sessions, read in this process (fast enough to catch a running one)."""
    from thinktank.store import Store

    async def go() -> list[Any]:
        async with await Store.open(db, read_only=True) as store:
            return await store.list_sessions()

    return anyio.run(go)


def wait_until_running_on(db: str, worker: str) -> str:
    """The id of the first session that shows ``worker`` as its worker."""
    deadline = time.monotonic() + WAIT_S
    while True:
        running = [row.id for row in listed(db) if row.worker == worker]
        if running:
            return running[0]
        assert time.monotonic() < deadline, f"no session ever ran on {worker}"
        time.sleep(0.05)


def calls_per_question(fake: FakeServer) -> dict[str, int]:
    """How many requests the three asked models (not the judge) got per question."""
    counts: dict[str, int] = {}
    for request in fake.requests:
        if request.model == "j":
            continue
        for message in request.json.get("messages", []):
            for token in str(message.get("content", "")).split():
                if token.startswith("question-"):
                    counts[token] = counts.get(token, 0) + 1
    return counts


@pytest.mark.slow
def test_run_queue_waits_for_the_worker_and_prints_its_result(
    tmp_path: Path, fake: FakeServer
) -> None:
    """run --queue: a worker runs the session; the command prints its result as run does."""
    db = str(tmp_path / "tt.db")
    spec = session_file(tmp_path, fake.url)
    fake.add_faults(Fault.slow(2.0), model="a")  # running for a few of the waiter's reads
    with workers(db, ["w1"], log_dir=tmp_path):
        done = thinktank("run", str(spec), "--db", db, "-i", "q=question-1", "--queue", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert "queued" in done.stderr and result["session_id"] in done.stderr
    assert "on worker w1" in done.stderr  # the status change, with who runs it
    show = thinktank("show", result["session_id"], "--db", db, "--json")
    assert json.loads(show.stdout)["status"] == "completed"
    assert len(fake.requests) == 4  # run once: three models and the judge


@pytest.mark.slow
def test_no_wait_prints_the_id_and_show_follows_it(tmp_path: Path, fake: FakeServer) -> None:
    """run --queue --no-wait exits at once with the id; the pool runs it; show tells."""
    db = str(tmp_path / "tt.db")
    spec = session_file(tmp_path, fake.url)
    done = thinktank("run", str(spec), "--db", db, "-i", "q=x", "--queue", "--no-wait")
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip()
    assert [row["status"] for row in sessions(db)] == ["queued"]  # no worker yet
    with workers(db, ["w1"], log_dir=tmp_path):
        deadline = time.monotonic() + WAIT_S
        while json.loads(thinktank("show", sid, "--db", db, "--json").stdout)["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, "the worker never finished the session"
            time.sleep(0.2)
    stored = json.loads(thinktank("show", sid, "--db", db, "--json").stdout)
    assert stored["status"] == "completed"


@pytest.mark.slow
def test_run_many_queue_splits_the_sessions_between_two_workers(
    tmp_path: Path, fake: FakeServer
) -> None:
    """run-many --queue: every row runs once, on both workers, reported as run-many does."""
    db = str(tmp_path / "tt.db")
    spec = session_file(tmp_path, fake.url)
    n = 12
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"q": f"question-{i}"}) + "\n" for i in range(n)))
    with workers(db, ["w1", "w2"], "--concurrency", "2", log_dir=tmp_path) as pool:
        done = thinktank("run-many", str(spec), "--inputs", str(inputs), "--db", db, "--queue")
    ran = [int(re.findall(r"drained: (\d+) finished", w.output())[-1]) for w in pool]
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(": completed ") == n
    assert f"{n}/{n}" in done.stderr
    assert calls_per_question(fake) == {f"question-{i}": 3 for i in range(n)}
    assert sum(ran) == n and min(ran) > 0, ran  # both workers ran some


@pytest.mark.slow
def test_sessions_and_show_name_the_worker_while_it_runs(tmp_path: Path, fake: FakeServer) -> None:
    """sessions (table and --json) and show name the worker that runs a session."""
    db = str(tmp_path / "tt.db")
    spec = session_file(tmp_path, fake.url)
    fake.add_faults(Fault.slow(60.0), model="a")  # the session stays running while we look
    with workers(db, ["busy-w"], "--drain-timeout", "0", log_dir=tmp_path):
        done = thinktank("run", str(spec), "--db", db, "-i", "q=x", "--queue", "--no-wait")
        sid = done.stdout.strip()
        assert wait_until_running_on(db, "busy-w") == sid
        table = thinktank("sessions", "--db", db)
        rows = sessions(db)
        show = thinktank("show", sid, "--db", db)
    assert "busy-w" in table.stdout
    assert [(r["id"], r["status"], r["worker"]) for r in rows] == [(sid, "running", "busy-w")]
    assert "worker: busy-w" in show.stdout
    # Handed back by the drain: no worker holds it any more.
    assert [r["worker"] for r in sessions(db)] == [None]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """run --queue with a bad input: one line, exit 2, no session queued."""
    db = str(tmp_path / "tt.db")
    spec = session_file(tmp_path, "http://127.0.0.1:9")
    done = thinktank("run", str(spec), "--db", db, "--queue")  # q is missing
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert not Path(db).exists() or sessions(db) == []
    memory = thinktank("run", str(spec), "--db", ":memory:", "-i", "q=x", "--queue")
    assert memory.returncode == 2
    assert memory.stderr.strip().splitlines() == [memory.stderr.strip()]
    alone = thinktank("run", str(spec), "--db", db, "-i", "q=x", "--no-wait")
    assert alone.returncode == 2 and "--no-wait needs --queue" in alone.stderr
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"q": "a"}\n')
    both = thinktank(
        "run-many", str(spec), "--inputs", str(inputs), "--db", db, "--queue", "--concurrency", "3"
    )
    assert both.returncode == 2 and "--concurrency" in both.stderr


@pytest.mark.slow
def test_run_queue_keeps_the_token_and_cost_limits(tmp_path: Path, fake: FakeServer) -> None:
    """run --queue --max-tokens: the worker keeps the limit as a local run does (a call
    reserves about 515 tokens, so 520 lets two of the four calls through, each way);
    --max-cost on models with no price is refused before anything is queued."""
    db = str(tmp_path / "tt.db")
    spec = session_file(tmp_path, fake.url)
    args = ("run", str(spec), "-i", "q=question-1", "--max-tokens", "520", "--json")
    with workers(db, ["w1"], log_dir=tmp_path):
        queued = thinktank(*args, "--db", db, "--queue")
    assert queued.returncode == 0, queued.stderr
    assert len(fake.requests) == 2
    local = thinktank(*args, "--db", str(tmp_path / "local.db"))
    assert local.returncode == 0, local.stderr
    assert len(fake.requests) == 4

    on_pool, here = json.loads(queued.stdout), json.loads(local.stdout)
    assert on_pool["status"] == here["status"] == "completed"  # two answers agree
    assert [c["status"] for c in on_pool["steps"]["s"]["calls"]] == ["ok", "ok"]
    assert [c["status"] for c in here["steps"]["s"]["calls"]] == ["ok", "ok"]

    priced = thinktank("run", str(spec), "--db", db, "-i", "q=x", "--queue", "--max-cost", "1")
    assert priced.returncode == 2
    assert priced.stderr.strip().splitlines() == [priced.stderr.strip()]
    assert "budget.max_cost_usd: a cost budget needs a price" in priced.stderr
    assert len(sessions(db)) == 1  # only the first


@pytest.mark.slow
def test_ctrl_c_stops_the_waiting_not_the_session(tmp_path: Path, fake: FakeServer) -> None:
    """Ctrl-C while run --queue waits: exit 130, the session goes on and completes."""
    db = str(tmp_path / "tt.db")
    spec = session_file(tmp_path, fake.url)
    fake.add_faults(Fault.slow(5.0), model="a")  # long enough to interrupt the waiting first
    with workers(db, ["w1"], log_dir=tmp_path):
        waiter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "thinktank",
                *("run", str(spec), "--db", db, "-i", "q=x"),
                "--queue",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        sid = wait_until_running_on(db, "w1")
        waiter.send_signal(signal.SIGINT)
        _, err = waiter.communicate(timeout=WAIT_S)
        assert waiter.returncode == 130, err
        assert f"session {sid} still runs on the pool: thinktank show {sid}" in err
        deadline = time.monotonic() + WAIT_S
        while listed(db)[0].status == "running":
            assert time.monotonic() < deadline, "the session never finished"
            time.sleep(0.1)
    assert listed(db)[0].status == "completed"


@pytest.mark.slow
def test_eval_queue_runs_the_samples_on_the_pool(tmp_path: Path, fake: FakeServer) -> None:
    """eval --queue: every sample runs on a worker, linked to its session, with the
    figures a local run of the same experiment gives."""
    from .test_eval_runner import TARGET, write_config, write_experiment

    env = {"THINKTANK_CONFIG": str(write_config(tmp_path / "thinktank.toml", fake, ["a", "b"]))}
    # Both models right on item 0 only, so they agree: a figure worth comparing that no
    # tie between two different answers (broken by arrival order) can change.
    fake.set_reply("a", f"{TARGET}-0")
    fake.set_reply("b", f"{TARGET}-0")
    path = write_experiment(tmp_path, items=3)
    args = ("eval", str(path), "--yes", "--json", "--no-report", "--no-progress")
    with workers(str(tmp_path / "pool.db"), ["ew"], log_dir=tmp_path, env=env) as pool:
        queued = thinktank(*args, "--db", str(tmp_path / "pool.db"), "--queue", env=env)
    assert queued.returncode == 0, queued.stderr
    assert "drained: 6 finished" in pool[0].output()  # 3 items x 2 configurations
    assert len(fake.requests) == 9
    local = thinktank(*args, "--db", str(tmp_path / "local.db"), env=env)
    assert local.returncode == 0, local.stderr
    keep = ("total", "answered", "correct", "scored", "abstained", "calls", "accuracy")
    on_pool, here = json.loads(queued.stdout), json.loads(local.stdout)
    assert {k: on_pool[k] for k in keep} == {k: here[k] for k in keep}
    assert on_pool["correct"] == 2  # item 0 on both configurations
    # Every sample is linked to a session the worker ran: a rerun calls nothing.
    again = thinktank(*args, "--db", str(tmp_path / "pool.db"), "--queue", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reused"] == 6
    assert len(fake.requests) == 18  # the local run's 9, nothing more


def test_workers_lists_live_workers(tmp_path: Path) -> None:
    """workers (table and --json) lists the live workers with their names."""
    db = str(tmp_path / "tt.db")
    with workers(db, ["alpha", "beta"], log_dir=tmp_path):
        table = thinktank("workers", "--db", db)
        listed = json.loads(thinktank("workers", "--db", db, "--json").stdout)
    assert "alpha" in table.stdout and "beta" in table.stdout
    assert sorted(w["name"] for w in listed) == ["alpha", "beta"]
    assert all(w["alive"] for w in listed)


def test_poll_interval_reaches_the_queue(tmp_path: Path) -> None:
    """worker --poll-interval sets how often DBOS looks at the pool's queue (kept with
    the queue in DBOS's tables, as --concurrency is); a value out of range is refused."""
    import sqlalchemy as sa

    db = str(tmp_path / "tt.db")
    with workers(db, ["slow"], "--poll-interval", "2", log_dir=tmp_path) as (worker,):
        assert "looking for queued ones every 2 s" in worker.output()
        engine = sa.create_engine(f"sqlite:///{db}.dbos.sqlite", poolclass=sa.NullPool)
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT polling_interval_sec, worker_concurrency FROM queues WHERE name = :q"
                ),
                {"q": "thinktank_sessions"},
            ).one()
        engine.dispose()
    assert tuple(row) == (2.0, 8)
    bad = thinktank("worker", "--db", db, "--poll-interval", "0")
    assert bad.returncode == 2 and "--poll-interval" in bad.stderr


def test_run_queue_on_postgres(tmp_path: Path, fake: FakeServer, pg_url: str) -> None:
    """run --queue on PostgreSQL: the worker's result, and sessions names no worker after."""
    spec = session_file(tmp_path, fake.url)
    with workers(pg_url, ["pgw"], log_dir=tmp_path):
        done = thinktank("run", str(spec), "--db", pg_url, "-i", "q=x", "--queue", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    assert [row["worker"] for row in sessions(pg_url)] == [None]


def test_run_without_queue_never_imports_dbos(tmp_path: Path) -> None:
    """A local run loads no DBOS code."""
    spec = tmp_path / "one.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "one",
                "models": {"m": {"provider": "simulated"}},
                "steps": [{"id": "a", "prompt": "hi", "model": "m"}],
            }
        )
    )
    code = (
        "import sys, runpy\n"
        "sys.argv = ['thinktank', 'run', sys.argv[1], '--db', sys.argv[2], '--no-progress']\n"
        "try:\n"
        "    runpy.run_module('thinktank', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print(sorted(m for m in sys.modules if m == 'dbos' or m.startswith('dbos.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(spec), str(tmp_path / "tt.db")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_dbos_log_records_are_one_line_each() -> None:
    """The worker prints DBOS's records one line each: a traceback in the message is cut
    to the exception it ends with, SQLAlchemy's hints and links are dropped."""
    import logging

    from thinktank.cli.worker import one_line_log

    def record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord("dbos", logging.WARNING, "q.py", 1, msg, (), info)

    refused = (
        '(psycopg.OperationalError) connection failed: connection to server at "127.0.0.1",'
        " port 5 failed: Connection refused\n\tIs the server running on that host?\n"
        "(Background on this error at: https://sqlalche.me/e/21/e3q8)"
    )
    assert one_line_log(record(f"Exception listing queues: {refused}")) == (
        "Exception listing queues: (psycopg.OperationalError) connection failed: connection to"
        ' server at "127.0.0.1", port 5 failed: Connection refused'
    )
    trace = (
        "Exception polling schedules: Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    g()\n'
        "psycopg.OperationalError: first\n\tIs the server running?\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        '  File "y.py", line 2, in h\n'
        f"sqlalchemy.exc.OperationalError: {refused}\n"
    )
    assert one_line_log(record(trace)) == (
        "Exception polling schedules: sqlalchemy.exc.OperationalError:"
        ' (psycopg.OperationalError) connection failed: connection to server at "127.0.0.1",'
        " port 5 failed: Connection refused"
    )
    assert one_line_log(record("DBOS failed to launch:", ValueError("bad\nmore"))) == (
        "DBOS failed to launch: ValueError: bad"
    )
    assert one_line_log(record("plain")) == "plain"
