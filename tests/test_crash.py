"""Crash safety: SIGKILL a running session at random points, resume it, check the rows.

The models are served by the loopback fake server in this process, which counts every
request it receives, so "no finished call was sent again" is checked at the server.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import thinktank

from .conftest import REPO, SESSIONS
from .fakeserver import FakeServer, Fault, run_fake_server

pytestmark = pytest.mark.slow


def session_file(tmp_path: Path, server: FakeServer) -> Path:
    model = {
        "provider": "openai",
        "model": "a",
        "base_url": server.url + "/v1",
        "max_retries": 0,
        "timeout_s": 10,
    }
    # Every prompt starts with its step id, so the server can count requests per step.
    steps = [{"id": "root", "prompt": "root: question", "model": "a"}]
    for i in range(10):
        steps.append(
            {
                "id": f"mid{i}",
                "prompt": f"mid{i}: {{{{ steps.root.output }}}}",
                "models": ["a", "b"],
                "depends_on": ["root"],
            }
        )
    steps.append(
        {
            "id": "sink",
            "prompt": "sink: " + " ".join(f"{{{{ steps.mid{i}.output }}}}" for i in range(10)),
            "model": "b",
            "depends_on": [f"mid{i}" for i in range(10)],
        }
    )
    path = tmp_path / "crash.json"
    path.write_text(
        json.dumps(
            {
                "name": "crash",
                "models": {"a": model, "b": {**model, "model": "b"}},
                "parallel_execution": {"max_concurrent_steps": 2},
                "steps": steps,
            }
        )
    )
    return path


STEPS = ["root", "sink", *(f"mid{i}" for i in range(10))]
"""The steps of the session of ``session_file``."""


def decompose_session_file(tmp_path: Path, server: FakeServer) -> Path:
    """A decompose step whose two planners propose four sub-problems, then a step that
    depends on it (and so waits for the synthesis step it adds)."""

    def model(wire: str) -> dict[str, object]:
        return {
            "provider": "openai",
            "model": wire,
            "base_url": server.url + "/v1",
            "max_retries": 0,
            "timeout_s": 10,
        }

    # Each sub-problem's prompt starts with its step id, as every prompt of session_file.
    subs = [
        {"id": "a", "prompt": "plan-1: speed limits?", "depends_on": []},
        {"id": "b", "prompt": "plan-2: junctions?", "depends_on": []},
        {"id": "c", "prompt": "plan-3: cameras?", "depends_on": ["a"]},
        {"id": "d", "prompt": "plan-4: costs?", "depends_on": ["b", "c"]},
    ]
    server.set_reply("p1", json.dumps({"subproblems": subs}))
    server.set_reply("p2", json.dumps({"subproblems": subs[:2]}))
    path = tmp_path / "decompose.json"
    path.write_text(
        json.dumps(
            {
                "name": "crash-decompose",
                "models": {"p1": model("p1"), "p2": model("p2"), "r": model("r")},
                "parallel_execution": {"max_concurrent_steps": 2},
                "steps": [
                    {
                        "id": "plan",
                        "kind": "decompose",
                        "models": ["p1", "p2"],
                        "sub_models": ["r"],
                        "synthesizer": "r",
                        "synthesis_prompt": "plan-synthesis: answer from the parts",
                        "prompt": "plan: halve traffic deaths",
                    },
                    {
                        "id": "after",
                        "model": "r",
                        "depends_on": ["plan"],
                        "prompt": "after: {{ steps.plan.output }}",
                    },
                ],
            }
        )
    )
    return path


DECOMPOSE_STEPS = ["plan", "after", "plan-synthesis", *(f"plan-{i}" for i in range(1, 5))]
"""The steps of the session of ``decompose_session_file`` once it has grown."""


def request_counts(server: FakeServer) -> Counter[tuple[str, str]]:
    """Requests the server received, per (step id, model name)."""
    counts: Counter[tuple[str, str]] = Counter()
    for r in server.requests:
        prompt = r.json["messages"][-1]["content"] if r.json else ""
        counts[(prompt.split(":")[0], str(r.model))] += 1
    return counts


def _started(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(db, timeout=0.1)
        try:
            return bool(con.execute("select count(*) from thinktank_sessions").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return False


def ok_calls(db: Path) -> set[tuple[str, str]]:
    """(step, model name) of every answered call; the wire name is the model name."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "select s.step_key, c.model_id from thinktank_parallel_executions c "
            "join thinktank_steps s on s.id = c.step_id where c.status = 'ok'"
        ).fetchall()
    finally:
        con.close()
    return {(k, m) for k, m in rows}


SESSIONS_KILLED = {
    "fan-out": (session_file, STEPS),
    "decompose": (decompose_session_file, DECOMPOSE_STEPS),
}


@pytest.mark.parametrize("kind", list(SESSIONS_KILLED))
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(kill_after=st.floats(min_value=0.0, max_value=1.8))
def test_sigkill_then_resume_finishes_every_step_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, kind: str, kill_after: float
) -> None:
    """Killed at any point and resumed: every step completes once, no finished call is
    re-sent, and no row is left half-written (a decompose session too: its grown DAG is
    rebuilt on resume)."""
    make_session, expected_steps = SESSIONS_KILLED[kind]
    tmp_path = tmp_path_factory.mktemp("crash")
    with run_fake_server() as server:
        server.add_faults(*[Fault.slow(0.25)] * 200)
        path = make_session(tmp_path, server)
        db = tmp_path / "t.db"
        proc = _run_to_kill(path, db)
        # Wait until the session is recorded (start-up takes a while), then kill it
        # somewhere in its ~1.8 s of model calls.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _started(db):
            time.sleep(0.02)
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if not db.exists():
            event("killed before the store existed")
            return  # nothing to resume
        con = sqlite3.connect(db)
        try:
            sessions = con.execute("select id, status from thinktank_sessions").fetchall()
        finally:
            con.close()
        if not sessions:
            return
        sid, status = sessions[0]
        finished_before = ok_calls(db)
        sent_before = request_counts(server)
        if status == "completed":
            event("finished before the kill")
            return
        event(f"resumed after {len(finished_before)} finished calls")
        # The killed run's lease (1 s) runs out without heartbeats: wait for that in
        # the database, then resume.
        _wait_until_unleased(db, sid)
        result = anyio.run(lambda: thinktank.resume(sid, store=str(db)))
        assert result.status == "completed", result.error
        sent_after = request_counts(server)
        # The resumed session replays from its recording (no model is asked: the
        # server's count stays as it is), step for step as it was decided.
        report = anyio.run(lambda: thinktank.replay(sid, store=str(db)))
        assert report.matches, report.diffs
        assert request_counts(server) == sent_after

    con = sqlite3.connect(db)
    try:
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)
        steps = con.execute("select step_key, status from thinktank_steps").fetchall()
        running = con.execute(
            "select count(*) from thinktank_parallel_executions where status = 'running'"
        ).fetchone()[0]
        call_totals = con.execute(
            "select sum(tokens_used), sum(cost_usd) from thinktank_parallel_executions"
        ).fetchone()
        session_totals = con.execute(
            "select total_tokens, cost_usd from thinktank_sessions"
        ).fetchone()
        ok_per_attempt = con.execute(
            "select s.step_key, c.model_id, c.attempt, count(*) "
            "from thinktank_parallel_executions c join thinktank_steps s on s.id = c.step_id "
            "where c.status = 'ok' group by s.step_key, c.model_id, c.attempt"
        ).fetchall()
    finally:
        con.close()
    assert sorted(k for k, _ in steps) == sorted(expected_steps)
    assert all(status == "completed" for _, status in steps), steps
    assert running == 0
    # Answers served from the store again are not counted twice.
    assert call_totals[0] == session_totals[0]
    assert call_totals[1] == pytest.approx(session_totals[1])
    # One answer per model per step attempt (a resumed attempt may re-serve an answer
    # from the store: that is a row of the new attempt, not a second request).
    assert all(n == 1 for *_, n in ok_per_attempt)
    for key in finished_before:
        assert sent_after[key] == sent_before[key], f"{key} was sent again after it finished"


def test_sigkill_during_the_first_step_then_resume_replays_as_recorded(tmp_path: Path) -> None:
    """``sessions/diamond.yaml`` on 400 ms loopback models, killed (-9) while its first
    step waits for its answer, then resumed: ``thinktank replay`` of it matches its
    recording and exits 0 (it used to report the first step failed, the rest skipped)."""
    data = yaml.safe_load((SESSIONS / "diamond.yaml").read_text())
    db = tmp_path / "t.db"
    with run_fake_server() as server:
        server.add_faults(*[Fault.slow(0.4)] * 20)
        for name in data["models"]:
            data["models"][name] = {
                "provider": "openai",
                "model": name,
                "base_url": server.url + "/v1",
                "max_retries": 0,
                "timeout_s": 10,
            }
        path = tmp_path / "diamond.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = _run_to_kill(path, db)
        try:
            _wait_for(
                "the first step's call to be under way",
                lambda: bool(
                    _query(
                        db,
                        "select 1 from thinktank_parallel_executions c join thinktank_steps s "
                        "on s.id = c.step_id where s.step_key = 'plan' and c.status = 'running'",
                    )
                ),
                proc,
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        ((sid, status),) = _query(db, "select id, status from thinktank_sessions")
        assert status == "running"  # killed: nobody closed it
        _wait_until_unleased(db, str(sid))
        resumed = _cli_done("resume", str(sid), "--db", str(db), "--no-progress")
        assert resumed.returncode == 0, resumed.stderr.decode()
    # The first step was cut in its first attempt and decided in its second.
    assert _query(db, "select attempts from thinktank_steps where step_key = 'plan'") == [(2,)]
    replayed = _cli_done("replay", str(sid), "--db", str(db))
    assert replayed.returncode == 0, replayed.stdout.decode() + replayed.stderr.decode()
    assert "every step matches (4 steps)" in replayed.stdout.decode()


def _run_to_kill(path: Path, db: Path) -> subprocess.Popen[bytes]:
    """``thinktank run path`` in the background, with a 1 s lease (so that once it is
    killed, its session can be resumed soon)."""
    return subprocess.Popen(
        _cli("run", str(path), "--db", str(db), "--no-progress"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**_env(), "THINKTANK_LEASE_TTL": "1"},
        cwd=REPO,
    )


def _wait_until_unleased(db: Path, session_id: str) -> None:
    """Wait (generously) until no live lease holds the session."""
    deadline = time.monotonic() + 60
    while True:
        rows = _query(
            db,
            "select lease_expires_at from thinktank_sessions where id = ? "
            "and lease_owner is not null",
            session_id,
        )
        expires = [datetime.fromisoformat(str(at)) for (at,) in rows if at is not None]
        if all(at.replace(tzinfo=at.tzinfo or UTC) <= datetime.now(UTC) for at in expires):
            return
        assert time.monotonic() < deadline, "the killed run's lease never expired"
        time.sleep(0.05)


def _query(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on ``db``; none while the database is not there yet or busy."""
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(db, timeout=0.5)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    """Poll ``ready`` until it holds (generous: a loaded 2-core machine is slow)."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "thinktank", *args]


def _cli_done(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``thinktank *args`` run to its end, its output captured."""
    return subprocess.run(_cli(*args), capture_output=True, env=_env(), cwd=REPO, timeout=300)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("THINKTANK_")}


def test_ctrl_c_during_decompose_substeps_then_resume_completes_every_step_once(
    tmp_path: Path,
) -> None:
    """Ctrl-C while the steps a decompose step added run, then ``resume``: exit 0, the
    grown DAG is rebuilt (``brief`` waits for ``research-synthesis``), every step
    completes once and no step that had finished runs again."""
    # sessions/research_plan.yaml with slower researchers, so Ctrl-C surely lands while
    # the sub-steps run however loaded the machine is.
    data = yaml.safe_load((SESSIONS / "research_plan.yaml").read_text())
    data["models"]["researcher"]["latency"] = {"kind": "fixed", "ms": 3000}
    path = tmp_path / "research_plan.yaml"
    path.write_text(yaml.safe_dump(data))
    db = tmp_path / "t.db"
    proc = subprocess.Popen(
        _cli("run", str(path), "--db", str(db), "--no-progress"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )
    try:
        _wait_for(
            "the sub-steps to start",
            lambda: bool(
                _query(
                    db,
                    "select 1 from thinktank_steps where parent = 'research' "
                    "and status = 'running'",
                )
            ),
            proc,
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()  # interrupted
    ((sid, status),) = _query(db, "select id, status from thinktank_sessions")
    assert status == "interrupted"
    done_before = {
        k for (k,) in _query(db, "select step_key from thinktank_steps where status='completed'")
    }
    assert "research" in done_before and "brief" not in done_before
    calls_before = Counter(
        k
        for (k,) in _query(
            db,
            "select s.step_key from thinktank_parallel_executions c "
            "join thinktank_steps s on s.id = c.step_id",
        )
    )

    resumed = _cli_done("resume", str(sid), "--db", str(db), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr.decode()
    steps = _query(db, "select step_key, status from thinktank_steps")
    keys = [k for k, _ in steps]
    assert len(keys) == len(set(keys))
    assert {"research", "brief", "research-synthesis"} <= set(keys)
    assert all(status == "completed" for _, status in steps), steps
    calls_after = Counter(
        k
        for (k,) in _query(
            db,
            "select s.step_key from thinktank_parallel_executions c "
            "join thinktank_steps s on s.id = c.step_id",
        )
    )
    for key in done_before:
        assert calls_after[key] == calls_before[key], f"{key} ran again after it completed"
    # brief was written from the synthesis, as in an uninterrupted run.
    ((brief_prompt,),) = _query(db, "select prompt from thinktank_steps where step_key='brief'")
    ((synthesis,),) = _query(
        db, "select output from thinktank_steps where step_key='research-synthesis'"
    )
    assert str(synthesis) in str(brief_prompt)
