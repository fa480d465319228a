"""The frozen heap: nested and concurrent uses share one freeze and restore the GC."""

from __future__ import annotations

import gc
import weakref

import anyio
import pytest

from thinktank._heap import frozen, frozen_heap


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_nested_uses_restore_thresholds_and_unfreeze_at_the_outermost_exit() -> None:
    before = gc.get_threshold()
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[2] >= 1000
        assert gc.get_threshold()[0] >= 10_000
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_frozen_garbage_is_collected_after_the_outermost_exit() -> None:
    gc.disable()  # no automatic pass may collect the cycle before the freeze
    try:
        node = _Node()
        ref = weakref.ref(node)
        del node  # cyclic garbage, not collected yet
        with frozen_heap():
            gc.collect()
            assert ref() is not None  # frozen: out of the collector's view
            frozen = gc.get_freeze_count()
            with frozen_heap():
                # A nested (or concurrent) use does not freeze again.
                assert gc.get_freeze_count() == frozen
    finally:
        gc.enable()
    gc.collect()
    assert ref() is None


def test_an_error_inside_still_unfreezes() -> None:
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0


async def test_concurrent_coroutines_share_the_freeze() -> None:
    seen: list[int] = []

    @frozen
    async def work(delay: float) -> float:
        await anyio.sleep(delay)
        seen.append(gc.get_freeze_count())
        return delay

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, 0.01)
        tg.start_soon(work, 0.03)
    assert len(seen) == 2 and all(n > 0 for n in seen)
    assert gc.get_freeze_count() == 0


def test_young_cycles_are_still_collected_while_frozen() -> None:
    with frozen_heap():
        node = _Node()
        ref = weakref.ref(node)
        del node
        assert ref() is not None
        # Enough new objects for the young collection to run (its threshold is raised).
        keep = [[] for _ in range(3 * gc.get_threshold()[0])]
        assert ref() is None
        del keep
