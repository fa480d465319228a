"""Per-call seeds and sample names: ``NAME#K`` is the K-th sample of NAME, with its own
seed derived from the step's seed, its own stored model id, and NAME's limit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import thinktank
from thinktank.cli.commands import main
from thinktank.engine.multi import cache_key
from thinktank.errors import SpecErrors
from thinktank.events import CallFinished, CallStarted, Event
from thinktank.providers.base import MAX_SEED, ModelRequest, base_model, call_seed
from thinktank.providers.registry import ModelRegistry
from thinktank.providers.simulated import SimulatedModel, SimulatedModelConfig
from thinktank.session.loading import parse_session
from thinktank.session.spec import StepSpec

from .conftest import CallLog, CountingModel
from .fakeserver import FakeServer, Fault, run_fake_server

SAMPLES = ["m#1", "m#2", "m#3"]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as srv:
        yield srv


def _openai_session(server: FakeServer, step: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "seeds",
        "models": {
            "m": {
                "provider": "openai",
                "model": "wire-m",
                "base_url": server.url + "/v1",
                "api_key_env": "TT_TEST_KEY",
                "max_retries": 1,
            },
            "g": {
                "provider": "gemini",
                "model": "wire-g",
                "base_url": server.url,
                "api_key_env": "TT_TEST_KEY",
            },
            "c": {
                "provider": "anthropic",
                "model": "wire-c",
                "base_url": server.url,
                "api_key_env": "TT_TEST_KEY",
            },
        },
        "steps": [{"id": "s", "prompt": "What is 2 + 2?", **step}],
    }


def _sent_seeds(server: FakeServer) -> list[int | None]:
    return [r.json.get("seed") for r in server.requests if r.model == "wire-m"]


async def _stored_models(db: Path, session_id: str) -> list[str]:
    async with await thinktank.Store.open(str(db)) as store:
        stored = await store.get_session(session_id)
    return sorted(c.model_id for s in stored.steps for c in s.calls)


def test_call_seed_is_stable_distinct_and_in_range() -> None:
    """One function maps (step seed, model) to a call's seed: stable, per model, in range."""
    seeds = {call_seed(7, m) for m in ["m", *SAMPLES, "local-s1#1"]}
    assert len(seeds) == 5
    assert call_seed(7, "m#1") == call_seed(7, "m#1") != call_seed(8, "m#1")
    assert all(0 <= s <= MAX_SEED for s in seeds)


@given(st.integers(0, MAX_SEED), st.text(min_size=1, max_size=20))
def test_call_seed_always_fits_llama_cpp(seed: int, model: str) -> None:
    """Every derived seed is one llama.cpp accepts (never its 'random seed' value)."""
    assert 0 <= call_seed(seed, model) <= MAX_SEED


def test_base_model_is_the_providers_and_eval_reexports_it() -> None:
    """``base_model`` lives in the providers layer; eval.records keeps the same function."""
    from thinktank.eval import records

    assert records.base_model is base_model
    assert base_model("openai/gpt-4o#12") == "openai/gpt-4o"


async def test_samples_are_stored_under_their_names_with_distinct_reproducible_seeds(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """m#1..m#3 make three calls stored as m#1..m#3, each sending call_seed(step seed, name);
    a retry re-sends its seed; a second run sends the same seeds."""
    monkeypatch.setenv("TT_TEST_KEY", "k")
    server.add_faults(Fault.http_error(500, headers={"retry-after-ms": "1"}), model="wire-m")
    spec = parse_session(_openai_session(server, {"models": SAMPLES, "seed": 42, "cache": False}))
    db = tmp_path / "t.db"
    first = await thinktank.run(spec, store=str(db))
    assert first.status == "completed", first.error
    assert await _stored_models(db, first.session_id) == SAMPLES
    expected = {call_seed(42, m) for m in SAMPLES}
    sent = _sent_seeds(server)
    # Four requests (one retried), three seeds: the retry re-sent its call's seed.
    assert len(sent) == 4
    assert set(sent) == expected
    server.requests.clear()
    second = await thinktank.run(spec, store=str(db))
    assert second.status == "completed", second.error
    assert sorted(_sent_seeds(server), key=str) == sorted(expected, key=str)


async def test_a_step_without_seed_sends_none(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No step seed: the provider's own default (no ``seed`` in the body)."""
    monkeypatch.setenv("TT_TEST_KEY", "k")
    spec = parse_session(_openai_session(server, {"models": ["m#1", "m#2"]}))
    result = await thinktank.run(spec, store=None)
    assert result.status == "completed", result.error
    assert [r.json for r in server.requests if "seed" in r.json] == []


async def test_gemini_gets_the_seed_and_anthropic_has_none(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemini receives ``generationConfig.seed``; the Anthropic body carries no seed."""
    monkeypatch.setenv("TT_TEST_KEY", "k")
    spec = parse_session(_openai_session(server, {"models": ["g", "c"], "seed": 3}))
    result = await thinktank.run(spec, store=None)
    assert result.status == "completed", result.error
    bodies = {r.wire: r.json for r in server.requests}
    assert bodies["gemini"]["generationConfig"]["seed"] == call_seed(3, "g")
    assert "seed" not in json.dumps(bodies["anthropic"])


async def test_the_consensus_cache_is_per_seed(tmp_path: Path) -> None:
    """A consensus cached under one seed is not served for another; the same seed hits."""
    models = {"a": {"provider": "simulated"}, "b": {"provider": "simulated"}}
    db = str(tmp_path / "c.db")

    async def calls_made(seed: int) -> int:
        spec = parse_session(
            {
                "name": "c",
                "models": models,
                "steps": [{"id": "s", "prompt": "p", "models": ["a", "b"], "seed": seed}],
            }
        )
        result = await thinktank.run(spec, store=db)
        assert result.status == "completed", result.error
        return len(result.steps["s"].calls)

    assert await calls_made(1) == 2
    assert await calls_made(2) == 2
    assert await calls_made(2) == 0


def test_cache_key_of_an_unseeded_step_is_unchanged() -> None:
    """Keys stored before seeds existed still match: no seed, no seed in the key."""
    step = StepSpec.model_validate({"id": "s", "prompt": "p", "models": ["a", "b"]})
    plain = cache_key(step, ["a", "b"], ModelRequest(prompt="p"), 0.7)
    assert plain == "sha256:" + hashlib.sha256(_legacy_material(step).encode()).hexdigest()
    assert cache_key(step, ["a", "b"], ModelRequest(prompt="p", seed=1), 0.7) != plain


def _legacy_material(step: StepSpec) -> str:
    material = {
        "prompt": "p",
        "system": None,
        "models": ["a", "b"],
        "mode": step.mode,
        "method": step.synthesis,
        "threshold": 0.7,
        "min_models": None,
        "synthesizer": None,
        "judge_fallback": step.judge_fallback,
        "weights": {},
        "agreement": step.agreement,
        "similarity_threshold": step.similarity_threshold,
        "tie_break": step.tie_break,
        "escalate_to": [],
        "on_low_consensus": step.on_low_consensus,
        "failure_strategy": step.failure_strategy,
        "max_tokens": None,
        "temperature": None,
    }
    return json.dumps(material, sort_keys=True, separators=(",", ":"))


async def test_simulated_samples_follow_the_seed() -> None:
    """A simulated model's draws depend on the request seed: same seed, same answers."""
    model = SimulatedModel("sim", SimulatedModelConfig(accuracy=0.5, wrong_replies=["x", "y", "z"]))

    async def answers(seed: int | None) -> list[str]:
        return [
            (await model.complete(ModelRequest(prompt=f"q{i}", seed=seed))).content
            for i in range(20)
        ]

    assert await answers(1) == await answers(1)
    assert await answers(1) != await answers(2)
    assert await answers(None) != await answers(1)


def _max_in_flight(events: list[Event]) -> int:
    in_flight = peak = 0
    for event in events:
        if isinstance(event, CallStarted):
            in_flight += 1
            peak = max(peak, in_flight)
        elif isinstance(event, CallFinished):
            in_flight -= 1
    return peak


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    samples=st.integers(2, 5),
    limit=st.integers(1, 3),
    latency=st.sampled_from([0.0, 1.0, 3.0]),
)
def test_samples_share_their_models_limit(samples: int, limit: int, latency: float) -> None:
    """max_concurrency of m bounds m#1..m#K together, whatever the latencies."""
    names = [f"m#{k}" for k in range(1, samples + 1)]
    spec = parse_session(
        {
            "name": "lim",
            "parallel_execution": {"max_concurrent_models": 10},
            "models": {
                "m": {
                    "provider": "simulated",
                    "max_concurrency": limit,
                    "latency": {"kind": "uniform", "low_ms": 0, "high_ms": latency},
                }
            },
            "steps": [{"id": "s", "prompt": "p", "models": names, "seed": 5}],
        }
    )
    events: list[Event] = []
    result = thinktank.run_sync(spec, store=None, on_event=events.append)
    assert result.status == "completed", result.error
    assert sorted(c.model for c in result.steps["s"].calls) == names
    assert _max_in_flight(events) <= limit
    if latency and limit < samples:
        # The limit really binds (the samples would otherwise all start at once).
        assert _max_in_flight(events) == limit


def test_registry_resolves_samples_to_their_model() -> None:
    """NAME#K resolves to NAME's entry and check; unknown x#1 names x; not listed."""
    registry = ModelRegistry(session_models={"m": SimulatedModelConfig(max_concurrency=1)})
    assert registry.check("m#2") is None
    assert registry.check("local#3") == registry.check("local")
    assert registry.entry("m#2") is registry.entry("m")
    problem = registry.check("x#1")
    assert problem is not None and problem.startswith("unknown model 'x' (sampled by 'x#1')")
    assert "m#1" not in registry.names()
    with pytest.raises(KeyError):
        registry.entry("m#")
    with pytest.raises(KeyError):
        registry.entry("m#a")


def test_a_declared_name_with_a_mark_is_its_own_model() -> None:
    """A model declared as ``x#1`` is itself, not a sample of ``x``."""
    own = SimulatedModelConfig(default_reply="own")
    registry = ModelRegistry(session_models={"x": SimulatedModelConfig(), "x#1": own})
    assert registry.entry("x#1") is own


def test_session_validation_accepts_samples_and_names_unknown_bases() -> None:
    """A session naming m#1, m#2 validates; one naming x#1 of an unknown x is refused."""
    base = {"name": "v", "models": {"m": {"provider": "simulated"}}}
    spec = parse_session({**base, "steps": [{"id": "s", "prompt": "p", "models": ["m#1", "m#2"]}]})
    assert spec.steps[0].models == ["m#1", "m#2"]
    with pytest.raises(SpecErrors, match="unknown model 'x' \\(sampled by 'x#1'\\)"):
        parse_session({**base, "steps": [{"id": "s", "prompt": "p", "model": "x#1"}]})


async def test_python_clients_are_sampled_under_their_sample_names(tmp_path: Path) -> None:
    """A client given from Python answers its samples; calls are stored as NAME#K."""
    log = CallLog()
    spec = parse_session(
        {"name": "py", "steps": [{"id": "s", "prompt": "p", "models": ["t#1", "t#2"]}]},
        known_models=["t"],
    )
    db = tmp_path / "p.db"
    result = await thinktank.run(spec, store=str(db), models={"t": CountingModel("t", log)})
    assert result.status == "completed", result.error
    assert await _stored_models(db, result.session_id) == ["t#1", "t#2"]
    assert len(log.calls) == 2


def test_seed_bounds_are_validated() -> None:
    """A step seed is a uint32 llama.cpp accepts: 0 .. 2**32 - 2."""
    StepSpec.model_validate({"id": "s", "prompt": "p", "seed": MAX_SEED})
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(ValidationError):
            StepSpec.model_validate({"id": "s", "prompt": "p", "seed": bad})


def test_ask_seed_reaches_every_sample(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``thinktank ask --seed`` seeds each provider/model sample's call."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    names = ["openai/wire-m#1", "openai/wire-m#2"]
    args = ["ask", "hello", "--seed", "9", "--db", str(tmp_path / "a.db"), "--json"]
    for name in names:
        args += ["-m", name]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert sorted(_sent_seeds(server)) == sorted(call_seed(9, n) for n in names)
    models = sorted(r["model"] for r in json.loads(out.stdout)["responses"])
    assert models == names
