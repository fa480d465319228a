"""Experiment rows: an experiment, its samples, and the bulk read of what they answered.

``thinktank eval`` writes one ``thinktank_experiments`` row per experiment and one
``thinktank_experiment_samples`` row per item x configuration x repeat, the sample
before its session makes any call. The reads here serve the runner (which samples are
answered, which sessions to resume) and the loader of
:mod:`thinktank.eval.store_read`, which must read thousands of sessions in a few
queries: every read takes a whole experiment at once, never one session at a time.

These functions run on a connection the :class:`~thinktank.store.Store` opened, inside
its read or write transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from thinktank._ids import new_id
from thinktank.errors import UnknownExperimentError
from thinktank.store._read import resolve_id
from thinktank.store.tables import CALLS, EXPERIMENTS, SAMPLES, SESSIONS, STEPS

__all__ = [
    "add_samples",
    "experiment_calls",
    "experiment_rows",
    "experiment_session_spec",
    "find_experiment",
    "get_experiment",
    "link_sample",
    "list_experiments",
    "samples_of",
    "save_experiment",
    "score_sample",
]


async def save_experiment(
    conn: AsyncConnection,
    *,
    fingerprint: str,
    name: str,
    spec: Mapping[str, Any],
    dataset: str,
    items: int,
    at: datetime,
    new: bool,
) -> tuple[str, bool]:
    """The id of the newest experiment with ``fingerprint`` (its spec and item count
    updated), or of a new one when there is none or ``new``; and whether it was new."""
    if not new:
        found = await find_experiment(conn, fingerprint)
        if found is not None:
            await conn.execute(
                update(EXPERIMENTS)
                .where(EXPERIMENTS.c.id == found)
                .values(name=name, spec=dict(spec), items=items, dataset=dataset, updated_at=at)
            )
            return found, False
    eid = new_id()
    await conn.execute(
        insert(EXPERIMENTS).values(
            id=eid,
            name=name,
            fingerprint=fingerprint,
            spec=dict(spec),
            dataset=dataset,
            items=items,
            created_at=at,
            updated_at=at,
        )
    )
    return eid, True


async def find_experiment(conn: AsyncConnection, fingerprint: str) -> str | None:
    """The id of the newest experiment with ``fingerprint``, or None."""
    found = (
        await conn.execute(
            select(EXPERIMENTS.c.id)
            .where(EXPERIMENTS.c.fingerprint == fingerprint)
            .order_by(EXPERIMENTS.c.created_at.desc(), EXPERIMENTS.c.id.desc())
            .limit(1)
        )
    ).scalar()
    return None if found is None else str(found)


async def add_samples(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert the samples not stored yet (the unique key: experiment, configuration
    content, item, repeat); a stored one keeps its row, its configuration id renamed."""
    if not rows:
        return
    make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = make(SAMPLES)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["experiment_id", "config_key", "item_id", "repeat"],
            set_={"config_id": statement.excluded.config_id},
        ),
        [dict(row) for row in rows],
    )


async def samples_of(conn: AsyncConnection, experiment_id: str) -> list[Any]:
    """Every sample of an experiment with its session's status (None: no session yet)."""
    return list(
        (
            await conn.execute(
                select(
                    SAMPLES.c.id,
                    SAMPLES.c.config_key,
                    SAMPLES.c.item_id,
                    SAMPLES.c.repeat,
                    SAMPLES.c.session_id,
                    SAMPLES.c.answer,
                    SAMPLES.c.correct,
                    SESSIONS.c.status,
                    SESSIONS.c.cost_usd,
                )
                .select_from(SAMPLES.outerjoin(SESSIONS, SESSIONS.c.id == SAMPLES.c.session_id))
                .where(SAMPLES.c.experiment_id == experiment_id)
            )
        ).all()
    )


async def link_sample(conn: AsyncConnection, sample_id: int, session_id: str) -> None:
    """Record the session answering a sample (before the session makes any call)."""
    await conn.execute(
        update(SAMPLES)
        .where(SAMPLES.c.id == sample_id)
        .values(session_id=session_id, answer=None, correct=None)
    )


async def score_sample(
    conn: AsyncConnection, sample_id: int, answer: str | None, correct: float | None
) -> None:
    """Record a sample's answer and its score."""
    await conn.execute(
        update(SAMPLES).where(SAMPLES.c.id == sample_id).values(answer=answer, correct=correct)
    )


async def get_experiment(conn: AsyncConnection, id_or_prefix: str) -> dict[str, Any]:
    """The experiment row for an id or a unique prefix of one."""
    row = await resolve_id(
        conn, EXPERIMENTS, id_or_prefix, what="experiment", error=UnknownExperimentError
    )
    return dict(row._mapping)


async def list_experiments(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every experiment, newest first, with its sample counts (planned, answered)."""
    counts = (
        select(
            SAMPLES.c.experiment_id,
            func.count().label("samples"),
            func.count(SAMPLES.c.answer).label("answered"),
            func.sum(SAMPLES.c.correct).label("correct"),
            func.count(SAMPLES.c.correct).label("scored"),
        )
        .group_by(SAMPLES.c.experiment_id)
        .subquery()
    )
    rows = await conn.execute(
        select(
            EXPERIMENTS.c.id,
            EXPERIMENTS.c.name,
            EXPERIMENTS.c.dataset,
            EXPERIMENTS.c["items"],  # .items is the collection's method
            EXPERIMENTS.c.created_at,
            EXPERIMENTS.c.updated_at,
            func.coalesce(counts.c.samples, 0).label("samples"),
            func.coalesce(counts.c.answered, 0).label("answered"),
            counts.c.correct,
            func.coalesce(counts.c.scored, 0).label("scored"),
        )
        .select_from(EXPERIMENTS.outerjoin(counts, counts.c.experiment_id == EXPERIMENTS.c.id))
        .order_by(EXPERIMENTS.c.created_at.desc(), EXPERIMENTS.c.id.desc())
    )
    return [dict(row._mapping) for row in rows]


def _sessions_of(experiment_id: str) -> Any:
    return select(SAMPLES.c.session_id).where(
        SAMPLES.c.experiment_id == experiment_id, SAMPLES.c.session_id.is_not(None)
    )


async def experiment_rows(conn: AsyncConnection, experiment_id: str) -> list[dict[str, Any]]:
    """Every sample of an experiment with its session's totals, in one query."""
    rows = await conn.execute(
        select(
            SAMPLES.c.config_id,
            SAMPLES.c.config_key,
            SAMPLES.c.item_id,
            SAMPLES.c.repeat,
            SAMPLES.c.session_id,
            SAMPLES.c.targets,
            SAMPLES.c.answer,
            SAMPLES.c.correct,
            SESSIONS.c.status,
            SESSIONS.c.cost_usd,
            SESSIONS.c.input_tokens,
            SESSIONS.c.output_tokens,
            SESSIONS.c.wall_ms,
        )
        .select_from(SAMPLES.outerjoin(SESSIONS, SESSIONS.c.id == SAMPLES.c.session_id))
        .where(SAMPLES.c.experiment_id == experiment_id)
        .order_by(SAMPLES.c.id)
    )
    return [dict(row._mapping) for row in rows]


async def experiment_session_spec(conn: AsyncConnection, experiment_id: str) -> Any:
    """The stored spec of one session of the experiment (all share their steps), or None."""
    return (
        await conn.execute(
            select(SESSIONS.c.spec).where(SESSIONS.c.id.in_(_sessions_of(experiment_id))).limit(1)
        )
    ).scalar()


async def experiment_calls(
    conn: AsyncConnection, experiment_id: str, step_key: str
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """The scored step of every session of an experiment, in three queries.

    Returns:
        session id -> the step row (id, status, output, consensus_score, attempts,
        prompt);
        the calls of those steps, ordered by session, attempt and completion time;
        session id -> calls the session paid for (all steps; served ones excluded).
    """
    sessions = _sessions_of(experiment_id)
    steps = await conn.execute(
        select(
            STEPS.c.session_id,
            STEPS.c.id,
            STEPS.c.status,
            STEPS.c.output,
            STEPS.c.consensus_score,
            STEPS.c.attempts,
            STEPS.c.prompt,
        ).where(STEPS.c.session_id.in_(sessions), STEPS.c.step_key == step_key)
    )
    by_session = {row.session_id: dict(row._mapping) for row in steps}
    calls = await conn.execute(
        select(
            CALLS.c.session_id,
            CALLS.c.id,
            CALLS.c.model_id,
            CALLS.c.attempt,
            CALLS.c.status,
            CALLS.c.response,
            CALLS.c.error,
            CALLS.c.latency_ms,
            CALLS.c.input_tokens,
            CALLS.c.output_tokens,
            CALLS.c.cost_usd,
            CALLS.c.included_in_consensus,
            CALLS.c.completed_at,
        )
        .select_from(
            CALLS.join(STEPS, and_(STEPS.c.id == CALLS.c.step_id, STEPS.c.step_key == step_key))
        )
        .where(CALLS.c.session_id.in_(sessions))
        .order_by(
            CALLS.c.session_id,
            CALLS.c.attempt,
            # Unfinished calls last: they never arrived.
            CALLS.c.completed_at.is_(None),
            CALLS.c.completed_at,
            CALLS.c.id,
        )
    )
    paid = await conn.execute(
        select(CALLS.c.session_id, func.count())
        .where(CALLS.c.session_id.in_(sessions), CALLS.c.reused_from.is_(None))
        .group_by(CALLS.c.session_id)
    )
    return (
        by_session,
        [dict(row._mapping) for row in calls],
        {sid: int(n) for sid, n in paid},
    )
