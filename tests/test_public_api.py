"""The public surface: __all__ is sorted, complete and importable."""

from __future__ import annotations

import thinktank


def test_all_is_importable() -> None:
    """Every name in __all__ exists (ruff's RUF022 keeps the list sorted)."""
    assert len(set(thinktank.__all__)) == len(thinktank.__all__)
    for name in thinktank.__all__:
        assert hasattr(thinktank, name), name


def test_no_public_name_is_missing_from_all() -> None:
    """Every public attribute of the package is in __all__ (modules aside)."""
    import types

    public = {
        n
        for n, v in vars(thinktank).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } - {"annotations"}
    assert public == set(thinktank.__all__) - {"__version__"}
