"""Sessions on HTTP models over real loopback HTTP: retries recorded, keys never leak."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.session.loading import parse_session

from .fakeserver import FakeServer, Fault, run_fake_server

SENTINEL = "sk-SENTINEL-e2e-9f8e7d6c5b4a"
FAST = {"retry-after-ms": "5"}


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as srv:
        yield srv


def session(server: FakeServer, steps: list[dict[str, Any]]) -> dict[str, Any]:
    base = {"api_key_env": "TT_TEST_KEY", "timeout_s": 0.5, "max_retries": 2}
    return {
        "name": "http",
        "models": {
            "gpt": {
                "provider": "openai",
                "model": "gpt",
                "base_url": server.url + "/v1",
                "input_cost_per_mtok": 1.0,
                "output_cost_per_mtok": 2.0,
                **base,
            },
            "claude": {"provider": "anthropic", "model": "claude", "base_url": server.url, **base},
            "gem": {"provider": "gemini", "model": "gem", "base_url": server.url, **base},
        },
        "steps": steps,
    }


async def test_faults_are_retried_and_every_attempt_is_stored(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """429/500/529/drop/slow are retried per the SDK contract; 401 and bad JSON are not."""
    monkeypatch.setenv("TT_TEST_KEY", SENTINEL)
    server.add_faults(
        Fault.http_error(429, headers=FAST), Fault.http_error(500, headers=FAST), model="gpt"
    )
    server.add_faults(Fault.http_error(529, headers=FAST), model="claude")
    server.add_faults(Fault.slow(2.0), model="gem")
    spec = parse_session(
        session(
            server,
            [
                {"id": "a", "prompt": "alpha", "model": "gpt"},
                {"id": "b", "prompt": "beta", "model": "claude"},
                {"id": "c", "prompt": "gamma", "model": "gem"},
            ],
        )
    )
    db = tmp_path / "t.db"
    result = await thinktank.run(spec, store=str(db))
    assert result.status == "completed", result.error
    async with await thinktank.Store.open(str(db)) as store:
        stored = await store.get_session(result.session_id)
    calls = {s.step_key: s.calls[0] for s in stored.steps}
    assert [(a.status, a.status_code) for a in calls["a"].attempts] == [
        ("failed", 429),
        ("failed", 500),
        ("ok", None),
    ]
    assert calls["a"].attempts[0].retry_in_s == pytest.approx(0.005)
    assert [(a.status, a.status_code) for a in calls["b"].attempts] == [
        ("failed", 529),
        ("ok", None),
    ]
    assert [a.status for a in calls["c"].attempts] == ["timeout", "ok"]
    assert calls["a"].tries == 3 and calls["a"].cost_usd is not None
    assert len([r for r in server.requests if r.model == "gpt"]) == 3


async def test_non_retryable_faults_fail_the_step_once(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """401 and malformed JSON fail at the first try; the step fails, the rest runs."""
    monkeypatch.setenv("TT_TEST_KEY", SENTINEL)
    server.add_faults(Fault.http_error(401, echo_key=True), model="gpt")
    server.add_faults(Fault.malformed_json(), model="claude")
    server.add_faults(Fault.drop(), model="gem")
    spec = parse_session(
        session(
            server,
            [
                {"id": "a", "prompt": "alpha", "model": "gpt"},
                {"id": "b", "prompt": "beta", "model": "claude"},
                {"id": "c", "prompt": "gamma", "model": "gem"},
            ],
        )
    )
    result = await thinktank.run(spec, store=str(tmp_path / "t.db"))
    assert result.status == "partial"
    assert result.steps["a"].status == "failed"
    assert "401" in (result.steps["a"].error or "")
    assert SENTINEL not in (result.steps["a"].error or "")
    assert result.steps["b"].status == "failed"
    assert "not valid JSON" in (result.steps["b"].error or "")
    assert result.steps["c"].status == "completed"  # the dropped connection was retried
    assert len([r for r in server.requests if r.model == "gpt"]) == 1
    assert len([r for r in server.requests if r.model == "claude"]) == 1


def test_sentinel_key_never_appears_anywhere(
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a run with failures the key is in no DB byte, log line or CLI output."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TT_TEST_KEY", SENTINEL)
    server.add_faults(Fault.http_error(401, echo_key=True), model="gpt")
    server.add_faults(Fault.http_error(500, echo_key=True, headers=FAST), model="claude")
    server.add_faults(Fault.http_error(403, echo_key=True), model="gem")
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            session(
                server,
                [
                    {"id": "a", "prompt": "alpha", "model": "gpt"},
                    {"id": "b", "prompt": "beta", "model": "claude"},
                    {"id": "c", "prompt": "gamma", "model": "gem"},
                    {
                        "id": "d",
                        "prompt": "{{ steps.a.output }}",
                        "model": "gpt",
                        "depends_on": ["a"],
                    },
                ],
            )
        )
    )
    db = str(tmp_path / "t.db")
    runner = CliRunner()
    outputs = []
    run = runner.invoke(main, ["run", str(path), "--db", db])
    outputs += [run.stdout, run.stderr]
    run_json = runner.invoke(main, ["run", str(path), "--db", db, "--json"])
    outputs += [run_json.stdout, run_json.stderr]
    sid = json.loads(run_json.stdout)["session_id"]
    for args in (
        ["sessions", "--db", db],
        ["sessions", "--db", db, "--json"],
        ["show", sid, "--db", db],
        ["show", sid, "--db", db, "--json"],
        ["models", "--session", str(path)],
        ["models", "--json"],
    ):
        out = runner.invoke(main, args)
        outputs += [out.stdout, out.stderr]
    assert run.exit_code == 1
    assert any("401" in o for o in outputs)
    for text in outputs:
        assert SENTINEL not in text
    assert SENTINEL not in caplog.text
    for file in tmp_path.glob("t.db*"):
        assert SENTINEL.encode() not in file.read_bytes()
    # The server did receive it: the test would notice a key that was never sent.
    assert any(SENTINEL in str(r.headers) for r in server.requests)


async def test_streamed_text_reaches_on_delta_as_it_arrives(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stream on, on_delta sees the pieces (OpenAI and Anthropic) that make the answer."""
    monkeypatch.setenv("TT_TEST_KEY", SENTINEL)
    data = session(
        server,
        [
            {"id": "a", "prompt": "one two three four five six", "model": "gpt"},
            {"id": "b", "prompt": "seven eight nine ten", "model": "claude"},
        ],
    )
    for name in ("gpt", "claude"):
        data["models"][name]["stream"] = True
    spec = parse_session(data)
    pieces: dict[tuple[str, str], list[str]] = {}

    def on_delta(step: str, model: str, text: str) -> None:
        pieces.setdefault((step, model), []).append(text)

    result = await thinktank.run(spec, store=None, on_delta=on_delta)
    assert result.status == "completed"
    for step, model in (("a", "gpt"), ("b", "claude")):
        assert len(pieces[(step, model)]) > 1
        assert "".join(pieces[(step, model)]) == result.steps[step].output


async def test_sessions_share_a_given_http_client_and_its_connections(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``http=``: every session's calls go through the caller's client, which stays
    open, so sessions after the first reuse its connections instead of each opening
    (and, on HTTPS, handshaking) its own; without it each run has a client of its own."""
    from thinktank.providers.http import create_http_client

    monkeypatch.setenv("TT_TEST_KEY", "sk-test")
    steps = [{"id": "a", "prompt": "hi {{ inputs.n }}", "model": "gpt"}]
    spec = parse_session({**session(server, steps), "inputs": {"n": {"type": "integer"}}}, file="t")
    db = str(tmp_path / "t.db")
    async with create_http_client() as http:
        for n in range(5):
            await thinktank.run(spec, inputs={"n": n}, store=db, http=http)
        assert not http.is_closed
    assert server.connections == 1
    for n in range(5, 8):
        await thinktank.run(spec, inputs={"n": n}, store=db)
    assert server.connections == 4
