"""The thinktank command: exit codes, one-line errors, JSON output, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from thinktank.cli.commands import main

from .conftest import REPO, SESSIONS


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_run_prints_a_table_and_exits_zero(tmp_path: Path) -> None:
    """A completed run exits 0 and prints every step; progress goes to stderr."""
    db = tmp_path / "tt.db"
    code, out, err = invoke("run", str(SESSIONS / "diamond.yaml"), "--db", str(db))
    assert code == 0
    for step in ("plan", "pros", "cons", "verdict"):
        assert step in out
    assert "session completed" in out
    assert "step verdict: completed" in err


def test_run_json_is_the_result_on_stdout(tmp_path: Path) -> None:
    """--json prints the session result as JSON and nothing else on stdout."""
    code, out, _ = invoke(
        "run",
        str(SESSIONS / "consensus.yaml"),
        "--db",
        str(tmp_path / "t.db"),
        "--json",
        "-i",
        "country=Japan",
    )
    assert code == 0
    data = json.loads(out)
    assert data["status"] == "completed"
    assert data["steps"]["ask"]["output"].lower().startswith("tokyo")
    assert set(data["usage"]) >= {"total_tokens", "total_cost_usd"}
    assert data["steps"]["ask"]["consensus"]["method"] == "majority"


def test_sessions_and_show(tmp_path: Path) -> None:
    """sessions lists runs; show accepts an id prefix and prints the DAG and calls."""
    db = str(tmp_path / "tt.db")
    invoke("run", str(SESSIONS / "diamond.yaml"), "--db", db, "--no-progress")
    invoke("run", str(SESSIONS / "consensus.yaml"), "--db", db, "--no-progress")
    code, out, _ = invoke("sessions", "--db", db, "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["consensus", "diamond"]
    code, text, _ = invoke("sessions", "--db", db)
    assert rows[0]["id"] in text
    code, out, _ = invoke("show", rows[1]["id"][:8], "--db", db)
    assert code == 0
    assert "layer 2: pros <- plan; cons <- plan" in out
    assert "layer 3: verdict <- pros, cons" in out
    code, out, _ = invoke("show", rows[0]["id"], "--db", db, "--json")
    shown = json.loads(out)
    assert shown["steps"][0]["consensus"]["method"] == "majority"
    assert len(shown["steps"][0]["calls"]) == 3


def test_sessions_quiet_prints_only_ids_for_command_substitution(tmp_path: Path) -> None:
    """sessions -q prints the ids alone, newest first; --last only the newest."""
    db = str(tmp_path / "tt.db")
    invoke("run", str(SESSIONS / "diamond.yaml"), "--db", db, "--no-progress")
    invoke("run", str(SESSIONS / "consensus.yaml"), "--db", db, "--no-progress")
    rows = json.loads(invoke("sessions", "--db", db, "--json")[1])
    assert invoke("sessions", "--db", db, "-q") == (0, f"{rows[0]['id']}\n{rows[1]['id']}\n", "")
    assert invoke("sessions", "--db", db, "-q", "--last") == (0, f"{rows[0]['id']}\n", "")


def test_show_unknown_session_is_one_line_exit_2(tmp_path: Path) -> None:
    """An unknown id gives one line on stderr and exit 2."""
    db = str(tmp_path / "tt.db")
    invoke("run", str(SESSIONS / "diamond.yaml"), "--db", db, "--no-progress")
    code, out, err = invoke("show", "ffffffff", "--db", db)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: no stored session matches 'ffffffff' in {db}"]


def test_validate_lists_every_problem_and_exits_2() -> None:
    """validate prints one line per problem, each naming the file."""
    code, out, err = invoke("validate", str(SESSIONS / "broken.yaml"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) >= 10
    assert all(line.startswith(f"error: {SESSIONS / 'broken.yaml'}: ") for line in lines)
    code, out, _ = invoke("validate", str(SESSIONS / "diamond.yaml"))
    assert code == 0 and "ok (4 steps)" in out


def test_bad_session_file_run_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    """Running a broken file exits 2 without creating the database."""
    db = tmp_path / "tt.db"
    code, _, err = invoke("run", str(SESSIONS / "broken.yaml"), "--db", str(db))
    assert code == 2 and "Traceback" not in err
    assert not db.exists()


def test_bad_inputs_exit_2_and_write_nothing(tmp_path: Path) -> None:
    """Unknown, malformed or mistyped inputs are one line each, exit 2, no DB."""
    db = tmp_path / "tt.db"
    code, _, err = invoke(
        "run", str(SESSIONS / "diamond.yaml"), "--db", str(db), "-i", "nope=1", "-i", "bad"
    )
    assert code == 2
    assert err.strip() == "error: --input 'bad': expected NAME=VALUE"
    code, _, err = invoke("run", str(SESSIONS / "diamond.yaml"), "--db", str(db), "-i", "nope=1")
    assert code == 2
    assert "input 'nope': not declared by the session" in err
    assert err.startswith(f"error: {SESSIONS / 'diamond.yaml'}: ")
    assert not db.exists()


def test_unopenable_database_is_one_line(tmp_path: Path) -> None:
    """A database path that cannot be created is a one-line error, exit 2."""
    code, _, err = invoke(
        "run",
        str(SESSIONS / "diamond.yaml"),
        "--db",
        str(tmp_path / "no" / "such" / "dir" / "x.db"),
        "--no-progress",
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_partial_session_exits_1(tmp_path: Path) -> None:
    """A session with a failed step exits 1."""
    session = tmp_path / "s.yaml"
    session.write_text(
        "name: p\nmodels:\n  bad: {provider: simulated, failure_rate: 1}\n"
        "  good: {provider: simulated}\n"
        "steps:\n  - {id: a, model: good, prompt: x}\n  - {id: b, model: bad, prompt: y}\n"
    )
    code, out, _ = invoke("run", str(session), "--db", str(tmp_path / "t.db"), "--no-progress")
    assert code == 1
    assert "session partial" in out


def test_schema_command_writes_and_checks(tmp_path: Path) -> None:
    """schema -o writes the file; --check passes on it and fails on a stale one."""
    target = tmp_path / "s.json"
    assert invoke("schema", "-o", str(target))[0] == 0
    assert invoke("schema", "-o", str(target), "--check")[0] == 0
    target.write_text("{}")
    code, _, err = invoke("schema", "-o", str(target), "--check")
    assert code == 1 and "stale" in err


@pytest.mark.timeout(600)
def test_ctrl_c_marks_the_session_interrupted(tmp_path: Path) -> None:
    """SIGINT mid-run: exit 130, the session is stored as interrupted, finished steps kept."""
    session = tmp_path / "slow.yaml"
    session.write_text(
        "name: slow\nmodels:\n  fast: {provider: simulated}\n"
        "  slow: {provider: simulated, latency: {kind: fixed, ms: 600000}}\n"
        "steps:\n  - {id: quick, model: fast, prompt: x}\n"
        "  - {id: long, model: slow, prompt: y}\n"
    )
    db = tmp_path / "tt.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("THINKTANK_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktank", "run", str(session), "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stderr is not None
    # Wait for the observable state (the quick step reported done), never for a time: on a
    # loaded 2-core machine the interpreter alone can take tens of seconds to start.
    # A thread reads stderr so that the wait has a deadline even if no line comes.
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "step quick: completed" in line:
                done.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not done.wait(timeout=240):
        proc.kill()
        raise AssertionError(f"the quick step never completed: {''.join(seen)!r}")
    reader.join()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "interrupted: session" in err and "Traceback" not in err
    con = sqlite3.connect(db)
    try:
        assert con.execute("select status from thinktank_sessions").fetchall() == [("interrupted",)]
        steps = dict(con.execute("select step_key, status from thinktank_steps").fetchall())
    finally:
        con.close()
    assert steps == {"quick": "completed", "long": "cancelled"}
