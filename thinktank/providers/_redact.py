"""Credentials in URLs: the one function that hides them wherever a URL leaves the process.

A ``base_url`` such as ``https://user:pass@host/v1`` carries its credentials as URL
userinfo (httpx sends them as basic auth). The URL itself is used for requests, but
every copy that is printed, stored or put in an error passes through
:func:`redact_userinfo` first: ``models`` listings, the stored session spec, ``show``,
``export``, and provider error messages and bodies that echo the URL back.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED_USERINFO", "redact_userinfo"]

REDACTED_USERINFO = "***"
"""What the userinfo of a URL becomes (``https://***@host/v1``)."""

# scheme "://" then the userinfo: everything up to the last "@" of the authority, which
# ends at "/", "?", "#", whitespace or a quote (for URLs quoted inside text or JSON).
_USERINFO = re.compile(r"""(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s"'<>]*@""")


def redact_userinfo(text: str) -> str:
    """``text`` (a URL, or any text quoting URLs) with every URL's userinfo hidden.

    Args:
        text: A URL or a message.

    Returns:
        The same text with ``scheme://user:pass@`` turned into ``scheme://***@``.
    """
    if "@" not in text:
        return text
    return _USERINFO.sub(rf"\g<1>{REDACTED_USERINFO}@", text)
