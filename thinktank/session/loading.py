"""Loading a session: a file or mapping becomes a validated :class:`SessionSpec`.

This module sits above the spec models (:mod:`~thinktank.session.spec`), the graph
checks (:mod:`~thinktank.session.graph`) and model selection
(:mod:`~thinktank.session.selection`), and is the one place that runs them in order:
pydantic field validation (its errors mapped to :class:`~thinktank.errors.SpecError`
with file, step and field), ``run --model``, automatic selection, then the graph and
model checks. Every problem is reported at once, in one :class:`SpecErrors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from thinktank._safeload import LoadError, load_json, load_yaml
from thinktank._text import read_utf8
from thinktank.errors import SpecError, SpecErrors
from thinktank.providers.config import ThinkTankConfig, load_config
from thinktank.providers.registry import ModelRegistry
from thinktank.session.selection import apply_selection
from thinktank.session.spec import SessionSpec
from thinktank.session.validation import validate_spec, validate_steps_partially

__all__ = ["load_session", "parse_session", "read_spec_file", "spec_errors_from_pydantic"]


def _field_path(loc: Iterable[int | str]) -> str:
    return ".".join(str(p) for p in loc)


def spec_errors_from_pydantic(
    exc: ValidationError, raw: Mapping[str, Any], file: str | None
) -> list[SpecError]:
    errors: list[SpecError] = []
    raw_steps = raw.get("steps")
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        # Errors from a model validator carry a "Value error, " prefix that says nothing.
        msg = err["msg"].removeprefix("Value error, ")
        step: str | None = None
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            index = loc[1]
            if isinstance(raw_steps, list) and index < len(raw_steps):
                candidate = raw_steps[index]
                if isinstance(candidate, Mapping) and isinstance(candidate.get("id"), str):
                    step = candidate["id"]
            step = step or f"#{index + 1}"
            loc = loc[2:]
        field = _field_path(loc) or None
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err and field:
            shown = repr(err["input"])
            if len(shown) <= 60:
                msg = f"{msg} (got {shown})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        errors.append(SpecError(msg, file=file, step=step, field=field))
    return errors


def parse_session(
    data: Mapping[str, Any],
    *,
    file: str | None = None,
    known_models: Iterable[str] = (),
    config: ThinkTankConfig | None = None,
    model: str | Sequence[str] | None = None,
) -> SessionSpec:
    """Validate a session given as a mapping; raise SpecErrors listing every problem.

    Args:
        data: The parsed session file.
        file: The file it came from, named in every error.
        known_models: Names of model clients that will be passed to ``run`` from Python.
        config: The ``thinktank.toml`` in force (read from its usual places if None).
        model: Replace every model choice by this model, or these (``run --model``;
            see :meth:`SessionSpec.with_model`) before the models are
            checked, so the ones the file names need not be usable here.
    """
    if not isinstance(data, Mapping):
        raise SpecErrors([SpecError("a session file must hold a mapping at the top", file=file)])
    config = config if config is not None else load_config()
    known = {name: _PLACEHOLDER_CLIENT for name in known_models}
    try:
        spec = SessionSpec.model_validate(data)
    except ValidationError as exc:
        errors = spec_errors_from_pydantic(exc, data, file)
        raw_models = data.get("models")
        registry = ModelRegistry(
            session_models=raw_models if isinstance(raw_models, Mapping) else {},
            config=config,
            clients=known,
        )
        errors.extend(validate_steps_partially(data, file=file, check_model=registry.check))
        raise SpecErrors(errors) from None
    if model:
        spec = spec.with_model(model)
    registry = ModelRegistry(session_models=spec.models, config=config, clients=known)
    try:
        resolved, _ = apply_selection(spec, registry)
    except SpecErrors as exc:
        raise SpecErrors([e.with_file(file) for e in exc.errors]) from None
    problems = validate_spec(resolved, file=file, check_model=registry.check)
    if problems:
        raise SpecErrors(problems)
    return spec


class _Placeholder:
    """Stands for a client that ``run(models=...)`` will provide (validation only)."""

    name = "python"
    provider = "python"


_PLACEHOLDER_CLIENT: Any = _Placeholder()


def load_session(
    path: str | Path, *, known_models: Iterable[str] = (), model: str | Sequence[str] | None = None
) -> SessionSpec:
    """Read and validate a session file (``.yaml``, ``.yml`` or ``.json``); ``model`` as
    in :func:`parse_session`.

    Raises:
        SpecErrors: every problem in the file, each naming the file, step and field.
    """
    data, _ = read_spec_file(path)
    return parse_session(data, file=str(path), known_models=known_models, model=model)


def read_spec_file(path: str | Path) -> tuple[Any, str]:
    """The parsed content of a YAML or JSON file a user gives (``.json`` by suffix), and
    its text, through the bounded loader.

    Raises:
        SpecErrors: one line naming the file (and line): it cannot be read, is not
            UTF-8, or is not valid YAML/JSON.
    """
    path = Path(path)
    file = str(path)
    try:
        text = read_utf8(path)
    except OSError as exc:
        raise SpecErrors([SpecError(f"cannot read file: {exc.strerror}", file=file)]) from None
    except ValueError as exc:  # not UTF-8: read_utf8 names the line and byte
        raise SpecErrors([SpecError(str(exc), file=file)]) from None
    try:
        data = load_json(text) if path.suffix.lower() == ".json" else load_yaml(text)
    except LoadError as exc:
        where = f"{file}:{exc.line}" if exc.line is not None else file
        raise SpecErrors([SpecError(exc.message, file=where)]) from None
    return data, text
