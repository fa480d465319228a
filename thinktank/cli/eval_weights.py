"""``thinktank eval weights EXPERIMENT_ID``: model weights fitted on a stored experiment.

This module owns the command: it reads the experiment's records
(:func:`thinktank.cli.eval_report.read_records`), fits the weights
(:mod:`thinktank.eval.weights`), prints each model's reliability and, with
``--holdout``, the held-out check, and writes the weights file. No model is called.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from thinktank.cli._shared import EXIT_BAD_INPUT, _db_option, _fail
from thinktank.cli.eval_report import read_records
from thinktank.errors import DatasetError, UsageError

if TYPE_CHECKING:
    from thinktank.eval.records import ExperimentRecord
    from thinktank.eval.weights import FittedWeights, HeldOut

__all__ = ["weights_command"]


def _domains(experiment: ExperimentRecord, dataset: Path | None) -> dict[str, str]:
    """Item id -> its ``domain`` input, from ``dataset`` or the experiment's own file."""
    from thinktank.eval.dataset import load_dataset, shipped
    from thinktank.eval.experiment import SHIPPED_PREFIX
    from thinktank.eval.weights import DOMAIN_FIELD

    source = experiment.dataset
    path = dataset or (
        shipped(source.removeprefix(SHIPPED_PREFIX))
        if source.startswith(SHIPPED_PREFIX)
        else Path(source)
    )
    if not path.is_file():
        raise UsageError(
            f"{path}: no such dataset file for --by-domain; give it with --dataset FILE"
        )
    items = load_dataset(path)
    domains = {i.id: str(i.inputs[DOMAIN_FIELD]) for i in items if DOMAIN_FIELD in i.inputs}
    if not domains:
        raise UsageError(f"{path}: no item has a {DOMAIN_FIELD!r} field for --by-domain")
    return domains


def _print(fitted: FittedWeights, checks: list[HeldOut] | None, fit_on: int) -> None:
    from rich.table import Table

    from thinktank.cli.render import _console as make_console

    console = make_console()
    tables = [(None, fitted.models), *fitted.domains.items()]
    for domain, models in tables:
        where = "" if domain is None else f", domain {domain}"
        title = f"Model reliability ({fit_on} items{where}, K = {fitted.alternatives:.3g})"
        table = Table(title=title, title_justify="left")
        for column in ("model", "answered", "correct", "p (smoothed)", "weight"):
            table.add_column(column)
        for r in models:
            table.add_row(r.model, str(r.answered), str(r.correct), f"{r.p:.3f}", f"{r.weight:.3f}")
        console.print(table)
    if checks is None:
        return
    table = Table(title="Held-out check (derived)", title_justify="left")
    for column in ("config", "n", "equal weights [95% CI]", "fitted weights [95% CI]", "b/c/p"):
        table.add_column(column)
    for c in checks:
        table.add_row(
            c.config_id,
            str(c.n),
            f"{100 * c.equal.estimate:.1f}% [{100 * c.equal.low:.1f}, {100 * c.equal.high:.1f}]",
            f"{100 * c.weighted.estimate:.1f}% "
            f"[{100 * c.weighted.low:.1f}, {100 * c.weighted.high:.1f}]",
            f"{c.mcnemar.b}/{c.mcnemar.c}/p={c.mcnemar.p_value:.3g}",
        )
    console.print(table)
    if not checks:
        console.print("no configuration of two or more models to check")


def _alternatives(value: str) -> float | Literal["auto"]:
    """``--alternatives``: ``auto`` or a number of answers >= 2.

    Raises:
        UsageError: anything else.
    """
    if value == "auto":
        return "auto"
    try:
        k = float(value)
    except ValueError:
        k = math.nan
    if not k >= 2 or math.isinf(k):
        raise UsageError(f"--alternatives must be 'auto' or a number >= 2, not {value!r}")
    return k


@click.command("weights")
@click.argument("experiment_id")
@_db_option
@click.option(
    "--config",
    "config_ids",
    multiple=True,
    help="Fit on (and check) these configurations only; repeatable (default all).",
)
@click.option(
    "--holdout",
    type=float,
    default=None,
    help="Hold out this share of the items (e.g. 0.5): fit on the rest, check on them.",
)
@click.option("--seed", type=int, default=0, help="Seed of the held-out split (default 0).")
@click.option("--by-domain", is_flag=True, help="Also fit per item 'domain' field.")
@click.option(
    "--dataset",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The dataset file, for --by-domain (default the experiment's).",
)
@click.option(
    "--alternatives",
    default="2",
    metavar="K|auto",
    help="Possible answers per item, K >= 2 (default 2: the log-odds rule); 'auto'"
    " estimates K from how often two wrong answers to one item coincide.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the weights to FILE (.toml, .yaml or .json).",
)
def weights_command(
    experiment_id: str,
    db: str | None,
    config_ids: tuple[str, ...],
    holdout: float | None,
    seed: int,
    by_domain: bool,
    dataset: Path | None,
    alternatives: str,
    output: Path | None,
) -> None:
    """Fit per-model weights on a stored experiment's answers: no model is called.

    \b
    p = (correct + 1) / (answered + 2) of each model's answered calls, scored with the
    experiment's scorer; weight = log((K - 1) p / (1 - p)) for K possible answers
    (--alternatives), at least 0.01 (a model no better than chance). The file's
    `weights` go into a step's or a configuration's `weights:`; its `models` (most
    reliable first) into a cascade step's `models:`.
    With --holdout the weights are fitted on the other items only, and the held-out
    items re-merged with equal and with fitted weights (Wilson 95%, exact McNemar).
    """
    from thinktank.eval.analysis import StoredAnswers
    from thinktank.eval.weights import (
        check_weights_path,
        fit_weights,
        held_out,
        split_items,
        weights_document,
        write_weights,
    )

    try:
        k = _alternatives(alternatives)
        if output is not None:
            check_weights_path(output)
        experiment, samples = read_records(db, experiment_id)
        known = {c.id for c in experiment.configurations}
        unknown = [c for c in config_ids if c not in known]
        if unknown:
            raise UsageError(
                f"no configuration {', '.join(map(repr, unknown))} in experiment"
                f" {experiment.id} (it has {', '.join(sorted(known))})"
            )
        configs = set(config_ids) or None
        domains = _domains(experiment, dataset) if by_domain else None
        answers = StoredAnswers(experiment, samples)
        items = {p.sample.item_id for pools in answers.pools.values() for p in pools}
        fit_items, test_items = (
            split_items(items, holdout, seed) if holdout is not None else (sorted(items), [])
        )
        fitted = fit_weights(
            answers, set(fit_items), configs=configs, domains=domains, alternatives=k
        )
        checks = (
            held_out(answers, fitted, set(test_items), configs=configs, domains=domains)
            if holdout is not None
            else None
        )
        _print(fitted, checks, len(fitted.items))
        if output is not None:
            write_weights(weights_document(fitted, experiment.id), output)
            click.echo(f"wrote {output}", err=True)
    except (UsageError, DatasetError) as exc:
        _fail(str(exc).splitlines())
    except OSError as exc:
        _fail([f"{exc.filename}: cannot write: {exc.strerror}"], EXIT_BAD_INPUT)
