"""The report's figures against plain recomputations on records built in memory."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.eval_records_factory import call, config, experiment, random_records, sample
from thinktank.eval.report import Report, build_report
from thinktank.eval.stats import (
    auroc,
    error_correlation,
    majority_accuracy_if_independent,
    mcnemar,
    wilson,
)


def small() -> Report:
    """Two configurations on four items: a single model and a 2-sample vote of it."""
    exp = experiment(
        [config("one", ["m"]), config("two", ["m"], samples=2)], baseline="one", scorer="exact"
    )
    samples = [
        # The single model: right, right (but "paris" is wrong for an exact scorer), wrong,
        # and a session that never finished.
        sample("one", "i1", ["Paris"], [call("m", "Paris", 0, cost=0.01)], wall_ms=100),
        sample("one", "i2", ["Paris"], [call("m", "paris", 0, cost=0.01)], wall_ms=200),
        sample("one", "i3", ["Rome"], [call("m", "Milan", 0, cost=0.01)], wall_ms=300),
        sample("one", "i4", ["Oslo"], [call("m", "Oslo", 0, cost=None)], status="running"),
        sample(
            "two",
            "i1",
            ["Paris"],
            [call("m#1", "Paris", 0, cost=0.01), call("m#2", "Paris", 1, cost=0.01)],
            wall_ms=100,
        ),
        sample(
            "two",
            "i2",
            ["Paris"],
            [call("m#1", "Lyon", 0, cost=0.01), call("m#2", "Lyon", 1, cost=0.01)],
            wall_ms=400,
        ),
        sample(
            "two",
            "i3",
            ["Rome"],
            [call("m#1", "Rome", 0, cost=0.01), call("m#2", "Milan", 1, cost=0.01)],
            wall_ms=500,
        ),
        sample(
            "two",
            "i4",
            ["Oslo"],
            [call("m#1", "Oslo", 0, cost=0.01), call("m#2", None, 1, cost=0.01)],
            status="partial",
            wall_ms=600,
        ),
    ]
    return build_report(exp, samples)


def test_per_configuration_figures_by_hand() -> None:
    report = small()
    one, two = report.configurations
    # Re-scored with the exact scorer: "paris" is wrong; the unfinished i4 is not answered.
    assert (one.samples, one.correct, one.unfinished, one.failed, one.errors) == (4, 1, 1, 0, 0)
    assert one.accuracy == wilson(1, 4)
    assert (one.cost_usd, one.cost_known) == (pytest.approx(0.03), False)
    assert one.cost_per_item == pytest.approx(0.03 / 4)
    assert (one.latency_p50_ms, one.latency_p95_ms) == (200.0, pytest.approx(290.0))
    assert (one.calls, one.calls_per_item, one.kind) == (4, 1.0, "measured")
    assert (one.input_tokens, one.output_tokens) == (80, 20)
    # two: i1 Paris, i2 Lyon, i3 Rome (a 1-1 tie goes to the first arrival), i4 Oslo.
    assert (two.correct, two.errors, two.cost_usd, two.cost_known) == (3, 1, 0.08, True)


def test_paired_comparison_with_the_baseline_by_hand() -> None:
    report = small()
    (comp,) = report.comparisons
    # Pairs (item, repeat): one is right on i1 only; two on i1, i3, i4.
    assert (comp.config_id, comp.baseline, comp.pairs) == ("two", "one", 4)
    assert (comp.b, comp.c) == (0, 2)
    assert comp.p_value == mcnemar(0, 2).p_value
    assert comp.delta == pytest.approx(0.5)


def test_calibration_uses_the_stored_consensus_score() -> None:
    report = small()
    (cal,) = report.calibration
    # Scores stored by the factory (the majority's agreement): 1.0, 1.0, 0.5, 1.0 (i4
    # merged one answer of 2 calls). Correct: T, F, T, T.
    assert cal.config_id == "two" and cal.scored == 4
    assert cal.auroc == auroc([1.0, 1.0, 0.5, 1.0], [True, False, True, True])
    assert sum(b.count for b in cal.bins) == 4
    assert cal.selective[-1].coverage == 1.0 and cal.selective[-1].accuracy == 0.75
    # Scores 1.0 (3 items: T, F, T) then 0.5 (1 item: T). 50% coverage needs the cut at
    # 1.0 (3 of 4 answered, 2 right); 80% needs 0.5 (all 4, 3 right).
    half, most = cal.at_coverage
    assert (half.target, half.threshold, half.answered, half.coverage) == (0.5, 1.0, 3, 0.75)
    assert half.accuracy == wilson(2, 3)
    assert (most.target, most.threshold, most.answered, most.coverage) == (0.8, 0.5, 4, 1.0)
    assert most.accuracy == wilson(3, 4)


def test_error_correlation_between_samples_and_the_independent_vote() -> None:
    report = small()
    (corr,) = report.correlations
    # Samples m#1 and m#2 both answered i1, i2, i3: right/right, wrong/wrong, right/wrong.
    assert (corr.a, corr.b, corr.relation, corr.items) == ("m#1", "m#2", "samples", 3)
    assert corr.phi == error_correlation([True, False, True], [True, False, False])
    (ind,) = report.independence
    # Over the 4 finished samples, m#2's failed call counts wrong.
    assert ind.voter_accuracies == (0.75, 0.25)
    assert ind.independent == majority_accuracy_if_independent([0.75, 0.25])
    assert ind.vote == 0.75 and ind.measured == 0.75


def test_models_and_samples_are_told_apart() -> None:
    exp, samples = random_records(3, items=10)
    report = build_report(exp, samples, rounds=100)
    relations = {(c.config_id, c.relation) for c in report.correlations}
    assert ("trio", "models") in relations and ("vote3", "samples") in relations
    assert {("mixed", "models"), ("mixed", "samples")} <= relations


def test_the_report_is_json_stable_and_complete() -> None:
    exp, samples = random_records(5, items=15, repeats=2, unfinished_rate=0.1)
    first = build_report(exp, samples, rounds=100)
    again = build_report(exp, samples, rounds=100)
    data = first.to_dict()
    assert json.dumps(data, sort_keys=True) == json.dumps(again.to_dict(), sort_keys=True)
    assert json.loads(json.dumps(data)) == data
    assert list(data) == [f.name for f in dataclasses.fields(Report)]
    assert list(data["analyses"]) == [
        "remerge",
        "sweeps",
        "calls",
        "dropped",
        "cascades",
        "skipped",
    ]
    assert {c["config_id"] for c in data["configurations"]} == {"single", "vote3", "trio", "mixed"}
    assert all(r["kind"] == "derived" for r in data["analyses"]["remerge"])
    assert all(c["kind"] == "measured" for c in data["configurations"])


def test_no_baseline_no_comparison_and_an_empty_configuration_reports_no_accuracy() -> None:
    exp = experiment([config("a", ["m"]), config("b", ["m"])])
    report = build_report(exp, [sample("a", "i", ["x"], [call("m", "x", 0)])])
    assert report.comparisons == ()
    assert report.configurations[1].accuracy is None
    assert report.configurations[1].cost_per_item is None
