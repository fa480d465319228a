"""StepGraph's bulk build gives the graph networkx's own methods build."""

from __future__ import annotations

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktank.session.graph import _bulk_digraph
from thinktank.session.spec import StepSpec

_ids = st.sampled_from([f"s{i}" for i in range(12)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_ids, st.lists(_ids, max_size=4)), max_size=15))
def test_bulk_build_matches_networkx(raw: list[tuple[str, list[str]]]) -> None:
    # Unvalidated steps on purpose: duplicate ids, unknown and repeated dependencies.
    steps = [StepSpec.model_construct(id=i, prompt="p", depends_on=deps) for i, deps in raw]
    expected: nx.DiGraph[str] = nx.DiGraph()
    expected.add_nodes_from(
        (step.id, {"spec": step, "position": position}) for position, step in enumerate(steps)
    )
    expected.add_edges_from((dep, step.id) for step in steps for dep in step.depends_on)
    built = _bulk_digraph(steps)
    assert list(built.nodes(data=True)) == list(expected.nodes(data=True))
    assert list(built.edges(data=True)) == list(expected.edges(data=True))
    assert list(built.pred.items()) == list(expected.pred.items())
    assert {n: list(built.successors(n)) for n in built} == {
        n: list(expected.successors(n)) for n in expected
    }
    # One data dict per edge, shared by both directions, as networkx keeps it.
    for u, v in built.edges:
        assert built.succ[u][v] is built.pred[v][u]
    # Still a working graph: mutation through the public API sees the same structure.
    built.add_edge("x", "y")
    assert built.has_edge("x", "y") and "x" in built.pred["y"]
