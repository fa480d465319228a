"""Live progress of a run, drawn from the event stream, on stderr.

On a terminal: a rich live view (counts, steps in flight with the models they still
wait on, the latest finished steps) redrawn four times a second, so its clocks tick
while a call is in flight and no event arrives (a local model loading, a slow
answer). Piped: one plain line per step start, end or skip, and per answer of a
multi-model step, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from types import TracebackType
from typing import IO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from thinktank.events import (
    CallFinished,
    CallStarted,
    Event,
    SessionFinished,
    SessionStarted,
    StepFinished,
    StepsAdded,
    StepSkipped,
    StepStarted,
)

__all__ = ["Progress"]

_STYLE = {"completed": "green", "failed": "red", "skipped": "yellow", "cancelled": "magenta"}


class Progress:
    """An event listener that shows progress; use it as a context manager."""

    def __init__(self, *, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.session_id: str | None = None
        self.origin: str | None = None
        """``resume``, ``fork`` or ``replay`` when the session was made from another."""
        self.total = 0
        self.finished = 0
        self.counts: dict[str, int] = {}
        self.running: dict[str, float] = {}
        self.streamed: dict[str, str] = {}
        self.recent: deque[tuple[str, str, str]] = deque(maxlen=8)
        self.calls: dict[str, tuple[str, str, float]] = {}
        """Calls in flight: call id -> (step, model, start)."""
        self.answered: dict[str, int] = {}
        """Running steps: how many of their calls have answered."""
        self._multi: set[str] = set()
        self._start = time.perf_counter()
        self._live: Live | None = None
        self._plain = not self.stream.isatty()

    def __enter__(self) -> Progress:
        if self.enabled and not self._plain:
            console = Console(file=self.stream, markup=False, highlight=False)
            # get_renderable: every refresh redraws from the current state, so the
            # clocks advance between events (rich refreshes from its own thread).
            self._live = Live(
                console=console, get_renderable=self._render, refresh_per_second=4, transient=True
            )
            self._live.__enter__()
            self._live.refresh()  # the first frame now, not at the first tick
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def _line(self, text: str) -> None:
        if self.enabled and self._plain:
            elapsed = time.perf_counter() - self._start
            print(f"[{elapsed:7.2f}s] {text}", file=self.stream, flush=True)

    def __call__(self, event: Event) -> None:
        """Take one event."""
        if isinstance(event, SessionStarted):
            self.session_id = event.session_id
            self.origin = event.origin.get("kind") if event.origin else None
            self.total = len(event.steps)
            self._multi.update(s.step_id for s in event.steps if len(s.models) > 1)
            self._start = time.perf_counter()
            self._line(f"session {event.name} ({event.session_id}): {self.total} steps")
        elif isinstance(event, StepStarted):
            self.running[event.step_id] = time.perf_counter()
            retry = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            self._line(f"step {event.step_id}: running{retry}")
        elif isinstance(event, StepFinished):
            self.running.pop(event.step_id, None)
            self.streamed.pop(event.step_id, None)
            self.answered.pop(event.step_id, None)
            self._count(event.status)
            detail = event.error or _short(event.output)
            self.recent.append((event.step_id, event.status, detail))
            score = (
                f" consensus {event.consensus_score:.2f}"
                if event.consensus_score is not None
                else ""
            )
            self._line(
                f"step {event.step_id}: {event.status} in {event.latency_ms:.0f} ms{score}"
                f" - {detail}"
            )
        elif isinstance(event, StepSkipped):
            self._count("skipped")
            self.recent.append((event.step_id, "skipped", event.reason))
            self._line(f"step {event.step_id}: skipped - {event.reason}")
        elif isinstance(event, CallStarted):
            self.calls[event.call_id] = (event.step_id, event.model, time.perf_counter())
        elif isinstance(event, CallFinished):
            self.calls.pop(event.call_id, None)
            if event.status == "ok":
                self.answered[event.step_id] = self.answered.get(event.step_id, 0) + 1
            if event.step_id in self._multi:
                detail = event.error or _short(event.content)
                self._line(
                    f"step {event.step_id}: {event.model} {event.status} in "
                    f"{event.latency_ms:.0f} ms - {detail}"
                )
        elif isinstance(event, StepsAdded):
            self.total += len(event.steps)
            self._multi.update(s.step_id for s in event.steps if len(s.models) > 1)
            names = ", ".join(s.step_id for s in event.steps)
            self._line(f"step {event.parent}: added {len(event.steps)} steps ({names})")
        elif isinstance(event, SessionFinished):
            self._line(f"session {event.status} in {event.wall_ms:.0f} ms")

    def delta(self, step_id: str, model: str, text: str) -> None:
        """Streamed text as it arrives: the live view shows each running step's latest."""
        if self._live is None:
            return
        tail = (self.streamed.get(step_id, "") + text)[-200:]
        self.streamed[step_id] = tail

    def summary(self) -> str:
        """What became of the steps so far, e.g. ``1 completed, 1 cancelled, 3 skipped``.

        Steps still running count as cancelled and steps not started as skipped: the
        run is ending without them, and the store records them so. A resumed or forked
        session counts only this run's steps, and says so.
        """
        counts = dict(self.counts)
        counts["cancelled"] = counts.get("cancelled", 0) + len(self.running)
        left = self.total - self.finished - len(self.running)
        if left > 0:
            counts["skipped"] = counts.get("skipped", 0) + left
        parts = [f"{counts.pop('completed', 0)} completed", f"{counts.pop('cancelled')} cancelled"]
        parts += [f"{n} {status}" for status, n in sorted(counts.items())]
        prefix = f"this {self.origin}: " if self.origin else ""
        return prefix + ", ".join(parts)

    def _count(self, status: str) -> None:
        self.finished += 1
        self.counts[status] = self.counts.get(status, 0) + 1

    def _render(self) -> Group:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(list(self.counts.items()))) or "starting"
        elapsed = time.perf_counter() - self._start
        header = Text(
            f"{self.finished}/{self.total} steps  ({counts}; {len(self.running)} running)"
            f"  {elapsed:.1f}s",
            style="bold",
        )
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column("step")
        table.add_column("status")
        table.add_column("detail", overflow="ellipsis", no_wrap=True, max_width=80)
        now = time.perf_counter()
        # Copies: rich calls this from its refresh thread while events change the state.
        waiting: dict[str, list[str]] = {}
        for step_id, model, since in list(self.calls.values()):
            waiting.setdefault(step_id, []).append(f"{model} {now - since:.1f}s")
        for step_id, since in list(self.running.items())[:10]:
            parts = [f"{now - since:.1f}s"]
            if step_id in self._multi or step_id in self.answered:
                parts.append(f"{self.answered.get(step_id, 0)} answered")
            if step_id in waiting:
                parts.append("waiting on " + ", ".join(waiting[step_id]))
            parts.append(_short(self.streamed.get(step_id), 70))
            table.add_row(step_id, Text("running", style="cyan"), "; ".join(p for p in parts if p))
        for step_id, status, detail in list(self.recent):
            table.add_row(step_id, Text(status, style=_STYLE.get(status, "")), detail)
        return Group(header, table)


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
