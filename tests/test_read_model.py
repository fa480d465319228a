"""One read model: a stored session read back is the result ``run`` returned."""

from __future__ import annotations

from typing import Any

import pytest

import thinktank
from tests import pg
from thinktank.engine.result import SessionResult, result_of
from thinktank.session.loading import parse_session

from .conftest import CallLog, CountingModel

pytestmark = pytest.mark.anyio

pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url


def _comparable(result: SessionResult) -> dict[str, Any]:
    """The result with call latencies in whole milliseconds, as the store keeps them."""
    data = result.model_dump()
    for step in data["steps"].values():
        for call in step["calls"]:
            call["latency_ms"] = round(call["latency_ms"])
    return data


async def test_stored_session_reads_back_as_the_run_result(db_url: str) -> None:
    """Steps, statuses, outputs, prompts, tokens, costs, calls and consensus agree,
    for completed, multi-model, failed and skipped steps."""
    spec = parse_session(
        {
            "name": "read-model",
            "steps": [
                {"id": "ask", "models": ["a", "b", "c"], "prompt": "q"},
                {
                    "id": "one",
                    "model": "a",
                    "prompt": "{{ steps.ask.output }}!",
                    "depends_on": ["ask"],
                },
                {"id": "bad", "model": "b", "prompt": "x"},
                {"id": "after", "model": "a", "prompt": "y", "depends_on": ["bad"]},
            ],
        },
        known_models=["a", "b", "c"],
    )
    log = CallLog()
    models: dict[str, thinktank.ModelClient] = {
        "a": CountingModel("a", log, reply="Paris"),
        "b": CountingModel("b", log, reply="paris", fail_steps=frozenset({"bad"})),
        "c": CountingModel("c", log, reply="Lyon"),
    }
    async with await thinktank.Store.open(db_url) as store:
        result = await thinktank.run(spec, store=store, models=models)
        stored = await store.get_session(result.session_id)
    assert {s.id: s.status for s in result.steps.values()} == {
        "ask": "completed",
        "one": "completed",
        "bad": "failed",
        "after": "skipped",
    }
    assert result.steps["ask"].consensus is not None
    read = result_of(stored)
    assert _comparable(read) == _comparable(result)
    assert read.outputs == result.outputs and read.usage == result.usage
