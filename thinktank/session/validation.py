"""Checking a session before any call: every graph-level problem, reported at once.

Duplicate ids, unknown dependencies, cycles (each printed), template references outside
the step's inputs and declared dependencies, and models that cannot be used (unknown, no
key, local model not installed). Loading a file runs these after pydantic's field
validation (:mod:`thinktank.session.loading`); ``run`` runs them again on a spec given
from Python, which may have been built or changed in place since.

A valid session costs no networkx import: the acyclicity check is the standard
library's ``graphlib``, and networkx is loaded only to print the cycles of an invalid
one.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from thinktank.errors import SpecError
from thinktank.providers.config import DEFAULT_MODEL
from thinktank.session.spec import SessionSpec, StepSpec
from thinktank.session.templates import parse_template

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["CheckModel", "validate_spec", "validate_steps_partially"]

CheckModel = Callable[[str], str | None]
"""Why a model name cannot be used, or None when it can."""


def _check_models(
    steps: Sequence[StepSpec], check_model: CheckModel, file: str | None
) -> list[SpecError]:
    """The models each step names itself (defaults are checked once per session)."""
    # Steps share models: check each name once, and walk the steps for their errors
    # only when a name fails (a run of a valid 10,000-step spec does this every time).
    names: dict[str, None] = {}
    for step in steps:
        names.update(dict.fromkeys(step.named_models()))
        names.update(dict.fromkeys(step.extra_models()))
    verdicts = {name: check_model(name) for name in names}
    errors: list[SpecError] = []
    if all(why is None for why in verdicts.values()):
        return errors
    for step in steps:
        field = "model" if step.model is not None else "models"
        named = [(name, field) for name in step.named_models()]
        if step.synthesizer is not None:
            named.append((step.synthesizer, "synthesizer"))
        named += [(name, "escalate_to") for name in step.escalate_to]
        named += [(name, "sub_models") for name in step.sub_models]
        for name, where in named:
            why = verdicts[name]
            if why is not None:
                errors.append(SpecError(why, file=file, step=step.id, field=where))
    return errors


def _check_steps(
    steps: Sequence[StepSpec],
    *,
    extra_ids: Iterable[str],
    input_names: set[str],
    check_model: CheckModel,
    file: str | None,
) -> list[SpecError]:
    errors: list[SpecError] = []
    ids: set[str] = set(extra_ids)
    seen: set[str] = set()
    for step in steps:
        if step.id in seen:
            errors.append(SpecError("duplicate step id", file=file, step=step.id, field="id"))
        seen.add(step.id)
    ids |= seen

    edges: list[tuple[str, str]] = []
    for step in steps:
        for dep in step.depends_on:
            if dep not in ids:
                errors.append(
                    SpecError(
                        f"unknown dependency {dep!r}", file=file, step=step.id, field="depends_on"
                    )
                )
            else:
                edges.append((dep, step.id))

        if step.kind == "decompose" and step.answer_format is not None:
            errors.append(
                SpecError(
                    "answer_format is for prompt steps (a decompose step asks for a plan)",
                    file=file,
                    step=step.id,
                    field="answer_format",
                )
            )
        refs, problems = parse_template(step.prompt) if step.template else ([], [])
        for problem in problems:
            errors.append(SpecError(problem, file=file, step=step.id, field="prompt"))
        for ref in refs:
            if ref.kind == "input" and ref.name not in input_names:
                declared = ", ".join(sorted(input_names)) or "none"
                errors.append(
                    SpecError(
                        f"{{{{ inputs.{ref.name} }}}} refers to an undeclared input "
                        f"(declared: {declared})",
                        file=file,
                        step=step.id,
                        field="prompt",
                    )
                )
            elif ref.kind == "step" and ref.name not in step.depends_on:
                hint = (
                    f"add {ref.name!r} to depends_on"
                    if ref.name in ids and ref.name != step.id
                    else "no such dependency"
                )
                errors.append(
                    SpecError(
                        f"{{{{ steps.{ref.name}.output }}}} refers to a step this step does not "
                        f"depend on: {hint}",
                        file=file,
                        step=step.id,
                        field="prompt",
                    )
                )

    errors.extend(_check_models(steps, check_model, file))
    errors.extend(_cycle_errors([step.id for step in steps], edges, file))
    return errors


def _cycle_errors(
    ids: Sequence[str], edges: Sequence[tuple[str, str]], file: str | None
) -> list[SpecError]:
    """One error per cycle among ``edges`` (dependency, step), each cycle printed."""
    waits: dict[str, list[str]] = {sid: [] for sid in ids}
    for dep, sid in edges:
        waits.setdefault(sid, []).append(dep)
    try:
        graphlib.TopologicalSorter(waits).prepare()
    except graphlib.CycleError:
        pass
    else:
        return []
    # A valid session never gets here: networkx (~0.1 s to import) is loaded only to
    # print the cycles of an invalid one.
    import networkx as nx

    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(ids)
    graph.add_edges_from(edges)
    return [
        SpecError(
            f"cycle: {' -> '.join([*cycle, cycle[0]])}",
            file=file,
            step=cycle[0],
            field="depends_on",
        )
        for cycle in _cycles(graph)
    ]


def _cycles(graph: nx.DiGraph[str]) -> Iterator[list[str]]:
    """One cycle per strongly connected knot, in a deterministic order."""
    import networkx as nx

    for node in sorted(n for n in graph if graph.has_edge(n, n)):
        yield [node]
    knots = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    for knot in sorted(knots, key=min):
        sub = graph.subgraph(knot)
        start = min(knot)
        edges = nx.find_cycle(sub, source=start)
        yield [u for u, _ in edges]


def validate_spec(
    spec: SessionSpec, *, file: str | None = None, check_model: CheckModel
) -> list[SpecError]:
    """Every graph-level problem of a spec whose fields are valid.

    Args:
        spec: The session.
        file: Named in every error.
        check_model: Says why a model name cannot be used (None when it can); the
            model registry's ``check``.
    """
    errors: list[SpecError] = []
    if spec.default_model is not None and (problem := check_model(spec.default_model)):
        errors.append(SpecError(problem, file=file, field="default_model"))
    for name in spec.model_selection.preferred_models:
        if problem := check_model(name):
            errors.append(SpecError(problem, file=file, field="model_selection.preferred_models"))
    unnamed = [s.id for s in spec.steps if not s.named_models()]
    uses_default = bool(unnamed) and not spec.model_selection.preferred_models
    if uses_default and spec.default_model is None and (problem := check_model(DEFAULT_MODEL)):
        steps = ", ".join(unnamed)
        errors.append(
            SpecError(f"{problem} (steps naming no model: {steps})", file=file, field="model")
        )
    errors.extend(
        _check_steps(
            spec.steps,
            extra_ids=(),
            input_names=set(spec.inputs),
            check_model=check_model,
            file=file,
        )
    )
    return errors


def validate_steps_partially(
    raw: Mapping[str, Any], *, file: str | None, check_model: CheckModel
) -> list[SpecError]:
    """Graph problems among the steps that are valid on their own.

    Used when the file also has field errors, so that one run of ``validate`` still
    lists everything: steps that fail field validation still count as existing ids.
    """
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list):
        return []
    good: list[StepSpec] = []
    for item in raw_steps:
        try:
            good.append(StepSpec.model_validate(item))
        except ValidationError:  # its field errors were reported already
            lenient = _lenient_step(item)
            if lenient is not None:
                good.append(lenient)
    raw_inputs = raw.get("inputs")
    input_names = set(raw_inputs) if isinstance(raw_inputs, Mapping) else set()
    return _check_steps(
        good,
        extra_ids=(),
        input_names=input_names,
        check_model=check_model,
        file=file,
    )


def _str_list(value: object) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return []


def _lenient_step(item: object) -> StepSpec | None:
    """The parts of an invalid step that graph checks can still use."""
    if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
        return None
    prompt = item.get("prompt")
    model = item.get("model")
    return StepSpec.model_construct(
        id=item["id"],
        prompt=prompt if isinstance(prompt, str) else "",
        depends_on=_str_list(item.get("depends_on", item.get("dependsOn"))),
        model=model if isinstance(model, str) else None,
        models=_str_list(item.get("models")),
    )
