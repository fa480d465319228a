"""Queued sessions and the executor seam (``thinktank.executor``).

A session is written as ``queued`` (``enqueue``), listed and shown as such, and run
later by id (``run_queued``): exactly once when two processes ask at once, continued
without re-sending a finished call after its worker was killed. ``LocalExecutor`` runs
submitted sessions in a task group under a session limit (a hypothesis property test).

Subprocess workers run :func:`worker` (``python -c`` from the repo root): ``race`` prints
``ready``, waits for ``go`` and runs ``run_queued`` on every id it is given (the test
releases two of them at once with ``run_workers``); ``run`` runs one id at once (the
process the kill test kills).
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinktank.cli.commands import main
from thinktank.engine.runner import with_budget
from thinktank.errors import InputError, SpecErrors, UsageError
from thinktank.executor import LocalExecutor, enqueue, run_queued
from thinktank.providers.base import ModelRequest, ModelResponse
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec
from thinktank.store import Store

from . import pg
from .conftest import CallLog, CountingModel
from .fakeserver import FakeServer, Fault, run_fake_server
from .test_store_concurrency import REPO, run_workers

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

_CHILD = "import sys; from tests.test_queued import worker; worker(sys.argv[1:])"


def chain(name: str = "queued", model: Any = "m", n: int = 3) -> SessionSpec:
    """A chain of ``n`` one-model steps whose prompts start with the topic input."""
    steps = [{"id": "s0", "prompt": "{{ inputs.topic }} s0", "model": "m"}]
    for i in range(1, n):
        steps.append(
            {
                "id": f"s{i}",
                "prompt": f"{{{{ inputs.topic }}}} s{i} after {{{{ steps.s{i - 1}.output }}}}",
                "model": "m",
                "depends_on": [f"s{i - 1}"],
            }
        )
    data: dict[str, Any] = {
        "name": name,
        "inputs": {"topic": {"type": "string"}},
        "steps": steps,
    }
    if not isinstance(model, str):
        data["models"] = {"m": model}
    return parse_session(data, known_models=["m"])


def served(server: FakeServer) -> dict[str, Any]:
    """The session's model ``m``: the fake server over loopback, stored in the spec, so
    that a worker process needs nothing but the session's id."""
    return {
        "provider": "openai",
        "model": "m",
        "base_url": server.url + "/v1",
        "max_retries": 0,
        "timeout_s": 30,
    }


def prompts_sent(server: FakeServer) -> Counter[str]:
    """How many times each prompt reached the fake server."""
    return Counter(
        str(r.json["messages"][-1]["content"]) for r in server.requests if r.json is not None
    )


# -- one process -----------------------------------------------------------------------


async def test_a_queued_session_is_listed_then_run_once_to_completion(db_url: str) -> None:
    """enqueue writes a ``queued`` row (no steps, no lease) that ``list_sessions`` and
    ``get_session`` show; ``run_queued`` runs it under that id to ``completed``, each
    call once; a second ``run_queued`` runs nothing and returns the stored result."""
    log = CallLog()
    models = {"m": CountingModel("m", log)}
    async with await Store.open(db_url) as store:
        sid = await enqueue(chain(), store=store, inputs={"topic": "t"}, models=models, queue="q1")
        [listed] = await store.list_sessions()
        assert (listed.id, listed.status, listed.queue) == (sid, "queued", "q1")
        assert listed.queued_at is not None and listed.steps_total == 0
        stored = await store.get_session(sid)
        assert stored.status == "queued" and stored.steps == [] and stored.inputs == {"topic": "t"}
        assert await store.lease_of(sid) is None
        assert await store.queued_sessions(queue="q1") == [sid]
        assert await store.queued_sessions(queue="other") == []
        # Queued before a time (how workers find sessions nothing put on their queue).
        assert await store.queued_sessions(before=listed.queued_at) == []
        after = listed.queued_at + timedelta(microseconds=1)
        assert await store.queued_sessions(queue="q1", before=after) == [sid]

        done = await run_queued(sid, store=store, models=models)
        assert done.how == "started" and done.result is not None
        assert done.result.session_id == sid and done.result.status == "completed"
        stored = await store.get_session(sid)
        assert stored.status == "completed" and stored.queue == "q1"
        assert [s.status for s in stored.steps] == ["completed"] * 3
        assert stored.queued_at is not None and stored.started_at > stored.queued_at
        assert [c for c in log.calls] == [("s0", "m", 1), ("s1", "m", 1), ("s2", "m", 1)]
        assert await store.lease_of(sid) is None
        assert await store.queued_sessions() == []

        again = await run_queued(sid, store=store, models=models)
        assert again.how == "finished" and again.result is not None
        assert again.result.status == "completed" and len(log.calls) == 3


def test_the_sessions_command_lists_and_shows_a_queued_session(tmp_path: Path) -> None:
    """``thinktank sessions`` lists a queued session with its status and ``show`` shows
    it (no steps yet) instead of failing."""
    db = tmp_path / "q.db"

    async def queue_one() -> str:
        async with await Store.open(str(db)) as store:
            return await enqueue(
                chain(name="waiting"),
                store=store,
                inputs={"topic": "t"},
                models={"m": CountingModel("m", CallLog())},
            )

    sid = anyio.run(queue_one)
    listed = CliRunner().invoke(main, ["sessions", "--db", str(db)], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert sid[:8] in listed.stdout and "queued" in listed.stdout and "waiting" in listed.stdout
    as_json = CliRunner().invoke(
        main, ["sessions", "--db", str(db), "--json"], catch_exceptions=False
    )
    assert as_json.exit_code == 0, as_json.output
    [row] = json.loads(as_json.stdout)
    assert row["status"] == "queued" and row["queued_at"] is not None
    shown = CliRunner().invoke(main, ["show", sid[:8], "--db", str(db)], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "queued" in shown.stdout


async def test_an_invalid_session_is_refused_when_queued(db_url: str) -> None:
    """A model nobody configured, or inputs that do not match, raise at ``enqueue``;
    nothing is written."""
    async with await Store.open(db_url) as store:
        with pytest.raises(SpecErrors, match="nowhere"):
            await enqueue(
                parse_session(
                    {"name": "x", "steps": [{"id": "a", "prompt": "p", "model": "nowhere"}]},
                    known_models=["nowhere"],
                ),
                store=store,
            )
        with pytest.raises(InputError, match="topic"):
            models = {"m": CountingModel("m", CallLog())}
            await enqueue(chain(), store=store, inputs={"topic": 3}, models=models)
        # A cost budget on a model with no price: refused now, not failed on a worker.
        with pytest.raises(SpecErrors, match="a cost budget needs a price"):
            priced = with_budget(chain(), max_cost_usd=1.0)
            await enqueue(priced, store=store, inputs={"topic": "t"}, models=models)
        assert await store.list_sessions() == []


async def test_a_queued_session_that_cannot_start_ends_failed(db_url: str) -> None:
    """Queued with a client ``m`` that the worker does not have: ``run_queued`` raises
    the spec error and the row ends ``failed`` with the reason, unleased, so no
    worker picks it up again."""
    async with await Store.open(db_url) as store:
        sid = await enqueue(
            chain(), store=store, inputs={"topic": "t"}, models={"m": CountingModel("m", CallLog())}
        )
        with pytest.raises(SpecErrors):
            await run_queued(sid, store=store)
        stored = await store.get_session(sid)
        assert stored.status == "failed" and stored.error is not None
        assert "cannot start" in stored.error
        assert await store.lease_of(sid) is None
        assert (await run_queued(sid, store=store)).how == "finished"


async def test_a_leased_session_is_not_run_twice(db_url: str) -> None:
    """While another worker holds the lease, ``run_queued`` runs nothing: ``busy``,
    naming the holder."""
    log = CallLog()
    models = {"m": CountingModel("m", log)}
    async with await Store.open(db_url) as store:
        sid = await enqueue(chain(), store=store, inputs={"topic": "t"}, models=models)
        assert await store.claim_session(sid, worker_id="elsewhere", ttl_s=60)
        busy = await run_queued(sid, store=store, models=models)
        assert (busy.how, busy.result, busy.holder) == ("busy", None, "elsewhere")
        assert log.calls == [] and (await store.get_session(sid)).status == "queued"
        assert not await store.drop_queued(sid, reason="no")  # claimed: it stays


async def test_a_session_cancelled_while_queued_never_runs(db_url: str) -> None:
    """A queued session dropped before anyone claimed it (a cancel) is not started by a
    later ``run_queued``, in whatever process: it is returned as it was left."""
    log = CallLog()
    models = {"m": CountingModel("m", log)}
    async with await Store.open(db_url) as store:
        sid = await enqueue(chain(), store=store, inputs={"topic": "t"}, models=models)
        assert await store.drop_queued(sid, reason="cancelled before it started")
        done = await run_queued(sid, store=store, models=models)
        assert done.how == "finished" and done.result is not None
        assert done.result.status == "interrupted" and log.calls == []
        stored = await store.get_session(sid)
        assert (stored.status, stored.steps) == ("interrupted", [])
        assert await store.lease_of(sid) is None


# -- several processes -----------------------------------------------------------------


async def _race(url: str, ids: list[str]) -> list[str]:
    async with await Store.open(url) as store:
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        assert line.strip() == "go"
        return [(await run_queued(sid, store=store)).how for sid in ids]


async def _run_one(url: str, sid: str) -> None:
    async with await Store.open(url) as store:
        await run_queued(sid, store=store, lease_ttl_s=1)


def worker(argv: list[str]) -> None:
    """A subprocess: ``race URL ID...`` (after ``go``) or ``run URL ID``."""
    command, url, *ids = argv
    if command == "race":
        print(json.dumps(anyio.run(_race, url, ids)), flush=True)
    elif command == "run":
        anyio.run(_run_one, url, ids[0])
    else:
        raise SystemExit(f"worker: unknown command {command!r}")


async def _queue(url: str, spec: SessionSpec, topics: list[str]) -> list[str]:
    async with await Store.open(url) as store:
        return [await enqueue(spec, store=store, inputs={"topic": t}) for t in topics]


@pytest.mark.slow
async def test_two_processes_racing_run_queued_run_each_session_once(
    db_url: str, tmp_path: Path
) -> None:
    """Two processes call ``run_queued`` on the same 20 queued ids at the same moment
    (one in order, one in reverse): every session runs in exactly one of them, and
    the model server receives each prompt exactly once."""
    with run_fake_server() as server:
        server.add_faults(*[Fault.slow(0.02)] * 60)
        topics = [f"topic{i}" for i in range(20)]
        ids = await _queue(db_url, chain(model=served(server)), topics)
        hows = await run_workers(
            [["race", db_url, *ids], ["race", db_url, *reversed(ids)]], tmp_path, child=_CHILD
        )
        sent = prompts_sent(server)
    per_session = [Counter(pair) for pair in zip(hows[0], reversed(hows[1]), strict=True)]
    for counted in per_session:
        assert counted["started"] == 1, per_session
        assert counted["started"] + counted["busy"] + counted["finished"] == 2
    assert len(sent) == 60 and set(sent.values()) == {1}, sent
    async with await Store.open(db_url) as store:
        assert {(await store.get_session(sid)).status for sid in ids} == {"completed"}


async def _ok_calls(url: str, sid: str) -> set[tuple[str, int]]:
    async with await Store.open(url) as store:
        stored = await store.get_session(sid)
    return {(s.step_key, c.attempt) for s in stored.steps for c in s.calls if c.status == "ok"}


@pytest.mark.slow
async def test_a_killed_run_is_finished_by_run_queued_in_another_process(
    db_url: str, tmp_path: Path
) -> None:
    """A process running a queued session is killed (SIGKILL) after some of its calls
    finished; ``run_queued`` in another process (once the 1 s lease lapsed) continues
    it to ``completed`` and sends no finished call again."""
    with run_fake_server() as server:
        server.add_faults(*[Fault.slow(0.3)] * 20)
        spec = chain(model=served(server), n=6)
        [sid] = await _queue(db_url, spec, ["killed"])
        err = tmp_path / "run.err"
        with err.open("wb") as err_file:
            proc = await anyio.open_process(
                [sys.executable, "-c", _CHILD, "run", db_url, sid], cwd=REPO, stderr=err_file
            )
        async with proc:
            try:
                with anyio.fail_after(60):
                    # Polls the store: the other process writes it.
                    while len(await _ok_calls(db_url, sid)) < 2:
                        assert proc.returncode is None, err.read_text()
                        await anyio.sleep(0.02)
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
        finished = await _ok_calls(db_url, sid)
        sent_before = prompts_sent(server)
        async with await Store.open(db_url) as store:
            killed = await store.get_session(sid)
            assert killed.status == "running" and killed.queued_at is not None
            # Its first event said when it started (the queued row had the queuing time).
            assert killed.started_at > killed.queued_at
            with anyio.fail_after(60):
                # busy until the killed run's lease lapses (it is not renewed any more)
                while (done := await run_queued(sid, store=store)).how == "busy":  # noqa: ASYNC110
                    await anyio.sleep(0.1)
        sent_after = prompts_sent(server)
    assert done.how == "resumed" and done.result is not None
    assert done.result.status == "completed", done.result.error
    assert len(finished) >= 2
    # A finished step's prompt is not sent again; every prompt of the session went out
    # once, except the one in flight when the process died.
    assert sum(sent_after.values()) - sum(sent_before.values()) == 6 - len(finished)
    assert all(n <= 2 for n in sent_after.values()) and len(sent_after) == 6


# -- LocalExecutor ---------------------------------------------------------------------


class Gauge:
    """Sessions with a call in flight, measured at the model."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.most = 0
        self.prompts: Counter[str] = Counter()


class GaugedModel:
    """Answers after a latency chosen per topic, counting sessions in flight."""

    def __init__(self, gauge: Gauge, latency: dict[str, float]) -> None:
        self.gauge = gauge
        self.latency = latency

    @property
    def name(self) -> str:
        return "m"

    @property
    def provider(self) -> str:
        return "test"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        topic = request.prompt.split()[0]
        gauge = self.gauge
        gauge.prompts[request.prompt] += 1
        gauge.running[topic] += 1
        gauge.most = max(gauge.most, len(+gauge.running))
        try:
            await anyio.sleep(self.latency[topic])
            return ModelResponse(content="ok", model="m")
        finally:
            gauge.running[topic] -= 1


@st.composite
def workloads(draw: st.DrawFn) -> tuple[int | None, list[float], list[tuple[int, float]]]:
    """A session limit (or none), 1-8 sessions of 0-10 ms calls, and some of them
    cancelled 0-20 ms after they were submitted."""
    limit = draw(st.none() | st.integers(1, 3))
    latencies = draw(st.lists(st.floats(0, 0.01), min_size=1, max_size=8))
    cancels = draw(
        st.lists(
            st.tuples(st.integers(0, len(latencies) - 1), st.floats(0, 0.02)),
            max_size=len(latencies),
            unique_by=lambda c: c[0],
        )
    )
    return limit, latencies, cancels


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=workloads())
def test_local_executor_holds_its_limit_runs_each_session_once_and_never_hangs(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[int | None, list[float], list[tuple[int, float]]],
) -> None:
    limit, latencies, cancels = case
    db = str(tmp_path_factory.mktemp("local") / "t.db")
    gauge = Gauge()
    topics = [f"t{i}" for i in range(len(latencies))]
    model = GaugedModel(gauge, dict(zip(topics, latencies, strict=True)))
    cancelled_at = dict(cancels)

    async def main() -> None:
        ids: list[str] = []
        with anyio.fail_after(60):  # a hang fails the test instead of stalling it
            async with (
                await Store.open(db) as store,
                LocalExecutor(store=store, models={"m": model}, max_sessions=limit) as ex,
                anyio.create_task_group() as tg,
            ):
                for i, topic in enumerate(topics):
                    ids.append(await ex.submit(chain(n=2), inputs={"topic": topic}))
                    if i in cancelled_at:
                        tg.start_soon(_cancel_later, ex, ids[-1], cancelled_at[i])
            async with await Store.open(db) as store, LocalExecutor(store=store) as ex2:
                with pytest.raises(UsageError):
                    await ex2.wait(ids[0])
                for i, sid in enumerate(ids):
                    stored = await store.get_session(sid)
                    if i not in cancelled_at:
                        assert stored.status == "completed", stored.error
                    else:
                        assert stored.status in {"completed", "interrupted"}
                    assert stored.status != "queued" and await store.lease_of(sid) is None

    anyio.run(main, backend="asyncio")
    assert gauge.most <= (limit or len(topics))
    assert set(gauge.prompts.values()) <= {1}, gauge.prompts
    for i, topic in enumerate(topics):
        if i not in cancelled_at:
            assert gauge.prompts[f"{topic} s0"] == 1 and gauge.prompts[f"{topic} s1 after ok"] == 1


async def _cancel_later(ex: LocalExecutor, sid: str, after_s: float) -> None:
    await anyio.sleep(after_s)
    await ex.cancel(sid)
    result = await ex.wait(sid)
    assert result.session_id == sid and result.status in {"completed", "interrupted"}
