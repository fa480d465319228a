"""``thinktank eval report EXPERIMENT_ID``: an experiment's report rebuilt from the database.

This module owns the report's command and :func:`print_report`, the one function that
turns an experiment's records into what the command prints and writes (tables or
JSON on stdout, CSV files, PNG plots); ``thinktank eval FILE`` calls it too after a
run. The records come from :func:`thinktank.eval.store_read.read_experiment`; nothing
here queries the store itself. Messages about files written go to stderr, so ``--json``
output pipes cleanly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from thinktank.cli._shared import EXIT_BAD_INPUT, _db_option, _fail, _json_option, _run_async
from thinktank.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from thinktank.eval.records import ExperimentRecord, SampleRecord
    from thinktank.eval.report import Report

__all__ = ["print_report", "read_records", "report_command", "report_options", "write_or_fail"]

_RESEARCH_HINT = "the report needs the research extra: pip install 'thinktank[research]'"


def print_report(
    experiment: ExperimentRecord,
    samples: Sequence[SampleRecord],
    *,
    as_json: bool = False,
    csv_path: Path | None = None,
    samples_csv: Path | None = None,
    plots_dir: Path | None = None,
    console: Console,
) -> Report:
    """Build the report and print it on ``console`` (rich tables, or JSON with
    ``as_json``); write the CSV files and plots asked for, naming each on stderr.

    Raises:
        ScorerError: the experiment's scorer cannot be built or rejects a target.
        UsageError: scipy, pandas or matplotlib (the ``research`` extra) is missing.
    """
    try:
        from thinktank.eval.output import (
            render_report,
            report_json,
            write_csv,
            write_plots,
            write_samples_csv,
        )
        from thinktank.eval.report import build_report

        report = build_report(experiment, samples)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in ("scipy", "pandas", "numpy"):
            raise
        raise UsageError(_RESEARCH_HINT) from None
    if as_json:
        # Raw text on the console's file: rich would wrap and colour it.
        console.file.write(json.dumps(report_json(report), indent=2) + "\n")
    else:
        render_report(report, console)
    written: list[Path] = []
    if csv_path is not None:
        written.append(write_csv(report, csv_path))
    if samples_csv is not None:
        written.append(write_samples_csv(experiment, samples, samples_csv))
    if plots_dir is not None:
        try:
            written.extend(write_plots(report, plots_dir))
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.partition(".")[0] != "matplotlib":
                raise
            raise UsageError(_RESEARCH_HINT) from None
    for path in written:
        click.echo(f"wrote {path}", err=True)
    return report


_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def report_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--csv``, ``--samples-csv`` and ``--plots``: what ``eval report`` and ``eval run``
    write besides the tables."""
    options: list[_Decorator] = [
        click.option(
            "--csv",
            "csv_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Write one row per configuration with every figure to FILE.",
        ),
        click.option(
            "--samples-csv",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Write one row per sample (item x configuration x repeat) to FILE.",
        ),
        click.option(
            "--plots",
            "plots_dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Draw frontier.png, calls.png and calibration.png into DIR.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def write_or_fail(write: Callable[[], Report]) -> Report:
    """Run ``write`` (a :func:`print_report` call); a file it cannot write or a missing
    extra is a one-line error (exit 2), never a traceback."""
    try:
        return write()
    except UsageError as exc:
        _fail(str(exc).splitlines())
    except OSError as exc:
        _fail([f"{exc.filename}: cannot write: {exc.strerror}"], EXIT_BAD_INPUT)


def read_records(db: str | None, experiment_id: str) -> tuple[ExperimentRecord, list[SampleRecord]]:
    """An experiment's records from the database, opened read-only (errors: one line)."""
    from thinktank.eval import read_records as read

    return _run_async(lambda: read(experiment_id, store=db))


@click.command("report")
@click.argument("experiment_id")
@_db_option
@_json_option
@report_options
def report_command(
    experiment_id: str,
    db: str | None,
    as_json: bool,
    csv_path: Path | None,
    samples_csv: Path | None,
    plots_dir: Path | None,
) -> None:
    """Rebuild an experiment's report from the database alone: no model is called.

    EXPERIMENT_ID may be a unique prefix (``thinktank eval list`` shows the ids).
    """
    from thinktank.cli.render import _console as make_console

    experiment, samples = read_records(db, experiment_id)
    write_or_fail(
        lambda: print_report(
            experiment,
            samples,
            as_json=as_json,
            csv_path=csv_path,
            samples_csv=samples_csv,
            plots_dir=plots_dir,
            console=make_console(),
        )
    )
