"""run-many and dry runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import thinktank
from thinktank.batch import read_inputs_file
from thinktank.cli.commands import main
from thinktank.errors import InputError
from thinktank.session.loading import parse_session

from .conftest import SESSIONS

FLAKY = {
    "name": "flaky",
    "inputs": {"q": {"type": "string"}},
    "models": {
        "ok": {"provider": "simulated", "default_reply": "fine"},
        "bad": {"provider": "simulated", "failure_rate": 1.0},
    },
    "steps": [
        {"id": "a", "prompt": "{{ inputs.q }}", "model": "ok"},
        {"id": "b", "prompt": "{{ inputs.q }}", "model": "bad", "depends_on": ["a"]},
    ],
}


async def test_run_many_some_fail_others_finish(tmp_path: Path) -> None:
    """Failing sessions do not stop the others; counts and store rows are right."""
    spec = parse_session(FLAKY)
    good = parse_session({**FLAKY, "steps": FLAKY["steps"][:1]})
    db = tmp_path / "t.db"
    failing = await thinktank.run_many(
        spec, [{"q": f"x{i}"} for i in range(4)], concurrency=2, store=str(db)
    )
    passing = await thinktank.run_many(
        good, [{"q": f"y{i}"} for i in range(6)], concurrency=4, store=str(db)
    )
    assert failing.counts() == {"partial": 4}
    assert passing.counts() == {"completed": 6}
    assert [i.index for i in passing.items] == list(range(6))
    async with await thinktank.Store.open(str(db)) as store:
        assert len(await store.list_sessions()) == 10


def test_run_many_command_summary_and_exit(tmp_path: Path) -> None:
    """The CLI prints a summary table and exits 1 when any session did not complete."""
    db = str(tmp_path / "t.db")
    out = CliRunner().invoke(
        main,
        [
            "run-many",
            str(SESSIONS / "fact_check.yaml"),
            "--inputs",
            str(SESSIONS / "fact_check.inputs.jsonl"),
            "--concurrency",
            "3",
            "--db",
            db,
            "--json",
        ],
    )
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["items"]) == 5
    assert all(i["result"]["status"] == "completed" for i in data["items"])
    session = tmp_path / "f.json"
    session.write_text(json.dumps(FLAKY))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"q": "a"}\n\n{"q": "b"}\n')
    out = CliRunner().invoke(main, ["run-many", str(session), "--inputs", str(inputs), "--db", db])
    assert out.exit_code == 1
    assert "2 sessions: 2 partial" in out.stdout


def test_bad_input_lines_are_all_reported_and_nothing_runs(tmp_path: Path) -> None:
    """Every bad line is named with its number; exit 2; no session is stored."""
    spec = parse_session(FLAKY)
    path = tmp_path / "in.jsonl"
    path.write_text('{"q": "fine"}\nnot json\n[1]\n{"zz": 1}\n')
    with pytest.raises(InputError) as info:
        read_inputs_file(path, spec)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}:2: not valid JSON")
    assert lines[1] == f"{path}:3: expected a JSON object of input values"
    assert any(line.startswith(f"{path}:4: input 'zz': not declared") for line in lines)
    session = tmp_path / "f.json"
    session.write_text(json.dumps(FLAKY))
    db = tmp_path / "t.db"
    out = CliRunner().invoke(
        main, ["run-many", str(session), "--inputs", str(path), "--db", str(db)]
    )
    assert out.exit_code == 2 and "Traceback" not in out.stderr
    assert not db.exists()


def test_dry_run_calls_nothing_and_estimates_cost(tmp_path: Path) -> None:
    """--dry-run prints the plan and a cost estimate; no database is created."""
    db = tmp_path / "t.db"
    out = CliRunner().invoke(
        main, ["run", str(SESSIONS / "fact_check.yaml"), "--dry-run", "--json", "--db", str(db)]
    )
    assert out.exit_code == 0, out.stderr
    plan = json.loads(out.stdout)
    verify = plan["steps"][0]
    assert (verify["calls_min"], verify["calls_max"]) == (3, 5)
    assert plan["cost_usd_max"] > 0
    assert plan["generations"] == [["verify"], ["explain"]]
    assert not db.exists()
    text = CliRunner().invoke(main, ["run", str(SESSIONS / "research_plan.yaml"), "--dry-run"])
    assert "adds up to 6 sub-steps" in text.stdout


def test_dry_run_cost_is_unknown_without_prices() -> None:
    """A model without a price makes the estimate unknown, not zero."""
    spec = parse_session(
        {
            "name": "u",
            "models": {"m": {"provider": "simulated"}},
            "steps": [{"id": "a", "prompt": "p", "model": "m"}],
        }
    )
    plan = thinktank.dry_run(spec)
    assert plan.cost_usd_max is None and plan.calls_max == 1
