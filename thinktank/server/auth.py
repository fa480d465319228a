"""Who is calling: the bearer key of a request, or nobody on a loopback server started
with ``--no-auth``.

This module owns the rule the server applies before any handler runs: with
``no_auth`` every request is served as the anonymous caller; otherwise a request
without a valid ``Authorization: Bearer`` key is refused with 401. Keys (stored
hashed, with budgets and rate limits) are checked by a :class:`KeyChecker`; a server
with none denies every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from thinktank.server.errors import ApiError

__all__ = ["ANONYMOUS", "Caller", "KeyChecker", "authenticate", "bearer_token"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller of one request: a key's id, or None for the anonymous caller of a
    ``--no-auth`` server."""

    key_id: str | None


ANONYMOUS = Caller(key_id=None)


class KeyChecker(Protocol):
    """Looks a presented key up (compared in constant time against stored hashes)."""

    async def check(self, token: str) -> Caller | None:
        """The key's caller, or None when the key is unknown or revoked."""
        ...


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(
    authorization: str | None, *, no_auth: bool, keys: KeyChecker | None
) -> Caller:
    """The caller of a request with this ``Authorization`` header.

    Raises:
        ApiError: 401 when the server checks keys and the request has no valid one.
    """
    if no_auth:
        return ANONYMOUS
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
    caller = await keys.check(token) if keys is not None else None
    if caller is None:
        raise ApiError(401, "invalid API key", code="invalid_api_key")
    return caller
