"""The ``store=`` argument of every entry point, and its one rule.

``run``, ``iter``, ``run_many``, ``execute_parallel`` (and ``resume``, ``replay``,
``fork``, which need a store) take ``store=`` with one meaning, documented in the
README's Python API section: omitted -> the default store (``$THINKTANK_DB`` or
``./thinktank.db``); a str -> that URL or path, opened and closed by the call; a
:class:`~thinktank.store.Store` -> used as it is and left open; None -> no store.
"""

from __future__ import annotations

from typing import Any, Final

from thinktank.store import Store

__all__ = ["DEFAULT_STORE", "resolve_store"]


class _DefaultStore:
    def __repr__(self) -> str:
        return "DEFAULT_STORE"


DEFAULT_STORE: Final[Any] = _DefaultStore()
"""Sentinel: record in ``$THINKTANK_DB`` or ``./thinktank.db``. Pass ``store=None`` to
record nothing."""


async def resolve_store(store: Store | str | None) -> tuple[Store | None, Store | None]:
    """(the store to record in, the store the caller opened here and must close).

    Raises:
        StoreError: the database could not be opened.
    """
    if store is DEFAULT_STORE or isinstance(store, str):
        opened = await Store.open(None if store is DEFAULT_STORE else store)
        return opened, opened
    return store, None
