"""The ``thinktank eval`` commands: run an experiment into the store, list experiments.

``thinktank eval FILE`` (the same as ``thinktank eval run FILE``) prints what the run
will call and cost, asks on a terminal (``--yes`` skips it), runs every item x
configuration x repeat as a stored session with live progress on stderr (done/total,
accuracy, cost, ETA), and prints the experiment id and a one-line summary. Run it again
to continue after a kill or Ctrl-C: nothing answered is paid again.

Exit codes, as the other commands: 0 every sample answered; 1 the budget stopped the
run, a sample could not run, or the database failed; 2 bad input (one line per
problem); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from thinktank.cli._shared import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _concurrency_option,
    _db_option,
    _fail,
    _json_option,
    _no_progress_option,
    _run_async,
)
from thinktank.cli.eval_report import (
    print_report,
    read_records,
    report_command,
    report_options,
    write_or_fail,
)
from thinktank.cli.eval_weights import weights_command
from thinktank.cli.queue import check_pool
from thinktank.errors import SpecErrors

if TYPE_CHECKING:
    from rich.live import Live

    from thinktank.eval.runner import Estimate, Plan, Progress, RunSummary

__all__ = ["eval_group"]


class _RunByDefault(click.Group):
    """A group whose default command is ``run``: ``eval FILE`` is ``eval run FILE``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("eval", cls=_RunByDefault)
def eval_group() -> None:
    """Research experiments: a dataset x a grid of configurations x a scorer.

    \b
    thinktank eval experiment.yaml            estimate, confirm, run (continues a killed run)
    thinktank eval experiment.yaml --limit 5  a quick look at the first 5 items
    thinktank eval list                       stored experiments
    thinktank eval report ID --plots DIR      the report again, from the database alone
    thinktank eval weights ID --holdout 0.5   model weights fitted on stored answers
    """


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _estimate_line(plan: Plan) -> str:
    e: Estimate = plan.estimate
    left = e.samples - e.stored
    stored = f" ({e.stored} already answered)" if e.stored else ""
    return (
        f"{plan.spec.name}: {len(plan.items)} items, {e.samples} samples{stored}; "
        f"to run: {left} samples, at most {e.calls:,} calls, cost at most {_money(e.cost_usd)}"
    )


class _EvalProgress:
    """Live progress of an experiment on stderr: a rich line redrawn on a terminal,
    a plain line every tenth of the samples when piped."""

    def __init__(self, *, enabled: bool, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.last: Progress | None = None
        self._live: Live | None = None
        self._printed = -1
        self._started = time.perf_counter()

    def __enter__(self) -> _EvalProgress:
        if self.enabled and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, markup=False, highlight=False)
            self._live = Live(
                console=console, get_renderable=self._render, refresh_per_second=4, transient=True
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def line(self) -> str:
        p = self.last
        if p is None:
            return "starting"
        accuracy = f"{100 * p.correct / p.scored:.1f}%" if p.scored else "-"
        left = p.total - p.done
        elapsed = time.perf_counter() - self._started
        eta = _duration(left * elapsed / p.new_done) if p.new_done and left else "-"
        return (
            f"{p.done}/{p.total} samples  accuracy {accuracy}  cost {_money(p.cost_usd)}"
            f"  calls {p.calls:,}  ETA {eta}"
        )

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        row = Table.grid(padding=(0, 1))
        done, total = (self.last.done, self.last.total) if self.last else (0, 0)
        row.add_row(ProgressBar(total=max(total, 1), completed=done, width=30), Text(self.line()))
        return row

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        if not self.enabled or self._live is not None:
            return
        tenth = progress.done * 10 // max(progress.total, 1)
        if tenth != self._printed:
            self._printed = tenth
            click.echo(self.line(), err=True)


def _summary_line(summary: RunSummary) -> str:
    accuracy = "-" if summary.accuracy is None else f"{100 * summary.accuracy:.1f}%"
    parts = [
        f"experiment {summary.experiment_id}: {summary.answered}/{summary.total} samples",
        f"accuracy {accuracy} ({summary.correct:g}/{summary.scored})",
        f"{summary.calls:,} calls, {_money(summary.cost_usd)} this run",
    ]
    if summary.abstained:
        parts.append(f"{summary.abstained} abstained (no consensus; not scored)")
    if summary.reused or summary.resumed:
        parts.append(f"{summary.reused} already answered, {summary.resumed} resumed")
    line = "; ".join(parts)
    return f"{line}; stopped: {summary.stopped}" if summary.stopped else line


@eval_group.command("run")
@click.argument("experiment_file", type=click.Path(dir_okay=False))
@_db_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="The first N items only.")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    help="N items drawn at random (reproducible with --seed).",
)
@click.option("--seed", type=int, default=None, help="Seed of --sample's draw (default 0).")
@_concurrency_option
@click.option("--new", is_flag=True, help="Start a new experiment instead of continuing.")
@click.option("--yes", "-y", is_flag=True, help="Run without asking after the estimate.")
@click.option("--dry-run", is_flag=True, help="Print the estimate only; call nothing.")
@_no_progress_option
@_json_option
@click.option("--no-report", is_flag=True, help="Print the one-line summary only.")
@click.option(
    "--queue",
    is_flag=True,
    help="Run the sessions on the `thinktank worker` pool of --db; --concurrency is "
    "then the samples waited for at once (the workers' own limit how many run).",
)
@report_options
def run_command(
    experiment_file: str,
    db: str | None,
    limit: int | None,
    sample: int | None,
    seed: int | None,
    concurrency: int,
    new: bool,
    yes: bool,
    dry_run: bool,
    no_progress: bool,
    as_json: bool,
    no_report: bool,
    queue: bool,
    csv_path: Path | None,
    samples_csv: Path | None,
    plots_dir: Path | None,
) -> None:
    """Run EXPERIMENT_FILE into the database, or continue it, then print its report.

    The report is the one ``thinktank eval report ID`` rebuilds from the database: every
    configuration with its interval, cost, tokens, latency and calls, the comparison with
    the baseline, calibration, error correlation and the figures derived from stored
    answers (re-merges, threshold sweep, accuracy against calls, panels without a model,
    cascade orderings), labelled ``derived``.
    """
    from thinktank.eval.experiment import load_experiment
    from thinktank.eval.runner import plan_experiment, run_plan
    from thinktank.store._arg import DEFAULT_STORE

    _check_run_options(db, seed=seed, sample=sample, queue=queue)
    try:
        spec = load_experiment(experiment_file)
    except SpecErrors as exc:
        _fail(exc.lines())
    store: Any = db if db is not None else DEFAULT_STORE

    async def plan_it() -> Plan:
        return await plan_experiment(
            spec, store=store, limit=limit, sample=sample, seed=seed, new=new,
            source=experiment_file,
        )  # fmt: skip

    plan = _run_async(plan_it)
    if as_json and dry_run:
        click.echo(json.dumps(dataclasses.asdict(plan.estimate), indent=2))
        sys.exit(EXIT_OK)
    click.echo(_estimate_line(plan), err=True)
    if dry_run:
        sys.exit(EXIT_OK)
    if not yes and sys.stdin.isatty() and not click.confirm("Run it?", default=True, err=True):
        sys.exit(EXIT_OK)
    progress = _EvalProgress(enabled=not no_progress)

    async def go() -> RunSummary:
        with progress:
            if queue:
                return await _run_on_pool(plan, db, concurrency, new, progress)
            return await run_plan(
                plan, store=store, concurrency=concurrency, new=new, on_progress=progress
            )

    try:
        summary = _run_async(go)
    except KeyboardInterrupt:
        where = f"experiment {progress.last.experiment_id}: " if progress.last else ""
        click.echo(
            f"interrupted: {where}{progress.line()} (answered samples are kept; run "
            f"`thinktank eval {experiment_file}` again to continue)",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    for line in summary.errors:
        click.echo(f"error: {line}", err=True)
    report: dict[str, Any] | None = None
    if not no_report:
        report = _report(summary.experiment_id, db, as_json, csv_path, samples_csv, plots_dir)
    if as_json:
        body = {**dataclasses.asdict(summary), "accuracy": summary.accuracy}
        click.echo(json.dumps(body if report is None else {**body, "report": report}))
    else:
        click.echo(_summary_line(summary))
    done = summary.answered == summary.total and not summary.errors
    sys.exit(EXIT_OK if done else EXIT_FAILED)


def _check_run_options(
    db: str | None, *, seed: int | None, sample: int | None, queue: bool
) -> None:
    """Exit 2 with one line on options that cannot go together, before anything runs."""
    if seed is not None and sample is None:
        _fail(["--seed draws items for --sample: give --sample N too"])
    if queue:
        check_pool(db)


async def _run_on_pool(
    plan: Plan, db: str | None, concurrency: int, new: bool, progress: _EvalProgress
) -> RunSummary:
    """``eval run --queue``: the plan's sessions run on the workers of ``db``."""
    from thinktank.distributed.executor import DistributedExecutor
    from thinktank.eval.runner import run_plan

    async with DistributedExecutor(db=db) as pool:
        return await run_plan(
            plan,
            store=pool.store,
            concurrency=concurrency,
            new=new,
            on_progress=progress,
            executor=pool,
        )


def _report(
    experiment_id: str,
    db: str | None,
    as_json: bool,
    csv_path: Path | None,
    samples_csv: Path | None,
    plots_dir: Path | None,
) -> dict[str, Any] | None:
    """Print the run's report (tables), or return it as JSON for the run's ``--json``."""
    from rich.console import Console

    from thinktank.cli.render import _console as make_console
    from thinktank.eval.output import report_json

    try:
        import numpy  # noqa: F401
        import scipy.stats  # noqa: F401
    except ImportError:
        # The run itself succeeded and is stored: say how to get the report, and let the
        # exit code tell how the run went.
        click.echo(
            "note: no report: it needs the research extra (pip install 'thinktank[research]'),"
            f" then: thinktank eval report {experiment_id}",
            err=True,
        )
        return None
    experiment, samples = read_records(db, experiment_id)
    # With --json the tables are not printed: the report goes into the one JSON object.
    console = Console(file=io.StringIO()) if as_json else make_console()
    report = write_or_fail(
        lambda: print_report(
            experiment,
            samples,
            csv_path=csv_path,
            samples_csv=samples_csv,
            plots_dir=plots_dir,
            console=console,
        )
    )
    return report_json(report) if as_json else None


eval_group.add_command(report_command)
eval_group.add_command(weights_command)


@eval_group.command("list")
@_db_option
@_json_option
@click.option("--last", is_flag=True, help="Only the newest experiment.")
@click.option(
    "--quiet", "-q", is_flag=True, help="Only ids, one a line: eval report $(... -q --last)."
)
def list_command(db: str | None, as_json: bool, last: bool, quiet: bool) -> None:
    """List stored experiments, newest first."""
    from thinktank.eval.store_read import list_experiments
    from thinktank.store import Store

    async def go() -> list[dict[str, Any]]:
        async with await Store.open(db, read_only=True) as store:
            return await list_experiments(store)

    rows = _run_async(go)
    if last:
        rows = rows[:1]
    if quiet:
        for row in rows:
            click.echo(row["id"])
        return
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no experiments stored")
        return
    for row in rows:
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        click.echo(
            f"{row['id']}  {row['updated_at']:%Y-%m-%d %H:%M}  {row['name']}  "
            f"{row['answered']}/{row['samples']} answered  accuracy {accuracy}"
        )
