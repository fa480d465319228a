"""Parallel decomposition: several models split a problem; the merged plan grows the DAG.

A ``decompose`` step asks each of its models for a plan as JSON::

    {"subproblems": [{"id": "costs", "prompt": "...", "depends_on": []}, ...]}

Each proposal is validated with pydantic. A malformed one is first *repaired* (the JSON
pulled out of a code fence or surrounding prose; a bare bulleted or numbered list read
as independent sub-problems) and, if that fails, the model is asked once more with the
error; a model that still gives nothing usable is dropped. If every model fails, the
step fails with an error quoting the bad output.

Proposals are merged: sub-problems whose prompts are near-duplicates (lexical
similarity at or above the step's ``similarity_threshold``) collapse into one, credited
to every model that proposed it (provenance); coverage is the union; dependencies are
kept only while they leave the plan acyclic. The plan becomes one step per merged
sub-problem plus a synthesis step that depends on all of them; steps that depended on
the decompose step now also wait for the synthesis, and ``{{ steps.ID.output }}`` of
the decompose step gives them the synthesis's answer.

Model output never becomes a template: sub-step prompts are literal text, and the
outputs of the steps they build on are appended to them as data.

The step does not grow the DAG itself: :func:`decompose` returns the steps to add (a
:class:`Growth`), and the run grows its graph by them (``StepGraph.grow``), the same way
a restart rebuilds a grown DAG.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import anyio
import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from thinktank.consensus.options import ITEM_THRESHOLD
from thinktank.consensus.similarity import lexical_similarity
from thinktank.engine.calls import Caller, CallResult
from thinktank.providers.base import ModelRequest
from thinktank.session.spec import StepSpec

__all__ = [
    "DECOMPOSE_INSTRUCTIONS",
    "Growth",
    "MergedPlan",
    "PlanItem",
    "Proposal",
    "SubProblem",
    "decompose",
    "merge_proposals",
    "parse_proposal",
    "plan_steps",
]

DECOMPOSE_INSTRUCTIONS = """

Break this problem into independent sub-problems that can be worked on in parallel
(at most {max_items}). Answer with JSON only, in this form:
{{"subproblems": [{{"id": "short_id", "prompt": "a self-contained question", "depends_on": []}}]}}
Use depends_on only when a sub-problem needs another one's answer."""
"""Appended to a decompose step's rendered prompt (``{max_items}`` is filled in)."""


class SubProblem(BaseModel):
    """One sub-problem as a model proposed it."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, Field(min_length=1, max_length=60)]
    """The proposal's own id for it (only meaningful inside that proposal)."""
    prompt: Annotated[str, Field(min_length=1, max_length=4000)]
    """A self-contained question."""
    depends_on: list[str] = []
    """Ids of sub-problems of the same proposal whose answers it needs."""


class Proposal(BaseModel):
    """One model's plan."""

    model_config = ConfigDict(extra="ignore")

    subproblems: Annotated[list[SubProblem], Field(min_length=1)]
    """The sub-problems."""

    @model_validator(mode="after")
    def _consistent(self) -> Proposal:
        ids = [s.id for s in self.subproblems]
        if len(set(ids)) != len(ids):
            raise ValueError("sub-problem ids repeat")
        graph: nx.DiGraph[str] = nx.DiGraph()
        graph.add_nodes_from(ids)
        for sub in self.subproblems:
            for dep in sub.depends_on:
                if dep not in graph:
                    raise ValueError(f"{sub.id!r} depends on unknown {dep!r}")
                graph.add_edge(dep, sub.id)
        if not nx.is_directed_acyclic_graph(graph):
            raise ValueError("the dependencies form a cycle")
        return self


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.+?)\s*$")


def _json_candidates(text: str) -> list[str]:
    found = [m.group(1) for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        found.append(text[start : end + 1])
    return [text, *found]


def parse_proposal(text: str) -> tuple[Proposal | None, str | None]:
    """A proposal from a model's raw answer, repaired where possible.

    Returns:
        The proposal and None, or None and why the text is not a usable plan.
    """
    problem = "no JSON object with 'subproblems' in the answer"
    for candidate in _json_candidates(text):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, list):
            data = {"subproblems": data}
        try:
            return Proposal.model_validate(data), None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            problem = f"{where}: {first['msg']}" if where else first["msg"]
            problem = problem.removeprefix("Value error, ")
    # Repair: a plain list of items is a plan of independent sub-problems.
    items = [m.group(1) for line in text.splitlines() if (m := _LIST_ITEM.match(line))]
    if items:
        subs = [SubProblem(id=f"p{i}", prompt=item) for i, item in enumerate(items, start=1)]
        return Proposal(subproblems=subs), None
    return None, problem


@dataclass
class PlanItem:
    """A merged sub-problem."""

    prompt: str
    """The prompt (the first proposer's wording)."""
    models: list[str]
    """Models that proposed it (provenance)."""
    depends_on: set[int] = field(default_factory=set)
    """Indexes of the merged items it needs."""


@dataclass
class MergedPlan:
    """Every proposal merged into one acyclic plan."""

    items: list[PlanItem]
    """The sub-problems, most-proposed first."""
    dropped_edges: list[tuple[int, int]] = field(default_factory=list)
    """Dependencies left out because they would have made a cycle."""
    truncated: int = 0
    """Sub-problems left out past the cap."""

    def describe(self) -> str:
        """The plan as text: the decompose step's own output."""
        lines = []
        for i, item in enumerate(self.items, start=1):
            deps = (
                f" (after {', '.join(str(d + 1) for d in sorted(item.depends_on))})"
                if (item.depends_on)
                else ""
            )
            lines.append(f"{i}. {item.prompt}{deps}  [{', '.join(item.models)}]")
        if self.truncated:
            lines.append(f"({self.truncated} more sub-problems left out past the cap)")
        return "\n".join(lines)


def merge_proposals(
    proposals: Sequence[tuple[str, Proposal]], *, threshold: float, max_items: int
) -> MergedPlan:
    """Merge proposals (model, plan), collapsing near-duplicate sub-problems.

    Items are matched against earlier items by lexical similarity of their prompts;
    the result is ordered by how many models proposed an item, then first appearance,
    and cut at ``max_items``. Dependencies are added one by one and any that would
    close a cycle is dropped.
    """
    items: list[PlanItem] = []
    local: list[dict[str, int]] = []
    for model, proposal in proposals:
        mapping: dict[str, int] = {}
        for sub in proposal.subproblems:
            match = next(
                (
                    i
                    for i, item in enumerate(items)
                    if i not in mapping.values()
                    and lexical_similarity(item.prompt, sub.prompt) >= threshold
                ),
                None,
            )
            if match is None:
                items.append(PlanItem(prompt=sub.prompt.strip(), models=[model]))
                match = len(items) - 1
            elif model not in items[match].models:
                items[match].models.append(model)
            mapping[sub.id] = match
        local.append(mapping)

    order = sorted(range(len(items)), key=lambda i: (-len(items[i].models), i))
    kept = order[:max_items]
    renumber = {old: new for new, old in enumerate(kept)}
    plan = MergedPlan(items=[items[i] for i in kept], truncated=max(0, len(items) - max_items))
    for item in plan.items:
        item.depends_on = set()
    graph: nx.DiGraph[int] = nx.DiGraph()
    graph.add_nodes_from(range(len(plan.items)))
    for (_model, proposal), mapping in zip(proposals, local, strict=True):
        for sub in proposal.subproblems:
            target = renumber.get(mapping[sub.id])
            for dep in sub.depends_on:
                source = renumber.get(mapping[dep])
                if target is None or source is None or source == target:
                    continue
                if graph.has_edge(source, target):
                    continue
                if nx.has_path(graph, target, source):
                    plan.dropped_edges.append((source, target))
                    continue
                graph.add_edge(source, target)
                plan.items[target].depends_on.add(source)
    return plan


@dataclass(frozen=True)
class Growth:
    """The steps a decompose step added, for the run to grow its DAG by."""

    parent: str
    """The decompose step."""
    added: tuple[StepSpec, ...]
    """The sub-steps, dependencies first, then the synthesis step."""
    sink: str
    """The synthesis step: what ``{{ steps.PARENT.output }}`` gives from now on."""
    provenance: Mapping[str, tuple[str, ...]]
    """Sub-step id -> the models that proposed it."""


async def decompose(
    caller: Caller,
    step: StepSpec,
    models: list[str],
    request: ModelRequest,
    calls: list[CallResult],
    taken: Collection[str],
) -> tuple[str | None, str | None, Growth | None]:
    """One attempt of a decompose step: ask every model for a plan, merge the plans.

    Returns:
        The plan as text (the step's output), the error when no model gave a usable
        plan, and the steps to add (their ids unlike any in ``taken``).
    """
    plans, bad = await _propose(caller, step, models, request, calls)
    if not plans:
        reasons = "; ".join(f"{m}: {why}" for m, why in bad.items())
        return None, f"no usable decomposition ({reasons})", None
    plan = merge_proposals(
        [(m, plans[m]) for m in models if m in plans],
        threshold=(
            ITEM_THRESHOLD if step.similarity_threshold is None else step.similarity_threshold
        ),
        max_items=step.max_subproblems,
    )
    return plan.describe(), None, plan_steps(step, plan, request.prompt, taken, models[0])


async def _propose(
    caller: Caller,
    step: StepSpec,
    models: list[str],
    request: ModelRequest,
    calls: list[CallResult],
) -> tuple[dict[str, Proposal], dict[str, str]]:
    """Every model's plan, asked at once: (plans by model, why the others gave none)."""
    limiters = caller.limiters(len(models))
    asked = dataclasses.replace(
        request,
        prompt=request.prompt + DECOMPOSE_INSTRUCTIONS.format(max_items=step.max_subproblems),
    )
    plans: dict[str, Proposal] = {}
    bad: dict[str, str] = {}

    async def propose(model: str) -> None:
        req = asked
        for try_ in range(2):
            result = await caller.call(model, req, limiters, calls, step.call_timeout_ms)
            if not result.ok:
                bad[model] = f"call failed: {result.error}"
                return
            proposal, problem = parse_proposal(result.content or "")
            if proposal is not None:
                plans[model] = proposal
                bad.pop(model, None)
                return
            quoted = _quote(result.content or "")
            bad[model] = f"{problem}; it answered {quoted}"
            if try_ == 0:
                # One retry, telling the model what was wrong with its answer.
                req = dataclasses.replace(
                    asked,
                    prompt=asked.prompt + f"\n\nYour previous answer was not usable ({problem}). "
                    "Answer with the JSON object only.",
                )

    async with anyio.create_task_group() as tg:
        for model in models:
            tg.start_soon(propose, model, name=f"{step.id}:{model}")
    return plans, bad


def plan_steps(
    step: StepSpec, plan: MergedPlan, problem: str, taken: Collection[str], first_model: str
) -> Growth:
    """The steps a merged plan becomes: one per sub-problem, then a synthesis step that
    depends on all of them. Ids are unlike any in ``taken``; ``first_model`` (the
    decompose step's first) runs them unless the step names ``sub_models`` or a
    ``synthesizer``."""
    used = set(taken)

    def fresh(base: str) -> str:
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        return name

    sub_models = step.sub_models or [first_model]
    ids = [fresh(f"{step.id}-{i}") for i in range(1, len(plan.items) + 1)]
    subs = [
        StepSpec.model_validate(
            {
                "id": ids[i],
                "prompt": item.prompt,
                "template": False,
                "depends_on": [step.id, *(ids[d] for d in sorted(item.depends_on))],
                **({"model": sub_models[0]} if len(sub_models) == 1 else {"models": sub_models}),
                "max_tokens": step.max_tokens,
                "temperature": step.temperature,
                "system": step.system,
            }
        )
        for i, item in enumerate(plan.items)
    ]
    instruction = step.synthesis_prompt or (
        "Answer the original problem below using the results of its sub-problems, "
        "which follow it.\n\nOriginal problem:\n" + problem
    )
    sink = StepSpec.model_validate(
        {
            "id": fresh(f"{step.id}-synthesis"),
            "prompt": instruction,
            "template": False,
            "depends_on": ids,
            "model": step.synthesizer or first_model,
            "max_tokens": step.max_tokens,
            "system": step.system,
        }
    )
    provenance = {ids[i]: tuple(item.models) for i, item in enumerate(plan.items)}
    return Growth(step.id, (*subs, sink), sink.id, provenance)


def _quote(text: str, width: int = 200) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")
