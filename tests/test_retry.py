"""RetryPolicy: which failures are retried and how long to wait (properties with hypothesis)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinktank.errors import CallTimeoutError, ProviderError
from thinktank.providers.http import is_retryable_status
from thinktank.providers.retry import RetryPolicy

policies = st.builds(
    RetryPolicy,
    max_retries=st.integers(0, 10),
    base_delay_s=st.floats(0, 10),
    max_delay_s=st.floats(0, 120),
    max_retry_after_s=st.floats(0, 600),
)
hints = st.none() | st.floats(-1e6, 1e6)


@given(policies, st.integers(0, 10_000), hints, st.integers(0, 2**32))
def test_delay_is_bounded(
    policy: RetryPolicy, retries_done: int, hint: float | None, seed: int
) -> None:
    """The delay is never negative and never above max(max_delay_s, an obeyed hint)."""
    delay = policy.delay_s(retries_done, hint, random.Random(seed))
    obeyed = hint if hint is not None and 0 <= hint <= policy.max_retry_after_s else 0.0
    assert 0 <= delay <= max(policy.max_delay_s, obeyed)


@given(policies, st.integers(0, 200), st.integers(0, 200))
def test_backoff_is_monotone_before_jitter(policy: RetryPolicy, a: int, b: int) -> None:
    """More retries done never means a shorter backoff."""
    low, high = sorted((a, b))
    assert policy.backoff_s(low) <= policy.backoff_s(high)


@given(policies, st.integers(0, 50), st.integers(0, 2**32))
def test_jitter_stays_within_a_quarter(policy: RetryPolicy, retries_done: int, seed: int) -> None:
    """Without a hint the delay is the backoff times a factor in [0.75, 1.0]."""
    backoff = policy.backoff_s(retries_done)
    delay = policy.delay_s(retries_done, None, random.Random(seed))
    assert 0.75 * backoff <= delay <= backoff


@given(policies, st.integers(0, 50), st.floats(0, 600), st.integers(0, 2**32))
def test_hint_obeyed_up_to_the_cap_and_ignored_above(
    policy: RetryPolicy, retries_done: int, hint: float, seed: int
) -> None:
    """A hint within [0, max_retry_after_s] is the delay; a longer one falls back to backoff."""
    delay = policy.delay_s(retries_done, hint, random.Random(seed))
    if hint <= policy.max_retry_after_s:
        assert delay == hint
    else:
        assert delay <= policy.backoff_s(retries_done)


def test_defaults_follow_the_sdk_schedule() -> None:
    """Defaults: 2 retries, 0.5 s doubling to at most 8 s, hints up to 60 s."""
    policy = RetryPolicy()
    assert [policy.backoff_s(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.delay_s(0, 3600.0, random.Random(0)) <= 0.5
    assert policy.delay_s(0, 60.0, random.Random(0)) == 60.0


@given(st.integers(0, 10), st.integers(0, 12), st.booleans())
def test_should_retry_counts_and_flags(max_retries: int, done: int, retryable: bool) -> None:
    """A ProviderError is retried only when retryable and while retries remain."""
    policy = RetryPolicy(max_retries=max_retries)
    error = ProviderError("x", retryable=retryable)
    assert policy.should_retry(error, done) is (retryable and done < max_retries)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), True),
        (CallTimeoutError("t", retryable=True), True),
        (CallTimeoutError("step budget spent", retryable=False), False),
        (ValueError("bug"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_should_retry_kinds(exc: BaseException, expected: bool) -> None:
    """Timeouts and retryable provider errors are retried; bugs and interrupts are not."""
    assert RetryPolicy().should_retry(exc, 0) is expected


@given(st.integers(100, 599), st.sampled_from(["true", "false", "TRUE", " False "]))
def test_x_should_retry_overrides_any_status(status: int, header: str) -> None:
    """x-should-retry decides retryability whatever the status."""
    expected = header.strip().lower() == "true"
    assert is_retryable_status(status, {"x-should-retry": header}) is expected


def test_policy_rejects_nonsense() -> None:
    """Negative retries or delays are refused when the policy is built."""
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="base_delay_s"):
        RetryPolicy(base_delay_s=-0.1)
