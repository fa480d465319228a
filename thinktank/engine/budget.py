"""Session budgets: no new model call starts once it could take the session past them.

Before each attempt the call layer *reserves* an estimate of what the attempt may cost
(input tokens from the prompt, about four characters a token; output tokens from
``max_tokens``, or :data:`DEFAULT_OUTPUT_ESTIMATE` when the step sets none) and the
attempt is refused if spent + reserved + estimate would pass the budget. When the
attempt ends its estimate is replaced by what it really cost. Calls already in flight
finish; the session then ends ``partial`` with the reason. Concurrent calls therefore
cannot jointly overshoot a budget by more than their estimates' error.

An attempt that does not fit while other attempts hold reservations waits for them to
settle and asks again (estimates are pessimistic: most settle for less), so a session
with many steps in flight does not stop several calls short of its budget. It is
refused once it cannot fit with nothing in flight, or once another attempt was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

__all__ = ["DEFAULT_OUTPUT_ESTIMATE", "Budget", "estimate_tokens"]

DEFAULT_OUTPUT_ESTIMATE = 512
"""Output tokens assumed for a call whose step sets no ``max_tokens``."""


def estimate_tokens(text: str) -> int:
    """About four characters a token: the rule of thumb providers quote."""
    return max(1, (len(text) + 3) // 4)


@dataclass
class Budget:
    """What a session may spend, and what it has spent and reserved so far."""

    max_cost_usd: float | None = None
    """USD the session may spend; None for no limit."""
    max_tokens: int | None = None
    """Tokens (input + output) the session may use; None for no limit."""
    spent_cost_usd: float = 0.0
    spent_tokens: int = 0
    reserved_cost_usd: float = 0.0
    reserved_tokens: int = 0
    exhausted: str | None = None
    """Why a call was refused, once one was."""
    _holding: int = field(default=0, repr=False)
    """Reservations not yet settled (attempts in flight)."""
    _settled: anyio.Event | None = field(default=None, repr=False)
    """Set when a reservation settles, for attempts waiting to fit."""

    @property
    def limited(self) -> bool:
        """True when there is any limit."""
        return self.max_cost_usd is not None or self.max_tokens is not None

    def _fits(self, cost_usd: float, tokens: int) -> bool:
        over_cost = self.max_cost_usd is not None and (
            self.spent_cost_usd + self.reserved_cost_usd + cost_usd > self.max_cost_usd
        )
        over_tokens = self.max_tokens is not None and (
            self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens
        )
        return not (over_cost or over_tokens)

    def reserve(self, cost_usd: float, tokens: int) -> bool:
        """Reserve an attempt's estimate; False (and ``exhausted`` set) if it does not fit."""
        if self.exhausted is None and self._fits(cost_usd, tokens):
            self.reserved_cost_usd += cost_usd
            self.reserved_tokens += tokens
            self._holding += 1
            return True
        if self.exhausted is None:
            self.exhausted = self.describe()
        return False

    async def reserve_when_settled(self, cost_usd: float, tokens: int) -> bool:
        """:meth:`reserve`, but while the estimate does not fit and other attempts hold
        reservations, wait for them to settle and ask again."""
        while self.exhausted is None and not self._fits(cost_usd, tokens) and self._holding:
            if self._settled is None:
                self._settled = anyio.Event()
            await self._settled.wait()
        return self.reserve(cost_usd, tokens)

    def settle(
        self, reserved_cost: float, reserved_tokens: int, cost: float | None, tokens: int | None
    ) -> None:
        """Replace a reservation by what the attempt really spent (unknown: the estimate)."""
        self.reserved_cost_usd -= reserved_cost
        self.reserved_tokens -= reserved_tokens
        self.spent_cost_usd += reserved_cost if cost is None else cost
        self.spent_tokens += reserved_tokens if tokens is None else tokens
        self._holding -= 1
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    def describe(self) -> str:
        """The budget state in words, for the session's error."""
        parts = []
        if self.max_cost_usd is not None:
            parts.append(f"${self.spent_cost_usd:.6f} of ${self.max_cost_usd:g} spent")
        if self.max_tokens is not None:
            parts.append(f"{self.spent_tokens:,} of {self.max_tokens:,} tokens used")
        return "budget exhausted: " + ", ".join(parts)
