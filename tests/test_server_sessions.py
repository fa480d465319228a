"""The sessions API over real HTTP to a real ``thinktank serve`` process whose models
are the fake provider server over loopback: start, list, read, export, the live event
stream (and its resumption with Last-Event-ID), cancel, resume and replay."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx2 as httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktank.events import Event, StepSkipped
from thinktank.server.sessions import _Live
from thinktank.store import Store

from . import pg
from .fakeserver import FakeServer, Fault, run_fake_server
from .serverproc import serve, serve_process

MODELS = ["m1", "m2", "m3"]

# The PostgreSQL server fixture (see tests/pg.py), by assignment so that pytest finds it.
pg_server = pg.pg_server


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with run_fake_server() as server:
        yield server


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sessions")


@pytest.fixture(scope="module")
def env(root: Path) -> dict[str, str]:
    return {"THINKTANK_CONFIG": str(root / "thinktank.toml"), "OPENAI_API_KEY": "sk-test"}


@pytest.fixture(scope="module", params=pg.BACKENDS)
def db(request: pytest.FixtureRequest, root: Path) -> Iterator[str]:
    """The server's database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(root / "tt.db")
        return
    url = pg.create_database(request.getfixturevalue("pg_server"))
    try:
        yield url
    finally:
        pg.drop_database(url)


@pytest.fixture(scope="module")
def url(fake: FakeServer, root: Path, env: dict[str, str], db: str) -> Iterator[str]:
    lines = []
    for name in MODELS:
        lines += [
            f"[models.{name}]",
            'provider = "openai"',
            f'model = "{name}"',
            f'base_url = "{fake.url}/v1"',
            "max_retries = 0",
            "timeout_s = 60",
            "",
        ]
    (root / "thinktank.toml").write_text("\n".join(lines))
    with serve(db, "--no-auth", env=env, cwd=root, log=root / "serve.log") as base:
        yield base


@pytest.fixture(autouse=True)
def _clean(fake: FakeServer) -> None:
    fake.reset()


def session_file(**extra: Any) -> dict[str, Any]:
    return {
        "name": "srv",
        "inputs": {"topic": {"type": "string"}},
        "steps": [
            {"id": "ask", "prompt": "say {{ inputs.topic }}", "models": MODELS},
            {
                "id": "sum",
                "prompt": "sum up {{ steps.ask.output }}",
                "model": "m1",
                "depends_on": ["ask"],
            },
        ],
        **extra,
    }


def start(url: str, inputs: dict[str, Any] | None = None) -> str:
    # A fresh topic each time: the store would serve a repeated step from its cache.
    body = {"session": session_file(), "inputs": inputs or {"topic": uuid.uuid4().hex}}
    response = httpx.post(url + "/v1/sessions", json=body, timeout=30)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "running"
    assert answer["links"]["events"] == f"/v1/sessions/{answer['id']}/events"
    return str(answer["id"])


def wait_status(
    url: str, sid: str, *, not_: str = "running", within_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        body = httpx.get(f"{url}/v1/sessions/{sid}", timeout=10).json()
        if body["status"] != "running" or time.monotonic() > deadline:
            return dict(body)
        time.sleep(0.05)


def read_sse(
    url: str,
    sid: str,
    *,
    last: int | None = None,
    stop_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> list[tuple[int, str, dict[str, Any]]]:
    """The events of the stream as (id, event, data), parsed from its lines; closes the
    connection after ``stop_after`` events."""
    headers = dict(headers or {}) | ({"Last-Event-ID": str(last)} if last is not None else {})
    got: list[tuple[int, str, dict[str, Any]]] = []
    with httpx.stream(
        "GET", f"{url}/v1/sessions/{sid}/events", headers=headers, timeout=60
    ) as response:
        for event in sse_events(response):
            got.append(event)
            if stop_after is not None and len(got) >= stop_after:
                break
    return got


def sse_events(response: httpx.Response) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """The events of an open event stream as (id, event, data), parsed from its lines."""
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        yield int(fields["id"]), fields["event"], json.loads(fields["data"])
        fields = {}


def test_a_posted_session_runs_in_the_background(url: str, fake: FakeServer) -> None:
    fake.add_faults(Fault.slow(1.0), model="m3")
    sid = start(url)
    running = httpx.get(f"{url}/v1/sessions/{sid}").json()
    assert running["status"] == "running"  # m3 is still answering
    done = wait_status(url, sid)
    assert done["status"] == "completed", done
    assert [s["step_key"] for s in done["steps"]] == ["ask", "sum"]
    assert {c["model_id"] for c in done["steps"][0]["calls"]} == set(MODELS)
    assert done["steps"][0]["consensus"] is not None
    listed = httpx.get(f"{url}/v1/sessions", params={"limit": 1}).json()["data"]
    assert [row["id"] for row in listed] == [sid]  # newest first
    export = httpx.get(f"{url}/v1/sessions/{sid[:8]}/export").json()
    assert export["format"] == "thinktank.session/1" and export["session"]["id"] == sid
    assert export["events"][0]["type"] == "session_started"


def test_yaml_bodies_and_invalid_sessions(url: str) -> None:
    text = yaml.safe_dump({**session_file(), "inputs": {"topic": {"default": "y"}}})
    response = httpx.post(
        url + "/v1/sessions", content=text, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 202, response.text
    assert wait_status(url, response.json()["id"])["status"] == "completed"
    bad = session_file()
    bad["steps"][1]["depends_on"] = ["nope"]
    bad["steps"][0]["temperature"] = "hot"
    error = httpx.post(url + "/v1/sessions", json={"session": bad}).json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_session"
    assert "ask" in error["message"] and "temperature" in error["message"]
    missing = httpx.post(url + "/v1/sessions", json={"session": session_file()})
    assert missing.status_code == 400 and "topic" in missing.json()["error"]["message"]


def test_unknown_ids_are_404(url: str) -> None:
    for path in ("", "/export", "/events"):
        response = httpx.get(f"{url}/v1/sessions/ffffffff-0000{path}")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"


def test_events_stream_live_and_resume_without_gap_or_duplicate(url: str, fake: FakeServer) -> None:
    fake.add_faults(Fault.slow(1.5), model="m2")
    sid = start(url)
    first = read_sse(url, sid, stop_after=3)  # while the session runs
    assert [seq for seq, _, _ in first] == [1, 2, 3]
    assert first[0][1] == "session_started" and first[0][2]["session_id"] == sid
    rest = read_sse(url, sid, last=first[-1][0])
    ids = [seq for seq, _, _ in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1][1] == "session_finished"
    assert wait_status(url, sid)["status"] == "completed"
    # Replayed from the store once finished: the same events under the same ids.
    stored = read_sse(url, sid)
    assert [(s, e) for s, e, _ in stored] == [(s, e) for s, e, _ in first + rest]
    assert read_sse(url, sid, last=len(stored) - 1) == stored[-1:]


def test_cancel_stops_the_in_flight_call_and_resume_finishes(url: str, fake: FakeServer) -> None:
    fake.add_faults(Fault.slow(30.0), model="m3")
    sid = start(url)
    seen = read_sse(url, sid, stop_after=1)
    assert seen[0][1] == "session_started"
    while not any(r.model == "m3" for r in fake.requests):
        time.sleep(0.02)
    cancelled = httpx.post(f"{url}/v1/sessions/{sid}/cancel", timeout=20).json()
    assert cancelled["status"] == "interrupted"
    m3 = [c for c in cancelled["steps"][0]["calls"] if c["model_id"] == "m3"]
    assert [c["status"] for c in m3] == ["cancelled"]
    again = httpx.post(f"{url}/v1/sessions/{sid}/cancel")
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict_error"

    fake.add_faults(Fault.slow(1.0), model="m3")  # the resumed run is still going ...
    resumed = httpx.post(f"{url}/v1/sessions/{sid}/resume", timeout=30)
    assert resumed.status_code == 202 and resumed.json()["id"] == sid
    # ... when a client reconnects from before the resume: the stored history, then
    # the resumed run live, numbered as one history.
    tail = read_sse(url, sid, last=2)
    assert wait_status(url, sid)["status"] == "completed"
    events = read_sse(url, sid)
    assert [s for s, _, _ in events] == list(range(1, len(events) + 1))
    assert events[-1][1] == "session_finished"
    assert [(s, e) for s, e, _ in tail] == [(s, e) for s, e, _ in events[2:]]
    done_again = httpx.post(f"{url}/v1/sessions/{sid}/resume")
    assert done_again.status_code == 409 and "completed" in done_again.json()["error"]["message"]


def test_replay_remerges_at_zero_cost(url: str, fake: FakeServer) -> None:
    for name, reply in zip(MODELS, ["Paris", "Paris", "Lyon"], strict=True):
        fake.set_reply(name, reply)
    sid = start(url)
    assert wait_status(url, sid)["status"] == "completed"
    asked = len(fake.requests)
    report = httpx.post(
        f"{url}/v1/sessions/{sid}/replay", json={"synthesis": "majority", "threshold": 0.9}
    ).json()
    assert report["original_id"] == sid and report["kind"] == "remerge"
    assert report["replay_cost_usd"] == 0.0
    assert report["replay_id"] and report["replay_id"] != sid
    assert len(fake.requests) == asked  # no model was called
    replayed = httpx.get(f"{url}/v1/sessions/{report['replay_id']}").json()
    assert replayed["steps"][0]["consensus"]["threshold"] == 0.9


def _stored(db: Path, sid: str) -> Any:
    async def read() -> Any:
        async with await Store.open(str(db)) as store:
            return await store.get_session(sid)

    return anyio.run(read)


def _slow_m3(fake: FakeServer, tmp_path: Path) -> dict[str, str]:
    """The environment of a server whose models are the fake's, m3 answering in 30 s
    (so a session stays running)."""
    config = tmp_path / "thinktank.toml"
    config.write_text(
        "\n".join(
            f'[models.{n}]\nprovider = "openai"\nmodel = "{n}"\nbase_url = "{fake.url}/v1"\n'
            for n in MODELS
        )
    )
    fake.add_faults(Fault.slow(30.0), model="m3")
    return {"THINKTANK_CONFIG": str(config), "OPENAI_API_KEY": "sk-test"}


def test_shutdown_stores_running_sessions_as_interrupted(fake: FakeServer, tmp_path: Path) -> None:
    """Stopping the server cancels the sessions it runs; the store keeps them resumable."""
    env = _slow_m3(fake, tmp_path)
    with serve(tmp_path / "tt.db", "--no-auth", env=env, cwd=tmp_path) as base:
        sid = start(base)
        while not any(r.model == "m3" for r in fake.requests):
            time.sleep(0.02)

    session = _stored(tmp_path / "tt.db", sid)
    assert session.status == "interrupted"
    assert [c.status for c in session.steps[0].calls if c.model_id == "m3"] == ["cancelled"]


def test_a_watched_session_does_not_hold_shutdown(fake: FakeServer, tmp_path: Path) -> None:
    """SIGTERM with an events stream open: uvicorn would wait for that stream, so for
    the whole session; ``--graceful-timeout`` bounds the wait, the stream closes and
    the session is stored interrupted (resumable), not left to finish."""
    env = _slow_m3(fake, tmp_path)
    args = ("--no-auth", "--graceful-timeout", "1")

    def watch(base: str, sid: str) -> bool:
        """Follow the session until the server ends the stream (cut or complete)."""
        with contextlib.suppress(httpx.TransportError):
            read_sse(base, sid)
        return True

    with serve_process(tmp_path / "tt.db", *args, env=env, cwd=tmp_path) as (base, proc):
        sid = start(base)
        with ThreadPoolExecutor(1) as pool:
            watcher = pool.submit(watch, base, sid)
            while not any(r.model == "m3" for r in fake.requests):
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)  # a hang guard: the fake holds m3 for 30 s
            assert watcher.result(timeout=20)

    assert _stored(tmp_path / "tt.db", sid).status == "interrupted"


def _event(i: int) -> Event:
    return StepSkipped(session_id="s", step_id=f"e{i}", reason="r")


@settings(max_examples=60, deadline=None)
@given(
    history=st.integers(0, 3),
    script=st.lists(st.sampled_from(["add", "add", "pause"]), max_size=30),
    followers=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40)), max_size=5),
    fail=st.booleans(),
)
def test_followers_get_every_event_after_theirs_once_in_order(
    history: int, script: list[str], followers: list[tuple[int, int]], fail: bool
) -> None:
    """Followers joining at random moments from random positions of a run that adds
    events at random paces each get exactly the events after their position, in
    sequence, and all return when the run ends (ended by success or failure)."""
    added = script.count("add")

    async def main() -> None:
        live = _Live(history)
        got: dict[int, list[int]] = {}

        async def follow(index: int, after: int) -> None:
            got[index] = [seq async for seq, _ in live.follow(after)]

        with anyio.fail_after(10):  # a hang guard, not a timing assertion
            async with anyio.create_task_group() as tg:
                for step, action in enumerate([*script, "end"]):
                    for index, (moment, after) in enumerate(followers):
                        if moment == step:
                            tg.start_soon(follow, index, after)
                    if action == "add":
                        live.add(_event(len(live.events)))
                    elif action == "pause":
                        await anyio.lowlevel.checkpoint()
                    else:
                        live.end(RuntimeError("x") if fail else None)
                for index, (moment, after) in enumerate(followers):
                    if moment > len(script):  # joins after the end
                        tg.start_soon(follow, index, after)
        for index, (_, after) in enumerate(followers):
            last = history + added
            assert got[index] == list(range(max(after, history) + 1, last + 1))

    anyio.run(main)


def test_events_of_a_session_another_process_runs_are_followed(
    url: str, fake: FakeServer, root: Path, env: dict[str, str], db: str
) -> None:
    """A session ``thinktank run`` runs on the server's database: the server follows
    its events in the store until it ends."""
    fake.add_faults(Fault.slow(1.5), model="m3")
    (root / "s.yaml").write_text(yaml.safe_dump(session_file()))
    command = [sys.executable, "-m", "thinktank", "run", "s.yaml", "--db", db]
    command += ["-i", f"topic={uuid.uuid4().hex}", "--no-progress"]
    proc = subprocess.Popen(command, cwd=root, env={**os.environ, **env})
    try:
        while not any(r.model == "m3" for r in fake.requests):
            assert proc.poll() is None
            time.sleep(0.02)
        sid = httpx.get(url + "/v1/sessions", params={"limit": 1}).json()["data"][0]["id"]
        assert httpx.get(f"{url}/v1/sessions/{sid}").json()["status"] == "running"
        events = read_sse(url, sid)
    finally:
        assert proc.wait(timeout=60) == 0
    assert [s for s, _, _ in events] == list(range(1, len(events) + 1))
    assert events[-1][1] == "session_finished" and events[-1][2]["status"] == "completed"


def test_every_sessions_route_needs_a_key(tmp_path: Path) -> None:
    with serve(tmp_path / "k.db") as base:
        for method, path in [
            ("POST", "/v1/sessions"),
            ("GET", "/v1/sessions"),
            ("GET", "/v1/sessions/x"),
            ("GET", "/v1/sessions/x/events"),
            ("GET", "/v1/sessions/x/export"),
            ("POST", "/v1/sessions/x/cancel"),
            ("POST", "/v1/sessions/x/resume"),
            ("POST", "/v1/sessions/x/replay"),
        ]:
            response = httpx.request(method, base + path, json={})
            assert response.status_code == 401, (method, path)
