"""What every ``thinktank`` command shares: exit codes, common options, one-line errors.

Exit codes: 0 success; 1 the run failed, ended partial or the database failed; 2 bad
input (a one-line error per problem, no traceback); 3 ``ask --abstain`` found no
consensus (the answers agreed below the threshold; stored, not a failure); 130
interrupted. Kept apart from
``cli.commands`` so that command modules (``cli.evaluate``) build on it without an
import cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click

from thinktank.errors import NoDatabaseError, SpecErrors, ThinkTankError, UsageError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NO_CONSENSUS",
    "EXIT_OK",
    "T",
]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_CONSENSUS = 3
"""``ask --abstain``: the answers agreed below the threshold, so no answer is given
(the session is stored; a script can tell abstaining from failing)."""
EXIT_INTERRUPTED = 130

_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
_db_option: _Decorator = click.option(
    "--db",
    "db",
    envvar="THINKTANK_DB",
    default=None,
    metavar="URL|PATH",
    help="Database URL or SQLite file (default: $THINKTANK_DB, else ./thinktank.db).",
)
_json_option: _Decorator = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON on stdout."
)
_no_progress_option: _Decorator = click.option(
    "--no-progress", is_flag=True, help="Do not print progress."
)
_concurrency_option: _Decorator = click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Sessions in flight at once.",
)


def _fail(lines: Sequence[str], code: int = EXIT_BAD_INPUT) -> NoReturn:
    for line in lines:
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


def _run_async(fn: Callable[[], Awaitable[T]]) -> T:
    import anyio

    try:
        return anyio.run(fn, backend="asyncio")
    except SpecErrors as exc:
        _fail(exc.lines())
    except NoDatabaseError as exc:
        from thinktank.store import DEFAULT_DB_ENV

        _fail([f"{exc} (--db / ${DEFAULT_DB_ENV})"])
    except UsageError as exc:
        _fail(str(exc).splitlines())
    except ThinkTankError as exc:
        # StoreError too: the database failed under a run (exit 1), the input was fine.
        _fail(str(exc).splitlines(), EXIT_FAILED)
