"""A library lives inside other programs: running sessions leaves the garbage collector
as the host set it, and the garbage a run leaves is the collector's to take."""

from __future__ import annotations

import gc
from pathlib import Path

import thinktank
from thinktank.providers.base import ModelRequest, ModelResponse

from .conftest import SESSIONS


async def test_a_run_leaves_the_hosts_collector_settings_alone(tmp_path: Path) -> None:
    """A host that froze its objects and set its thresholds finds them as it left them
    after runs, a replay and a stored read: still frozen, same thresholds, GC on."""
    spec = thinktank.load_session(SESSIONS / "diamond.yaml")
    db = str(tmp_path / "t.db")
    host_objects = [["the host's own"] for _ in range(100)]
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(1234, 7, 9)
    try:
        result = await thinktank.run(spec, store=db)
        await thinktank.run(spec, store=None)
        await thinktank.replay(result.session_id, store=db)
        async with await thinktank.Store.open(db) as store:
            await store.get_session(result.session_id)
        assert gc.isenabled()
        assert gc.get_threshold() == (1234, 7, 9)
        # Still frozen: the collector does not list them (a thaw would bring them back).
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in host_objects)
        assert gc.get_freeze_count() >= len(host_objects)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class _Watcher:
    """A model that looks, mid-run, whether the collector still sees ``watched``."""

    name = "w"
    provider = "test"

    def __init__(self, watched: object) -> None:
        self.watched = watched
        self.seen: list[bool] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.seen.append(any(o is self.watched for o in gc.get_objects()))
        return ModelResponse(content="ok", model="w", input_tokens=1, output_tokens=1)


async def test_a_run_hides_nothing_from_the_collector() -> None:
    """While a session runs, the process's objects stay where the collector looks: a
    run that froze them moved the garbage of earlier runs where only a full collection
    could reach it, and RSS grew ~16 KB a call in a long-lived process."""
    existing: list[object] = [object()]
    watcher = _Watcher(existing)
    spec = thinktank.parse_session(
        {"name": "gc", "steps": [{"id": "s", "prompt": "hi", "model": "w"}]},
        known_models={"w"},
    )
    await thinktank.run(spec, store=None, models={"w": watcher})
    assert watcher.seen == [True]


def test_events_are_left_out_of_the_cycle_collector() -> None:
    """A run keeps thousands of events; as values that refer back to nothing, they are
    never tracked, so a full collection does not scan them (subclasses inherit it)."""
    from thinktank.events import SessionStarted

    # Dicts inside: a tracked struct would be tracked (msgspec only untracks on its own
    # a struct of scalars), as are the dicts themselves.
    inputs: dict[str, object] = {"question": ["a list"]}
    event = SessionStarted(
        session_id="s", name="n", spec={}, inputs=inputs, parallel_execution_config={}, steps=()
    )
    assert gc.is_tracked(inputs)
    assert not gc.is_tracked(event)
