"""Model clients that answer from recorded calls instead of a model.

Two uses, two classes:

- :class:`ResumeClient` (resume): a step the killed run did not finish is run again, and
  the answers its calls had already received are served from the store instead of being
  sent again, by (step, model), each marked with the stored call it repeats
  (``reused_from``) so its tokens are not counted twice. What was never answered goes
  to the live model.
- :class:`ReplayClient` (replay): every call is served from the recording, by (step,
  model, attempt), and within a step attempt the answers are released in their
  recorded completion order (each waits for the one recorded before it, see
  :class:`Sequence`), so race, quorum and cascade decide the same way on a loaded
  machine as in the original run, without any wall-clock sleep. A missing recording
  is an error naming the step and model, never a live call.

The recorded calls are anything shaped like :class:`RecordedCall` (the store's
``StoredCall`` is), so this module does not depend on the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import NoReturn, Protocol

import anyio
import anyio.lowlevel

from thinktank.errors import ProviderError
from thinktank.providers.base import ModelClient, ModelRequest, ModelResponse

__all__ = [
    "DIVERGED_WAIT_S",
    "RecordedCall",
    "ReplayClient",
    "ResumeClient",
    "Sequence",
    "sequences",
]

DIVERGED_WAIT_S = 2.0
"""How long a recorded answer waits for the one recorded before it to be asked for.
Past that the replay has diverged (another merge, a mode that stopped elsewhere): the
answer goes on, and the report shows the difference instead of the replay hanging."""


class RecordedCall(Protocol):
    """What a client needs of one recorded call (``thinktank.store.StoredCall``)."""

    @property
    def id(self) -> str: ...
    @property
    def step_key(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def response(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def input_tokens(self) -> int | None: ...
    @property
    def output_tokens(self) -> int | None: ...
    @property
    def latency_ms(self) -> int | None: ...
    @property
    def cost_usd(self) -> float | None: ...
    @property
    def finish_reason(self) -> str | None: ...


class Sequence:
    """The recorded completion order of one step attempt's answers.

    Answer ``i`` is released once every answer recorded before it was released (or its
    call ended otherwise), so the answers arrive in the recorded order without any
    wall-clock sleep. An answer recorded earlier that the replay does not ask for
    within ``wait_s`` is passed over.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.next = 0
        """The position whose answer goes next."""
        self.asked: set[int] = set()
        self.done: set[int] = set()
        self._moved: anyio.Event | None = None
        self._moved_at: float | None = None

    async def turn(self, index: int) -> None:
        """Wait until the answers recorded before ``index`` are out."""
        self.asked.add(index)
        now = anyio.current_time()
        if self._moved_at is None:
            self._moved_at = now  # the wait for the first answer starts with the step
        while self.next < index:
            deadline = self._moved_at + self.wait_s
            if now >= deadline and self.next not in self.asked:
                # Never asked for: the replay diverged before this answer; go on.
                self._advance()
                continue
            if self._moved is None:
                self._moved = anyio.Event()
            moved = self._moved
            with anyio.move_on_after(deadline - now if now < deadline else self.wait_s):
                await moved.wait()
            now = anyio.current_time()

    def release(self, index: int) -> None:
        """``index`` answered (or its call ended): the next one may go."""
        self.done.add(index)
        if index == self.next:
            self._advance()

    def _advance(self) -> None:
        self.next += 1
        while self.next in self.done:
            self.next += 1
        self._moved_at = anyio.current_time()
        if self._moved is not None:
            self._moved.set()
            self._moved = None


def sequences(
    calls: Iterable[RecordedCall], wait_s: float = DIVERGED_WAIT_S
) -> dict[str, tuple[Sequence, int]]:
    """Each recorded call's step-attempt sequence and position in it, by call id.

    The order is the recorded completion order (ties:
    call id, which is time-ordered). Calls that never answered (cancelled, or left
    running) have no place in it.
    """
    by_attempt: dict[tuple[str, int], list[RecordedCall]] = {}
    for call in calls:
        if call.status not in ("cancelled", "running") and call.completed_at is not None:
            by_attempt.setdefault((call.step_key, call.attempt), []).append(call)
    placed: dict[str, tuple[Sequence, int]] = {}
    for answered in by_attempt.values():
        sequence = Sequence(wait_s)
        answered.sort(key=lambda c: (c.completed_at, c.id))
        placed.update({call.id: (sequence, i) for i, call in enumerate(answered)})
    return placed


class _Recorded:
    """A model name and provider, and the response a recorded call gave."""

    def __init__(self, name: str, provider: str) -> None:
        self._name = name
        self._provider = provider
        self.served = 0
        """Answers served from the recording."""

    @property
    def name(self) -> str:
        """The model name."""
        return self._name

    @property
    def provider(self) -> str:
        """The original model's provider."""
        return self._provider

    def _answer(self, rec: RecordedCall, reused_from: str | None) -> ModelResponse:
        """``rec``'s answer (raised as the error it recorded when it failed)."""
        self.served += 1
        if rec.status != "ok":
            raise ProviderError(
                rec.error or f"recorded {rec.status}", provider="replay", model=self._name
            )
        return ModelResponse(
            content=rec.response or "",
            model=self._name,
            input_tokens=rec.input_tokens,
            output_tokens=rec.output_tokens,
            latency_ms=float(rec.latency_ms or 0),
            cost_usd=rec.cost_usd,
            finish_reason=rec.finish_reason,
            reused_from=reused_from,
        )


class ResumeClient(_Recorded):
    """Serves a resumed step the answers its calls received before the process stopped.

    ``answers`` holds, per (step, model), the finished calls of the steps being run
    again, in the order they were made; each is served once, as the stored call it
    repeats (``reused_from``). Everything else goes to ``live``.
    """

    def __init__(
        self,
        name: str,
        live: ModelClient,
        answers: dict[tuple[str, str], deque[RecordedCall]],
    ) -> None:
        super().__init__(name, live.provider)
        self.live = live
        self.answers = answers

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """The stored answer of this step and model, or the live model's."""
        queue = self.answers.get((request.step_id, self._name))
        if not queue:
            return await self.live.complete(request)
        rec = queue.popleft()
        return self._answer(rec, reused_from=rec.id)


class ReplayClient(_Recorded):
    """Serves a replay: every call from the recording of its step, model and attempt.

    ``recordings`` holds, per (step, model, attempt), the calls in the order they were
    started; ``order`` (from :func:`sequences`) places each in its step attempt's
    recorded completion order, which the answers are released in.
    """

    def __init__(
        self,
        name: str,
        recordings: Mapping[tuple[str, str, int], deque[RecordedCall]],
        order: Mapping[str, tuple[Sequence, int]] | None = None,
    ) -> None:
        super().__init__(name, "replay")
        self.recordings = recordings
        self.order = order or {}

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """The recorded answer of this step, model and attempt, in its recorded turn."""
        queue = self.recordings.get((request.step_id, self._name, request.attempt))
        if not queue:
            raise ProviderError(
                f"no recording for step {request.step_id!r}, model {self._name!r}, "
                f"attempt {request.attempt}",
                provider="replay",
                model=self._name,
            )
        rec = queue.popleft()
        if rec.status == "cancelled":
            await self._lose(rec, request)
        place = self.order.get(rec.id)
        if place is None:
            await anyio.lowlevel.checkpoint()
            return self._answer(rec, reused_from=None)
        sequence, index = place
        try:
            # This answer arrived in the original run, so it must arrive here even if
            # the mode decides (and cancels) while it waits for its turn: the wait is
            # shielded, and bounded (answers before it are out or passed over soon), so
            # a cancellation is only deferred until the answer is in.
            with anyio.CancelScope(shield=True):
                await sequence.turn(index)
        finally:
            # Released on return (nothing awaits between here and the answer's arrival
            # in the step), or when it failed: either way it is out.
            sequence.release(index)
        return self._answer(rec, reused_from=None)

    async def _lose(self, rec: RecordedCall, request: ModelRequest) -> NoReturn:
        """A call the original run cancelled (its mode had decided, or the step's
        deadline cut it) must lose the same way: answer nothing until it is cancelled
        again, and only if that never happens (the replay diverged) fail after a
        generous wait rather than hang."""
        self.served += 1
        with anyio.move_on_after(DIVERGED_WAIT_S + 2 * (rec.latency_ms or 0) / 1000):
            await anyio.Event().wait()
        raise ProviderError(
            f"not recorded: the original run cancelled this call (step "
            f"{request.step_id!r}, model {self._name!r})",
            provider="replay",
            model=self._name,
        )
