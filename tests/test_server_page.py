"""The page at ``/`` in a real headless Chromium against a real ``thinktank serve``
process whose models are the fake provider server over loopback: it lists the
sessions, draws the selected session's DAG, follows its state live from the event
stream, asks for a key when the server needs one, and renders to a non-blank PNG.

Chromium comes from the system (Debian's ``chromium`` package; ``.ci/run`` installs
it). Without it these tests are skipped, unless ``THINKTANK_REQUIRE_CHROMIUM=1``
(``.ci/run`` sets it), which makes its absence a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from .devtools import WINDOW, Browser, CuttingProxy, chromium_args, parse
from .fakeserver import FakeServer, Fault, run_fake_server
from .serverproc import free_port, serve
from .test_eval_runner import write_config
from .test_server_keys import create_key

REQUIRE_ENV = "THINKTANK_REQUIRE_CHROMIUM"
MODELS = ["m1", "m2"]
FAILING = "m3"  # a model the tests make fail
STATUS = "document.getElementById('session-status').textContent"
FINAL = f"['completed','partial','failed','interrupted'].includes({STATUS})"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but no chromium on PATH", pytrace=False)
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with run_fake_server() as server:
        yield server


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, fake: FakeServer) -> Path:
    root = tmp_path_factory.mktemp("page")
    write_config(root / "thinktank.toml", fake, [*MODELS, FAILING])
    return root


@pytest.fixture(scope="module")
def env(root: Path) -> dict[str, str]:
    return {"THINKTANK_CONFIG": str(root / "thinktank.toml"), "OPENAI_API_KEY": "sk-test"}


@pytest.fixture(scope="module")
def url(root: Path, env: dict[str, str]) -> Iterator[str]:
    with serve(root / "tt.db", "--no-auth", env=env, cwd=root, log=root / "serve.log") as base:
        yield base


def browse(chromium: str, tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Load ``url`` in headless Chromium and let it settle (``--virtual-time-budget``);
    its stdout (``--dump-dom``). For a page in a state that needs no live event."""
    command = [*chromium_args(chromium, tmp), "--virtual-time-budget=10000", *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert done.returncode == 0, done.stderr
    return done


def start(url: str, key: str | None = None) -> str:
    session: dict[str, Any] = {
        "name": "page-demo",
        "steps": [
            {"id": "ask", "prompt": f"say {uuid.uuid4().hex}", "models": MODELS},
            {
                "id": "check",
                "prompt": "check {{ steps.ask.output }}",
                "model": "m1",
                "depends_on": ["ask"],
            },
            {
                "id": "sum",
                "prompt": "sum up {{ steps.ask.output }} {{ steps.check.output }}",
                "model": "m2",
                "depends_on": ["ask", "check"],
            },
        ],
    }
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(
        url + "/v1/sessions", json={"session": session}, headers=headers, timeout=30
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def session_page(url: str, sid: str) -> str:
    return f"{url}/?session={sid}"


def stored_events(url: str, sid: str) -> int:
    """How many events the session has stored (its finished stream, counted)."""
    text = httpx.get(f"{url}/v1/sessions/{sid}/events", timeout=30).text
    return sum(line.startswith("id: ") for line in text.splitlines())


def transitions(browser: Browser) -> list[str]:
    return list(
        browser.evaluate("[...document.querySelectorAll('.transition')].map((e) => e.textContent)")
    )


def test_the_page_is_public_and_locked_down(url: str) -> None:
    response = httpx.get(url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'sha256-" in policy
    # Self-contained: nothing loaded from elsewhere (the machine may be offline).
    assert not re.search(r"(src|href)\s*=", response.text), "the page loads another file"


def test_the_event_stream_advises_its_reconnect_delay(url: str) -> None:
    """EventSource clients reconnect by themselves, after the ``retry:`` the stream
    sends, with ``Last-Event-ID`` (the page does the same with fetch)."""
    sid = start(url)
    text = httpx.get(f"{url}/v1/sessions/{sid}/events", timeout=30).text
    first = text.split("\n\n")[0].splitlines()
    assert first[:2] == ["retry: 1000", "id: 1"], first
    assert text.count("retry:") == 1


@pytest.mark.slow
def test_the_page_follows_a_running_session_live(
    chromium: str, url: str, fake: FakeServer, tmp_path: Path
) -> None:
    fake.reset()
    fake.set_reply("m1", "Paris")
    fake.set_reply("m2", "Paris")
    with Browser(chromium, tmp_path) as browser:
        browser.open(url + "/")  # warm: the session is started once the browser is up
        # ask's two calls answer slowly, so the page opens the session while it runs.
        fake.add_faults(Fault.slow(3.0), model="m1")
        fake.add_faults(Fault.slow(3.0), model="m2")
        sid = start(url)
        browser.open(f"{url}/?session={sid}")
        browser.wait_for("document.getElementById('view').dataset.loadedStatus")
        # The live stream's end, not a clock: the page marks the session finished.
        browser.wait_for(
            "['completed','partial','failed','interrupted']"
            ".includes(document.getElementById('session-status').textContent)"
        )
        dom = parse(browser.evaluate("document.documentElement.outerHTML"))
        # A click on a step shows its answers and its consensus.
        browser.evaluate("document.querySelector('[data-step=ask]').click()")
        browser.wait_for("!!document.querySelector('#detail .consensus')")
        detail = parse(browser.evaluate("document.getElementById('detail').outerHTML"))

    # The page loaded the session while it ran; everything after came from the stream.
    (view,) = dom.where(id="view")
    assert view[1]["data-loaded-status"] == "running"
    assert dom.text(id="session-status") == ["completed"]
    # The DAG: a box per step, one edge per dependency, laid out by depth.
    boxes = {e[1]["data-step"]: e[1] for e in dom.elements if "data-step" in e[1]}
    assert set(boxes) == {"ask", "check", "sum"}
    assert all(box["data-status"] == "completed" for box in boxes.values())
    edges = {e[1]["data-edge"] for e in dom.elements if "data-edge" in e[1]}
    assert edges == {"ask->check", "ask->sum", "check->sum"}
    left = {key: int(box["style"].split("left: ")[1].split("px")[0]) for key, box in boxes.items()}
    assert left["ask"] < left["check"] < left["sum"]
    # Every transition the stream brought, in order.
    transitions = dom.text(**{"class": "transition"})
    for change in ("ask: running -> completed", "sum: pending -> running"):
        assert change in transitions, transitions
    assert transitions[-1] == "session: running -> completed"
    order = transitions.index
    assert order("ask: running -> completed") < order("sum: pending -> running")
    (consensus,) = detail.text(**{"class": "consensus"})
    assert consensus.startswith("consensus majority: agreement 1.00") and "reached" in consensus
    cells = ["".join(e[2]) for e in detail.elements if e[0] in ("td", "pre")]
    assert [cell for cell in cells if cell in MODELS] == MODELS
    assert cells.count("Paris") == 3  # the merged answer, then each model's
    # The list: this session, newest first, with its final status.
    rows = dom.where(**{"class": "session selected"})
    assert [row[1]["data-id"] for row in rows] == [sid]


@pytest.mark.slow
def test_the_page_renders_to_a_non_blank_png(chromium: str, url: str, tmp_path: Path) -> None:
    # Pillow comes with [research] (matplotlib), which .ci/run installs.
    Image = pytest.importorskip("PIL.Image", reason="reading the PNG needs Pillow ([research])")

    sid = start(url)
    shot = tmp_path / "page.png"
    browse(chromium, tmp_path, f"{url}/?session={sid}", f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    # Text, boxes of several states, lines: far more than a blank page's single colour.
    assert colours is None or len(colours) > 50


@pytest.mark.slow
def test_a_keyed_server_serves_the_page_and_asks_for_a_key(
    chromium: str, root: Path, env: dict[str, str], tmp_path: Path
) -> None:
    db = str(tmp_path / "keyed.db")
    key, _ = create_key(db)
    with serve(db, env=env, cwd=root, log=tmp_path / "keyed.log") as keyed:
        assert httpx.get(keyed + "/").status_code == 200
        assert httpx.get(keyed + "/v1/sessions").status_code == 401
        dom = parse(browse(chromium, tmp_path, keyed + "/", "--dump-dom").stdout)
        (form,) = dom.where(id="auth")
        assert "hidden" not in form[1]
        assert dom.text(id="error") == ["this server needs an API key"]

        sid = start(keyed, key=key)
        with Browser(chromium, tmp_path) as browser:
            browser.open(keyed + "/")
            browser.wait_for("!document.getElementById('auth').hidden")
            browser.evaluate(
                f"document.getElementById('key').value = {json.dumps(key)};"
                "document.getElementById('auth').requestSubmit()"
            )
            # The list and the event stream both carry the key.
            browser.wait_for(f"!!document.querySelector('tr[data-id=\"{sid}\"]')")
            browser.evaluate(f"document.querySelector('tr[data-id=\"{sid}\"]').click()")
            browser.wait_for("document.getElementById('session-status').textContent == 'completed'")
            # Sent as a header only: never in the address, never left in the field.
            assert key not in browser.evaluate("location.href")
            assert browser.evaluate("document.getElementById('key').value") == ""
            # Kept for the tab: a reload needs no key again.
            browser.open(f"{keyed}/?session={sid}")
            browser.wait_for("document.getElementById('session-status').textContent == 'completed'")
            assert browser.evaluate("document.getElementById('auth').hidden") is True


def test_a_session_started_after_the_page_loaded_appears_and_plays_live(
    chromium: str, url: str, fake: FakeServer, tmp_path: Path
) -> None:
    fake.reset()
    with Browser(chromium, tmp_path) as browser:
        browser.open(url + "/")
        browser.wait_for("document.getElementById('sessions').dataset.listed !== undefined")
        fake.add_faults(Fault.slow(6.0), model="m1")  # running while the list catches up
        sid = start(url)
        # No reload: the list reads the sessions again by itself.
        row = f"document.querySelector('tr[data-id=\"{sid}\"]')"
        browser.wait_for(f"!!{row}", within_s=20)
        browser.evaluate(f"{row}.click()")
        browser.wait_for("document.getElementById('view').dataset.loadedStatus")
        browser.wait_for(FINAL)
        loaded = browser.evaluate("document.getElementById('view').dataset.loadedStatus")
        seen = transitions(browser)
        status = browser.evaluate("document.getElementById('session-status').textContent")
    assert loaded == "running"  # opened while it ran: the rest came live
    assert status == "completed"
    assert seen.index("ask: running -> completed") < seen.index("sum: pending -> running")
    assert seen[-1] == "session: running -> completed"


def test_a_cut_stream_resumes_after_the_last_event_without_repeating_one(
    chromium: str, url: str, fake: FakeServer, tmp_path: Path
) -> None:
    fake.reset()
    fake.add_faults(Fault.slow(2.0), model="m1")
    fake.add_faults(Fault.slow(2.0), model="m2")
    with CuttingProxy(url) as proxy, Browser(chromium, tmp_path) as browser:
        sid = start(url)
        browser.open(session_page(proxy.url, sid))
        # ask is running: its start came through the stream, its answers not yet.
        browser.wait_for("document.querySelector('[data-step=ask]')?.dataset.status === 'running'")
        before = int(browser.evaluate("document.getElementById('view').dataset.events"))
        proxy.cut()
        browser.wait_for(FINAL)
        browser.wait_for("document.getElementById('stream').textContent === 'ended'")
        applied = int(browser.evaluate("document.getElementById('view').dataset.events"))
        seen = transitions(browser)
        statuses = browser.evaluate(
            "[...document.querySelectorAll('[data-step]')].map((e) => e.dataset.status)"
        )
    # Reconnected after the last event it had applied, not from the start.
    asked = [line for line in proxy.requests if f"/v1/sessions/{sid}/events" in line]
    assert len(asked) >= 2, asked
    assert f"after={before}" in asked[-1] or any(f"after={before}" in a for a in asked[1:]), asked
    # Every event applied once: as many as the session stored, and no transition twice.
    assert applied == stored_events(url, sid)
    assert len(seen) == len(set(seen)), seen
    assert statuses == ["completed"] * 3


@pytest.mark.slow
def test_a_restarted_server_is_rejoined_and_a_resumed_session_followed(
    chromium: str, root: Path, env: dict[str, str], fake: FakeServer, tmp_path: Path
) -> None:
    fake.reset()
    db = tmp_path / "restart.db"
    port = free_port()
    fake.add_faults(Fault.slow(30.0), model="m1")  # still running when the server stops
    error = "document.getElementById('error').textContent"
    target = f"http://127.0.0.1:{port}"
    with CuttingProxy(target) as proxy, Browser(chromium, tmp_path) as browser:
        with serve(db, "--no-auth", env=env, cwd=root, port=port) as first:
            sid = start(first)
            browser.open(session_page(proxy.url, sid))
            browser.wait_for(
                "document.querySelector('[data-step=ask]')?.dataset.status === 'running'"
            )
            # The server goes away: its connections drop and new ones are refused
            # (held at the proxy: a server with an open event stream waits for it to
            # close before it stops).
            proxy.cut(hold=True)
        # Stopped, the session stored interrupted. The page says the server is gone.
        browser.wait_for(f"{error}.includes('unreachable')")
        assert browser.evaluate(STATUS) == "running"  # nothing it could not see
        fake.reset()
        with serve(db, "--no-auth", env=env, cwd=root, port=port) as second:
            proxy.release()
            # Back on the same port and database: the page reads what it missed.
            browser.wait_for(f"{STATUS} === 'interrupted'")
            browser.wait_for(f"{error} === ''")
            resumed = httpx.post(f"{second}/v1/sessions/{sid}/resume", timeout=30)
            assert resumed.status_code == 202, resumed.text
            # It sees the session running again and follows the resumed run's events.
            browser.wait_for(f"{STATUS} === 'completed'")
            applied = int(browser.evaluate("document.getElementById('view').dataset.events"))
            statuses = browser.evaluate(
                "[...document.querySelectorAll('[data-step]')].map((e) => e.dataset.status)"
            )
            assert applied == stored_events(second, sid)
    assert statuses == ["completed"] * 3


HOSTILE = (
    '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'
    " \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645"
    " \U0001f680\U0001f469\u200d\U0001f469\u200d\U0001f467 "
) + "x" * 4000


def test_failed_abstained_and_hostile_answers_render_distinctly_as_text(
    chromium: str, url: str, fake: FakeServer, tmp_path: Path
) -> None:
    fake.reset()
    fake.set_reply("m1", HOSTILE)
    fake.set_reply("m2", "Paris")
    fake.add_faults(Fault.http_error(400, message="model m3 is gone"), model=FAILING)
    session: dict[str, Any] = {
        "name": "page-states",
        "steps": [
            {
                "id": "ask",
                "prompt": f"say {uuid.uuid4().hex}",
                "models": MODELS,
                "consensus_threshold": 0.99,
                "on_low_consensus": "abstain",
            },
            {"id": "boom", "prompt": "fail", "model": FAILING},
            {
                "id": "after",
                "prompt": "{{ steps.boom.output }}",
                "model": "m2",
                "depends_on": ["boom"],
            },
        ],
    }
    response = httpx.post(url + "/v1/sessions", json={"session": session}, timeout=30)
    assert response.status_code == 202, response.text
    sid = response.json()["id"]
    box = "document.querySelector('[data-step={}]')"
    with Browser(chromium, tmp_path) as browser:
        browser.open(session_page(url, sid))
        browser.wait_for(FINAL)
        boxes = {
            key: browser.evaluate(
                f"(b => [b.dataset.status, b.dataset.outcome, b.className,"
                f" b.querySelector('.meta').textContent, b.querySelector('.reason').textContent])"
                f"({box.format(key)})"
            )
            for key in ("ask", "boom", "after")
        }
        browser.evaluate(f"{box.format('boom')}.click()")
        failed = browser.wait_for("document.querySelector('#detail .reason')?.textContent")
        browser.evaluate(f"{box.format('ask')}.click()")
        browser.wait_for("document.querySelectorAll('#detail tr.answer').length === 2")
        answers = browser.evaluate(
            "[...document.querySelectorAll('#detail tr.answer pre')].map((p) =>"
            " [p.textContent, p.dir, p.scrollWidth <= p.clientWidth])"
        )
        markup = browser.evaluate(
            "document.querySelectorAll('#view img, #view script').length"
            " + (window.pwned === undefined ? 0 : 100)"
        )
        page_wide = browser.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    status, outcome, classes, meta, reason = boxes["ask"]
    assert (status, outcome) == ("completed", "no_consensus")
    assert "no-consensus" in classes and meta.startswith("no consensus")
    assert reason.startswith("no consensus")
    status, outcome, classes, meta, reason = boxes["boom"]
    assert status == "failed" and "status-failed" in classes and "m3 is gone" in reason
    assert failed.startswith("failed:") and "m3 is gone" in failed
    status, _, classes, meta, reason = boxes["after"]
    assert status == "skipped" and "boom" in reason
    # The hostile answer is text, exactly as sent, wrapped, in its own direction.
    assert [HOSTILE, "auto", True] in answers, [a[1:] for a in answers]
    assert markup == 0
    assert page_wide


def test_an_empty_database_and_an_unknown_session(
    chromium: str, root: Path, env: dict[str, str], tmp_path: Path
) -> None:
    with serve(tmp_path / "empty.db", "--no-auth", env=env, cwd=root) as empty:
        dom = parse(browse(chromium, tmp_path, empty + "/", "--dump-dom").stdout)
        (note,) = dom.where(id="empty")
        assert "hidden" not in note[1]
        assert dom.text(id="error") == [""]
        dom = parse(browse(chromium, tmp_path, empty + "/?session=nope", "--dump-dom").stdout)
    (error,) = dom.text(id="error")
    assert error.startswith("404") and "nope" in error
    (view,) = dom.where(id="view")
    assert "hidden" in view[1]
