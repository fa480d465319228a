"""The report's outputs: terminal tables, JSON, CSV, DataFrame and PNG plots."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.eval_records_factory import random_records
from thinktank.cli.eval_report import print_report, report_command
from thinktank.eval.output import (
    CONFIG_COLUMNS,
    SAMPLE_COLUMNS,
    frontier_points,
    render_report,
    report_json,
    samples_frame,
    write_csv,
    write_plots,
    write_samples_csv,
)
from thinktank.eval.report import Report, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def records() -> tuple[object, list[object]]:
    return random_records(7, items=20, repeats=2, unfinished_rate=0.05)


@pytest.fixture(scope="module")
def report(records: tuple[object, list[object]]) -> Report:
    exp, samples = records
    return build_report(exp, samples, rounds=100)  # type: ignore[arg-type]


def test_the_terminal_tables_label_derived_figures(report: Report) -> None:
    out = io.StringIO()
    render_report(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "Configurations (measured)" in text
    for title in ("Re-merged", "number of calls", "without one model", "Cascade orderings"):
        line = next(line for line in text.splitlines() if title in line)
        assert "(derived)" in line
    a = report.configurations[1].accuracy
    assert a is not None
    assert f"{100 * a.estimate:.1f}% [{100 * a.low:.1f}%, {100 * a.high:.1f}%]" in text
    comp = report.comparisons[0]
    assert f"{comp.b}/{comp.c}/p=" in text
    assert "not derived: single remerge" in text
    at = report.calibration[0].at_coverage[-1]
    assert "at >= 80.0% coverage" in text
    assert f"@ {100 * at.coverage:.1f}% (>= {at.threshold:.2f})" in text


def test_json_has_stable_keys(report: Report) -> None:
    data = report_json(report)
    assert data["format"] == 1
    assert list(data)[1:] == list(report.to_dict())
    assert json.loads(json.dumps(data)) == data


def test_the_csv_parses_back_with_every_figure(report: Report, tmp_path: Path) -> None:
    path = write_csv(report, tmp_path / "configs.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["config_id"] for r in rows] == [c.config_id for c in report.configurations]
    assert list(rows[0]) == list(CONFIG_COLUMNS)
    for row, summary in zip(rows, report.configurations, strict=True):
        assert summary.accuracy is not None
        assert float(row["accuracy"]) == summary.accuracy.estimate
        assert float(row["accuracy_low"]) == summary.accuracy.low
        assert int(row["calls"]) == summary.calls
    baseline, vote3 = rows[0], rows[1]
    assert baseline["baseline_b"] == ""  # the baseline is not compared with itself
    comp = report.comparisons[0]
    assert (int(vote3["baseline_b"]), int(vote3["baseline_c"])) == (comp.b, comp.c)
    assert float(vote3["baseline_p_value"]) == comp.p_value


def test_the_samples_csv_and_frame(records: tuple[object, list[object]], tmp_path: Path) -> None:
    exp, samples = records
    path = write_samples_csv(exp, samples, tmp_path / "samples.csv")  # type: ignore[arg-type]
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(samples) and list(rows[0]) == list(SAMPLE_COLUMNS)
    frame = samples_frame(exp, samples)  # type: ignore[arg-type]
    assert list(frame.columns) == list(SAMPLE_COLUMNS) and len(frame) == len(samples)
    dtypes = {c: str(t) for c, t in frame.dtypes.items()}
    assert dtypes["repeat"] == "int64" and dtypes["calls"] == "int64"
    assert dtypes["correct"] == "bool" and dtypes["tokens"] == "Int64"
    assert dtypes["score"] == dtypes["cost"] == dtypes["wall_ms"] == "float64"
    # One model asked once: no consensus score, NaN in the frame.
    assert frame.loc[frame["config"] == "single", "score"].isna().all()
    # Unfinished sessions are never correct, and correct matches the CSV.
    assert not frame.loc[frame["status"] == "running", "correct"].any()
    assert [r["correct"] == "True" for r in rows] == frame["correct"].tolist()


def test_plots_are_png_files_drawn_without_pyplot(report: Report, tmp_path: Path) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    import matplotlib

    # The raw rcParams entry: matplotlib.get_backend() would itself import pyplot.
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    paths = write_plots(report, tmp_path / "plots")
    assert [p.name for p in paths] == ["frontier.png", "calls.png", "calibration.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_print_report_json_and_files(
    records: tuple[object, list[object]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp, samples = records
    out = io.StringIO()
    report = print_report(
        exp,  # type: ignore[arg-type]
        samples,  # type: ignore[arg-type]
        as_json=True,
        csv_path=tmp_path / "c.csv",
        samples_csv=tmp_path / "s.csv",
        plots_dir=tmp_path / "plots",
        console=Console(file=out, width=40, color_system=None),
    )
    # The JSON is the whole stdout, unwrapped even on a narrow console.
    assert json.loads(out.getvalue()) == report_json(report)
    written = capsys.readouterr().err.splitlines()
    assert written == [
        f"wrote {tmp_path / name}"
        for name in (
            "c.csv",
            "s.csv",
            "plots/frontier.png",
            "plots/calls.png",
            "plots/calibration.png",
        )
    ]
    text = io.StringIO()
    print_report(exp, samples, console=Console(file=text, width=200))  # type: ignore[arg-type]
    assert "Configurations (measured)" in text.getvalue()


def test_the_report_command_declares_its_options() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(report_command, ["--help"])
    assert result.exit_code == 0
    for option in ("EXPERIMENT_ID", "--db", "--json", "--csv", "--samples-csv", "--plots"):
        assert option in result.output


def test_the_frontier_falls_back_to_calls_when_nothing_has_a_cost(report: Report) -> None:
    """Free local models put every configuration at cost 0: the frontier then plots
    accuracy against calls per item, the cost that remains."""
    axis, points = frontier_points(report)
    assert axis == "cost"
    assert {c: x for c, x, _ in points} == {
        s.config_id: s.cost_per_item for s in report.configurations if s.accuracy
    }
    free = dataclasses.replace(
        report,
        configurations=tuple(
            dataclasses.replace(s, cost_usd=0.0, cost_per_item=0.0) for s in report.configurations
        ),
    )
    axis, points = frontier_points(free)
    assert axis == "calls"
    assert {c: x for c, x, _ in points} == {
        s.config_id: s.calls_per_item for s in free.configurations if s.accuracy
    }
