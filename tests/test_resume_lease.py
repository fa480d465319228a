"""``run`` holds the session's lease for its whole life, so ``resume`` elsewhere is
refused while it is alive, and works once a killed run's lease has expired.

Real processes: ``thinktank run`` and ``thinktank resume`` subprocesses against the
loopback fake server, which counts every request it receives.
"""

from __future__ import annotations

import importlib
import json
import signal
import sqlite3
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import thinktank
from thinktank.engine.result import SessionResult
from thinktank.events import Event, StepFinished
from thinktank.session.loading import parse_session

from .conftest import REPO
from .fakeserver import FakeServer, Fault, run_fake_server
from .pg import pg_server, pg_url  # noqa: F401 - fixtures
from .test_crash import (
    STEPS,
    _cli,
    _env,
    _query,
    _wait_for,
    _wait_until_unleased,
    ok_calls,
    request_counts,
    session_file,
)

LEASE_TTL = "5"
"""Seconds: short, so the test waits little for a killed run's lease to expire, and
long enough that a loaded machine renews it in time (every third of it)."""


def _stuck(server: FakeServer, answered: int = 3, slots: int = 2, models: int = 2) -> bool:
    """Whether the run can send nothing more: every step in flight (``slots`` of them,
    the session's step limit) has a hanging call and has sent all its ``models`` calls.
    Which requests got the ``answered`` answers decides whether that is after 5 or 7
    requests, so a count alone is not enough."""
    steps = [
        (r.json["messages"][-1]["content"] if r.json else "").split(":")[0] for r in server.requests
    ]
    hanging = set(steps[answered:])
    return len(hanging) == slots and all(steps.count(step) == models for step in hanging)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_is_refused_while_the_run_lives_and_works_after_its_lease_expires(
    tmp_path: Path,
) -> None:
    with run_fake_server() as server:
        path = session_file(tmp_path, server)
        data = json.loads(path.read_text())
        for model in data["models"].values():
            model["timeout_s"] = 600  # calls hang until the run is killed
        path.write_text(json.dumps(data))
        # The first three requests are answered; every later one hangs, so the run
        # sits still with calls in flight while resume is tried against it.
        server.add_faults(*[Fault.slow(0.0)] * 3, *[Fault.slow(600)] * 200)
        db = tmp_path / "t.db"
        proc = subprocess.Popen(
            _cli("run", str(path), "--db", str(db), "--no-progress"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**_env(), "THINKTANK_LEASE_TTL": LEASE_TTL},
            cwd=REPO,
        )
        try:
            # Steady state: root answered and both step slots' calls sent (and hanging).
            _wait_for("the run to get stuck on hanging calls", lambda: _stuck(server), proc)
            _wait_for(
                "root to be stored as completed",
                lambda: bool(
                    _query(
                        db,
                        "select 1 from thinktank_steps "
                        "where step_key='root' and status='completed'",
                    )
                ),
                proc,
            )
            # ...and every call the server got is stored (the recorder writes in batches).
            _wait_for(
                "every sent call to be stored",
                lambda: (
                    _query(db, "select count(*) from thinktank_parallel_executions")
                    == [(len(server.requests),)]
                ),
                proc,
            )
            ((sid,),) = _query(db, "select id from thinktank_sessions")
            sent = request_counts(server)
            calls = _query(db, "select count(*) from thinktank_parallel_executions")

            resume = subprocess.Popen(
                _cli("resume", str(sid)[:8], "--db", str(db), "--no-progress"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=_env(),
                cwd=REPO,
            )
            try:
                _, raw_err = resume.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                resume.kill()
                resume.wait()
                more = sum(request_counts(server).values()) - sum(sent.values())
                pytest.fail(f"resume was not refused: it ran too, and sent {more} requests")
            err = raw_err.decode()
            assert resume.returncode == 2, err
            assert len(err.strip().splitlines()) == 1, err
            assert f"session {sid} is leased by worker " in err and f":{proc.pid}:" in err
            assert "Traceback" not in err
            # The refused resume sent nothing and stored nothing.
            assert request_counts(server) == sent
            assert _query(db, "select count(*) from thinktank_parallel_executions") == calls
            assert proc.poll() is None  # the run goes on
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)

        finished_before = ok_calls(db)
        assert ("root", "a") in finished_before
        server.reset()  # no more hanging answers; count the resume's requests only
        # The dead run no longer renews its lease: once it expires, resume works.
        _wait_until_unleased(db, sid)
        resumed = subprocess.run(
            _cli("resume", str(sid), "--db", str(db), "--no-progress"),
            capture_output=True,
            env=_env(),
            cwd=REPO,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr.decode()
        sent_by_resume = request_counts(server)
    steps = _query(db, "select step_key, status from thinktank_steps")
    assert sorted(k for k, _ in steps) == sorted(STEPS)
    assert all(status == "completed" for _, status in steps), steps
    for key in finished_before:
        assert sent_by_resume[key] == 0, f"{key} was sent again after it finished"
    assert max(Counter(sent_by_resume).values()) == 1
    # Ended, the resume gave the lease up.
    assert _query(db, "select lease_owner from thinktank_sessions") == [(None,)]


LOSE_LEASE = {
    "name": "chain",
    "models": {"m": {"provider": "simulated", "latency": {"kind": "fixed", "ms": 200}}},
    "steps": [
        {"id": f"s{i}", "model": "m", "prompt": f"step {i}", "depends_on": [f"s{i - 1}"]}
        if i
        else {"id": "s0", "model": "m", "prompt": "step 0"}
        for i in range(6)
    ],
}


async def test_a_run_whose_lease_another_worker_took_starts_no_more_steps(
    tmp_path: Path,
) -> None:
    """Should another worker take the session over (the run stalled past its lease),
    the run stops starting steps, ends partial saying so, and leaves that lease alone."""
    db = tmp_path / "t.db"
    first_done = anyio.Event()

    def listen(event: Event) -> None:
        if isinstance(event, StepFinished) and event.step_id == "s0":
            first_done.set()

    def steal(session_id: str) -> None:
        con = sqlite3.connect(db, timeout=30)
        try:
            with con:
                con.execute(
                    "update thinktank_sessions set lease_owner = 'thief', "
                    "lease_expires_at = ? where id = ?",
                    ((datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None), session_id),
                )
        finally:
            con.close()

    results: list[SessionResult] = []

    async def go() -> None:
        results.append(
            await thinktank.run(
                parse_session(LOSE_LEASE), store=str(db), on_event=listen, lease_ttl_s=0.3
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await first_done.wait()
        ((sid,),) = await anyio.to_thread.run_sync(_query, db, "select id from thinktank_sessions")
        await anyio.to_thread.run_sync(steal, sid)
    (result,) = results
    assert result.status == "partial"
    assert result.error is not None and "another worker (thief) took the session over" in (
        result.error
    )
    assert result.steps["s5"].status == "skipped"
    assert _query(db, "select lease_owner from thinktank_sessions") == [("thief",)]


async def test_a_renewal_that_meets_a_locked_session_row_keeps_the_lease(
    pg_url: str,  # noqa: F811
) -> None:
    """On PostgreSQL a claim skips a session row another transaction has locked (it
    takes that for a competing claim). A renewal that meets such a lock, here held for
    several renewals as a slow write of the session's own would, must not end the run:
    the lease is still the run's, and the next renewal takes it."""
    asyncpg: Any = importlib.import_module("asyncpg")  # optional, untyped
    first_done = anyio.Event()

    def listen(event: Event) -> None:
        if isinstance(event, StepFinished) and event.step_id == "s0":
            first_done.set()

    results: list[SessionResult] = []

    async def go() -> None:
        results.append(
            await thinktank.run(
                parse_session(LOSE_LEASE), store=pg_url, on_event=listen, lease_ttl_s=0.3
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await first_done.wait()
        conn = await asyncpg.connect(pg_url)
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM thinktank_sessions FOR UPDATE")
                await anyio.sleep(0.6)  # six renewals of a 0.3 s lease
        finally:
            await conn.close()
    (result,) = results
    assert result.status == "completed", result.error
