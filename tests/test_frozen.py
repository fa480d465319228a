"""fast_init builds the same objects the dataclass ``__init__`` would, and keeps them
frozen."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest

from thinktank import events
from thinktank._frozen import fast_init
from thinktank.providers.base import ModelRequest, ModelResponse

CLASSES = sorted(
    {
        *(
            obj
            for obj in vars(events).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj)
        ),
        ModelRequest,
        ModelResponse,
    },
    key=lambda c: c.__name__,
)


def _value(f: dataclasses.Field[Any], n: int) -> Any:
    return f"{f.name}-{n}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_fields_defaults_and_factories(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    required = {
        f.name: _value(f, 1)
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    given = {f.name: _value(f, 2) for f in fields}
    full = cls(**given)
    assert {f.name: getattr(full, f.name) for f in fields} == given
    a, b = cls(**required), cls(**required)
    for f in fields:
        if f.name in required:
            assert getattr(a, f.name) == required[f.name]
        elif f.default is not dataclasses.MISSING:
            assert getattr(a, f.name) == f.default
        else:
            # A factory runs for each object: mutable defaults are not shared.
            made = f.default_factory()  # type: ignore[misc]
            assert type(getattr(a, f.name)) is type(made)
            if isinstance(made, (dict, list)):
                assert getattr(a, f.name) == made
                assert getattr(a, f.name) is not getattr(b, f.name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(full, fields[0].name, "changed")
    assert dataclasses.replace(full, **{fields[0].name: "x"}) == cls(
        **{**given, fields[0].name: "x"}
    )
    if required:
        with pytest.raises(TypeError):
            cls(**dict(list(required.items())[1:]))
    with pytest.raises(TypeError):
        cls(**required, no_such_field=1)
    with pytest.raises(TypeError):
        cls(*required.values())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_signature_is_the_dataclass_one(cls: type[Any]) -> None:
    params = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in params] == [f.name for f in dataclasses.fields(cls)]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


def test_refuses_classes_it_cannot_build() -> None:
    @dataclass(slots=True, kw_only=True)
    class Plain:
        a: int

    @dataclass(frozen=True, slots=True)
    class Positional:
        a: int

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Post:
        a: int = 0

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class NoInit:
        a: int = field(default=0, init=False)

    for cls in (Plain, Positional, Post, NoInit):
        with pytest.raises(TypeError):
            fast_init(cls)
