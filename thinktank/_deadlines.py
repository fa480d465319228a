"""Time limits for many steps on one event-loop timer.

``anyio.CancelScope(deadline=...)`` sets a loop timer per scope, and a scope with a
deadline costs about twice a plain one to enter and leave (~4.5 us against ~2.4): at
10,000 steps that is a real share of the engine's own cost per step. :class:`Deadlines`
hands out plain cancel scopes instead and keeps their deadlines in one heap; a single
timer, set for the earliest deadline, cancels the scopes that ran out. The semantics
are anyio's own (shielded scopes inside stay shielded; ``cancelled_caught`` says the
block was cut short), since the cancelling is done by ``CancelScope.cancel``.

Entering and leaving even a plain scope inside a task group's worker costs a few
microseconds (the parent scope's sets, the task-state map, the cancellation walk), so
the scheduler goes further: each worker runs its steps in one long-lived scope, its
lane (:data:`LANE`), and a step's deadline is given that scope to cancel. The step
catches that cancellation as its timeout (``Deadline.expired``); the worker then
leaves the cut lane and opens a new one (``thinktank.engine.scheduler``).

Asyncio only, like the rest of thinktank (SQLAlchemy's async layer is asyncio-only).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from contextvars import ContextVar

import anyio

__all__ = ["LANE", "Deadline", "Deadlines"]


LANE: ContextVar[anyio.CancelScope | None] = ContextVar("thinktank_lane", default=None)
"""The scheduler worker's lane: a cancel scope its steps run in, cut by a step's
deadline instead of each step entering a scope of its own. After a cut the worker
leaves the lane and opens a new one before it awaits anything else."""


class Deadline:
    """One guarded block: its cancel scope (the heap keeps when it runs out)."""

    __slots__ = ("expired", "live", "scope")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.live = True
        """False once the block ended or the scope was cancelled."""
        self.expired = False
        """True when the deadline passed while the block ran (its scope was cancelled)."""


class Deadlines:
    """Plain cancel scopes whose deadlines one timer enforces.

    Use::

        deadline = deadlines.start(seconds)
        try:
            with deadline.scope: ...
        finally:
            deadlines.end(deadline)
        if deadline.scope.cancelled_caught: ...  # it ran out
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._ended = 0
        """Entries in the heap whose block already ended (removed lazily)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scope_class: type[anyio.CancelScope] = anyio.CancelScope

    def __len__(self) -> int:
        """Blocks still guarded."""
        return len(self._heap) - self._ended

    def start(self, seconds: float, lane: anyio.CancelScope | None = None) -> Deadline:
        """A new cancel scope (not entered yet) cancelled ``seconds`` from now; or with
        ``lane``, that (entered) scope is cancelled then, unless the block ended."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # ``anyio.CancelScope()`` looks up the running backend on every call; the
            # class it returns is the same for the whole loop.
            self._loop = loop
            self._scope_class = type(anyio.CancelScope())
        when = loop.time() + seconds
        deadline = Deadline(lane if lane is not None else self._scope_class())
        heapq.heappush(self._heap, (when, next(self._order), deadline))
        if when < self._timer_at:
            self._arm(loop, when)
        return deadline

    def end(self, deadline: Deadline) -> None:
        """The block ended: forget its deadline (idempotent)."""
        if not deadline.live:
            return
        deadline.live = False
        self._ended += 1
        heap = self._heap
        # Finished blocks leave their entries behind; drop them from the top at once,
        # and rebuild the heap when they are most of it (amortised O(log n) a block).
        self._drop_ended_top()
        if self._ended > 32 and 2 * self._ended > len(heap):
            self._heap = [entry for entry in heap if entry[2].live]
            heapq.heapify(self._heap)
            self._ended = 0
        # The timer stays set when nothing is left to guard: a step starting soon
        # after would set it again (a loop timer a step); fired early, it finds
        # nothing due. ``close`` cancels it.

    def close(self) -> None:
        """Cancel the timer (the run is over; blocks still guarded are not cut)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        self._heap.clear()
        self._ended = 0

    def _drop_ended_top(self) -> None:
        """Pop the entries of ended blocks off the top of the heap."""
        heap = self._heap
        while heap and not heap[0][2].live:
            heapq.heappop(heap)
            self._ended -= 1

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire, loop, when)
        self._timer_at = when

    def _fire(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        self._timer, self._timer_at = None, math.inf
        # The loop runs a timer up to its clock resolution early: what was due at the
        # timer's own time counts as due.
        now = max(loop.time(), at)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, deadline = heapq.heappop(heap)
            if not deadline.live:
                self._ended -= 1
                continue
            deadline.live = False
            deadline.expired = True
            deadline.scope.cancel()
        self._drop_ended_top()
        if heap:
            self._arm(loop, heap[0][0])
