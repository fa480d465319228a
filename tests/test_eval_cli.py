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
    # The report's tables, then the one-line summary last.
    assert out.startswith("Experiment exp (")
    assert out.splitlines()[-1].startswith("experiment ") and "4/4 samples" in out
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


def _simulated_config(path: Path, items: int) -> Path:
    """Two simulated models that know the target of every item, each right with its own
    probability, so the report has right and wrong answers to count."""
    lines: list[str] = []
    for name, accuracy, seed in (("sa", 0.8, 1), ("sb", 0.6, 2), ("sc", 0.6, 3)):
        lines += [
            f"[models.{name}]",
            'provider = "simulated"',
            f"seed = {seed}",
            f"accuracy = {accuracy}",
            'wrong_replies = ["wrong one", "wrong two"]',
            "input_cost_per_mtok = 1.0",
            "output_cost_per_mtok = 2.0",
        ]
        for i in range(items):
            lines += [f"[[models.{name}.replies]]", f'pattern = "number {i}\\\\?"']
            lines += [f'reply = "{TARGET}-{i}"']
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def test_eval_report_rebuilds_the_run_report_from_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report printed after a run and ``eval report ID`` agree, and every figure of
    a configuration matches the stored answers scored by hand."""
    items = 12
    monkeypatch.setenv("THINKTANK_CONFIG", str(_simulated_config(tmp_path / "tt.toml", items)))
    grid = [
        {"id": "one", "models": ["sa"]},
        {"id": "panel", "models": ["sa", "sb", "sc"], "threshold": 0.6},
    ]
    path = write_experiment(tmp_path, items=items, grid=grid)
    experiment = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**experiment, "baseline": "one"}))
    db = str(tmp_path / "t.db")
    plots = tmp_path / "plots"
    code, out, err = invoke(
        "eval", str(path), "--db", db, "--yes", "--no-progress", "--plots", str(plots),
        "--csv", str(tmp_path / "configs.csv"),
    )  # fmt: skip
    assert code == 0, err
    assert "derived" in out  # figures from stored answers are labelled
    assert sorted(p.name for p in plots.iterdir()) == [
        "calibration.png",
        "calls.png",
        "frontier.png",
    ]
    experiment_id = out.splitlines()[-1].split()[1].rstrip(":")
    assert invoke("eval", "list", "--db", db, "-q", "--last") == (0, experiment_id + "\n", "")
    code, out, err = invoke("eval", "report", experiment_id[:8], "--db", db, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["experiment_id"] == experiment_id and report["baseline"] == "one"

    # The stored answers, scored by hand (contains the target).
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT s.config_id, s.item_id, st.output FROM thinktank_experiment_samples s"
            " JOIN thinktank_steps st ON st.session_id = s.session_id"
        ).fetchall()
    right = {(c, i): (out or "").startswith(f"{TARGET}-{i[1:]}") for c, i, out in rows}
    figures = {c["config_id"]: c for c in report["configurations"]}
    for cid in ("one", "panel"):
        assert figures[cid]["samples"] == items
        assert figures[cid]["correct"] == sum(v for (c, _), v in right.items() if c == cid)
        assert figures[cid]["calls"] == (1 if cid == "one" else 3) * items
    (comparison,) = report["comparisons"]
    assert comparison["config_id"] == "panel"
    b = sum(right[("one", f"q{i}")] and not right[("panel", f"q{i}")] for i in range(items))
    c = sum(not right[("one", f"q{i}")] and right[("panel", f"q{i}")] for i in range(items))
    assert (comparison["b"], comparison["c"]) == (b, c)
    # Derived from the stored answers: the majority re-merge of the panel is the panel's
    # own (measured) answer, and its k = 1 accuracy is the mean accuracy of one call.
    (majority,) = [
        m
        for m in report["analyses"]["remerge"]
        if m["config_id"] == "panel" and m["method"] == "majority"
    ]
    assert majority["kind"] == "derived" and majority["correct"] == figures["panel"]["correct"]
    (curve,) = [c for c in report["analyses"]["calls"] if c["config_id"] == "panel"]
    assert [p["k"] for p in curve["points"]] == [1, 2, 3]
    code, out, err = invoke("eval", "report", "ffffffff", "--db", db)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1


def test_load_gives_the_samples_as_a_dataframe_in_scripts_and_inside_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``thinktank.eval.load`` reads a stored experiment into pandas, from plain code and
    from code already running in an event loop (as a notebook cell does)."""
    import anyio

    import thinktank.eval
    from thinktank.errors import UnknownExperimentError

    monkeypatch.setenv("THINKTANK_CONFIG", str(_simulated_config(tmp_path / "tt.toml", 4)))
    path = write_experiment(tmp_path, items=4, grid=[{"models": ["sa", "sb", "sc"]}])
    db = str(tmp_path / "t.db")
    code, out, err = invoke("eval", str(path), "--db", db, "--yes", "--no-report")
    assert code == 0, err
    experiment_id = out.split()[1].rstrip(":")
    frame = thinktank.eval.load(experiment_id, store=db)
    assert len(frame) == 4 and set(frame["item"]) == {"q0", "q1", "q2", "q3"}
    assert (frame["calls"] == 3).all() and frame["correct"].dtype == bool

    async def inside_a_loop() -> int:
        return len(thinktank.eval.load(experiment_id[:10], store=db))

    assert anyio.run(inside_a_loop) == 4
    with pytest.raises(UnknownExperimentError):
        thinktank.eval.load("nope", store=db)


def test_progress_on_a_terminal_is_a_bar_with_the_figures() -> None:
    """On a terminal the progress is a bar, then done/total, accuracy, cost, calls, ETA."""
    import io

    from rich.console import Console

    from thinktank.cli.evaluate import _EvalProgress
    from thinktank.eval.runner import Progress

    progress = _EvalProgress(enabled=True, stream=io.StringIO())
    progress(Progress("x", done=40, total=100, correct=30.0, scored=40, cost_usd=0.012,
                      calls=120, elapsed_s=3.0, new_done=40))  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=150, color_system=None).print(progress._render())
    bar, _, text = out.getvalue().strip().partition("  ")
    assert bar.startswith("━") and "40/100 samples  accuracy 75.0%  cost $0.0120" in text
    assert "calls 120  ETA " in text


def test_without_the_research_extra_the_run_still_succeeds_and_says_how_to_report(
    tmp_path: Path,
) -> None:
    """No scipy: the run stores every answer and exits 0 with a one-line note naming the
    extra and the report command; ``eval report`` is then a one-line error, exit 2."""
    config = _simulated_config(tmp_path / "tt.toml", 2)
    path = write_experiment(tmp_path, items=2, grid=[{"models": ["sa", "sb", "sc"]}])
    db = str(tmp_path / "t.db")
    code = (
        "import sys; sys.modules['scipy'] = None; from thinktank.cli.commands import main; "
        "main(sys.argv[1:])"
    )
    env = {**os.environ, "THINKTANK_CONFIG": str(config), "PYTHONPATH": str(REPO)}

    def thinktank(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    done = thinktank("eval", str(path), "--db", db, "--yes", "--no-progress")
    assert done.returncode == 0, done.stderr
    experiment_id = done.stdout.split()[1].rstrip(":")
    assert f"thinktank[research]'), then: thinktank eval report {experiment_id}" in done.stderr
    done = thinktank("eval", "report", experiment_id, "--db", db)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: the report needs the research extra: pip install 'thinktank[research]'"
    ]
