"""Budgets: no new call starts past them; the session ends partial, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.errors import SpecErrors
from thinktank.session.loading import parse_session

PRICE = {"input_cost_per_mtok": 1000.0, "output_cost_per_mtok": 1000.0}


def priced_session(n: int, concurrency: int = 3, **budget: float) -> thinktank.SessionSpec:
    return parse_session(
        {
            "name": "budget",
            "models": {
                "m": {
                    "provider": "simulated",
                    "default_reply": "x" * 40,
                    "latency": {"kind": "uniform", "low_ms": 1, "high_ms": 5},
                    **PRICE,
                }
            },
            "parallel_execution": {"max_concurrent_steps": concurrency},
            "budget": budget,
            "steps": [
                {"id": f"s{i}", "prompt": f"question {i:03d}", "model": "m", "max_tokens": 10}
                for i in range(n)
            ],
        }
    )


@pytest.mark.parametrize("concurrency", [1, 3, 10])
async def test_cost_budget_stops_within_one_call(concurrency: int) -> None:
    """Spend stays under the budget and stops less than one call's cost short of it,
    however many calls are in flight (a call that fits once they settle waits)."""
    one = (4 + 10) * 2000.0 / 1e6  # estimate of one call: ~4 input + 10 output tokens
    budget = one * 4.5
    spec = priced_session(20, concurrency, max_cost_usd=budget)
    result = await thinktank.run(spec, store=None)
    spent = result.usage.total_cost_usd
    assert spent is not None and spent <= budget
    real_call = max(s.usage.total_cost_usd or 0 for s in result.steps.values())
    assert budget - spent < one + real_call
    assert result.status == "partial"
    assert result.error is not None and result.error.startswith("budget exhausted: $")
    skipped = [s for s in result.steps.values() if s.status == "skipped"]
    assert skipped and all(s.skip_reason and "budget exhausted" in s.skip_reason for s in skipped)


async def test_token_budget() -> None:
    """A token budget stops the session the same way, without needing prices."""
    spec = parse_session(
        {
            "name": "tokens",
            "models": {"m": {"provider": "simulated", "default_reply": "y" * 40}},
            "budget": {"max_tokens": 60},
            "steps": [
                {"id": f"s{i}", "prompt": "q", "model": "m", "max_tokens": 10} for i in range(10)
            ],
        }
    )
    result = await thinktank.run(spec, store=None)
    assert result.status == "partial"
    assert (result.usage.total_tokens or 0) <= 60
    assert "tokens used" in (result.error or "")


async def test_cost_budget_needs_prices() -> None:
    """A cost budget over a model with no price is refused before any call."""
    spec = parse_session(
        {
            "name": "nop",
            "models": {"m": {"provider": "simulated"}},
            "steps": [{"id": "a", "prompt": "p", "model": "m"}],
        }
    )
    with pytest.raises(SpecErrors, match="a cost budget needs a price for every model; 'm'"):
        await thinktank.run(spec, store=None, max_cost_usd=1.0)


def test_cli_max_cost(tmp_path: Path) -> None:
    """--max-cost ends the run partial (exit 1) and says why."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: c\nmodels:\n  m: {provider: simulated, input_cost_per_mtok: 1000, "
        "output_cost_per_mtok: 1000}\nsteps:\n"
        + "".join(f"  - {{id: s{i}, model: m, prompt: q{i}, max_tokens: 10}}\n" for i in range(20))
    )
    out = CliRunner().invoke(
        main,
        ["run", str(path), "--max-cost", "0.05", "--db", str(tmp_path / "t.db"), "--no-progress"],
    )
    assert out.exit_code == 1
    assert "budget exhausted" in out.stdout


async def test_a_session_run_under_a_cost_budget_replays(tmp_path: Path) -> None:
    """Replay of a budgeted session prices its recorded models as declared: no error."""
    db = str(tmp_path / "t.db")
    result = await thinktank.run(priced_session(4), store=db, max_cost_usd=10.0)
    assert result.status == "completed"
    report = await thinktank.replay(result.session_id, store=db)
    assert report.matches, report.diffs
