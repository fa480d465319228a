"""A step timeout merges the answers that arrived (issue #11, item 12).

Five models, four answer at once and one sleeps past the step's deadline: the step
completes with the four merged, outcome ``k_of_n``, and the slow call stored as
cancelled. With no answer at the deadline the step still fails as timed out, and a
cancellation from outside the step is never turned into a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import thinktank
from tests import pg
from thinktank.events import ConsensusComputed, Event
from thinktank.store import Store

from .fakeserver import FakeServer, Fault, run_fake_server
from .test_modes import one_step, run_stored, sim

STEP_TIMEOUT_MS = 1500
"""Long enough for four instant models on a loaded machine, far below the slow one."""
SLOW_MS = 60_000


def price(usd: float) -> dict[str, float]:
    return {"input_cost_per_mtok": usd, "output_cost_per_mtok": usd}


CASES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    # mode: (models, step fields, outcome)
    "all": (
        {
            "a": sim("Paris", 5),
            "b": sim("paris.", 5),
            "slow": sim("Lyon", SLOW_MS),
            "c": sim("The answer is Paris", 5),
            "d": sim("Nice", 5),
        },
        {},
        "k_of_n",
    ),
    # Quorum wants all five to agree, so it waits for the slow one.
    "quorum": (
        {
            "a": sim("Paris", 5),
            "b": sim("Paris", 5),
            "c": sim("paris", 5),
            "d": sim("Paris.", 5),
            "slow": sim("Paris", SLOW_MS),
        },
        {"min_models": 5},
        "k_of_n",
    ),
    # The cheap ones disagree, so the cascade reaches the dear, slow model.
    "cascade": (
        {
            "slow": sim("Lyon", SLOW_MS, **price(50)),
            "c1": sim("Paris", 5, **price(1)),
            "c2": sim("Lyon", 5, **price(2)),
            "c3": sim("Nice", 5, **price(3)),
            "c4": sim("Paris", 5, **price(4)),
        },
        {},
        "k_of_n,low_consensus",
    ),
}


@pytest.mark.parametrize("mode", sorted(CASES))
async def test_step_timeout_merges_what_arrived(mode: str, tmp_path: Path) -> None:
    """4 of 5 answered at the deadline: completed, merged from 4, k_of_n, slow cancelled."""
    models, fields, outcome = CASES[mode]
    spec = one_step(models, mode=mode, timeout_ms=STEP_TIMEOUT_MS, **fields)
    with anyio.fail_after(30):
        result, stored = await run_stored(spec, tmp_path / "t.db")
    step = result.steps["q"]
    assert (step.status, step.error) == ("completed", None)
    assert step.output in {"Paris", "paris.", "paris", "Paris."}
    consensus = step.consensus
    assert consensus is not None and consensus.outcome == outcome
    assert f"4 of 5 models answered before the step timed out after {STEP_TIMEOUT_MS} ms" in (
        consensus.note or ""
    )
    calls = {c.model_id: c for c in stored.steps[0].calls}
    assert {m: c.status for m, c in calls.items()} == {
        **{m: "ok" for m in models if m != "slow"},
        "slow": "cancelled",
    }
    assert calls["slow"].id not in consensus.included_call_ids
    assert stored.steps[0].status == "completed"
    assert stored.steps[0].consensus.outcome == outcome
    if mode == "cascade":
        assert consensus.escalation == [["c1", "c2"], ["c3"], ["c4"], ["slow"]]


async def test_no_answer_at_the_deadline_still_fails_as_timed_out(tmp_path: Path) -> None:
    """Nothing arrived: the step fails with the timeout, and no consensus is stored."""
    spec = one_step(
        {"a": sim("Paris", SLOW_MS), "b": sim("Paris", SLOW_MS)}, timeout_ms=300, retries=1
    )
    with anyio.fail_after(30):
        result, stored = await run_stored(spec, tmp_path / "t.db")
    step = result.steps["q"]
    assert (step.status, step.error, step.consensus) == ("failed", "timed out after 300 ms", None)
    assert [c.status for c in stored.steps[0].calls] == ["cancelled"] * 4


async def test_a_timed_out_judge_falls_back_on_what_arrived(tmp_path: Path) -> None:
    """The deadline cuts the judge: its fallback merges the answers, flagged."""
    spec = one_step(
        {"a": sim("Paris", 5), "b": sim("Paris", 5), "judge": sim("merged", SLOW_MS)},
        synthesis="judge",
        synthesizer="judge",
        timeout_ms=STEP_TIMEOUT_MS,
        extra=["judge"],
    )
    with anyio.fail_after(30):
        result, stored = await run_stored(spec, tmp_path / "t.db")
    step = result.steps["q"]
    assert (step.status, step.output) == ("completed", "Paris")
    assert step.consensus.outcome == "judge_failed" and step.consensus.method == "majority"
    assert {c.model_id: c.status for c in stored.steps[0].calls}["judge"] == "cancelled"


async def test_an_outside_cancellation_is_not_turned_into_a_result(tmp_path: Path) -> None:
    """Only the step's own deadline merges: cancelling the run from outside while four
    answers are in merges nothing and propagates."""
    models, _, _ = CASES["all"]
    spec = one_step(models, timeout_ms=SLOW_MS)
    events: list[Event] = []
    with anyio.move_on_after(1.0) as scope:
        await thinktank.run(spec, store=str(tmp_path / "t.db"), on_event=events.append)
    assert scope.cancelled_caught
    assert not [e for e in events if isinstance(e, ConsensusComputed)]


@pytest.fixture
def server() -> Any:
    with run_fake_server() as srv:
        yield srv


async def test_execute_parallel_merges_what_arrived_over_http(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """execute_parallel over real loopback HTTP: the slow model is cut at the
    execution's deadline and the four answers are merged."""
    monkeypatch.setenv("TT_TEST_KEY", "sk-test")
    names = ["a", "b", "c", "d", "slow"]
    (tmp_path / "thinktank.toml").write_text(
        "".join(
            f'[models.{name}]\nprovider = "openai"\nmodel = "{name}"\n'
            f'base_url = "{server.url}/v1"\napi_key_env = "TT_TEST_KEY"\ntimeout_s = 120\n'
            for name in names
        )
    )
    for name in names:
        server.set_reply(name, "Paris" if name != "slow" else "Lyon")
    server.add_faults(Fault.slow(SLOW_MS / 1000), model="slow")
    with anyio.fail_after(60):
        result = await thinktank.execute_parallel(
            "Capital of France?",
            thinktank.ParallelExecutionConfig(models=names, timeout_per_step_ms=5000),
            store=str(tmp_path / "t.db"),
        )
    assert result.error is None and result.synthesis is not None
    assert (result.synthesis.content, result.synthesis.outcome) == ("Paris", "k_of_n")
    by_model = {r.model: r for r in result.responses}
    assert by_model["slow"].status == "cancelled" and not by_model["slow"].included_in_consensus
    assert all(by_model[m].status == "ok" and by_model[m].included_in_consensus for m in "abcd")


def test_outside_a_scheduler_the_step_scope_merges_too() -> None:
    """Called directly (no scheduler: the attempt's own scope is cut), a timed-out
    multi-model step merges what arrived as well."""
    from thinktank.engine.steps import StepExecutor
    from thinktank.providers.simulated import SimulatedModel, SimulatedModelConfig
    from thinktank.session.loading import parse_session

    models, _, _ = CASES["all"]
    spec = parse_session(
        {
            "name": "direct",
            "steps": [
                {"id": "q", "prompt": "p", "models": list(models), "timeout_ms": STEP_TIMEOUT_MS}
            ],
        },
        known_models=list(models),
    )
    clients = {
        name: SimulatedModel(name, SimulatedModelConfig.model_validate(config))
        for name, config in models.items()
    }
    events: list[Event] = []
    executor = StepExecutor(
        session_id="x", spec=spec, clients=clients, inputs={}, emit=events.append
    )

    async def main() -> object:
        with anyio.fail_after(30):
            return await executor("q")

    assert anyio.run(main, backend="asyncio") is None
    assert executor.outputs["q"] in {"Paris", "paris.", "The answer is Paris"}
    [consensus] = [e for e in events if isinstance(e, ConsensusComputed)]
    assert consensus.outcome == "k_of_n" and len(consensus.included_call_ids) == 3


db_url = pg.db_url
pg_server = pg.pg_server
pg_url = pg.pg_url


async def test_a_timed_out_quorum_without_agreement_is_stored(db_url: str) -> None:
    """Four disagreeing answers at the deadline of a quorum step: merged and flagged
    with every outcome that applies, stored on SQLite and PostgreSQL alike."""
    models = {
        "a": sim("1", 5),
        "b": sim("2", 5),
        "c": sim("3", 5),
        "d": sim("4", 5),
        "slow": sim("1", SLOW_MS),
    }
    spec = one_step(models, mode="quorum", timeout_ms=STEP_TIMEOUT_MS)
    with anyio.fail_after(60):
        result = await thinktank.run(spec, store=db_url)
        async with await thinktank.Store.open(db_url) as store:
            stored = await store.get_session(result.session_id)
    step = result.steps["q"]
    assert (step.status, step.output) == ("completed", "1")
    assert step.consensus.outcome == "k_of_n,quorum_not_reached,low_consensus"
    assert stored.steps[0].consensus.outcome == step.consensus.outcome


async def test_consensus_rows_survive_the_outcome_column_migration(db_url: str) -> None:
    """A consensus stored at migration 0003 is still there after 0004 widened its
    ``outcome`` column, with its indexes."""
    from sqlalchemy import Connection, insert

    from tests.test_store import T0, new_id
    from tests.test_store_schema import _declared_indexes, _indexes, _write_old_session
    from thinktank.store import _create_engine
    from thinktank.store._migrations import MIGRATIONS, initial_tables, upgrade

    sid, step_ids = new_id(), (new_id(), new_id())

    def write(conn: Connection) -> None:
        _write_old_session(conn, sid, step_ids)
        conn.execute(
            insert(initial_tables().tables["thinktank_consensus"]).values(
                id=new_id(),
                session_id=sid,
                step_id=step_ids[0],
                method="majority",
                score=0.5,
                threshold=0.7,
                reached=False,
                content="42",
                outcome="k_of_n,low_consensus",
                clusters=[],
                included_call_ids=[],
                created_at=T0,
                mode="all",
                early_termination=False,
                escalation=[],
                items=[],
            )
        )

    engine, _ = _create_engine(db_url)
    try:
        await upgrade(engine, MIGRATIONS[:3])
        async with engine.begin() as conn:
            await conn.run_sync(write)
    finally:
        await engine.dispose()
    async with await Store.open(db_url) as store:
        stored = await store.get_session(sid)
    consensus = stored.steps[0].consensus
    assert (consensus.content, consensus.outcome) == ("42", "k_of_n,low_consensus")
    engine, _ = _create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_indexes) == _declared_indexes()
    finally:
        await engine.dispose()
