"""The DAG scheduler: start every ready step at once, within the session's limits.

``eager`` (default) starts a step the moment its last dependency finishes; ``layered``
runs one topological generation at a time (what superstep engines do; kept as an
option and as a yardstick). At most ``max_concurrent_steps`` steps are in flight; the
ready queue is FIFO in the order steps became ready, ties in file order, which is
the greedy list schedule the benchmark compares against.

The scheduler knows nothing about models: it calls ``execute(step_id)``, which returns
None when the step completed or an error string when it failed (or ``AGAIN``, below).
On a failure,
``best_effort`` skips exactly the failed step's descendants; ``fail_fast`` cancels the
steps in flight and skips everything not yet finished. Cancellation from outside
(Ctrl-C) propagates after in-flight steps have recorded themselves as cancelled.

Everything runs in one anyio task group of ``max_concurrent_steps`` workers pulling
ready steps from a FIFO queue: no task is spawned per step, and a 10,000-step
session never holds 10,000 waiting tasks. A worker whose step made others ready runs
the first of them itself when nothing older is queued, so a chain of steps costs no
hand-over between tasks.

Each worker runs its steps inside one cancel scope, its *lane* (published in
``thinktank._deadlines.LANE``), which a step's deadline cancels: cheaper than a scope
per step. A cut lane is left before anything else is awaited; when the cut step has
attempts left, ``execute`` returns ``AGAIN`` and the worker runs it again first, on a
new lane. Idle workers wait on plain asyncio futures (thinktank runs on anyio's
asyncio backend).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import anyio
from anyio.abc import TaskGroup

from thinktank._deadlines import LANE
from thinktank.session.graph import StepGraph

__all__ = ["AGAIN", "Again", "ScheduleOutcome", "Scheduler"]


class Again:
    """What ``execute`` returns when a deadline cut its worker's lane and the step has
    attempts left: run it again, first, on a new lane (see ``thinktank._deadlines``)."""

    def __repr__(self) -> str:
        return "AGAIN"


AGAIN: Final = Again()

Execute = Callable[[str], Awaitable["str | Again | None"]]
OnSkip = Callable[[str, str], None]


@dataclass(slots=True)
class ScheduleOutcome:
    """Which steps ended how."""

    completed: list[str] = field(default_factory=list)
    """Steps that completed, in completion order."""
    failed: dict[str, str] = field(default_factory=dict)
    """Failed steps and why."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Steps that never ran and why."""
    cancelled: list[str] = field(default_factory=list)
    """Steps that were running when fail_fast stopped the session."""
    stopped: str | None = None
    """Why the session stopped starting steps (``Scheduler.stop``), if it did."""
    aborted_by: str | None = None
    """Under fail_fast, the step whose failure stopped the session."""
    max_in_flight: int = 0
    """The most steps ever in flight at once."""


class Scheduler:
    """Runs a :class:`StepGraph` through ``execute``, eagerly or layer by layer."""

    def __init__(
        self,
        graph: StepGraph,
        execute: Execute,
        *,
        max_concurrent_steps: int = 5,
        scheduling: Literal["eager", "layered"] = "eager",
        failure_strategy: Literal["fail_fast", "best_effort"] = "best_effort",
        on_skip: OnSkip | None = None,
        done: Iterable[str] = (),
        failed: Mapping[str, str] | None = None,
    ) -> None:
        if max_concurrent_steps < 1:
            raise ValueError("max_concurrent_steps must be >= 1")
        self.graph = graph
        self._execute = execute
        self._limit = max_concurrent_steps
        self._scheduling = scheduling
        self._fail_fast = failure_strategy == "fail_fast"
        self._on_skip = on_skip
        self._done = set(done) | set(failed or {})
        self._failed_before = dict(failed or {})
        self.outcome = ScheduleOutcome()
        self.in_flight = 0
        """Steps running right now (observable while the session runs)."""
        self._waiting: dict[str, int] = {}
        self._finished: set[str] = set(self._done)
        self._started: set[str] = set()
        self._position: dict[str, int] = {}
        self._tg: TaskGroup | None = None
        self._queue: deque[str] = deque()
        """Ready steps no worker has taken yet, oldest first."""
        self._idle: deque[asyncio.Future[str | None]] = deque()
        """Workers waiting for a ready step (None: stop), longest-waiting first. Plain
        asyncio futures: the cheapest wake-up, and a cancelled worker's is skipped."""
        self._open = False
        self._phase_nodes: set[str] = set()
        self._left = 0
        self._workers = 0
        self._halt: str | None = None

    async def run(self) -> ScheduleOutcome:
        """Run every step not already done; return how each ended."""
        g = self.graph.graph
        nodes = g._node  # type: ignore[attr-defined]  # nodes(data=True) builds a view
        self._position = position = {n: d["position"] for n, d in nodes.items()}
        done = self._done
        order = list(position)
        values = list(position.values())
        if values != sorted(values):
            order.sort(key=position.__getitem__)
        pred = g._pred  # type: ignore[attr-defined]  # in_degree() builds a view per call
        waiting = self._waiting
        for node in order:
            if node in done:
                continue
            waiting[node] = sum(1 for p in pred[node] if p not in done) if done else len(pred[node])
        for node, error in self._failed_before.items():
            # Failed in an earlier run (resume, fork): still failed; its descendants
            # that have not run are skipped again.
            self.outcome.failed[node] = error
            reason = f"upstream step {node!r} failed: {error}"
            for desc in sorted(self.graph.descendants(node), key=self._position.__getitem__):
                if desc not in self._finished:
                    self._skip(desc, reason)
        if self._scheduling == "eager":
            nodes = [n for n in self._waiting if n not in self._finished]
            await self._phase(nodes, [n for n in nodes if self._waiting[n] == 0])
        else:
            # One topological generation at a time, recomputed after each so that steps
            # added at run time join the right generation.
            while self._halt is None:
                ready = [
                    n
                    for n in sorted(self._waiting, key=self._position.__getitem__)
                    if n not in self._finished
                    and all(p in self._finished for p in g.predecessors(n))
                ]
                if not ready:
                    break
                await self._phase(ready, ready)
        if self._halt is not None:
            for node in sorted(self._waiting, key=self._position.__getitem__):
                if node in self._started and node not in self._finished:
                    self._finished.add(node)
                    self.outcome.cancelled.append(node)
                elif node not in self._finished:
                    self._skip(node, self._halt)
        return self.outcome

    def stop(self, reason: str) -> None:
        """Start no new step; the steps in flight finish; the rest are skipped with
        ``reason`` (a budget running out, for example)."""
        if self._halt is None:
            self._halt = reason
            self.outcome.stopped = reason
            self._close()

    def grown(self, added: Sequence[str], rewired: Sequence[str]) -> None:
        """Take in steps added while the DAG runs (``StepGraph.grow`` already added
        them and their edges): count what each new step, and each step ``rewired`` to
        wait for one of them, still waits for, from the graph.

        Call it from the decompose step's own execution, before it returns.
        """
        g = self.graph.graph
        finished = self._finished
        for succ in rewired:
            if succ in self._waiting and succ not in finished:
                self._waiting[succ] = sum(1 for p in g.predecessors(succ) if p not in finished)
        for step_id in added:
            self._position[step_id] = g.nodes[step_id]["position"]
            self._waiting[step_id] = sum(1 for p in g.predecessors(step_id) if p not in finished)
            if self._scheduling == "eager":
                self._phase_nodes.add(step_id)
                self._left += 1
                if self._waiting[step_id] == 0 and self._open:
                    self._put(step_id)
        if self._scheduling == "eager":
            self._spawn_workers()

    async def _phase(self, nodes: list[str], ready: list[str]) -> None:
        """Run ``nodes`` (``ready`` first) on a pool of at most ``limit`` workers.

        Workers pull ready steps from a FIFO queue, so no task is spawned per step and
        a 10,000-step session holds ``limit`` tasks, not 10,000.
        """
        self._phase_nodes = set(nodes)
        self._left = len(self._phase_nodes)
        if not self._left:
            return
        self._queue = deque(ready)
        self._open = True
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._workers = 0
                self._spawn_workers()
        finally:
            self._tg = None
            self._close()

    def _spawn_workers(self) -> None:
        assert self._tg is not None
        while self._workers < min(self._limit, self._left):
            self._workers += 1
            self._tg.start_soon(self._worker)

    def _put(self, node: str) -> None:
        """Queue a ready step, or hand it straight to a worker waiting for one."""
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(node)
                return
        self._queue.append(node)

    def _close(self) -> None:
        """No more steps: every waiting worker returns."""
        self._open = False
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _worker(self) -> None:
        done, again = False, None
        while not done:
            # The lane: one cancel scope for this worker's steps, which their deadlines
            # cut (cheaper than a scope per step). A cut lane is left and a new one
            # opened before anything else is awaited.
            lane = anyio.CancelScope()
            token = LANE.set(lane)
            try:
                with lane:
                    done, again = await self._run_lane(lane, again)
            finally:
                LANE.reset(token)

    async def _run_lane(
        self, lane: anyio.CancelScope, again: str | None
    ) -> tuple[bool, str | None]:
        """Run steps (``again`` first) until there are none left (True) or a deadline
        cut ``lane`` (False, and the step to run again first, if any)."""
        queue = self._queue
        waiting = self._waiting
        finished = self._finished
        outcome = self.outcome
        eager = self._scheduling == "eager"
        # networkx's own adjacency dict: ``successors()`` builds an iterator per call.
        succ = self.graph.graph._succ  # type: ignore[attr-defined]
        mine: str | None = again
        loop = asyncio.get_running_loop()
        while True:
            if mine is not None:
                node, mine = mine, None
            elif queue:
                node = queue.popleft()
            elif not self._open:
                return True, None
            else:
                waiter = loop.create_future()
                self._idle.append(waiter)
                handed = await waiter
                if handed is None:
                    return True, None
                node = handed
            if node is again:
                # A step a deadline cut goes on (a started step runs to its end).
                again = None
            elif self._halt is not None:
                # Handed over just before the session stopped: it never starts.
                return True, None
            else:
                self.in_flight += 1
                self._started.add(node)
                if self.in_flight > outcome.max_in_flight:
                    outcome.max_in_flight = self.in_flight
            error = await self._execute(node)
            if error is AGAIN:
                # A deadline cut the lane and the step has attempts left: it goes on
                # first, on a new lane.
                return False, node
            self.in_flight -= 1
            finished.add(node)
            self._left -= 1
            if error is None:
                outcome.completed.append(node)
                if eager and self._halt is None:
                    for s in succ[node]:
                        left = waiting.get(s)
                        if left is None:
                            continue
                        waiting[s] = left - 1
                        if left == 1 and s not in finished:
                            # The first step this one made ready runs next on this
                            # worker when nothing older waits: no hand-over to a
                            # sleeping worker (an event-loop trip) for a chain.
                            if mine is None and not queue:
                                mine = s
                            else:
                                self._put(s)
            else:
                assert isinstance(error, str)
                outcome.failed[node] = error
                if self._fail_fast:
                    if outcome.aborted_by is None:
                        outcome.aborted_by = node
                        self._halt = f"not run: the session stopped when {node!r} failed"
                    assert self._tg is not None
                    self._tg.cancel_scope.cancel()
                    return True, None
                reason = f"upstream step {node!r} failed: {error}"
                for desc in self._unfinished_descendants(node):
                    self._skip(desc, reason)
            if self._left <= 0:
                self._close()
            if lane.cancel_called:
                # A deadline cut the lane: leave it before awaiting anything else. A
                # step this one made ready is queued for whichever worker is first.
                if mine is not None:
                    self._put(mine)
                return False, None

    def _unfinished_descendants(self, node: str) -> list[str]:
        """The descendants of ``node`` not finished yet, in file order.

        The walk stops at skipped steps: a step is only ever skipped together with all
        its descendants, so none below it is left. With many failures in a large DAG
        this keeps each failure's cost to what it newly skips (a full descendant walk
        per failure was quadratic).
        """
        g = self.graph.graph
        skipped = self.outcome.skipped
        seen = {node}
        stack = [node]
        found: list[str] = []
        while stack:
            for succ in g.successors(stack.pop()):
                if succ in seen or succ in skipped:
                    continue
                seen.add(succ)
                stack.append(succ)
                if succ not in self._finished:
                    found.append(succ)
        found.sort(key=self._position.__getitem__)
        return found

    def _skip(self, node: str, reason: str) -> None:
        if node in self._phase_nodes and node not in self._finished:
            self._left -= 1
        self._finished.add(node)
        self.outcome.skipped[node] = reason
        if self._on_skip is not None:
            self._on_skip(node, reason)
