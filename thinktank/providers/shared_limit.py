"""The limiter of a model whose limits hold across processes (``shared_limit``).

:class:`SharedLimiter` stands where a model's in-process ``CapacityLimiter`` stands
(``PooledModel.limiter``, entered before the call's time limit starts): entering it
holds one of the limit's slot rows in the store and counts the call in the limit's
minute; leaving it gives the slot back. In front of the store it puts this process's
own limiter (at most the shared limit, or ``max_concurrency`` when lower), so a process
never has more calls asking the database for a slot than it could hold. A call that
finds every slot held asks again as soon as a call of this limiter gives one back, or
else after a backoff that doubles up to :data:`MAX_POLL_S` (a slot freed by another
process is noticed by polling); a poll that finds none writes no row.

The store transactions that take and give a slot are shielded from cancellation: a
call cancelled while its slot was being taken still gives it back. A hold lapses after
``ttl_s`` (the call's own upper bound, from its time limit and retries), so a killed
process's slots come back without a sweeper. A give that fails because the database is
away (a restart) is owed by the store, which makes it with its next change of a limit:
the slots of the calls a restart cut off come back when the database does.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from thinktank.errors import StoreError

if TYPE_CHECKING:
    from thinktank.store import Store

__all__ = ["FIRST_POLL_S", "MAX_POLL_S", "WINDOW_S", "LimitStats", "SharedLimiter"]

FIRST_POLL_S = 0.005
"""The first wait before asking again for a slot when every one is held."""
MAX_POLL_S = 0.1
"""The longest wait between two asks: the most a free slot stays unnoticed."""
WINDOW_S = 60.0
"""The window of ``requests_per_minute``."""


@dataclass(slots=True)
class LimitStats:
    """What a limiter asked of the store (for benches and tests)."""

    transactions: int = 0
    """Store transactions (takes, polls, gives, renewals, counts)."""
    writes: int = 0
    """Rows changed by them (a slot taken, given or renewed; a request counted)."""


def _holder() -> str:
    """One call's holder id: host, process and a unique part (two calls of one process
    never free each other's slot)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class SharedLimiter:
    """An async context manager holding one shared call slot (and one request of the
    minute) from entry to exit; one object serves every call of the model in a run."""

    def __init__(
        self,
        store: Store,
        key: str,
        *,
        max_concurrent: int | None,
        requests_per_minute: int | None,
        ttl_s: float,
        local: anyio.CapacityLimiter | None,
        window_s: float = WINDOW_S,
    ) -> None:
        self.store = store
        self.key = key
        self.max_concurrent = max_concurrent
        self.requests_per_minute = requests_per_minute
        self.ttl_s = ttl_s
        self.window_s = window_s
        self._local = local
        self._holds: dict[int, tuple[int | None, str]] = {}
        self._waiters: deque[anyio.Event] = deque()
        """Calls of this limiter waiting for a slot: a call giving one back wakes the
        first (one, not all: the others would only find it taken)."""
        self.stats = LimitStats()

    async def __aenter__(self) -> None:
        if self._local is not None:
            await self._local.acquire()
        try:
            hold = await self._hold()
        except BaseException:
            if self._local is not None:
                self._local.release()
            raise
        self._holds[anyio.get_current_task().id] = hold

    async def __aexit__(self, *exc: object) -> None:
        slot, holder = self._holds.pop(anyio.get_current_task().id)
        try:
            if slot is not None:
                await self._give(slot, holder)
        finally:
            if self._local is not None:
                self._local.release()

    async def _hold(self) -> tuple[int | None, str]:
        """Take a slot (if limited) and then count the request (if limited): the slot
        first, so the request is counted in the minute it starts in."""
        holder = _holder()
        slot = await self._take(holder) if self.max_concurrent is not None else None
        try:
            rpm = self.requests_per_minute
            waited = rpm is not None and await self._count(rpm)
            if waited and slot is not None:
                # It waited for the next minute holding the slot: the hold's lapse
                # counts from now.
                with anyio.CancelScope(shield=True):
                    renewed = await self.store.renew_slot(
                        self.key, slot, holder=holder, ttl_s=self.ttl_s
                    )
                self._note(renewed)
        except BaseException:
            if slot is not None:
                await self._give(slot, holder)
            raise
        return slot, holder

    def _note(self, wrote: bool) -> None:
        """Count one transaction, which changed one row or none."""
        self.stats.transactions += 1
        self.stats.writes += wrote

    async def _take(self, holder: str) -> int:
        assert self.max_concurrent is not None
        wait = FIRST_POLL_S
        while True:
            # Shielded: a slot taken by a transaction whose caller was cancelled
            # meanwhile would otherwise be held by nobody until it lapsed.
            with anyio.CancelScope(shield=True):
                slot = await self.store.take_slot(
                    self.key, self.max_concurrent, holder=holder, ttl_s=self.ttl_s
                )
            self._note(slot is not None)
            if slot is not None:
                return slot
            freed = anyio.Event()
            self._waiters.append(freed)
            try:
                # Jittered, so processes that polled together do not again.
                with anyio.move_on_after(wait * random.uniform(0.5, 1.0)):
                    await freed.wait()
            finally:
                if not freed.is_set():
                    self._waiters.remove(freed)
            wait = min(wait * 2, MAX_POLL_S)

    async def _count(self, rpm: int) -> bool:
        """Count the request, waiting for the next window while the minute is full;
        whether it waited."""
        waited = False
        while True:
            with anyio.CancelScope(shield=True):
                left = await self.store.count_limit_request(self.key, rpm, window_s=self.window_s)
            self._note(left is None)
            if left is None:
                return waited
            waited = True
            await anyio.sleep(min(left, self.window_s) + FIRST_POLL_S)

    async def _give(self, slot: int, holder: str) -> None:
        try:
            with anyio.CancelScope(shield=True):
                gave = await self.store.give_slot(self.key, slot, holder=holder)
        except StoreError:
            # The call has its answer: failing it (and sending it again) because the
            # database was away would cost more than the slot, which the store now owes
            # and gives back with its next take (or its hold lapses).
            return
        self._note(gave)
        if self._waiters:
            self._waiters.popleft().set()
