"""When to retry a failed model call, and how long to wait first.

Pure policy, no I/O and no sleeping: the call layer (``thinktank.engine.calls``) runs the loop,
records every attempt and sleeps :meth:`RetryPolicy.delay_s`. The rules follow the
official OpenAI and Anthropic SDKs: retry what the provider marked retryable (see
:func:`thinktank.providers.http.is_retryable_status`) and timeouts; wait the server's
``retry-after`` hint when it is sane, else exponential backoff with jitter.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from thinktank.errors import ProviderError

__all__ = ["RetryPolicy"]

# 2**64 already exceeds any sane max_delay_s; capping the exponent avoids float overflow.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry a call and how long to wait between attempts."""

    max_retries: int = 2
    """Retries after the first attempt (0 disables retrying)."""
    base_delay_s: float = 0.5
    """Backoff before the first retry, doubled for each later one."""
    max_delay_s: float = 8.0
    """Upper bound of the backoff."""
    max_retry_after_s: float = 60.0
    """The longest server ``retry-after`` hint obeyed; longer hints fall back to backoff."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries}")
        for field_name in ("base_delay_s", "max_delay_s", "max_retry_after_s"):
            value = getattr(self, field_name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{field_name} must be a finite number >= 0, not {value}")

    def should_retry(self, exc: BaseException, retries_done: int) -> bool:
        """Whether to try again after ``exc``.

        Args:
            exc: What the last attempt raised.
            retries_done: Retries already made (0 after the first attempt).

        Returns:
            True for a retryable :class:`~thinktank.errors.ProviderError` or a
            ``TimeoutError`` while fewer than ``max_retries`` retries were made.
        """
        if retries_done >= self.max_retries:
            return False
        if isinstance(exc, ProviderError):
            return exc.retryable
        return isinstance(exc, TimeoutError)

    def delay_s(self, retries_done: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before the next attempt.

        Args:
            retries_done: Retries already made (0 before the first retry).
            retry_after_s: The server's hint (``ProviderError.retry_after_s``), if any.
            rng: Source of the jitter (seed it for reproducible runs).

        Returns:
            The hint when ``0 <= hint <= max_retry_after_s``; otherwise
            ``min(base_delay_s * 2**retries_done, max_delay_s)`` times a jitter factor
            drawn from [0.75, 1.0].
        """
        if retry_after_s is not None and 0 <= retry_after_s <= self.max_retry_after_s:
            return retry_after_s
        return self.backoff_s(retries_done) * rng.uniform(0.75, 1.0)

    def backoff_s(self, retries_done: int) -> float:
        """The backoff before jitter: ``min(base_delay_s * 2**retries_done, max_delay_s)``.

        Args:
            retries_done: Retries already made (negative counts as 0).

        Returns:
            Seconds, non-decreasing in ``retries_done``.
        """
        exponent = min(max(retries_done, 0), _MAX_EXPONENT)
        return min(self.base_delay_s * 2.0**exponent, self.max_delay_s)
