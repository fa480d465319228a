"""The page at ``/`` in a real headless Chromium against a real ``thinktank serve``
process whose models are the fake provider server over loopback: it lists the
sessions, draws the selected session's DAG, follows its state live from the event
stream, asks for a key when the server needs one, and renders to a non-blank PNG.

Chromium comes from the system (Debian's ``chromium`` package; ``.ci/run`` installs
it). Without it these tests are skipped, unless ``THINKTANK_REQUIRE_CHROMIUM=1``
(``.ci/run`` sets it), which makes its absence a failure."""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from .fakeserver import FakeServer, Fault, run_fake_server
from .serverproc import serve
from .test_eval_runner import write_config
from .test_server_keys import create_key

REQUIRE_ENV = "THINKTANK_REQUIRE_CHROMIUM"
MODELS = ["m1", "m2"]
WINDOW = (1200, 800)


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
    write_config(root / "thinktank.toml", fake, MODELS)
    return root


@pytest.fixture(scope="module")
def env(root: Path) -> dict[str, str]:
    return {"THINKTANK_CONFIG": str(root / "thinktank.toml"), "OPENAI_API_KEY": "sk-test"}


@pytest.fixture(scope="module")
def url(root: Path, env: dict[str, str]) -> Iterator[str]:
    with serve(root / "tt.db", "--no-auth", env=env, cwd=root, log=root / "serve.log") as base:
        yield base


def chromium_args(chromium: str, tmp: Path) -> list[str]:
    """Headless, offline and quiet, in a fresh profile."""
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / f'profile-{uuid.uuid4().hex[:8]}'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ]


def browse(chromium: str, tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Load ``url`` in headless Chromium and let it settle (``--virtual-time-budget``);
    its stdout (``--dump-dom``). For a page in a state that needs no live event."""
    command = [*chromium_args(chromium, tmp), "--virtual-time-budget=10000", *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert done.returncode == 0, done.stderr
    return done


_TRAMPOLINE = """
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for fd in sys.argv[1:3]:
    os.close(int(fd))
for target, fd in zip((3, 4), ends):
    os.dup2(fd, target)
    os.close(fd)
os.execvp(sys.argv[3], sys.argv[3:])
"""


class Browser:
    """A headless Chromium driven over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: the browser reads NUL-ended JSON commands on fd 3 and
    writes answers and events on fd 4), for what ``--dump-dom`` cannot do: wait until
    the page shows a state the live event stream brings."""

    def __init__(self, chromium: str, tmp: Path) -> None:
        child_in, self._to = os.pipe()
        self._from, child_out = os.pipe()
        # The browser wants the pipe on fds 3 and 4: a small exec trampoline moves it
        # there (via fds >= 10, so that neither end is closed by the other's move).
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TRAMPOLINE,
                str(child_in),
                str(child_out),
                *chromium_args(chromium, tmp),
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(child_in, child_out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._next = 0
        self._session: str | None = None

    def __enter__(self) -> Browser:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._to)
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._from)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        while True:  # events and other answers are skipped
            while b"\0" not in self._buffer:
                chunk = os.read(self._from, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, within_s: float = 60.0) -> Any:
        """Poll ``expression`` until it is truthy (a hang guard, not a timing test)."""
        deadline = time.monotonic() + within_s
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"never true: {expression}")
            time.sleep(0.05)
        return value


class _Dom(html.parser.HTMLParser):
    """The dumped DOM's elements as (tag, attributes, text directly inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}, []))
        if tag not in ("input", "meta", "br", "img", "line"):
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self.elements[self._open[-1]][2].append(data)

    def where(self, **attrs: str) -> list[tuple[str, dict[str, str], list[str]]]:
        return [e for e in self.elements if all(e[1].get(k) == v for k, v in attrs.items())]

    def text(self, **attrs: str) -> list[str]:
        return ["".join(e[2]).strip() for e in self.where(**attrs)]


def parse(dom: str) -> _Dom:
    parser = _Dom()
    parser.feed(dom)
    return parser


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


def test_the_page_is_public_and_locked_down(url: str) -> None:
    response = httpx.get(url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'sha256-" in policy
    # Self-contained: nothing loaded from elsewhere (the machine may be offline).
    assert not re.search(r"(src|href)\s*=", response.text), "the page loads another file"


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
            # Kept for the tab: a reload needs no key again.
            browser.open(f"{keyed}/?session={sid}")
            browser.wait_for("document.getElementById('session-status').textContent == 'completed'")
            assert browser.evaluate("document.getElementById('auth').hidden") is True
