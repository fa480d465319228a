"""JSON for the store's columns: orjson, with the standard library as the fallback.

Every event a session emits is stored with its JSON payload (a 10,000-step session
writes ~40,000), and a replay reads them all back; the standard library's encoder
and decoder were ~15 us of every step's write. orjson does the same job in a
fraction of that. The text differs only in spacing and in not escaping non-ASCII
characters; non-finite floats become ``null`` (JSON has no NaN), as PostgreSQL's JSONB
required already. What orjson refuses (integers beyond 64 bits) is written by the
standard library; what it cannot read (``NaN`` written by older versions) likewise.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    """``value`` as JSON text."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value)


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text``."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
