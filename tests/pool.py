"""What the worker-pool tests share: the fake provider's models, the session they run,
submitting and waiting, and the checks of the store and of the fake afterwards.

The models ``a``, ``b``, ``c`` (asked in parallel) and ``j`` (their judge) live in a
``thinktank.toml`` that the workers read through ``THINKTANK_CONFIG``; all four share one
limit (``shared_limit.key``), as one provider account does, so the cap holds over every
call of every worker. A session is one step: three calls, then the judge's.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.fakeserver import FakeServer, run_fake_server
from tests.workerproc import WorkerProcess, fan_session
from thinktank.distributed.executor import DistributedExecutor
from thinktank.providers.config import load_config
from thinktank.session.loading import parse_session
from thinktank.session.spec import SessionSpec
from thinktank.store import normalize_db_url

__all__ = [
    "CALLS_PER_SESSION",
    "DELAY_S",
    "MODELS",
    "call_keys",
    "check_store",
    "config",
    "executor_id",
    "fake",
    "fan_spec",
    "submit_all",
    "sync_engine",
    "wait_all",
    "write_config",
]

MODELS = ("a", "b", "c", "j")
CALLS_PER_SESSION = len(MODELS)
DELAY_S = 0.5
"""The fake provider's latency (the issue's)."""


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """The fake provider, on a loopback port."""
    with run_fake_server() as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pool's ``thinktank.toml``, in force here and given to every worker."""
    path = write_config(tmp_path / "thinktank.toml", fake)
    monkeypatch.setenv("THINKTANK_CONFIG", str(path))
    return path


def executor_id(worker: WorkerProcess) -> str:
    """The executor id a worker printed when it started."""
    line = next(line for line in worker.output().splitlines() if " started (" in line)
    return line.split(" started (", 1)[1].split(")", 1)[0]


def write_config(path: Path, fake: FakeServer, *, max_concurrent: int = 50) -> Path:
    """A ``thinktank.toml`` whose four models are the fake's, under one shared cap."""
    parts = []
    for name in MODELS:
        parts.append(
            f'[models.{name}]\nprovider = "openai"\nmodel = "{name}"\n'
            f'base_url = "{fake.url}/v1"\nmax_retries = 0\ntimeout_s = 60\n'
            f'[models.{name}.shared_limit]\nkey = "fake"\nmax_concurrent = {max_concurrent}\n'
        )
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def fan_spec(config: Path) -> SessionSpec:
    """Three parallel calls and a judge that merges them, on the config's models."""
    data = fan_session()
    return parse_session(data, config=load_config(config))


async def submit_all(
    pool: DistributedExecutor, spec: SessionSpec, n: int, *, first: int = 0
) -> list[str]:
    """Queue ``n`` sessions (questions ``first`` .. ``first + n - 1``: a question asked
    before would be answered from the response cache), eight submissions at a time."""
    ids: list[str | None] = [None] * n
    limit = anyio.Semaphore(8)

    async def one(i: int) -> None:
        async with limit:
            ids[i] = await pool.submit(spec, inputs={"q": f"question {first + i}"})

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return [sid for sid in ids if sid is not None]


async def wait_all(pool: DistributedExecutor, ids: Sequence[str]) -> dict[str, str]:
    """Each session's final status, once all have ended: ``completed``, or the status
    with why (``partial: ...``), so that an assertion shows it."""
    return {
        sid: result.status if result.ok else f"{result.status}: {result.error}"
        async for sid, result in pool.as_completed(ids)
    }


def call_keys(fake: FakeServer) -> Counter[tuple[str, str]]:
    """How many times the fake received each distinct call (model, messages)."""
    return Counter(
        (str(r.model), json.dumps(r.json.get("messages"), sort_keys=True))
        for r in fake.requests
        if isinstance(r.json, dict)
    )


def sync_engine(db: str) -> sa.Engine:
    """A plain (synchronous) engine on the test's database, for checks outside the store."""
    url = make_url(normalize_db_url(db))
    if url.get_backend_name() == "postgresql":
        return sa.create_engine(url.set(drivername="postgresql+psycopg"), poolclass=sa.NullPool)
    return sa.create_engine(url.set(drivername="sqlite"), poolclass=sa.NullPool)


def check_store(db: str, ids: Sequence[str], *, settle_s: float = 30.0) -> None:
    """The store after a run: every session completed, every step completed, each call
    answered once (a resumed session's rows that serve a stored answer point to it
    through ``reused_from`` and are not answers of their own), no session lease and
    no call slot held, every workflow SUCCESS.

    Slots of a killed worker are freed by its recoverer: they are looked at until
    ``settle_s`` has passed (the recovery follows the kill by one time to live); those
    whose give failed while the database was away are given when it is back."""
    engine = sync_engine(db)
    try:
        with engine.connect() as conn:
            sessions = Counter(
                status
                for (status,) in conn.execute(sa.text("SELECT status FROM thinktank_sessions"))
            )
            assert sessions == {"completed": len(ids)}, sessions
            steps = Counter(
                status for (status,) in conn.execute(sa.text("SELECT status FROM thinktank_steps"))
            )
            assert steps == {"completed": len(ids)}, steps
            ok = conn.execute(
                sa.text(
                    "SELECT session_id, step_id, model_id, count(*) FROM"
                    " thinktank_parallel_executions WHERE status = 'ok' AND reused_from IS NULL"
                    " GROUP BY session_id, step_id, model_id"
                )
            ).all()
            assert len(ok) == CALLS_PER_SESSION * len(ids)
            twice = [row for row in ok if row[3] != 1]
            assert not twice, f"calls recorded twice as answered: {twice}"
            held = conn.execute(
                sa.text("SELECT count(*) FROM thinktank_sessions WHERE lease_owner IS NOT NULL")
            ).scalar_one()
            assert held == 0
        _check_workflows(engine, ids)
        deadline = time.monotonic() + settle_s
        while True:
            with engine.connect() as conn:
                slots = conn.execute(
                    sa.text("SELECT count(*) FROM thinktank_slots WHERE holder IS NOT NULL")
                ).scalar_one()
            if slots == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert slots == 0, f"{slots} call slot(s) still held"
    finally:
        engine.dispose()


def _check_workflows(engine: sa.Engine, ids: Sequence[str]) -> None:
    """Every session's DBOS workflow ended SUCCESS (PostgreSQL: schema ``dbos`` in the
    same database; SQLite keeps DBOS in its own file, checked through the client)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        flows: dict[str, Any] = dict(
            conn.execute(sa.text("SELECT workflow_uuid, status FROM dbos.workflow_status")).all()
        )
    assert {sid: flows.get(sid) for sid in ids} == dict.fromkeys(ids, "SUCCESS")
