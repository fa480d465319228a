"""``thinktank ask --abstain``: below the threshold the ask answers nothing, says why in
one line with the answers' clusters, stores the session, and exits with
``EXIT_NO_CONSENSUS``; ``--json`` carries ``"outcome": "no_consensus"``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from thinktank.cli._shared import EXIT_NO_CONSENSUS
from thinktank.cli.commands import main
from thinktank.engine.result import result_of
from thinktank.store import Store

from .fakeserver import FakeServer, run_fake_server

MODELS = ["-m", "openai/wire-a", "-m", "openai/wire-b", "-m", "openai/wire-c"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    with run_fake_server() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        yield srv


def _ask(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    args = ["ask", "Best city?", *MODELS, "--db", str(tmp_path / "a.db"), "--no-progress"]
    result = CliRunner().invoke(main, [*args, *extra])
    return result.exit_code, result.stdout, result.stderr


def _replies(server: FakeServer, *answers: str) -> None:
    for model, answer in zip(("wire-a", "wire-b", "wire-c"), answers, strict=True):
        server.set_reply(model, answer)


async def _stored_outcome(db: Path, session_id: str) -> str | None:
    async with await Store.open(str(db)) as store:
        stored = await store.get_session(session_id)
    return result_of(stored).steps["ask"].outcome


def test_a_split_vote_abstains_with_a_documented_exit_code(
    server: FakeServer, tmp_path: Path
) -> None:
    _replies(server, "Paris", "Lyon", "Nice")
    code, out, err = _ask(tmp_path, "--abstain", "--threshold", "0.5")
    assert EXIT_NO_CONSENSUS == 3
    assert code == EXIT_NO_CONSENSUS, err
    assert "no consensus (score 0.33 < threshold 0.5)" in out
    for answer in ("Paris", "Lyon", "Nice"):
        assert any(f"1 x '{answer}'" in line for line in out.splitlines()), out


def test_json_carries_the_outcome_and_the_session_is_stored(
    server: FakeServer, tmp_path: Path
) -> None:
    _replies(server, "Paris", "Lyon", "Nice")
    code, out, err = _ask(tmp_path, "--abstain", "--threshold", "0.5", "--json")
    assert code == EXIT_NO_CONSENSUS, err
    body = json.loads(out)
    assert body["outcome"] == "no_consensus"
    assert body["synthesis"]["reached"] is False
    assert len(body["synthesis"]["clusters"]) == 3
    stored = anyio.run(_stored_outcome, tmp_path / "a.db", body["id"])
    assert stored == "no_consensus"


def test_agreement_answers_as_usual(server: FakeServer, tmp_path: Path) -> None:
    _replies(server, "Paris", "Paris", "Lyon")
    code, out, err = _ask(tmp_path, "--abstain", "--threshold", "0.5", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["outcome"] == "answered" and body["synthesis"]["content"] == "Paris"


def test_without_abstain_a_split_vote_still_answers(server: FakeServer, tmp_path: Path) -> None:
    _replies(server, "Paris", "Lyon", "Nice")
    code, out, err = _ask(tmp_path, "--threshold", "0.5", "--json")
    assert code == 0, err
    assert json.loads(out)["outcome"] == "answered"
