"""One logical model call, recorded: limits, retries, timeouts, and a result value.

A call acquires its concurrency slots (the step's, the session's, the model's
process-wide one, in that fixed order so waits cannot deadlock), emits
``CallStarted``, then makes up to ``1 + max_retries`` attempts. Every attempt emits a
``CallAttempt`` (number, status, HTTP status, error, the wait before the next one), so a
retried call is one call with its attempts in the store, not several lost ones. The
call ends with one ``CallFinished``: ok, failed, timed out, or cancelled.

A step's request carries the step's seed; each call sends its own,
:func:`~thinktank.providers.base.call_seed` of it and the model name, on every attempt.

A tolerated failure is a :class:`CallResult` value, never an exception; cancellation is
recorded and then propagates.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import anyio

from thinktank._ids import new_id
from thinktank.engine.budget import DEFAULT_OUTPUT_ESTIMATE, Budget, estimate_tokens
from thinktank.errors import ProviderError
from thinktank.events import CallAttempt, CallFinished, CallStarted, CallStatus, Event, utcnow
from thinktank.providers.base import (
    ModelClient,
    ModelRequest,
    ModelResponse,
    PooledModel,
    call_seed,
)

__all__ = ["CallResult", "Caller", "OnDelta", "call_model"]

Emit = Callable[[Event], None]
OnDelta = Callable[[str, str, str], None]
"""(step id, model, text so far received in this piece) -> None."""

_JITTER = random.Random()


@dataclass(slots=True, kw_only=True)
class CallResult:
    """How one model call ended."""

    call_id: str
    """UUID of the call."""
    model: str
    """The model name."""
    status: CallStatus
    """ok, failed, timeout or cancelled."""
    started_at: datetime
    """When it was first sent."""
    content: str | None = None
    """Response text (partial or None on failure)."""
    input_tokens: int | None = None
    """Prompt tokens, None when unknown."""
    output_tokens: int | None = None
    """Completion tokens, None when unknown."""
    latency_ms: float = 0.0
    """Wall time of the call, retries and waits included."""
    cost_usd: float | None = None
    """USD, None when unknown."""
    finish_reason: str | None = None
    """Why generation stopped."""
    error: str | None = None
    """What went wrong."""
    tries: int = 1
    """Attempts made."""
    refused: bool = False
    """True when the budget refused the call before it was sent (nothing recorded)."""

    @property
    def ok(self) -> bool:
        """True when the model answered."""
        return self.status == "ok"


@dataclass(slots=True)
class _Attempt:
    status: CallStatus = "ok"
    response: ModelResponse | None = None
    error: str | None = None
    exc: BaseException | None = None
    status_code: int | None = None
    partial: str | None = None


def _failed(exc: BaseException, timeout_s: float | None, received: str | None) -> _Attempt:
    """The attempt record of an attempt that raised ``exc`` after streaming
    ``received`` (kept as its partial text when the error carries none)."""
    if isinstance(exc, ProviderError):
        # CallTimeoutError (a wire timeout) is both; it keeps its provider details.
        status: CallStatus = "timeout" if isinstance(exc, TimeoutError) else "failed"
        return _Attempt(
            status,
            error=str(exc),
            exc=exc,
            status_code=exc.status_code,
            partial=exc.partial if exc.partial is not None else received,
        )
    if isinstance(exc, TimeoutError):
        if received:
            error = (
                f"no complete answer within {timeout_s:g} s ({len(received)} characters received)"
            )
        else:
            error = f"no answer within {timeout_s:g} s"
        return _Attempt("timeout", error=error, exc=exc, partial=received)
    return _Attempt("failed", error=f"{type(exc).__name__}: {exc}", exc=exc, partial=received)


def call_model(
    model: PooledModel | ModelClient,
    request: ModelRequest,
    *,
    session_id: str,
    emit: Emit,
    timeout_s: float | None = None,
    limiters: Sequence[anyio.CapacityLimiter] = (),
    budget: Budget | None = None,
    on_delta: OnDelta | None = None,
    record_start: bool = True,
) -> Coroutine[Any, Any, CallResult]:
    """Send ``request`` with retries under ``limiters`` and timeouts; record it all.

    Await the result. (A plain function returning the call's coroutine: without
    limits it is the recording coroutine itself, one frame less on every call.)

    Args:
        model: The pooled model (or a bare client: no retries, no limit).
        request: The prompt and its settings; its ``seed``, when set, is the step's
            (the call sends ``call_seed(seed, model)``).
        session_id: For the events.
        emit: Where events go.
        timeout_s: Time limit of one attempt set by the step (``call_timeout_ms``);
            the tighter of it and the model's own applies.
        limiters: The step's and the session's slots, acquired in order, then the
            model's own limiter.
        budget: The session's budget: an attempt that may not fit is not sent (a
            refused first attempt returns ``refused=True`` and records nothing).
        on_delta: Called as (step id, model, text) with each piece a streaming model
            sends (live progress; not recorded: the call's full text is).
        record_start: Emit ``CallStarted``; False when nothing listens for it (a
            run without a store or listener: the result needs only how calls end).

    Returns:
        The call's result; failures and timeouts are values. Cancellation is
        recorded as a cancelled call and re-raised.
    """
    pooled = model if isinstance(model, PooledModel) else PooledModel(client=model)
    if request.max_tokens is None and pooled.max_tokens is not None:
        request = dataclasses.replace(request, max_tokens=pooled.max_tokens)
    if request.seed is not None:
        # The step's seed becomes this model's own: samples NAME#1, NAME#2 of one model
        # must not draw the same numbers. Retries re-send it unchanged.
        request = dataclasses.replace(request, seed=call_seed(request.seed, pooled.client.name))
    # The text a streaming attempt has sent so far: what a timeout or a cancellation
    # keeps of it (the client itself is cancelled, so it cannot hand its text back).
    received: list[str] = []
    forward = (
        functools.partial(on_delta, request.step_id, pooled.client.name)
        if on_delta is not None
        else None
    )

    # The request's own listener (a judge's, see ``engine.multi``) hears its pieces too.
    own = request.on_delta

    def collect(text: str) -> None:
        if own is not None and not received:
            # An attempt's first piece (``received`` is cleared at each attempt): what
            # an earlier attempt streamed is void, and the empty piece says so.
            own("")
        received.append(text)
        if forward is not None:
            forward(text)
        if own is not None:
            own(text)

    request = dataclasses.replace(request, on_delta=collect)
    limits = [*limiters, pooled.limiter] if pooled.limiter is not None else limiters
    attempt_timeout = pooled.timeout_s
    if timeout_s is not None and (attempt_timeout is None or timeout_s < attempt_timeout):
        attempt_timeout = timeout_s
    recorded = _recorded(
        pooled,
        request,
        session_id,
        emit,
        attempt_timeout,
        budget,
        received,
        record_start=record_start,
    )
    if not limits:
        return recorded
    return _limited(limits, recorded)


async def _limited(
    limits: Sequence[anyio.CapacityLimiter], recorded: Coroutine[Any, Any, CallResult]
) -> CallResult:
    """``recorded`` once every slot of ``limits`` is held (in order)."""
    try:
        if len(limits) == 1:
            async with limits[0]:
                return await recorded
        async with AsyncExitStack() as stack:
            for limiter in limits:
                await stack.enter_async_context(limiter)
            return await recorded
    finally:
        # Cancelled while waiting for a slot: the call never started.
        recorded.close()


async def _recorded(
    pooled: PooledModel,
    request: ModelRequest,
    session_id: str,
    emit: Emit,
    attempt_timeout: float | None,
    budget: Budget | None,
    received: list[str],
    *,
    record_start: bool = True,
) -> CallResult:
    """The attempts of one call, once its slots are held, with every event emitted
    (``received``: the streamed text of the attempt under way)."""
    # The one place every model call starts: a call task spawned just before a cancel
    # (a multi-model step's) runs until its first await, and an unlimited call has
    # none before the client's. Once cancelled, nothing is sent or recorded.
    await anyio.lowlevel.checkpoint_if_cancelled()
    client = pooled.client
    spend = _Spend.estimate(pooled, request, budget)
    if spend is not None and not await spend.reserve():
        return _refused(client.name, spend.budget)
    call = _Call(session_id, request, client.name, new_id(), utcnow(), time.perf_counter())
    if record_start:
        emit(
            CallStarted(
                session_id=session_id,
                step_id=request.step_id,
                call_id=call.call_id,
                model=call.model,
                attempt=request.attempt,
                at=call.started_at,
            )
        )
    tries = 0
    # The last attempt that ended, if the one under way (if any) has not: what a
    # cancellation keeps of it is its partial text.
    outcome: _Attempt | None = None
    try:
        while True:
            tries += 1
            try_started = call.started_at if tries == 1 else utcnow()
            try_start = time.perf_counter()
            outcome = None
            received.clear()
            sent = request if tries == 1 else dataclasses.replace(request, retry=tries - 1)
            # One attempt, inline (not a coroutine of its own: this is every call's path).
            try:
                if attempt_timeout is None:
                    response = await client.complete(sent)
                else:
                    with anyio.CancelScope(
                        deadline=anyio.current_time() + attempt_timeout
                    ) as scope:
                        response = await client.complete(sent)
                    if scope.cancelled_caught:
                        raise TimeoutError
            except Exception as exc:  # noqa: BLE001 - a broken client fails its call, not the session
                outcome = _failed(exc, attempt_timeout, "".join(received) or None)
            else:
                if response.error is None and tries == 1 and spend is None:
                    # Answered at the first try with nothing to settle: most calls.
                    return _result(_finished(call, 1, "ok", response, None, None), emit)
                outcome = _answered(response)
            wait = await _retry_wait(pooled, outcome, tries, spend)
            # A call answered at the first try is its own attempt record; once a
            # retry happens, every try (the first included) gets one.
            if wait is not None or tries > 1:
                emit(_attempt_event(call, tries, outcome, try_started, try_start, wait))
            if wait is None:
                break
            await anyio.sleep(wait)
    except anyio.get_cancelled_exc_class():
        emit(_cancelled(call, tries, outcome, received, spend))
        raise
    return _result(
        _finished(call, tries, outcome.status, outcome.response, outcome.error, outcome.partial),
        emit,
    )


def _cancelled(
    call: _Call, tries: int, outcome: _Attempt | None, received: list[str], spend: _Spend | None
) -> CallFinished:
    """The ``CallFinished`` of a cancelled call; what it had spent is kept as spent."""
    if spend is not None:
        spend.cancelled()
    partial = outcome.partial if outcome is not None else "".join(received) or None
    return _finished(call, tries, "cancelled", None, "cancelled before the model answered", partial)


def _refused(model: str, budget: Budget) -> CallResult:
    """The result of a call the budget refused before it was sent (nothing recorded)."""
    return CallResult(
        call_id="",
        model=model,
        status="failed",
        started_at=utcnow(),
        error=budget.exhausted,
        tries=0,
        refused=True,
    )


def _answered(response: ModelResponse) -> _Attempt:
    """The attempt record of an attempt that got a response (maybe an error one)."""
    if response.error is None:
        return _Attempt("ok", response=response)
    return _Attempt("failed", response=response, error=response.error)


async def _retry_wait(
    pooled: PooledModel, outcome: _Attempt, tries: int, spend: _Spend | None
) -> float | None:
    """Settle the attempt's reservation; the wait before the next attempt, or None when
    there is none (it succeeded, its error is not retried, or the budget refuses the
    next attempt: then its error says so)."""
    if spend is not None:
        spend.settle(outcome)
    if (
        outcome.status == "ok"
        or outcome.exc is None
        or not pooled.retry.should_retry(outcome.exc, tries - 1)
    ):
        return None
    wait = pooled.retry.delay_s(tries - 1, getattr(outcome.exc, "retry_after_s", None), _JITTER)
    if spend is not None and not await spend.reserve():
        outcome.error = f"{outcome.error}; not retried: {spend.budget.exhausted}"
        return None
    return wait


def _attempt_event(
    call: _Call,
    number: int,
    outcome: _Attempt,
    started_at: datetime,
    start: float,
    wait: float | None,
) -> CallAttempt:
    """The ``CallAttempt`` of try ``number``, begun at ``started_at`` (``start``:
    perf_counter() then), followed by ``wait`` s before the next (None: no next)."""
    return CallAttempt(
        session_id=call.session_id,
        step_id=call.request.step_id,
        call_id=call.call_id,
        model=call.model,
        attempt=call.request.attempt,
        number=number,
        status=outcome.status,
        started_at=started_at,
        latency_ms=(time.perf_counter() - start) * 1000,
        status_code=outcome.status_code,
        error=outcome.error,
        retry_in_s=wait,
    )


def _result(event: CallFinished, emit: Emit) -> CallResult:
    """Emit the call's ``CallFinished``; its result value."""
    emit(event)
    return CallResult(
        call_id=event.call_id,
        model=event.model,
        status=event.status,
        started_at=event.started_at,
        content=event.content,
        input_tokens=event.input_tokens,
        output_tokens=event.output_tokens,
        latency_ms=event.latency_ms,
        cost_usd=event.cost_usd,
        finish_reason=event.finish_reason,
        error=event.error,
        tries=event.tries,
    )


@dataclass(slots=True)
class _Spend:
    """One call's share of a limited budget: the estimate each attempt reserves before
    it is sent, and whether a reservation is held."""

    budget: Budget
    cost_usd: float
    tokens: int
    held: bool = False

    @classmethod
    def estimate(
        cls, pooled: PooledModel, request: ModelRequest, budget: Budget | None
    ) -> _Spend | None:
        """The call's estimate (prompt plus its output cap); None when no budget limits."""
        if budget is None or not budget.limited:
            return None
        tokens = estimate_tokens(request.prompt + (request.system or ""))
        tokens += request.max_tokens or DEFAULT_OUTPUT_ESTIMATE
        return cls(budget, tokens * (pooled.price_per_mtok or 0.0) / 1e6, tokens)

    async def reserve(self) -> bool:
        """Reserve the estimate for the next attempt; False when it may not fit."""
        self.held = await self.budget.reserve_when_settled(self.cost_usd, self.tokens)
        return self.held

    def settle(self, outcome: _Attempt) -> None:
        """Replace the reservation by what the attempt spent."""
        response = outcome.response
        if response is None:
            # No usage report: an error response costs nothing we can know of.
            self.budget.settle(self.cost_usd, self.tokens, 0.0, 0)
        else:
            self.budget.settle(self.cost_usd, self.tokens, response.cost_usd, response.total_tokens)
        self.held = False

    def cancelled(self) -> None:
        """What a cancelled attempt spent is unknown: keep its estimate as spent."""
        if self.held:
            self.budget.settle(self.cost_usd, self.tokens, None, None)
            self.held = False


class _Call(NamedTuple):
    """What every ending of one call records: who made it, which it is, when it began."""

    session_id: str
    request: ModelRequest
    model: str
    call_id: str
    started_at: datetime
    start: float
    """perf_counter() when it began."""


def _finished(
    call: _Call,
    tries: int,
    status: CallStatus,
    response: ModelResponse | None,
    error: str | None,
    partial: str | None,
) -> CallFinished:
    """The call's ``CallFinished``: how it ended, with the answer's accounting."""
    request = call.request
    return CallFinished(
        session_id=call.session_id,
        step_id=request.step_id,
        call_id=call.call_id,
        model=call.model,
        attempt=request.attempt,
        status=status,
        started_at=call.started_at,
        content=response.content if response is not None else partial,
        input_tokens=response.input_tokens if response is not None else None,
        output_tokens=response.output_tokens if response is not None else None,
        latency_ms=(time.perf_counter() - call.start) * 1000,
        cost_usd=response.cost_usd if response is not None else None,
        finish_reason=response.finish_reason if response is not None else None,
        error=error,
        tries=tries,
        reused_from=response.reused_from if response is not None else None,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """How a session's steps call models: its clients, events, budget, and limits.

    It owns the order limits are taken in (the step's ``maxConcurrentModels`` slots,
    then the session's ``maxConcurrentCalls``, then the model's own in ``call_model``):
    one global order, so no two waits can deadlock.
    """

    session_id: str
    """For the events."""
    clients: Mapping[str, PooledModel | ModelClient]
    """Model clients by name."""
    emit: Emit
    """Where events go."""
    max_concurrent_models: int
    """Calls a step makes at once, at most."""
    session_limiter: anyio.CapacityLimiter | None = None
    """The session's call slots (``maxConcurrentCalls``), if it limits calls."""
    budget: Budget | None = None
    """The session's budget."""
    on_delta: OnDelta | None = None
    """Receives streamed text as it arrives (live progress)."""
    record_starts: bool = True
    """Emit ``CallStarted`` events (False when nothing consumes them)."""

    def limiters(self, at_once: int) -> list[anyio.CapacityLimiter]:
        """The slots a step's calls wait for when it makes up to ``at_once`` calls at a
        time: the step's own only when that is over its limit (else no wait), then the
        session's."""
        limit = self.max_concurrent_models
        limiters = [anyio.CapacityLimiter(limit)] if at_once > limit else []
        if self.session_limiter is not None:
            limiters.append(self.session_limiter)
        return limiters

    def start(
        self,
        model: str,
        request: ModelRequest,
        limiters: Sequence[anyio.CapacityLimiter] = (),
        timeout_ms: int | None = None,
    ) -> Coroutine[Any, Any, CallResult]:
        """The call's coroutine (``call_model``), under ``limiters`` (from
        :meth:`limiters`), or else the session's slots; ``timeout_ms`` is the step's
        time limit of one attempt (``call_timeout_ms``)."""
        if not limiters and self.session_limiter is not None:
            limiters = (self.session_limiter,)
        return call_model(
            self.clients[model],
            request,
            session_id=self.session_id,
            emit=self.emit,
            timeout_s=None if timeout_ms is None else timeout_ms / 1000,
            limiters=limiters,
            budget=self.budget,
            on_delta=self.on_delta,
            record_start=self.record_starts,
        )

    async def call(
        self,
        model: str,
        request: ModelRequest,
        limiters: Sequence[anyio.CapacityLimiter],
        calls: list[CallResult],
        timeout_ms: int | None = None,
    ) -> CallResult:
        """One recorded call; its result joins ``calls`` (the step's, for its usage)."""
        result = await self.start(model, request, limiters, timeout_ms)
        calls.append(result)
        return result
