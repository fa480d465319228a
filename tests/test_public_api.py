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


def test_dry_run_takes_run_s_public_arguments() -> None:
    """``dry_run(spec, inputs=, models=)`` like ``run``: no registry to build by hand;
    inputs are checked and their defaults filled, and given clients count as models."""
    import pytest

    from thinktank.errors import InputError

    from .conftest import CallLog, CountingModel

    spec = thinktank.parse_session(
        {
            "name": "d",
            "inputs": {"q": {"type": "string"}, "n": {"type": "integer", "default": 2}},
            "steps": [
                {"id": "a", "prompt": "{{ inputs.q }} x{{ inputs.n }}", "models": ["m", "k"]}
            ],
        },
        known_models=["m", "k"],
    )
    log = CallLog()
    clients = {n: CountingModel(n, log) for n in "mk"}
    plan = thinktank.dry_run(spec, inputs={"q": "why?"}, models=clients)
    assert plan.steps[0].models == ["m", "k"] and plan.calls_max == 2
    assert plan.cost_usd_max is None  # user clients have no price
    with pytest.raises(InputError):
        thinktank.dry_run(spec, inputs={}, models=clients)
    assert not log.calls
