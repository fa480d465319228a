"""``thinktank show``: how a stored session is drawn."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from thinktank.cli.commands import main

from .conftest import SESSIONS


def _layers(show_output: str) -> list[list[str]]:
    """The step names of each ``layer N:`` line of ``show``, in order."""
    layers = []
    for match in re.finditer(r"^  layer (\d+): (.*)$", show_output, re.M):
        assert int(match.group(1)) == len(layers) + 1
        layers.append([part.split(" <- ")[0] for part in match.group(2).split("; ")])
    return layers


def test_show_draws_a_decompose_session_in_the_order_it_ran(tmp_path: Path) -> None:
    """Steps added at run time sit between the decompose step and its dependents: the
    synthesis comes after every sub-step, and ``brief`` (which waited for it) last."""
    db = str(tmp_path / "tt.db")
    runner = CliRunner()
    ran = runner.invoke(
        main,
        ["run", str(SESSIONS / "research_plan.yaml"), "--db", db, "--no-progress", "--json"],
        catch_exceptions=False,
    )
    assert ran.exit_code == 0, ran.stderr
    result = json.loads(ran.stdout)
    shown = runner.invoke(main, ["show", result["session_id"], "--db", db])
    assert shown.exit_code == 0, shown.stderr

    layers = _layers(shown.stdout)
    layer_of = {step: i for i, layer in enumerate(layers) for step in layer}
    subs = [s for s in result["steps"] if s.startswith("research-") and s != "research-synthesis"]
    assert len(subs) >= 2
    assert set(layer_of) == set(result["steps"])
    assert layers[0] == ["research"]
    assert all(layer_of[s] < layer_of["research-synthesis"] for s in subs)
    assert layers[-1] == ["brief"]
    assert "brief <- research, research-synthesis" in shown.stdout
