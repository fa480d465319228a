"""The DAG scheduler: start every ready step at once, within the session's limits.

``eager`` (default) starts a step the moment its last dependency finishes; ``layered``
runs one topological generation at a time (what superstep engines do; kept as an
option and as a yardstick). At most ``max_concurrent_steps`` steps are in flight (any
number with ``"unlimited"``); the ready queue is FIFO in the order steps became ready,
ties in file order, which is the greedy list schedule the benchmark compares against.

The scheduler knows nothing about models: it calls ``execute(step_id)``, which returns
None when the step completed, an error string when it failed, or :class:`Abstained`
when it completed without an answer (``on_low_consensus: abstain``): an abstaining
step counts as completed and its descendants are skipped with the reason, as a
failure's are under ``best_effort`` (it is not a failure: ``fail_fast`` does not stop
the session for it). On a failure,
``best_effort`` skips exactly the failed step's descendants; ``fail_fast`` cancels the
steps in flight and skips everything not yet finished. A cancellation from outside
(Ctrl-C, the caller's cancel scope) is never caught here: it propagates as soon as the
steps in flight have recorded themselves as cancelled.

Tasks are spawned on demand in one anyio task group: a ready step starts a task when
fewer than the limit are alive, else it waits in the queue. A task whose step made
others ready runs the first of them itself when nothing older is queued (a chain costs
no hand-over between tasks), then takes the oldest queued step, and ends when the
queue is empty. So there are never more tasks than steps in flight, with or without a
limit: a 10,000-step session never holds 10,000 waiting tasks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from thinktank.engine.outcome import Abstained, StepEnd
from thinktank.session.graph import StepGraph

__all__ = ["ScheduleOutcome", "Scheduler"]

Execute = Callable[[str], Awaitable[StepEnd]]
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
    abstained: dict[str, str] = field(default_factory=dict)
    """Completed steps that abstained (no consensus), and why; also in ``completed``."""
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
        max_concurrent_steps: int | Literal["unlimited"] = 5,
        scheduling: Literal["eager", "layered"] = "eager",
        failure_strategy: Literal["fail_fast", "best_effort"] = "best_effort",
        on_skip: OnSkip | None = None,
        done: Iterable[str] = (),
        failed: Mapping[str, str] | None = None,
        abstained: Mapping[str, str] | None = None,
    ) -> None:
        if max_concurrent_steps != "unlimited" and max_concurrent_steps < 1:
            raise ValueError('max_concurrent_steps must be >= 1 or "unlimited"')
        self.graph = graph
        self._execute = execute
        self._limit: float = (
            math.inf if max_concurrent_steps == "unlimited" else max_concurrent_steps
        )
        self._eager = scheduling == "eager"
        self._fail_fast = failure_strategy == "fail_fast"
        self._on_skip = on_skip
        self._done = set(done) | set(failed or {})
        self._failed_before = dict(failed or {})
        self._abstained_before = dict(abstained or {})
        self.outcome = ScheduleOutcome()
        self.in_flight = 0
        """Steps running right now (observable while the session runs)."""
        self._waiting: dict[str, int] = {}
        """Unfinished dependencies of each step not done before this run."""
        self._finished: set[str] = set(self._done)
        self._started: set[str] = set()
        self._position: dict[str, int] = {}
        self._tg: TaskGroup | None = None
        """The running phase's task group (None between phases)."""
        self._queue: deque[str] = deque()
        """Ready steps no task has taken yet, oldest first."""
        self._tasks = 0
        """Tasks alive in the running phase (never more than the limit)."""
        self._halt: str | None = None

    async def run(self) -> ScheduleOutcome:
        """Run every step not already done; return how each ended."""
        self._count_waiting()
        try:
            await self._run_phases()
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside: the steps in flight recorded themselves as
            # cancelled; the others end skipped, so every step ends in a final state.
            self._end_unfinished("not run: the session was cancelled")
            raise
        if self._halt is not None:
            self._end_unfinished(self._halt)
        return self.outcome

    async def _run_phases(self) -> None:
        """Every step in one eager phase, or one phase per topological generation."""
        waiting = self._waiting
        if self._eager:
            await self._phase(
                [n for n, left in waiting.items() if left == 0 and n not in self._finished]
            )
            return
        # One topological generation at a time, recomputed after each so that steps
        # added at run time join the right generation.
        pred = self.graph.graph.pred
        while self._halt is None:
            ready = [
                n
                for n in sorted(waiting, key=self._position.__getitem__)
                if n not in self._finished and all(p in self._finished for p in pred[n])
            ]
            if not ready:
                break
            await self._phase(ready)

    def _end_unfinished(self, reason: str) -> None:
        """The session stopped: steps still running count as cancelled, the steps that
        never started are skipped with ``reason``."""
        for node in sorted(self._waiting, key=self._position.__getitem__):
            if node in self._finished:
                continue
            if node in self._started:
                self._finished.add(node)
                self.outcome.cancelled.append(node)
            else:
                self._skip(node, reason)

    def _count_waiting(self) -> None:
        """Count what each step still waits for; skip again what an earlier failure
        skipped."""
        g = self.graph.graph
        position: dict[str, int] = {n: d["position"] for n, d in g.nodes(data=True)}
        self._position = position
        done = self._done
        pred = g.pred
        for node in sorted(position, key=position.__getitem__):
            if node not in done:
                self._waiting[node] = sum(1 for p in pred[node] if p not in done)
        for node, error in self._failed_before.items():
            # Failed in an earlier run (resume, fork): still failed; its descendants
            # that have not run are skipped again.
            self.outcome.failed[node] = error
            reason = f"upstream step {node!r} failed: {error}"
            for desc in sorted(self.graph.descendants(node), key=position.__getitem__):
                if desc not in self._finished:
                    self._skip(desc, reason)
        for node, why in self._abstained_before.items():
            # Abstained in an earlier run: its descendants that have not run still
            # have nothing to work on.
            self._abstained(node, why)

    def stop(self, reason: str) -> None:
        """Start no new step; the steps in flight finish; the rest are skipped with
        ``reason`` (a budget running out, for example)."""
        if self._halt is None:
            self._halt = reason
            self.outcome.stopped = reason
            self._queue.clear()

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
                self._waiting[succ] = sum(1 for p in g.pred[succ] if p not in finished)
        for step_id in added:
            self._position[step_id] = g.nodes[step_id]["position"]
            self._waiting[step_id] = sum(1 for p in g.pred[step_id] if p not in finished)
            if self._eager and self._waiting[step_id] == 0 and self._tg is not None:
                self._put(step_id)

    async def _phase(self, ready: list[str]) -> None:
        """Run ``ready`` and (eager) every step they make ready, until none is left."""
        if not ready:
            return
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for node in ready:
                    self._put(node)
        finally:
            # Between phases (and after a cancelled one) ``grown`` starts nothing.
            self._tg = None
            self._queue.clear()

    def _put(self, node: str) -> None:
        """Start a task for a ready step, or queue it when the limit is reached."""
        if self._tasks < self._limit:
            self._tasks += 1
            assert self._tg is not None
            self._tg.start_soon(self._task, node)
        else:
            self._queue.append(node)

    async def _task(self, node: str | None) -> None:
        """Run ``node``, then the step it hands on or the oldest queued one, until none."""
        try:
            while node is not None and self._halt is None:
                node = await self._run_step(node)
                if node is None and self._queue:
                    node = self._queue.popleft()
        finally:
            self._tasks -= 1

    async def _run_step(self, node: str) -> str | None:
        """Run one step; return the first step it made ready, for this task to run next
        (when nothing older is queued)."""
        # A task spawned just before a cancel runs until its first await: no step
        # (and so no model call) starts once the session is cancelled.
        await anyio.lowlevel.checkpoint_if_cancelled()
        outcome = self.outcome
        self.in_flight += 1
        self._started.add(node)
        if self.in_flight > outcome.max_in_flight:
            outcome.max_in_flight = self.in_flight
        error = await self._execute(node)
        self.in_flight -= 1
        self._finished.add(node)
        if isinstance(error, Abstained):
            outcome.completed.append(node)
            self._abstained(node, error.reason)
            return None
        if error is not None:
            self._failed(node, error)
            return None
        outcome.completed.append(node)
        if not self._eager or self._halt is not None:
            return None
        mine: str | None = None
        waiting = self._waiting
        for s in self.graph.graph.succ[node]:
            left = waiting.get(s)
            if left is None:
                continue
            waiting[s] = left - 1
            if left == 1 and s not in self._finished:
                # The first step this one made ready runs next on this task when
                # nothing older waits: no hand-over to a new task for a chain.
                if mine is None and not self._queue:
                    mine = s
                else:
                    self._put(s)
        return mine

    def _failed(self, node: str, error: str) -> None:
        """``node`` failed: stop the session (fail_fast) or skip its descendants."""
        self.outcome.failed[node] = error
        if self._fail_fast:
            if self.outcome.aborted_by is None:
                self.outcome.aborted_by = node
                self._halt = f"not run: the session stopped when {node!r} failed"
                self._queue.clear()
            assert self._tg is not None
            self._tg.cancel_scope.cancel()
            return
        reason = f"upstream step {node!r} failed: {error}"
        for desc in self._unfinished_descendants(node):
            self._skip(desc, reason)

    def _abstained(self, node: str, reason: str) -> None:
        """``node`` completed without an answer: skip its descendants (never a reason to
        stop the session, whatever the failure strategy)."""
        self.outcome.abstained[node] = reason
        why = f"upstream step {node!r} found no consensus: {reason}"
        for desc in self._unfinished_descendants(node):
            self._skip(desc, why)

    def _unfinished_descendants(self, node: str) -> list[str]:
        """The descendants of ``node`` not finished yet, in file order.

        The walk stops at skipped steps: a step is only ever skipped together with all
        its descendants, so none below it is left. With many failures in a large DAG
        this keeps each failure's cost to what it newly skips (a full descendant walk
        per failure was quadratic).
        """
        succ = self.graph.graph.succ
        skipped = self.outcome.skipped
        seen = {node}
        stack = [node]
        found: list[str] = []
        while stack:
            for s in succ[stack.pop()]:
                if s in seen or s in skipped:
                    continue
                seen.add(s)
                stack.append(s)
                if s not in self._finished:
                    found.append(s)
        found.sort(key=self._position.__getitem__)
        return found

    def _skip(self, node: str, reason: str) -> None:
        self._finished.add(node)
        self.outcome.skipped[node] = reason
        if self._on_skip is not None:
            self._on_skip(node, reason)
