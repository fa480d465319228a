"""API keys: making them, checking them, and the limits each key carries.

This module owns what a key is (``tt_`` and 32 random bytes, URL-safe base64; stored
as its SHA-256 only, which is safe for a high-entropy token) and the limits enforced
through the store, so that every server process on one database shares them:

- :class:`StoreKeys` is the server's :class:`~thinktank.server.auth.KeyChecker`: it
  looks a presented key up by its hash, compares the hashes in constant time, refuses
  revoked keys and counts the request against the key's requests per minute (over it:
  429 with ``Retry-After``). The caller dependency calls it, so every ``/v1`` route is
  authenticated and limited.
- :func:`reserve` and :func:`settle` are the budget API of the routes that spend
  money: reserve the most a request can cost before calling any model (402
  ``insufficient_quota`` when the key's spent + reserved + it is over its budget),
  then settle with what it cost. A reservation lapses after the request's own bound
  plus a margin (:func:`reservation_ttl`), so that a process killed mid-request does
  not keep its money reserved for ever: the next reservation on the key releases it,
  and so does :func:`sweeping`, the server's periodic sweep.
- :func:`cost_bound` is that most for a chat completion, and :class:`Meter` adds up
  what its calls cost as their events arrive (what :func:`settle` charges, also when
  the client hangs up and the session is cancelled) and which session they made.

Keys are never logged nor stored; this module imports no web framework (``thinktank
keys`` uses it without the server's extra).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from thinktank.errors import StoreError, UsageError
from thinktank.server.auth import ANONYMOUS, Caller
from thinktank.server.errors import ApiError

if TYPE_CHECKING:
    from thinktank.events import Event
    from thinktank.providers.registry import ModelRegistry
    from thinktank.session.spec import ParallelExecutionConfig
    from thinktank.store import Store

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "KEY_PREFIX",
    "MARGIN_S",
    "SWEEP_S",
    "CostBound",
    "Meter",
    "Reservation",
    "StoreKeys",
    "check_settings",
    "cost_bound",
    "hash_key",
    "held",
    "holder",
    "micro_usd",
    "new_key",
    "reservation_ttl",
    "reserve",
    "settle",
    "shown_prefix",
    "sweeping",
]

_LOG = logging.getLogger(__name__)

KEY_PREFIX = "tt_"
"""How every key starts (so a leaked one is recognisable by secret scanners)."""
_SHOWN = 10
"""Characters of a key kept to tell keys apart in ``keys list`` (the prefix and 7 more)."""


def new_key() -> str:
    """A new key: ``tt_`` and 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, the only form the store keeps."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def shown_prefix(key: str) -> str:
    """The start of a key that ``keys list`` shows."""
    return key[:_SHOWN]


def micro_usd(usd: float) -> int:
    """Dollars as the store's integer micro-dollars."""
    return round(usd * 1_000_000)


class StoreKeys:
    """The keys of the store a server has open (a :class:`KeyChecker`).

    Args:
        store: Returns the process's open store (it is opened in the app's lifespan,
            after the checker is made).
    """

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store

    async def check(self, token: str) -> Caller | None:
        """The key's caller; None when the key is unknown or revoked.

        Raises:
            ApiError: 429 with ``Retry-After`` when the key is over its requests per
                minute.
        """
        presented = hash_key(token)
        store = self._store()
        key = await store.api_key_by_hash(presented)
        if key is None or not hmac.compare_digest(key.key_hash, presented):
            return None
        if key.revoked_at is not None:
            return None
        if key.rpm is not None:
            wait = await store.count_api_request(key.id)
            if wait is not None:
                raise ApiError(
                    429,
                    f"rate limit: this key may make {key.rpm} requests per minute; "
                    f"retry in {wait:.0f} s",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": f"{wait:.0f}"},
                )
        return Caller(key_id=key.id)


MARGIN_S = 30.0
"""Seconds a reservation outlives its request's own bound (``$THINKTANK_RESERVATION_
MARGIN_S`` overrides): time to store the session and stream the answer out."""
SWEEP_S = 30.0
"""Seconds between a server's sweeps of lapsed reservations
(``$THINKTANK_RESERVATION_SWEEP_S`` overrides)."""


def _seconds(env: str, default: float) -> float:
    value = os.environ.get(env)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"${env} must be a number of seconds, not {value!r}") from None
    if not seconds > 0:
        raise UsageError(f"${env} must be more than 0 seconds, not {value!r}")
    return seconds


def check_settings() -> None:
    """Raise UsageError now (``thinktank serve`` says it in one line) if
    ``$THINKTANK_RESERVATION_MARGIN_S`` or ``$THINKTANK_RESERVATION_SWEEP_S`` is not a
    positive number, rather than failing the first request that reads it."""
    _seconds("THINKTANK_RESERVATION_MARGIN_S", MARGIN_S)
    _seconds("THINKTANK_RESERVATION_SWEEP_S", SWEEP_S)


def reservation_ttl(bound_s: float) -> float:
    """How long a request's reservation lasts unless settled: the request's own upper
    bound (``bound_s``, its timeout) plus :data:`MARGIN_S`."""
    return bound_s + _seconds("THINKTANK_RESERVATION_MARGIN_S", MARGIN_S)


def holder() -> str:
    """Who holds a reservation: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Reservation:
    """Budget set aside for one request until :func:`settle` (none for the anonymous
    caller of a ``--no-auth`` server)."""

    id: str | None
    key_id: str | None
    micro_usd: int
    ttl_s: float = 0.0
    """How long it lasts unless renewed (:func:`held`) or settled."""


async def reserve(store: Store, caller: Caller, usd: float, *, ttl_s: float) -> Reservation:
    """Set ``usd`` of the caller's budget aside, atomically across every server process.

    Reserve the most the request can cost; :func:`settle` it when it ends, whatever
    the outcome (a ``finally``). Should the process die first, the reservation lapses
    after ``ttl_s`` (:func:`reservation_ttl`) and comes back to the key; a request alive
    for longer keeps it with :func:`held`. A key without a budget reserves without
    limit.

    Raises:
        ApiError: 402 ``insufficient_quota`` when the key's spent + reserved + ``usd``
            is over its budget (or the key was revoked meanwhile).
    """
    if caller is ANONYMOUS or caller.key_id is None:
        return Reservation(id=None, key_id=None, micro_usd=0)
    amount = max(0, micro_usd(usd))
    refused = await store.reserve_budget(caller.key_id, amount, holder=holder(), ttl_s=ttl_s)
    if isinstance(refused, str):
        return Reservation(id=refused, key_id=caller.key_id, micro_usd=amount, ttl_s=ttl_s)
    if refused.revoked_at is not None:
        raise ApiError(401, "this API key was revoked", code="invalid_api_key")
    budget = (refused.budget_micro_usd or 0) / 1e6
    used = (refused.spent_micro_usd + refused.reserved_micro_usd) / 1e6
    raise ApiError(
        402,
        f"insufficient quota: this request may cost up to ${usd:.6f}, and the key has "
        f"${max(0.0, budget - used):.6f} of its ${budget:.2f} budget left "
        f"(${refused.spent_micro_usd / 1e6:.6f} spent, "
        f"${refused.reserved_micro_usd / 1e6:.6f} reserved by requests in flight)",
        code="insufficient_quota",
    )


async def settle(store: Store, reservation: Reservation, actual_usd: float) -> None:
    """End a reservation: release it and charge what the request cost."""
    if reservation.id is None or reservation.key_id is None:
        return
    await store.settle_budget(reservation.id, reservation.key_id, max(0, micro_usd(actual_usd)))


@asynccontextmanager
async def held(store: Store, reservation: Reservation) -> AsyncIterator[None]:
    """Keep ``reservation`` from lapsing while the block runs (its request is alive):
    renewed every third of its time to live, so that only a dead process's lapses,
    however long a live request takes (a slow stream, a client reading slowly)."""
    rid = reservation.id
    if rid is None:
        yield
        return

    async def renew_forever() -> None:
        while True:
            await anyio.sleep(reservation.ttl_s / 3)
            try:
                await store.renew_reservation(rid, reservation.ttl_s)
            except StoreError as exc:  # the next renewal may succeed before it lapses
                _LOG.warning("renewing a budget reservation failed: %s", exc)

    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(renew_forever)
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - raised below, outside the group, unwrapped
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error


@asynccontextmanager
async def sweeping(store: Store) -> AsyncIterator[None]:
    """Release lapsed reservations every :data:`SWEEP_S` while the block runs (the
    server's lifespan): the money of requests whose process died comes back even to
    a key nobody is using. A failed sweep is logged and tried again next time."""
    every = _seconds("THINKTANK_RESERVATION_SWEEP_S", SWEEP_S)

    async def sweep_forever() -> None:
        while True:
            await anyio.sleep(every)
            try:
                released = await store.sweep_reservations()
            except StoreError as exc:
                _LOG.warning("reservation sweep failed: %s", exc)
                continue
            if released:
                _LOG.info("released %d lapsed budget reservation(s)", released)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sweep_forever)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


DEFAULT_MAX_TOKENS = 1024
"""Output tokens of one call when a chat completion sets no ``max_tokens``: the server
sends it to the models as their ``max_tokens``, so that the reserved bound holds."""


@dataclass(frozen=True, slots=True)
class CostBound:
    """The most a chat completion can cost, and each model's most for one call."""

    per_call: dict[str, float]
    """USD of one call of each priced model at most (unpriced models cost 0)."""
    usd: float
    """The whole request's most: every model asked once, and the judge once."""


def _judge_input_tokens(prompt_tokens: int, answers: int, max_tokens: int) -> int:
    """A judge's prompt: the template, the question and every answer (each at most
    ``max_tokens`` in its own wrapper)."""
    from thinktank.consensus.judge import JUDGE_PROMPT, RESPONSE_TEMPLATE
    from thinktank.engine.budget import estimate_tokens

    wrapper = estimate_tokens(RESPONSE_TEMPLATE) + 2  # the label
    return estimate_tokens(JUDGE_PROMPT) + prompt_tokens + answers * (max_tokens + wrapper)


def cost_bound(registry: ModelRegistry, cfg: ParallelExecutionConfig, prompt: str) -> CostBound:
    """The most the one-step session of ``cfg`` asking ``prompt`` can cost.

    Per model asked (every model of the registry under ``agi_model_selection``, which
    may choose any): its input and output price x (the prompt's token estimate, about
    four characters a token as for session budgets, + ``max_tokens``, which must be
    set: :data:`DEFAULT_MAX_TOKENS` when the request sets none); with ``synthesis:
    judge``, the judge once more on a prompt holding every answer. A retried attempt
    is not counted twice: a failed attempt reports no usage and is charged nothing.
    """
    from thinktank.engine.budget import estimate_tokens

    assert cfg.max_tokens is not None, "set max_tokens before bounding the cost"
    out = cfg.max_tokens
    prompt_tokens = estimate_tokens(prompt + (cfg.system or ""))
    asked = list(cfg.models) if not cfg.agi_model_selection else registry.names()
    per_call: dict[str, float] = {}
    total = 0.0
    for name in asked:
        prices = registry.prices_of(name)
        usd = 0.0 if prices is None else (prices[0] * prompt_tokens + prices[1] * out) / 1e6
        per_call[name] = usd
        total += usd
    judge = cfg.synthesizer if cfg.synthesis == "judge" else None
    if judge is not None:
        prices = registry.prices_of(judge)
        inp = _judge_input_tokens(prompt_tokens, len(asked), out)
        usd = 0.0 if prices is None else (prices[0] * inp + prices[1] * out) / 1e6
        # A model that is also the judge: one call of it may be either.
        per_call[judge] = max(usd, per_call.get(judge, 0.0))
        total += usd
    return CostBound(per_call=per_call, usd=total)


class Meter:
    """What a request's calls cost, added up from their ``CallFinished`` events (an
    ``on_event`` listener). A call whose cost is unknown but whose model has a price
    (it answered, or was cut off, without a usage report) is charged its bound; a
    failed call reported no usage and is charged nothing."""

    def __init__(self, bound: CostBound) -> None:
        from thinktank.events import CallFinished

        self._finished = CallFinished
        self._bound = bound
        self.usd = 0.0
        """USD spent so far."""
        self.session_id: str | None = None
        """The session the request made, once its first event is out (its row is
        written by then)."""

    def __call__(self, event: Event) -> None:
        if self.session_id is None:
            self.session_id = event.session_id
        if not isinstance(event, self._finished) or event.reused_from is not None:
            return
        if event.cost_usd is not None:
            self.usd += event.cost_usd
        elif event.status != "failed":
            self.usd += self._bound.per_call.get(event.model, 0.0)
