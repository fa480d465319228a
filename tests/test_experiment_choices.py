"""An experiment asking ``choice`` with each item's own choices (``answer_format:
choice`` without ``choices``): the prompt lists the item's options, the provider is
sent the item's letters, the scorer reads the item's options, and a bad item stops the
run before any call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from thinktank.cli.commands import main

from .fakeserver import FakeServer, run_fake_server
from .test_eval_runner import write_config

ITEMS = [
    {
        "id": "q1",
        "question": "Second city of France?",
        "choices": ["Paris", "Lyon"],
        "target": "Lyon",
    },
    {
        "id": "q2",
        "question": "Gastronomic capital?",
        "choices": ["Lyon", "Nice", "Brest"],
        "target": "Lyon",
    },
]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    with run_fake_server() as fake:
        monkeypatch.setenv("THINKTANK_CONFIG", str(write_config(tmp_path / "t.toml", fake, ["a"])))
        yield fake


def _experiment(tmp_path: Path, rows: list[dict[str, Any]], answer_format: Any = "choice") -> Path:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    experiment = {
        "name": "mc",
        "dataset": "data.jsonl",
        "prompt": "{{ question }}",
        "grid": [{"models": ["a"]}],
        "scorer": "choice",
        "answer_format": answer_format,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def _eval(path: Path, tmp_path: Path, *report: str) -> tuple[int, str, str]:
    # --no-report: the report's derived figures score stored answers without the
    # dataset, so without each item's choices.
    args = ["eval", str(path), "--db", str(tmp_path / "t.db"), "--yes", "--json"]
    args += list(report) or ["--no-report"]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


def test_each_item_is_asked_and_scored_with_its_own_choices(
    tmp_path: Path, server: FakeServer
) -> None:
    server.set_reply("a", "(B) Lyon")
    code, out, err = _eval(_experiment(tmp_path, ITEMS), tmp_path)
    assert code == 0, err + out
    by_prompt = {r.json["messages"][0]["content"]: r.json for r in server.requests}
    first = "Second city of France?\nA) Paris\nB) Lyon\nAnswer with the letter only."
    second = "Gastronomic capital?\nA) Lyon\nB) Nice\nC) Brest\nAnswer with the letter only."
    assert set(by_prompt) == {first, second}
    enum = by_prompt[second]["response_format"]["json_schema"]["schema"]["properties"]
    assert enum["answer"]["enum"] == ["A", "B", "C"]
    # "(B) Lyon" is right for q1 (Lyon is B) and wrong for q2 (Lyon is A): the target's
    # text is read against the item's own options.
    summary = json.loads(out)
    assert summary["correct"] == 1 and summary["scored"] == 2, summary


def test_a_custom_choices_field(tmp_path: Path, server: FakeServer) -> None:
    rows = [{**{k: v for k, v in r.items() if k != "choices"}, "opts": r["choices"]} for r in ITEMS]
    server.set_reply("a", '{"answer": "A"}')
    path = _experiment(tmp_path, rows, {"kind": "choice", "choices_field": "opts"})
    code, out, err = _eval(path, tmp_path)
    assert code == 0, err + out
    assert json.loads(out)["correct"] == 1  # A is Lyon for q2 only


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"choices": None}, "data.jsonl:2: choices: missing (the item's choices)"),
        ({"choices": ["Lyon"]}, "data.jsonl:2: choices: answer format 'choice' needs at least two"),
        ({"choices": "Lyon, Nice"}, "data.jsonl:2: choices: expected a list of strings"),
    ],
)
def test_a_bad_item_is_one_line_exit_2_before_any_call(
    tmp_path: Path, server: FakeServer, bad: dict[str, Any], message: str
) -> None:
    second = {k: v for k, v in {**ITEMS[1], **bad}.items() if v is not None}
    code, _, err = _eval(_experiment(tmp_path, [ITEMS[0], second]), tmp_path)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not server.requests


def test_choices_field_needs_per_item_choices(tmp_path: Path, server: FakeServer) -> None:
    fmt = {"kind": "choice", "choices": ["x", "y"], "choices_field": "opts"}
    code, _, err = _eval(_experiment(tmp_path, ITEMS, fmt), tmp_path)
    assert code == 2
    assert "answer_format: 'choices_field' is for answer format 'choice' without" in err
    assert not server.requests


def test_the_report_runs_with_letter_targets(tmp_path: Path, server: FakeServer) -> None:
    """The report's derived merges of a per-item choice experiment: no declared format
    (the stored samples do not hold the items' choices), letter targets still score."""
    rows = [{**ITEMS[0], "target": "B"}, {**ITEMS[1], "target": "A"}]
    server.set_reply("a", "B")
    code, out, err = _eval(_experiment(tmp_path, rows), tmp_path, "--csv", str(tmp_path / "r.csv"))
    assert code == 0, err + out
    summary = json.loads(out)
    assert summary["correct"] == 1 and "report" in summary
