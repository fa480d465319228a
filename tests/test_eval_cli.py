"""``thinktank eval``: the run command, its estimate, errors and exit codes, a SIGKILL."""

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

import pytest
import yaml
from click.testing import CliRunner

from thinktank.cli.commands import main

from .conftest import REPO
from .fakeserver import FakeServer, Fault, run_fake_server
from .test_eval_runner import TARGET, write_config, write_experiment


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as fake:
        yield fake


@pytest.fixture
def configured(tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    config = write_config(tmp_path / "thinktank.toml", server, ["a", "b"])
    monkeypatch.setenv("THINKTANK_CONFIG", str(config))
    return server


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_eval_file_runs_and_reruns_for_free(tmp_path: Path, configured: FakeServer) -> None:
    """``eval FILE`` (the default command) prints the estimate, runs every sample, and
    prints the experiment id; ``eval run FILE`` again continues it with no call."""
    path = write_experiment(tmp_path, items=2)
    db = str(tmp_path / "t.db")
    code, out, err = invoke("eval", str(path), "--db", db, "--yes", "--no-progress")
    assert code == 0, err
    assert "2 items, 4 samples" in err and "at most 6 calls" in err
    assert out.startswith("experiment ") and "4/4 samples" in out
    assert len(configured.requests) == 6
    code, out, err = invoke("eval", "run", str(path), "--db", db, "--yes", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["reused"] == 4 and summary["calls"] == 0
    assert "4 already answered" in err and "to run: 0 samples" in err
    assert len(configured.requests) == 6
    code, out, _ = invoke("eval", "list", "--db", db, "--json")
    (row,) = json.loads(out)
    assert code == 0 and row["id"] == summary["experiment_id"] and row["answered"] == 4


def test_dry_run_calls_nothing(tmp_path: Path, configured: FakeServer) -> None:
    """``--dry-run`` prints the estimate (JSON with ``--json``) and calls nothing."""
    path = write_experiment(tmp_path, items=3, repeats=2)
    code, out, _ = invoke("eval", str(path), "--db", str(tmp_path / "t.db"), "--dry-run", "--json")
    assert code == 0
    assert json.loads(out) == {"samples": 12, "stored": 0, "calls": 18, "cost_usd": None}
    assert not configured.requests


def test_progress_lines_when_piped(tmp_path: Path, configured: FakeServer) -> None:
    """Piped, progress is plain lines with done/total, accuracy, cost and ETA."""
    configured.set_reply("a", f"{TARGET}-0")
    path = write_experiment(tmp_path, items=2, grid=[{"models": ["a"]}])
    code, _, err = invoke("eval", str(path), "--db", str(tmp_path / "t.db"), "--yes")
    assert code == 0
    last = [line for line in err.splitlines() if line.startswith("2/2 samples")][-1]
    assert "accuracy 50.0%" in last and "cost unknown" in last and "ETA" in last


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": [{"models": ["a"]}, {"models": ["nope"]}]}, ": grid.1.models: "),
        ({"scorer": "telepathy"}, ": scorer.kind: "),
        ({"prompt": "{{ target }}"}, ": prompt: the prompt may not use {{ target }}"),
        ({"budget": {"max_cost_usd": 1}}, ": budget.max_cost_usd: a cost budget needs a price"),
    ],
)
def test_bad_experiment_is_one_line_exit_2(
    tmp_path: Path, configured: FakeServer, change: dict[str, object], message: str
) -> None:
    """A malformed experiment or an unknown model: one line naming the file and the
    field, exit 2, nothing called."""
    path = write_experiment(tmp_path)
    data = yaml.safe_load(path.read_text())
    data.update(change)
    path.write_text(yaml.safe_dump(data))
    code, _, err = invoke("eval", str(path), "--db", str(tmp_path / "t.db"), "--yes")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"error: {path}:") and message in line
    assert not configured.requests


def test_sample_larger_than_dataset_is_one_line(tmp_path: Path, configured: FakeServer) -> None:
    """``--sample`` past the dataset: one line, exit 2."""
    path = write_experiment(tmp_path, items=3)
    code, _, err = invoke("eval", str(path), "--sample", "4", "--seed", "1", "--yes")
    assert code == 2
    assert err.strip() == "error: --sample 4 is more than the dataset's 3 items"


def test_budget_stop_exits_1(tmp_path: Path, configured: FakeServer) -> None:
    """The budget stopping the run is exit 1 with the reason in the summary."""
    path = write_experiment(tmp_path, items=4, budget={"max_calls": 2}, grid=[{"models": ["a"]}])
    code, out, _ = invoke(
        "eval", str(path), "--db", str(tmp_path / "t.db"), "-y", "--concurrency", "1"
    )
    assert code == 1
    assert "stopped: experiment budget reached: 2 of 2 calls made" in out
    assert len(configured.requests) == 2


@pytest.mark.slow
def test_sigkill_and_rerun_pays_nothing_twice(tmp_path: Path, configured: FakeServer) -> None:
    """A real ``thinktank eval`` killed with SIGKILL mid-run, then run again: every
    sample answered, and the server saw one run's calls plus at most those in flight
    at the kill."""
    items, concurrency = 8, 2
    per_run = items * 3  # c1 asks a, c2 asks a and b
    path = write_experiment(tmp_path, items=items)
    configured.add_faults(*[Fault.slow(0.2) for _ in range(per_run)])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "THINKTANK_LEASE_TTL": "1",
    }
    args = [sys.executable, "-m", "thinktank", "eval", str(path), "--db", str(tmp_path / "t.db")]
    args += ["--yes", "--no-progress", "--concurrency", str(concurrency)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(configured.requests) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = len(configured.requests)
    assert 6 <= at_kill < per_run
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{items * 2}/{items * 2} samples" in done.stdout
    resumed = re.search(r"(\d+) resumed", done.stdout)
    assert resumed is not None and int(resumed.group(1)) >= 1  # the kill left sessions running
    in_flight = concurrency * 2
    assert per_run <= len(configured.requests) <= per_run + in_flight


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_continue(
    tmp_path: Path, configured: FakeServer
) -> None:
    """SIGINT mid-run: exit 130 and one line naming the experiment and the command that
    continues it; the rerun finishes every sample."""
    path = write_experiment(tmp_path, items=6)
    configured.add_faults(*[Fault.slow(0.3) for _ in range(18)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "thinktank", "eval", str(path), "--db", str(tmp_path / "t.db")]
    args += ["--yes", "--no-progress", "--concurrency", "2"]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(configured.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted:")]
    assert "interrupted: experiment " in line
    assert f"run `thinktank eval {path}` again to continue" in line
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "12/12 samples" in done.stdout
