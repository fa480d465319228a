"""Schema migrations: named, ordered steps from an empty database to this code's schema.

A database records every migration applied to it in ``thinktank_migrations`` (name,
applied_at). Opening a store applies, in order, the migrations of :data:`MIGRATIONS`
that the database lacks, each in the same transaction as its record, all under one
lock: ``BEGIN IMMEDIATE`` on SQLite (the write lock, taken up front) and a
transaction-scoped advisory lock on PostgreSQL. Several processes opening a fresh
database at once therefore take turns: the first creates the tables, the others find
them there. A database whose record names a migration this code does not know was
written by a newer thinktank, and is refused rather than misread.

Rules for adding one: append a :class:`Migration` with the next number; never change
or reorder one that has shipped (databases in the field have run it as it was); make
it idempotent where that is cheap (``add_columns`` skips columns that exist), since a
database may already have what a migration adds. ``thinktank.store.tables`` holds the
schema the migrations arrive at; a test compares the two.

The migrations:

- ``0001_initial``: the tables of thinktank 0.1 (sessions, steps, calls, call
  attempts, consensus, events). It creates only those missing, so a database made
  before migrations were recorded is adopted as it is.
- ``0002_dynamic_steps_and_leases``: ``thinktank_steps.parent`` and ``.provenance``
  (steps a decompose step adds at run time) and ``thinktank_sessions.lease_owner`` and
  ``.lease_expires_at`` (several workers sharing one database).
- ``0003_session_origin``: ``thinktank_sessions.origin``, what a replay, fork or resume
  was made from.
- ``0004_long_consensus_outcomes``: ``thinktank_consensus.outcome`` becomes TEXT: it
  lists every degraded outcome that applies, which can pass 32 characters.
- ``0005_call_reused_from``: ``thinktank_parallel_executions.reused_from``, the stored
  call whose answer a resumed step served again (that row carries no tokens or cost).
- ``0006_text_repairs``: ``thinktank_sessions.text_repairs``, where text that cannot be
  stored as it was (lone surrogates, NUL) was written with U+FFFD instead.
- ``0007_experiments``: ``thinktank_experiments`` and ``thinktank_experiment_samples``
  (``thinktank eval``: an experiment, and the session answering each item x
  configuration x repeat).
- ``0008_api_keys``: ``thinktank_api_keys`` (``thinktank serve``'s keys, stored hashed,
  with their budgets and per-minute request windows).
- ``0009_session_key_id``: ``thinktank_sessions.key_id``, the id of the API key whose
  request made the session.
- ``0010_session_cancel``: ``thinktank_sessions.cancel_requested_at``, when a server
  process asked the one running the session to cancel it (several servers on one
  database).
- ``0011_reservations``: ``thinktank_reservations`` (one row per budget reservation of
  a request in flight, with when it lapses, so that a killed server's reservations
  come back) and ``thinktank_sessions.request_id`` (the ``X-Request-Id`` of the HTTP
  request that made the session). The keys' ``reserved_micro_usd`` becomes the sum of
  their rows: it is reset to 0, since what it held before has no row to settle it
  (requests of a process that died, whose money was otherwise lost for good).
- ``0012_queued_sessions``: ``thinktank_sessions.queue`` and ``queued_at``: a session
  written before it runs (status ``queued``, no steps yet), on which queue and since
  when (``Store.enqueue_session``); its first event fills the row when a worker runs it.
- ``0013_provider_slots``: ``thinktank_slots`` (one row per call slot of a model limit
  shared across processes, with its holder and when the hold lapses) and
  ``thinktank_limit_windows`` (the current minute of a shared requests-per-minute
  limit).
- ``0014_workers``: ``thinktank_workers``, one row per ``thinktank worker`` process
  (its heartbeat, load and, once it died, which live worker recovers its sessions).
- ``0015_session_status_index``: an index on ``thinktank_sessions (status,
  queued_at)``, for the workers' periodic look for sessions left ``queued`` with
  nothing on the queue (their submitter died between its two writes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    inspect,
    select,
    text,
    true,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable
from sqlmodel import SQLModel

from thinktank.errors import StoreError
from thinktank.store.tables import JSON_TYPE, UTC_DATETIME, MigrationRow

__all__ = [
    "MIGRATIONS",
    "MIGRATIONS_TABLE",
    "Migration",
    "add_columns",
    "api_key_tables",
    "applied_migrations",
    "column_names",
    "experiment_tables",
    "initial_tables",
    "upgrade",
]

MIGRATIONS_TABLE: Table = SQLModel.metadata.tables[MigrationRow.__tablename__]
"""``thinktank_migrations``: the name and time of every migration applied."""

ADVISORY_LOCK_KEY = 0x7468696E6B74616E  # "thinktan"
"""The PostgreSQL advisory lock (``pg_advisory_xact_lock``) migrations run under."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One named schema change."""

    name: str
    """Unique, ordered by its leading number (``0002_...``)."""
    apply: Callable[[Connection], None]
    """Makes the change, inside the caller's transaction."""


def column_names(conn: Connection, table: str) -> set[str]:
    """The names of the columns ``table`` has.

    On SQLite from an empty SELECT, cheaper than reflecting the columns (which parses
    every column's type). Not on PostgreSQL: asyncpg caches the prepared SELECT, which
    fails once an ALTER TABLE has changed the table.
    """
    if conn.dialect.name == "sqlite":
        return set(conn.exec_driver_sql(f"SELECT * FROM {table} WHERE 1 = 0").keys())
    return {column["name"] for column in inspect(conn).get_columns(table)}


def add_columns(conn: Connection, table: str, *columns: Column[Any]) -> None:
    """``ALTER TABLE table ADD COLUMN`` for each of ``columns`` the table lacks."""
    have = column_names(conn, table)
    holder = Table(table, MetaData(), *columns)  # CreateColumn compiles attached columns
    for column in holder.columns:
        if column.name not in have:
            spec = CreateColumn(column).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {spec}")


# -- 0001_initial ----------------------------------------------------------------------
# The schema of thinktank 0.1, frozen here: later changes to ``tables`` must not change
# what this migration creates.


def initial_tables() -> MetaData:
    """The tables as ``0001_initial`` creates them (a fresh MetaData each call)."""
    md = MetaData()

    def session_fk() -> Column[str]:
        return Column(
            "session_id",
            String(36),
            ForeignKey("thinktank_sessions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )

    Table(
        "thinktank_sessions",
        md,
        Column("id", String(36), primary_key=True),
        Column("name", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("parallel_execution_config", JSON_TYPE, nullable=False),
        Column("spec", JSON_TYPE, nullable=False),
        Column("inputs", JSON_TYPE, nullable=False),
        Column("source", Text),
        Column("model_selection", JSON_TYPE, nullable=False),
        Column("error", Text),
        Column("created_at", UTC_DATETIME, nullable=False, index=True),
        Column("started_at", UTC_DATETIME, nullable=False),
        Column("finished_at", UTC_DATETIME),
        Column("wall_ms", Float),
        Column("input_tokens", Integer),
        Column("output_tokens", Integer),
        Column("total_tokens", Integer),
        Column("cost_usd", Float),
        Column("steps_total", Integer, nullable=False),
        Column("steps_completed", Integer, nullable=False),
        Column("steps_failed", Integer, nullable=False),
        Column("steps_skipped", Integer, nullable=False),
    )
    Table(
        "thinktank_steps",
        md,
        Column("id", String(36), primary_key=True),
        session_fk(),
        Column("step_key", String(200), nullable=False),
        Column("position", Integer, nullable=False),
        Column("kind", String(32), nullable=False),
        Column("depends_on", JSON_TYPE, nullable=False),
        Column("models", JSON_TYPE, nullable=False),
        Column("mode", String(32)),
        Column("synthesis", String(64)),
        Column("prompt_template", Text, nullable=False),
        Column("prompt", Text),
        Column("status", String(16), nullable=False),
        Column("output", Text),
        Column("error", Text),
        Column("skip_reason", Text),
        Column("attempts", Integer, nullable=False),
        Column("started_at", UTC_DATETIME),
        Column("completed_at", UTC_DATETIME),
        Column("latency_ms", Float),
        Column("input_tokens", Integer),
        Column("output_tokens", Integer),
        Column("cost_usd", Float),
        Column("consensus_score", Float),
        UniqueConstraint("session_id", "step_key", name="uq_thinktank_steps_session_step"),
    )

    def step_fk() -> Column[str]:
        return Column(
            "step_id",
            String(36),
            ForeignKey("thinktank_steps.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )

    Table(
        "thinktank_parallel_executions",
        md,
        Column("id", String(36), primary_key=True),
        session_fk(),
        step_fk(),
        Column("model_id", String(100), nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("status", String(16), nullable=False),
        Column("started_at", UTC_DATETIME, nullable=False),
        Column("completed_at", UTC_DATETIME),
        Column("response", Text),
        Column("tokens_used", Integer),
        Column("input_tokens", Integer),
        Column("output_tokens", Integer),
        Column("latency_ms", Integer),
        Column("cost_usd", Float),
        Column("finish_reason", String(64)),
        Column("error", Text),
        Column("included_in_consensus", Boolean, nullable=False, server_default=true()),
        Column("tries", Integer, nullable=False),
    )
    Table(
        "thinktank_call_attempts",
        md,
        Column("id", Integer, primary_key=True),
        Column(
            "call_id",
            String(36),
            ForeignKey("thinktank_parallel_executions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        session_fk(),
        Column("number", Integer, nullable=False),
        Column("status", String(16), nullable=False),
        Column("status_code", Integer),
        Column("error", Text),
        Column("started_at", UTC_DATETIME, nullable=False),
        Column("latency_ms", Integer),
        Column("retry_in_s", Float),
    )
    Table(
        "thinktank_consensus",
        md,
        Column("id", String(36), primary_key=True),
        session_fk(),
        step_fk(),
        Column("attempt", Integer),
        Column("method", String(64), nullable=False),
        Column("score", Float, nullable=False),
        Column("threshold", Float, nullable=False),
        Column("reached", Boolean, nullable=False),
        Column("content", Text, nullable=False),
        Column("outcome", String(32), nullable=False),
        Column("clusters", JSON_TYPE, nullable=False),
        Column("included_call_ids", JSON_TYPE, nullable=False),
        Column("created_at", UTC_DATETIME, nullable=False),
        Column("mode", String(16), nullable=False),
        Column("early_termination", Boolean, nullable=False),
        Column("escalation", JSON_TYPE, nullable=False),
        Column("items", JSON_TYPE, nullable=False),
        Column("judge_call_id", String(36)),
        Column("note", Text),
        Column("cached_from", String(36)),
        Column("cache_key", String(80), index=True),
    )
    Table(
        "thinktank_events",
        md,
        Column("id", Integer, primary_key=True),
        session_fk(),
        Column("type", String(32), nullable=False),
        Column("step_key", String(200)),
        Column("at", UTC_DATETIME, nullable=False),
        Column("payload", JSON_TYPE, nullable=False),
    )
    return md


_INITIAL_DDL: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
"""(Dialect, driver) -> (table, its CREATE TABLE and CREATE INDEX statements), in
creation order: ``0001_initial``'s DDL, compiled once per process."""


def _initial_ddl(dialect: Dialect) -> list[tuple[str, list[str]]]:
    key = (dialect.name, dialect.driver)
    ddl = _INITIAL_DDL.get(key)
    if ddl is None:
        ddl = []
        for table in initial_tables().sorted_tables:
            statements = [str(CreateTable(table).compile(dialect=dialect)).strip()]
            statements += [
                str(CreateIndex(index).compile(dialect=dialect)).strip()
                for index in sorted(table.indexes, key=lambda index: str(index.name))
            ]
            ddl.append((table.name, statements))
        _INITIAL_DDL[key] = ddl
    return ddl


def _initial(conn: Connection) -> None:
    # What ``initial_tables().create_all(conn, checkfirst=True)`` does (the tables
    # missing, with their indexes, in dependency order), with the DDL compiled once
    # and one query for the tables there.
    present = set(inspect(conn).get_table_names())
    for name, statements in _initial_ddl(conn.dialect):
        if name not in present:
            for statement in statements:
                conn.exec_driver_sql(statement)


# -- 0002_dynamic_steps_and_leases -----------------------------------------------------


def _dynamic_steps_and_leases(conn: Connection) -> None:
    add_columns(
        conn,
        "thinktank_steps",
        Column("parent", String(200)),
        Column("provenance", JSON_TYPE, nullable=False, server_default=text("'[]'")),
    )
    add_columns(
        conn,
        "thinktank_sessions",
        Column("lease_owner", String(200)),
        Column("lease_expires_at", UTC_DATETIME),
    )


# -- 0003_session_origin -----------------------------------------------------------------


def _session_origin(conn: Connection) -> None:
    # What a replay, fork or resume was made from: {"kind": ..., "session_id": ...}.
    add_columns(conn, "thinktank_sessions", Column("origin", JSON_TYPE))


# -- 0004_long_consensus_outcomes ------------------------------------------------------


def _long_consensus_outcomes(conn: Connection) -> None:
    # "k_of_n,quorum_not_reached,low_consensus" is 39 characters: PostgreSQL refused
    # VARCHAR(32), and with it the whole batch.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE thinktank_consensus ALTER COLUMN outcome TYPE TEXT")
        return
    # SQLite never enforced the length, but keeps the declared type; it cannot alter a
    # column, so the table is rebuilt from its own DDL (SQLite's documented procedure;
    # no table refers to this one).
    table = "thinktank_consensus"
    ddl = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar_one()
    if "outcome VARCHAR(32)" not in ddl:
        return
    indexes = [
        row[0]
        for row in conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
            " AND sql IS NOT NULL",
            (table,),
        )
    ]
    rebuilt = ddl.replace("outcome VARCHAR(32)", "outcome TEXT", 1)
    conn.exec_driver_sql(rebuilt.replace(f"CREATE TABLE {table}", f"CREATE TABLE {table}_new", 1))
    conn.exec_driver_sql(f"INSERT INTO {table}_new SELECT * FROM {table}")
    conn.exec_driver_sql(f"DROP TABLE {table}")
    conn.exec_driver_sql(f"ALTER TABLE {table}_new RENAME TO {table}")
    for index in indexes:
        conn.exec_driver_sql(index)


# -- 0005_call_reused_from ---------------------------------------------------------------


def _call_reused_from(conn: Connection) -> None:
    # A resumed step's answer served from the store points at the call it reuses.
    add_columns(conn, "thinktank_parallel_executions", Column("reused_from", String(36)))


# -- 0006_text_repairs ------------------------------------------------------------------


def _text_repairs(conn: Connection) -> None:
    add_columns(
        conn,
        "thinktank_sessions",
        Column("text_repairs", JSON_TYPE, nullable=False, server_default=text("'[]'")),
    )


# -- 0007_experiments ---------------------------------------------------------------------


def experiment_tables() -> MetaData:
    """The tables as ``0007_experiments`` creates them (a fresh MetaData each call).

    ``thinktank_sessions`` appears with its key only, for the foreign key to resolve;
    it is not created here.
    """
    md = MetaData()
    Table("thinktank_sessions", md, Column("id", String(36), primary_key=True))
    Table(
        "thinktank_experiments",
        md,
        Column("id", String(36), primary_key=True),
        Column("name", Text, nullable=False),
        Column("fingerprint", String(80), nullable=False, index=True),
        Column("spec", JSON_TYPE, nullable=False),
        Column("dataset", Text, nullable=False),
        Column("items", Integer, nullable=False),
        Column("created_at", UTC_DATETIME, nullable=False),
        Column("updated_at", UTC_DATETIME, nullable=False),
    )
    Table(
        "thinktank_experiment_samples",
        md,
        Column("id", Integer, primary_key=True),
        Column(
            "experiment_id",
            String(36),
            ForeignKey("thinktank_experiments.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        Column("config_id", String(100), nullable=False),
        Column("config_key", String(80), nullable=False),
        Column("item_id", Text, nullable=False),
        Column("repeat", Integer, nullable=False),
        Column(
            "session_id",
            String(36),
            ForeignKey("thinktank_sessions.id", ondelete="SET NULL"),
            index=True,
        ),
        Column("targets", JSON_TYPE, nullable=False),
        Column("answer", Text),
        Column("correct", Float),
        Column("created_at", UTC_DATETIME, nullable=False),
        UniqueConstraint(
            "experiment_id",
            "config_key",
            "item_id",
            "repeat",
            name="uq_thinktank_experiment_samples_sample",
        ),
    )
    return md


def _experiments(conn: Connection) -> None:
    present = set(inspect(conn).get_table_names())
    md = experiment_tables()
    for name in ("thinktank_experiments", "thinktank_experiment_samples"):
        if name not in present:
            md.tables[name].create(conn)


# -- 0008_api_keys ------------------------------------------------------------------------


def api_key_tables() -> MetaData:
    """The table as ``0008_api_keys`` creates it (a fresh MetaData each call)."""
    md = MetaData()
    Table(
        "thinktank_api_keys",
        md,
        Column("id", String(36), primary_key=True),
        Column("name", Text, nullable=False),
        Column("prefix", String(16), nullable=False),
        Column("key_hash", String(64), nullable=False, unique=True, index=True),
        Column("created_at", UTC_DATETIME, nullable=False),
        Column("revoked_at", UTC_DATETIME),
        Column("budget_micro_usd", BigInteger),
        Column("spent_micro_usd", BigInteger, nullable=False),
        Column("reserved_micro_usd", BigInteger, nullable=False),
        Column("rpm", Integer),
        Column("window_start", Float),
        Column("window_count", Integer, nullable=False),
    )
    return md


def _api_keys(conn: Connection) -> None:
    if "thinktank_api_keys" not in set(inspect(conn).get_table_names()):
        api_key_tables().tables["thinktank_api_keys"].create(conn)


# -- 0009_session_key_id -----------------------------------------------------------------


def _session_key_id(conn: Connection) -> None:
    add_columns(conn, "thinktank_sessions", Column("key_id", String(36)))


# -- 0010_session_cancel -----------------------------------------------------------------


def _session_cancel(conn: Connection) -> None:
    add_columns(conn, "thinktank_sessions", Column("cancel_requested_at", UTC_DATETIME))


# -- 0011_reservations ------------------------------------------------------------------


def reservation_tables() -> MetaData:
    """The table as ``0011_reservations`` creates it (a fresh MetaData each call, with
    the keys' table of ``0008_api_keys`` that its foreign key names)."""
    md = api_key_tables()
    Table(
        "thinktank_reservations",
        md,
        Column("id", String(36), primary_key=True),
        Column(
            "key_id",
            String(36),
            ForeignKey("thinktank_api_keys.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        Column("micro_usd", BigInteger, nullable=False),
        Column("holder", String(200), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("expires_at", Float, nullable=False, index=True),
    )
    return md


def _reservations(conn: Connection) -> None:
    if "thinktank_reservations" not in set(inspect(conn).get_table_names()):
        reservation_tables().tables["thinktank_reservations"].create(conn)
        conn.execute(text("UPDATE thinktank_api_keys SET reserved_micro_usd = 0"))
    add_columns(conn, "thinktank_sessions", Column("request_id", String(256)))


# -- 0012_queued_sessions --------------------------------------------------------------


def _queued_sessions(conn: Connection) -> None:
    add_columns(
        conn,
        "thinktank_sessions",
        Column("queue", String(100)),
        Column("queued_at", UTC_DATETIME),
    )


# -- 0013_provider_slots ----------------------------------------------------------------


def slot_tables() -> MetaData:
    """The tables as ``0013_provider_slots`` creates them (a fresh MetaData each call)."""
    md = MetaData()
    Table(
        "thinktank_slots",
        md,
        Column("limit_key", String(200), primary_key=True),
        Column("slot", Integer, primary_key=True),
        Column("holder", String(200)),
        Column("expires_at", Float),
    )
    Table(
        "thinktank_limit_windows",
        md,
        Column("limit_key", String(200), primary_key=True),
        Column("window_start", Float),
        Column("window_count", Integer, nullable=False),
    )
    return md


def _provider_slots(conn: Connection) -> None:
    slot_tables().create_all(conn, checkfirst=True)


# -- 0014_workers ----------------------------------------------------------------------


def worker_tables() -> MetaData:
    """The table as ``0014_workers`` creates it (a fresh MetaData each call)."""
    md = MetaData()
    Table(
        "thinktank_workers",
        md,
        Column("executor_id", String(200), primary_key=True),
        Column("name", String(100), nullable=False),
        Column("host", String(200), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("version", String(100), nullable=False),
        Column("concurrency", Integer, nullable=False),
        Column("started_at", Float, nullable=False),
        Column("expires_at", Float, nullable=False, index=True),
        Column("running", Integer, nullable=False),
        Column("finished", Integer, nullable=False),
        Column("draining", Boolean, nullable=False),
        Column("recovered_by", String(200)),
        Column("recovery_expires_at", Float),
    )
    return md


def _workers(conn: Connection) -> None:
    worker_tables().create_all(conn, checkfirst=True)


# -- 0015_session_status_index ---------------------------------------------------------


def _session_status_index(conn: Connection) -> None:
    sessions = Table(
        "thinktank_sessions",
        MetaData(),
        Column("status", String(16)),
        Column("queued_at", UTC_DATETIME),
    )
    index = Index("ix_thinktank_sessions_status_queued_at", sessions.c.status, sessions.c.queued_at)
    index.create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_initial", _initial),
    Migration("0002_dynamic_steps_and_leases", _dynamic_steps_and_leases),
    Migration("0003_session_origin", _session_origin),
    Migration("0004_long_consensus_outcomes", _long_consensus_outcomes),
    Migration("0005_call_reused_from", _call_reused_from),
    Migration("0006_text_repairs", _text_repairs),
    Migration("0007_experiments", _experiments),
    Migration("0008_api_keys", _api_keys),
    Migration("0009_session_key_id", _session_key_id),
    Migration("0010_session_cancel", _session_cancel),
    Migration("0011_reservations", _reservations),
    Migration("0012_queued_sessions", _queued_sessions),
    Migration("0013_provider_slots", _provider_slots),
    Migration("0014_workers", _workers),
    Migration("0015_session_status_index", _session_status_index),
)
"""Every migration this code knows, in the order they apply."""


# -- running them ----------------------------------------------------------------------


def applied_migrations(conn: Connection) -> dict[str, datetime] | None:
    """Name -> time of each migration the database records; None without the table."""
    if not inspect(conn).has_table(MIGRATIONS_TABLE.name):
        return None
    rows = conn.execute(select(MIGRATIONS_TABLE.c.name, MIGRATIONS_TABLE.c.applied_at))
    return {name: at for name, at in rows}


def _check_known(applied: Mapping[str, object], known: Sequence[Migration], shown: str) -> None:
    names = {migration.name for migration in known}
    unknown = sorted(name for name in applied if name not in names)
    if unknown:
        raise StoreError(
            f"database schema is newer than this thinktank: {shown} has migration(s) "
            f"{', '.join(unknown)}, which this version does not know; upgrade thinktank"
        )


def _apply_missing(conn: Connection, migrations: Sequence[Migration], shown: str) -> list[str]:
    """Apply, under the migration lock, every migration the database lacks."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
    MIGRATIONS_TABLE.create(conn, checkfirst=True)
    applied = applied_migrations(conn) or {}
    _check_known(applied, migrations, shown)
    done: list[str] = []
    for migration in migrations:
        if migration.name not in applied:
            migration.apply(conn)
            # Parameters, not values(): the statement compiles once (SQLAlchemy's cache).
            conn.execute(
                insert(MIGRATIONS_TABLE),
                {"name": migration.name, "applied_at": datetime.now(UTC)},
            )
            done.append(migration.name)
    return done


def _current(
    applied: Mapping[str, object] | None, migrations: Sequence[Migration], shown: str
) -> bool:
    """Whether a database with ``applied`` has every one of ``migrations`` (and no other)."""
    if applied is None:
        return False
    _check_known(applied, migrations, shown)
    return all(migration.name in applied for migration in migrations)


def _missing(
    applied: Mapping[str, object] | None, migrations: Sequence[Migration], shown: str
) -> list[str]:
    """The names of ``migrations`` a database with ``applied`` lacks."""
    if applied is None:
        return [migration.name for migration in migrations]
    _check_known(applied, migrations, shown)
    return [migration.name for migration in migrations if migration.name not in applied]


async def upgrade(
    engine: AsyncEngine,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    shown: str = "the database",
    read_options: Mapping[str, object] | None = None,
    apply: bool = True,
) -> list[str]:
    """Bring the database of ``engine`` up to ``migrations``; return the names applied.

    The common case, a database already current, costs one read of the migrations
    table (3-4 ms for a whole ``Store.open`` of a SQLite file), takes no lock and runs
    no DDL. Creating a new database takes its forty-odd statements through the async
    engine (~30-60 ms, once per database).

    Args:
        engine: The database.
        migrations: The migrations to apply, in order (default: all of them).
        shown: How error messages name the database.
        read_options: Execution options that make a connection's transaction read-only
            (the store's deferred ``BEGIN`` on SQLite).
        apply: False to write nothing (a read-only store) and return the names of
            the migrations the database lacks instead.

    Raises:
        StoreError: the database records a migration not in ``migrations``.
    """
    async with engine.connect() as conn:
        if read_options:
            await conn.execution_options(**read_options)
        applied = await conn.run_sync(applied_migrations)
    if _current(applied, migrations, shown):
        return []
    if not apply:
        return _missing(applied, migrations, shown)
    async with engine.begin() as conn:
        return await conn.run_sync(_apply_missing, migrations, shown)
