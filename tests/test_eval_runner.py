"""The experiment runner: one tagged session per sample, continued after a kill.

Models are served by the loopback fake server (``tests/fakeserver.py``), which records
every request, so "nothing answered is paid again" and "no target reaches a prompt" are
checked at the server, and in the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinktank.errors import SpecErrors, UnknownExperimentError, UsageError
from thinktank.eval.dataset import load_dataset
from thinktank.eval.experiment import load_experiment
from thinktank.eval.runner import (
    plan_experiment,
    run_experiment,
    select_items,
    session_for,
)
from thinktank.eval.store_read import list_experiments, read_experiment
from thinktank.store import Store

from . import pg
from .fakeserver import FakeServer, Fault, run_fake_server

# The PostgreSQL fixtures (see tests/pg.py), by assignment so that pytest finds them here.
pg_server = pg.pg_server
pg_url = pg.pg_url
db_url = pg.db_url

TARGET = "QXZTARGET"
"""Every target starts with this: text no prompt contains by chance."""


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with run_fake_server() as fake:
        yield fake


def write_config(path: Path, server: FakeServer, names: list[str]) -> Path:
    lines = []
    for name in names:
        lines += [
            f"[models.{name}]",
            'provider = "openai"',
            f'model = "{name}"',
            f'base_url = "{server.url}/v1"',
            "max_retries = 0",
            "timeout_s = 10",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def write_experiment(
    tmp_path: Path,
    *,
    items: int = 3,
    grid: Any = None,
    repeats: int = 1,
    budget: dict[str, Any] | None = None,
    name: str = "exp",
) -> Path:
    rows = [
        {"id": f"q{i}", "question": f"question number {i}?", "target": f"{TARGET}-{i}"}
        for i in range(items)
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    experiment: dict[str, Any] = {
        "name": name,
        "dataset": "data.jsonl",
        "prompt": "Answer: {{ question }}",
        "grid": grid or [{"models": ["a"]}, {"models": ["a", "b"]}],
        "scorer": "contains",
        "repeats": repeats,
    }
    if budget:
        experiment["budget"] = budget
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


@pytest.fixture
def configured(tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    config = write_config(tmp_path / "thinktank.toml", server, ["a", "b", "c"])
    monkeypatch.setenv("THINKTANK_CONFIG", str(config))
    return server


def prompts(server: FakeServer) -> list[str]:
    return [json.dumps(r.json) for r in server.requests]


async def test_every_sample_is_one_tagged_session(
    tmp_path: Path, configured: FakeServer, db_url: str
) -> None:
    """3 items x 2 configurations x 2 repeats: 12 samples, each one stored session
    tagged with its configuration, item and repeat, scored; 18 calls at the server."""
    spec = load_experiment(write_experiment(tmp_path, repeats=2))
    configured.set_reply("a", f"It is {TARGET}-1.")
    async with await Store.open(db_url) as store:
        summary = await run_experiment(spec, store=store, concurrency=4)
        record, samples = await read_experiment(store, summary.experiment_id[:8])
        sessions = await store.list_sessions()
    assert summary.new and summary.answered == 12 and summary.reused == 0
    assert len(configured.requests) == 2 * 3 + 2 * 3 * 2 == summary.calls
    assert sorted((s.config_id, s.item_id, s.repeat) for s in samples) == sorted(
        (c, f"q{i}", r) for c in ("c1", "c2") for i in range(3) for r in (1, 2)
    )
    assert len({s.session_id for s in samples}) == 12 == len(sessions)
    assert {s.status for s in samples} == {"completed"}
    by_config = {c.id: c.models for c in record.configurations}
    assert by_config == {"c1": ("a",), "c2": ("a", "b")}
    for s in samples:
        assert [c.base_model for c in s.calls] == list(by_config[s.config_id]) or sorted(
            c.model for c in s.calls
        ) == sorted(by_config[s.config_id])
        assert s.calls_made == len(by_config[s.config_id])
        assert [c.arrival for c in s.calls] == list(range(len(s.calls)))
        # The scored step's rendered prompt: the question a derived re-merge reads.
        assert s.prompt and s.prompt in {
            json.loads(p)["messages"][-1]["content"] for p in prompts(configured)
        }
    # Only item q1 under the one-model configuration answers its target.
    right = {(s.config_id, s.item_id) for s in samples if s.answer and f"{TARGET}-1" in s.answer}
    assert ("c1", "q1") in right
    assert summary.scored == 12 and summary.correct >= 2


async def test_rerun_calls_nothing_and_rescores(
    tmp_path: Path, configured: FakeServer, db_url: str
) -> None:
    """A second run of the same experiment makes no call, keeps one session per
    sample, and scores again with the scorer as it is now."""
    path = write_experiment(tmp_path)
    configured.set_reply("a", f"It is {TARGET}-0.")
    async with await Store.open(db_url) as store:
        first = await run_experiment(load_experiment(path), store=store)
        calls = len(configured.requests)
        experiment = yaml.safe_load(path.read_text())
        experiment["scorer"] = "exact"  # same fingerprint: the same experiment
        path.write_text(yaml.safe_dump(experiment))
        second = await run_experiment(load_experiment(path), store=store)
        _, samples = await read_experiment(store, first.experiment_id)
        assert len(await store.list_sessions()) == 6
    assert len(configured.requests) == calls
    assert second.experiment_id == first.experiment_id and not second.new
    assert second.reused == 6 and second.calls == 0
    assert first.correct >= 1.0  # contains: "It is QXZTARGET-0." answers q0
    assert second.correct == 0.0  # exact: it does not
    assert len(samples) == 6 and sum(s.answer is not None for s in samples) == 6


async def test_new_starts_another_experiment(tmp_path: Path, configured: FakeServer) -> None:
    """``new=True`` makes a new experiment row and runs every sample again."""
    spec = load_experiment(write_experiment(tmp_path, items=2))
    async with await Store.open(str(tmp_path / "t.db")) as store:
        first = await run_experiment(spec, store=store)
        second = await run_experiment(spec, store=store, new=True)
        listed = await list_experiments(store)
    assert second.experiment_id != first.experiment_id and second.new
    assert len(configured.requests) == 2 * (2 + 4)
    assert [row["id"] for row in listed] == [second.experiment_id, first.experiment_id]
    assert listed[0]["answered"] == 4


async def test_targets_never_reach_a_prompt(tmp_path: Path, configured: FakeServer) -> None:
    """No request the models received and no stored prompt holds a target."""
    spec = load_experiment(write_experiment(tmp_path, items=4))
    async with await Store.open(str(tmp_path / "t.db")) as store:
        summary = await run_experiment(spec, store=store)
        _, samples = await read_experiment(store, summary.experiment_id)
        stored = [await store.get_session(s.session_id) for s in samples]
    sent = prompts(configured)
    assert sent and all("question number" in p for p in sent)
    assert not any(TARGET in p for p in sent)
    stored_prompts = [step.prompt or "" for session in stored for step in session.steps]
    assert stored_prompts and all("question number" in p for p in stored_prompts)
    assert not any(TARGET in p for p in stored_prompts)
    assert not any(TARGET in json.dumps(s.inputs) for s in stored)


async def test_interrupted_run_continues_without_paying_twice(
    tmp_path: Path, configured: FakeServer, db_url: str
) -> None:
    """Cancelled once K calls reached the server, a rerun answers every sample; the
    server's total is one uninterrupted run plus at most the calls in flight then."""
    items, per_run = 6, 6 * 3
    spec = load_experiment(write_experiment(tmp_path, items=items))
    configured.add_faults(*[Fault.slow(0.05) for _ in range(200)])
    kill_at = 7
    async with await Store.open(db_url) as store:
        with anyio.move_on_after(20):
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    # The server runs in another thread: poll its count.
                    while len(configured.requests) < kill_at:  # noqa: ASYNC110
                        await anyio.sleep(0.005)
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                await run_experiment(spec, store=store, concurrency=3)
        in_flight_max = 3 * 2  # three sessions of at most two calls
        at_kill = len(configured.requests)
        assert kill_at <= at_kill < per_run
        # Every session that made a call is tagged with its sample (calls wait for it).
        (experiment_id,) = [row["id"] for row in await list_experiments(store)]
        tagged = {row.session_id for row in await store.experiment_samples(experiment_id)}
        for listed in await store.list_sessions():
            stored = await store.get_session(listed.id)
            if any(step.calls for step in stored.steps):
                assert stored.id in tagged
        summary = await run_experiment(spec, store=store, concurrency=3)
        _, samples = await read_experiment(store, summary.experiment_id)
    assert summary.answered == len(samples) == items * 2
    assert all(s.status == "completed" and s.answer for s in samples)
    assert per_run <= len(configured.requests) <= per_run + in_flight_max
    assert summary.resumed + summary.reused >= 1


async def test_session_finished_but_unscored_is_scored_from_the_store(
    tmp_path: Path, configured: FakeServer
) -> None:
    """A kill between a session's end and its scoring: the rerun reads the answer from
    the stored session and scores it, with no call."""
    configured.set_reply("a", f"{TARGET}-0")
    spec = load_experiment(write_experiment(tmp_path, items=1, grid=[{"models": ["a"]}]))
    async with await Store.open(str(tmp_path / "t.db")) as store:
        first = await run_experiment(spec, store=store)
        (row,) = await store.experiment_samples(first.experiment_id)
        await store.score_sample(row.id, None, None)
        second = await run_experiment(spec, store=store)
        (again,) = await store.experiment_samples(first.experiment_id)
    assert len(configured.requests) == 1 and second.calls == 0
    assert (again.answer, again.correct) == (f"{TARGET}-0", 1.0)
    assert second.correct == 1.0


def test_limit_and_sample_pick_documented_items(tmp_path: Path) -> None:
    """``limit`` takes the first items; ``sample`` with a seed draws the same items in
    dataset order every time, and other seeds draw others; too many is an error."""
    write_experiment(tmp_path, items=20)
    items = load_dataset(tmp_path / "data.jsonl")
    assert [i.id for i in select_items(items, limit=3)] == ["q0", "q1", "q2"]
    one = [i.id for i in select_items(items, sample=5, seed=7)]
    assert one == [i.id for i in select_items(items, sample=5, seed=7)]
    assert one == sorted(one, key=lambda x: int(x[1:]))
    assert len(set(one)) == 5
    draws = {tuple(i.id for i in select_items(items, sample=5, seed=s)) for s in range(10)}
    assert len(draws) > 1
    with pytest.raises(UsageError, match="more than the dataset's 20 items"):
        select_items(items, sample=21, seed=1)
    with pytest.raises(UsageError, match="not both"):
        select_items(items, sample=2, limit=2)


async def test_limit_runs_only_those_items(tmp_path: Path, configured: FakeServer) -> None:
    """``limit=2`` runs the first two items of every configuration."""
    spec = load_experiment(write_experiment(tmp_path, items=5))
    async with await Store.open(str(tmp_path / "t.db")) as store:
        summary = await run_experiment(spec, store=store, limit=2)
        _, samples = await read_experiment(store, summary.experiment_id)
    assert sorted({s.item_id for s in samples}) == ["q0", "q1"]
    assert len(configured.requests) == 2 * 3


async def test_budget_max_calls_stops_new_samples(tmp_path: Path, configured: FakeServer) -> None:
    """With ``max_calls: 5`` and two-call samples, no sample starts that could pass it:
    at most 5 calls reach the server and the summary says the budget stopped the run."""
    grid = [{"models": ["a", "b"]}]
    spec = load_experiment(write_experiment(tmp_path, items=6, grid=grid, budget={"max_calls": 5}))
    async with await Store.open(str(tmp_path / "t.db")) as store:
        summary = await run_experiment(spec, store=store, concurrency=1)
    assert len(configured.requests) == 4 == summary.calls
    assert summary.answered == 2
    assert summary.stopped is not None and "budget" in summary.stopped


async def test_estimate_counts_what_is_left(tmp_path: Path, configured: FakeServer) -> None:
    """The plan counts items x configurations x repeats x models, minus stored samples;
    a judge synthesis adds its call."""
    grid = [{"models": ["a"]}, {"models": ["a", "b"], "synthesis": "judge"}]
    spec = load_experiment(write_experiment(tmp_path, items=3, grid=grid, repeats=2))
    path = str(tmp_path / "t.db")
    plan = await plan_experiment(spec, store=path)
    assert plan.estimate.samples == 12 and plan.estimate.stored == 0
    assert plan.estimate.calls == 3 * 2 * (1 + 3)
    assert plan.estimate.cost_usd is None or plan.estimate.cost_usd >= 0
    await run_experiment(spec, store=path, limit=1)
    again = await plan_experiment(spec, store=path)
    assert again.estimate.stored == 4
    assert again.estimate.calls == 2 * 2 * (1 + 3)


async def test_unknown_model_names_the_file_line_and_field(
    tmp_path: Path, configured: FakeServer
) -> None:
    """A configuration naming an unknown model fails before anything runs, naming the
    experiment file, the line and ``grid.N.models``."""
    path = write_experiment(tmp_path, grid=[{"models": ["a"]}, {"models": ["a", "nope"]}])
    with pytest.raises(SpecErrors) as caught:
        await plan_experiment(load_experiment(path), store=str(tmp_path / "t.db"), source=path)
    (line,) = caught.value.lines()
    assert line.startswith(f"{path}:") and "grid.1.models" in line and "'nope'" in line
    assert not configured.requests


async def test_unknown_experiment_id(tmp_path: Path) -> None:
    """An unknown id is one UnknownExperimentError naming the database."""
    async with await Store.open(str(tmp_path / "t.db")) as store:
        with pytest.raises(UnknownExperimentError, match="no stored experiment matches"):
            await read_experiment(store, "0123456789")


def test_session_for_a_prompt_experiment(tmp_path: Path) -> None:
    """One ``answer`` step asking the configuration's models, the item's fields as
    inputs, the target nowhere; samples: each model as NAME#1..NAME#n."""
    spec = load_experiment(
        write_experiment(tmp_path, grid=[{"models": ["a", "b"], "samples": 2, "mode": "race"}])
    )
    from thinktank.eval.experiment import configurations

    (config,) = configurations(spec)
    item = load_dataset(tmp_path / "data.jsonl")[1]
    session, inputs = session_for(spec, config, item, 2)
    (step,) = session.steps
    assert step.id == "answer" and step.mode == "race"
    assert step.models == ["a#1", "a#2", "b#1", "b#2"]
    assert inputs == {"question": "question number 1?"}
    assert step.prompt == "Answer: {{ inputs.question }}"
    assert TARGET not in session.model_dump_json()
    assert session.name == "exp / c1 / q1 #2"


async def test_samples_are_calls_with_their_own_seeds(
    tmp_path: Path, configured: FakeServer
) -> None:
    """``samples: 3`` asks model a as a#1, a#2, a#3, each call with its own seed; the
    seeds are the same on a fresh experiment (reproducible) and differ per repeat."""
    grid = [{"models": ["a"], "samples": 3, "seed": 5}]
    spec = load_experiment(write_experiment(tmp_path, items=1, grid=grid, repeats=2))
    async with await Store.open(str(tmp_path / "t.db")) as store:
        first = await run_experiment(spec, store=store)
        _, samples = await read_experiment(store, first.experiment_id)
        await run_experiment(spec, store=store, new=True)
    assert sorted(c.model for c in samples[0].calls) == ["a#1", "a#2", "a#3"]
    assert {c.base_model for s in samples for c in s.calls} == {"a"}
    seeds = [r.json["seed"] for r in configured.requests]
    assert len(seeds) == 12
    assert len(set(seeds[:6])) == 6  # three samples x two repeats, all distinct
    assert sorted(seeds[:6]) == sorted(seeds[6:])  # the new experiment sends the same


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    panels=st.lists(
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
        min_size=1,
        max_size=3,
    ),
    items=st.integers(1, 4),
    repeats=st.integers(1, 2),
    failures=st.lists(st.sampled_from(["a", "b", "c"]), max_size=6),
)
def test_random_grids_one_sample_one_session_rerun_free(
    tmp_path_factory: pytest.TempPathFactory,
    configured: FakeServer,
    panels: list[list[str]],
    items: int,
    repeats: int,
    failures: list[str],
) -> None:
    """Random grids, items and model failures: each (configuration, item, repeat) has
    exactly one sample and one session (configurations with the same content share
    theirs), and a rerun makes no call."""
    configured.reset()
    for model in failures:
        configured.add_faults(Fault.http_error(500), model=model)
    tmp = tmp_path_factory.mktemp("grid")
    grid = [{"models": p} for p in panels]
    spec = load_experiment(write_experiment(tmp, items=items, grid=grid, repeats=repeats))

    async def main() -> tuple[int, list[Any], int]:
        async with await Store.open(str(tmp / "t.db")) as store:
            first = await run_experiment(spec, store=store, concurrency=3)
            calls = len(configured.requests)
            second = await run_experiment(spec, store=store, concurrency=3)
            _, samples = await read_experiment(store, first.experiment_id)
            assert second.calls == 0 and second.reused == second.total
            return calls, samples, len(await store.list_sessions())

    calls, samples, sessions = anyio.run(main, backend="asyncio")
    assert len(configured.requests) == calls
    keys = [(s.config_id, s.item_id, s.repeat) for s in samples]
    assert len(keys) == len(set(keys)) == len(panels) * items * repeats
    distinct = len({tuple(p) for p in panels}) * items * repeats
    assert len({s.session_id for s in samples}) == distinct == sessions
    shared = {
        (tuple(p), s.item_id, s.repeat, s.session_id) for p, s in _with_panels(panels, samples)
    }
    assert len(shared) == distinct
    assert all(s.status in ("completed", "partial", "failed") for s in samples)


def _with_panels(panels: list[list[str]], samples: list[Any]) -> list[tuple[list[str], Any]]:
    by_id = {f"c{i + 1}": p for i, p in enumerate(panels)}
    return [(by_id[s.config_id], s) for s in samples]


async def test_session_experiment_scores_the_final_step(
    tmp_path: Path, configured: FakeServer
) -> None:
    """An experiment over a session file: the item's inputs are the session's, every
    step asks the configuration's models, and the final step is the one scored."""
    write_experiment(tmp_path, items=2)
    (tmp_path / "two.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "two",
                "inputs": {"question": {"type": "string"}},
                "steps": [
                    {"id": "draft", "prompt": "draft: {{ inputs.question }}"},
                    {
                        "id": "final",
                        "prompt": "final: {{ steps.draft.output }}",
                        "depends_on": ["draft"],
                    },
                ],
            }
        )
    )
    experiment = yaml.safe_load((tmp_path / "exp.yaml").read_text())
    del experiment["prompt"]
    experiment["session"] = "two.yaml"
    experiment["grid"] = [{"models": ["a"]}, {"models": ["a", "b"]}]
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    spec = load_experiment(tmp_path / "exp.yaml")
    async with await Store.open(str(tmp_path / "t.db")) as store:
        summary = await run_experiment(spec, store=store)
        _, samples = await read_experiment(store, summary.experiment_id)
    assert summary.answered == 4
    assert len(configured.requests) == 2 * 2 + 2 * 4
    for s in samples:
        assert s.answer is not None and s.answer.startswith("echo: final:")
        assert all((c.text or "").startswith("echo: final:") for c in s.calls)
        assert s.calls_made == (2 if s.config_id == "c1" else 4)
    assert not any(TARGET in p for p in prompts(configured))
