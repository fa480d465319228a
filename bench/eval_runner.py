"""Experiment runner benchmark: the runner's overhead per sample, and the time to read a
whole experiment back (``thinktank.eval.store_read.read_experiment``).

Run from the repo root: ``python bench/eval_runner.py`` (1,000 items x 4
configurations = 4,000 sessions, a few minutes on 2 cores), ``--items N``,
``--concurrency N``.

The models answer at once (bench/store.py's in-process ``InstantModel``, no HTTP), so the
run's wall time is the runner's and the engine's overhead: planning, one session per
sample (its rows, its lease, its tag in ``thinktank_experiment_samples``), scoring. The
baseline runs the very same sessions with ``thinktank.run`` into another fresh SQLite
file, at the same concurrency and with nothing of the experiment: the difference is what
the runner itself adds per sample.
The configurations are one model, two models (all, majority), three models (all,
majority) and one model with 3 samples. The database is a fresh SQLite file. A rerun
(every sample scored again from the store, no call) the read of all sessions and the full
report on them (every zero-cost analysis: re-merges, threshold sweep, accuracy against
calls, panels without a model, cascade orderings, calibration, correlations) are timed
after it.
"""

# ruff: noqa: E402 - sys.path is fixed below, before any other import.
from __future__ import annotations

import os
import sys

# ``python bench/eval_runner.py`` puts bench/ first on sys.path, where a sibling
# script's name (http.py) would shadow the standard library: the repo root instead.
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH_DIR]
sys.path.insert(0, os.path.dirname(_BENCH_DIR))

import argparse
import json
import tempfile
import time
from pathlib import Path

import anyio

import thinktank
from bench._report import cpu_model, version
from bench.store import InstantModel
from thinktank.eval.dataset import load_dataset
from thinktank.eval.experiment import ExperimentSpec, configurations, load_experiment
from thinktank.eval.report import build_report
from thinktank.eval.runner import run_experiment, session_for
from thinktank.eval.store_read import read_experiment
from thinktank.providers.base import ModelClient
from thinktank.store import Store


def write_files(tmp: Path, items: int) -> Path:
    rows = [{"id": f"i{n}", "q": f"question {n}", "target": "Paris"} for n in range(items)]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    experiment = {
        "name": "bench",
        "dataset": "data.jsonl",
        "prompt": "Q: {{ q }}",
        "grid": [
            {"models": ["m1"]},
            {"models": ["m1", "m2"]},
            {"models": ["m1", "m2", "m3"]},
            {"models": ["m1"], "samples": 3},
        ],
        "scorer": "normalized",
    }
    path = tmp / "exp.json"
    path.write_text(json.dumps(experiment))
    return path


async def plain_runs(
    spec: ExperimentSpec, models: dict[str, ModelClient], db: str, concurrency: int
) -> int:
    """The experiment's sessions run with thinktank.run alone, ``concurrency`` at a time."""
    sessions = [
        session_for(spec, config, item, repeat)
        for config in configurations(spec)
        for item in load_dataset(spec.dataset_path())
        for repeat in range(1, spec.repeats + 1)
    ]
    limiter = anyio.CapacityLimiter(concurrency)
    async with await Store.open(db) as store:

        async def one(session: thinktank.SessionSpec, inputs: dict[str, object]) -> None:
            async with limiter:
                await thinktank.run(session, inputs=inputs, store=store, models=models)

        async with anyio.create_task_group() as tg:
            for session, inputs in sessions:
                tg.start_soon(one, session, inputs)
    return len(sessions)


async def main(items: int, concurrency: int) -> None:
    names = ["m1", "m2", "m3", "m1#1", "m1#2", "m1#3"]
    models = {n: InstantModel(n, "Paris") for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_experiment(write_files(Path(tmp), items))
        async with await Store.open(str(Path(tmp) / "bench.db")) as store:
            start = time.perf_counter()
            summary = await run_experiment(
                spec, store=store, models=models, concurrency=concurrency
            )
            run_s = time.perf_counter() - start
            start = time.perf_counter()
            again = await run_experiment(spec, store=store, models=models)
            rerun_s = time.perf_counter() - start
            start = time.perf_counter()
            experiment, samples = await read_experiment(store, summary.experiment_id)
            read_s = time.perf_counter() - start
        start = time.perf_counter()
        build_report(experiment, samples)
        report_s = time.perf_counter() - start
        start = time.perf_counter()
        plain = await plain_runs(spec, models, str(Path(tmp) / "plain.db"), concurrency)
        plain_s = time.perf_counter() - start
    n = summary.total
    print(
        f"cpu: {cpu_model()}; sqlalchemy {version('sqlalchemy')}; python {sys.version.split()[0]}"
    )
    print(f"samples: {n} ({items} items x 4 configurations), calls {summary.calls:,}")
    per = 1000 * run_s / n
    print(f"run:     {run_s:8.2f} s  {per:6.2f} ms per sample (concurrency {concurrency})")
    print(
        f"rerun:   {rerun_s:8.2f} s  {1000 * rerun_s / n:6.2f} ms per sample ({again.calls} calls)"
    )
    calls = sum(len(s.calls) for s in samples)
    print(f"read:    {read_s:8.2f} s  {len(samples)} samples, {calls:,} calls")
    print(f"report:  {report_s:8.2f} s  every figure and zero-cost analysis of those samples")
    print(
        f"plain:   {plain_s:8.2f} s  {1000 * plain_s / plain:6.2f} ms per session "
        f"(the same {plain} sessions by thinktank.run, no experiment)"
    )
    print(f"runner overhead: {1000 * (run_s - plain_s) / n:+.2f} ms per sample")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    anyio.run(main, args.items, args.concurrency, backend="asyncio")
