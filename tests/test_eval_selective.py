"""Selective answering in experiments: the ``abstain`` and ``weights`` knobs of a
configuration reach the scored step, abstentions are read back from the store, and the
report counts coverage and accuracy among the answered."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from thinktank.eval.dataset import Item
from thinktank.eval.experiment import configurations, load_experiment
from thinktank.eval.output import config_rows, render_report
from thinktank.eval.report import build_report
from thinktank.eval.runner import run_experiment, session_for
from thinktank.eval.stats import wilson
from thinktank.eval.store_read import list_experiments, read_experiment
from thinktank.store import Store

from .eval_records_factory import call, config, experiment, sample
from .fakeserver import FakeServer, run_fake_server
from .test_eval_runner import TARGET, write_config, write_experiment


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as fake:
        yield fake


def test_report_counts_coverage_and_accuracy_among_answered() -> None:
    """2 right, 1 wrong, 1 abstained: accuracy 2/4, coverage 3/4, answered 2/3; the
    abstained sample is neither right nor wrong."""
    cfg = config("sel", ["a", "b"])
    right = [call("a", "Paris", 0), call("b", "Paris", 1)]
    samples = [
        sample("sel", "i1", ["Paris"], right),
        sample("sel", "i2", ["Paris"], right),
        sample("sel", "i3", ["Paris"], [call("a", "Lyon", 0), call("b", "Lyon", 1)]),
        dataclasses.replace(
            sample("sel", "i4", ["Paris"], [call("a", "Paris", 0), call("b", "Lyon", 1)]),
            answer=None,
            abstained=True,
        ),
    ]
    report = build_report(experiment([cfg]), samples, draws=5, rounds=20)
    (summary,) = report.configurations
    assert (summary.samples, summary.correct, summary.abstained) == (4, 2, 1)
    assert summary.accuracy == wilson(2, 4)
    assert summary.coverage == wilson(3, 4)
    assert summary.answered_accuracy == wilson(2, 3)
    (row,) = config_rows(report)
    assert (row["abstained"], row["coverage"], row["answered_accuracy"]) == (1, 0.75, 2 / 3)
    console = Console(record=True, width=200)
    render_report(report, console)
    text = console.export_text()
    assert "Selective answering" in text and "1/4" in text


def test_no_abstention_means_full_coverage() -> None:
    """Without abstentions coverage is 1 and accuracy among answered is the accuracy."""
    cfg = config("all", ["a", "b"])
    samples = [sample("all", "i1", ["Paris"], [call("a", "Paris", 0), call("b", "Lyon", 1)])]
    (summary,) = build_report(experiment([cfg]), samples, draws=5, rounds=20).configurations
    assert summary.abstained == 0 and summary.coverage == wilson(1, 1)
    assert summary.answered_accuracy == summary.accuracy


def test_session_for_sets_abstain_and_weights_per_sample(tmp_path: Path) -> None:
    """abstain becomes on_low_consensus: abstain; a model's weight counts for each sample."""
    path = write_experiment(
        tmp_path,
        grid=[
            {"models": ["a", "b"], "samples": 2, "abstain": True, "weights": {"a": 2.5}},
            {"models": ["a"], "abstain": True},
        ],
    )
    spec = load_experiment(path)
    many, one = configurations(spec)
    item = Item(id="q0", inputs={"question": "?"}, targets=("x",))
    step = session_for(spec, many, item, 1)[0].steps[0]
    assert step.on_low_consensus == "abstain"
    assert step.weights == {"a#1": 2.5, "a#2": 2.5}
    # One answer cannot disagree with itself: nothing to abstain on.
    assert session_for(spec, one, item, 1)[0].steps[0].on_low_consensus == "continue"


async def test_abstaining_configuration_end_to_end(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over loopback: a split panel abstains on every item (stored, read back, not
    covered, not scored), an agreeing one answers, and weights that favour one model
    lift the split panel over the threshold."""
    monkeypatch.setenv(
        "THINKTANK_CONFIG", str(write_config(tmp_path / "thinktank.toml", server, ["a", "b", "c"]))
    )
    server.set_reply("a", f"It is {TARGET}-1.")
    server.set_reply("b", "Lyon")
    server.set_reply("c", f"It is {TARGET}-1.")
    grid = [
        {"id": "split", "models": ["a", "b"], "abstain": True},
        {"id": "agree", "models": ["a", "c"], "abstain": True},
        {"id": "weighted", "models": ["a", "b"], "abstain": True, "weights": {"a": 3.0}},
    ]
    spec = load_experiment(write_experiment(tmp_path, grid=grid))
    db = str(tmp_path / "t.db")
    async with await Store.open(db) as store:
        summary = await run_experiment(spec, store=store)
        again = await run_experiment(spec, store=store)
        listed = await list_experiments(store)
        record, samples = await read_experiment(store, summary.experiment_id)
        shown = await store.get_session(next(s for s in samples if s.abstained).session_id)
    by_config: dict[str, list[bool]] = {}
    for s in samples:
        by_config.setdefault(s.config_id, []).append(s.abstained)
    assert by_config == {"split": [True] * 3, "agree": [False] * 3, "weighted": [False] * 3}
    assert shown.status == "completed" and shown.steps[0].output is None
    # The run's own figures agree: abstentions are answered, not scored; a rerun reads
    # them back from the store.
    for run in (summary, again):
        assert (run.answered, run.abstained, run.scored, run.correct) == (9, 3, 6, 2)
    assert (listed[0]["scored"], listed[0]["correct"]) == (6, 2)
    report = {s.config_id: s for s in build_report(record, samples).configurations}
    assert report["split"].coverage == wilson(0, 3) and report["split"].answered_accuracy is None
    assert report["agree"].answered_accuracy == wilson(1, 3)
    assert report["weighted"].coverage == wilson(3, 3)
