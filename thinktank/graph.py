"""The step graph: a networkx DiGraph built from a spec, validated before any call.

Edges run from a dependency to the step that needs it. Validation reports every
problem at once: duplicate ids, unknown dependencies, cycles (with the cycle
printed), template references outside the step's inputs and declared dependencies,
unknown models, a step with no model, and options that are not available.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import networkx as nx

from thinktank.errors import SpecError
from thinktank.spec import SessionSpec, StepSpec
from thinktank.templates import parse_template

__all__ = ["StepGraph", "validate_spec", "validate_steps_partially"]


def _check_steps(
    steps: Sequence[StepSpec],
    *,
    extra_ids: Iterable[str],
    input_names: set[str],
    model_names: set[str],
    models_for: Mapping[str, list[str]],
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

    graph: nx.DiGraph[str] = nx.DiGraph()
    for step in steps:
        graph.add_node(step.id)
        for dep in step.depends_on:
            if dep not in ids:
                errors.append(
                    SpecError(
                        f"unknown dependency {dep!r}", file=file, step=step.id, field="depends_on"
                    )
                )
            else:
                graph.add_edge(dep, step.id)

        refs, problems = parse_template(step.prompt)
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

        names = models_for.get(step.id, [])
        if not names:
            errors.append(
                SpecError(
                    "names no model and the session sets neither default_model nor "
                    "modelSelection.preferredModels",
                    file=file,
                    step=step.id,
                    field="model",
                )
            )
        field = "model" if step.model is not None else "models"
        for name in names:
            if name not in model_names:
                errors.append(
                    SpecError(
                        _unknown_model(name, model_names), file=file, step=step.id, field=field
                    )
                )

    for cycle in _cycles(graph):
        path = " -> ".join([*cycle, cycle[0]])
        errors.append(SpecError(f"cycle: {path}", file=file, step=cycle[0], field="depends_on"))
    return errors


def _unknown_model(name: str, known: set[str]) -> str:
    listed = ", ".join(sorted(known)) or "none"
    return f"unknown model {name!r} (known: {listed}); declare it under 'models:'"


def _cycles(graph: nx.DiGraph[str]) -> Iterator[list[str]]:
    """One cycle per strongly connected knot, in a deterministic order."""
    for node in sorted(n for n in graph if graph.has_edge(n, n)):
        yield [node]
    knots = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    for knot in sorted(knots, key=min):
        sub = graph.subgraph(knot)
        start = min(knot)
        edges = nx.find_cycle(sub, source=start)
        yield [u for u, _ in edges]


def validate_spec(
    spec: SessionSpec, *, file: str | None = None, known_models: Iterable[str] = ()
) -> list[SpecError]:
    """Every graph-level problem of a spec whose fields are valid."""
    model_names = set(spec.models) | set(known_models)
    errors: list[SpecError] = []
    if spec.model_selection.automatic:
        errors.append(
            SpecError(
                "automatic model selection is not available in this version; "
                "set 'automatic: false' and name the models",
                file=file,
                field="model_selection.automatic",
            )
        )
    if spec.default_model is not None and spec.default_model not in model_names:
        errors.append(
            SpecError(
                _unknown_model(spec.default_model, model_names), file=file, field="default_model"
            )
        )
    for name in spec.model_selection.preferred_models:
        if name not in model_names:
            errors.append(
                SpecError(
                    _unknown_model(name, model_names),
                    file=file,
                    field="model_selection.preferred_models",
                )
            )
    models_for = {s.id: spec.step_models(s) for s in spec.steps}
    errors.extend(
        _check_steps(
            spec.steps,
            extra_ids=(),
            input_names=set(spec.inputs),
            model_names=model_names,
            models_for=models_for,
            file=file,
        )
    )
    return errors


def validate_steps_partially(
    raw: Mapping[str, Any], *, file: str | None, known_models: Iterable[str] = ()
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
        except Exception:
            lenient = _lenient_step(item)
            if lenient is not None:
                good.append(lenient)
    raw_inputs = raw.get("inputs")
    raw_models = raw.get("models")
    input_names = set(raw_inputs) if isinstance(raw_inputs, Mapping) else set()
    model_names = set(known_models) | (
        set(raw_models) if isinstance(raw_models, Mapping) else set()
    )
    default = raw.get("default_model", raw.get("defaultModel"))
    selection = raw.get("model_selection", raw.get("modelSelection"))
    preferred: list[str] = []
    if isinstance(selection, Mapping):
        value = selection.get("preferred_models", selection.get("preferredModels"))
        if isinstance(value, list):
            preferred = [v for v in value if isinstance(v, str)]
    fallback = preferred or ([default] if isinstance(default, str) else [])
    models_for = {s.id: (s.named_models() or fallback) for s in good}
    return _check_steps(
        good,
        extra_ids=(),
        input_names=input_names,
        model_names=model_names,
        models_for=models_for,
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


class StepGraph:
    """A validated session as a DAG of step ids, with the specs on the nodes."""

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self.graph: nx.DiGraph[str] = nx.DiGraph()
        for position, step in enumerate(spec.steps):
            self.graph.add_node(step.id, spec=step, position=position)
        for step in spec.steps:
            for dep in step.depends_on:
                self.graph.add_edge(dep, step.id)

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def __iter__(self) -> Iterator[str]:
        return iter(self.graph)

    def step(self, step_id: str) -> StepSpec:
        """The spec of one step."""
        spec: StepSpec = self.graph.nodes[step_id]["spec"]
        return spec

    def dependencies(self, step_id: str) -> list[str]:
        """The steps ``step_id`` waits for."""
        return list(self.graph.predecessors(step_id))

    def dependents(self, step_id: str) -> list[str]:
        """The steps that wait for ``step_id``."""
        return list(self.graph.successors(step_id))

    def descendants(self, step_id: str) -> set[str]:
        """Every step downstream of ``step_id``."""
        return set(nx.descendants(self.graph, step_id))

    def generations(self) -> list[list[str]]:
        """Topological generations, each in file order."""
        order = {n: d["position"] for n, d in self.graph.nodes(data=True)}
        return [sorted(g, key=order.__getitem__) for g in nx.topological_generations(self.graph)]

    def critical_path(self, weight: Mapping[str, float]) -> float:
        """Length of the longest dependency chain, each step weighted by ``weight``."""
        finish: dict[str, float] = {}
        for node in nx.topological_sort(self.graph):
            start = max((finish[p] for p in self.graph.predecessors(node)), default=0.0)
            finish[node] = start + weight[node]
        return max(finish.values(), default=0.0)
