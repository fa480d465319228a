"""A seeded, deterministic simulated model for tests, examples and research.

Each call draws its randomness from a hash of (seed, model name, prompt, attempt, and the
request's ``seed`` when it has one), not from a shared generator, so a run gives the same
answers, latencies and failures whatever order concurrent calls happen in. That is what
makes simulated sessions replayable and property tests reproducible.

What a simulated model can do:

- latency: ``fixed``, ``uniform`` or heavy-tailed ``lognormal``;
- scripted replies: the first regex that matches the prompt gives the reply
  (``\\1`` style group references are expanded); otherwise ``default_reply``;
- accuracy: the scripted reply is the gold answer; with probability
  ``1 - accuracy`` the model answers one of ``wrong_replies`` instead;
- injected faults: ``failure_rate`` raises a retryable ProviderError after the
  latency, ``timeout_rate`` hangs for ``hang_ms`` so the caller's timeout fires.

Latencies are slept precisely (:func:`sleep_precisely`): an event-loop timer alone
wakes up to a millisecond late (epoll rounds its timeout up to whole milliseconds), so
two calls drawn 0.3 ms apart would often answer in the wrong order, and every
simulated call would look ~0.5 ms slower than drawn. A real provider's answer wakes
the loop through its socket, with no such rounding.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
import time
from functools import cached_property
from typing import Annotated, Literal

import anyio
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from thinktank.errors import ProviderError
from thinktank.providers.base import ModelRequest, ModelResponse

__all__ = [
    "LatencySpec",
    "ScriptedReply",
    "SimulatedModel",
    "SimulatedModelConfig",
    "sleep_precisely",
]

_TIMER_SLACK_S = 0.0011
"""How late a loop timer may wake: epoll's 1 ms rounding plus a little."""


_WORDS = re.compile(r"\s*\S+\s*|\s+")
"""A streamed reply's pieces: each word with the blanks around it."""


async def _wait_ms(ms: float) -> None:
    """Sleep ``ms`` precisely, or just let other tasks run when it is 0."""
    if ms > 0:
        await sleep_precisely(ms / 1000)
    else:
        await anyio.lowlevel.checkpoint()


async def sleep_precisely(seconds: float) -> None:
    """Sleep ``seconds``, waking within tens of microseconds of the deadline.

    A loop timer takes the sleep to about a millisecond before the deadline; the rest
    is spent yielding to the event loop (other tasks run meanwhile) until the deadline
    passes. Cancellation works as for ``anyio.sleep``.
    """
    deadline = anyio.current_time() + seconds
    if seconds > _TIMER_SLACK_S:
        await anyio.sleep(seconds - _TIMER_SLACK_S)
    while anyio.current_time() < deadline:
        await anyio.lowlevel.checkpoint()


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )


class LatencySpec(_Model):
    """How long a simulated call takes."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    """Distribution of the latency."""
    ms: Annotated[float, Field(ge=0)] = 0.0
    """The latency for ``fixed``."""
    low_ms: Annotated[float, Field(ge=0)] = 0.0
    """Lower bound for ``uniform``."""
    high_ms: Annotated[float, Field(ge=0)] = 0.0
    """Upper bound for ``uniform``."""
    median_ms: Annotated[float, Field(ge=0)] = 0.0
    """Median for ``lognormal`` (``exp(mu)``)."""
    sigma: Annotated[float, Field(ge=0)] = 0.5
    """Shape for ``lognormal``: larger means a heavier tail."""

    @model_validator(mode="after")
    def _check_bounds(self) -> LatencySpec:
        if self.kind == "uniform" and self.high_ms < self.low_ms:
            raise ValueError("high_ms must be >= low_ms")
        return self

    def draw_ms(self, rng: random.Random) -> float:
        """One latency in milliseconds."""
        if self.kind == "fixed":
            return self.ms
        if self.kind == "uniform":
            return rng.uniform(self.low_ms, self.high_ms)
        if self.median_ms == 0:
            return 0.0
        return rng.lognormvariate(math.log(self.median_ms), self.sigma)


class ScriptedReply(_Model):
    """A regex on the prompt and the reply it gives."""

    pattern: str
    """Regular expression searched (not matched) in the prompt."""
    reply: str
    """The reply; ``\\1`` / ``\\g<name>`` refer to the pattern's groups."""

    @model_validator(mode="after")
    def _compiles(self) -> ScriptedReply:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from exc
        return self


class SimulatedModelConfig(_Model):
    """A simulated model as declared in a session file's ``models:`` section."""

    provider: Literal["simulated"] = "simulated"
    """Provider kind."""
    seed: int = 0
    """Seed mixed into every call's randomness."""
    latency: LatencySpec = LatencySpec()
    """Latency distribution."""
    replies: list[ScriptedReply] = []
    """Scripted replies, tried in order."""
    default_reply: str = "ok"
    """Reply when no script matches."""
    accuracy: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Probability of giving the scripted (gold) reply rather than a wrong one."""
    wrong_replies: list[str] = []
    """Wrong answers to pick from; default is ``not <gold>``."""
    failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Probability that a call fails with a retryable error."""
    timeout_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Probability that a call hangs for ``hang_ms``."""
    hang_ms: Annotated[float, Field(ge=0)] = 3_600_000.0
    """How long a hanging call sleeps."""
    input_cost_per_mtok: Annotated[float, Field(ge=0)] | None = None
    """USD per million input tokens; None means cost unknown."""
    output_cost_per_mtok: Annotated[float, Field(ge=0)] | None = None
    """USD per million output tokens; None means cost unknown."""
    tags: list[str] = []
    """Domains the model is good at."""
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    """Calls in flight to this model, shared by every session in the process."""
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    """Time limit of one attempt (none by default)."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 0
    """Retries of a failed attempt. 0 by default, so a simulated fault is what the step
    sees; set it to study retry behaviour."""


def _tokens(text: str) -> int:
    # A stable, cheap stand-in for a tokenizer: about four characters a token.
    return max(1, (len(text) + 3) // 4) if text else 0


@functools.lru_cache(maxsize=256)
def _compile_replies(
    replies: tuple[tuple[str, str], ...],
) -> tuple[tuple[re.Pattern[str], str, bool], ...]:
    """(pattern, reply, whether the reply has group references to expand), shared by
    every client of the same script (a registry builds new clients for each run)."""
    return tuple((re.compile(p), reply, "\\" in reply) for p, reply in replies)


class SimulatedModel:
    """A :class:`~thinktank.providers.base.ModelClient` driven by a config and a seed."""

    def __init__(self, name: str, config: SimulatedModelConfig | None = None) -> None:
        self._name = name
        self.config = config or SimulatedModelConfig()
        self.calls = 0
        """How many calls were started (tests count re-sent calls with it)."""

    @property
    def name(self) -> str:
        """The model name."""
        return self._name

    @property
    def provider(self) -> str:
        """Always ``simulated``."""
        return "simulated"

    @cached_property
    def _compiled(self) -> tuple[tuple[re.Pattern[str], str, bool], ...]:
        return _compile_replies(tuple((r.pattern, r.reply) for r in self.config.replies))

    def _rng(self, request: ModelRequest) -> random.Random:
        key = (
            f"{self.config.seed}\x00{self._name}\x00{request.attempt}\x00{request.retry}"
            f"\x00{request.prompt}"
        )
        if request.seed is not None:
            # Appended only when set, so unseeded calls draw what they always drew.
            key += f"\x00seed={request.seed}"
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def _reply(self, request: ModelRequest, rng: random.Random) -> tuple[str, int, int, str]:
        """The reply to ``request``: its text, input and output tokens, finish reason."""
        cfg = self.config
        content = self.gold_reply(request.prompt)
        if rng.random() >= cfg.accuracy:
            wrong = cfg.wrong_replies or [f"not {content}"]
            content = wrong[rng.randrange(len(wrong))]
        input_tokens = _tokens(request.prompt) + _tokens(request.system or "")
        output_tokens = _tokens(content)
        if request.max_tokens is not None and output_tokens > request.max_tokens:
            return content[: request.max_tokens * 4], input_tokens, request.max_tokens, "length"
        return content, input_tokens, output_tokens, "stop"

    def gold_reply(self, prompt: str) -> str:
        """The reply the script gives for ``prompt`` when the model is right."""
        for pattern, reply, expand in self._compiled:
            match = pattern.search(prompt)
            if match:
                return match.expand(reply) if expand else reply
        return self.config.default_reply

    def _cost(self, input_tokens: int, output_tokens: int) -> float | None:
        cfg = self.config
        if cfg.input_cost_per_mtok is None or cfg.output_cost_per_mtok is None:
            return None
        return (
            input_tokens * cfg.input_cost_per_mtok + output_tokens * cfg.output_cost_per_mtok
        ) / 1e6

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer after a simulated latency, or fail or hang as configured. A listened
        request (``stream``) hears its reply a word at a time, the latency spread
        evenly before and between the words."""
        self.calls += 1
        cfg = self.config
        rng = self._rng(request)
        start = time.perf_counter()
        latency_ms = cfg.latency.draw_ms(rng)
        fault = rng.random()
        if fault < cfg.timeout_rate:
            await anyio.sleep(cfg.hang_ms / 1000)
        # Drawn after the fault, as always: the reply is the same whether it is
        # streamed or not, and a failing call's reply is simply never sent.
        content, input_tokens, output_tokens, finish = self._reply(request, rng)
        pieces = _WORDS.findall(content) if request.stream and request.on_delta else []
        share_ms = latency_ms / (len(pieces) + 1)
        await _wait_ms(share_ms)
        if cfg.timeout_rate <= fault < cfg.timeout_rate + cfg.failure_rate:
            raise ProviderError(
                f"simulated failure of model {self._name!r}",
                provider="simulated",
                model=self._name,
                status_code=500,
                retryable=True,
            )
        for piece in pieces:
            assert request.on_delta is not None
            request.on_delta(piece)
            await _wait_ms(share_ms)
        return ModelResponse(
            content=content,
            model=self._name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=(time.perf_counter() - start) * 1000,
            cost_usd=self._cost(input_tokens, output_tokens),
            finish_reason=finish,
        )
