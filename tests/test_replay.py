"""Resume, replay, re-merge and fork from the database."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.errors import ProviderError, UsageError
from thinktank.events import CallFinished, CallStarted, Event, StepFinished
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.providers.recorded import ReplayClient
from thinktank.session.loading import parse_session
from thinktank.store import StoredSession

from . import pg
from .conftest import SESSIONS
from .test_examples import CASES
from .test_resume_reuse import SESSION as REUSE_SESSION

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url


@pytest.mark.parametrize("path", CASES)
async def test_replay_of_every_example_matches(path: Path, tmp_path: Path) -> None:
    """Replaying a stored example from its recording reproduces every output and merge."""
    db = str(tmp_path / "t.db")
    spec = thinktank.load_session(path)
    result = await thinktank.run(spec, store=db, source=str(path))
    report = await thinktank.replay(result.session_id, store=db)
    assert report.matches, report.diffs
    assert report.replay_id is None and report.replay_cost_usd == 0.0


async def test_remerge_writes_a_new_record_and_leaves_the_original(tmp_path: Path) -> None:
    """Re-merging with another method changes only a new replay session's consensus."""
    db = str(tmp_path / "t.db")
    spec = thinktank.load_session(SESSIONS / "consensus.yaml")
    result = await thinktank.run(spec, store=db)
    async with await thinktank.Store.open(db) as store:
        before = await store.get_session(result.session_id)
    report = await thinktank.replay(result.session_id, store=db, synthesis="medoid", threshold=0.5)
    assert report.kind == "remerge" and report.replay_id is not None
    async with await thinktank.Store.open(db) as store:
        after = await store.get_session(result.session_id)
        new = await store.get_session(report.replay_id)
    assert after == before
    ask = new.step("ask")
    assert ask.consensus is not None and ask.consensus.method == "medoid"
    assert ask.consensus.threshold == 0.5
    assert [c.response for c in ask.calls] == [c.response for c in before.step("ask").calls]
    assert {d.field for d in report.diffs} <= {"method", "outcome", "output"}


async def test_missing_recording_names_step_and_model() -> None:
    """A call with no recording is an error naming the step and model, not a live call."""
    client = ReplayClient("m1", {})
    with pytest.raises(ProviderError, match="no recording for step 'ask', model 'm1', attempt 1"):
        await client.complete(ModelRequest(prompt="p", step_id="ask", attempt=1))


async def test_fork_reuses_upstream_and_reruns_descendants(tmp_path: Path) -> None:
    """fork calls no model for upstream steps and re-runs exactly the step and below."""
    db = str(tmp_path / "t.db")
    spec = thinktank.load_session(SESSIONS / "diamond.yaml")
    original = await thinktank.run(spec, store=db)
    seen: list[Event] = []
    forked = await thinktank.fork(
        original.session_id,
        step="cons",
        prompt="Only the worst risk.",
        store=db,
        on_event=seen.append,
    )
    called = {e.step_id for e in seen if isinstance(e, CallStarted)}
    assert called == {"cons", "verdict"}
    assert forked.status == "completed"
    assert forked.steps["plan"].output == original.steps["plan"].output
    assert forked.steps["pros"].output == original.steps["pros"].output
    assert forked.steps["cons"].prompt == "Only the worst risk."
    async with await thinktank.Store.open(db) as store:
        stored = await store.get_session(forked.session_id)
    assert stored.step("plan").status == "completed" and stored.step("plan").calls == []
    with pytest.raises(UsageError, match="has no step 'nope'"):
        await thinktank.fork(original.session_id, step="nope", store=db)


async def test_resume_finishes_an_interrupted_session_without_resending(tmp_path: Path) -> None:
    """An interrupted session resumes under the same id; finished steps are not re-run."""
    db = str(tmp_path / "t.db")
    spec = parse_session(
        {
            "name": "slow",
            "models": {
                "fast": {"provider": "simulated", "default_reply": "quick"},
                "slow": {
                    "provider": "simulated",
                    "default_reply": "late",
                    "latency": {"kind": "fixed", "ms": 400},
                },
            },
            "steps": [
                {"id": "a", "prompt": "p", "model": "fast"},
                {"id": "b", "prompt": "q", "model": "slow"},
                {
                    "id": "c",
                    "prompt": "{{ steps.a.output }} {{ steps.b.output }}",
                    "model": "fast",
                    "depends_on": ["a", "b"],
                },
            ],
        }
    )
    first: list[Event] = []
    a_done = anyio.Event()

    def listen(event: Event) -> None:
        first.append(event)
        if isinstance(event, StepFinished) and event.step_id == "a":
            a_done.set()

    # Interrupted once "a" finished, while "b" (400 ms) is still waiting for its answer:
    # synchronised on the run's own events, not on a time that a loaded machine misses.
    async with anyio.create_task_group() as tg:

        async def go() -> None:
            await thinktank.run(spec, store=db, on_event=listen)

        tg.start_soon(go)
        await a_done.wait()
        tg.cancel_scope.cancel()
    assert not any(
        isinstance(e, StepFinished) and e.step_id == "b" and e.status == "completed" for e in first
    )
    sid = first[0].session_id
    resumed: list[Event] = []
    result = await thinktank.resume(sid, store=db, on_event=resumed.append)
    assert result.session_id == sid and result.status == "completed"
    assert {e.step_id for e in resumed if isinstance(e, CallStarted)} == {"b", "c"}
    assert result.steps["c"].prompt == "quick late"
    async with await thinktank.Store.open(db) as store:
        stored = await store.get_session(sid)
    assert stored.status == "completed"
    assert all(c.status != "running" for s in stored.steps for c in s.calls)
    assert [c.status for c in stored.step("b").calls] == ["cancelled", "ok"]
    with pytest.raises(UsageError, match="already completed"):
        await thinktank.resume(sid, store=db)


def test_replay_and_fork_commands(tmp_path: Path) -> None:
    """The CLI replays (exit 0 on a match), re-merges and forks."""
    db = str(tmp_path / "t.db")
    runner = CliRunner()
    out = runner.invoke(main, ["run", str(SESSIONS / "consensus.yaml"), "--db", db, "--json"])
    import json

    sid = json.loads(out.stdout)["session_id"]
    rep = runner.invoke(main, ["replay", sid[:8], "--db", db])
    assert rep.exit_code == 0 and "every step matches" in rep.stdout
    remerge = runner.invoke(main, ["replay", sid, "--db", db, "--synthesis", "medoid"])
    assert remerge.exit_code == 0 and "re-merge" in remerge.stdout
    prompt = tmp_path / "p.txt"
    prompt.write_text("Say one thing about {{ steps.ask.output }}.")
    fk = runner.invoke(
        main,
        [
            "fork",
            sid,
            "--step",
            "explain",
            "--prompt-file",
            str(prompt),
            "--db",
            db,
            "--no-progress",
        ],
    )
    assert fk.exit_code == 0, fk.stderr
    bad = runner.invoke(main, ["fork", sid, "--step", "zzz", "--db", db])
    assert bad.exit_code == 2 and "has no step 'zzz'" in bad.stderr


async def _resumed(db: str) -> str:
    """A session interrupted once "both" has fast's answer and waits for slow's, then
    resumed (so fast's answer there is a reused row); its id."""
    answered = anyio.Event()
    sids: list[str] = []

    def listen(event: Event) -> None:
        sids.append(event.session_id)
        if isinstance(event, CallFinished) and event.step_id == "both" and event.model == "fast":
            answered.set()

    async with anyio.create_task_group() as tg:

        async def go() -> None:
            await thinktank.run(parse_session(REUSE_SESSION), store=db, on_event=listen)

        tg.start_soon(go)
        await answered.wait()
        tg.cancel_scope.cancel()
    assert (await thinktank.resume(sids[0], store=db)).status == "completed"
    return sids[0]


async def _stored(db: str, sid: str) -> StoredSession:
    async with await thinktank.Store.open(db) as store:
        return await store.get_session(sid)


def test_a_resumed_session_exports_and_imports(tmp_path: Path, db_url: str) -> None:
    """A resumed session (its history starts the session again, and a call row reuses
    an answer) exports and imports with every call row as it was."""
    src = str(tmp_path / "a.db")
    sid = anyio.run(_resumed, src)
    runner = CliRunner()
    exported = runner.invoke(main, ["export", sid, "--db", src])
    assert exported.exit_code == 0, exported.stderr
    path = tmp_path / "s.json"
    path.write_text(exported.stdout)
    imported = runner.invoke(main, ["import", str(path), "--db", db_url])
    assert imported.exit_code == 0, imported.stderr
    original, copy = anyio.run(_stored, src, sid), anyio.run(_stored, db_url, sid)
    assert any(c.reused_from for s in copy.steps for c in s.calls)
    # (Consensus rows get new ids on import: their event carries none.)
    assert [s.model_dump(exclude={"consensus"}) for s in copy.steps] == [
        s.model_dump(exclude={"consensus"}) for s in original.steps
    ]
    assert (copy.status, copy.total_tokens, copy.cost_usd) == (
        original.status,
        original.total_tokens,
        original.cost_usd,
    )


def test_replay_of_a_resumed_session_matches(tmp_path: Path, db_url: str) -> None:
    """A session interrupted in a step and resumed replays from its recording: the
    step is replayed as the resumed run decided it (its second attempt, with the
    answer served again), not from the cut first attempt."""
    sid = anyio.run(_resumed, db_url)
    stored = anyio.run(_stored, db_url, sid)
    assert stored.step("both").attempts == 2
    report = anyio.run(lambda: thinktank.replay(sid, store=db_url))
    assert report.matches, report.diffs
    assert report.steps == 2


async def test_replay_of_a_forked_session_matches(tmp_path: Path) -> None:
    """A fork reuses its upstream steps without calls; its replay reuses them too and
    replays the re-run ones from the fork's own recording."""
    db = str(tmp_path / "t.db")
    original = await thinktank.run(thinktank.load_session(SESSIONS / "diamond.yaml"), store=db)
    forked = await thinktank.fork(
        original.session_id, step="cons", prompt="Only the worst risk.", store=db
    )
    report = await thinktank.replay(forked.session_id, store=db)
    assert report.matches, report.diffs
    assert report.steps == 4


async def test_replay_of_a_fork_below_a_decompose_step_matches(tmp_path: Path) -> None:
    """Forked below a decompose step, the fork reuses the steps it had added; the
    replay of the fork brings them back as reused too."""
    db = str(tmp_path / "t.db")
    original = await thinktank.run(
        thinktank.load_session(SESSIONS / "research_plan.yaml"), store=db
    )
    forked = await thinktank.fork(original.session_id, step="brief", prompt="Shorter.", store=db)
    assert forked.status == "completed"
    report = await thinktank.replay(forked.session_id, store=db)
    assert report.matches, report.diffs
    assert report.steps == len(original.steps)


async def test_replay_of_a_remerged_session_matches(tmp_path: Path) -> None:
    """A re-merge is recorded as a new session; replaying that one reproduces it."""
    db = str(tmp_path / "t.db")
    result = await thinktank.run(thinktank.load_session(SESSIONS / "consensus.yaml"), store=db)
    remerged = await thinktank.replay(
        result.session_id, store=db, synthesis="medoid", threshold=0.5
    )
    assert remerged.replay_id is not None
    report = await thinktank.replay(remerged.replay_id, store=db)
    assert report.matches, report.diffs


@pytest.mark.parametrize("call", ["resume", "replay", "fork"])
async def test_store_none_is_a_usage_error(call: str) -> None:
    """resume, replay and fork read a stored session: ``store=None`` (no store) is a
    one-line usage error, not the default store."""
    calls = {
        "resume": lambda: thinktank.resume("abcd", store=None),
        "replay": lambda: thinktank.replay("abcd", store=None),
        "fork": lambda: thinktank.fork("abcd", step="s", store=None),
    }
    with pytest.raises(UsageError, match="store=None") as caught:
        await calls[call]()
    assert "\n" not in str(caught.value)


async def test_fork_models_are_clients_and_step_models_the_new_models(tmp_path: Path) -> None:
    """``models=`` of fork is a mapping of clients overriding the registry, as in run,
    resume and replay; the step's new models are ``step_models=``."""
    db = str(tmp_path / "t.db")
    original = await thinktank.run(thinktank.load_session(SESSIONS / "diamond.yaml"), store=db)

    class Fixed:
        name, provider = "critic", "test"

        async def complete(self, request: ModelRequest) -> ModelResponse:
            return ModelResponse(content="Too costly.", model=self.name)

    forked = await thinktank.fork(
        original.session_id,
        step="cons",
        step_models=["critic"],
        models={"critic": Fixed()},
        store=db,
    )
    assert forked.status == "completed"
    assert forked.steps["cons"].output == "Too costly."
    assert forked.steps["pros"].output == original.steps["pros"].output
