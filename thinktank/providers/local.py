"""Local models run in process through llama.cpp (``llama-cpp-python``): no network, and
free unless their config gives them a price (or cost proxy) for cascade to order by.

This module owns the ``local`` provider: its config (:class:`LocalModelConfig`), its
client (:class:`LocalLlamaModel`) and the process-wide cache of loaded models. Install
it with ``pip install 'thinktank[local]'``; ``import thinktank`` never needs
``llama_cpp`` (it is imported when a model loads).

The packaged models (:mod:`thinktank.providers._packaged`)
    A config without ``model_path`` runs a model shipped on PyPI: ``packaged:
    gemma-3-270m`` (the default; Gemma 3 270M base, prompted in the few-shot ``Q:``/``A:``
    frame, one line per answer) or ``smollm2-135m`` (SmolLM2-135M-Instruct, prompted
    with its ChatML chat template). ``chatml`` and ``few_shot`` choose the frame of a
    model given by ``model_path``; with both off the text is sent as it is (system, a
    blank line, prompt) and generation runs to the end-of-text token or ``max_tokens``.
    Nothing is ever fetched from a hub.

Variants (:data:`LOCAL_VARIANTS`)
    ``local`` (greedy) and ``local-s1`` .. ``local-s3`` (temperature 0.7, seeds 1, 2, 3)
    of Gemma, and ``smollm2``, ``smollm2-s1`` .. ``smollm2-s3`` the same of SmolLM2, let
    a multi-model step run offline. Each family is samples of ONE model
    (self-consistency), not independent models: their agreement measures how stable the
    model's answer is under sampling, not what several different models think. Each
    call's sampler seed derives from (variant seed, name, prompt, attempt, retry)
    (:func:`sample_seed`; a request's ``seed`` replaces the variant seed), so the samples
    are independent across questions and retries, and the same call is reproducible.

Loading, sharing and thread safety
    A ``Llama`` object is loaded lazily, once per process for each
    (model file, ``n_ctx``, ``n_threads``), and shared by every client, variant and
    sample ``NAME#K`` that uses the same triple. Inference runs in a worker thread
    (``anyio.to_thread.run_sync``), one at a time per loaded model: a llama.cpp context
    is not thread safe. Two locks do this. Per event loop, an ``anyio.Lock`` queues the
    callers (FIFO) without tying up worker threads. Per loaded model, a
    ``threading.Lock`` is held by the worker thread for the whole inference: it is the
    real guard, and it also covers other event loops and threads of the process.

Cancellation
    A step timeout cancels the awaiting task, but a thread cannot be interrupted. The
    task therefore abandons the thread (``abandon_on_cancel=True``) and sets the call's
    cancel flag; the thread keeps the model lock until it returns, so no second
    inference can start on the same context meanwhile. The flag is checked at every
    generated token, so an abandoned generation stops after at most one more token;
    evaluating the prompt itself cannot be stopped
    (tens of milliseconds for a short prompt). A call cancelled while still queued never
    runs. Loading cannot be stopped either: an abandoned load finishes and stays cached
    for the next call.

Determinism
    The answer depends only on the prompt, temperature, seed and loaded model, never on
    which calls ran before on the shared context. The frame's fixed prefix (the
    few-shot preamble, or ChatML's opening of the user turn) is evaluated once on its own
    and kept in the context's KV cache; every call drops whatever followed it and
    evaluates the rest of its prompt in one batch (this also makes a short answer take
    ~40 ms instead of ~120 ms on 2 cores). A prompt that does not start with the prefix
    (a raw one, or one with its own system prompt) clears the context and is evaluated
    whole. Clients of one loaded model with different frames each keep their own
    prefix this way (a call whose prefix is not the cached one re-evaluates it on its
    own first), so the batches a prompt is evaluated in never depend on the calls
    before it. (Reusing an arbitrary cached prefix, llama-cpp-python's default, splits
    the prompt into batches that depend on the previous call, which changes the logits
    slightly and, with sampling, the answer.)

Quiet and bounded
    Loading prints nothing: llama.cpp's log goes to this module's debug logger, and
    loads run one at a time in the process (:func:`_construct` says why). Tokens are
    sampled here with a sampler chain freed after each call, so native memory stays
    flat over thousands of calls (``bench/local_memory.py``).

Structured output
    A request with a ``response_enum`` (a ``choice`` or ``yes_no`` step) is sampled
    under a GBNF grammar of its strings (:func:`enum_grammar`, llama.cpp's grammar
    sampler first in the chain): the answer is one of them exactly.
"""

from __future__ import annotations

import atexit
import codecs
import ctypes
import hashlib
import importlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from thinktank.errors import ProviderError
from thinktank.providers._packaged import (
    CACHE_DIR_ENV,
    FEW_SHOT_PREAMBLE,
    PACKAGED_MODEL_FILE,
    Frame,
    PackagedName,
    Segments,
    few_shot_prompt,
    frame_prefix,
    frame_segments,
    install_hint,
    model_cache_dir,
    packaged_available,
    packaged_model_path,
    smollm2_model_path,
)
from thinktank.providers._packaged import one_line as _one_line
from thinktank.providers.base import MAX_SEED, ModelRequest, ModelResponse, cost_usd

__all__ = [
    "CACHE_DIR_ENV",
    "FEW_SHOT_PREAMBLE",
    "LOCAL_VARIANTS",
    "PACKAGED_MODEL_FILE",
    "LocalLlamaModel",
    "LocalModelConfig",
    "few_shot_prompt",
    "local_available",
    "model_cache_dir",
    "packaged_model_path",
    "sample_seed",
    "unload_local_models",
]

_PROVIDER = "local"

_Key: TypeAlias = tuple[str, int, int | None]
"""A loaded model's identity: (model file, n_ctx, n_threads)."""


class LocalModelConfig(BaseModel):
    """A local llama.cpp model as declared in a session file's ``models:`` section."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )

    provider: Literal["local"] = "local"
    """Provider kind."""
    model_path: str | None = None
    """A GGUF file; None means the ``packaged`` model."""
    packaged: PackagedName = "gemma-3-270m"
    """The packaged model run without ``model_path`` (exclusive with it):
    ``gemma-3-270m`` (Gemma 3 270M base, assembled on first use) or ``smollm2-135m``
    (SmolLM2-135M-Instruct, ``pip install 'thinktank[local,local-smollm2]'``)."""
    temperature: Annotated[float, Field(ge=0)] = 0.0
    """Sampling temperature; 0 is greedy. A request's temperature overrides it."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    """The variant's seed; each call's sampler seed derives from it, the model name, the
    prompt and the attempt (:func:`sample_seed`): the same call gives the same answer."""
    max_tokens: Annotated[int, Field(ge=1)] = 64
    """Output tokens at most. A request's ``max_tokens`` overrides it."""
    n_ctx: Annotated[int, Field(ge=64)] = 2048
    """Context window in tokens (prompt plus answer)."""
    n_threads: Annotated[int, Field(ge=1)] | None = None
    """CPU threads for generation; None lets llama.cpp choose (half the CPUs)."""
    few_shot: bool = True
    """Wrap the prompt in the few-shot ``Q:``/``A:`` frame; off sends it raw."""
    chatml: bool | None = None
    """Prompt with the ChatML chat template (instruct models); wins over ``few_shot``.
    None: on for the packaged SmolLM2 only."""
    input_cost_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    """USD (or any cost proxy, e.g. energy) per million input tokens; free by default.
    Cascade asks the cheapest models first, and calls are costed with it."""
    output_cost_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    """USD (or the same cost proxy) per million output tokens; free by default."""
    tags: list[str] = []
    """Domains the model is good at."""

    @model_validator(mode="after")
    def _one_model(self) -> LocalModelConfig:
        if self.model_path is not None and "packaged" in self.model_fields_set:
            raise ValueError("give either 'model_path' or 'packaged', not both")
        return self

    @property
    def packaged_model(self) -> PackagedName | None:
        """The packaged model this config runs; None with a ``model_path``."""
        return self.packaged if self.model_path is None else None

    @property
    def frame(self) -> Frame:
        """How prompts are put to the model (see :mod:`thinktank.providers._packaged`)."""
        chatml = self.chatml
        if chatml is None:
            chatml = self.packaged_model == "smollm2-135m"
        if chatml:
            return "chatml"
        return "few_shot" if self.few_shot else "raw"


def _variants(prefix: str, **model: Any) -> dict[str, LocalModelConfig]:
    """``prefix`` (greedy) and ``prefix-s1`` .. ``prefix-s3`` (temperature 0.7)."""
    variants = {prefix: LocalModelConfig(**model)}
    for seed in (1, 2, 3):
        variants[f"{prefix}-s{seed}"] = LocalModelConfig(temperature=0.7, seed=seed, **model)
    return variants


LOCAL_VARIANTS: dict[str, LocalModelConfig] = {
    **_variants("local"),
    **_variants("smollm2", packaged="smollm2-135m"),
}
"""Named variants of the packaged models for offline multi-model steps.

Samples of one model (self-consistency), not independent models: ``local`` (Gemma) and
``smollm2`` are greedy, ``local-s1`` .. ``local-s3`` and ``smollm2-s1`` .. ``smollm2-s3``
sample at temperature 0.7 with seeds 1, 2 and 3 (each call's seed derives from it,
:func:`sample_seed`). A family shares one loaded model, so its calls run one after
another.
"""


def sample_seed(seed: int, name: str, prompt: str, attempt: int = 1, retry: int = 0) -> int:
    """The sampler seed of one call, derived from the variant, the prompt and the index.

    A fixed seed per variant would draw the same random numbers for every question, so
    a variant's samples would all lean the same way (and often repeat greedy). Hashing
    the prompt and the sample index (the step attempt and the call's retry) in makes the
    samples of different questions and retries independent, and the same call
    reproducible.

    Args:
        seed: The request's seed, else the variant's configured seed.
        name: The model name.
        prompt: The full text sent to the model.
        attempt: The step attempt (1 for the first).
        retry: The call's retry (0 for the first send).

    Returns:
        A seed llama.cpp accepts (never its "random seed" value).
    """
    key = f"{seed}\x00{name}\x00{attempt}\x00{retry}\x00{prompt}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (MAX_SEED + 1)


def local_available(packaged: PackagedName | None = "gemma-3-270m") -> bool:
    """Whether local models can run here: ``llama_cpp`` imports and the packaged model
    ``packaged`` is installed (None: ``llama_cpp`` only, for a ``model_path``).

    No model is loaded or assembled.

    Returns:
        True when both are there.
    """
    try:
        _import_llama_cpp()
    except (ImportError, OSError):
        return False
    return packaged_available(packaged)


def unload_local_models() -> int:
    """Free every loaded local model (each after its running inference, if any).

    The next call of a client loads its model again.

    Returns:
        How many models were unloaded.
    """
    with _REGISTRY_LOCK:
        slots = list(_SLOTS.values())
        _SLOTS.clear()
    for slot in slots:
        with slot.lock:
            slot.closed = True
            slot.llama.close()
    return len(slots)


@dataclass(eq=False)
class _Slot:
    """One loaded model, shared by every client with the same key."""

    llama: Any
    """The ``llama_cpp.Llama`` object."""
    lock: threading.Lock
    """Held by the worker thread for a whole inference."""
    preambles: dict[Frame, list[int]]
    """Tokens of each frame's fixed prefix (BOS included), tokenized on first use (under
    ``lock``); the KV cache keeps the last one used."""
    lib: Any
    """The ``llama_cpp`` module (its C API builds and runs the samplers)."""
    vocab: Any
    """The model's ``llama_vocab`` pointer, to recognise end-of-generation tokens."""
    closed: bool = False
    """Set (under ``lock``) by :func:`unload_local_models`."""


@dataclass(frozen=True, slots=True)
class _Sampling:
    """How one call samples: temperature (0: greedy), the sampler seed, and the GBNF
    grammar its answer must match (None: any text)."""

    temperature: float
    seed: int
    grammar: bytes | None = None
    heard: Callable[[str], None] | None = None
    """Called from the worker thread with each piece of text as it is sampled (a
    listened request, ``ModelRequest.stream``); None: nobody listens."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    raw: dict[str, Any]
    load_ms: float
    queue_ms: float
    inference_ms: float


_REGISTRY_LOCK = threading.Lock()
_SLOTS: dict[_Key, _Slot] = {}
_LOAD_LOCKS: dict[_Key, threading.Lock] = {}
_EXIT_HOOK: list[bool] = []
# Model construction redirects the process's stdout/stderr and swaps llama.cpp's log
# callback: one at a time (see _construct).
_CONSTRUCT_LOCK = threading.Lock()
_LOG_CALLBACK: list[Any] = []  # our ctypes callback, kept alive while llama.cpp holds it
_LOG = logging.getLogger(__name__)
_QUEUES: anyio.lowlevel.RunVar[dict[_Key, anyio.Lock]] = anyio.lowlevel.RunVar(
    "thinktank_local_queues"
)


def _import_llama_cpp() -> Any:
    """``llama_cpp`` (untyped: the narrow ``Any`` boundary), with the exit hook set."""
    module = importlib.import_module("llama_cpp")
    with _REGISTRY_LOCK:
        if not _EXIT_HOOK:
            atexit.register(_at_exit)
            _EXIT_HOOK.append(True)
    return module


def _at_exit() -> None:
    # Free the models while llama_cpp still works: left to the garbage collector at
    # interpreter exit, Llama.__del__ fails ("'NoneType' object is not callable").
    unload_local_models()
    # llama_cpp._utils opens two os.devnull files at import and never closes them, which
    # is a ResourceWarning at exit (an error under -W error). Nothing uses them once the
    # models are freed.
    utils = sys.modules.get("llama_cpp._utils")
    for attr in ("outnull_file", "errnull_file"):
        handle = getattr(utils, attr, None)
        if handle is not None and hasattr(handle, "close"):
            handle.close()


def enum_grammar(values: tuple[str, ...]) -> bytes:
    """The GBNF grammar whose only sentences are ``values`` (a request's
    ``response_enum``): ``root ::= "A" | "B"``. JSON string escapes are GBNF's for
    quotes, backslashes and control characters."""
    return ("root ::= " + " | ".join(json.dumps(v) for v in values)).encode()


def _sampler(
    lib: Any, temperature: float, seed: int, grammar: tuple[Any, bytes] | None = None
) -> Any:
    """A new sampler chain (free it with ``llama_sampler_free``): greedy at temperature
    0, else llama-cpp-python's default chain seeded with ``seed``. With ``grammar``
    (the vocabulary and a GBNF grammar), llama.cpp's grammar sampler comes first, so
    only tokens the grammar allows are candidates."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if grammar is not None:
        vocab, text = grammar
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_grammar(vocab, text, b"root"))
    if temperature == 0:
        stages = [lib.llama_sampler_init_greedy()]
    else:
        stages = [
            lib.llama_sampler_init_top_k(40),
            lib.llama_sampler_init_top_p(0.95, 1),
            lib.llama_sampler_init_min_p(0.05, 1),
            lib.llama_sampler_init_temp(temperature),
            lib.llama_sampler_init_dist(seed),
        ]
    for stage in stages:
        lib.llama_sampler_chain_add(chain, stage)
    return chain


def _log_to_debug(level: int, text: bytes, user_data: Any) -> None:
    _LOG.debug("llama.cpp: %s", text.decode("utf-8", errors="replace").rstrip())


def _construct(llama_cpp: Any, path: Path, n_ctx: int, n_threads: int | None) -> Any:
    """A ``Llama`` built with llama.cpp's log going to this module's debug log.

    One construction at a time in the process: with ``verbose=False``, llama-cpp-python
    points file descriptors 1 and 2 at /dev/null while it loads and then restores the
    ones it saved, so two loads at once could "restore" /dev/null and silence the
    process for good. llama.cpp's log goes through a process-wide callback; the one
    llama-cpp-python installs prints some warnings (its level table predates
    llama.cpp's current one, so "using full-size SWA cache" counts as an error). It is
    swapped for ours during the load, when those lines come, and put back afterwards.
    """
    with _CONSTRUCT_LOCK:
        if not _LOG_CALLBACK:
            _LOG_CALLBACK.append(llama_cpp.llama_log_callback(_log_to_debug))
        previous = llama_cpp.llama_log_callback()
        previous_data = ctypes.c_void_p()
        llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
        llama_cpp.llama_log_set(_LOG_CALLBACK[0], None)
        try:
            return llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
            )
        finally:
            llama_cpp.llama_log_set(previous, previous_data)


def _queue(key: _Key) -> anyio.Lock:
    """This event loop's FIFO queue for the model ``key``."""
    try:
        queues = _QUEUES.get()
    except LookupError:
        queues = {}
        _QUEUES.set(queues)
    lock = queues.get(key)
    if lock is None:
        lock = queues[key] = anyio.Lock()
    return lock


class LocalLlamaModel:
    """A :class:`~thinktank.providers.base.ModelClient` running a GGUF model in process."""

    def __init__(self, name: str, config: LocalModelConfig | None = None) -> None:
        """Configure the client; nothing is loaded until the first call.

        Args:
            name: The model name sessions use (also ``ModelResponse.model``).
            config: The model file and sampling settings; default greedy packaged Gemma.
        """
        self._name = name
        self.config = config or LocalModelConfig()

    @property
    def name(self) -> str:
        """The model name."""
        return self._name

    @property
    def provider(self) -> str:
        """Always ``local``."""
        return _PROVIDER

    def __repr__(self) -> str:
        return f"LocalLlamaModel(name={self._name!r}, config={self.config!r})"

    @property
    def model_file(self) -> Path:
        """The GGUF file this client runs (the packaged Gemma may not be assembled yet).

        Raises:
            ProviderError: The packaged SmolLM2 is not installed.
        """
        packaged = self.config.packaged_model
        if packaged == "smollm2-135m":
            return smollm2_model_path()
        if packaged is not None:
            return model_cache_dir() / PACKAGED_MODEL_FILE
        assert self.config.model_path is not None
        return Path(self.config.model_path).expanduser().absolute()

    def _key(self) -> _Key:
        cfg = self.config
        return (str(self.model_file), cfg.n_ctx, cfg.n_threads)

    def load(self) -> None:
        """Load the model now (blocking) so the first call does not pay for it.

        Raises:
            ProviderError: As :meth:`complete`.
        """
        self._slot(self._key())

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer one request with the local model.

        Args:
            request: The prompt; its ``temperature`` and ``max_tokens`` override the
                config's when set.

        Returns:
            The stripped answer with llama.cpp's token counts, the wall time of the call
            (queueing and a first load included), the cost at the config's prices
            (0.0 by default) and ``stop`` or ``length``. ``extra`` holds ``load_ms``,
            ``queue_ms``, ``inference_ms``, ``temperature`` and ``seed`` (the call's
            sampler seed, :func:`sample_seed`).

        Raises:
            ProviderError: ``llama_cpp`` or the packaged model is not installed, the
                model file is missing or cannot be loaded, the prompt does not fit
                ``n_ctx``, or llama.cpp failed. None of these is retryable.
        """
        start = time.perf_counter()
        cfg = self.config
        temperature = cfg.temperature if request.temperature is None else request.temperature
        max_tokens = cfg.max_tokens if request.max_tokens is None else request.max_tokens
        prompt = frame_segments(cfg.frame, _question(cfg.frame, request.prompt), request.system)
        # The request's seed (the step's, derived per model by the call layer) replaces
        # the variant's; either way the prompt and index are hashed in (sample_seed).
        base = cfg.seed if request.seed is None else request.seed
        text = "".join(part for part, _ in prompt)
        seed = sample_seed(base, self._name, text, request.attempt, request.retry)
        try:
            key = self._key()
        except ProviderError as exc:
            raise self._error(str(exc)) from exc
        cancelled = threading.Event()
        # choice / yes_no: the answer is constrained to the enum's strings.
        grammar = enum_grammar(request.response_enum) if request.response_enum else None
        job = partial(
            self._run,
            key,
            prompt,
            _Sampling(max(0.0, temperature), seed, grammar, _heard(request)),
            max(1, max_tokens),
            cancelled,
        )
        async with _queue(key):
            try:
                outcome = await anyio.to_thread.run_sync(job, abandon_on_cancel=True)
            finally:
                # On cancellation: the abandoned thread stops at its next token (or skips
                # the inference if it has not started) and only then frees the model.
                cancelled.set()
        if outcome is None:  # only an abandoned (cancelled) call gets None
            raise self._error("the call was cancelled")
        choice = outcome.raw["choices"][0]
        usage = outcome.raw.get("usage") or {}
        finish = choice.get("finish_reason")
        input_tokens = _count(usage.get("prompt_tokens"))
        output_tokens = _count(usage.get("completion_tokens"))
        return ModelResponse(
            content=str(choice.get("text") or "").strip(),
            model=self._name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=(time.perf_counter() - start) * 1000,
            cost_usd=cost_usd(
                input_tokens, output_tokens, cfg.input_cost_per_mtok, cfg.output_cost_per_mtok
            ),
            finish_reason=finish if isinstance(finish, str) else None,
            extra={
                "load_ms": round(outcome.load_ms, 3),
                "queue_ms": round(outcome.queue_ms, 3),
                "inference_ms": round(outcome.inference_ms, 3),
                "temperature": temperature,
                "seed": seed,
            },
        )

    # Everything below runs in a worker thread.

    def _run(
        self,
        key: _Key,
        prompt: Segments,
        sampling: _Sampling,
        max_tokens: int,
        cancelled: threading.Event,
    ) -> _Outcome | None:
        start = time.perf_counter()
        while True:
            slot = self._slot(key)
            loaded = time.perf_counter()
            with slot.lock:
                if slot.closed:
                    continue  # unloaded meanwhile: load it again
                began = time.perf_counter()
                if cancelled.is_set():
                    return None  # the caller is gone; nobody reads the result
                raw = self._infer(slot, prompt, sampling, max_tokens, cancelled)
                done = time.perf_counter()
            return _Outcome(
                raw=raw,
                load_ms=(loaded - start) * 1000,
                queue_ms=(began - loaded) * 1000,
                inference_ms=(done - began) * 1000,
            )

    def _slot(self, key: _Key) -> _Slot:
        with _REGISTRY_LOCK:
            slot = _SLOTS.get(key)
            if slot is not None:
                return slot
            load_lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
        with load_lock:
            with _REGISTRY_LOCK:
                slot = _SLOTS.get(key)
            if slot is None:
                slot = self._load(key)
                with _REGISTRY_LOCK:
                    _SLOTS[key] = slot
        return slot

    def _error(self, message: str) -> ProviderError:
        return ProviderError(
            f"local model {self._name!r}: {message}", provider=_PROVIDER, model=self._name
        )

    def _load(self, key: _Key) -> _Slot:
        path_text, n_ctx, n_threads = key
        path = Path(path_text)
        try:
            llama_cpp = _import_llama_cpp()
        except (ImportError, OSError) as exc:
            hint = install_hint(self.config.packaged_model)
            raise self._error(
                f"llama-cpp-python is not installed; install it with: {hint}"
            ) from exc
        if self.config.packaged_model == "gemma-3-270m":
            try:
                packaged_model_path(path.parent)
            except ProviderError as exc:
                raise self._error(str(exc)) from exc
        if not path.exists():
            raise self._error(f"model file not found: {path}")
        if not path.is_file():
            raise self._error(f"model path is not a file: {path}")
        try:
            llama = _construct(llama_cpp, path, n_ctx, n_threads)
        except Exception as exc:
            raise self._error(f"could not load {path}: {_one_line(exc)}") from exc
        return _Slot(
            llama=llama,
            lock=threading.Lock(),
            preambles={},
            lib=llama_cpp,
            vocab=llama_cpp.llama_model_get_vocab(llama.model),
        )

    def _infer(
        self,
        slot: _Slot,
        prompt: Segments,
        sampling: _Sampling,
        max_tokens: int,
        cancelled: threading.Event,
    ) -> dict[str, Any]:
        llama = slot.llama
        try:
            tokens = _tokenize(llama, prompt)
            if len(tokens) >= llama.n_ctx():
                raise self._error(
                    f"the prompt is {len(tokens)} tokens but n_ctx is {llama.n_ctx()};"
                    " raise n_ctx or shorten the prompt"
                )
            frame = self.config.frame
            preamble = slot.preambles.get(frame)
            if preamble is None:
                preamble = slot.preambles[frame] = _tokenize(llama, frame_prefix(frame))
            self._rewind(slot, tokens, preamble)
            llama.eval(tokens[llama.n_tokens :])
            return self._generate(slot, len(tokens), sampling, max_tokens, cancelled)
        except ProviderError:
            raise
        except Exception as exc:
            # The context may hold a half-evaluated batch: start the next call afresh.
            llama.reset()
            raise self._error(f"llama.cpp failed: {_one_line(exc)}") from exc

    def _generate(
        self,
        slot: _Slot,
        prompt_tokens: int,
        sampling: _Sampling,
        max_tokens: int,
        cancelled: threading.Event,
    ) -> dict[str, Any]:
        """Sample the answer after the evaluated prompt, in the shape of a completion.

        The sampler chain is llama-cpp-python's default (top-k 40, top-p 0.95, min-p
        0.05, then temperature) but built and freed here for each call: the one
        ``Llama.create_completion`` builds sits in a reference cycle, so its ~3 MB
        (a token array of the whole vocabulary) stayed until a full garbage
        collection, which a busy process rarely runs (7.6 GB after ~3,200 calls).
        """
        llama, lib = slot.llama, slot.lib
        grammar = None if sampling.grammar is None else (slot.vocab, sampling.grammar)
        sampler = _sampler(lib, sampling.temperature, sampling.seed, grammar)
        one_line = self.config.frame == "few_shot"
        answer: list[int] = []
        text = b""
        finish = "length"
        # A token may end inside a UTF-8 character: pieces are decoded incrementally.
        decode = codecs.getincrementaldecoder("utf-8")("ignore").decode
        try:
            while len(answer) < max_tokens and llama.n_tokens < llama.n_ctx():
                if cancelled.is_set():
                    finish = "stop"  # abandoned: nobody reads the answer
                    break
                token = lib.llama_sampler_sample(sampler, llama.ctx, -1)
                answer.append(token)
                if lib.llama_vocab_is_eog(slot.vocab, token):
                    finish = "stop"
                    break
                piece = llama.detokenize([token])
                ends = one_line and b"\n" in piece
                if ends:
                    # The answer is one line: the newline ends it (and is not part of it).
                    piece = piece.split(b"\n", 1)[0]
                text += piece
                if sampling.heard is not None and (heard := decode(piece)):
                    sampling.heard(heard)
                if ends:
                    finish = "stop"
                    break
                if len(answer) < max_tokens:
                    llama.eval([token])
        finally:
            lib.llama_sampler_free(sampler)
        return {
            "choices": [{"text": text.decode("utf-8", errors="ignore"), "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer)},
        }

    @staticmethod
    def _rewind(slot: _Slot, tokens: list[int], preamble: list[int]) -> None:
        """Keep exactly ``preamble`` (the frame's prefix) in the KV cache, or nothing.

        Then llama-cpp-python evaluates the rest of ``tokens`` in one batch whatever the
        previous calls were, which keeps answers reproducible.
        """
        llama = slot.llama
        size = len(preamble)
        if size == 0 or tokens[:size] != preamble or len(tokens) == size:
            llama.reset()
            return
        if llama.n_tokens >= size and llama.input_ids[:size].tolist() == preamble:
            llama.n_tokens = size
            return
        llama.reset()
        llama.eval(preamble)


def _heard(request: ModelRequest) -> Callable[[str], None] | None:
    """What the worker thread calls with each piece of a listened request: the
    request's listener, run on the event loop (None when nobody listens)."""
    listener = request.on_delta
    if not request.stream or listener is None:
        return None

    def hear(piece: str) -> None:
        anyio.from_thread.run_sync(listener, piece)

    return hear


def _question(frame: Frame, prompt: str) -> str:
    """The prompt as the frame asks it: the few-shot frame's question is one ``Q:`` line
    (its examples are), so the lines of a longer prompt (the options of an
    ``answer_format: choice`` step, and its instruction) are joined by spaces there. A
    one-line prompt is unchanged."""
    if frame != "few_shot" or "\n" not in prompt:
        return prompt
    return " ".join(line.strip() for line in prompt.splitlines() if line.strip())


def _tokenize(llama: Any, prompt: Segments) -> list[int]:
    """The tokens of ``prompt``, each segment on its own (BOS, if the model uses one,
    before the first): control tokens are read only in template segments."""
    tokens: list[int] = []
    for index, (text, special) in enumerate(prompt):
        tokens += llama.tokenize(text.encode(), add_bos=index == 0, special=special)
    return tokens


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
