"""One timer for many deadlines: blocks are cut short at their deadline, never before,
blocks that end in time are left alone, and nothing is left behind."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinktank._deadlines import Deadlines


async def _guarded(
    deadlines: Deadlines, timeout_s: float, kind: str, log: list[tuple[str, bool, float, float]]
) -> None:
    loop = asyncio.get_running_loop()
    deadline = deadlines.start(timeout_s)
    started = loop.time()
    try:
        with deadline.scope:
            if kind == "instant":
                await anyio.lowlevel.checkpoint()
            elif kind == "forever":
                await anyio.sleep_forever()
            else:
                await anyio.sleep(timeout_s / 3)
    finally:
        deadlines.end(deadline)
    log.append((kind, deadline.scope.cancelled_caught, loop.time() - started, timeout_s))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(
        st.tuples(
            st.sampled_from(["instant", "forever", "short"]),
            st.integers(min_value=1, max_value=30),
            st.integers(min_value=0, max_value=10),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_blocks_are_cut_at_their_deadline_and_only_then(
    blocks: list[tuple[str, int, int]],
) -> None:
    log: list[tuple[str, bool, float, float]] = []
    deadlines = Deadlines()

    async def main() -> None:
        with anyio.fail_after(30):
            await spawn()

    async def spawn() -> None:
        async with anyio.create_task_group() as tg:
            for kind, timeout_ms, delay_ms in blocks:

                async def one(kind: str = kind, t: int = timeout_ms, d: int = delay_ms) -> None:
                    await anyio.sleep(d / 1000)
                    await _guarded(deadlines, t / 1000, kind, log)

                tg.start_soon(one)

    anyio.run(main, backend="asyncio")
    assert len(log) == len(blocks)
    for kind, cancelled, ran, timeout_s in log:
        if kind == "forever":
            assert cancelled, "a block that never ends is always cut at its deadline"
        if kind == "instant":
            assert not cancelled, "a block that ends at once is never cut"
        if cancelled:
            assert ran >= timeout_s - 0.002, f"cut after {ran:.4f} s of {timeout_s:.4f}"
    # Nothing left behind: no entry; close() takes the timer away.
    assert len(deadlines) == 0
    assert deadlines._heap == []
    deadlines.close()
    assert deadlines._timer is None


def test_a_shielded_block_inside_finishes_before_the_cut() -> None:
    deadlines = Deadlines()
    done: list[str] = []

    async def main() -> None:
        deadline = deadlines.start(0.005)
        try:
            with deadline.scope:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.03)
                    done.append("shielded")
                await anyio.sleep(1)
                done.append("after")
        finally:
            deadlines.end(deadline)
        assert deadline.scope.cancelled_caught

    anyio.run(main, backend="asyncio")
    assert done == ["shielded"]


def test_many_finished_blocks_do_not_pile_up() -> None:
    """10,000 blocks that end at once leave the heap small all along (lazy removal is
    bounded), and a later deadline still fires."""
    deadlines = Deadlines()
    sizes: list[int] = []

    async def main() -> None:
        # An earlier, unfinished deadline at the top of the heap keeps ended ones from
        # being popped off the top: only the rebuild bounds the heap.
        keeper = deadlines.start(2)
        for _ in range(10_000):
            d = deadlines.start(30)
            with d.scope:
                await anyio.lowlevel.checkpoint()
            deadlines.end(d)
            sizes.append(len(deadlines._heap))
        last = deadlines.start(0.01)
        with last.scope:
            await anyio.sleep(5)
        deadlines.end(last)
        assert last.scope.cancelled_caught
        deadlines.end(keeper)

    anyio.run(main, backend="asyncio")
    assert max(sizes) <= 70
    assert len(deadlines) == 0
