"""The step graph: a networkx DiGraph built from a spec, validated before any call.

Edges run from a dependency to the step that needs it. Validation reports every
problem at once: duplicate ids, unknown dependencies, cycles (with the cycle
printed), template references outside the step's inputs and declared dependencies,
unknown models, a step with no model, and options that are not available.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import networkx as nx
from pydantic import ValidationError

from thinktank.errors import SpecError
from thinktank.providers.config import DEFAULT_MODEL
from thinktank.session.spec import SessionSpec, StepSpec
from thinktank.session.templates import parse_template

__all__ = ["CheckModel", "StepGraph", "validate_spec", "validate_steps_partially"]

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

    # Plain dicts, not a networkx graph: this runs on every session start, and a graph
    # is only needed to print cycles, when there are any.
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
    if not _acyclic(seen | {d for d, _ in edges}, edges):
        graph: nx.DiGraph[str] = nx.DiGraph()
        graph.add_nodes_from(step.id for step in steps)
        graph.add_edges_from(edges)
        for cycle in _cycles(graph):
            path = " -> ".join([*cycle, cycle[0]])
            errors.append(SpecError(f"cycle: {path}", file=file, step=cycle[0], field="depends_on"))
    return errors


def _acyclic(nodes: set[str], edges: Sequence[tuple[str, str]]) -> bool:
    """Whether the graph has no cycle (Kahn's algorithm: every node can be removed)."""
    waiting = dict.fromkeys(nodes, 0)
    after: dict[str, list[str]] = {}
    for dep, step in edges:
        waiting[step] += 1
        after.setdefault(dep, []).append(step)
    ready = [n for n, k in waiting.items() if k == 0]
    removed = 0
    while ready:
        node = ready.pop()
        removed += 1
        for nxt in after.get(node, ()):
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    return removed == len(waiting)


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


_checked: dict[int, tuple[weakref.ref[SessionSpec], tuple[Any, ...]]] = {}
"""Specs whose structure passed validation, by id: (the spec, what was checked)."""


def _structure(spec: SessionSpec) -> tuple[Any, ...]:
    """What the structural checks read that could change in place (the lists)."""
    steps = spec.steps
    return tuple(steps), tuple(tuple(s.depends_on) for s in steps), tuple(spec.inputs)


def _mark_checked(spec: SessionSpec) -> None:
    key = id(spec)
    if key not in _checked:
        weakref.finalize(spec, _checked.pop, key, None)
    _checked[key] = (weakref.ref(spec), _structure(spec))


def _structure_checked(spec: SessionSpec) -> bool:
    """Whether ``spec`` passed the structural checks and is unchanged since."""
    entry = _checked.get(id(spec))
    return entry is not None and entry[0]() is spec and entry[1] == _structure(spec)


def validate_spec(
    spec: SessionSpec, *, file: str | None = None, check_model: CheckModel
) -> list[SpecError]:
    """Every graph-level problem of a spec whose fields are valid.

    The structural checks (ids, dependencies, templates, cycles) are skipped for a
    spec that passed them before and has not changed in place since (``run`` of a
    spec from ``load_session``: ~2.5 us a step); the models are always checked, as
    ``check_model`` may differ.

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
    if _structure_checked(spec):
        errors.extend(_check_models(spec.steps, check_model, file))
        return errors
    structural = _check_steps(
        spec.steps,
        extra_ids=(),
        input_names=set(spec.inputs),
        check_model=check_model,
        file=file,
    )
    if not structural:
        _mark_checked(spec)
    errors.extend(structural)
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


def _bulk_digraph(steps: Sequence[StepSpec]) -> nx.DiGraph[str]:
    """The DiGraph of ``steps``: nodes in file order with ``spec`` and ``position``, an
    edge from each dependency.

    This runs at every session start. ``add_nodes_from``/``add_edges_from`` cost ~5x
    more than filling networkx's documented dict-of-dicts structure (``_node``,
    ``_succ``, ``_pred``; one data dict per edge, shared by both directions) directly,
    which is what is done here for a new, empty graph; a test checks the result equals
    the one the public methods build.
    """
    graph: nx.DiGraph[str] = nx.DiGraph()
    succ: dict[str, dict[str, dict[str, Any]]] = graph._succ  # type: ignore[attr-defined]
    pred: dict[str, dict[str, dict[str, Any]]] = graph._pred  # type: ignore[attr-defined]
    nodes: dict[str, dict[str, Any]] = graph._node  # type: ignore[attr-defined]
    for position, step in enumerate(steps):
        sid = step.id
        if sid in nodes:
            # Duplicate ids are a validation error; build what networkx would.
            nodes[sid].update(spec=step, position=position)
            continue
        succ[sid] = {}
        pred[sid] = {}
        nodes[sid] = {"spec": step, "position": position}
    for step in steps:
        sid = step.id
        into = pred[sid]
        for dep in step.depends_on:
            if dep not in nodes:
                succ[dep] = {}
                pred[dep] = {}
                nodes[dep] = {}
            data = succ[dep].get(sid)
            if data is None:
                data = {}
                succ[dep][sid] = data
                into[dep] = data
    return graph


class StepGraph:
    """A validated session as a DAG of step ids, with the specs on the nodes."""

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self.graph: nx.DiGraph[str] = _bulk_digraph(spec.steps)

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

    def grow(self, parent: str, added: Sequence[StepSpec], sink: str) -> list[str]:
        """Add the steps decompose step ``parent`` made, and wire them in.

        The one place the DAG grows: the live run (a decompose step finishing) and a
        restart (resume, fork: rebuilding the grown DAG from the stored steps) both call
        it, so both get the same graph. The added steps become nodes after the existing
        ones, with an edge from each dependency; every step that waited for ``parent``
        now also waits for ``sink`` (the synthesis step), so ``{{ steps.PARENT.output }}``
        is ready when it runs.

        Args:
            parent: The decompose step.
            added: The steps it added, dependencies first (they may depend on
                ``parent``, on each other and on steps already in the graph).
            sink: The id of the synthesis step among ``added``.

        Returns:
            The steps that now also wait for ``sink``.
        """
        new = {step.id for step in added}
        waiting = [s for s in self.graph.successors(parent) if s not in new]
        for step in added:
            self.graph.add_node(step.id, spec=step, position=self.graph.number_of_nodes())
            for dep in step.depends_on:
                self.graph.add_edge(dep, step.id)
        for succ in waiting:
            self.graph.add_edge(sink, succ)
        return waiting

    def critical_path(self, weight: Mapping[str, float]) -> float:
        """Length of the longest dependency chain, each step weighted by ``weight``."""
        finish: dict[str, float] = {}
        for node in nx.topological_sort(self.graph):
            start = max((finish[p] for p in self.graph.predecessors(node)), default=0.0)
            finish[node] = start + weight[node]
        return max(finish.values(), default=0.0)
