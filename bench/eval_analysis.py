"""Time of the zero-cost analyses and the report on a large experiment, in memory.

Builds an experiment's records the way the store's loader returns them (4
configurations x 1,000 items: one model, a 3-sample vote, a 3-model panel and a
5-model panel; 5% failed calls, 1% unfinished sessions), then times each analysis of
``thinktank.eval.analysis``, the whole ``build_report`` and its outputs. Prints the
figures; asserts nothing about time. Target (issue #14): a full re-analysis of 4,000
sessions in under 10 s on one core. Timings include scipy's first import (~0.5-1 s)
in the first analysis that uses it, as a ``thinktank eval report`` process pays it.

    python bench/eval_analysis.py [--items 1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path: put the repo root there
# (the records come from the tests' factory).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tests.eval_records_factory import random_records  # noqa: E402
from thinktank.eval import analysis  # noqa: E402
from thinktank.eval.output import report_json, write_csv, write_plots  # noqa: E402
from thinktank.eval.report import build_report  # noqa: E402

PANELS = [
    ("single", ["m1"], 1),
    ("vote3", ["m1"], 3),
    ("trio", ["m1", "m2", "m3"], 1),
    ("five", ["m1", "m2", "m3", "m4", "m5"], 1),
]


def timed(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    print(f"  {label:<28} {time.perf_counter() - start:7.3f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}")
    exp, samples = timed(
        "build records",
        lambda: random_records(args.seed, items=args.items, panels=PANELS, unfinished_rate=0.01),
    )
    calls = sum(len(s.calls) for s in samples)
    print(f"{len(samples)} samples, {calls} stored calls")
    print("analyses, one at a time:")
    answers = timed("prepare (normalise, score)", lambda: analysis.StoredAnswers(exp, samples))
    timed("re-merge, every method", lambda: analysis.remerge(answers))
    timed("threshold sweep", lambda: analysis.threshold_sweep(answers))
    timed("accuracy vs calls", lambda: analysis.accuracy_vs_calls(answers))
    timed("drop each model", lambda: analysis.drop_models(answers))
    timed("cascade orderings", lambda: analysis.cascade_orderings(answers))
    print("the whole report, from the records (fresh caches):")
    total = time.perf_counter()
    report = timed("build_report", lambda: build_report(exp, samples))
    timed("report_json", lambda: report_json(report))
    with tempfile.TemporaryDirectory() as tmp:
        timed("write_csv", lambda: write_csv(report, Path(tmp) / "c.csv"))
        timed("write_plots (3 PNGs)", lambda: write_plots(report, tmp))
    print(f"  {'total report + outputs':<28} {time.perf_counter() - total:7.3f} s")


if __name__ == "__main__":
    main()
