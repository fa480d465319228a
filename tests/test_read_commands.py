"""Commands that read stored sessions: they never create a database, never write one,
and say which database they searched."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from thinktank.cli.commands import main
from thinktank.errors import NoDatabaseError
from thinktank.store import Store

from .conftest import SESSIONS

READ_COMMANDS = [
    ["sessions"],
    ["show", "abcd1234"],
    ["export", "abcd1234"],
    ["resume", "abcd1234", "--no-progress"],
    ["replay", "abcd1234"],
    ["fork", "abcd1234", "--step", "plan", "--prompt", "x", "--no-progress"],
    ["prune", "--older-than", "30d"],
]


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def stored_db(tmp_path: Path) -> Path:
    """A database holding one completed diamond session."""
    db = tmp_path / "runs.db"
    code, _, _ = invoke("run", str(SESSIONS / "diamond.yaml"), "--db", str(db), "--no-progress")
    assert code == 0
    return db


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_a_mistyped_db_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    """A read command on a missing --db exits 2 with one line naming it; no file appears."""
    missing = tmp_path / "tpyo.db"
    code, _, err = invoke(*command, "--db", str(missing))
    assert code == 2
    assert err.strip() == f"error: no database at {missing} (--db / $THINKTANK_DB)"
    assert os.listdir(tmp_path) == []


def test_the_default_database_is_not_created_by_sessions(tmp_path: Path) -> None:
    """Without --db, `sessions` in an empty directory creates no ./thinktank.db."""
    code, _, err = invoke("sessions")
    assert code == 2
    assert f"no database at {tmp_path / 'thinktank.db'}" in err
    assert not (tmp_path / "thinktank.db").exists()


def test_thinktank_db_variable_is_named_when_missing(tmp_path: Path) -> None:
    """A mistyped $THINKTANK_DB is reported like --db, and not created."""
    missing = tmp_path / "nope.db"
    code, _, err = invoke("show", "abcd", env={"THINKTANK_DB": str(missing)})
    assert code == 2 and f"no database at {missing}" in err
    assert not missing.exists()


def test_no_session_matches_names_the_database(stored_db: Path) -> None:
    """'no session matches' says which database was searched."""
    for command in (["show", "ffffffff"], ["export", "ffffffff"], ["resume", "ffffffff"]):
        code, _, err = invoke(*command, "--db", str(stored_db))
        assert code == 2, command
        assert f"in {stored_db}" in err, command
        assert len(err.strip().splitlines()) == 1


def test_read_commands_never_write_the_file(stored_db: Path) -> None:
    """sessions, show and export leave the database file's bytes and mtime as they were."""
    # Checkpoint the WAL so every byte is in the main file, then compare after reading.
    with sqlite3.connect(stored_db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = stored_db.read_bytes(), stored_db.stat().st_mtime_ns
    code, out, _ = invoke("sessions", "--db", str(stored_db), "--json")
    assert code == 0 and "diamond" in out
    session_id = out.split('"id": "')[1][:8]
    assert invoke("show", session_id, "--db", str(stored_db))[0] == 0
    assert invoke("export", session_id, "--db", str(stored_db))[0] == 0
    assert (stored_db.read_bytes(), stored_db.stat().st_mtime_ns) == before


async def test_a_read_only_store_reads_and_refuses_writes(stored_db: Path) -> None:
    """Store.open(read_only=True) lists and shows sessions; any write fails, cleanly."""
    async with await Store.open(str(stored_db), read_only=True) as store:
        (summary,) = await store.list_sessions()
        session = await store.get_session(summary.id)
        assert session.status == "completed"
        with pytest.raises(Exception, match=r"readonly|read-only"):
            await store.delete_sessions([summary.id])
    async with await Store.open(str(stored_db)) as store:
        assert len(await store.list_sessions()) == 1


async def test_read_only_and_no_create_never_make_a_file(tmp_path: Path) -> None:
    """Library callers get NoDatabaseError, and no file, for a missing database."""
    for options in ({"read_only": True}, {"create": False}):
        with pytest.raises(NoDatabaseError, match="no database at"):
            await Store.open(str(tmp_path / "x.db"), **options)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
