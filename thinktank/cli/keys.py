"""``thinktank keys``: the API keys of ``thinktank serve`` (create, list, revoke).

This module owns the commands. A key is printed once, when it is made, and stored
only as its hash (:mod:`thinktank.server.keys`); every server on the database sees a
new or revoked key at its next request.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from thinktank.cli._shared import _db_option, _json_option, _run_async

if TYPE_CHECKING:
    from thinktank.store import ApiKey

__all__ = ["keys_group"]


@click.group("keys")
def keys_group() -> None:
    """API keys of `thinktank serve`: create, list, revoke.

    \b
    thinktank keys create --name ci --budget-usd 5 --rpm 60
    thinktank keys list
    thinktank keys revoke <key-id>
    """


@keys_group.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--budget-usd",
    type=click.FloatRange(min=0),
    default=None,
    help="Most the key may spend on model calls in all (default: no budget).",
)
@click.option(
    "--rpm",
    type=click.IntRange(min=1),
    default=None,
    help="Requests per minute the key may make (default: no limit).",
)
@_db_option
def create_command(name: str, budget_usd: float | None, rpm: int | None, db: str | None) -> None:
    """Make a key and print it, ONCE: only its hash is stored.

    The key goes to stdout alone (for `KEY=$(thinktank keys create ...)`), its id to
    stderr.
    """
    from thinktank.server.keys import hash_key, micro_usd, new_key, shown_prefix
    from thinktank.store import Store

    key = new_key()

    async def go() -> str:
        async with await Store.open(db) as store:
            return await store.create_api_key(
                name=name,
                prefix=shown_prefix(key),
                key_hash=hash_key(key),
                budget_micro_usd=None if budget_usd is None else micro_usd(budget_usd),
                rpm=rpm,
            )

    kid = _run_async(go)
    click.echo(f"created API key {kid} ({name}); it is shown once, keep it now:", err=True)
    click.echo(key)


def _row(key: ApiKey) -> dict[str, Any]:
    def usd(micro: int | None) -> float | None:
        return None if micro is None else micro / 1e6

    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
        "revoked_at": None if key.revoked_at is None else key.revoked_at.isoformat(),
        "budget_usd": usd(key.budget_micro_usd),
        "spent_usd": usd(key.spent_micro_usd),
        "reserved_usd": usd(key.reserved_micro_usd),
        "rpm": key.rpm,
    }


@keys_group.command("list")
@_db_option
@_json_option
def list_command(db: str | None, as_json: bool) -> None:
    """Every key: id, name, prefix, created, revoked, budget, spent, rpm (never the key)."""
    from thinktank.store import Store

    async def go() -> list[ApiKey]:
        async with await Store.open(db, read_only=True) as store:
            return await store.api_keys()

    rows = [_row(key) for key in _run_async(go)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no API keys (thinktank keys create --name NAME)", err=True)
        return
    click.echo("id\tname\tprefix\tcreated\trevoked\tbudget_usd\tspent_usd\trpm")
    for row in rows:
        cells = [
            row["id"],
            row["name"],
            row["prefix"] + "...",
            row["created_at"][:19],
            (row["revoked_at"] or "-")[:19],
            "-" if row["budget_usd"] is None else f"{row['budget_usd']:.2f}",
            f"{row['spent_usd']:.6f}",
            "-" if row["rpm"] is None else str(row["rpm"]),
        ]
        click.echo("\t".join(cells))


@keys_group.command("revoke")
@click.argument("key_id")
@_db_option
def revoke_command(key_id: str, db: str | None) -> None:
    """Revoke a key (by id or unique id prefix): every server refuses it from now on."""
    from thinktank.store import Store

    async def go() -> ApiKey:
        async with await Store.open(db, create=False) as store:
            return await store.revoke_api_key(key_id)

    key = _run_async(go)
    click.echo(f"revoked API key {key.id} ({key.name})")
