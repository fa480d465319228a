"""The server's frame, over real HTTP to a real ``thinktank serve`` (uvicorn) process:
probes, models, keys required, OpenAI-shaped errors, request ids, the body limit and
where the server may listen; the concurrency cap against a slow app in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2 as httpx
import pytest
from click.testing import CliRunner

from thinktank.cli.commands import main
from thinktank.server.middleware import ConcurrencyCap, RequestId

from .serverproc import serve


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("srv") / "tt.db"
    with serve(db, "--no-auth") as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("srv") / "tt.db"
    with serve(db) as url:
        yield url


def _is_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and "Traceback" not in error["message"]
    return dict(error)


def test_probes_answer(open_server: str) -> None:
    assert httpx.get(open_server + "/healthz").json()["status"] == "ok"
    assert httpx.get(open_server + "/readyz").json() == {"status": "ready"}


def test_models_lists_the_registry(open_server: str) -> None:
    body = httpx.get(open_server + "/v1/models").json()
    assert body["object"] == "list"
    ids = {m["id"] for m in body["data"]}
    assert {"local", "local-s1"} <= ids
    assert all(m["object"] == "model" for m in body["data"])


def test_without_a_key_every_request_is_refused(keyed_server: str) -> None:
    error = _is_openai_error(httpx.get(keyed_server + "/v1/models"), 401)
    assert error["type"] == "authentication_error" and "missing API key" in str(error["message"])
    wrong = httpx.get(keyed_server + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert _is_openai_error(wrong, 401)["code"] == "invalid_api_key"
    # The probes stay open for load balancers.
    assert httpx.get(keyed_server + "/healthz").status_code == 200


def test_unknown_routes_are_openai_errors(open_server: str) -> None:
    error = _is_openai_error(httpx.get(open_server + "/v1/nope"), 404)
    assert error["message"] == "no route GET /v1/nope"


def test_request_ids_are_echoed_or_made(open_server: str) -> None:
    given = httpx.get(open_server + "/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = httpx.get(open_server + "/healthz").headers["x-request-id"]
    assert made.startswith("req_") and len(made) > 10
    for bad in ("x" * 257, "has space"):
        replaced = httpx.get(open_server + "/healthz", headers={"X-Request-Id": bad})
        assert replaced.headers["x-request-id"].startswith("req_")


def test_a_body_over_the_limit_is_413(open_server: str) -> None:
    big = b"x" * (4 * 1024 * 1024 + 1)
    response = httpx.post(open_server + "/v1/models", content=big)
    _is_openai_error(response, 413)

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"y" * (1024 * 1024)

    # Chunked (no Content-Length): counted as it is read.
    assert httpx.post(open_server + "/v1/models", content=chunks()).status_code in (405, 413)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0", "--no-auth"], "--no-auth serves anyone: only on a loopback host"),
        (["--host", "10.1.2.3"], "needs API keys"),
    ],
)
def test_serve_refuses_to_listen_beyond_loopback_unprotected(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


async def test_the_concurrency_cap_answers_503_at_once() -> None:
    """Beyond the cap a request is refused immediately (503, Retry-After), not queued;
    health checks are not counted."""
    release = anyio.Event()
    both_in = anyio.Event()
    entered = 0

    async def slow(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    app = RequestId(ConcurrencyCap(slow, limit=2))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        results: list[httpx.Response] = []

        async def call() -> None:
            results.append(await client.get("/v1/x"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            tg.start_soon(call)
            await both_in.wait()
            refused = await client.get("/v1/x")
            release.set()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "server_overloaded"
    assert [r.status_code for r in results] == [200, 200]


def test_import_thinktank_does_not_import_the_server(tmp_path: Path) -> None:
    import subprocess
    import sys

    heavy = "('fastapi', 'uvicorn', 'thinktank.server')"
    code = f"import sys, thinktank; print(any(m.startswith({heavy}) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
