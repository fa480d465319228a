"""``POST /v1/chat/completions`` (also ``/api/v1/chat/completions``): OpenAI's chat
completion, answered by one model or by several at once with their answers merged.

This module owns the endpoint: turning OpenAI's body into the one-step session of
:func:`thinktank.ask.session_for` (so every completion is a stored session that
``thinktank show`` and ``replay`` read, run by the same engine as any other), and the
session's result back into OpenAI's ``chat.completion`` with a ``parallel`` block.

How a conversation becomes the engine's prompt (the engine asks one prompt and one
system prompt): ``system`` and ``developer`` messages, in order, are the system prompt
(after ``parallel.system`` when both are given); a single user message is the prompt
as it is; a longer conversation is rendered as a transcript, one turn per paragraph
(``User: ...``, ``Assistant: ...``), which must end with a user turn.

Errors: a bad field is 400 naming it; an unknown model 404 (``model``) or 400
(``parallel.models``); every model failed 502; every model timed out 504. A client
that disconnects cancels the session (stored ``interrupted``, its calls cancelled).
The session's ``source`` is ``http`` (what started it); the request id
(``X-Request-Id``) and the caller's key id are stored in its own columns.

Budgets: before any call, the most the request can cost
(:func:`~thinktank.server.keys.cost_bound`; a request without ``max_tokens`` is
capped at :data:`~thinktank.server.keys.DEFAULT_MAX_TOKENS` per call) is reserved
from the caller's key (402 ``insufficient_quota`` when it does not fit), until the
request's own bound (its ``timeout_per_step_ms``) plus a margin, renewed while the
request is alive (so that only a killed process's reservation lapses); when the request
ends, however it ends (answered, failed, the client gone), the reservation is
settled with what its calls cost, and the session records the key and request ids.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from thinktank.server.deps import CallerDep, store_of
from thinktank.server.errors import ApiError, error_body
from thinktank.server.keys import (
    DEFAULT_MAX_TOKENS,
    Meter,
    cost_bound,
    held,
    reservation_ttl,
    reserve,
    settle,
)
from thinktank.server.middleware import request_id
from thinktank.server.schemas import ChatMessage, ChatRequest
from thinktank.session.spec import ParallelExecutionConfig

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from thinktank.ask import ParallelResult
    from thinktank.engine.result import SessionResult
    from thinktank.providers.registry import ModelRegistry
    from thinktank.session.spec import SessionSpec

__all__ = [
    "SOURCE",
    "Conversation",
    "completion_body",
    "parallel_block",
    "render_conversation",
    "router",
]

router = APIRouter()

SOURCE = "http"
"""The stored session's ``source``: the server started it."""

_ROLES = {"user": "User", "assistant": "Assistant"}


@dataclass(frozen=True, kw_only=True)
class Conversation:
    """The prompt and system prompt a conversation renders to."""

    prompt: str
    """The user's turn, or the whole conversation as a transcript."""
    system: str | None
    """The system prompt, None without one."""


def render_conversation(messages: list[ChatMessage], *, system: str | None = None) -> Conversation:
    """The engine's prompt and system prompt of ``messages`` (rules in the module doc).

    Raises:
        ApiError: 400 when no user turn ends the conversation.
    """
    systems = [system] if system else []
    turns: list[ChatMessage] = []
    for message in messages:
        if message.role in ("system", "developer"):
            systems.append(message.text())
        else:
            turns.append(message)
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "messages must end with a user message", param="messages")
    if len(turns) == 1:
        prompt = turns[0].text()
    else:
        prompt = "\n\n".join(f"{_ROLES[t.role]}: {t.text()}" for t in turns)
    if not prompt.strip():
        raise ApiError(400, "the user message is empty", param="messages")
    return Conversation(prompt=prompt, system="\n\n".join(systems) or None)


def _config(
    body: ChatRequest, ensembles: dict[str, ParallelExecutionConfig]
) -> tuple[ParallelExecutionConfig, Conversation]:
    """The execution config of ``body`` (OpenAI's top-level fields win, then
    ``parallel``'s, then those of the named ensemble ``model`` is) and its prompt."""
    ensemble = ensembles.get(body.model) if body.model is not None else None
    base: dict[str, Any] = {} if ensemble is None else ensemble.model_dump(exclude_unset=True)
    if body.parallel is None:
        if body.model is None:
            raise ApiError(400, "give 'model', or 'parallel' with 'models'", param="model")
        if ensemble is None:
            base = {"models": [body.model]}
    else:
        base.update(
            body.parallel.model_dump(
                exclude={"response_shape", "progress_events"}, exclude_unset=True
            )
        )
    conversation = render_conversation(body.messages, system=base.pop("system", None))
    overrides = {
        "system": conversation.system,
        "temperature": body.temperature,
        "max_tokens": body.max_tokens or body.max_completion_tokens,
        "seed": body.seed,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ParallelExecutionConfig.model_validate(base), conversation
    except ValueError as exc:  # pydantic's ValidationError: a field the overrides broke
        raise ApiError(400, f"parallel: {exc}", param="parallel") from exc


def _check_models(registry: ModelRegistry, body: ChatRequest, cfg: ParallelExecutionConfig) -> None:
    """404/400 before anything runs when a model cannot be used."""
    asked = list(cfg.models) + ([cfg.synthesizer] if cfg.synthesizer else [])
    for name in asked:
        why = registry.check(name)
        if why is None:
            continue
        if body.parallel is None:
            status = 404 if why.startswith("unknown model") else 400
            raise ApiError(status, why, param="model", code="model_not_found")
        param = "parallel.synthesizer" if name == cfg.synthesizer else "parallel.models"
        raise ApiError(400, why, param=param, code="model_not_found")


def _spec(cfg: ParallelExecutionConfig) -> SessionSpec:
    from thinktank.ask import session_for

    return session_for(cfg, name="chat")


async def _until_disconnect(request: Request) -> None:
    """Return when the client goes away (the body has been read: only
    ``http.disconnect`` can come now)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _raise_for_failure(result: ParallelResult) -> None:
    """502 when every model failed, 504 when they timed out: no answer to give."""
    if result.synthesis is not None:
        return
    statuses = {r.status for r in result.responses}
    why = result.error or "; ".join(f"{r.model}: {r.error}" for r in result.responses if r.error)
    timed_out = "timeout" in statuses or "timed out" in (why or "")
    status = 504 if timed_out else 502
    message = f"no model answered: {why or 'no answer'}"
    raise ApiError(status, message, code="upstream_timeout" if timed_out else "upstream_failed")


def _usage(result: ParallelResult) -> dict[str, int]:
    """OpenAI's usage over every call (the judge's too); unknown counts as 0, since
    typed clients want integers (the ``parallel`` block keeps None)."""
    inp = result.usage.input_tokens or 0
    out = result.usage.output_tokens or 0
    return {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out}


def parallel_block(result: ParallelResult) -> dict[str, Any]:
    """The ``parallel`` block of a completion: every model's answer and the merge."""
    synthesis = result.synthesis
    return {
        "session_id": result.id,
        "mode": result.mode,
        "responses": [
            {
                "model": r.model,
                "content": r.content,
                "status": r.status,
                "error": r.error,
                "latency_ms": r.latency_ms,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "tokens": r.tokens,
                "cost_usd": r.cost_usd,
                "included_in_consensus": r.included_in_consensus,
            }
            for r in result.responses
        ],
        "synthesis": None
        if synthesis is None
        else {
            "content": synthesis.content,
            "consensus_score": synthesis.consensus_score,
            "method": synthesis.method,
            "reached": synthesis.reached,
            "threshold": synthesis.threshold,
            "outcome": synthesis.outcome,
        },
        "total_cost_usd": result.usage.total_cost_usd,
        "total_latency_ms": result.total_latency_ms,
        "early_termination": result.early_termination,
        "cached": result.cached,
    }


def completion_id(session_id: str) -> str:
    """The completion's id: names the stored session it is."""
    return f"chatcmpl-{session_id}"


def response_model(body: ChatRequest, cfg: ParallelExecutionConfig) -> str:
    """The ``model`` a completion reports: the one asked, else the panel."""
    return body.model or "+".join(cfg.models) or "thinktank"


def completion_body(result: ParallelResult, *, model: str, created: int) -> dict[str, Any]:
    """A ``chat.completion`` whose message is the synthesis, with the ``parallel`` block."""
    assert result.synthesis is not None
    return {
        "id": completion_id(result.id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.synthesis.content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(result),
        "parallel": parallel_block(result),
    }


async def _complete(
    request: Request, body: ChatRequest, cfg: ParallelExecutionConfig, prompt: str, meter: Meter
) -> JSONResponse:
    from thinktank.engine.stream import run

    created = int(time.time())
    finished: SessionResult | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await _until_disconnect(request)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        finished = await run(_spec(cfg), **_run_options(request, prompt, meter))
        tg.cancel_scope.cancel()
    if finished is None:  # the client left: nobody to answer
        return JSONResponse({}, status_code=499)
    result = _parallel_result(finished, cfg)
    _raise_for_failure(result)
    if body.parallel is not None and body.parallel.response_shape == "spec":
        return JSONResponse(result.model_dump(mode="json"))
    return JSONResponse(completion_body(result, model=response_model(body, cfg), created=created))


def _run_options(request: Request, prompt: str, meter: Meter) -> dict[str, Any]:
    """``run``'s arguments for the session of ``request``: the process's store and HTTP
    client, the prompt, the server as the session's source with the caller's key id
    and the request id (written with the session's first event), and the meter of its
    cost."""
    return {
        "inputs": {"prompt": prompt},
        "store": store_of(request),
        "http": request.app.state.http,
        "source": SOURCE,
        "key_id": request.state.caller.key_id,
        "request_id": request_id(request.scope),
        "on_event": meter,
    }


def _parallel_result(finished: SessionResult, cfg: ParallelExecutionConfig) -> ParallelResult:
    from thinktank.ask import to_parallel_result

    return to_parallel_result(finished, cfg.mode)


_PIECES = re.compile(r"\s*\S+\s*|\s+")
"""The synthesis is streamed a word at a time (with its whitespace)."""


def _sse(data: Any, *, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Chunks:
    """The ``chat.completion.chunk`` objects of one streamed completion (one id)."""

    def __init__(self, *, session_id: str, model: str, created: int) -> None:
        self.base = {
            "id": completion_id(session_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }

    def delta(self, delta: dict[str, Any], *, finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _sse({**self.base, "choices": [choice], **extra})

    def usage(self, result: ParallelResult) -> bytes:
        return _sse({**self.base, "choices": [], "usage": _usage(result)})


def _model_event(event: Any) -> bytes:
    """One model's answer, as the named SSE event ``thinktank.model``."""
    return _sse(
        {
            "model": event.model,
            "status": event.status,
            "content": event.content,
            "error": event.error,
            "latency_ms": event.latency_ms,
            "input_tokens": event.input_tokens,
            "output_tokens": event.output_tokens,
            "cost_usd": event.cost_usd,
        },
        event="thinktank.model",
    )


class _Judged:
    """How much of a judge's merged answer, written as the client listens, it has been
    sent: always a prefix of the text so far, stripped (the stored synthesis is the
    judge's text stripped), so leading blanks wait for a word and trailing ones for the
    next. A judge call that starts over (an escalation's second judge) sends nothing
    until its text runs past what was sent."""

    def __init__(self) -> None:
        self.sent = ""

    def grow(self, text: str) -> str:
        """The new piece to send for the judge's text so far (maybe empty)."""
        written = text.strip()
        if len(written) <= len(self.sent) or not written.startswith(self.sent):
            return ""
        piece = written[len(self.sent) :]
        self.sent = written
        return piece

    def rest(self, synthesis: str) -> list[str] | None:
        """The pieces that complete ``synthesis``: all of it a word at a time when no
        judge text was sent, the remainder after what was; None when what was sent is
        not how the synthesis begins (the judge failed after writing, and a fallback
        merged)."""
        if not self.sent:
            return _PIECES.findall(synthesis)
        if not synthesis.startswith(self.sent):
            return None
        return [synthesis[len(self.sent) :]] if len(synthesis) > len(self.sent) else []


async def _stream_events(
    request: Request, body: ChatRequest, cfg: ParallelExecutionConfig, prompt: str, meter: Meter
) -> AsyncIterator[bytes]:
    """The SSE body: a role chunk once the session starts, each model's answer as it
    arrives (opt-in), the synthesis as content chunks (a judge's as it writes it, else
    a word at a time once merged), the finish chunk carrying the ``parallel`` block,
    the usage chunk (``include_usage``), ``[DONE]``. Failures after the headers are
    sent are an ``error`` object (which the openai SDK raises)."""
    from thinktank.engine.runner import fan_out
    from thinktank.engine.stream import run
    from thinktank.events import CallFinished, Event, SessionStarted

    created = int(time.time())
    progress = body.parallel is not None and body.parallel.progress_events
    chunks: _Chunks | None = None
    judged = _Judged()
    # Unbounded: one completion's events are few, and the judge's text is what its
    # answer holds anyway. The engine emits synchronously; the body reads here.
    send, receive = anyio.create_memory_object_stream[Event | str](math.inf)

    def put(item: Event | str) -> None:
        # The body closes its end when the client leaves; the session still winds down.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            send.send_nowait(item)

    ended: list[SessionResult] = []
    failed: list[Exception] = []

    async def drive() -> None:
        options = _run_options(request, prompt, meter)
        options["on_event"] = fan_out([meter, put])
        options["on_synthesis"] = lambda _step, text: put(text)
        try:
            ended.append(await run(_spec(cfg), **options))
        except Exception as exc:  # noqa: BLE001 - raised below, after the chunks so far
            failed.append(exc)
        finally:
            send.close()

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(drive)
        async for item in receive:
            if isinstance(item, str):
                if chunks is not None and (piece := judged.grow(item)):
                    yield chunks.delta({"content": piece})
            elif isinstance(item, SessionStarted):
                chunks = _Chunks(
                    session_id=item.session_id, model=response_model(body, cfg), created=created
                )
                yield chunks.delta({"role": "assistant", "content": ""})
            elif progress and isinstance(item, CallFinished):
                yield _model_event(item)
    if failed:
        raise failed[0]
    assert chunks is not None
    for out in _ending(_parallel_result(ended[0], cfg), body, chunks, judged):
        yield out


def _ending(
    result: ParallelResult, body: ChatRequest, chunks: _Chunks, judged: _Judged
) -> list[bytes]:
    """The chunks after the session: the rest of the synthesis (or the error), the
    finish chunk, the usage chunk (``include_usage``), ``[DONE]``."""
    done = b"data: [DONE]\n\n"
    try:
        _raise_for_failure(result)
    except ApiError as exc:
        return [_sse(error_body(exc.status, exc.message, param=exc.param, code=exc.code)), done]
    assert result.synthesis is not None
    out: list[bytes] = []
    pieces = judged.rest(result.synthesis.content)
    if pieces is None:
        # Sent text cannot be taken back: the named event says what the answer is.
        out.append(_sse({"content": result.synthesis.content}, event="thinktank.synthesis"))
        pieces = []
    out.extend(chunks.delta({"content": piece}) for piece in pieces)
    out.append(chunks.delta({}, finish="stop", parallel=parallel_block(result)))
    if body.stream_options is not None and body.stream_options.include_usage:
        out.append(chunks.usage(result))
    out.append(done)
    return out


class _SettledStream(StreamingResponse):
    """A streamed completion that settles its reservation when it ends, however it
    ends: after the whole body, or when the client hung up (the stream is closed
    first, so the session is cancelled and its calls metered), or when the body never
    started."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        settle: Callable[[], Awaitable[None]],
        keep: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._body = body
        self._settle = settle
        self._keep = keep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self._keep():
                await super().__call__(scope, receive, send)
        finally:
            # Shielded: the request may be ending by cancellation; the money must not.
            with anyio.CancelScope(shield=True):
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None:
                    await aclose()
                await self._settle()


@router.post("/v1/chat/completions")
@router.post("/api/v1/chat/completions", include_in_schema=False)
async def chat_completions(request: Request, body: ChatRequest, caller: CallerDep) -> Any:
    """OpenAI's chat completion; ``parallel`` asks several models and merges them;
    ``stream`` answers with server-sent ``chat.completion.chunk`` events."""
    request.state.caller = caller  # recorded with the session (_run_options)
    cfg, conversation = _config(body, request.app.state.ensembles)
    registry = request.app.state.registry
    _check_models(registry, body, cfg)
    if cfg.max_tokens is None:
        # Sent to the models, so that the bound reserved below holds.
        cfg = cfg.model_copy(update={"max_tokens": DEFAULT_MAX_TOKENS})
    store = store_of(request)
    bound = cost_bound(registry, cfg, conversation.prompt)
    ttl = reservation_ttl(cfg.timeout_per_step_ms / 1000)
    reservation = await reserve(store, caller, bound.usd, ttl_s=ttl)
    meter = Meter(bound)

    async def settled() -> None:
        await settle(store, reservation, meter.usd)

    if body.stream:
        events = _stream_events(request, body, cfg, conversation.prompt, meter)
        return _SettledStream(events, settle=settled, keep=lambda: held(store, reservation))
    try:
        async with held(store, reservation):
            return await _complete(request, body, cfg, conversation.prompt, meter)
    finally:
        with anyio.CancelScope(shield=True):
            await settled()
