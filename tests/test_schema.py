"""schemas/ is generated from spec.py and must be current."""

from __future__ import annotations

import json

from thinktank.session.schema import render_session_schema

from .conftest import REPO


def test_session_schema_is_current() -> None:
    """The committed schema equals the one the models generate (run `thinktank schema`)."""
    committed = (REPO / "schemas" / "session.schema.json").read_text(encoding="utf-8")
    assert committed == render_session_schema(), (
        "schemas/session.schema.json is stale: "
        "run `thinktank schema -o schemas/session.schema.json`"
    )


def test_schema_describes_the_contract() -> None:
    """The schema has the spec's config blocks and step fields."""
    schema = json.loads(render_session_schema())
    assert {"parallel_execution", "model_selection", "steps", "inputs"} <= set(schema["properties"])
    step = schema["$defs"]["StepSpec"]["properties"]
    assert {"id", "prompt", "depends_on", "model", "models", "mode", "synthesis"} <= set(step)
