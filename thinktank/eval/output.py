"""An experiment report as output: terminal tables, JSON, CSV, a DataFrame and plots.

This module owns the forms a :class:`~thinktank.eval.report.Report` leaves the process
in: :func:`render_report` (rich tables; figures derived from stored answers are
labelled "derived"), :func:`report_json` (stable keys), :func:`write_csv` (one row per
configuration), :func:`write_samples_csv` and :func:`samples_frame` (one row per
sample; pandas, the ``research`` extra) and :func:`write_plots` (PNG files drawn with
matplotlib's object API on an Agg canvas, so no global backend or pyplot state is
touched). pandas, matplotlib and rich are imported inside the functions that use them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinktank.eval.analysis import FINISHED, Grader
from thinktank.eval.records import ExperimentRecord, SampleRecord
from thinktank.eval.report import COVERAGE_TARGETS, Report
from thinktank.eval.stats import Interval

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # no stubs in the research extra
    from matplotlib.axes import Axes
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "CONFIG_COLUMNS",
    "REPORT_FORMAT",
    "SAMPLE_COLUMNS",
    "config_rows",
    "render_report",
    "report_json",
    "sample_rows",
    "samples_frame",
    "write_csv",
    "write_plots",
    "write_samples_csv",
]

REPORT_FORMAT = 1
"""Version of the JSON layout; raised when a key changes meaning or disappears."""

CONFIG_COLUMNS = (
    "config_id",
    "models",
    "mode",
    "synthesis",
    "samples",
    "correct",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "unfinished",
    "failed",
    "errors",
    "cost_usd",
    "cost_known",
    "cost_per_item",
    "input_tokens",
    "output_tokens",
    "latency_p50_ms",
    "latency_p95_ms",
    "calls",
    "calls_per_item",
    "abstained",
    "coverage",
    "answered_accuracy",
    "answered_accuracy_low",
    "answered_accuracy_high",
    "baseline",
    "baseline_pairs",
    "baseline_b",
    "baseline_c",
    "baseline_p_value",
    "auroc",
    "independent_accuracy",
    "vote_accuracy_derived",
)
"""The columns of :func:`write_csv`, in order."""

SAMPLE_COLUMNS = (
    "config",
    "item",
    "repeat",
    "session_id",
    "status",
    "answer",
    "correct",
    "score",
    "cost",
    "tokens",
    "wall_ms",
    "calls",
)
"""The columns of :func:`samples_frame` and :func:`write_samples_csv`, in order."""


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-able data with stable keys (``format`` is the layout version)."""
    return {"format": REPORT_FORMAT, **report.to_dict()}


def config_rows(report: Report) -> list[dict[str, Any]]:
    """One flat row per configuration with every figure (the CSV's rows)."""
    compared = {c.config_id: c for c in report.comparisons}
    calibrated = {c.config_id: c for c in report.calibration}
    independent = {i.config_id: i for i in report.independence}
    rows = []
    for s in report.configurations:
        comp, cal, ind = (
            compared.get(s.config_id),
            calibrated.get(s.config_id),
            independent.get(s.config_id),
        )
        acc, sel = s.accuracy, s.answered_accuracy
        intervals = ("accuracy", "coverage", "answered_accuracy")
        row = {
            **{k: getattr(s, k) for k in CONFIG_COLUMNS if hasattr(s, k) and k not in intervals},
            "models": " ".join(s.models),
            "accuracy": acc.estimate if acc else None,
            "accuracy_low": acc.low if acc else None,
            "accuracy_high": acc.high if acc else None,
            "coverage": s.coverage.estimate if s.coverage else None,
            "answered_accuracy": sel.estimate if sel else None,
            "answered_accuracy_low": sel.low if sel else None,
            "answered_accuracy_high": sel.high if sel else None,
            "baseline": comp.baseline if comp else None,
            "baseline_pairs": comp.pairs if comp else None,
            "baseline_b": comp.b if comp else None,
            "baseline_c": comp.c if comp else None,
            "baseline_p_value": comp.p_value if comp else None,
            "auroc": cal.auroc if cal else None,
            "independent_accuracy": ind.independent if ind else None,
            "vote_accuracy_derived": ind.vote if ind else None,
        }
        rows.append({k: row[k] for k in CONFIG_COLUMNS})
    return rows


def _write_rows(path: str | Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


def write_csv(report: Report, path: str | Path) -> Path:
    """Write :func:`config_rows` as CSV (an empty cell where a figure does not apply)."""
    return _write_rows(path, CONFIG_COLUMNS, config_rows(report))


def sample_rows(
    experiment: ExperimentRecord, samples: Sequence[SampleRecord]
) -> list[dict[str, Any]]:
    """One row per sample, its answer re-scored with the experiment's scorer (a sample
    whose session never finished is not correct)."""
    grade = Grader.of(experiment)
    return [
        {
            "config": s.config_id,
            "item": s.item_id,
            "repeat": s.repeat,
            "session_id": s.session_id,
            "status": s.status,
            "answer": s.answer,
            "correct": s.status in FINISHED and grade(s.answer, s.targets),
            "score": s.consensus_score,
            "cost": s.cost_usd,
            "tokens": None
            if s.input_tokens is None and s.output_tokens is None
            else (s.input_tokens or 0) + (s.output_tokens or 0),
            "wall_ms": s.wall_ms,
            "calls": s.calls_made,
        }
        for s in samples
    ]


def write_samples_csv(
    experiment: ExperimentRecord, samples: Sequence[SampleRecord], path: str | Path
) -> Path:
    """Write :func:`sample_rows` as CSV."""
    return _write_rows(path, SAMPLE_COLUMNS, sample_rows(experiment, samples))


def samples_frame(experiment: ExperimentRecord, samples: Sequence[SampleRecord]) -> pd.DataFrame:
    """The samples as a pandas DataFrame, one row each (:data:`SAMPLE_COLUMNS`);
    unknown numbers are NaN (``tokens`` is a nullable integer)."""
    import pandas as pd

    frame = pd.DataFrame(sample_rows(experiment, samples), columns=list(SAMPLE_COLUMNS))
    return frame.astype(
        {
            "repeat": "int64",
            "correct": "bool",
            "score": "float64",
            "cost": "float64",
            "tokens": "Int64",
            "wall_ms": "float64",
            "calls": "int64",
        }
    )


# ---- terminal ----------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _delta(value: float) -> str:
    """A difference of two proportions in percentage points."""
    return f"{100 * value:+.1f} pts"


def _interval(a: Interval | None) -> str:
    return "-" if a is None else f"{_pct(a.estimate)} [{_pct(a.low)}, {_pct(a.high)}]"


def _table(title: str, columns: Sequence[str]) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def render_report(report: Report, console: Console) -> None:
    """Print the report as rich tables: measured figures first, then the derived ones
    (titled "derived"), then what could not be derived and why."""
    console.print(
        f"Experiment {report.name} ({report.experiment_id}) on {report.dataset},"
        f" scorer {report.scorer}"
    )
    renders = (
        _configurations,
        _abstentions,
        _calibration,
        _independence,
        _remerge,
        _calls,
        _dropped,
        _cascades,
    )
    for render in renders:
        table = render(report)
        if table is not None:
            console.print(table)
    for s in report.analyses.skipped:
        console.print(f"not derived: {s.config_id} {s.analysis}: {s.reason}")


def _configurations(report: Report) -> Table:
    columns = ["config", "models", "n", "accuracy [95% CI]", "failed", "cost", "cost/item"]
    columns += ["tokens", "p50/p95 ms", "calls"]
    if report.baseline is not None:
        columns.append(f"vs {report.baseline}: b/c/p")
    table = _table("Configurations (measured)", columns)
    compared = {c.config_id: c for c in report.comparisons}
    for s in report.configurations:
        row = [
            s.config_id,
            " ".join(s.models),
            str(s.samples),
            _interval(s.accuracy),
            f"{s.failed}+{s.unfinished} unfinished" if s.unfinished else str(s.failed),
            f"${s.cost_usd:.4f}" + ("" if s.cost_known else "+?"),
            _num(s.cost_per_item, "${:.5f}"),
            f"{s.input_tokens + s.output_tokens}",
            f"{_num(s.latency_p50_ms)}/{_num(s.latency_p95_ms)}",
            str(s.calls),
        ]
        if report.baseline is not None:
            c = compared.get(s.config_id)
            row.append("baseline" if c is None else f"{c.b}/{c.c}/p={c.p_value:.3g}")
        table.add_row(*row)
    return table


def _abstentions(report: Report) -> Table | None:
    """Selective answering, for the configurations that abstained at least once."""
    rows = [s for s in report.configurations if s.abstained]
    if not rows:
        return None
    table = _table(
        "Selective answering (measured)",
        ["config", "abstained", "coverage [95% CI]", "accuracy answered [95% CI]", "accuracy all"],
    )
    for s in rows:
        table.add_row(
            s.config_id,
            f"{s.abstained}/{s.samples}",
            _interval(s.coverage),
            _interval(s.answered_accuracy),
            _interval(s.accuracy),
        )
    return table


def _calibration(report: Report) -> Table | None:
    if not report.calibration:
        return None
    baseline = next((c for c in report.configurations if c.config_id == report.baseline), None)
    base = baseline.accuracy if baseline is not None else None
    versus = f"; {report.baseline} answers all at {_pct(base.estimate)}" if base else ""
    table = _table(
        f"Consensus score as confidence (measured{versus})",
        ["config", "scored", "AUROC"]
        + [f"accuracy at >= {_pct(t)} coverage (score cut)" for t in COVERAGE_TARGETS]
        + ["all answered"],
    )
    for cal in report.calibration:
        cells = [
            f"{_interval(at.accuracy)} @ {_pct(at.coverage)} (>= {at.threshold:.2f})"
            + ("" if base is None else f" {_delta(at.accuracy.estimate - base.estimate)}")
            for at in cal.at_coverage
        ]
        every = cal.selective[-1] if cal.selective else None
        table.add_row(
            cal.config_id,
            str(cal.scored),
            _num(cal.auroc, "{:.3f}"),
            *cells,
            "-" if every is None else _pct(every.accuracy),
        )
    return table


def _independence(report: Report) -> Table | None:
    if not report.independence:
        return None
    table = _table(
        "Votes against independent errors",
        ["config", "voters", "mean phi", "if independent", "vote (derived)", "measured"],
    )
    for ind in report.independence:
        phis = [
            c.phi for c in report.correlations if c.config_id == ind.config_id and c.phi is not None
        ]
        table.add_row(
            ind.config_id,
            " ".join(ind.voters),
            _num(sum(phis) / len(phis) if phis else None, "{:.2f}"),
            _pct(ind.independent),
            _pct(ind.vote),
            _pct(ind.measured),
        )
    return table


def _remerge(report: Report) -> Table | None:
    rows = report.analyses.remerge
    if not rows:
        return None
    table = _table(
        "Re-merged stored answers (derived)",
        ["config", "method", "accuracy [95% CI]", "mean agreement"],
    )
    for r in rows:
        table.add_row(r.config_id, r.method, _interval(r.accuracy), f"{r.mean_score:.2f}")
    return table


def _calls(report: Report) -> Table | None:
    curves = report.analyses.calls
    if not curves:
        return None
    table = _table(
        "Accuracy vs number of calls (derived)",
        ["config", "k", "accuracy [95% bootstrap]", "cost/item"],
    )
    for curve in curves:
        for p in curve.points:
            table.add_row(
                curve.config_id,
                str(p.k),
                f"{_pct(p.accuracy)} [{_pct(p.low)}, {_pct(p.high)}]",
                f"${p.cost_per_item:.5f}",
            )
    return table


def _dropped(report: Report) -> Table | None:
    rows = report.analyses.dropped
    if not rows:
        return None
    table = _table(
        "Panel without one model (derived)",
        ["config", "dropped", "accuracy", "full panel", "delta", "b/c/p"],
    )
    for d in rows:
        m = d.mcnemar
        table.add_row(
            d.config_id,
            d.dropped,
            _pct(d.accuracy.estimate),
            _pct(d.full.estimate),
            _delta(d.delta),
            f"{m.b}/{m.c}/p={m.p_value:.3g}",
        )
    return table


def _cascades(report: Report) -> Table | None:
    rows = report.analyses.cascades
    if not rows:
        return None
    table = _table(
        "Cascade orderings (derived)", ["config", "order", "accuracy", "calls/item", "cost/item"]
    )
    for c in sorted(rows, key=lambda c: (c.config_id, -c.accuracy.estimate, c.mean_cost)):
        table.add_row(
            c.config_id,
            " > ".join(c.order),
            _pct(c.accuracy.estimate),
            f"{c.mean_calls:.2f}",
            f"${c.mean_cost:.5f}",
        )
    return table


# ---- plots -------------------------------------------------------------------------


def _figure() -> tuple[Any, Axes]:
    """A figure on its own Agg canvas: no pyplot, no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def frontier_points(report: Report) -> tuple[str, list[tuple[str, float, Interval]]]:
    """The frontier plot's x axis and points: cost per item, or calls per item when no
    configuration has a cost (free local models, or no price set)."""
    priced = any(s.cost_per_item for s in report.configurations)
    points = []
    for s in report.configurations:
        x = s.cost_per_item if priced else s.calls_per_item
        if s.accuracy is not None and x is not None:
            points.append((s.config_id, x, s.accuracy))
    return ("cost" if priced else "calls"), points


def _frontier(report: Report, path: Path) -> Path:
    figure, ax = _figure()
    axis, points = frontier_points(report)
    for config_id, x, a in points:
        ax.errorbar(
            [x],
            [a.estimate],
            yerr=[[a.estimate - a.low], [a.high - a.estimate]],
            fmt="o",
            capsize=3,
            label=f"{config_id} (measured)",
        )
    cascades = report.analyses.cascades
    if cascades:
        ax.scatter(
            [c.mean_cost if axis == "cost" else c.mean_calls for c in cascades],
            [c.accuracy.estimate for c in cascades],
            marker="x",
            color="grey",
            label="cascade orderings (derived)",
        )
    ax.set_xlabel("cost per item (USD)" if axis == "cost" else "calls per item (no cost recorded)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Accuracy vs {axis} (95% Wilson intervals)")
    ax.legend(fontsize="small")
    figure.savefig(path, format="png")
    return path


def _calls_curve(report: Report, path: Path) -> Path:
    figure, ax = _figure()
    for curve in report.analyses.calls:
        ks = [p.k for p in curve.points]
        (line,) = ax.plot(ks, [p.accuracy for p in curve.points], marker="o", label=curve.config_id)
        ax.fill_between(
            ks,
            [p.low for p in curve.points],
            [p.high for p in curve.points],
            alpha=0.2,
            color=line.get_color(),
        )
    ax.set_xlabel("calls per item (k of the stored n)")
    ax.set_ylabel("accuracy (derived)")
    ax.set_title("Accuracy vs number of calls (95% bootstrap bands)")
    if report.analyses.calls:
        ax.legend(fontsize="small")
    figure.savefig(path, format="png")
    return path


def _calibration_curve(report: Report, path: Path) -> Path:
    figure, ax = _figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for cal in report.calibration:
        full = [
            (b.mean_score, b.accuracy)
            for b in cal.bins
            if b.mean_score is not None and b.accuracy is not None
        ]
        ax.plot(
            [score for score, _ in full],
            [accuracy for _, accuracy in full],
            marker="o",
            label=f"{cal.config_id} (AUROC {_num(cal.auroc, '{:.2f}')})",
        )
    ax.set_xlabel("consensus score")
    ax.set_ylabel("accuracy")
    ax.set_title("Calibration of the consensus score")
    ax.legend(fontsize="small")
    figure.savefig(path, format="png")
    return path


def write_plots(report: Report, directory: str | Path) -> list[Path]:
    """Draw ``frontier.png`` (accuracy vs cost), ``calls.png`` (accuracy vs number of
    calls) and ``calibration.png`` into ``directory`` (created if missing)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return [
        _frontier(report, out / "frontier.png"),
        _calls_curve(report, out / "calls.png"),
        _calibration_curve(report, out / "calibration.png"),
    ]
