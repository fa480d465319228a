"""The ``thinktank`` command: a thin layer over the library.

Exit codes: 0 the session completed; 1 it failed, ended partial or was interrupted;
2 bad input (a one-line error per problem, no traceback, nothing written).
Progress goes to stderr (a live table on a terminal, plain lines when piped), results
to stdout, so ``--json`` output can be piped straight into ``jq``.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from thinktank._text import clean_text, read_utf8
from thinktank.cli._shared import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_CONSENSUS,
    EXIT_OK,
    T,
    _concurrency_option,
    _db_option,
    _fail,
    _json_option,
    _no_progress_option,
    _run_async,
)
from thinktank.cli.evaluate import eval_group
from thinktank.cli.keys import keys_group
from thinktank.cli.queue import (
    check_pool,
    refuse_with_queue,
    run_many_queued,
    run_queued_session,
)
from thinktank.cli.serve import serve_command
from thinktank.cli.worker import worker_command, workers_command
from thinktank.errors import (
    InputError,
    SpecErrors,
    UnknownSessionError,
    UsageError,
)
from thinktank.providers.base import MAX_SEED

if TYPE_CHECKING:
    from thinktank.ask import ParallelResult
    from thinktank.batch import BatchItem, BatchResult
    from thinktank.cli.progress import Progress
    from thinktank.engine.result import SessionResult
    from thinktank.providers.registry import ModelRegistry
    from thinktank.replay import ReplayReport
    from thinktank.session.spec import SessionSpec

# Each command imports what it needs inside its body: ``thinktank --help`` and
# ``validate`` then start without loading the store, SQLAlchemy, the HTTP client or
# rich (see bench/startup.py).

__all__ = ["main"]

_model_option = click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    metavar="NAME",
    help="Run every step on this model instead of the file's (e.g. local, "
    "openai/gpt-4o-mini); repeat to ask several at once in every step.",
)


_queue_option = click.option(
    "--queue",
    is_flag=True,
    help="Hand the session(s) to the pool of `thinktank worker` processes on --db "
    '(pip install "thinktank[distributed]") instead of running them here.',
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="thinktank")
def main() -> None:
    """Run reasoning sessions - DAGs of LLM steps - on several models at once.

    \b
    thinktank validate sessions/diamond.yaml     check a session file
    thinktank run sessions/diamond.yaml          run it (live progress, then a table)
    thinktank sessions                           list stored sessions
    thinktank show <session-id>                  one session: DAG, steps, calls, consensus
    """
    # A model's reply may hold lone surrogates (a bad JSON escape), which the store
    # keeps as U+FFFD but the run's result still holds: print "?" there, not a crash.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")


def _parse_inputs(pairs: Sequence[str], inputs_file: str | None) -> dict[str, Any]:
    from thinktank._safeload import LoadError, load_yaml

    values: dict[str, Any] = {}
    if inputs_file is not None:
        try:
            data = load_yaml(read_utf8(inputs_file))
        except OSError as exc:
            _fail([f"{inputs_file}: cannot read inputs file: {exc.strerror}"])
        except LoadError as exc:
            where = f"{inputs_file}:{exc.line}" if exc.line is not None else inputs_file
            _fail([f"{where}: {exc.message}"])
        except ValueError as exc:  # not UTF-8 (read_utf8 names the line and byte)
            _fail([f"{inputs_file}: {exc}"])
        if not isinstance(data, dict):
            _fail([f"{inputs_file}: an inputs file must hold a mapping of input names"])
        values.update(data)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail([f"--input {pair!r}: expected NAME=VALUE"])
        clean = clean_text(value)
        if clean is not value:
            # The shell passed bytes that are not UTF-8 (Python keeps them as lone
            # surrogates): no provider or database takes those, so say what is sent.
            click.echo(
                f"warning: --input {name}: not valid UTF-8; sent and stored as {clean!r}",
                err=True,
            )
        values[name] = clean
    return values


@main.command("run")
@click.argument("session_file", type=click.Path(dir_okay=False))
@_db_option
@click.option(
    "--input",
    "-i",
    "input_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A session input (repeatable); parsed by the input's declared type.",
)
@click.option(
    "--inputs-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A YAML/JSON mapping of input values.",
)
@_model_option
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    default=None,
    metavar="USD",
    help="Start no call past this spend; the session ends partial.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Start no call past this many tokens (input + output).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the DAG, the calls it would make and a cost estimate; call nothing.",
)
@_queue_option
@click.option(
    "--no-wait",
    is_flag=True,
    help="With --queue: print the session id on stdout and exit at once.",
)
@_json_option
@_no_progress_option
def run_command(
    session_file: str,
    db: str | None,
    input_pairs: tuple[str, ...],
    inputs_file: str | None,
    models: tuple[str, ...],
    max_cost: float | None,
    max_tokens: int | None,
    dry_run: bool,
    queue: bool,
    no_wait: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run SESSION_FILE and record it in the database.

    With --queue a `thinktank worker` of the database runs it: the command waits and
    prints the result as a local run does (Ctrl-C stops the waiting, not the session).
    """
    from thinktank.cli.progress import Progress
    from thinktank.cli.render import print_dry_run
    from thinktank.dryrun import dry_run as plan_dry_run
    from thinktank.engine.runner import DEFAULT_STORE, with_budget
    from thinktank.engine.stream import iter as stream_run
    from thinktank.session.spec import validate_inputs

    if no_wait and not queue:
        _fail(["--no-wait needs --queue"])
    if queue:
        check_pool(db)
    try:
        spec = _load(session_file, models)
    except SpecErrors as exc:
        _fail(exc.lines())
    file_values = _parse_inputs((), inputs_file)
    text_values = _parse_inputs(input_pairs, None)
    try:
        # Command-line values are text, parsed by declared type; file values are typed.
        values = validate_inputs(spec, text_values, from_text=True) if text_values else {}
        merged = {**file_values, **{k: values[k] for k in text_values}}
        values = validate_inputs(spec, merged)
    except InputError as exc:
        _fail([f"{session_file}: {line}" for line in str(exc).splitlines()])
    if dry_run:
        try:
            plan = plan_dry_run(spec, inputs=values)
        except SpecErrors as exc:
            _fail(exc.lines())
        if as_json:
            click.echo(plan.model_dump_json(indent=2))
        else:
            print_dry_run(plan)
        sys.exit(EXIT_OK)
    if queue:
        # The limits travel in the stored spec: the worker keeps them as a local run does.
        queued = run_queued_session(
            with_budget(spec, max_cost_usd=max_cost, max_tokens=max_tokens),
            values,
            db=db,
            source=session_file,
            no_wait=no_wait,
            progress=not no_progress,
        )
        if queued is None:
            sys.exit(EXIT_OK)
        _finish_run(queued, as_json)
    progress = Progress(enabled=not no_progress)

    async def go() -> SessionResult:
        with progress:
            async with stream_run(
                spec,
                inputs=values,
                store=db if db is not None else DEFAULT_STORE,
                source=session_file,
                max_cost_usd=max_cost,
                max_tokens=max_tokens,
                on_delta=progress.delta,
            ) as session:
                async for event in session:
                    progress(event)
            return session.result

    _finish_run(_run_interruptible(go, progress), as_json)


def _run_interruptible(fn: Callable[[], Awaitable[T]], progress: Progress) -> T:
    """``_run_async``; on Ctrl-C, say what became of the steps and exit 130."""
    try:
        return _run_async(fn)
    except KeyboardInterrupt:
        sid = progress.session_id or "?"
        click.echo(
            f"interrupted: session {sid}: {progress.summary()}"
            f" (completed steps are kept: thinktank resume {sid})",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)


def _load(session_file: str, models: Sequence[str]) -> SessionSpec:
    """The session file, with every model choice replaced by ``models`` when given
    (``--model``; the rule is ``SessionSpec.with_model``'s).

    Raises:
        SpecErrors: the file is invalid, or a model cannot be used.
    """
    from thinktank.session.loading import load_session

    return load_session(session_file, model=models or None)


def _registry(spec: SessionSpec | None = None) -> ModelRegistry:
    from thinktank.providers.config import load_config
    from thinktank.providers.registry import ModelRegistry

    return ModelRegistry(
        session_models=spec.models if spec is not None else {}, config=load_config()
    )


@main.command("models")
@click.option(
    "--session",
    "session_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also list the models a session file declares.",
)
@_json_option
def models_command(session_file: str | None, as_json: bool) -> None:
    """List the models you can use: provider, base URL, price, key present (never the key)."""
    from thinktank.cli.render import print_models
    from thinktank.session.loading import load_session

    try:
        spec = load_session(session_file) if session_file is not None else None
        registry = _registry(spec)
    except SpecErrors as exc:
        _fail(exc.lines())
    infos = registry.describe()
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
    else:
        print_models(infos, config_path=registry.config.path)


@main.command("ask")
@click.argument("prompt")
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    metavar="NAME",
    help="A model to ask (repeat for several).",
)
@click.option(
    "--mode",
    type=click.Choice(["all", "race", "quorum", "cascade"]),
    default="all",
    show_default=True,
)
@click.option(
    "--synthesis",
    type=click.Choice(["majority", "medoid", "weighted_merge", "judge", "union"]),
    default="majority",
    show_default=True,
)
@click.option("--synthesizer", default=None, metavar="NAME", help="The judge model.")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.7,
    show_default=True,
    help="Consensus threshold.",
)
@click.option(
    "--min-models",
    type=click.IntRange(min=1),
    default=None,
    help="quorum: agreeing answers needed; cascade: first round size.",
)
@click.option(
    "--domain",
    "domains",
    multiple=True,
    help="Pick models automatically for this domain (repeatable).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=None,
    help="Base seed of the calls (each model gets its own, derived from it).",
)
@click.option("--no-cache", is_flag=True, help="Do not reuse a stored consensus.")
@click.option(
    "--abstain",
    is_flag=True,
    help="Below --threshold answer nothing: print 'no consensus' and the answers' "
    f"clusters, exit {EXIT_NO_CONSENSUS}.",
)
@click.option(
    "--answer-format",
    default=None,
    metavar="KIND",
    help="The kind of answer asked for (short, number, choice, yes_no, json, free): "
    "the prompt gets its instruction and the answers are compared by it.",
)
@click.option(
    "--choice",
    "choices",
    multiple=True,
    metavar="TEXT",
    help="An option of --answer-format choice, in letter order (repeatable).",
)
@click.option(
    "--answer-schema",
    default=None,
    metavar="JSON",
    help="The JSON Schema of --answer-format json.",
)
@_db_option
@_json_option
@_no_progress_option
def ask_command(
    prompt: str,
    models: tuple[str, ...],
    mode: str,
    synthesis: str,
    synthesizer: str | None,
    threshold: float,
    min_models: int | None,
    domains: tuple[str, ...],
    seed: int | None,
    no_cache: bool,
    abstain: bool,
    answer_format: str | None,
    choices: tuple[str, ...],
    answer_schema: str | None,
    db: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Ask several models PROMPT at once and merge the answers (recorded like a session)."""
    from pydantic import ValidationError

    from thinktank.cli.progress import Progress
    from thinktank.cli.render import print_parallel
    from thinktank.session.spec import ParallelExecutionConfig

    try:
        config = ParallelExecutionConfig.model_validate(
            {
                "mode": mode,
                "models": list(models),
                "synthesis": synthesis,
                "synthesizer": synthesizer,
                "consensus_threshold": threshold,
                "min_models": min_models,
                "agi_model_selection": bool(domains) and not models,
                "domain_hints": list(domains),
                "seed": seed,
                "cache": not no_cache,
                "answer_format": _answer_format(answer_format, choices, answer_schema),
            }
        )
    except ValidationError as exc:
        _fail([_option_error(e) for e in exc.errors(include_url=False)])

    progress = Progress(enabled=not no_progress)
    # Drawn from the start: loading the engine and a local model take seconds before
    # the first answer.
    with progress:
        from thinktank.ask import execute_parallel
        from thinktank.engine.runner import DEFAULT_STORE

        async def go() -> ParallelResult:
            return await execute_parallel(
                prompt,
                config,
                store=db if db is not None else DEFAULT_STORE,
                on_event=progress,
                abstain=abstain,
            )

        result = _run_interruptible(go, progress)
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        print_parallel(result)
    if result.outcome == "no_consensus":
        sys.exit(EXIT_NO_CONSENSUS)
    sys.exit(EXIT_OK if result.synthesis is not None else EXIT_FAILED)


def _answer_format(
    kind: str | None, choices: Sequence[str], schema: str | None
) -> dict[str, Any] | None:
    """The ``answer_format`` that ``ask``'s options give (validated by the config)."""
    if kind is None:
        if choices or schema is not None:
            _fail(["--choice and --answer-schema need --answer-format"])
        return None
    declared: dict[str, Any] = {"kind": kind}
    if choices:
        declared["choices"] = list(choices)
    if schema is not None:
        try:
            declared["schema"] = json.loads(schema)
        except json.JSONDecodeError as exc:
            _fail([f"--answer-schema: not JSON ({exc})"])
    return declared


def _option_error(error: Any) -> str:
    """A config error of ``ask`` as one line, naming the option of an answer format."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"] and error["loc"][0] == "answer_format":
        return f"--answer-format: {message}"
    return message


@main.command("run-many")
@click.argument("session_file", type=click.Path(dir_okay=False))
@click.option(
    "--inputs",
    "inputs_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="JSON Lines: one object of input values per session.",
)
@_concurrency_option
@_db_option
@_model_option
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0),
    default=None,
    metavar="USD",
    help="Budget of each session.",
)
@_queue_option
@_json_option
@_no_progress_option
def run_many_command(
    session_file: str,
    inputs_file: str,
    concurrency: int,
    db: str | None,
    models: tuple[str, ...],
    max_cost: float | None,
    queue: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Run SESSION_FILE once per line of --inputs, into one database.

    With --queue the workers of the database run the sessions, as many at once as
    their own --concurrency allows: --concurrency (and --max-cost) are then refused.
    """
    from thinktank.batch import read_inputs_file, run_many
    from thinktank.cli.render import print_batch
    from thinktank.engine.runner import DEFAULT_STORE

    if queue:
        source = click.get_current_context().get_parameter_source("concurrency")
        refuse_with_queue(
            {
                "--concurrency": source is not ParameterSource.DEFAULT,
                "--max-cost": max_cost is not None,
            }
        )
        check_pool(db)
    try:
        spec = _load(session_file, models)
        rows = read_inputs_file(inputs_file, spec)
    except SpecErrors as exc:
        _fail(exc.lines())
    except InputError as exc:
        _fail(str(exc).splitlines())
    done = [0]
    started = time.perf_counter()

    def report(item: BatchItem) -> None:
        done[0] += 1
        if not no_progress:
            r = item.result
            detail = r.session_id if r is not None else (item.error or "")
            click.echo(
                f"[{time.perf_counter() - started:7.2f}s] {done[0]}/{len(rows)} "
                f"input {item.index}: {item.status} {detail}",
                err=True,
            )

    async def go() -> BatchResult:
        return await run_many(
            spec,
            rows,
            concurrency=concurrency,
            store=db if db is not None else DEFAULT_STORE,
            on_done=report,
            source=session_file,
            max_cost_usd=max_cost,
        )

    if queue:
        result = run_many_queued(spec, rows, db=db, source=session_file, on_done=report)
    else:
        result = _run_async(go)
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        print_batch(result)
    sys.exit(EXIT_OK if result.counts().get("completed", 0) == len(rows) else EXIT_FAILED)


def _finish_run(result: SessionResult, as_json: bool) -> NoReturn:
    from thinktank.cli.render import print_result

    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        print_result(result)
    sys.exit(EXIT_OK if result.status == "completed" else EXIT_FAILED)


@main.command("resume")
@click.argument("session_id")
@_db_option
@_json_option
@_no_progress_option
def resume_command(session_id: str, db: str | None, as_json: bool, no_progress: bool) -> None:
    """Finish an interrupted or killed session; nothing that finished runs again."""
    from thinktank.cli.progress import Progress
    from thinktank.engine.runner import DEFAULT_STORE
    from thinktank.replay import resume

    progress = Progress(enabled=not no_progress)

    async def go() -> SessionResult:
        with progress:
            return await resume(
                session_id, store=DEFAULT_STORE if db is None else db, on_event=progress
            )

    _finish_run(_run_interruptible(go, progress), as_json)


@main.command("replay")
@click.argument("session_id")
@click.option(
    "--synthesis",
    type=click.Choice(["majority", "medoid", "weighted_merge", "union"]),
    default=None,
    help="Re-merge the stored answers with this method.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Re-merge with this consensus threshold.",
)
@click.option("--live", is_flag=True, help="Call the models again and report the differences.")
@click.option(
    "--record/--no-record",
    default=None,
    help="Store the replay as a new session (default: for re-merge and --live).",
)
@_db_option
@_json_option
def replay_command(
    session_id: str,
    synthesis: str | None,
    threshold: float | None,
    live: bool,
    record: bool | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Re-execute a stored session from its recorded answers (no network, no cost)."""
    from thinktank.cli.render import print_replay
    from thinktank.engine.runner import DEFAULT_STORE
    from thinktank.replay import replay

    async def go() -> ReplayReport:
        return await replay(
            session_id,
            store=DEFAULT_STORE if db is None else db,
            synthesis=synthesis,
            threshold=threshold,
            live=live,
            record=record,
        )

    report = _run_async(go)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        print_replay(report)
    sys.exit(EXIT_OK if report.matches or report.kind != "recorded" else EXIT_FAILED)


@main.command("fork")
@click.argument("session_id")
@click.option("--step", required=True, help="The step to change and re-run.")
@click.option(
    "--prompt-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A file holding the step's new prompt template.",
)
@click.option("--prompt", "prompt_text", default=None, help="The step's new prompt template.")
@click.option("--step-models", default=None, help="Comma-separated models for the step.")
@_db_option
@_json_option
@_no_progress_option
def fork_command(
    session_id: str,
    step: str,
    prompt_file: str | None,
    prompt_text: str | None,
    step_models: str | None,
    db: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """A new session reusing everything upstream of --step; re-runs it and what follows."""
    from thinktank.cli.progress import Progress
    from thinktank.engine.runner import DEFAULT_STORE
    from thinktank.replay import fork

    prompt = prompt_text
    if prompt_file is not None:
        try:
            prompt = Path(prompt_file).read_text(encoding="utf-8")
        except OSError as exc:
            _fail([f"{prompt_file}: cannot read prompt file: {exc.strerror}"])
    names = [m.strip() for m in step_models.split(",") if m.strip()] if step_models else None
    progress = Progress(enabled=not no_progress)

    async def go() -> SessionResult:
        with progress:
            return await fork(
                session_id,
                step=step,
                prompt=prompt,
                step_models=names,
                store=DEFAULT_STORE if db is None else db,
                on_event=progress,
            )

    _finish_run(_run_interruptible(go, progress), as_json)


@main.command("export")
@click.argument("session_id")
@_db_option
def export_command(session_id: str, db: str | None) -> None:
    """Write a whole session (rows and event history) as JSON on stdout."""
    from thinktank.store import Store
    from thinktank.transfer import export_session

    async def go() -> str:
        async with await Store.open(db, read_only=True) as store:
            return (await export_session(store, session_id)).model_dump_json(indent=2)

    click.echo(_run_async(go))


@main.command("import")
@click.argument("export_file", type=click.Path(dir_okay=False, allow_dash=True))
@_db_option
def import_command(export_file: str, db: str | None) -> None:
    """Read a session export (a file, or - for stdin) into the database."""
    from thinktank.store import Store
    from thinktank.transfer import import_session

    try:
        text = sys.stdin.read() if export_file == "-" else Path(export_file).read_text("utf-8")
    except OSError as exc:
        _fail([f"{export_file}: cannot read: {exc.strerror}"])

    async def go() -> str:
        async with await Store.open(db) as store:
            return await import_session(store, text)

    click.echo(f"imported session {_run_async(go)}")


@main.command("prune")
@click.option("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 2w.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@_db_option
def prune_command(older_than: str, dry_run: bool, db: str | None) -> None:
    """Delete sessions (with all their rows) older than AGE."""
    from thinktank.store import Store
    from thinktank.transfer import parse_age, prune

    try:
        age = parse_age(older_than)
    except UsageError as exc:
        _fail([str(exc)])

    async def go() -> list[str]:
        async with await Store.open(db, create=False) as store:
            return await prune(store, age, dry_run=dry_run)

    ids = _run_async(go)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(ids)} session(s) older than {older_than}")


@main.command("validate")
@click.argument("session_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate_command(session_files: tuple[str, ...]) -> None:
    """Check session files; print every problem, one line each (exit 2 if any)."""
    from thinktank.session.loading import load_session

    problems: list[str] = []
    for file in session_files:
        try:
            spec = load_session(file)
        except SpecErrors as exc:
            problems.extend(exc.lines())
            continue
        click.echo(f"{file}: ok ({len(spec.steps)} steps)")
    if problems:
        _fail(problems)


@main.command("sessions")
@_db_option
@_json_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option("--last", is_flag=True, help="Only the newest session (--limit 1).")
@click.option(
    "--quiet", "-q", is_flag=True, help="Only ids, one a line: thinktank show $(... -q --last)."
)
def sessions_command(
    db: str | None, as_json: bool, limit: int | None, last: bool, quiet: bool
) -> None:
    """List stored sessions, newest first."""
    from thinktank.cli.render import print_sessions
    from thinktank.store import Store

    async def go() -> list[Any]:
        async with await Store.open(db, read_only=True) as store:
            return await store.list_sessions(limit=1 if last else limit)

    rows = _run_async(go)
    if quiet:
        # For command substitution: nothing but the ids, so "$(...)" is an argument.
        for row in rows:
            click.echo(row.id)
    elif as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
    else:
        print_sessions(rows)


@main.command("show")
@click.argument("session_id")
@_db_option
@_json_option
def show_command(session_id: str, db: str | None, as_json: bool) -> None:
    """Show one session: its DAG, every step's status, output, calls and consensus."""
    from thinktank.cli.render import print_stored_session
    from thinktank.store import Store

    async def go() -> Any:
        async with await Store.open(db, read_only=True) as store:
            return await store.get_session(session_id)

    try:
        stored = _run_async(go)
    except UnknownSessionError as exc:  # pragma: no cover - _run_async exits first
        _fail([str(exc)])
    if as_json:
        click.echo(json.dumps(stored.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        print_stored_session(stored)


@main.command("schema")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the schema to this file instead of stdout.",
)
@click.option("--check", is_flag=True, help="Exit 1 if --output differs from the models.")
@click.option(
    "--kind",
    type=click.Choice(["session", "export"]),
    default="session",
    show_default=True,
    help="Session files, or `thinktank export` output.",
)
def schema_command(output: str | None, check: bool, kind: str) -> None:
    """Print (or write) the JSON Schema of session files (or of exports)."""
    from thinktank.session.schema import render_session_schema
    from thinktank.transfer import render_export_schema

    text = render_session_schema() if kind == "session" else render_export_schema()
    if output is None:
        if check:
            _fail(["--check needs --output FILE"])
        click.echo(text, nl=False)
        return
    path = Path(output)
    if check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            fix = f"thinktank schema --kind {kind} -o {output}"
            _fail([f"{output} is stale: run `{fix}`"], EXIT_FAILED)
        click.echo(f"{output}: up to date")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


main.add_command(eval_group)
main.add_command(serve_command)
main.add_command(keys_group)
main.add_command(worker_command)
main.add_command(workers_command)
