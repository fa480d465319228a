"""A Server-Sent Events parser over lines, for the streaming HTTP providers.

It follows the WHATWG event-stream rules that OpenAI and Anthropic streams rely on:
lines starting with ``:`` are comments (keep-alives) and are skipped; ``event:`` names
the event; ``data:`` lines are joined with newlines; one space after the colon is
dropped; a blank line dispatches the event, unless it has no data; an event still
being built when the lines run out is dropped (the stream was cut). ``id:`` and
``retry:`` only matter to reconnecting clients, which these are not, so they are read
and ignored.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from typing import NamedTuple

__all__ = ["ServerSentEvent", "iter_sse"]


class ServerSentEvent(NamedTuple):
    """One dispatched event: an ``(event, data)`` pair."""

    event: str
    """The ``event:`` field, ``message`` when the server sent none."""
    data: str
    """The ``data:`` lines joined with ``\\n``."""


async def iter_sse(lines: AsyncIterable[str]) -> AsyncGenerator[ServerSentEvent, None]:
    """Parse an event stream.

    Close the generator (``contextlib.aclosing``) when leaving early: it then closes
    ``lines`` too, when ``lines`` has an ``aclose`` method.

    Args:
        lines: Lines without their line endings, such as
            ``httpx.Response.aiter_lines()``.

    Yields:
        Each complete event, in order.
    """
    event = ""
    data: list[str] = []
    first = True
    try:
        async for line in lines:
            if first:
                first = False
                line = line.removeprefix("\ufeff")
            if not line:
                if data:
                    yield ServerSentEvent(event or "message", "\n".join(data))
                event = ""
                data = []
                continue
            if line[0] == ":":
                continue
            name, sep, value = line.partition(":")
            if sep and value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
    finally:
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()
