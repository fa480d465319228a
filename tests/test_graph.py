"""StepGraph: the steps in file order, an edge from each dependency, and growth."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from thinktank.session.graph import StepGraph
from thinktank.session.spec import SessionSpec, StepSpec


@st.composite
def _dags(draw: st.DrawFn) -> list[StepSpec]:
    """Steps s0..sN-1 in a shuffled file order, each depending on some earlier ones."""
    n = draw(st.integers(1, 15))
    deps = [
        draw(st.lists(st.sampled_from([f"s{j}" for j in range(i)]), max_size=4, unique=True))
        if i
        else []
        for i in range(n)
    ]
    order = draw(st.permutations(range(n)))
    return [StepSpec(id=f"s{i}", prompt="p", depends_on=deps[i]) for i in order]


@settings(max_examples=200, deadline=None)
@given(_dags())
def test_the_graph_holds_each_step_in_file_order_with_its_dependencies(
    steps: list[StepSpec],
) -> None:
    """Nodes come in file order with their spec; a step's dependencies are its
    predecessors, and generations list each step after everything it waits for."""
    graph = StepGraph(SessionSpec(name="t", steps=steps))
    assert list(graph) == [s.id for s in steps]
    assert len(graph) == len(steps)
    position = {s.id: i for i, s in enumerate(steps)}
    for step in steps:
        assert graph.step(step.id) is step
        assert sorted(graph.dependencies(step.id)) == sorted(step.depends_on)
        for dep in step.depends_on:
            assert step.id in graph.dependents(dep)
    done: set[str] = set()
    for generation in graph.generations():
        assert generation == sorted(generation, key=position.__getitem__)
        for sid in generation:
            assert set(graph.step(sid).depends_on) <= done
        done |= set(generation)
    assert done == set(position)


def test_grow_adds_the_sub_steps_and_rewires_the_waiting_steps() -> None:
    """The steps a decompose step adds run after it; what waited for it waits for the sink."""
    spec = SessionSpec(
        name="t",
        steps=[
            StepSpec(id="plan", prompt="p", kind="decompose"),
            StepSpec(id="after", prompt="q", depends_on=["plan"]),
        ],
    )
    graph = StepGraph(spec)
    added = [
        StepSpec(id="sub1", prompt="a", depends_on=["plan"]),
        StepSpec(id="sub2", prompt="b", depends_on=["plan"]),
        StepSpec(id="sink", prompt="c", depends_on=["sub1", "sub2"]),
    ]
    assert graph.grow("plan", added, "sink") == ["after"]
    assert list(graph) == ["plan", "after", "sub1", "sub2", "sink"]
    assert sorted(graph.dependencies("after")) == ["plan", "sink"]
    assert graph.descendants("plan") == {"after", "sub1", "sub2", "sink"}
    assert graph.generations() == [["plan"], ["sub1", "sub2"], ["sink"], ["after"]]
    weights = {"plan": 1.0, "after": 1.0, "sub1": 2.0, "sub2": 5.0, "sink": 1.0}
    assert graph.critical_path(weights) == 8.0
