"""Text every database, wire protocol and terminal accepts: valid Unicode, no NUL.

Python strings can hold what UTF-8 cannot encode: lone surrogates, which a JSON reply
with a bad ``\\ud800`` escape decodes to, and the ``surrogateescape`` stand-ins the
interpreter gives undecodable bytes of ``argv`` (``-i question=$'caf\\xe9'``). Written
as they are, SQLite's driver and asyncpg refuse the whole transaction, and PostgreSQL
refuses NUL in text and JSONB. :func:`clean_text` makes such text storable by putting
U+FFFD (the Unicode replacement character) where it cannot be kept; :func:`repaired`
does it throughout a value and says where it did.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["REPLACEMENT", "clean_text", "read_utf8", "repaired"]

REPLACEMENT = "\ufffd"
"""What takes the place of text that cannot be stored."""


def clean_text(text: str) -> str:
    """``text`` as valid UTF-8 without NUL; ``text`` itself when it already is.

    A surrogate pair becomes the character it encodes; lone surrogates (and so the
    bytes ``surrogateescape`` kept of invalid UTF-8) and NUL become U+FFFD.
    """
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text.replace("\x00", REPLACEMENT) if "\x00" in text else text


def repaired(value: Any, where: str, found: list[str]) -> Any:
    """``value`` with every string in it (dict keys, lists, struct and dataclass fields)
    cleaned.

    Returns ``value`` itself when nothing needed cleaning, else a copy (structs and
    dataclasses through their ``replace``). Appends to ``found`` where each repair was made,
    as a path under ``where`` (``call_finished.content``, ``session_started.inputs.q``).
    """
    if isinstance(value, str):
        clean = clean_text(value)
        if clean is not value:
            found.append(where)
        return clean
    if isinstance(value, (list, tuple)):
        items = [repaired(item, f"{where}[{i}]", found) for i, item in enumerate(value)]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        pairs = [
            (repaired(k, f"{where} key", found), repaired(v, f"{where}.{k}", found))
            for k, v in value.items()
        ]
        if all(
            k is old_k and v is old_v
            for (k, v), (old_k, old_v) in zip(pairs, value.items(), strict=True)
        ):
            return value
        return dict(pairs)
    if isinstance(value, msgspec.Struct):  # events
        names: tuple[str, ...] = value.__struct_fields__
        replace: Any = msgspec.structs.replace
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = tuple(field.name for field in dataclasses.fields(value))
        replace = dataclasses.replace
    else:
        return value
    changes = {}
    for name in names:
        old = getattr(value, name)
        new = repaired(old, f"{where}.{name}", found)
        if new is not old:
            changes[name] = new
    return replace(value, **changes) if changes else value


def read_utf8(path: str | Path) -> str:
    """The text of a UTF-8 file.

    Raises:
        OSError: it cannot be read.
        ValueError: it is not valid UTF-8; the message names the line and the byte
            (``line 3: byte 0xE9 is not valid UTF-8 (save the file as UTF-8)``).
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        raise ValueError(
            f"line {line}: byte 0x{byte:02X} is not valid UTF-8 (save the file as UTF-8)"
        ) from None
