"""The FastAPI dependencies every route module takes: who is calling
(:data:`CallerDep`) and the process's open store (:func:`store_of`).

They live apart from :mod:`thinktank.server.app` so that the route modules the app
includes need not import the app's module (which imports them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from thinktank.server.auth import Caller, authenticate

if TYPE_CHECKING:
    from thinktank.store import Store

__all__ = ["CallerDep", "caller_of", "store_of"]


async def caller_of(request: Request) -> Caller:
    """The FastAPI dependency every ``/v1`` route takes: who is calling.

    Raises:
        ApiError: 401 without a valid key (see :func:`~thinktank.server.auth.authenticate`).
    """
    state = request.app.state
    return await authenticate(
        request.headers.get("authorization"), no_auth=state.config.no_auth, keys=state.keys
    )


CallerDep = Annotated[Caller, Depends(caller_of)]
"""A route parameter ``caller: CallerDep`` authenticates the request (401 otherwise)."""


def store_of(request: Request) -> Store:
    """The process's open store."""
    store: Store = request.app.state.store
    return store
