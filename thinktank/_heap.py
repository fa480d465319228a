"""Keep the cyclic garbage collector off what existed before a large operation.

A 10,000-step run or replay allocates a few hundred thousand objects (events, rows,
results). Each of the collector's full passes then walks the whole heap (the spec,
the graph, every imported module and the caller's objects) again: measured at
10,000 steps, 0.4-0.6 s of a 2 s replay and ~40 us a step of a run.
``gc.freeze()`` moves what exists now out of the collector's view, and full passes
are held off (one per 1,000 young passes instead of 10) while the operation builds
objects that stay alive to its end; young passes still free short-lived cycles.
Young passes come after 10,000 net new objects instead of 700 (each also walks what
the steps in flight hold). The outermost exit (the last of concurrent users)
unfreezes and restores the thresholds. A process that always has some session
running never reaches it: what existed at the first entry stays frozen (uncollected,
if it was garbage) and full passes stay rare, never off.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

__all__ = ["frozen", "frozen_heap"]

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_depth = 0
_thresholds = gc.get_threshold()
_FULL_EVERY = 1000
"""Young (generation-1) collections between two full ones while frozen (default 10)."""
_YOUNG = 10_000
"""Net new objects between two young (generation-0) collections while frozen (default
700). Each young pass also walks every object the steps in flight hold; a 10,000-step
zero-latency run spent 3.0 us a step in collections at 700 and 2.0 at 10,000. Young
cyclic garbage lives up to that many allocations longer."""


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the heap for the duration; the outermost exit unfreezes it."""
    global _depth, _thresholds
    with _lock:
        if _depth == 0:
            # Only the outermost use freezes: concurrent sessions share one freeze, so
            # no session's cyclic garbage is frozen by another's start. What is built
            # meanwhile (a loaded session, say) grows old unseen by full passes.
            gc.freeze()
            _thresholds = gc.get_threshold()
            # Young collections still free short-lived cycles; full ones would walk
            # everything the operation built so far, again and again.
            gc.set_threshold(
                max(_thresholds[0], _YOUNG), _thresholds[1], max(_thresholds[2], _FULL_EVERY)
            )
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_thresholds)
                gc.unfreeze()


def frozen(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run the coroutine function ``fn`` inside :func:`frozen_heap`."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with frozen_heap():
            return await fn(*args, **kwargs)

    return wrapper
