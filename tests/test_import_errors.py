"""``thinktank import`` of a malformed export: one line naming the event and field,
exit 2, and nothing written."""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from thinktank.cli.commands import main

from .conftest import SESSIONS

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real export of the diamond session (4 steps, 4 calls)."""
    db = str(tmp_path_factory.mktemp("src") / "a.db")
    runner = CliRunner()
    run = runner.invoke(main, ["run", str(SESSIONS / "diamond.yaml"), "--db", db, "--json"])
    assert run.exit_code == 0, run.output
    sid = json.loads(run.stdout)["session_id"]
    exported = runner.invoke(main, ["export", sid, "--db", db])
    assert exported.exit_code == 0, exported.output
    data: dict[str, Any] = json.loads(exported.stdout)
    return data


def _index(data: dict[str, Any], kind: str) -> int:
    return next(i for i, e in enumerate(data["events"]) if e["type"] == kind)


def _drop_call_id(data: dict[str, Any]) -> None:
    del data["events"][_index(data, "call_finished")]["call_id"]


def _numeric_time(data: dict[str, Any]) -> None:
    data["events"][_index(data, "step_started")]["at"] = 12345


def _step_without_depends_on(data: dict[str, Any]) -> None:
    del data["events"][0]["steps"][1]["depends_on"]


def _naive_time(data: dict[str, Any]) -> None:
    data["events"][_index(data, "call_started")]["at"] = "2026-01-01T00:00:00"


def _unknown_step(data: dict[str, Any]) -> None:
    data["events"][_index(data, "step_started")]["step_id"] = "nowhere"


def _other_session(data: dict[str, Any]) -> None:
    data["events"][_index(data, "step_finished")]["session_id"] = "another"


def _event_not_an_object(data: dict[str, Any]) -> None:
    data["events"][2] = 5


def _unknown_type(data: dict[str, Any]) -> None:
    data["events"][2]["type"] = "bogus"


def _tokens_as_text(data: dict[str, Any]) -> None:
    data["events"][_index(data, "call_finished")]["input_tokens"] = "12"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_drop_call_id, "] (call_finished): call_id: Field required"),
        (_numeric_time, "] (step_started): at: Expected `datetime`, got `int`"),
        (_step_without_depends_on, "events[0] (session_started): steps[1].depends_on: Field"),
        (_naive_time, "] (call_started): at: a time without a timezone"),
        (_unknown_step, "] (step_started): step_id: no step 'nowhere' in the session"),
        (_other_session, "] (step_finished): session_id: not the exported session"),
        (_event_not_an_object, "events[2]: Input should be a valid dictionary"),
        (_unknown_type, "events[2]: type: unknown event type 'bogus'"),
        (_tokens_as_text, "] (call_finished): input_tokens: Expected `int | null`, got `str`"),
    ],
)
def test_malformed_event_is_one_line_and_nothing_is_written(
    tmp_path: Path, export: dict[str, Any], mutate: Mutation, expected: str
) -> None:
    """Each malformed export gives exit 2 and one line naming the event and field."""
    data = copy.deepcopy(export)
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    db = tmp_path / "dst.db"
    result = CliRunner().invoke(main, ["import", str(path), "--db", str(db)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: not a thinktank session export: events")
    assert expected in lines[0]
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from thinktank_sessions").fetchone() == (0,)
            assert conn.execute("select count(*) from thinktank_events").fetchone() == (0,)


def test_the_unmodified_export_still_imports(tmp_path: Path, export: dict[str, Any]) -> None:
    """The checks accept a real export: the session is imported whole."""
    path = tmp_path / "good.json"
    path.write_text(json.dumps(export), encoding="utf-8")
    db = tmp_path / "dst.db"
    result = CliRunner().invoke(main, ["import", str(path), "--db", str(db)])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(db) as conn:
        count = conn.execute("select count(*) from thinktank_events").fetchone()[0]
    assert count == len(export["events"])
