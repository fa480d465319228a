"""Pair two stored experiments by item: the same configuration asked two ways.

An experiment compares configurations under one prompt; a prompt comparison needs two
experiments that differ in the prompt alone (the same dataset, models and decoding).
This script reads both from the database, scores every answer again with each
experiment's own scorer, pairs the samples by (item, repeat) and prints, for each
configuration id the two share (or the ``--configs`` given), the accuracy of each
with its 95% Wilson interval and an exact McNemar test on the pairs. No model is
called.

    python bench/prompt_pairs.py EXPERIMENT_A EXPERIMENT_B [--db PATH] [--configs a,b]

Issue #15 uses it twice: #14's capitals run (no answer format) against #15's
``equivalence-capitals`` run (``answer_format: short``), and
``experiments/times-tables-no-instruction.yaml`` against ``experiments/times-tables.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402

import thinktank.eval  # noqa: E402
from thinktank.eval.output import samples_frame  # noqa: E402
from thinktank.eval.stats import Interval, mcnemar, wilson  # noqa: E402


def _correct(experiment: str, db: str) -> tuple[str, dict[str, dict[tuple[str, int], bool]]]:
    """The experiment's name and, per configuration, each (item, repeat)'s correctness."""
    record, samples = anyio.run(
        lambda: thinktank.eval.read_records(experiment, store=db), backend="asyncio"
    )
    frame = samples_frame(record, samples)
    by_config: dict[str, dict[tuple[str, int], bool]] = {}
    for row in frame.itertuples(index=False):
        by_config.setdefault(str(row.config), {})[(str(row.item), int(row.repeat))] = bool(
            row.correct
        )
    return record.name, by_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the first experiment's id (or a unique prefix)")
    parser.add_argument("b", help="the second experiment's id (or a unique prefix)")
    parser.add_argument("--db", default="thinktank.db", help="database URL or SQLite path")
    parser.add_argument("--configs", help="configuration ids to pair (default: all shared)")
    args = parser.parse_args()
    name_a, a = _correct(args.a, args.db)
    name_b, b = _correct(args.b, args.db)
    configs = args.configs.split(",") if args.configs else [c for c in a if c in b]
    print(f"A = {name_a} ({args.a})\nB = {name_b} ({args.b})")
    print(
        f"{'config':<16} {'pairs':>5}  {'A accuracy [95% CI]':<24} "
        f"{'B accuracy [95% CI]':<24} b/c  p"
    )
    for config in configs:
        keys = sorted(set(a.get(config, {})) & set(b.get(config, {})))
        if not keys:
            print(f"{config:<16} no item answered in both")
            continue
        right_a = [a[config][k] for k in keys]
        right_b = [b[config][k] for k in keys]
        only_a = sum(x and not y for x, y in zip(right_a, right_b, strict=True))
        only_b = sum(y and not x for x, y in zip(right_a, right_b, strict=True))
        test = mcnemar(only_a, only_b)
        ia, ib = wilson(sum(right_a), len(keys)), wilson(sum(right_b), len(keys))
        print(
            f"{config:<16} {len(keys):>5}  "
            f"{_interval(ia):<24} {_interval(ib):<24} {only_a}/{only_b}  {test.p_value:.3g}"
        )


def _interval(value: Interval) -> str:
    return f"{100 * value.estimate:.1f}% [{100 * value.low:.1f}, {100 * value.high:.1f}]"


if __name__ == "__main__":
    main()
