"""The step graph: a networkx DiGraph of a session's steps, the DAG a run schedules.

Edges run from a dependency to the step that needs it; each node carries its step's
spec and file position. The spec it is built from was checked first by
:mod:`thinktank.session.validation` (no cycle, no unknown dependency), and the graph
grows only through :meth:`StepGraph.grow`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import networkx as nx

from thinktank.session.spec import SessionSpec, StepSpec

__all__ = ["StepGraph"]


class StepGraph:
    """A validated session as a DAG of step ids, with the specs on the nodes."""

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self.graph: nx.DiGraph[str] = nx.DiGraph()
        self.graph.add_nodes_from(
            (step.id, {"spec": step, "position": position})
            for position, step in enumerate(spec.steps)
        )
        self.graph.add_edges_from((dep, step.id) for step in spec.steps for dep in step.depends_on)

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
