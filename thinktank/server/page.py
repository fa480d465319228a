"""The page at ``/``: watch the sessions of this server in a browser.

This module owns ``GET /``, which answers one self-contained HTML file shipped as
package data (``static/index.html``: vanilla JavaScript, no build step, nothing fetched
from elsewhere). The page itself is public, like the probes; everything it shows comes
from the ``/v1/sessions`` routes (:mod:`thinktank.server.sessions`), which need a key
unless the server runs with ``--no-auth``: the page asks for one on a 401 and keeps it
in the tab's ``sessionStorage``.

The page lists the sessions (newest first, status, cost; read again every 2 s while
the tab is visible, so sessions started elsewhere appear) and, for the one selected
(``/?session=<id>``), draws its DAG (steps as boxes by dependency depth, edges as SVG
lines) and folds the session's server-sent events into each step's state as they
arrive, logging every transition it applies. A dropped stream (a restart, a proxy) is
read again after the last event applied, after the server's ``retry:``, and no event is
applied twice; a session resumed after its stream ended is followed again. A failed or
skipped step shows its reason and an abstained one (``no_consensus``) is drawn apart
from an answer; a click on a step shows its answers (as text, wrapped, in their own
direction) and consensus. The Content-Security-Policy allows only this page's own inline script (by
its hash) and style, and connections back to this server.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["router"]

router = APIRouter()

_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@functools.cache
def _page() -> tuple[bytes, str]:
    """The page's bytes and its Content-Security-Policy (read once per process)."""
    html = resources.files("thinktank.server").joinpath("static/index.html").read_text("utf-8")
    digests = (hashlib.sha256(script.encode()).digest() for script in _SCRIPT.findall(html))
    hashes = " ".join(f"'sha256-{base64.b64encode(digest).decode()}'" for digest in digests)
    policy = (
        "default-src 'none'; "
        f"script-src {hashes}; "
        "style-src 'unsafe-inline'; "
        "connect-src 'self'; "
        "img-src 'self' data:; "
        "form-action 'none'; "
        "frame-ancestors 'none'; "
        "base-uri 'none'"
    )
    return html.encode("utf-8"), policy


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    body, policy = _page()
    return HTMLResponse(
        body,
        headers={
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
