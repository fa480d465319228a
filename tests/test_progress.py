"""Progress on stderr: the live view's clock, ``ask``'s progress, the Ctrl-C summary.

The live view is read through a real pseudo-terminal (the CLI draws it only on a
terminal); the other checks read the plain lines it prints when piped. Every wait is
on the output the CLI prints, never on a sleep.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from thinktank.cli.commands import main

from .conftest import REPO

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_HEADER = re.compile(r"(\d+)/(\d+) steps  \((.*?); (\d+) running\)  (\d+\.\d)s")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THINKTANK_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _read_terminal(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``argv`` with stderr on a pseudo-terminal; its exit code and all it drew."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=cwd, env=_env()
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120  # a hang fails the test instead of stalling the suite
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited)
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_live_clock_ticks_while_a_call_is_in_flight(tmp_path: Path) -> None:
    """On a terminal, the elapsed clock advances during a 3 s call with no event between."""
    session = tmp_path / "slow.yaml"
    session.write_text(
        "name: slow\nmodels:\n"
        "  slow: {provider: simulated, default_reply: done, latency: {kind: fixed, ms: 3000}}\n"
        "steps:\n  - {id: wait, model: slow, prompt: x}\n"
    )
    argv = [sys.executable, "-m", "thinktank", "run", str(session), "--db", str(tmp_path / "t.db")]
    code, drawn = _read_terminal(argv, tmp_path)
    assert code == 0, drawn
    text = _ANSI.sub("", drawn)
    # The header while the step runs: 0/1 steps, 1 running, and the session clock.
    clocks = {float(m.group(5)) for m in _HEADER.finditer(text) if m.group(4) == "1"}
    assert len(clocks) >= 3, text
    assert max(clocks) >= 1.0, sorted(clocks)
    # The running step's row shows the call it waits on, with its own clock.
    waits = {float(s) for s in re.findall(r"waiting on slow (\d+\.\d)s", text)}
    assert len(waits) >= 2, text


def test_ask_shows_progress_from_the_start(tmp_path: Path) -> None:
    """``ask`` prints the session, the step and each model's answer as it arrives."""
    (tmp_path / "thinktank.toml").write_text(
        '[models.a]\nprovider = "simulated"\ndefault_reply = "42"\n'
        '[models.b]\nprovider = "simulated"\ndefault_reply = "42"\n'
        'latency = {kind = "fixed", ms = 300}\n'
    )
    db = str(tmp_path / "t.db")
    out = CliRunner().invoke(main, ["ask", "6 x 7?", "-m", "a", "-m", "b", "--db", db])
    assert out.exit_code == 0, out.stderr
    lines = [line.split("] ", 1)[1] for line in out.stderr.splitlines()]
    assert lines[0].startswith("session ask (") and lines[1] == "step ask: running"
    # a answers at once and b after 300 ms: each is printed when it arrives.
    assert re.fullmatch(r"step ask: a ok in \d+ ms - 42", lines[2]), lines
    assert re.fullmatch(r"step ask: b ok in 3\d\d ms - 42", lines[3]), lines
    assert lines[4].startswith("step ask: completed")
    quiet = CliRunner().invoke(
        main, ["ask", "6 x 7?", "-m", "a", "-m", "b", "--db", db, "--no-progress"]
    )
    assert quiet.exit_code == 0 and quiet.stderr == ""


def _interrupt(args: list[str], cwd: Path, after: str) -> tuple[str, str]:
    """Run the CLI with ``args``, SIGINT it once stderr shows ``after``; (session id,
    its one ``interrupted:`` line). It must exit 130 with no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktank", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=cwd,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if after in line:
            break
    else:
        raise AssertionError("".join(seen))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    summary = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(summary) == 1, err
    sid = re.search(r"\(([0-9a-f-]{36})\)", "".join(seen))
    assert sid is not None, seen
    return sid.group(1), summary[0]


def test_ctrl_c_summary_counts_completed_and_cancelled_apart(tmp_path: Path) -> None:
    """SIGINT after one step finished: the summary says 1 completed, 1 cancelled, and
    the same on ``resume`` (counting that run's steps)."""
    session = tmp_path / "slow.yaml"
    session.write_text(
        "name: slow\nmodels:\n  fast: {provider: simulated}\n"
        "  slow: {provider: simulated, latency: {kind: fixed, ms: 60000}}\n"
        "steps:\n  - {id: quick, model: fast, prompt: x}\n"
        "  - {id: long, model: slow, prompt: y}\n"
        "  - {id: after, model: fast, prompt: z, depends_on: [long]}\n"
    )
    db = str(tmp_path / "t.db")
    sid, summary = _interrupt(["run", str(session), "--db", db], tmp_path, "step quick: completed")
    # The step that never started ends skipped (every step ends in a final state).
    assert summary == (
        f"interrupted: session {sid}: 1 completed, 1 cancelled, 1 skipped"
        f" (completed steps are kept: thinktank resume {sid})"
    )
    again, summary = _interrupt(["resume", sid, "--db", db], tmp_path, "step long: running")
    assert again == sid
    assert summary.startswith(f"interrupted: session {sid}: this resume: 0 completed, 1 cancelled")
