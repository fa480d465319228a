"""Hostile session and inputs files: alias bombs, deep nesting and duplicate keys are
refused with one line and exit 2, before any of them costs memory or a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from thinktank.cli.commands import main
from thinktank.errors import SpecErrors
from thinktank.session.loading import load_session

from .conftest import SESSIONS


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thinktank", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _bomb() -> str:
    """A billion laughs: nine levels of nine aliases, 9**9 strings once expanded."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
        previous = name
    return "\n".join(lines) + "\nname: bomb\nsteps: *i\n"


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0].removeprefix("error: ")


def test_alias_bomb_is_refused_by_the_alias_bound(tmp_path: Path) -> None:
    """A ~400-byte billion-laughs file fails at the alias bound, naming file and line."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(), encoding="utf-8")
    assert path.stat().st_size < 512
    line = _one_line_error(_validate(path))
    assert line.startswith(f"{path}:")
    assert "alias bound" in line


def test_a_session_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A byte that is not UTF-8 names the file, the line and the byte (it was a
    UnicodeDecodeError traceback); an experiment file reads through the same function."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\nsteps: [{id: a, prompt: caf\xe9}]\n")
    line = _one_line_error(_validate(path))
    assert line.startswith(f"{path}:")
    assert "line 2: byte 0xE9 is not valid UTF-8" in line


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    """Nesting 1000 deep gives a one-line 'nested deeper' error, not a RecursionError."""
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\nsteps: " + "[" * 1000 + "]" * 1000 + "\n", encoding="utf-8")
    line = _one_line_error(_validate(path))
    assert line.startswith(f"{path}:2:") and "nested deeper than" in line


def test_deep_json_session_is_refused(tmp_path: Path) -> None:
    """A JSON session nested 100000 deep gets the same one-line error."""
    path = tmp_path / "deep.json"
    path.write_text('{"name": "deep", "steps": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nested deeper than" in _one_line_error(_validate(path))


def test_duplicate_yaml_key_names_the_line_and_key(tmp_path: Path) -> None:
    """A key given twice in a YAML mapping is an error at the second one's line."""
    path = tmp_path / "dup.yaml"
    text = (SESSIONS / "diamond.yaml").read_text(encoding="utf-8")
    text = text.replace("name: diamond\n", "name: diamond\nname: other\n", 1)
    path.write_text(text, encoding="utf-8")
    number = text.splitlines().index("name: other") + 1
    line = _one_line_error(_validate(path))
    assert line == f"{path}:{number}: duplicate key 'name'"


def test_duplicate_json_key_names_the_line_and_key(tmp_path: Path) -> None:
    """A key given twice in a JSON object is an error naming the key and its line."""
    path = tmp_path / "dup.json"
    path.write_text(
        '{"name": "x",\n "steps": [{"id": "a", "prompt": "hi",\n   "prompt": "again"}]}\n'
    )
    line = _one_line_error(_validate(path))
    assert line == f"{path}:3: duplicate key 'prompt'"


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    """'<<' merges are not duplicates: an explicit key overrides a merged one."""
    path = tmp_path / "merge.yaml"
    path.write_text(
        "name: merge\n"
        "models:\n"
        "  base: &base {provider: simulated, seed: 1, default_reply: hi}\n"
        "  other:\n"
        "    <<: *base\n"
        "    seed: 2\n"
        "steps:\n"
        "  - {id: a, prompt: hello, model: other}\n",
        encoding="utf-8",
    )
    spec = load_session(path)
    assert spec.models["other"].seed == 2


def test_library_raises_spec_errors_for_a_bomb(tmp_path: Path) -> None:
    """load_session raises SpecErrors (a UsageError), never a MemoryError or YAMLError."""
    path = tmp_path / "bomb.yml"
    path.write_text(_bomb(), encoding="utf-8")
    with pytest.raises(SpecErrors, match="alias bound"):
        load_session(path)


def test_inputs_file_bomb_and_duplicates_are_refused(tmp_path: Path) -> None:
    """--inputs-file goes through the same bounded loader."""
    session = str(SESSIONS / "diamond.yaml")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb().replace("steps: *i", "question: *i"), encoding="utf-8")
    dup = tmp_path / "dup.yaml"
    dup.write_text("question: a\nquestion: b\n", encoding="utf-8")
    db = str(tmp_path / "t.db")
    for path, expected in ((bomb, "alias bound"), (dup, "2: duplicate key 'question'")):
        result = CliRunner().invoke(main, ["run", session, "--db", db, "--inputs-file", str(path)])
        assert result.exit_code == 2, result.output
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not Path(db).exists()


def test_batch_inputs_line_with_duplicate_key(tmp_path: Path) -> None:
    """A batch inputs line with a key twice is reported as file:line, nothing run."""
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        json.dumps({"question": "a"}) + '\n{"question": "b", "question": "c"}\n', encoding="utf-8"
    )
    db = tmp_path / "t.db"
    result = CliRunner().invoke(
        main, ["run-many", str(SESSIONS / "diamond.yaml"), "--inputs", str(inputs), "--db", str(db)]
    )
    assert result.exit_code == 2, result.output
    assert f"{inputs}:2: duplicate key 'question'" in result.stderr
    assert not db.exists()


def test_self_containing_alias_is_refused(tmp_path: Path) -> None:
    """An alias inside its own anchor (data that contains itself) is one line, exit 2."""
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nsteps: &s\n  - *s\n", encoding="utf-8")
    line = _one_line_error(_validate(path))
    assert line == f"{path}:3: an alias refers to a value that contains it"
