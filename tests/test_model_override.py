"""``run --model``: the models given on the command line replace every model choice in
the file (tested through the CLI against a loopback OpenAI-compatible server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from thinktank.cli.commands import main

from .fakeserver import run_fake_server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def openai_on_loopback(monkeypatch: pytest.MonkeyPatch) -> str:
    with run_fake_server() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield server  # type: ignore[misc]


def _run(args: list[str]) -> dict[str, object]:
    out = CliRunner().invoke(main, ["run", *args, "--json", "--no-progress"])
    assert out.exit_code == 0, out.stderr
    data: dict[str, object] = json.loads(out.stdout)
    return data


def test_several_models_replace_every_step_s_models(openai_on_loopback, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """quickstart names only local models; with two --model every step asks both."""
    server = openai_on_loopback
    quickstart = str(REPO / "sessions" / "quickstart.yaml")
    data = _run(
        [
            quickstart,
            "-m",
            "openai/gpt-4o-mini",
            "-m",
            "openai/gpt-4o",
            "--db",
            str(tmp_path / "t.db"),
        ]
    )
    steps = data["steps"]
    assert isinstance(steps, dict)
    assert {k: s["models"] for k, s in steps.items()} == {
        "answer": ["openai/gpt-4o-mini", "openai/gpt-4o"],
        "check": ["openai/gpt-4o-mini", "openai/gpt-4o"],
    }
    assert data["status"] == "completed"
    sent = sorted((r.json or {}).get("model") for r in server.requests)
    assert sent == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]


def test_judge_escalation_and_default_are_replaced_too(openai_on_loopback, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A judge, escalation models and the session default the file names are replaced:
    no model of the file is asked (nor needed)."""
    server = openai_on_loopback
    session = tmp_path / "s.yaml"
    session.write_text(
        "name: o\n"
        "default_model: local\n"
        "models:\n  x: {provider: simulated, default_reply: X}\n"
        "  y: {provider: simulated, default_reply: Y}\n"
        "steps:\n"
        "  - {id: a, models: [x, y], synthesis: judge, synthesizer: x, prompt: p,\n"
        "     on_low_consensus: escalate, escalate_to: [local]}\n"
        "  - {id: b, prompt: q, depends_on: [a]}\n"
    )
    data = _run(
        [str(session), "-m", "openai/m1", "-m", "openai/m2", "--db", str(tmp_path / "t.db")]
    )
    steps = data["steps"]
    assert isinstance(steps, dict)
    assert all(s["models"] == ["openai/m1", "openai/m2"] for s in steps.values())
    assert {(r.json or {}).get("model") for r in server.requests} == {"m1", "m2"}
    # One --model: every step asks that model alone.
    one = _run([str(session), "-m", "openai/m3", "--db", str(tmp_path / "t.db")])
    steps = one["steps"]
    assert isinstance(steps, dict)
    assert all(s["models"] == ["openai/m3"] for s in steps.values())
