"""The model-client seam: one request in, one response out.

Every provider (the simulator here, HTTP and local providers later) implements
:class:`ModelClient`. The scheduler and the multi-model layer only ever see this
protocol, so tests, replay and research swap providers without touching them.

A :class:`PooledModel` is a client plus the run-time settings of its configured model
(retry policy, process-wide limiter, time-outs, price): what
:class:`~thinktank.providers.registry.ModelRegistry` builds for a run and the call layer
uses; it lives here so the provider layer never imports the call layer.

Seeds and samples: a request's ``seed`` is the call's sampling seed. The call layer derives
it from the step's seed and the model name with :func:`call_seed`, so two models (or two
samples ``NAME#1``, ``NAME#2`` of one model, see :func:`base_model`) never share a seed
and the same step sends the same seeds on every run.

Failures: a client either raises :class:`~thinktank.errors.ProviderError` or returns a
response whose ``error`` is set (a partial answer that ended badly). The call layer in
``thinktank.engine.calls`` turns both into a recorded failed call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from thinktank.providers.retry import RetryPolicy

if TYPE_CHECKING:
    import anyio

__all__ = [
    "MAX_SEED",
    "NO_RETRY",
    "SAMPLE_MARK",
    "ModelClient",
    "ModelRequest",
    "ModelResponse",
    "PooledModel",
    "base_model",
    "call_seed",
    "cost_usd",
]

MAX_SEED = 2**32 - 2
"""The largest seed: llama.cpp reads a seed as uint32, and 0xFFFFFFFF means "pick a random
seed"; every seed thinktank derives or accepts lies in [0, MAX_SEED]."""

SAMPLE_MARK = "#"
"""``NAME#K`` is the K-th sample (K from 1) of model NAME: the same model, called with its
own seed (its own model id in the store, NAME's config, limiter and loaded model)."""


def base_model(model: str) -> str:
    """The model a model name samples: ``local-s1#2`` -> ``local-s1``.

    Only a trailing ``#`` followed by digits is a sample mark.

    Args:
        model: A model name, maybe ``NAME#K``.

    Returns:
        NAME, or ``model`` itself when it carries no sample mark.
    """
    name, mark, index = model.rpartition(SAMPLE_MARK)
    return name if mark and name and index.isdigit() else model


def call_seed(seed: int, model: str) -> int:
    """The seed of one model's call in a step whose seed is ``seed``.

    A stable hash (not Python's salted ``hash``): the same step gives the same seeds in
    every process, and models (samples ``NAME#K`` included) get different ones.

    Args:
        seed: The step's seed.
        model: The model name as called (``NAME#K`` for a sample).

    Returns:
        A seed in [0, :data:`MAX_SEED`].
    """
    digest = hashlib.blake2b(f"{seed}\x00{model}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (MAX_SEED + 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRequest:
    """What a step asks one model."""

    prompt: str
    """The fully rendered user prompt."""
    system: str | None = None
    """Optional system prompt."""
    max_tokens: int | None = None
    """Upper bound on output tokens, when the step sets one."""
    temperature: float | None = None
    """Sampling temperature, when the step sets one."""
    step_id: str = ""
    """The step that makes the call (for logs and scripted replies)."""
    attempt: int = 1
    """1 for the first try of the step, 2 for its first retry, ..."""
    retry: int = 0
    """0 for the first send of this call, 1 for its first retry, ... (set by the call
    layer; simulated models mix it into their randomness)."""
    seed: int | None = None
    """The call's sampling seed; None leaves it to the provider. A step's request carries
    the step's seed and the call layer replaces it by :func:`call_seed` of it and the
    model; a retry re-sends the same seed. OpenAI-compatible servers get ``seed``,
    Gemini ``generationConfig.seed``; local models derive their sampler seed from it
    and simulated ones their randomness; Anthropic's API has no seed parameter."""
    response_schema: Mapping[str, Any] | None = field(default=None, compare=False)
    """The JSON Schema the answer must match (a step with ``answer_format: json``), or
    None. Providers with structured output enforce it: OpenAI-compatible servers get
    ``response_format`` of type ``json_schema``, Gemini ``generationConfig``'s
    ``responseMimeType`` and ``responseSchema``; Anthropic, local and simulated models
    have the prompt's instruction alone."""
    response_enum: tuple[str, ...] = field(default=(), compare=False)
    """The strings the answer must be one of (a step with ``answer_format: choice``
    gives its letters, ``yes_no`` gives ``yes`` and ``no``), or empty. OpenAI-compatible
    servers get a strict ``json_schema`` of an object ``{"answer": <one of them>}`` (strict
    mode needs an object at the root); Gemini ``responseMimeType: text/x.enum`` with a
    ``STRING`` enum schema, so it answers with the bare string; local models sample under
    a GBNF grammar of the strings (llama.cpp's grammar sampler). The consensus readers
    read all of them (:func:`~thinktank.consensus.readers.structured_answer`)."""
    on_delta: Callable[[str], None] | None = field(default=None, compare=False)
    """Streaming clients call it with each piece of text as it arrives (live progress).
    A request's own listener is also handed an empty piece by the call layer when an
    attempt starts: the text of an earlier attempt (a retry's) is void."""
    stream: bool = field(default=False, compare=False)
    """Someone reads this call's text as it is written (a judge's merged answer streamed
    to a client): a client that can stream does so for this call even when its model is
    not configured to (``stream = true``). The answer, its tokens and cost are the same
    either way; only when the text arrives changes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelResponse:
    """What one model answered, with its accounting."""

    content: str
    """The text the model returned (partial when ``error`` is set)."""
    model: str
    """The model name that answered."""
    input_tokens: int | None = None
    """Prompt tokens, or None when the provider did not report them."""
    output_tokens: int | None = None
    """Completion tokens, or None when the provider did not report them."""
    latency_ms: float = 0.0
    """Wall time of the call as the client measured it."""
    cost_usd: float | None = None
    """Cost of the call in USD, or None when the price is unknown."""
    finish_reason: str | None = None
    """Why generation stopped (``stop``, ``length``, ...), when known."""
    error: str | None = None
    """Set when the call failed after producing (maybe partial) content."""
    extra: dict[str, object] = field(default_factory=dict)
    """Provider-specific details worth keeping (never secrets)."""
    reused_from: str | None = None
    """The id of the stored call this answer is served from (resume), not a new call."""

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return self.error is None

    @property
    def total_tokens(self) -> int | None:
        """Input plus output tokens, or None when either is unknown."""
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens


@runtime_checkable
class ModelClient(Protocol):
    """Anything that can answer a :class:`ModelRequest`."""

    @property
    def name(self) -> str:
        """The model name sessions use to refer to this client."""
        ...

    @property
    def provider(self) -> str:
        """The provider kind (``simulated``, ``openai``, ...)."""
        ...

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer one request; raise ProviderError on failure."""
        ...


NO_RETRY = RetryPolicy(max_retries=0)
"""The policy of clients given without one: what the client returns is final."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PooledModel:
    """A model client with the run-time settings of its configured model."""

    client: ModelClient
    """Sends one attempt."""
    retry: RetryPolicy = NO_RETRY
    """When and how long to wait before retrying."""
    limiter: anyio.CapacityLimiter | None = None
    """The model's process-wide concurrency limit, if it has one."""
    timeout_s: float | None = None
    """Time limit of one attempt."""
    max_tokens: int | None = None
    """Output limit when the step sets none."""
    price_per_mtok: float | None = None
    """USD per million tokens, input plus output (cascade asks cheap models first)."""


def cost_usd(
    input_tokens: int | None,
    output_tokens: int | None,
    input_cost_per_mtok: float | None,
    output_cost_per_mtok: float | None,
) -> float | None:
    """USD for a call, or None unless both token counts and both prices are known.

    Args:
        input_tokens: Prompt tokens.
        output_tokens: Completion tokens.
        input_cost_per_mtok: USD per million prompt tokens.
        output_cost_per_mtok: USD per million completion tokens.

    Returns:
        The cost, or None.
    """
    if (
        input_tokens is None
        or output_tokens is None
        or input_cost_per_mtok is None
        or output_cost_per_mtok is None
    ):
        return None
    return (input_tokens * input_cost_per_mtok + output_tokens * output_cost_per_mtok) / 1e6
