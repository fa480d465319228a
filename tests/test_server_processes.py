"""Sessions across server processes sharing one database: a cancel and an event stream
reach a session whichever ``thinktank serve`` process the request lands on (two
processes on a SQLite file and on PostgreSQL, and ``--workers 2`` behind one port),
and the store's cancel requests, the seam between them."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinktank.cli.commands import main
from thinktank.events import Event
from thinktank.server import sessions
from thinktank.store import Store

from . import pg, test_server_budget
from .fakeserver import FakeServer, Fault
from .serverproc import serve
from .test_eval_runner import write_config
from .test_server_budget import _assert_ten_of_fifty, _post_many, priced_config
from .test_server_keys import create_key
from .test_server_sessions import read_sse, wait_status
from .test_store import simple_session

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url


# The budget tests' fake provider (one per module) and its reset before each test.
fake = test_server_budget.fake
_fresh = test_server_budget._fresh


def session_body(model: str = "a") -> dict[str, Any]:
    """A one-step session; a fresh topic each time so that no cache answers it."""
    session = {
        "name": "far",
        "inputs": {"topic": {"type": "string"}},
        "steps": [{"id": "ask", "prompt": "say {{ inputs.topic }}", "model": model}],
    }
    return {"session": session, "inputs": {"topic": uuid.uuid4().hex}}


def start_session(url: str, headers: dict[str, str] | None = None) -> str:
    made = httpx.post(url + "/v1/sessions", json=session_body(), headers=headers, timeout=30)
    assert made.status_code == 202, made.text
    return str(made.json()["id"])


def wait_for_calls(fake: FakeServer, count: int) -> None:
    """Until the fake provider has received ``count`` requests (the model is thinking)."""
    while len(fake.requests) < count:
        time.sleep(0.02)


@pytest.fixture
def two_servers(db_url: str, fake: FakeServer, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two ``thinktank serve`` processes on one database (SQLite file, PostgreSQL)."""
    config = write_config(tmp_path / "thinktank.toml", fake, ["a"])
    env = {"THINKTANK_CONFIG": str(config)}
    with (
        serve(db_url, "--no-auth", env=env, cwd=tmp_path, log=tmp_path / "a.log") as one,
        serve(db_url, "--no-auth", env=env, cwd=tmp_path, log=tmp_path / "b.log") as two,
    ):
        yield one, two


def test_a_cancel_through_another_server_stops_the_session(
    two_servers: tuple[str, str], fake: FakeServer
) -> None:
    """A session runs on A; B is asked to cancel it: A cancels the upstream call (the
    provider sees the hang-up), the session is stored interrupted, B answers that state,
    and both servers show it; a second cancel through either is a 409."""
    a, b = two_servers
    fake.add_faults(Fault.slow(30.0), model="a")
    sid = start_session(a)
    wait_for_calls(fake, 1)
    assert httpx.get(f"{b}/v1/sessions/{sid}").json()["status"] == "running"

    cancelled = httpx.post(f"{b}/v1/sessions/{sid}/cancel", timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "interrupted"
    calls = cancelled.json()["steps"][0]["calls"]
    assert [c["status"] for c in calls] == ["cancelled"]
    assert [model for model, _ in fake.hangups] == ["a"]
    for server in (a, b):
        assert httpx.get(f"{server}/v1/sessions/{sid}").json()["status"] == "interrupted"
        again = httpx.post(f"{server}/v1/sessions/{sid}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_running"

    # The stale request does not reach a later run: resumed on A (still running at A's
    # first watch, as the answer is slow), it completes.
    fake.add_faults(Fault.slow(1.5), model="a")
    resumed = httpx.post(f"{a}/v1/sessions/{sid}/resume", timeout=30)
    assert resumed.status_code == 202, resumed.text
    assert wait_status(b, sid)["status"] == "completed"


def test_events_of_a_session_on_another_server_are_followed(
    two_servers: tuple[str, str], fake: FakeServer
) -> None:
    """B streams the events of a session A runs, live from the store, to its end: the
    same events, under the same ids, as A's own stream."""
    a, b = two_servers
    fake.add_faults(Fault.slow(1.5), model="a")
    sid = start_session(a)
    got: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    followers = [
        threading.Thread(target=lambda s=server: got.__setitem__(s, read_sse(s, sid)))
        for server in (a, b)
    ]
    for follower in followers:
        follower.start()
    for follower in followers:
        follower.join(timeout=60)
    assert [(s, e) for s, e, _ in got[b]] == [(s, e) for s, e, _ in got[a]]
    assert [s for s, _, _ in got[b]] == list(range(1, len(got[b]) + 1))
    assert got[b][-1][1] == "session_finished" and got[b][-1][2]["status"] == "completed"
    assert fake.hangups == []


def test_workers_share_keys_budgets_and_sessions(
    db_url: str, fake: FakeServer, tmp_path: Path
) -> None:
    """``thinktank serve --workers 2``: 50 concurrent requests against a budget for 10
    are 10 answered and 40 refused whichever worker takes them, nothing overspent; and
    sessions are started, listed, followed and cancelled through the one port."""
    fake.set_reply("a", "one two three four")
    fake.add_faults(*[Fault.slow(1.0)] * 10, model="a")
    config = priced_config(tmp_path / "thinktank.toml", fake, ["a"])
    key, _ = create_key(db_url, "--budget-usd", "100")
    env = {"THINKTANK_CONFIG": str(config)}
    headers = {"Authorization": f"Bearer {key}"}
    with serve(db_url, "--workers", "2", env=env, cwd=tmp_path) as url:
        responses = anyio.run(_post_many, [url], key, 50, backend="asyncio")
        _assert_ten_of_fifty(responses, fake, db_url)

        fake.reset()
        fake.add_faults(*[Fault.slow(30.0)] * 4, model="a")
        started = [start_session(url, headers) for _ in range(4)]
        wait_for_calls(fake, 4)
        listed = httpx.get(url + "/v1/sessions", headers=headers).json()["data"]
        assert set(started) <= {row["id"] for row in listed}
        for sid in started:  # each request on a new connection: either worker answers
            first = read_sse(url, sid, stop_after=1, headers=headers)
            assert first[0][1] == "session_started"
            cancelled = httpx.post(f"{url}/v1/sessions/{sid}/cancel", headers=headers, timeout=30)
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "interrupted"
        assert len(fake.hangups) == 4


async def test_cancel_requests_reach_running_sessions_only(db_url: str) -> None:
    """A cancel is stored only for a running session, read back by id, and cleared."""
    async with await Store.open(db_url) as store:
        running, done = simple_session(1), simple_session(1)
        await store.write([running[0], *done])
        first, second = running[0].session_id, done[0].session_id
        assert await store.cancels_requested([first, second]) == set()
        assert await store.request_cancel(first) is True
        assert await store.request_cancel(second) is False  # finished: nothing stored
        assert await store.cancels_requested([first, second, "nope"]) == {first}
        assert await store.cancels_requested([]) == set()
        await store.clear_cancel(first)
        assert await store.cancels_requested([first]) == set()


async def _run_and_cancel(store: Store, other: Store, plan: list[str]) -> list[str]:
    """Run one session per entry of ``plan`` in a :class:`SessionRunner` on ``store``
    and, through ``other`` (another server process), request a cancel of those planned
    ``"running"`` (while they run) and ``"finished"`` (once they have ended); every run
    not cancelled finishes when released. How each run ended, in plan order."""
    ended: dict[str, str] = {}
    release = anyio.Event()

    def work_of(events: list[Event]) -> Any:
        async def work(db: Store, listener: Any) -> None:
            sid = events[0].session_id
            await db.write(events[:1])
            listener(events[0])
            try:
                await release.wait()
            except anyio.get_cancelled_exc_class():
                ended[sid] = "cancelled"
                raise
            await db.write(events[1:])
            ended[sid] = "finished"

        return work

    with anyio.fail_after(30):  # nothing hangs
        async with sessions.running_sessions(store) as runner:
            ids = [await runner.start(work_of(simple_session(1))) for _ in plan]
            asked = [sid for sid, how in zip(ids, plan, strict=True) if how == "running"]
            for sid in asked:
                assert await other.request_cancel(sid) is True
            for sid in asked:
                while runner.get(sid) is not None:  # noqa: ASYNC110 - the watcher ends it
                    await anyio.sleep(0.005)
            release.set()
            for sid in ids:
                while runner.get(sid) is not None:  # noqa: ASYNC110 - released runs end
                    await anyio.sleep(0.005)
            for sid, how in zip(ids, plan, strict=True):
                if how == "finished":  # too late: nothing is stored, nothing cancelled
                    assert await other.request_cancel(sid) is False
    return [ended[sid] for sid in ids]


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=st.lists(st.sampled_from(["running", "finished", "none"]), min_size=1, max_size=5))
async def test_the_runner_cancels_exactly_the_sessions_asked_while_running(
    plan: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever mix of runs and requests: exactly the sessions asked while running are
    cancelled; those asked after they ended, or never, finish; nothing hangs."""
    monkeypatch.setattr(sessions, "CANCEL_POLL_S", 0.01)
    with tempfile.TemporaryDirectory() as where:
        db = str(Path(where) / "w.db")
        async with await Store.open(db) as store, await Store.open(db) as other:
            ended = await _run_and_cancel(store, other, plan)
    assert ended == ["cancelled" if how == "running" else "finished" for how in plan]


@pytest.mark.parametrize("db", [":memory:", "sqlite://", "sqlite:///file:x?mode=memory&uri=true"])
def test_workers_refuse_a_database_private_to_each_process(db: str) -> None:
    """Several workers on an in-memory SQLite database would each have their own keys,
    budgets and sessions: ``serve`` refuses in one line (a SQLite file is shared)."""
    result = CliRunner().invoke(main, ["serve", "--workers", "2", "--no-auth", "--db", db])
    assert result.exit_code != 0
    assert result.output.count("\n") == 1 and "in-memory" in result.output
