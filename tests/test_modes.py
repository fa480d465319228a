"""Multi-model steps end to end: modes, merge methods, degraded outcomes, cache, ask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.session.loading import parse_session


def sim(reply: str, ms: float = 0, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "simulated",
        "default_reply": reply,
        "latency": {"kind": "fixed", "ms": ms},
        **extra,
    }


def one_step(models: dict[str, Any], **step: Any) -> thinktank.SessionSpec:
    names = [n for n in models if n not in step.get("extra", [])]
    step.pop("extra", None)
    return parse_session(
        {
            "name": "modes",
            "models": models,
            "steps": [{"id": "q", "prompt": "capital of France?", "models": names, **step}],
        }
    )


async def run_stored(spec: thinktank.SessionSpec, db: Path) -> tuple[Any, Any]:
    result = await thinktank.run(spec, store=str(db))
    async with await thinktank.Store.open(str(db)) as store:
        stored = await store.get_session(result.session_id)
    return result, stored


async def test_quorum_stops_at_agreement_and_records_the_cancelled_call(tmp_path: Path) -> None:
    """Two fast agreeing models complete the quorum; the slow one is cancelled, recorded."""
    spec = one_step(
        {"a": sim("Paris", 5), "b": sim("paris.", 30), "slow": sim("Paris", 60_000)},
        mode="quorum",
        min_models=2,
    )
    with anyio.fail_after(10):
        result, stored = await run_stored(spec, tmp_path / "t.db")
    step = result.steps["q"]
    assert step.output == "Paris" and step.consensus.early_termination
    statuses = {c.model_id: c.status for c in stored.steps[0].calls}
    assert statuses == {"a": "ok", "b": "ok", "slow": "cancelled"}
    assert stored.steps[0].consensus.mode == "quorum"


async def test_quorum_without_agreement_returns_everything_flagged(tmp_path: Path) -> None:
    """No two agree: quorum returns after every model, outcome quorum_not_reached."""
    spec = one_step({"a": sim("1"), "b": sim("2"), "c": sim("3")}, mode="quorum")
    result, _ = await run_stored(spec, tmp_path / "t.db")
    consensus = result.steps["q"].consensus
    assert not consensus.early_termination
    assert "quorum_not_reached" in consensus.outcome and "low_consensus" in consensus.outcome
    assert result.steps["q"].status == "completed"


async def test_race_takes_the_first_answer(tmp_path: Path) -> None:
    """race: the fastest model's answer, the others cancelled."""
    spec = one_step({"slow": sim("Lyon", 60_000), "fast": sim("Paris", 1)}, mode="race")
    with anyio.fail_after(10):
        result, stored = await run_stored(spec, tmp_path / "t.db")
    assert result.steps["q"].output == "Paris"
    assert {c.model_id: c.status for c in stored.steps[0].calls} == {
        "fast": "ok",
        "slow": "cancelled",
    }


async def test_cascade_asks_dear_models_only_on_disagreement(tmp_path: Path) -> None:
    """Cheap models that agree stop the cascade; when they disagree the next one is asked."""
    prices = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0}
    dear = {"input_cost_per_mtok": 50.0, "output_cost_per_mtok": 50.0}
    agree = one_step(
        {"dear": sim("Paris", **dear), "c1": sim("Paris", **prices), "c2": sim("paris", **prices)},
        mode="cascade",
    )
    result, stored = await run_stored(agree, tmp_path / "a.db")
    assert {c.model_id for c in stored.steps[0].calls} == {"c1", "c2"}
    assert result.steps["q"].consensus.escalation == [["c1", "c2"]]
    disagree = one_step(
        {"dear": sim("Paris", **dear), "c1": sim("Paris", **prices), "c2": sim("Lyon", **prices)},
        mode="cascade",
    )
    result, stored = await run_stored(disagree, tmp_path / "b.db")
    assert {c.model_id for c in stored.steps[0].calls} == {"c1", "c2", "dear"}
    assert result.steps["q"].consensus.escalation == [["c1", "c2"], ["dear"]]
    assert result.steps["q"].output == "Paris"  # the cheap answer counts in the merge


async def test_judge_merges_and_falls_back_when_it_fails(tmp_path: Path) -> None:
    """A judge's answer is the output (its call recorded); a failed judge falls back."""
    models = {
        "a": sim("Paris"),
        "b": sim("Paris, France"),
        "judge": sim("Paris (merged)"),
        "broken": sim("x", failure_rate=1.0),
    }
    ok = one_step(models, synthesis="judge", synthesizer="judge", extra=["judge", "broken"])
    result, stored = await run_stored(ok, tmp_path / "a.db")
    consensus = result.steps["q"].consensus
    assert result.steps["q"].output == "Paris (merged)" and consensus.method == "judge"
    judge_calls = [c for c in stored.steps[0].calls if c.model_id == "judge"]
    assert len(judge_calls) == 1 and consensus.judge_call_id == judge_calls[0].id
    failed = one_step(
        models,
        synthesis="judge",
        synthesizer="broken",
        judge_fallback="medoid",
        extra=["judge", "broken"],
    )
    result, _ = await run_stored(failed, tmp_path / "b.db")
    consensus = result.steps["q"].consensus
    assert "judge_failed" in consensus.outcome and consensus.method == "medoid"
    assert "used medoid" in (consensus.note or "")


async def test_union_credits_each_finding_to_its_models(tmp_path: Path) -> None:
    """union merges list items and says which models found each."""
    models = {
        "a": sim("- SQL injection in login()\n- missing timeout on requests.get"),
        "b": sim("1. SQL injection in login()\n2. unbounded cache growth"),
        "c": sim("* missing timeout on requests.get"),
    }
    spec = one_step(models, synthesis="union")
    result, stored = await run_stored(spec, tmp_path / "t.db")
    items = {i["text"]: set(i["models"]) for i in result.steps["q"].consensus.items}
    assert items["SQL injection in login()"] == {"a", "b"}
    assert any({"a", "c"} == v for v in items.values())
    assert len(items) == 3
    assert stored.steps[0].consensus.items


async def test_k_of_n_and_escalation_are_recorded(tmp_path: Path) -> None:
    """A failed model gives k_of_n; low agreement escalates to the extra model."""
    models = {
        "a": sim("1"),
        "b": sim("2"),
        "down": sim("x", failure_rate=1.0),
        "tiebreak": sim("1"),
    }
    spec = one_step(
        models, on_low_consensus="escalate", escalate_to=["tiebreak"], extra=["tiebreak"]
    )
    result, _ = await run_stored(spec, tmp_path / "t.db")
    consensus = result.steps["q"].consensus
    assert "k_of_n" in consensus.outcome and "escalated" in consensus.outcome
    assert consensus.escalation == [["a", "b", "down"], ["tiebreak"]]
    assert result.steps["q"].output == "1"
    assert "3 of 4 models answered" in (consensus.note or "")


async def test_consensus_cache_hits_and_opt_outs(tmp_path: Path) -> None:
    """A repeat of the same step is served from the store with no call; opt-outs call."""
    db = tmp_path / "t.db"
    models = {"a": sim("Paris"), "b": sim("Paris")}
    first, _ = await run_stored(one_step(models), db)
    again, stored = await run_stored(one_step(models), db)
    assert again.steps["q"].calls == [] and stored.steps[0].calls == []
    assert again.steps["q"].consensus.cached_from is not None
    assert again.steps["q"].output == first.steps["q"].output
    no_step_cache, _ = await run_stored(one_step(models, cache=False), db)
    assert len(no_step_cache.steps["q"].calls) == 2
    session_off = parse_session(
        {
            "name": "modes",
            "models": models,
            "parallel_execution": {"cache": False},
            "steps": [{"id": "q", "prompt": "capital of France?", "models": ["a", "b"]}],
        }
    )
    result, _ = await run_stored(session_off, db)
    assert len(result.steps["q"].calls) == 2
    other_prompt, _ = await run_stored(
        parse_session(
            {
                "name": "modes",
                "models": models,
                "steps": [{"id": "q", "prompt": "capital of Spain?", "models": ["a", "b"]}],
            }
        ),
        db,
    )
    assert len(other_prompt.steps["q"].calls) == 2


async def test_execute_parallel_api(tmp_path: Path) -> None:
    """execute_parallel returns the spec's shape and records a one-step session."""
    (tmp_path / "thinktank.toml").write_text(
        '[models.a]\nprovider = "simulated"\ndefault_reply = "Paris"\n'
        '[models.b]\nprovider = "simulated"\ndefault_reply = "The answer is Paris."\n'
        '[models.c]\nprovider = "simulated"\ndefault_reply = "Lyon"\n'
    )
    result = await thinktank.execute_parallel(
        "What is the capital of {{France}}?",
        thinktank.ParallelExecutionConfig(
            mode="quorum", models=["a", "b", "c"], consensus_threshold=0.6
        ),
        store=str(tmp_path / "t.db"),
    )
    assert result.object == "parallel.completion"
    assert result.synthesis is not None and result.synthesis.content == "Paris"
    assert len(result.responses) >= 2 and {r.model for r in result.responses} <= {"a", "b", "c"}
    assert result.usage.total_tokens is not None
    async with await thinktank.Store.open(str(tmp_path / "t.db")) as store:
        stored = await store.get_session(result.id)
    assert stored.inputs == {"prompt": "What is the capital of {{France}}?"}


def test_ask_command(tmp_path: Path) -> None:
    """thinktank ask prints the merged answer, or JSON, and records the session."""
    (tmp_path / "thinktank.toml").write_text(
        '[models.a]\nprovider = "simulated"\ndefault_reply = "42"\n'
        '[models.b]\nprovider = "simulated"\ndefault_reply = "forty-two"\n'
    )
    db = str(tmp_path / "t.db")
    runner = CliRunner()
    out = runner.invoke(main, ["ask", "6 x 7?", "-m", "a", "-m", "b", "--db", db])
    assert out.exit_code == 0, out.stderr
    assert "consensus 1.00" in out.stdout
    out = runner.invoke(
        main, ["ask", "6 x 7?", "-m", "a", "-m", "b", "--mode", "race", "--json", "--db", db]
    )
    data = json.loads(out.stdout)
    assert data["mode"] == "race" and data["synthesis"]["content"] in ("42", "forty-two")
    shown = runner.invoke(main, ["show", data["id"], "--db", db])
    assert shown.exit_code == 0 and "race" in shown.stdout
    bad = runner.invoke(main, ["ask", "q", "--db", db])
    assert bad.exit_code == 2 and "give 'models'" in bad.stderr


async def test_automatic_selection_picks_by_tags_and_diversity(tmp_path: Path) -> None:
    """modelSelection.automatic picks tagged, usable, diverse models; reasons are stored."""
    (tmp_path / "thinktank.toml").write_text(
        '[models.coder]\nprovider = "simulated"\ntags = ["code"]\n'
        "input_cost_per_mtok = 1.0\noutput_cost_per_mtok = 1.0\n"
        '[models.writer]\nprovider = "simulated"\ntags = ["prose"]\n'
        "input_cost_per_mtok = 1.0\noutput_cost_per_mtok = 1.0\n"
        '[models.auditor]\nprovider = "simulated"\ntags = ["code", "security"]\n'
        "input_cost_per_mtok = 2.0\noutput_cost_per_mtok = 2.0\n"
        '[models.pricey]\nprovider = "simulated"\ntags = ["code", "security"]\n'
        "input_cost_per_mtok = 100.0\noutput_cost_per_mtok = 100.0\n"
        '[models.gpt]\nprovider = "openai"\nmodel = "gpt-4o"\ntags = ["code"]\n'
    )
    spec = parse_session(
        {
            "name": "auto",
            "model_selection": {
                "automatic": True,
                "domain_hint": "code, security",
                "count": 2,
                "max_cost_per_mtok": 10,
            },
            "steps": [{"id": "review", "prompt": "review this"}],
        }
    )
    result, stored = await run_stored(spec, tmp_path / "t.db")
    assert result.steps["review"].models == ["auditor", "coder"]
    assert set(stored.model_selection) == {"auditor", "coder"}
    assert "code, security match" in stored.model_selection["auditor"]
    args = ["show", result.session_id, "--db", str(tmp_path / "t.db")]
    shown = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(main, args))
    assert "models selected automatically" in shown.stdout
