"""A resumed step's answers served from the store are not counted twice.

Resume re-runs a step that did not finish and serves the answers it already had from
the store (no call is sent again). The new call row of such an answer points at the
stored one (``reused_from``) and carries no tokens or cost of its own, so SQL sums over
the call rows equal the session's totals, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import thinktank
from thinktank.events import CallFinished, Event
from thinktank.session.loading import parse_session
from thinktank.store import normalize_db_url

from . import pg

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

PRICES = {"input_cost_per_mtok": 1000.0, "output_cost_per_mtok": 2000.0}

SESSION = {
    "name": "reuse",
    "models": {
        "fast": {"provider": "simulated", "latency": {"kind": "fixed", "ms": 1}, **PRICES},
        "slow": {
            "provider": "simulated",
            "latency": {"kind": "fixed", "ms": 600},
            "seed": 2,
            **PRICES,
        },
    },
    "steps": [
        {"id": "first", "model": "fast", "prompt": "Name a colour."},
        {
            "id": "both",
            "models": ["fast", "slow"],
            "depends_on": ["first"],
            "prompt": "Say more about {{ steps.first.output }}.",
        },
    ],
}


async def _sums(url: str, session_id: str) -> tuple[Any, ...]:
    """(sum of tokens_used, sum of cost_usd) over the session's call rows, its
    total_tokens and cost_usd, and its calls with reused_from set, straight from SQL."""
    engine = create_async_engine(normalize_db_url(url))
    try:
        async with engine.connect() as conn:
            calls = (
                await conn.execute(
                    sa.text(
                        "select sum(tokens_used), sum(cost_usd) "
                        "from thinktank_parallel_executions where session_id = :sid"
                    ),
                    {"sid": session_id},
                )
            ).one()
            session = (
                await conn.execute(
                    sa.text(
                        "select total_tokens, cost_usd from thinktank_sessions where id = :sid"
                    ),
                    {"sid": session_id},
                )
            ).one()
            reused = (
                await conn.execute(
                    sa.text(
                        "select count(*) from thinktank_parallel_executions "
                        "where session_id = :sid and reused_from is not null"
                    ),
                    {"sid": session_id},
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    return int(calls[0]), float(calls[1]), int(session[0]), float(session[1]), int(reused)


async def test_resume_does_not_count_reused_answers_twice(db_url: str) -> None:
    spec = parse_session(SESSION)
    answered = anyio.Event()
    session_ids: list[str] = []

    def listen(event: Event) -> None:
        session_ids.append(event.session_id)
        if isinstance(event, CallFinished) and event.step_id == "both" and event.model == "fast":
            answered.set()

    # Interrupt the run once "both" has fast's answer and is waiting for slow's.
    async with anyio.create_task_group() as tg:

        async def go() -> None:
            await thinktank.run(spec, store=db_url, on_event=listen)

        tg.start_soon(go)
        await answered.wait()
        tg.cancel_scope.cancel()
    sid = session_ids[0]

    result = await thinktank.resume(sid, store=db_url)
    assert result.status == "completed"
    call_tokens, call_cost, session_tokens, session_cost, reused = await _sums(db_url, sid)
    assert reused == 1  # fast's answer in "both", served from the store
    assert call_tokens == session_tokens
    assert call_cost == pytest.approx(session_cost)
    assert session_tokens == result.usage.total_tokens
