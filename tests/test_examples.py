"""Every example in sessions/ validates and runs on its simulated models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import thinktank

from .conftest import NEEDS_LOCAL, SESSIONS


def _uses_local(path: Path) -> bool:
    """Whether an example needs the local model (read without validating, so that
    collection works where the local extra is not installed)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    default = data.get("default_model") or "local"
    names = [m for s in data["steps"] for m in (s.get("models") or [s.get("model") or default])]
    return any(m == "local" or m.startswith("local-") for m in names)


RUNNABLE = sorted(p for p in SESSIONS.glob("*.yaml") if p.name != "broken.yaml")
# Examples on the built-in local model run the real model (slow; skipped without it).
CASES = [pytest.param(p, id=p.stem, marks=NEEDS_LOCAL if _uses_local(p) else []) for p in RUNNABLE]


def test_there_are_examples() -> None:
    """The diamond, fan-out and consensus examples exist."""
    names = {p.stem for p in RUNNABLE}
    assert {"diamond", "fanout", "consensus", "quickstart"} <= names


@pytest.mark.parametrize("path", CASES)
async def test_example_runs_and_is_stored(path: Path, tmp_path: Path) -> None:
    """The example completes and every step is in the store."""
    spec = thinktank.load_session(path)
    db = tmp_path / "tt.db"
    result = await thinktank.run(spec, store=str(db), source=str(path))
    assert result.status == "completed", result.error
    assert all(s.output for s in result.steps.values())
    async with await thinktank.Store.open(str(db)) as store:
        stored = await store.get_session(result.session_id)
    declared = [s for s in stored.steps if s.parent is None]
    assert [s.step_key for s in declared] == [s.id for s in spec.steps]
    added = [s for s in stored.steps if s.parent is not None]
    assert sorted(s.step_key for s in added) == sorted(
        set(result.steps) - set(s.id for s in spec.steps)
    )
    assert all(s.status == "completed" for s in stored.steps)


async def test_fanout_respects_its_step_limit() -> None:
    """The fan-out example never has more than its 6 steps in flight."""
    spec = thinktank.load_session(SESSIONS / "fanout.yaml")
    in_flight = 0
    peak = 0

    def watch(event: thinktank.events.Event) -> None:
        nonlocal in_flight, peak
        if isinstance(event, thinktank.events.StepStarted):
            in_flight += 1
            peak = max(peak, in_flight)
        elif isinstance(event, thinktank.events.StepFinished):
            in_flight -= 1

    result = await thinktank.run(spec, store=None, on_event=watch)
    assert result.status == "completed"
    assert peak == 6


async def test_readme_session_example_runs() -> None:
    """The session file shown in the README is valid and runs."""
    import re

    import yaml

    readme = (SESSIONS.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    spec = thinktank.parse_session(yaml.safe_load(block.group(1)))
    result = await thinktank.run(spec, store=None)
    assert result.status == "completed"


def test_show_names_who_proposed_each_added_step(tmp_path: Path) -> None:
    """show on research_plan says which planners proposed each added step."""
    from click.testing import CliRunner

    from thinktank.cli.commands import main

    db = str(tmp_path / "t.db")
    runner = CliRunner()
    out = runner.invoke(main, ["run", str(SESSIONS / "research_plan.yaml"), "--db", db, "--json"])
    import json

    sid = json.loads(out.stdout)["session_id"]
    shown = runner.invoke(main, ["show", sid, "--db", db]).stdout
    assert "added at run time by research; proposed by planner_a, planner_b" in shown
    assert "[research-synthesis]" in shown
