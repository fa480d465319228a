"""Many sessions at once: one session per input, one database, shared model limits.

``run_many`` runs the same session spec once per input mapping, at most ``concurrency``
sessions at a time, all recorded in one store; per-model ``max_concurrency`` limits are
process-wide, so they hold across the whole batch. A session that fails, or a run that
raises, never stops the others: each item of the result says how its session ended.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
from pydantic import BaseModel, ConfigDict

from thinktank._safeload import LoadError, load_json
from thinktank._text import read_utf8
from thinktank.engine.result import SessionResult
from thinktank.engine.runner import Listener
from thinktank.engine.stream import run
from thinktank.errors import InputError, ThinkTankError
from thinktank.providers.base import ModelClient
from thinktank.session.spec import SessionSpec, validate_inputs
from thinktank.store import Store
from thinktank.store._arg import DEFAULT_STORE, resolve_store

__all__ = ["BatchItem", "BatchResult", "Pool", "read_inputs_file", "run_many", "run_many_on"]


class BatchItem(BaseModel):
    """How one session of a batch ended."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: int
    """Position of its input (0-based)."""
    inputs: dict[str, Any]
    """The inputs it ran with."""
    result: SessionResult | None = None
    """The session's result, when the run returned one."""
    error: str | None = None
    """Why the run raised instead (a store failure, for example)."""

    @property
    def status(self) -> str:
        """The session's status, or ``error`` when the run raised."""
        return self.result.status if self.result is not None else "error"


class BatchResult(BaseModel):
    """Every session of a batch, in input order, with totals."""

    items: list[BatchItem]
    """One per input."""
    wall_ms: float
    """Wall time of the whole batch."""

    def counts(self) -> dict[str, int]:
        """Sessions per status."""
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return counts

    @property
    def total_tokens(self) -> int | None:
        """Tokens over every session (None when any is unknown)."""
        values = [i.result.usage.total_tokens for i in self.items if i.result is not None]
        return None if any(v is None for v in values) else sum(v or 0 for v in values)

    @property
    def total_cost_usd(self) -> float | None:
        """USD over every session (None when any is unknown)."""
        values = [i.result.usage.total_cost_usd for i in self.items if i.result is not None]
        return None if any(v is None for v in values) else sum(v or 0.0 for v in values)


def read_inputs_file(path: str | Path, spec: SessionSpec) -> list[dict[str, Any]]:
    """Read a JSON Lines file of input mappings, checking every line against ``spec``.

    Raises:
        InputError: one line per bad line (``file:N: ...``); nothing is run.
    """
    path = Path(path)
    try:
        text = read_utf8(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read inputs file: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = load_json(line)
        except LoadError as exc:
            problems.append(f"{path}:{number}: {exc.message}")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path}:{number}: expected a JSON object of input values")
            continue
        try:
            rows.append(validate_inputs(spec, data))
        except InputError as exc:
            problems.extend(f"{path}:{number}: {p}" for p in str(exc).splitlines())
    if not rows and not problems:
        problems.append(f"{path}: no inputs (one JSON object per line)")
    if problems:
        raise InputError("\n".join(problems))
    return rows


async def run_many(
    spec: SessionSpec,
    inputs: Iterable[Mapping[str, Any]],
    *,
    concurrency: int = 8,
    store: Store | str | None = DEFAULT_STORE,
    models: Mapping[str, ModelClient] | None = None,
    on_event: Listener | None = None,
    on_done: Any = None,
    source: str | None = None,
    max_cost_usd: float | None = None,
    max_tokens: int | None = None,
) -> BatchResult:
    """Run ``spec`` once per input, ``concurrency`` sessions at a time, in one store.

    Args:
        spec: The session.
        inputs: One mapping of input values per session.
        concurrency: Sessions in flight at once.
        store: The ``store=`` rule of the README's Python API section; one store
            serves every session.
        models: Model clients by name.
        on_event: Receives every event of every session.
        on_done: Called with each :class:`BatchItem` as its session ends.
        source: The session file.
        max_cost_usd: Budget of each session.
        max_tokens: Token budget of each session.

    Raises:
        InputError: an input mapping is invalid (checked before anything runs).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    rows = [validate_inputs(spec, dict(values)) for values in inputs]
    items = [BatchItem(index=i, inputs=row) for i, row in enumerate(rows)]
    start = time.perf_counter()
    store, owned = await resolve_store(store)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(item: BatchItem) -> None:
        async with limiter:
            try:
                item.result = await run(
                    spec,
                    inputs=item.inputs,
                    store=store,
                    models=models,
                    on_event=on_event,
                    source=source,
                    max_cost_usd=max_cost_usd,
                    max_tokens=max_tokens,
                )
            except ThinkTankError as exc:
                item.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if on_done is not None:
            on_done(item)

    try:
        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(one, item)
    finally:
        if owned is not None:
            with anyio.CancelScope(shield=True):
                await owned.close()
    return BatchResult(items=items, wall_ms=(time.perf_counter() - start) * 1000)


class Pool(Protocol):
    """Where :func:`run_many_on` sends sessions: a ``SessionExecutor`` that can report
    many sessions as they end (``thinktank.distributed.executor.DistributedExecutor``)."""

    async def submit(
        self,
        spec: SessionSpec,
        *,
        inputs: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> str:
        """Queue a session; its id."""
        ...

    def as_completed(self, session_ids: Iterable[str]) -> AsyncIterator[tuple[str, SessionResult]]:
        """Each session with its result, as it ends."""
        ...


async def run_many_on(
    pool: Pool,
    spec: SessionSpec,
    inputs: Iterable[Mapping[str, Any]],
    *,
    on_done: Callable[[BatchItem], None] | None = None,
    source: str | None = None,
) -> BatchResult:
    """Run ``spec`` once per input on ``pool`` (whose workers decide how many run at
    once); the same :class:`BatchResult` as :func:`run_many`.

    Every session is submitted first (a bad input raises before anything is queued),
    then each is reported to ``on_done`` as it ends, whichever worker ran it.

    Example::

        async with DistributedExecutor(db="postgresql://...") as pool:
            batch = await run_many_on(pool, spec, [{"q": "a"}, {"q": "b"}])

    Raises:
        InputError: an input mapping is invalid (nothing is queued).
        StoreError: the database could not be written or read.
    """
    rows = [validate_inputs(spec, dict(values)) for values in inputs]
    start = time.perf_counter()
    items: dict[str, BatchItem] = {}
    for index, row in enumerate(rows):
        sid = await pool.submit(spec, inputs=row, source=source)
        items[sid] = BatchItem(index=index, inputs=row)
    async for sid, result in pool.as_completed(list(items)):
        item = items[sid]
        item.result = result
        if on_done is not None:
            on_done(item)
    return BatchResult(items=list(items.values()), wall_ms=(time.perf_counter() - start) * 1000)


def summary_rows(result: BatchResult) -> Sequence[tuple[str, ...]]:
    """Rows for the summary table (index, session, status, tokens, cost, wall, error)."""
    rows = []
    for item in result.items:
        r = item.result
        rows.append(
            (
                str(item.index),
                r.session_id if r else "-",
                item.status,
                "?" if r is None or r.usage.total_tokens is None else f"{r.usage.total_tokens:,}",
                "unknown"
                if r is None or r.usage.total_cost_usd is None
                else f"${r.usage.total_cost_usd:.6f}",
                f"{r.wall_ms:.0f} ms" if r else "-",
                (r.error if r else item.error) or "",
            )
        )
    return rows
