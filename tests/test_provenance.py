"""Provenance of the sessions a server makes: every chat completion, posted session,
resume and recorded replay stores the caller's key id and the request's ``X-Request-Id``
in columns of their own (``source`` keeps saying what started it), which
``GET /v1/sessions/{id}`` answers and ``thinktank show`` prints. A real ``thinktank
serve`` process, its models answered by the loopback fake provider."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from click.testing import CliRunner

from thinktank.cli.commands import main

from . import test_server_budget as budget
from .fakeserver import FakeServer, Fault
from .serverproc import serve
from .test_eval_runner import write_config
from .test_server_keys import create_key

MODELS = ["m1", "m2"]


# The loopback provider, reset before each test (by assignment so that pytest finds them).
fake = budget.fake
_fresh = budget._fresh


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("provenance")


@pytest.fixture(scope="module")
def keyed(root: Path) -> tuple[str, str]:
    """A key (and its id) of the server's database."""
    return create_key(str(root / "p.db"))


@pytest.fixture(scope="module")
def url(fake: FakeServer, root: Path, keyed: tuple[str, str]) -> Iterator[str]:
    config = write_config(root / "thinktank.toml", fake, MODELS)
    with serve(root / "p.db", env={"THINKTANK_CONFIG": str(config)}, cwd=root) as base:
        yield base


def _headers(keyed: tuple[str, str], request_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keyed[0]}", "X-Request-Id": request_id}


def _get(url: str, keyed: tuple[str, str], sid: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/sessions/{sid}", headers=_headers(keyed, "read"), timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _until_ended(url: str, keyed: tuple[str, str], sid: str) -> dict[str, Any]:
    while True:  # the test's own timeout bounds this
        body = _get(url, keyed, sid)
        if body["status"] != "running":
            return body
        time.sleep(0.05)


def _post_session(url: str, keyed: tuple[str, str], request_id: str) -> str:
    body = {
        "session": {
            "name": "prov",
            "inputs": {"topic": {"type": "string"}},
            "steps": [{"id": "ask", "prompt": "say {{ inputs.topic }}", "models": MODELS}],
        },
        # A fresh topic each time: the store would serve a repeated step from its cache.
        "inputs": {"topic": uuid.uuid4().hex},
    }
    response = httpx.post(
        url + "/v1/sessions", json=body, headers=_headers(keyed, request_id), timeout=30
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_a_chat_completion_stores_its_key_and_request(
    url: str, keyed: tuple[str, str], root: Path
) -> None:
    """The completion's session has the key id and request id, and ``source`` http;
    ``thinktank show`` prints both ids."""
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        url + "/v1/chat/completions", json=body, headers=_headers(keyed, "req-chat-7"), timeout=30
    )
    assert response.status_code == 200, response.text
    sid = response.json()["parallel"]["session_id"]
    stored = _get(url, keyed, sid)
    assert (stored["key_id"], stored["request_id"], stored["source"]) == (
        keyed[1],
        "req-chat-7",
        "http",
    )
    shown = CliRunner().invoke(main, ["show", sid, "--db", str(root / "p.db")])
    assert shown.exit_code == 0, shown.output
    assert f"API key {keyed[1]}  request req-chat-7" in shown.stdout


def test_posted_resumed_and_replayed_sessions_store_their_requests(
    url: str, keyed: tuple[str, str], fake: FakeServer
) -> None:
    """POST /v1/sessions records its request; /resume records the request that ran the
    session last; a recorded /replay's new session records the replay's request."""
    fake.add_faults(Fault.slow(30.0), model="m2")
    sid = _post_session(url, keyed, "req-post-1")
    while not any(r.model == "m2" for r in fake.requests):
        time.sleep(0.02)
    stored = _get(url, keyed, sid)
    assert (stored["key_id"], stored["request_id"]) == (keyed[1], "req-post-1")
    cancel = httpx.post(
        f"{url}/v1/sessions/{sid}/cancel", headers=_headers(keyed, "req-cancel"), timeout=30
    )
    assert cancel.json()["status"] == "interrupted"

    resumed = httpx.post(
        f"{url}/v1/sessions/{sid}/resume", headers=_headers(keyed, "req-resume-1"), timeout=30
    )
    assert resumed.status_code == 202, resumed.text
    done = _until_ended(url, keyed, sid)
    assert done["status"] == "completed"
    assert (done["key_id"], done["request_id"]) == (keyed[1], "req-resume-1")

    replay = httpx.post(
        f"{url}/v1/sessions/{sid}/replay",
        json={"synthesis": "majority"},
        headers=_headers(keyed, "req-replay-1"),
        timeout=30,
    )
    assert replay.status_code == 200, replay.text
    replayed = _get(url, keyed, replay.json()["replay_id"])
    assert (replayed["key_id"], replayed["request_id"]) == (keyed[1], "req-replay-1")
    # The original keeps its own.
    assert _get(url, keyed, sid)["request_id"] == "req-resume-1"
