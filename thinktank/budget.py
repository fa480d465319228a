"""Session budgets: no new model call starts once it could take the session past them.

Before each attempt the call layer *reserves* an estimate of what the attempt may cost
(input tokens from the prompt, about four characters a token; output tokens from
``max_tokens``, or :data:`DEFAULT_OUTPUT_ESTIMATE` when the step sets none) and the
attempt is refused if spent + reserved + estimate would pass the budget. When the
attempt ends its estimate is replaced by what it really cost. Calls already in flight
finish; the session then ends ``partial`` with the reason. Concurrent calls therefore
cannot jointly overshoot a budget by more than their estimates' error.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def limited(self) -> bool:
        """True when there is any limit."""
        return self.max_cost_usd is not None or self.max_tokens is not None

    def reserve(self, cost_usd: float, tokens: int) -> bool:
        """Reserve an attempt's estimate; False (and ``exhausted`` set) if it does not fit."""
        over_cost = self.max_cost_usd is not None and (
            self.spent_cost_usd + self.reserved_cost_usd + cost_usd > self.max_cost_usd
        )
        over_tokens = self.max_tokens is not None and (
            self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens
        )
        if over_cost or over_tokens:
            if self.exhausted is None:
                self.exhausted = self.describe()
            return False
        self.reserved_cost_usd += cost_usd
        self.reserved_tokens += tokens
        return True

    def settle(
        self, reserved_cost: float, reserved_tokens: int, cost: float | None, tokens: int | None
    ) -> None:
        """Replace a reservation by what the attempt really spent (unknown: the estimate)."""
        self.reserved_cost_usd -= reserved_cost
        self.reserved_tokens -= reserved_tokens
        self.spent_cost_usd += reserved_cost if cost is None else cost
        self.spent_tokens += reserved_tokens if tokens is None else tokens

    def describe(self) -> str:
        """The budget state in words, for the session's error."""
        parts = []
        if self.max_cost_usd is not None:
            parts.append(f"${self.spent_cost_usd:.6f} of ${self.max_cost_usd:g} spent")
        if self.max_tokens is not None:
            parts.append(f"{self.spent_tokens:,} of {self.max_tokens:,} tokens used")
        return "budget exhausted: " + ", ".join(parts)
