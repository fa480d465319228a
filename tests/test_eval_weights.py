"""Model weights fitted on stored answers: the smoothed log-odds rule against a hand
computation, the seeded held-out split, the held-out re-merge, per-domain tables, and
``thinktank eval weights`` writing a file that sessions and experiment grids accept."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest
import yaml
from click.testing import CliRunner

from thinktank.cli.commands import main
from thinktank.errors import UsageError
from thinktank.eval.analysis import StoredAnswers
from thinktank.eval.experiment import configurations, load_experiment
from thinktank.eval.records import SampleRecord
from thinktank.eval.runner import run_experiment
from thinktank.eval.stats import wilson
from thinktank.eval.weights import (
    WEIGHT_FLOOR,
    estimate_alternatives,
    fit_weights,
    held_out,
    split_items,
    weights_document,
    write_weights,
)
from thinktank.session.loading import parse_session
from thinktank.store import Store

from .eval_records_factory import call, config, experiment, sample
from .fakeserver import FakeServer, run_fake_server
from .test_eval_runner import TARGET, write_config, write_experiment

RIGHT = {"a": 8, "b": 5, "c": 2}
"""Items (of 10) each model answers right."""


def records(right: dict[str, int], items: int = 10) -> tuple[StoredAnswers, list[SampleRecord]]:
    """One configuration asking every model of ``right``; model m is right on its first
    right[m] items and otherwise answers a wrong answer shared by the wrong models."""
    cfg = config("panel", list(right))
    samples = [
        sample(
            "panel",
            f"i{n}",
            ["Paris"],
            [
                call(m, "Paris" if n < k else "Lyon", arrival, key=f"{m}-{n}")
                for arrival, (m, k) in enumerate(right.items())
            ],
        )
        for n in range(items)
    ]
    exp = experiment([cfg])
    return StoredAnswers(exp, samples), samples


def test_weights_match_a_hand_computation() -> None:
    """p = (correct+1)/(n+2), weight = log(p/(1-p)); b (p = 0.5) and c (worse than chance)
    get the floor; the models come most reliable first."""
    answers, _ = records(RIGHT)
    fitted = fit_weights(answers)
    got = {r.model: (r.answered, r.correct, r.p, r.weight) for r in fitted.models}
    assert got["a"] == (10, 8, 9 / 12, pytest.approx(math.log(3)))
    assert got["b"][2] == 0.5 and got["b"][3] == WEIGHT_FLOOR
    assert got["c"][2] == 3 / 12 and got["c"][3] == WEIGHT_FLOOR
    assert [r.model for r in fitted.models] == ["a", "b", "c"]
    assert fitted.items == tuple(sorted(f"i{n}" for n in range(10)))


def test_weights_with_many_alternatives_by_hand() -> None:
    """With K answers, weight = log((K-1) p / (1-p)): among 10 alternatives a model right
    half the time (b) and one right a quarter of the time (c) are better than chance."""
    answers, _ = records(RIGHT)
    fitted = fit_weights(answers, alternatives=10)
    got = {r.model: r.weight for r in fitted.models}
    assert got == {
        "a": pytest.approx(math.log(27)),
        "b": pytest.approx(math.log(9)),
        "c": pytest.approx(math.log(3)),
    }
    assert fitted.alternatives == 10
    assert weights_document(fitted, "exp")["fitted"]["alternatives"] == 10
    with pytest.raises(ValueError, match="at least 2 alternatives"):
        fit_weights(answers, alternatives=1.5)


def test_alternatives_estimated_from_coinciding_wrong_answers() -> None:
    """1/(K-1) = (coinciding + 1)/(pairs + 2) over pairs of wrong answers to one item."""
    # Three wrong answers x, y, x: 3 pairs, 1 coinciding -> K - 1 = 5/2.
    assert estimate_alternatives([["x", "y", "x"], ["z"], []]) == 3.5
    # No pair at all: K = 3 (the smoothing's prior, 1/(K-1) = 1/2).
    assert estimate_alternatives([["x"], []]) == 3
    # In records(RIGHT) every wrong model answers Lyon: 9 pairs, all coinciding.
    answers, _ = records(RIGHT)
    assert fit_weights(answers, alternatives="auto").alternatives == pytest.approx(1 + 11 / 10)


def test_fit_on_some_items_only() -> None:
    """Fitting on items i0..i4 counts only their calls."""
    answers, _ = records(RIGHT)
    fitted = fit_weights(answers, {f"i{n}" for n in range(5)})
    by_model = {r.model: (r.answered, r.correct) for r in fitted.models}
    assert by_model == {"a": (5, 5), "b": (5, 5), "c": (5, 2)}


def test_per_domain_weights() -> None:
    """With domains, each domain gets its own fit; the overall table covers all."""
    answers, _ = records(RIGHT)
    domains = {f"i{n}": "easy" if n < 5 else "hard" for n in range(10)}
    fitted = fit_weights(answers, domains=domains)
    easy = {r.model: r.correct for r in fitted.domains["easy"]}
    hard = {r.model: r.correct for r in fitted.domains["hard"]}
    assert easy == {"a": 5, "b": 5, "c": 2} and hard == {"a": 3, "b": 0, "c": 0}
    assert fitted.weights("hard")["b"] == WEIGHT_FLOOR
    assert fitted.weights("easy")["b"] == pytest.approx(math.log(6))
    assert fitted.weights("unknown") == fitted.weights()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_is_seeded_and_disjoint(seed: int) -> None:
    """The same seed gives the same split; the parts are disjoint and cover every item."""
    items = [f"i{n}" for n in range(21)]
    fit, test = split_items(items, 0.5, seed)
    assert (fit, test) == split_items(reversed(items), 0.5, seed)
    assert not set(fit) & set(test) and set(fit) | set(test) == set(items)
    assert len(test) == round(21 * 0.5)
    assert split_items(items, 0.5, seed + 100) != (fit, test)


def test_split_refuses_an_empty_part() -> None:
    """A holdout that leaves a part empty, or outside (0, 1), is a usage error."""
    with pytest.raises(UsageError, match="nothing to hold out"):
        split_items(["a", "b"], 0.1, 0)
    with pytest.raises(UsageError, match="between 0 and 1"):
        split_items(["a", "b"], 1.0, 0)


def test_held_out_weights_beat_a_wrong_majority() -> None:
    """a is always right, b and c agree on a wrong answer: equal weights are always
    wrong, the fitted ones (a heavy, b and c at the floor) always right, McNemar c = n."""
    answers, _ = records({"a": 20, "b": 0, "c": 0}, items=20)
    fit, test = split_items([f"i{n}" for n in range(20)], 0.5, 3)
    fitted = fit_weights(answers, set(fit))
    (check,) = held_out(answers, fitted, set(test))
    assert check.n == 10
    assert check.equal == wilson(0, 10) and check.weighted == wilson(10, 10)
    assert (check.mcnemar.b, check.mcnemar.c) == (0, 10)


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_written_weights_are_accepted_by_a_session_and_a_grid(tmp_path: Path, suffix: str) -> None:
    """The file's weights go into a step's and a configuration's weights: as they are."""
    answers, _ = records(RIGHT)
    path = write_weights(weights_document(fit_weights(answers), "exp"), tmp_path / f"w{suffix}")
    data = _read(path)
    assert data["models"] == ["a", "b", "c"]
    assert data["weights"]["a"] == pytest.approx(math.log(3), abs=1e-6)
    _accepted(tmp_path, data)


def _read(path: Path) -> dict[str, object]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    return dict(yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text))


def _accepted(tmp_path: Path, data: dict[str, object]) -> None:
    models: Sequence[str] = data["models"]  # type: ignore[assignment]
    weights = data["weights"]
    spec = parse_session(
        {
            "name": "w",
            "models": {m: {"provider": "simulated", "default_reply": "x"} for m in models},
            "steps": [{"id": "q", "prompt": "?", "models": list(models), "weights": weights}],
        }
    )
    assert spec.steps[0].weights == weights
    (tmp_path / "d.jsonl").write_text('{"id": "a", "q": "?", "target": "x"}\n')
    grid = [{"models": list(models), "weights": weights}]
    exp = {"name": "g", "dataset": "d.jsonl", "prompt": "{{ q }}", "grid": grid, "scorer": "exact"}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    (cfg,) = configurations(load_experiment(tmp_path / "e.yaml"))
    assert dict(cfg.weights) == weights


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as fake:
        yield fake


def test_cli_fits_checks_and_writes(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval weights on a stored loopback experiment: prints the reliabilities and the
    held-out check, writes a file the session and grid accept; a bad id, a bad suffix
    and an unwritable path are one-line errors."""
    monkeypatch.setenv(
        "THINKTANK_CONFIG", str(write_config(tmp_path / "thinktank.toml", server, ["a", "b", "c"]))
    )
    server.set_reply("a", f"It is {TARGET}-1.")
    server.set_reply("b", "Lyon")
    server.set_reply("c", "Lyon")
    spec = load_experiment(write_experiment(tmp_path, items=6, grid=[{"models": ["a", "b", "c"]}]))
    db = str(tmp_path / "t.db")

    async def run() -> str:
        async with await Store.open(db) as store:
            return (await run_experiment(spec, store=store)).experiment_id

    experiment_id = anyio.run(run, backend="asyncio")
    out = tmp_path / "w.toml"
    args = ["eval", "weights", experiment_id, "--db", db]
    ok = CliRunner().invoke(main, [*args, "--holdout", "0.5", "--seed", "2", "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "Model reliability" in ok.stdout and "Held-out check" in ok.stdout
    data = tomllib.loads(out.read_text())
    assert data["models"][-1] in ("b", "c") and data["models"][0] == "a"
    assert data["fitted"]["alternatives"] == 2
    _accepted(tmp_path, data)
    auto = tmp_path / "auto.json"
    ok = CliRunner().invoke(main, [*args, "--alternatives", "auto", "-o", str(auto)])
    assert ok.exit_code == 0, ok.output
    # b and c answer Lyon on every item, so their wrong answers coincide and K stays
    # small (some pairs with a's wrong answers do not coincide).
    assert 2 < json.loads(auto.read_text())["fitted"]["alternatives"] < 4
    # Per-domain tables from a dataset file whose items carry a domain.
    (tmp_path / "domains.jsonl").write_text(
        "".join(
            json.dumps({"id": f"q{i}", "domain": "even" if i % 2 == 0 else "odd", "target": "x"})
            + "\n"
            for i in range(6)
        )
    )
    by_domain = tmp_path / "d.json"
    dataset = ["--dataset", str(tmp_path / "domains.jsonl")]
    result = CliRunner().invoke(main, [*args, "--by-domain", *dataset, "-o", str(by_domain)])
    assert result.exit_code == 0, result.output
    domains = json.loads(by_domain.read_text())["domains"]
    assert set(domains) == {"even", "odd"} and domains["odd"]["models"][0] == "a"
    for bad, message in (
        (["eval", "weights", "ffffffff", "--db", db], "error:"),
        ([*args, "-o", str(tmp_path / "w.txt")], "write weights to a .toml"),
        ([*args, "-o", str(tmp_path / "no" / "w.json")], "cannot write"),
        ([*args, "--config", "nope"], "no configuration 'nope'"),
        ([*args, "--by-domain"], "for --by-domain"),
        ([*args, "--alternatives", "1"], "--alternatives must be 'auto' or a number >= 2"),
        ([*args, "--alternatives", "many"], "--alternatives must be 'auto' or a number >= 2"),
    ):
        result = CliRunner().invoke(main, bad)
        assert result.exit_code != 0
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output
