"""Events benchmark: microseconds to build one ``CallFinished`` and to encode it as the
store's JSON payload.

Run from the repo root: ``python bench/events.py`` (``--n N`` repetitions, best of 5).
On a checkout from before events became ``msgspec`` structs (the ``_frozen.fast_init``
dataclasses and ``store._write.event_json``) it measures those, so one script gives the
before and the after figures. Not a target: at realistic model latency (100 ms to 10 s
a call) a microsecond per event is noise; the figures only say what the change costs.
"""

from __future__ import annotations

import argparse
import os
import timeit
from collections.abc import Callable
from datetime import UTC, datetime

from thinktank.events import CallFinished, Event

try:  # after: one encoder, in thinktank.events
    from thinktank.events import encode_event as _encode

    def encode(event: Event) -> object:
        return _encode(event).decode()  # text, as event_json gave and the store writes

    MECHANISM = "msgspec.Struct, msgspec.json encoder"
except ImportError:  # before: fast_init dataclasses, the store's orjson splice
    from thinktank.store._write import event_json  # type: ignore[attr-defined]

    def encode(event: Event) -> object:
        return event_json(event)

    MECHANISM = "fast_init dataclass, store._write.event_json"

STARTED = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


def build() -> CallFinished:
    """A typical finished call: every field a real one sets."""
    return CallFinished(
        session_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        step_id="summarise",
        call_id="0190a1b2-c3d4-7e5f-8a9b-0000000000c1",
        model="openai/gpt-4o-mini",
        attempt=1,
        status="ok",
        started_at=STARTED,
        content="A short answer of a few words, as a model gives it.",
        input_tokens=120,
        output_tokens=40,
        latency_ms=750.25,
        cost_usd=1.5e-05,
        finish_reason="stop",
    )


def best_us(fn: Callable[[], object], n: int) -> float:
    """Best of five runs of ``n`` calls, in microseconds per call."""
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="calls per run")
    args = parser.parse_args()
    event = build()
    print(f"mechanism: {MECHANISM}; load average {os.getloadavg()[0]:.1f}")
    print(f"build one CallFinished:  {best_us(build, args.n):6.2f} us")
    print(f"encode one CallFinished: {best_us(lambda: encode(event), args.n):6.2f} us")


if __name__ == "__main__":
    main()
