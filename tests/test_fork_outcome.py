"""A fork (and a resume) keeps a reused step's abstention: the step's outcome stays
``no_consensus``, in the result and in the store, and its dependants stay skipped
unless the fork re-runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import thinktank
from thinktank.engine.result import result_of
from thinktank.session.loading import parse_session
from thinktank.store import Store

from . import pg

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url  # the fixture: SQLite and PostgreSQL

MODELS = {
    "x": {"provider": "simulated", "default_reply": "1"},
    "y": {"provider": "simulated", "default_reply": "2"},
    "z": {"provider": "simulated", "default_reply": "1"},
}
STEPS: list[dict[str, Any]] = [
    {"id": "q", "prompt": "?", "models": ["x", "y"], "on_low_consensus": "abstain"},
    {"id": "use", "prompt": "{{ steps.q.output }}", "model": "x", "depends_on": ["q"]},
    {"id": "other", "prompt": "!", "model": "z"},
]


async def _abstained_session(db: str) -> str:
    spec = parse_session({"name": "fork-abstain", "models": MODELS, "steps": STEPS})
    first = await thinktank.run(spec, store=db)
    assert first.steps["q"].outcome == "no_consensus"
    return first.session_id


async def test_a_fork_keeps_the_abstained_steps_outcome(db_url: str) -> None:
    session_id = await _abstained_session(db_url)
    forked = await thinktank.fork(session_id, step="other", store=db_url)
    q = forked.steps["q"]
    assert (q.status, q.outcome, q.output) == ("completed", "no_consensus", None)
    assert q.consensus is not None and q.consensus.cached_from is not None
    assert q.consensus.score == pytest.approx(0.5) and q.calls == []
    assert forked.steps["use"].status == "skipped"
    assert forked.steps["other"].outcome == "answered"
    async with await Store.open(db_url) as store:
        stored = await store.get_session(forked.session_id)
    again = result_of(stored)
    assert again.steps["q"].outcome == "no_consensus"
    assert again.steps["use"].status == "skipped"
    assert again.status == forked.status == "partial"


async def test_a_fork_of_the_abstained_step_runs_it_again(tmp_path: Path) -> None:
    """Re-running the abstained step on agreeing models answers, and its dependant runs."""
    db = str(tmp_path / "t.db")
    session_id = await _abstained_session(db)
    forked = await thinktank.fork(session_id, step="q", step_models=["x", "z"], store=db)
    assert forked.steps["q"].outcome == "answered" and forked.steps["q"].output == "1"
    assert forked.steps["use"].status == "completed"


async def test_a_resume_keeps_the_abstained_steps_outcome(tmp_path: Path) -> None:
    """A resumed session's result reads its seeded abstention as the run did."""
    db = str(tmp_path / "t.db")
    session_id = await _abstained_session(db)
    resumed = await thinktank.resume(session_id, store=db)
    assert resumed.steps["q"].outcome == "no_consensus"
