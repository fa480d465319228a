"""Experiments over models, modes and thresholds: ``thinktank eval`` from Python.

An experiment file (:mod:`thinktank.eval.experiment`) names a dataset
(:mod:`~thinktank.eval.dataset`), a prompt or session, a grid of configurations and a
scorer (:mod:`~thinktank.eval.scoring`). :func:`run_experiment` (:mod:`~thinktank.eval.runner`)
stores every item x configuration x repeat as a session and continues a killed run without
paying twice; :func:`read_experiment` (:mod:`~thinktank.eval.store_read`) reads it back as
records (:mod:`~thinktank.eval.records`), from which :func:`build_report`
(:mod:`~thinktank.eval.report`, :mod:`~thinktank.eval.analysis`,
:mod:`~thinktank.eval.stats`) computes every figure with no model call, and :func:`load`
gives the samples as a pandas DataFrame.

The names here are imported on first use (PEP 562): ``import thinktank.eval`` loads none
of the runner, the store, scipy or pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd  # type: ignore[import-untyped]  # no stubs in the research extra

    from thinktank.eval.experiment import load_experiment
    from thinktank.eval.records import ExperimentRecord, SampleRecord
    from thinktank.eval.report import build_report
    from thinktank.eval.runner import run_experiment
    from thinktank.eval.store_read import list_experiments, read_experiment
    from thinktank.store import Store

__all__ = [
    "build_report",
    "list_experiments",
    "load",
    "load_async",
    "load_experiment",
    "read_experiment",
    "read_records",
    "run_experiment",
]

_LAZY = {
    "build_report": "thinktank.eval.report",
    "list_experiments": "thinktank.eval.store_read",
    "load_experiment": "thinktank.eval.experiment",
    "read_experiment": "thinktank.eval.store_read",
    "run_experiment": "thinktank.eval.runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


async def read_records(
    experiment_id: str, *, store: Store | str | Path | None = None
) -> tuple[ExperimentRecord, list[SampleRecord]]:
    """A stored experiment and its samples as records (:mod:`thinktank.eval.records`).

    Args:
        experiment_id: The id, or a unique prefix of it (``thinktank eval list``).
        store: A :class:`~thinktank.store.Store` (left open), a database URL or SQLite
            path, or None for ``$THINKTANK_DB`` / ``./thinktank.db``. Opened read-only.

    Raises:
        UnknownExperimentError: no experiment has that id.
        NoDatabaseError: the database does not exist.
    """
    from thinktank.eval.store_read import read_experiment
    from thinktank.store import Store

    if isinstance(store, Store):
        return await read_experiment(store, experiment_id)
    async with await Store.open(None if store is None else str(store), read_only=True) as opened:
        return await read_experiment(opened, experiment_id)


async def load_async(
    experiment_id: str, *, store: Store | str | Path | None = None
) -> pd.DataFrame:
    """The samples of a stored experiment as a DataFrame: one row per item x
    configuration x repeat (columns :data:`thinktank.eval.output.SAMPLE_COLUMNS`), every
    answer scored again with the experiment's scorer. Arguments and errors as
    :func:`read_records`.
    """
    from thinktank.eval.output import samples_frame

    return samples_frame(*await read_records(experiment_id, store=store))


def load(experiment_id: str, *, store: str | Path | None = None) -> pd.DataFrame:
    """:func:`load_async` for scripts and notebooks: blocks until the frame is read.

    It runs its own event loop, in a worker thread when the calling thread already runs
    one (a Jupyter kernel does), so it works in both. Pass a URL or path (a
    :class:`~thinktank.store.Store` belongs to the loop that opened it: await
    :func:`load_async` there instead).
    """
    import anyio

    def read() -> pd.DataFrame:
        return anyio.run(lambda: load_async(experiment_id, store=store), backend="asyncio")

    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return read()
    # A loop runs in this thread: read on another thread with a loop of its own.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(read).result()
