"""Selective answering: ``on_low_consensus: abstain`` ends a step with the typed outcome
``no_consensus`` (no output, not a failure), skips its dependants and is stored and shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.engine.result import result_of
from thinktank.session.loading import parse_session
from thinktank.store import Store

MODELS = {
    "x": {"provider": "simulated", "default_reply": "1"},
    "y": {"provider": "simulated", "default_reply": "2"},
    "z": {"provider": "simulated", "default_reply": "1"},
}


def session(steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "abstain", "models": MODELS, "steps": steps, **extra}


SPLIT = {"id": "q", "prompt": "?", "models": ["x", "y"], "on_low_consensus": "abstain"}


async def test_split_vote_abstains_and_skips_dependants(tmp_path: Path) -> None:
    """A split vote below the threshold: q completes with no_consensus and no output, its
    dependant is skipped with the reason, an independent step still runs, the session is
    partial; the store gives back the same result."""
    spec = parse_session(
        session(
            [
                SPLIT,
                {"id": "use", "prompt": "{{ steps.q.output }}", "model": "x", "depends_on": ["q"]},
                {"id": "other", "prompt": "!", "model": "z"},
            ]
        )
    )
    db = tmp_path / "t.db"
    result = await thinktank.run(spec, store=str(db))
    q = result.steps["q"]
    assert (q.status, q.outcome, q.output, q.error) == ("completed", "no_consensus", None, None)
    assert q.consensus is not None and q.consensus.outcome.split(",")[-1] == "no_consensus"
    assert q.consensus.score == 0.5 and q.consensus.content == "1"
    assert result.steps["use"].status == "skipped"
    assert result.steps["use"].skip_reason == (
        "upstream step 'q' found no consensus: consensus 0.50 is below the threshold 0.7"
    )
    assert result.steps["other"].outcome == "answered"
    assert result.status == "partial"
    assert result.error is not None and "no consensus at 'q'" in result.error
    async with await Store.open(str(db)) as store:
        stored = await store.get_session(result.session_id)
    assert result_of(stored).steps["q"].outcome == "no_consensus"


async def test_final_step_abstaining_completes_the_session() -> None:
    """A session whose only (final) step abstains ran every step: completed, with the
    step's outcome no_consensus; under fail_fast an abstention is not a failure."""
    spec = parse_session(session([SPLIT], parallel_execution={"failure_strategy": "fail_fast"}))
    result = await thinktank.run(spec, store=None)
    assert result.status == "completed"
    assert result.steps["q"].outcome == "no_consensus"
    assert result.outputs == {"q": None}


async def test_agreement_answers() -> None:
    """At or above the threshold an abstaining step answers as any other."""
    step = {**SPLIT, "models": ["x", "z"]}
    result = await thinktank.run(parse_session(session([step])), store=None)
    assert (result.steps["q"].outcome, result.steps["q"].output) == ("answered", "1")
    assert result.steps["q"].consensus is not None
    assert "no_consensus" not in result.steps["q"].consensus.outcome


async def test_fork_keeps_dependants_of_an_abstention_skipped(tmp_path: Path) -> None:
    """A fork reusing an abstained step does not run its dependants on a None output."""
    spec = parse_session(
        session(
            [
                SPLIT,
                {"id": "use", "prompt": "{{ steps.q.output }}", "model": "x", "depends_on": ["q"]},
                {"id": "other", "prompt": "!", "model": "z"},
            ]
        )
    )
    db = str(tmp_path / "t.db")
    first = await thinktank.run(spec, store=db)
    forked = await thinktank.fork(first.session_id, step="other", store=db)
    assert forked.steps["use"].status == "skipped"


def test_run_and_show_render_no_consensus(tmp_path: Path) -> None:
    """thinktank run and show name the abstention."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(session([SPLIT])))
    db = str(tmp_path / "t.db")
    run = CliRunner().invoke(main, ["run", str(path), "--db", db, "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "no consensus" in run.stdout and "abstained" in run.stdout
    listed = CliRunner().invoke(main, ["sessions", "--db", db, "--json"])
    shown = CliRunner().invoke(main, ["show", json.loads(listed.stdout)[0]["id"], "--db", db])
    assert "[q] no consensus" in shown.stdout
    assert "no_consensus" in shown.stdout


async def test_a_cached_abstention_abstains_again(tmp_path: Path) -> None:
    """The same split vote asked again is served from the consensus cache, no call made,
    and still abstains and skips its dependant."""
    spec = parse_session(
        session(
            [
                SPLIT,
                {"id": "use", "prompt": "{{ steps.q.output }}", "model": "x", "depends_on": ["q"]},
            ]
        )
    )
    db = str(tmp_path / "t.db")
    await thinktank.run(spec, store=db)
    again = await thinktank.run(spec, store=db)
    q = again.steps["q"]
    assert q.consensus is not None and q.consensus.cached_from is not None
    assert (q.calls, q.outcome, q.output) == ([], "no_consensus", None)
    assert again.steps["use"].status == "skipped"
