"""One model call, recorded: limits, timeout, and a result value whatever happens.

Every call emits ``CallStarted`` when it is sent (after its concurrency slots are
acquired) and ``CallFinished`` when it ends — ok, failed, timed out, or cancelled. A
tolerated failure is a :class:`CallResult` value, never an exception; cancellation is
recorded and then propagates.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime

import anyio

from thinktank.errors import ProviderError
from thinktank.events import CallFinished, CallStarted, CallStatus, Event, utcnow
from thinktank.providers.base import ModelClient, ModelRequest, ModelResponse

__all__ = ["CallResult", "call_model"]

Emit = Callable[[Event], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallResult:
    """How one model call ended."""

    call_id: str
    """UUID of the call."""
    model: str
    """The model name."""
    status: CallStatus
    """ok, failed, timeout or cancelled."""
    started_at: datetime
    """When it was sent."""
    content: str | None = None
    """Response text (None when there was none)."""
    input_tokens: int | None = None
    """Prompt tokens, None when unknown."""
    output_tokens: int | None = None
    """Completion tokens, None when unknown."""
    latency_ms: float = 0.0
    """Wall time of the call."""
    cost_usd: float | None = None
    """USD, None when unknown."""
    finish_reason: str | None = None
    """Why generation stopped."""
    error: str | None = None
    """What went wrong."""

    @property
    def ok(self) -> bool:
        """True when the model answered."""
        return self.status == "ok"


async def call_model(
    client: ModelClient,
    request: ModelRequest,
    *,
    session_id: str,
    emit: Emit,
    timeout_s: float | None = None,
    limiters: Sequence[anyio.CapacityLimiter] = (),
) -> CallResult:
    """Send ``request`` to ``client`` under ``limiters`` and a timeout; record it.

    Returns:
        The call's result; failures and timeouts are values. Cancellation is
        recorded as a cancelled call and re-raised.
    """
    async with AsyncExitStack() as stack:
        for limiter in limiters:
            await stack.enter_async_context(limiter)
        call_id = str(uuid.uuid4())
        started_at = utcnow()
        emit(
            CallStarted(
                session_id=session_id,
                step_id=request.step_id,
                call_id=call_id,
                model=client.name,
                attempt=request.attempt,
                at=started_at,
            )
        )
        start = time.perf_counter()
        response: ModelResponse | None = None
        status: CallStatus = "ok"
        error: str | None = None
        try:
            with anyio.fail_after(timeout_s):
                response = await client.complete(request)
        except anyio.get_cancelled_exc_class():
            _finish(
                emit,
                session_id,
                request,
                client,
                call_id,
                started_at,
                start,
                None,
                "cancelled",
                "cancelled before the model answered",
            )
            raise
        except TimeoutError:
            status, error = "timeout", f"no answer within {timeout_s:g} s"
        except ProviderError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        if response is not None and response.error is not None:
            status, error = "failed", response.error
        return _finish(
            emit, session_id, request, client, call_id, started_at, start, response, status, error
        )
    raise AssertionError("unreachable")  # pragma: no cover - the stack never swallows


def _finish(
    emit: Emit,
    session_id: str,
    request: ModelRequest,
    client: ModelClient,
    call_id: str,
    started_at: datetime,
    start: float,
    response: ModelResponse | None,
    status: CallStatus,
    error: str | None,
) -> CallResult:
    latency_ms = (time.perf_counter() - start) * 1000
    result = CallResult(
        call_id=call_id,
        model=client.name,
        status=status,
        started_at=started_at,
        content=response.content if response is not None else None,
        input_tokens=response.input_tokens if response is not None else None,
        output_tokens=response.output_tokens if response is not None else None,
        latency_ms=latency_ms,
        cost_usd=response.cost_usd if response is not None else None,
        finish_reason=response.finish_reason if response is not None else None,
        error=error,
    )
    emit(
        CallFinished(
            session_id=session_id,
            step_id=request.step_id,
            call_id=call_id,
            model=client.name,
            attempt=request.attempt,
            status=status,
            started_at=started_at,
            content=result.content,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            latency_ms=latency_ms,
            cost_usd=result.cost_usd,
            finish_reason=result.finish_reason,
            error=error,
        )
    )
    return result
