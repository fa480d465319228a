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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from thinktank.errors import ThinkTankError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from thinktank.eval.records import ExperimentRecord, SampleRecord
    from thinktank.eval.report import Report

__all__ = ["print_report", "report_command"]

_EXIT_FAILED = 1
_EXIT_BAD_INPUT = 2


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
    """
    from thinktank.eval.output import (
        render_report,
        report_json,
        write_csv,
        write_plots,
        write_samples_csv,
    )
    from thinktank.eval.report import build_report

    report = build_report(experiment, samples)
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
        written.extend(write_plots(report, plots_dir))
    for path in written:
        click.echo(f"wrote {path}", err=True)
    return report


@click.command("report")
@click.argument("experiment_id")
@click.option(
    "--db",
    "db",
    envvar="THINKTANK_DB",
    default=None,
    metavar="URL|PATH",
    help="Database URL or SQLite file (default: $THINKTANK_DB, else ./thinktank.db).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write one row per configuration with every figure to FILE.",
)
@click.option(
    "--samples-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write one row per sample (item x configuration x repeat) to FILE.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Draw frontier.png, calls.png and calibration.png into DIR.",
)
def report_command(
    experiment_id: str,
    db: str | None,
    as_json: bool,
    csv_path: Path | None,
    samples_csv: Path | None,
    plots_dir: Path | None,
) -> None:
    """Rebuild an experiment's report from the database alone: no model is called."""
    import anyio

    from thinktank.cli.render import _console as make_console
    from thinktank.eval.store_read import read_experiment  # type: ignore[import-not-found]
    from thinktank.store import Store

    async def go() -> tuple[ExperimentRecord, list[SampleRecord]]:
        async with await Store.open(db, read_only=True) as store:
            found: tuple[ExperimentRecord, list[SampleRecord]] = await read_experiment(
                store, experiment_id
            )
            return found

    try:
        experiment, samples = anyio.run(go, backend="asyncio")
        print_report(
            experiment,
            samples,
            as_json=as_json,
            csv_path=csv_path,
            samples_csv=samples_csv,
            plots_dir=plots_dir,
            console=make_console(),
        )
    except UsageError as exc:
        _fail(str(exc), _EXIT_BAD_INPUT)
    except ThinkTankError as exc:
        _fail(str(exc), _EXIT_FAILED)
    except OSError as exc:
        _fail(f"{exc.filename}: cannot write: {exc.strerror}", _EXIT_BAD_INPUT)


def _fail(message: str, code: int) -> None:
    for line in message.splitlines():
        click.echo(f"error: {line}", err=True)
    sys.exit(code)
