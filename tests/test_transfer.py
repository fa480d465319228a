"""Export, import and prune."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import thinktank
from thinktank.cli.commands import main
from thinktank.errors import UsageError
from thinktank.transfer import (
    export_session,
    import_session,
    parse_age,
    prune,
    render_export_schema,
)

from .conftest import REPO, SESSIONS


async def test_export_import_round_trip_keeps_every_row(tmp_path: Path) -> None:
    """An imported session is the same session: same ids, rows, and it replays."""
    src, dst = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    result = await thinktank.run(thinktank.load_session(SESSIONS / "research_plan.yaml"), store=src)
    async with await thinktank.Store.open(src) as store:
        exported = await export_session(store, result.session_id)
        original = await store.get_session(result.session_id)
    text = exported.model_dump_json()
    async with await thinktank.Store.open(dst) as store:
        sid = await import_session(store, text)
        copy = await store.get_session(sid)
        with pytest.raises(UsageError, match="already exists"):
            await import_session(store, text)
    assert sid == result.session_id
    assert copy.model_dump() == original.model_dump()
    report = await thinktank.replay(sid, store=dst)
    assert report.matches


async def test_bad_import_is_one_clear_error(tmp_path: Path) -> None:
    """Something that is not an export is refused and nothing is written."""
    async with await thinktank.Store.open(str(tmp_path / "t.db")) as store:
        for bad in ('{"format": "other"}', "not json", '{"format": "thinktank.session/1"}'):
            with pytest.raises(UsageError, match="not a thinktank session export"):
                await import_session(store, bad)
        assert await store.list_sessions() == []


async def test_prune_deletes_old_sessions_with_their_rows(tmp_path: Path) -> None:
    """prune removes sessions older than the age, and every row that belonged to them."""
    db = str(tmp_path / "t.db")
    spec = thinktank.load_session(SESSIONS / "diamond.yaml")
    await thinktank.run(spec, store=db)
    async with await thinktank.Store.open(db) as store:
        assert await prune(store, timedelta(days=1)) == []
        doomed = await prune(store, timedelta(seconds=0), dry_run=True)
        assert len(doomed) == 1 and len(await store.list_sessions()) == 1
        assert await prune(store, timedelta(seconds=0)) == doomed
        counts = await store.count_rows()
    assert all(n == 0 for table, n in counts.items() if table != "thinktank_migrations")


def test_parse_age() -> None:
    """Ages are a number and a unit."""
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("1.5h") == timedelta(minutes=90)
    with pytest.raises(UsageError, match="use a number and one of"):
        parse_age("soon")


def test_cli_export_import_prune(tmp_path: Path) -> None:
    """export > file; import file; prune --older-than."""
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    runner = CliRunner()
    sid = json.loads(
        runner.invoke(main, ["run", str(SESSIONS / "consensus.yaml"), "--db", a, "--json"]).stdout
    )["session_id"]
    exported = runner.invoke(main, ["export", sid[:8], "--db", a])
    assert exported.exit_code == 0
    path = tmp_path / "s.json"
    path.write_text(exported.stdout)
    imported = runner.invoke(main, ["import", str(path), "--db", b])
    assert imported.exit_code == 0 and sid in imported.stdout
    again = runner.invoke(main, ["import", str(path), "--db", b])
    assert again.exit_code == 2 and "already exists" in again.stderr
    pruned = runner.invoke(main, ["prune", "--older-than", "0s", "--db", b])
    assert pruned.exit_code == 0 and "deleted 1 session" in pruned.stdout
    bad = runner.invoke(main, ["prune", "--older-than", "yesterday", "--db", b])
    assert bad.exit_code == 2


def test_export_schema_is_current() -> None:
    """schemas/export.schema.json matches the export model."""
    committed = (REPO / "schemas" / "export.schema.json").read_text(encoding="utf-8")
    assert committed == render_export_schema(), (
        "run `thinktank schema --kind export -o schemas/export.schema.json`"
    )
