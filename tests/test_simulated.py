"""The simulated provider: deterministic, with latency, scripts, accuracy and faults."""

from __future__ import annotations

import random
import statistics

import anyio
import pytest
from pydantic import ValidationError

from thinktank.errors import ProviderError
from thinktank.providers.base import ModelClient, ModelRequest
from thinktank.providers.simulated import LatencySpec, SimulatedModel, SimulatedModelConfig


def model(**cfg: object) -> SimulatedModel:
    return SimulatedModel("sim", SimulatedModelConfig.model_validate(cfg))


def test_it_is_a_model_client() -> None:
    """SimulatedModel satisfies the ModelClient protocol."""
    assert isinstance(model(), ModelClient)


async def test_answers_are_deterministic_whatever_the_call_order() -> None:
    """Same seed and prompts give the same replies and faults in any order."""
    cfg = {
        "seed": 5,
        "accuracy": 0.5,
        "failure_rate": 0.2,
        "replies": [{"pattern": r"q(\d+)", "reply": r"a\1"}],
    }
    prompts = [f"q{i}" for i in range(40)]

    async def answers(order: list[str]) -> dict[str, str]:
        m = model(**cfg)
        out: dict[str, str] = {}
        for p in order:
            try:
                out[p] = (await m.complete(ModelRequest(prompt=p))).content
            except ProviderError:
                out[p] = "<failed>"
        return out

    shuffled = prompts[:]
    random.Random(1).shuffle(shuffled)
    assert await answers(prompts) == await answers(shuffled)
    other = model(**{**cfg, "seed": 6})
    differs = 0
    for p in prompts:
        try:
            differs += (await other.complete(ModelRequest(prompt=p))).content != (
                await answers([p])
            )[p]
        except ProviderError:
            differs += 1
    assert differs > 0


def test_latency_distributions() -> None:
    """fixed is exact, uniform stays in bounds, lognormal has the configured median."""
    rng = random.Random(0)
    assert LatencySpec(kind="fixed", ms=7).draw_ms(rng) == 7
    uni = LatencySpec(kind="uniform", low_ms=5, high_ms=9)
    assert all(5 <= uni.draw_ms(rng) <= 9 for _ in range(500))
    logn = LatencySpec(kind="lognormal", median_ms=100, sigma=1.0)
    draws = [logn.draw_ms(rng) for _ in range(4000)]
    assert 90 < statistics.median(draws) < 110
    assert max(draws) > 1000  # heavy tail
    with pytest.raises(ValidationError, match="high_ms must be >= low_ms"):
        LatencySpec(kind="uniform", low_ms=9, high_ms=5)


async def test_scripted_replies_expand_groups_and_fall_back() -> None:
    """The first matching regex wins, groups expand, otherwise default_reply."""
    m = model(
        replies=[
            {"pattern": r"capital of (\w+)", "reply": r"Capital of \1: ?"},
            {"pattern": "capital", "reply": "never reached"},
        ],
        default_reply="dunno",
    )
    assert (await m.complete(ModelRequest(prompt="capital of Peru"))).content == (
        "Capital of Peru: ?"
    )
    assert (await m.complete(ModelRequest(prompt="hello"))).content == "dunno"


def test_bad_regex_is_a_validation_error() -> None:
    """A pattern that does not compile is rejected when the config loads."""
    with pytest.raises(ValidationError, match="not a valid regex"):
        SimulatedModelConfig.model_validate({"replies": [{"pattern": "(", "reply": "x"}]})


async def test_accuracy_matches_the_configured_rate() -> None:
    """Over many questions the share of gold answers is close to the accuracy."""
    m = model(accuracy=0.7, default_reply="gold", wrong_replies=["w1", "w2"])
    replies = [(await m.complete(ModelRequest(prompt=f"q{i}"))).content for i in range(2000)]
    share = replies.count("gold") / len(replies)
    assert 0.66 < share < 0.74
    assert set(replies) == {"gold", "w1", "w2"}


async def test_failures_and_timeouts_are_injected() -> None:
    """failure_rate raises a retryable ProviderError; timeout_rate hangs past a timeout."""
    with pytest.raises(ProviderError) as info:
        await model(failure_rate=1).complete(ModelRequest(prompt="x"))
    assert info.value.retryable and info.value.status_code == 500
    hanging = model(timeout_rate=1, hang_ms=60_000)
    with pytest.raises(TimeoutError), anyio.fail_after(0.05):
        await hanging.complete(ModelRequest(prompt="x"))


async def test_tokens_cost_and_max_tokens() -> None:
    """Tokens are ~4 chars each; cost follows the price; max_tokens truncates."""
    m = model(default_reply="x" * 40, input_cost_per_mtok=1.0, output_cost_per_mtok=2.0)
    r = await m.complete(ModelRequest(prompt="abcdefgh"))
    assert (r.input_tokens, r.output_tokens, r.finish_reason) == (2, 10, "stop")
    assert r.cost_usd == pytest.approx((2 * 1.0 + 10 * 2.0) / 1e6)
    short = await m.complete(ModelRequest(prompt="abcdefgh", max_tokens=3))
    assert (short.output_tokens, short.finish_reason, short.content) == (3, "length", "x" * 12)
    assert (await model().complete(ModelRequest(prompt="p"))).cost_usd is None
