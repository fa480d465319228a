"""Human-readable output of the CLI: result tables, session lists, ``show``.

Everything here prints to stdout through rich, which drops colour when piped.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from thinktank.ask import ParallelResult, SynthesisResult
from thinktank.batch import BatchResult, summary_rows
from thinktank.dryrun import DryRun
from thinktank.engine.result import SessionResult, Usage, step_outcome
from thinktank.providers.registry import ModelInfo
from thinktank.replay import ReplayReport
from thinktank.store import (
    SessionSummary,
    StoredCall,
    StoredConsensus,
    StoredSession,
    StoredStep,
)
from thinktank.store._workers import WorkerInfo

__all__ = [
    "print_batch",
    "print_dry_run",
    "print_models",
    "print_parallel",
    "print_replay",
    "print_result",
    "print_sessions",
    "print_stored_session",
]

_STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "partial": "yellow",
    "skipped": "yellow",
    "cancelled": "magenta",
    "interrupted": "magenta",
    "running": "cyan",
    "pending": "dim",
}


def _console() -> Console:
    # Piped output is read by people in logs and by grep: do not fold it to 80 columns.
    probe = Console()
    width = None if probe.is_terminal else 160
    # markup=False: model output and ids are data; "[x]" in them must print as is.
    return Console(soft_wrap=False, highlight=False, markup=False, width=width)


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _step_status(status: str, consensus_outcome: str | None) -> Text:
    """A step's status; a step that abstained says so (it completed with no answer)."""
    if step_outcome(status, consensus_outcome) == "no_consensus":
        return Text("no consensus", style="yellow")
    return _status(status)


def _tokens(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f}s" if value >= 1000 else f"{value:.0f} ms"


def _short(text: str | None, width: int = 70) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _usage_line(usage: Usage) -> str:
    return (
        f"tokens {_tokens(usage.total_tokens)} (in {_tokens(usage.input_tokens)}, "
        f"out {_tokens(usage.output_tokens)}), cost {_cost(usage.total_cost_usd)}"
    )


def print_result(result: SessionResult) -> None:
    """The table ``thinktank run`` prints when a session ends."""
    console = _console()
    table = Table(title=f"{result.name}  ({result.session_id})", title_justify="left")
    for column in ("step", "status", "models", "consensus", "tokens", "latency", "output"):
        table.add_column(column, overflow="fold" if column == "output" else "ellipsis")
    for step in result.steps.values():
        consensus = ""
        if step.consensus is not None:
            mark = "" if step.consensus.reached else " (low)"
            consensus = f"{step.consensus.score:.2f}{mark}"
        detail = step.output if step.status == "completed" else (step.error or step.skip_reason)
        if step.outcome == "no_consensus":
            detail = "(abstained: no answer below the consensus threshold)"
        table.add_row(
            step.id,
            _step_status(step.status, None if step.consensus is None else step.consensus.outcome),
            ", ".join(step.models),
            consensus,
            _tokens(step.usage.total_tokens),
            _ms(step.latency_ms) if step.attempts else "-",
            _short(detail, 60),
        )
    console.print(table)
    line = Text("session ")
    line.append_text(_status(result.status))
    line.append(f" in {_ms(result.wall_ms)}; {_usage_line(result.usage)}")
    console.print(line)
    if result.error:
        console.print(Text(result.error, style="red"))


def print_replay(report: ReplayReport) -> None:
    """What ``thinktank replay`` prints."""
    console = _console()
    what = {
        "recorded": "replay from the recording",
        "remerge": "re-merge of the stored answers",
        "live": "live replay",
    }[report.kind]
    head = f"{what} of {report.original_id}"
    if report.replay_id:
        head += f" -> session {report.replay_id}"
    console.print(head)
    if report.matches:
        console.print(Text(f"every step matches ({report.steps} steps)", style="green"))
    else:
        table = Table()
        for column in ("step", "field", "original", "replay", "similarity"):
            table.add_column(column, overflow="fold")
        for d in report.diffs:
            table.add_row(
                d.step,
                d.field,
                _short(str(d.original), 50),
                _short(str(d.replayed), 50),
                "" if d.similarity is None else f"{d.similarity:.2f}",
            )
        console.print(table)
        console.print(f"{len(report.diffs)} difference(s) over {report.steps} steps")
    console.print(
        f"cost: original {_cost(report.original_cost_usd)}, replay {_cost(report.replay_cost_usd)}"
    )


def print_batch(result: BatchResult) -> None:
    """The summary ``thinktank run-many`` prints at the end."""
    console = _console()
    table = Table(title="run-many", title_justify="left")
    for column in ("input", "session", "status", "tokens", "cost", "wall", "error"):
        table.add_column(
            column,
            no_wrap=column == "session",
            overflow="fold" if column == "error" else "ellipsis",
        )
    for row in summary_rows(result):
        table.add_row(*row[:2], _status(row[2]), *row[3:6], _short(row[6], 60))
    console.print(table)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts().items()))
    tokens = "?" if result.total_tokens is None else f"{result.total_tokens:,}"
    console.print(
        f"{len(result.items)} sessions: {counts}; tokens {tokens}; "
        f"cost {_cost(result.total_cost_usd)}; wall {_ms(result.wall_ms)}"
    )


def print_dry_run(plan: DryRun) -> None:
    """What ``thinktank run --dry-run`` prints: the DAG, planned calls, cost estimate."""
    console = _console()
    console.print(f"dry run of {plan.name}: nothing is called or written")
    console.print("DAG:")
    for i, layer in enumerate(plan.generations, start=1):
        console.print(f"  layer {i}: {', '.join(layer)}")
    table = Table()
    for column in (
        "step",
        "kind",
        "models",
        "calls",
        "tokens in/out per call",
        "cost (max)",
        "note",
    ):
        table.add_column(column, overflow="fold" if column == "note" else "ellipsis")
    for st in plan.steps:
        calls = (
            str(st.calls_max)
            if st.calls_min == st.calls_max
            else (f"{st.calls_min}-{st.calls_max}")
        )
        table.add_row(
            st.id,
            st.kind + (f" ({st.mode})" if st.mode else ""),
            ", ".join(st.models),
            calls,
            f"~{st.input_tokens_per_call:,} / {st.output_tokens_per_call:,}",
            _cost(st.cost_usd_max),
            st.note or "",
        )
    console.print(table)
    calls = (
        f"{plan.calls_min}-{plan.calls_max}"
        if plan.calls_min != plan.calls_max
        else str(plan.calls_max)
    )
    line = f"{calls} model calls; estimated cost at most {_cost(plan.cost_usd_max)}"
    if plan.budget_max_cost_usd is not None:
        line += f" (budget ${plan.budget_max_cost_usd:g})"
    console.print(line)


def print_parallel(result: ParallelResult) -> None:
    """What ``thinktank ask`` prints: every response, then the merged answer."""
    console = _console()
    table = Table(title=f"ask ({result.mode})  {result.id}", title_justify="left")
    for column in ("model", "status", "tokens", "latency", "answer"):
        table.add_column(column, overflow="fold" if column == "answer" else "ellipsis")
    for r in result.responses:
        mark = "" if r.included_in_consensus or r.status != "ok" else " (outvoted)"
        table.add_row(
            r.model,
            _status("completed" if r.status == "ok" else r.status),
            _tokens(r.tokens),
            _ms(r.latency_ms),
            _short(r.content if r.status == "ok" else r.error, 70) + mark,
        )
    console.print(table)
    syn = result.synthesis
    if syn is None:
        console.print(Text(f"no merged answer: {result.error}", style="red"))
    elif result.outcome == "no_consensus":
        _print_no_consensus(console, syn)
    else:
        verdict = "reached" if syn.reached else "NOT reached"
        console.print(
            f"{syn.method}: {syn.content}\nconsensus {syn.consensus_score:.2f} "
            f"(threshold {syn.threshold:g}, {verdict}; outcome {syn.outcome})"
        )
        if syn.note:
            console.print(f"note: {syn.note}")
    extras = []
    if result.early_termination:
        extras.append("stopped early")
    if len(result.escalation) > 1:
        extras.append(
            "escalation " + " -> ".join("[" + ", ".join(r) + "]" for r in result.escalation)
        )
    if result.cached:
        extras.append(f"cached (consensus {result.cached_from})")
    extras.append(_usage_line(result.usage))
    extras.append(f"wall {_ms(result.total_latency_ms)}")
    console.print("; ".join(extras))


def _print_no_consensus(console: Console, syn: SynthesisResult) -> None:
    """An abstained ``ask``: why in one line, then each group of agreeing answers."""
    console.print(
        Text(
            f"no consensus (score {syn.consensus_score:.2f} < threshold {syn.threshold:g})",
            style="yellow",
        )
    )
    for cluster in syn.clusters:
        models = ", ".join(cluster.get("models", []))
        answer = _short(cluster.get("representative"), 50)
        console.print(f"  {cluster.get('weight', 0):g} x {answer!r}  [{models}]")


def print_sessions(rows: Sequence[SessionSummary]) -> None:
    """The table ``thinktank sessions`` prints."""
    console = _console()
    if not rows:
        console.print("no sessions stored yet")
        return
    table = Table()
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("name", "status", "worker", "steps", "tokens", "cost", "wall time", "started"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row.id,
            row.name,
            _status(row.status),
            row.worker or "",
            f"{row.steps_completed}/{row.steps_total}",
            _tokens(row.total_tokens),
            _cost(row.cost_usd),
            _ms(row.wall_ms),
            row.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


def print_workers(rows: Sequence[WorkerInfo]) -> None:
    """The table ``thinktank workers`` prints."""
    console = _console()
    if not rows:
        console.print("no live workers (start one: thinktank worker --db URL)")
        return
    table = Table()
    for column in (
        "name",
        "state",
        "running",
        "finished",
        "concurrency",
        "host:pid",
        "up",
        "version",
    ):
        table.add_column(column, no_wrap=True)
    for row in rows:
        state = "draining" if row.draining else "alive"
        if not row.alive:
            state = f"dead, recovered by {row.recovered_by}" if row.recovered_by else "dead"
        table.add_row(
            row.name,
            state,
            str(row.running),
            str(row.finished),
            str(row.concurrency),
            f"{row.host}:{row.pid}",
            _ms(row.age_s * 1000),
            row.version,
        )
    console.print(table)


def _price(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def print_models(infos: Sequence[ModelInfo], *, config_path: str | None) -> None:
    """The table ``thinktank models`` prints (key presence only, never a key)."""
    console = _console()
    console.print(f"config: {config_path or 'none (thinktank.toml or $THINKTANK_CONFIG)'}")
    table = Table()
    for column in (
        "name",
        "provider",
        "model",
        "base url",
        "$/Mtok in/out",
        "key",
        "max conc.",
        "tags",
        "from",
    ):
        table.add_column(column, no_wrap=column in ("name", "key"))
    for info in infos:
        if info.key_env is None:
            key = "-"
        else:
            key = f"{info.key_env}: {'yes' if info.key_present else 'no'}"
        table.add_row(
            info.name,
            info.provider,
            info.model,
            info.base_url or "-",
            f"{_price(info.input_cost_per_mtok)} / {_price(info.output_cost_per_mtok)}",
            key,
            str(info.max_concurrency or "-"),
            ", ".join(info.tags),
            info.source,
        )
    console.print(table)
    console.print(
        "also: provider/model names such as openai/gpt-4o-mini, anthropic/claude-sonnet-4-5, "
        "gemini/gemini-2.0-flash (keys from OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY)"
    )


def _dag_lines(steps: Sequence[StoredStep]) -> list[str]:
    graph: nx.DiGraph[str] = nx.DiGraph()
    for step in steps:
        graph.add_node(step.step_key)
        for dep in step.depends_on:
            graph.add_edge(dep, step.step_key)
    # A decompose step's dependents waited at run time for the last step it added
    # (the synthesis, which answers for it); the stored rows keep only the dependencies
    # written in the file, so draw that edge too, or they land in the wrong layer.
    sinks = {s.parent: s.step_key for s in sorted(steps, key=lambda s: s.position) if s.parent}
    for step in steps:
        for dep in step.depends_on:
            if dep in sinks and step.parent != dep:
                graph.add_edge(sinks[dep], step.step_key)
    order = {s.step_key: s.position for s in steps}
    lines = []
    for i, layer in enumerate(nx.topological_generations(graph), start=1):
        names = sorted(layer, key=lambda k: order.get(k, 0))
        parts = []
        for name in names:
            deps = sorted(graph.predecessors(name), key=lambda k: order.get(k, 0))
            parts.append(f"{name} <- {', '.join(deps)}" if deps else name)
        lines.append(f"  layer {i}: " + "; ".join(parts))
    return lines


def print_stored_session(stored: StoredSession) -> None:
    """What ``thinktank show`` prints: the DAG, every step, its calls and consensus."""
    console = _console()
    _print_session_head(console, stored)
    console.print("DAG:")
    for line in _dag_lines(stored.steps):
        console.print(line)
    console.print(_steps_table(stored.steps))
    for step in stored.steps:
        console.print()
        _print_stored_step(console, step)


def _print_session_head(console: Console, stored: StoredSession) -> None:
    """The session's status line, totals, error, text repairs and model selection."""
    head = Text(f"session {stored.id}  {stored.name}  ")
    head.append_text(_status(stored.status))
    console.print(head)
    if stored.source:
        console.print(f"file: {stored.source}")
    if stored.worker:
        console.print(f"worker: {stored.worker}")
    provenance = {"API key": stored.key_id, "request": stored.request_id}
    if any(provenance.values()):
        console.print("  ".join(f"{what} {value}" for what, value in provenance.items() if value))
    if stored.origin:
        origin = ", ".join(f"{k} {v}" for k, v in stored.origin.items() if v is not None)
        console.print(f"made from: {origin}")
    console.print(
        f"steps {stored.steps_completed}/{stored.steps_total} completed, "
        f"{stored.steps_failed} failed, {stored.steps_skipped} skipped; "
        f"wall {_ms(stored.wall_ms)}; tokens {_tokens(stored.total_tokens)}; "
        f"cost {_cost(stored.cost_usd)}"
    )
    if stored.error:
        console.print(Text(stored.error, style="red"))
    if stored.text_repairs:
        shown = ", ".join(stored.text_repairs[:3])
        more = len(stored.text_repairs) - 3
        console.print(
            Text(
                "text that no database stores (invalid Unicode, NUL) was kept with U+FFFD: "
                + shown
                + (f" and {more} more (show --json lists them)" if more > 0 else ""),
                style="yellow",
            )
        )
    if stored.model_selection:
        console.print("models selected automatically:")
        for name, reason in stored.model_selection.items():
            console.print(f"  {name}: {reason}")


def _steps_table(steps: Sequence[StoredStep]) -> Table:
    """One row per step: status, models, consensus score, attempts, usage."""
    table = Table(title="steps", title_justify="left")
    for column in (
        "step",
        "status",
        "models",
        "consensus",
        "attempts",
        "tokens",
        "cost",
        "latency",
    ):
        table.add_column(column)
    for step in steps:
        consensus = "" if step.consensus_score is None else f"{step.consensus_score:.2f}"
        table.add_row(
            step.step_key,
            _step_status(step.status, None if step.consensus is None else step.consensus.outcome),
            ", ".join(step.models),
            consensus,
            str(step.attempts),
            _tokens(
                None
                if step.input_tokens is None or step.output_tokens is None
                else step.input_tokens + step.output_tokens
            ),
            _cost(step.cost_usd),
            _ms(step.latency_ms),
        )
    return table


def _print_stored_step(console: Console, step: StoredStep) -> None:
    """One step in detail: origin, prompt, output or error, consensus, calls."""
    title = Text(f"[{step.step_key}] ", style="bold")
    title.append_text(
        _step_status(step.status, None if step.consensus is None else step.consensus.outcome)
    )
    console.print(title)
    if step.parent is not None:
        proposed = ", ".join(step.provenance) or "the merge"
        console.print(f"  added at run time by {step.parent}; proposed by {proposed}")
    if step.prompt:
        console.print(f"  prompt: {_short(step.prompt, 200)}")
    if step.output is not None:
        console.print(f"  output: {_short(step.output, 400)}")
    if step.error:
        console.print(Text(f"  error: {step.error}", style="red"))
    if step.skip_reason:
        console.print(Text(f"  skipped: {step.skip_reason}", style="yellow"))
    if step.consensus is not None:
        _print_consensus(console, step.consensus)
    for call in step.calls:
        _print_stored_call(console, call)


def _print_consensus(console: Console, merged: StoredConsensus) -> None:
    """How a step's answers merged: score, escalation, note, items or clusters."""
    verdict = "reached" if merged.reached else "NOT reached"
    early = ", stopped early" if merged.early_termination else ""
    console.print(
        f"  consensus: {merged.mode} / {merged.method} score {merged.score:.2f} "
        f"(threshold {merged.threshold:g}, {verdict}, outcome {merged.outcome}{early})"
    )
    if len(merged.escalation) > 1:
        path = " -> ".join("[" + ", ".join(r) + "]" for r in merged.escalation)
        console.print(f"    escalation: {path}")
    if merged.note:
        console.print(f"    note: {merged.note}")
    for item in merged.items:
        found = ", ".join(item.get("models", []))
        console.print(f"    - {_short(item.get('text'), 70)}  [{found}]")
    for cluster in merged.clusters:
        models = ", ".join(cluster.get("models", []))
        answer = _short(cluster.get("representative"), 50)
        console.print(f"    {cluster.get('weight', 0):g} x {answer!r}  [{models}]")
        reasons = cluster.get("reasons") or {}
        if reasons:
            # Why answers worded differently were merged (issue #15): "same_number", ...
            members = zip(cluster.get("call_ids", []), cluster.get("models", []), strict=False)
            why = ", ".join(f"{m} {reasons[k]}" for k, m in members if k in reasons)
            console.print(f"      joined: {why}")


def _print_stored_call(console: Console, call: StoredCall) -> None:
    """One call's line (``*``: counted in the consensus), then its tries if retried."""
    mark = "*" if call.included_in_consensus and call.status == "ok" else " "
    tail = call.error if call.error else _short(call.response, 60)
    if call.error and call.response:
        # A stream cut short (timeout, cap, dropped connection) keeps its text.
        tail += f"; partial: {_short(call.response, 60)!r}"
    tries = f" ({call.tries} tries)" if call.tries > 1 else ""
    console.print(
        f"  {mark} {call.model_id:<16} attempt {call.attempt} {call.status:<9} "
        f"{_tokens(call.tokens_used):>7} tok {_ms(call.latency_ms):>8}{tries}  {tail}"
    )
    for a in call.attempts:
        code = f" HTTP {a.status_code}" if a.status_code else ""
        wait = f", retry in {a.retry_in_s:.2f}s" if a.retry_in_s is not None else ""
        console.print(
            f"      try {a.number}: {a.status}{code} {_ms(a.latency_ms)}{wait}"
            f"{'  ' + _short(a.error, 80) if a.error else ''}"
        )
