"""Text no database takes as it is (lone surrogates, invalid UTF-8, NUL) is stored with
U+FFFD, recorded as repaired, and never costs a batch of paid calls."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import yaml
from click.testing import CliRunner

import thinktank
from tests import pg
from thinktank._text import clean_text
from thinktank.cli.commands import main
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.session.loading import parse_session
from thinktank.store import Store

from .conftest import REPO, SESSIONS

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

BAD = "bad \ud800 half, \udce9 escaped byte, \x00 nul, \ud83d\ude00 pair"
"""What a model can hand back: a lone surrogate (a JSON reply's bad ``\\ud800``), a
surrogateescape byte, NUL, and a surrogate pair (one character, split in two)."""
CLEAN = "bad \ufffd half, \ufffd escaped byte, \ufffd nul, \U0001f600 pair"

SESSION = """
name: bad-text
inputs:
  topic: {type: string}
steps:
  - id: ask
    prompt: "Say something about {{ inputs.topic }}"
    models: [m1]
  - id: merge
    prompt: "Merge: {{ steps.ask.output }}"
    models: [m1, m2]
    depends_on: [ask]
"""


class BadTextModel:
    """Answers every prompt with :data:`BAD`, and keeps the prompts it was sent."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.prompts: list[str] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def provider(self) -> str:
        return "test"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.prompts.append(request.prompt)
        return ModelResponse(content=BAD, model=self._name, input_tokens=5, output_tokens=7)


def test_clean_text() -> None:
    """Surrogates and NUL become U+FFFD, pairs their character; clean text is kept as is."""
    assert clean_text(BAD) == CLEAN
    ok = "plain é ✓"
    assert clean_text(ok) is ok


async def _run_and_read(db_url: str) -> str:
    spec = parse_session(yaml.safe_load(SESSION), known_models=["m1", "m2"])
    models = {"m1": BadTextModel("m1"), "m2": BadTextModel("m2")}
    result = await thinktank.run(
        spec, inputs={"topic": "caf\udce9 \x00"}, store=db_url, models=models
    )
    assert result.status == "completed"
    # Inputs and step outputs are repaired in the prompts: providers get valid UTF-8.
    sent = [p for m in models.values() for p in m.prompts]
    assert len(sent) == 3 and all(clean_text(p) is p for p in sent)
    assert "caf\ufffd \ufffd" in sent[0] and CLEAN in sent[1]

    async with await Store.open(db_url, read_only=True) as store:
        stored = await store.get_session(result.session_id)
        assert stored.status == "completed"
        assert stored.inputs == {"topic": "caf\ufffd \ufffd"}
        calls = [c for step in stored.steps for c in step.calls]
        assert len(calls) == 3 and all(c.response == CLEAN for c in calls)
        assert stored.step("ask").output == CLEAN
        assert "call_finished.content of step 'ask'" in stored.text_repairs
        assert "step_finished.output of step 'ask'" in stored.text_repairs
        events = await store.events_of(result.session_id)
        contents = [e["content"] for e in events if e["type"] == "call_finished"]
        assert contents == [CLEAN] * 3
    return result.session_id


def test_bad_model_output_is_stored_repaired_on_every_backend(db_url: str) -> None:
    """A run whose models answer with unencodable text completes and stores every call
    (U+FFFD in place), flags where text was repaired, and reads back in show/export."""
    session_id = anyio.run(_run_and_read, db_url, backend="asyncio")
    runner = CliRunner()
    shown = runner.invoke(main, ["show", session_id, "--db", db_url, "--json"])
    assert shown.exit_code == 0, shown.stderr
    assert "call_finished.content of step 'merge'" in json.loads(shown.stdout)["text_repairs"]
    printed = runner.invoke(main, ["show", session_id, "--db", db_url])
    assert printed.exit_code == 0 and "U+FFFD" in printed.stdout
    exported = runner.invoke(main, ["export", session_id, "--db", db_url])
    assert exported.exit_code == 0, exported.stderr
    events = json.loads(exported.stdout)["events"]
    assert [e["content"] for e in events if e["type"] == "call_finished"] == [CLEAN] * 3


def _thinktank(*args: str | bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "thinktank", *args],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_cli_input_with_a_non_utf8_byte(tmp_path: Path) -> None:
    """`-i question=$'caf\\xe9'` runs to the end with U+FFFD (a one-line warning says so);
    show and resume then work on the session."""
    diamond = str(SESSIONS / "diamond.yaml")
    done = _thinktank("run", diamond, "--db", "t.db", "--no-progress", "--json",
                      "-i", b"question=caf\xe9", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert b"Traceback" not in done.stderr
    assert done.stderr.decode().splitlines() == [
        "warning: --input question: not valid UTF-8; sent and stored as 'caf\ufffd'"
    ]
    session_id = json.loads(done.stdout)["session_id"]
    shown = _thinktank("show", session_id, "--db", "t.db", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr.decode()
    stored = json.loads(shown.stdout)
    assert stored["status"] == "completed"
    assert stored["inputs"] == {"question": "caf\ufffd"}
    # As if the process had died before the last step: resume runs it from the store.
    with sqlite3.connect(tmp_path / "t.db") as conn:
        conn.execute("UPDATE thinktank_sessions SET status = 'interrupted'")
        conn.execute(
            "UPDATE thinktank_steps SET status = 'pending', output = NULL"
            " WHERE step_key = 'verdict'"
        )
    resumed = _thinktank("resume", session_id, "--db", "t.db", "--no-progress", "--json",
                         cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert json.loads(resumed.stdout)["status"] == "completed"


def test_inputs_file_with_invalid_utf8_is_one_line_exit_2(tmp_path: Path) -> None:
    """An inputs file that is not UTF-8 is bad input: one line naming file, line and byte."""
    (tmp_path / "in.yaml").write_bytes(b"# inputs\nquestion: caf\xe9\n")
    (tmp_path / "in.jsonl").write_bytes(b'{"question": "ok"}\n{"question": "caf\xe9"}\n')
    diamond = str(SESSIONS / "diamond.yaml")
    run = _thinktank("run", diamond, "--db", "t.db", "--inputs-file", "in.yaml", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.decode().splitlines() == [
        "error: in.yaml: line 2: byte 0xE9 is not valid UTF-8 (save the file as UTF-8)"
    ]
    many = _thinktank("run-many", diamond, "--inputs", "in.jsonl", "--db", "t.db", cwd=tmp_path)
    assert many.returncode == 2
    assert many.stderr.decode().splitlines() == [
        "error: in.jsonl: line 2: byte 0xE9 is not valid UTF-8 (save the file as UTF-8)"
    ]
    assert not (tmp_path / "t.db").exists()


def test_cli_run_of_a_model_answering_a_lone_surrogate(tmp_path: Path) -> None:
    """A model whose reply holds a lone surrogate: `run` prints its table (no crash on
    stdout), exit 0; the store has U+FFFD and `show` says where text was repaired."""
    (tmp_path / "s.yaml").write_text(
        "name: s\n"
        'models: {m: {provider: simulated, default_reply: "bad \\ud800 reply"}}\n'
        "steps:\n"
        '  - {id: a, prompt: "hi", models: [m]}\n'
        '  - {id: b, prompt: "again {{ steps.a.output }}", models: [m], depends_on: [a]}\n',
        encoding="utf-8",
    )
    done = _thinktank("run", "s.yaml", "--db", "t.db", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert b"bad ? reply" in done.stdout and not done.stderr
    listed = _thinktank("sessions", "--db", "t.db", "--json", cwd=tmp_path)
    session_id = json.loads(listed.stdout)[0]["id"]
    shown = _thinktank("show", session_id, "--db", "t.db", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr.decode()
    text = " ".join(shown.stdout.decode().split())  # as wrapped to the terminal's width
    assert "bad \ufffd reply" in text
    assert "was kept with U+FFFD: " in text
    assert "call_finished.content of step 'a'" in text
