"""Experiment files: valid files in both grid forms, expansion order and ids, every
error as one line naming the file, line and field, the committed schema and example."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktank.errors import SpecError, SpecErrors, UsageError
from thinktank.eval.experiment import (
    Configuration,
    ExperimentSpec,
    GridProduct,
    configurations,
    load_experiment,
    prompt_fields,
    render_experiment_schema,
)
from thinktank.providers.config import ThinkTankConfig
from thinktank.providers.registry import ModelRegistry

from .conftest import REPO

DATASET = '{"id": "a", "country": "France", "target": "Paris"}\n'

BASE = """\
name: t
dataset: data.jsonl
prompt: "Capital of {{ country }}?"
grid:
  - models: [local]
scorer: normalized
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    (tmp_path / "data.jsonl").write_text(DATASET, encoding="utf-8")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecErrors) as info:
        load_experiment(path)
    lines = info.value.lines()
    assert str(info.value) == "\n".join(lines)
    assert all("\n" not in line for line in lines)
    return lines


def test_minimal_file_defaults(tmp_path: Path) -> None:
    spec = load_experiment(write(tmp_path, BASE))
    assert spec.repeats == 1 and spec.baseline is None
    assert spec.scorer.kind == "normalized"
    assert spec.dataset_path() == tmp_path / "data.jsonl"
    assert configurations(spec) == [
        Configuration("c1", ("local",), None, "all", "majority", None, 1, None, None)
    ]


def test_list_grid_ids_ensembles_and_camel_case(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        name: t
        dataset: data.jsonl
        prompt: "Capital of {{country}}?"
        ensembles:
          trio: [local-s1, local-s2, local-s3]
        grid:
          - models: [local]
          - id: vote
            ensemble: trio
            mode: quorum
            threshold: 0.5
            samples: 3
            temperature: 0.7
            seed: 11
          - models: [local, local-s1]
        scorer: {kind: numeric, abs_tol: 0.5}
        repeats: 2
        budget: {maxCostUsd: 1.5, max_calls: 100}
        baseline: c1
        """,
    )
    spec = load_experiment(path)
    assert spec.budget.max_cost_usd == 1.5 and spec.budget.max_calls == 100
    configs = configurations(spec)
    # Default ids are positions in the file, whether or not others have given ids.
    assert [c.id for c in configs] == ["c1", "vote", "c3"]
    vote = configs[1]
    assert vote.models == ("local-s1", "local-s2", "local-s3") and vote.ensemble == "trio"
    assert (vote.mode, vote.threshold, vote.samples, vote.temperature, vote.seed) == (
        "quorum",
        0.5,
        3,
        0.7,
        11,
    )


def test_product_grid_order_is_itertools_product_in_declared_key_order(tmp_path: Path) -> None:
    # Keys written in another order than GridProduct declares: the order is still
    # models, mode, ..., samples (samples varies fastest).
    path = write(
        tmp_path,
        """\
        name: t
        dataset: data.jsonl
        prompt: "{{ country }}"
        grid:
          samples: [1, 3]
          models: [[local], [local-s1, local-s2]]
          mode: [all, race]
        scorer: exact
        baseline: c8
        """,
    )
    configs = configurations(load_experiment(path))
    got = [(c.id, c.models, c.mode, c.samples) for c in configs]
    assert got == [
        ("c1", ("local",), "all", 1),
        ("c2", ("local",), "all", 3),
        ("c3", ("local",), "race", 1),
        ("c4", ("local",), "race", 3),
        ("c5", ("local-s1", "local-s2"), "all", 1),
        ("c6", ("local-s1", "local-s2"), "all", 3),
        ("c7", ("local-s1", "local-s2"), "race", 1),
        ("c8", ("local-s1", "local-s2"), "race", 3),
    ]


@settings(max_examples=40, deadline=None)
@given(
    modes=st.lists(st.sampled_from(["all", "race", "quorum", "cascade"]), min_size=1, max_size=4),
    samples=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    panels=st.integers(1, 3),
)
def test_product_size_and_unique_ids(modes: list[str], samples: list[int], panels: int) -> None:
    grid = GridProduct.model_validate(
        {"models": [[f"m{i}"] for i in range(panels)], "mode": modes, "samples": samples}
    )
    rows = grid.expand()
    assert len(rows) == panels * len(modes) * len(samples)
    assert [r.samples for r in rows[: len(samples)]] == samples
    spec = ExperimentSpec.model_validate(
        {
            "name": "t",
            "dataset": "d.jsonl",
            "prompt": "x",
            "grid": grid,
            "scorer": {"kind": "exact"},
        }
    )
    ids = [c.id for c in configurations(spec)]
    assert ids == [f"c{i}" for i in range(1, len(rows) + 1)]


def test_session_instead_of_prompt(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        textwrap.dedent(
            """\
            name: s
            inputs:
              country: {type: string}
            models: {m: {provider: simulated}}
            steps:
              - id: answer
                model: m
                prompt: "Capital of {{ inputs.country }}?"
            """
        ),
        encoding="utf-8",
    )
    spec = load_experiment(
        write(tmp_path, BASE.replace('prompt: "Capital of {{ country }}?"', "session: s.yaml"))
    )
    assert spec.session_path() == tmp_path / "s.yaml" and spec.prompt is None


def test_session_needing_an_input_the_dataset_lacks(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "name: s\ninputs:\n  city: {type: string}\nmodels: {m: {provider: simulated}}\n"
        "steps:\n  - id: a\n    model: m\n    prompt: '{{ inputs.city }}'\n",
        encoding="utf-8",
    )
    path = write(tmp_path, BASE.replace('prompt: "Capital of {{ country }}?"', "session: s.yaml"))
    assert errors_of(path) == [
        f"{path}:3: session: the session's required input 'city' is not a field of the"
        " dataset's first item"
    ]


def test_json_file_and_shipped_dataset(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text(
        json.dumps(
            {
                "name": "t",
                "dataset": "shipped:arithmetic",
                "prompt": "{{ question }}",
                "grid": [{"models": ["local"]}],
                "scorer": {"kind": "numeric"},
            }
        ),
        encoding="utf-8",
    )
    spec = load_experiment(path)
    assert spec.dataset_path().name == "arithmetic.jsonl"


# Each case: a change to BASE, and the one error line expected (file prefix added).
ERRORS = [
    ("unknown field", BASE + "colour: red\n", ":7: colour: unknown field"),
    (
        "both prompt and session",
        BASE + "session: s.yaml\n",
        ":7: session: give exactly one of 'prompt' or 'session'",
    ),
    (
        "neither prompt nor session",
        BASE.replace('prompt: "Capital of {{ country }}?"\n', ""),
        ":1: prompt: give exactly one of 'prompt' or 'session'",
    ),
    (
        "threshold above 1",
        BASE.replace("  - models: [local]\n", "  - models: [local]\n    threshold: 1.5\n"),
        ":6: grid.0.threshold: Input should be less than or equal to 1 (got 1.5)",
    ),
    (
        "samples 0",
        BASE.replace("  - models: [local]\n", "  - models: [local]\n    samples: 0\n"),
        ":6: grid.0.samples: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "duplicate configuration id",
        BASE.replace(
            "  - models: [local]\n",
            "  - {id: a, models: [local]}\n  - {id: a, models: [local-s1]}\n",
        ),
        ":6: grid.1.id: duplicate configuration id 'a'",
    ),
    (
        "default id taken by a given one",
        BASE.replace(
            "  - models: [local]\n", "  - {id: c2, models: [local]}\n  - {models: [local-s1]}\n"
        ),
        ":6: grid.1.id: duplicate configuration id 'c2'",
    ),
    (
        "placeholder not in the dataset",
        BASE.replace("{{ country }}", "{{ nation }}"),
        ":3: prompt: placeholder {{ nation }} is not a field of the dataset's first item"
        " (fields: country)",
    ),
    (
        "target in the prompt",
        BASE.replace("{{ country }}", "{{ country }} ({{target}})"),
        ":3: prompt: the prompt may not use {{ target }}",
    ),
    (
        "expression placeholder",
        BASE.replace("{{ country }}", "{{ country.upper() }}"),
        ":3: prompt: placeholder '{{ country.upper() }}' is not allowed: use {{ FIELD }}",
    ),
    (
        "unknown baseline",
        BASE + "baseline: c9\n",
        ":7: baseline: no configuration 'c9' (ids: c1)",
    ),
    (
        "unknown scorer kind",
        BASE.replace("scorer: normalized", "scorer: fuzzy"),
        ":6: scorer.kind: ",
    ),
    (
        "scorer option of another kind",
        BASE.replace("scorer: normalized", "scorer: {kind: exact, abs_tol: 1}"),
        ":6: scorer: option 'abs_tol' does not apply to a 'exact' scorer",
    ),
    (
        "models and ensemble",
        BASE.replace("  - models: [local]\n", "  - {models: [local], ensemble: x}\n"),
        ":5: grid.0: give exactly one of 'models' or 'ensemble'",
    ),
    (
        "unknown ensemble",
        BASE.replace("  - models: [local]\n", "  - ensemble: x\n"),
        ":5: grid.0.ensemble: no ensemble 'x' in 'ensembles'",
    ),
    (
        "empty models",
        BASE.replace("  - models: [local]\n", "  - models: []\n"),
        ":5: grid.0.models: List should have at least 1 item after validation, not 0 (got [])",
    ),
    (
        "repeats 0",
        BASE + "repeats: 0\n",
        ":7: repeats: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "negative budget",
        BASE + "budget: {max_cost_usd: -1}\n",
        ":7: budget.max_cost_usd: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        "unknown key in a product grid",
        BASE.replace("  - models: [local]\n", "  models: [[local]]\n  colour: [red]\n"),
        ":6: grid.colour: unknown field",
    ),
    (
        "product grid with an empty list",
        BASE.replace("  - models: [local]\n", "  models: [[local]]\n  mode: []\n"),
        ":6: grid.mode: List should have at least 1 item",
    ),
    (
        "unknown shipped dataset",
        BASE.replace("data.jsonl", "shipped:nope"),
        ":2: dataset: no shipped dataset 'nope' (shipped: arithmetic, capitals, times-tables)",
    ),
    ("duplicate key", BASE + "name: again\n", ":7: duplicate key 'name'"),
    (
        "missing dataset file",
        BASE.replace("data.jsonl", "nope.jsonl"),
        ":2: dataset: ",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_each_error_is_one_line_naming_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    lines = errors_of(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}{expected}"), lines[0]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace("scorer: normalized", "scorer: fuzzy") + "repeats: 0\ncolour: red\n"
    lines = errors_of(write(tmp_path, text))
    assert [line.split(": ")[1] for line in lines] == ["scorer.kind", "repeats", "colour"]


def test_errors_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_experiment(tmp_path / "missing.yaml")
    err = SpecErrors([SpecError("x", file="f")])
    assert err.lines() == ["f: x"]


def test_not_a_mapping_and_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert errors_of(path) == [f"{path}: an experiment file must hold a mapping at the top"]
    assert errors_of(tmp_path / "missing.yaml") == [
        f"{tmp_path / 'missing.yaml'}: cannot read file: No such file or directory"
    ]


def test_prompt_fields() -> None:
    assert prompt_fields("{{a}} and {{ b_2 }} and {{a}}") == (["a", "b_2", "a"], [])
    assert prompt_fields("{{ inputs.a }}")[1] == [
        "placeholder '{{ inputs.a }}' is not allowed: use {{ FIELD }}"
    ]
    assert prompt_fields("no placeholders { x }") == ([], [])


def test_experiment_schema_is_current() -> None:
    committed = (REPO / "schemas" / "experiment.schema.json").read_text(encoding="utf-8")
    assert committed == render_experiment_schema(), (
        "schemas/experiment.schema.json is stale: write render_experiment_schema() to it"
    )
    schema = json.loads(committed)
    assert schema["$id"].endswith("/experiment.schema.json")
    assert {
        "dataset",
        "prompt",
        "session",
        "grid",
        "scorer",
        "repeats",
        "budget",
        "baseline",
    } <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_shipped_example_loads_with_registry_models() -> None:
    spec = load_experiment(REPO / "experiments" / "capitals-smoke.yaml")
    configs = configurations(spec)
    assert [c.id for c in configs] == ["greedy", "vote3"] and spec.baseline == "greedy"
    assert spec.scorer.kind == "normalized"
    known = set(ModelRegistry(config=ThinkTankConfig()).names())
    assert {m for c in configs for m in c.models} <= known
