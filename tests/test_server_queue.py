"""``thinktank serve --queue``: sessions posted to the server run on the worker pool.

A REAL ``thinktank serve --queue`` process (tests/serverproc.py) and REAL ``thinktank
worker`` processes (tests/workerproc.py) on one database (a SQLite file; PostgreSQL for
the end-to-end test), the fake OpenAI provider answering both: a posted session is
queued, runs on a worker (its lease holder, the ``worker`` field), and the server's
event stream delivers every stored event in order to the end, also when the stream is
opened before any worker runs; cancels of queued and running sessions; a bad session
is a 400 that writes nothing; a server that cannot queue does not start.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from click.testing import CliRunner

from thinktank.cli.commands import main
from thinktank.store import Store

from . import pg, test_server_budget
from .fakeserver import FakeServer, Fault
from .serverproc import serve
from .test_eval_runner import write_config
from .test_server_keys import create_key
from .test_server_sessions import sse_events
from .workerproc import fan_session, workers

pytest.importorskip("dbos")

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

MODELS = ["a", "b", "c", "j"]


# The budget tests' fake provider (one per module) and its reset before each test.
fake = test_server_budget.fake
_fresh = test_server_budget._fresh


@pytest.fixture
def env(fake: FakeServer, tmp_path: Path) -> dict[str, str]:
    """The models of the session, for the server (which checks them) and the workers."""
    return {"THINKTANK_CONFIG": str(write_config(tmp_path / "thinktank.toml", fake, MODELS))}


def session_body(question: str | None = None) -> dict[str, Any]:
    """Three models in parallel and a judge (the issue's session shape)."""
    session = fan_session()
    return {"session": session, "inputs": {"q": question or uuid.uuid4().hex}}


def post(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(url + "/v1/sessions", json=body, headers=headers, timeout=30)


def detail(url: str, sid: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/v1/sessions/{sid}", timeout=10).json())


def wait_for(url: str, sid: str, *, out_of: tuple[str, ...], within_s: float = 60) -> Any:
    """The session once its status is none of ``out_of`` (or at the deadline)."""
    deadline = time.monotonic() + within_s
    while True:
        body = detail(url, sid)
        if body["status"] not in out_of or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def stored_events(db: str, sid: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        async with await Store.open(db) as store:
            return await store.events_of(sid)

    return anyio.run(read, backend="asyncio")


def lease_owner(db: str, sid: str) -> str | None:
    async def read() -> str | None:
        async with await Store.open(db) as store:
            return (await store.session_states([sid]))[sid][1]

    return anyio.run(read, backend="asyncio")


@pytest.mark.slow
def test_a_posted_session_runs_on_a_worker_and_streams_from_the_server(
    db_url: str, fake: FakeServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Posted before any worker runs, a session stays queued (its stream waits for
    it), runs on the worker that starts later, which the server names while it runs,
    and the server's stream delivers every stored event in order to the end."""
    fake.add_faults(Fault.slow(2.0), model="a")  # long enough to look at it running
    with serve(db_url, "--queue", "--no-auth", env=env, cwd=tmp_path) as url:
        made = post(url, session_body(), **{"X-Request-Id": "req-queue-1"})
        assert made.status_code == 202, made.text
        assert made.json()["status"] == "queued"
        sid = made.json()["id"]
        assert made.json()["links"]["events"] == f"/v1/sessions/{sid}/events"
        queued = detail(url, sid)
        assert (queued["status"], queued["worker"], queued["request_id"]) == (
            "queued",
            None,
            "req-queue-1",
        )
        with (
            httpx.stream("GET", f"{url}/v1/sessions/{sid}/events", timeout=120) as response,
            workers(db_url, ["w1"], "--concurrency", "2", log_dir=tmp_path, env=env),
        ):
            streamed = []
            for event in sse_events(response):
                streamed.append(event)
                if event[1] == "call_started" and len(streamed) == 3:
                    running = detail(url, sid)
                    assert (running["status"], running["worker"]) == ("running", "w1")
                    listed = httpx.get(url + "/v1/sessions", timeout=10).json()["data"]
                    assert [(s["id"], s["worker"]) for s in listed] == [(sid, "w1")]
                    assert (lease_owner(db_url, sid) or "").startswith("w1:")
        done = detail(url, sid)
    assert done["status"] == "completed", done
    assert done["worker"] is None  # nobody holds it any more
    stored = stored_events(db_url, sid)
    assert [(n, kind, data) for n, kind, data in streamed] == [
        (n, event["type"], event) for n, event in enumerate(stored, start=1)
    ]
    assert stored[-1]["type"] == "session_finished"
    assert len(fake.requests) == 4  # three models and the judge, once each


def test_the_stream_of_a_queued_session_waits_for_it_to_start(
    fake: FakeServer, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session queued by another process (here ``run_queued`` after ``enqueue``, no
    pool) is followed from its start: its stream, opened while it waits, does not end
    before it has run, and delivers every stored event."""
    from thinktank.executor import enqueue, run_queued
    from thinktank.session.loading import parse_session

    monkeypatch.setenv("THINKTANK_CONFIG", env["THINKTANK_CONFIG"])
    db = str(tmp_path / "tt.db")
    spec = parse_session(session_body()["session"], known_models=MODELS)

    async def queue() -> str:
        async with await Store.open(db) as store:
            return await enqueue(spec, store=store, inputs={"q": "local"})

    async def run(sid: str) -> None:
        async with await Store.open(db) as store:
            await run_queued(sid, store=store)

    sid = anyio.run(queue, backend="asyncio")
    with (
        serve(db, "--no-auth", env=env, cwd=tmp_path) as url,
        httpx.stream("GET", f"{url}/v1/sessions/{sid}/events", timeout=60) as response,
    ):
        anyio.run(run, sid, backend="asyncio")
        streamed = list(sse_events(response))
    stored = stored_events(db, sid)
    assert stored[-1]["type"] == "session_finished"
    assert streamed == [(n, event["type"], event) for n, event in enumerate(stored, start=1)]


def test_a_server_without_the_pool_cancels_what_it_can(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``--queue``, a session queued for an executor in-process elsewhere is
    ended ``interrupted``; one queued for the worker pool is a 409 that says where to
    cancel it (dropping its row would not stop its workflow), and stays queued."""
    from thinktank.distributed import QUEUE
    from thinktank.executor import enqueue
    from thinktank.session.loading import parse_session

    monkeypatch.setenv("THINKTANK_CONFIG", env["THINKTANK_CONFIG"])
    db = str(tmp_path / "tt.db")
    spec = parse_session(session_body()["session"], known_models=MODELS)

    async def queue() -> tuple[str, str]:
        async with await Store.open(db) as store:
            local = await enqueue(spec, store=store, inputs={"q": "x"})
            return local, await enqueue(spec, store=store, inputs={"q": "y"}, queue=QUEUE)

    local, pooled = anyio.run(queue, backend="asyncio")
    with serve(db, "--no-auth", env=env, cwd=tmp_path) as url:
        ended = httpx.post(f"{url}/v1/sessions/{local}/cancel", timeout=30)
        refused = httpx.post(f"{url}/v1/sessions/{pooled}/cancel", timeout=30)
        still = detail(url, pooled)["status"]
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "interrupted"
    assert refused.status_code == 409
    assert "--queue" in refused.json()["error"]["message"]
    assert still == "queued"


def test_a_queued_session_is_cancelled_before_it_starts(
    fake: FakeServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Cancelling a session no worker has started ends it ``interrupted`` at once, and
    no worker started later runs it (its workflow is cancelled too)."""
    db = str(tmp_path / "tt.db")
    with serve(db, "--queue", "--no-auth", env=env, cwd=tmp_path) as url:
        cancelled = post(url, session_body("never")).json()["id"]
        stopped = httpx.post(f"{url}/v1/sessions/{cancelled}/cancel", timeout=30)
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["status"] == "interrupted"
        later = post(url, session_body("later")).json()["id"]
        with workers(db, ["w1"], log_dir=tmp_path, env=env):
            assert wait_for(url, later, out_of=("queued", "running"))["status"] == "completed"
        assert detail(url, cancelled)["status"] == "interrupted"
    prompts = [str(r.body) for r in fake.requests]
    assert any("later" in p for p in prompts)
    assert not any("never" in p for p in prompts)


def test_a_session_running_on_a_worker_is_cancelled(
    fake: FakeServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Cancelling a session a worker runs stops it there: the answer is its stored
    state, ``interrupted``, and its stream ends with that."""
    fake.add_faults(Fault.slow(60.0), model="a")
    db = str(tmp_path / "tt.db")
    with (
        serve(db, "--queue", "--no-auth", env=env, cwd=tmp_path) as url,
        workers(db, ["w1"], log_dir=tmp_path, env=env),
    ):
        sid = post(url, session_body()).json()["id"]
        assert wait_for(url, sid, out_of=("queued",))["status"] == "running"
        while len(fake.requests) < 3:  # every model is asked; "a" does not answer
            time.sleep(0.02)
        stopped = httpx.post(f"{url}/v1/sessions/{sid}/cancel", timeout=30)
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["status"] == "interrupted"
        with httpx.stream("GET", f"{url}/v1/sessions/{sid}/events", timeout=30) as response:
            events = list(sse_events(response))
    assert events[-1][1] == "session_finished"
    assert events[-1][2]["status"] == "interrupted"


def test_a_queued_session_keeps_who_asked_for_it(env: dict[str, str], tmp_path: Path) -> None:
    """The key and the ``X-Request-Id`` of the request are stored with the queued
    session, as with a session the server runs."""
    db = str(tmp_path / "tt.db")
    key, kid = create_key(db)
    auth = {"Authorization": f"Bearer {key}"}
    with serve(db, "--queue", env=env, cwd=tmp_path) as url:
        made = post(url, session_body(), **auth, **{"X-Request-Id": "req-7"})
        assert made.status_code == 202, made.text
        queued = httpx.get(f"{url}/v1/sessions/{made.json()['id']}", headers=auth).json()
    assert (queued["status"], queued["key_id"], queued["request_id"]) == ("queued", kid, "req-7")


def test_a_bad_session_is_a_400_and_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    """The queueing server refuses what a running one refuses, with the same 400s,
    before anything is stored or queued."""
    db = str(tmp_path / "tt.db")
    cycle = session_body()
    cycle["session"]["steps"] = [
        {"id": "x", "prompt": "{{ steps.y.output }}", "model": "a", "depends_on": ["y"]},
        {"id": "y", "prompt": "{{ steps.x.output }}", "model": "a", "depends_on": ["x"]},
    ]
    unknown = session_body()
    unknown["session"]["steps"][0]["synthesizer"] = "nobody"
    no_input = {"session": session_body()["session"]}
    with serve(db, "--queue", "--no-auth", env=env, cwd=tmp_path) as url:
        answers = [post(url, body) for body in (cycle, unknown, no_input)]
        listed = httpx.get(url + "/v1/sessions", timeout=10).json()["data"]
    with serve(db, "--no-auth", env=env, cwd=tmp_path) as url:
        in_process = [post(url, body) for body in (cycle, unknown, no_input)]
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert [a.json() for a in answers] == [a.json() for a in in_process]
    assert listed == []


def test_serve_queue_needs_a_shared_database_and_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve --queue`` on an in-memory database, or without DBOS, fails at once in
    one line with exit status 2."""
    memory = CliRunner().invoke(main, ["serve", "--queue", "--db", ":memory:"])
    assert memory.exit_code == 2, memory.output
    assert memory.output.count("\n") == 1
    assert "--queue needs a database the workers share" in memory.output
    monkeypatch.setitem(sys.modules, "dbos", None)  # what an install without the extra has
    missing = CliRunner().invoke(main, ["serve", "--queue"])
    assert missing.exit_code == 2, missing.output
    assert missing.output.count("\n") == 1
    assert 'pip install "thinktank[distributed]"' in missing.output
