"""Credentials in a ``base_url`` are used for the request and never leave the process:
not in ``models``, ``show``, ``export``, the database file, nor in errors that echo them."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from thinktank.cli.commands import main
from thinktank.providers.http import create_http_client, redact
from thinktank.providers.openai import OpenAICompatibleModel

from .fakeserver import FakeServer, Fault, run_fake_server

PASSWORD = "s3cret"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as srv:
        yield srv


def _url(server: FakeServer) -> str:
    return f"http://user:{PASSWORD}@127.0.0.1:{server.port}/v1"


def _session(tmp_path: Path, server: FakeServer) -> Path:
    path = tmp_path / "creds.yaml"
    spec = {
        "name": "creds",
        "models": {
            "gpt": {
                "provider": "openai",
                "model": "gpt",
                "base_url": _url(server),
                "max_retries": 0,
            }
        },
        "steps": [{"id": "ask", "prompt": "hello", "model": "gpt"}],
    }
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_base_url_credentials_are_used_but_never_shown_or_stored(
    tmp_path: Path, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server gets basic auth; models, show, export, logs and the DB file hide the
    password."""
    caplog.set_level(logging.DEBUG)
    session = _session(tmp_path, server)
    db = tmp_path / "t.db"
    code, out = _invoke("run", str(session), "--db", str(db), "--json", "--no-progress")
    assert code == 0, out
    sid = json.loads(out)["session_id"]
    sent = server.requests[-1].headers["authorization"]
    assert sent == "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()

    outputs = [out]
    for args in (
        ("models", "--session", str(session)),
        ("models", "--session", str(session), "--json"),
        ("show", sid, "--db", str(db)),
        ("show", sid, "--db", str(db), "--json"),
        ("export", sid, "--db", str(db)),
        ("sessions", "--db", str(db), "--json"),
    ):
        code, text = _invoke(*args)
        assert code == 0, (args, text)
        outputs.append(text)
    listed = json.loads(outputs[2])
    assert listed[0]["base_url"] == f"http://***@127.0.0.1:{server.port}/v1"
    for text in outputs:
        assert PASSWORD not in text
    assert "127.0.0.1" in outputs[1]
    assert PASSWORD.encode() not in _db_bytes(db)
    assert "HTTP Request" in caplog.text and PASSWORD not in caplog.text


def test_credentials_echoed_in_an_error_body_are_redacted(
    tmp_path: Path, server: FakeServer
) -> None:
    """A server that quotes the URL (or the bare password) back: the error hides both."""
    session = _session(tmp_path, server)
    db = tmp_path / "t.db"
    server.add_faults(
        Fault.http_error(400, message=f"bad upstream {_url(server)}/chat/completions"),
    )
    code, out = _invoke("run", str(session), "--db", str(db), "--json", "--no-progress")
    assert code == 1, out
    error = json.loads(out)["steps"]["ask"]["error"]
    assert "bad upstream http://***@127.0.0.1" in error
    server.add_faults(Fault.http_error(401, message=f"password {PASSWORD} refused"))
    code, out2 = _invoke("run", str(session), "--db", str(db), "--no-progress")
    assert code == 1
    assert "[REDACTED]" in out2
    for text in (out, out2):
        assert PASSWORD not in text
    assert PASSWORD.encode() not in _db_bytes(db)


async def test_client_repr_and_redact_hide_userinfo() -> None:
    """The client's repr and the error redaction hide URL credentials."""
    async with create_http_client() as http:
        model = OpenAICompatibleModel(
            name="m", model="m", http=http, base_url="https://tok:pw@example.com/v1"
        )
        assert "tok" not in repr(model) and "https://example.com/v1" in repr(model)
    assert redact("see https://a:b@h/x and http://h/y", ()) == "see https://***@h/x and http://h/y"
