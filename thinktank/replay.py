"""Resume, replay, re-merge and fork sessions from the database.

All of them go through ``thinktank.run`` (the one execution path) with a
:class:`~thinktank.engine.runner.Restart`: they differ only in the state they start from and
in the model pool.

- **resume**: the same session continues. Completed steps are not run again; failed ones
  stay failed; calls a killed process left ``running`` are closed as lost; a step that
  did not finish is re-run, and its calls that had finished are served from the store
  (so no finished call is sent again); only the rest go to the models. The session's
  lease (which ``run`` holds while it runs) keeps a second worker from running it: a
  resume claims the lease first, then reads the session.
- **replay**: a new run of the same session whose models answer from the recording,
  matched by step, model and attempt. Within a step attempt the answers are released
  in their recorded completion order (each waits for the one recorded before it), so
  race, quorum and cascade decide the same way and ties and union wording follow the
  same arrival order, however loaded the machine. A missing recording is an error naming
  the step and model, never a silent live call. The report says whether every output and
  consensus matches.
- **re-merge**: a replay with another synthesis method or threshold: the stored answers
  are merged again, no model is called, and the result is a new replay session; the
  original is never touched.
- **live replay**: the same session against the live models, with per-step differences.
- **fork**: a new session that reuses every step upstream of one step (no calls) and
  re-runs that step, with a new prompt or models, and its descendants.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import msgspec
from pydantic import BaseModel

from thinktank.engine.outcome import below_threshold
from thinktank.engine.restart import Restart, SeedStep
from thinktank.engine.result import SessionResult, step_outcome
from thinktank.engine.runner import (
    DEFAULT_STORE,
    Listener,
    execute,
    lease_ttl,
    new_worker_id,
)
from thinktank.errors import UsageError
from thinktank.events import CachedConsensus, CallStarted
from thinktank.providers.base import NO_RETRY, ModelClient, PooledModel
from thinktank.providers.recorded import RecordedCall, ReplayClient, ResumeClient, sequences
from thinktank.session.graph import StepGraph
from thinktank.session.spec import SessionSpec, StepSpec
from thinktank.store import Store, StoredSession, StoredStep

__all__ = [
    "ReplayReport",
    "StepDiff",
    "fork",
    "replay",
    "resume",
]


def _spec_of(stored: StoredSession) -> SessionSpec:
    return SessionSpec.model_validate(stored.spec)


def _extra_steps(
    stored: StoredSession, *, keep: set[str] | None = None
) -> tuple[list[tuple[StepSpec, str, tuple[str, ...]]], dict[str, str]]:
    """The steps decompose steps added, as specs, and each decompose step's sink."""
    extra: list[tuple[StepSpec, str, tuple[str, ...]]] = []
    sinks: dict[str, str] = {}
    for step in stored.steps:
        if step.parent is None or (keep is not None and step.parent not in keep):
            continue
        spec = StepSpec.model_validate(
            {
                "id": step.step_key,
                "prompt": step.prompt_template,
                "template": False,
                "depends_on": step.depends_on,
                **({"model": step.models[0]} if len(step.models) == 1 else {"models": step.models}),
            }
        )
        extra.append((spec, step.parent, tuple(step.provenance)))
        sinks[step.parent] = step.step_key  # the last one added is the synthesis step
    return extra, sinks


def _unretried(name: str, pooled: PooledModel) -> PooledModel:
    """A replayed model: the recorded client as it is, never retried (the recording
    already holds every attempt)."""
    return PooledModel(client=pooled.client, retry=NO_RETRY)


def _abstention(step: StoredStep) -> str | None:
    """Why a stored completed step abstained (its consensus found none), else None."""
    c = step.consensus
    if c is None or step_outcome(step.status, c.outcome) != "no_consensus":
        return None
    return below_threshold(c.score, c.threshold)


def _kept_consensus(step: StoredStep) -> CachedConsensus | None:
    """An abstained step's stored merge, for the reused step to keep (its outcome
    ``no_consensus`` lives on it)."""
    if step.consensus is None or _abstention(step) is None:
        return None
    return msgspec.convert(step.consensus.model_dump(), CachedConsensus)


def _seed_of(step: StoredStep) -> SeedStep | None:
    if step.status == "completed":
        return SeedStep(
            status="completed",
            output=step.output,
            abstained=_abstention(step),
            consensus=_kept_consensus(step),
            input_tokens=step.input_tokens,
            output_tokens=step.output_tokens,
            cost_usd=step.cost_usd,
        )
    if step.status == "failed":
        return SeedStep(status="failed", error=step.error)
    return None


@asynccontextmanager
async def _opened(store: Store | str | None) -> AsyncIterator[Store]:
    """The store ``store`` names, as ``run`` reads it, closed at the end if opened here.

    Resume, replay and fork read a stored session, so there is no "no store" here, and
    a path that does not exist is an error (a mistyped path creates nothing).
    """
    if store is None:
        raise UsageError("store=None: resume, replay and fork read a stored session")
    if isinstance(store, Store):
        yield store
        return
    db = await Store.open(None if store is DEFAULT_STORE else store, create=False)
    try:
        yield db
    finally:
        # Shielded: an interrupted call must still close what it opened.
        with anyio.CancelScope(shield=True):
            await db.close()


async def resume(
    session_id: str,
    *,
    store: Store | str | None = DEFAULT_STORE,
    models: Mapping[str, ModelClient] | None = None,
    on_event: Listener | None = None,
    worker_id: str | None = None,
    lease_ttl_s: float | None = None,
) -> SessionResult:
    """Finish a session that was interrupted or killed.

    The session's lease is claimed before its state is read (so what is resumed is
    what no other worker is changing), renewed while it runs, and released at the end.

    Args:
        session_id: The session, or a unique prefix of its id.
        store: Where it is stored (as in ``run``; ``None``, no store, is an error).
        models: Model clients by name, added to (or replacing) the session's own.
        on_event: Called with every event as it happens.
        worker_id: This worker's lease id (default: host, process and a random part).
        lease_ttl_s: How long the lease lasts unless renewed (default
            ``$THINKTANK_LEASE_TTL`` or 30 s).

    Raises:
        UnknownSessionError: no such session.
        UsageError: ``store`` is None, or another worker holds the session's lease (a
            run or resume of it is alive, or died less than the lease's time to live
            ago), or it already completed.
    """
    ttl = lease_ttl(lease_ttl_s)
    async with _opened(store) as db:
        sid = (await db.get_session(session_id)).id  # leases go by the full id
        worker = worker_id or new_worker_id()
        if not await db.claim_session(sid, worker_id=worker, ttl_s=ttl):
            owner = await db.lease_of(sid)
            holder = (
                f"worker {owner[0]} until {owner[1]:%Y-%m-%d %H:%M:%S} UTC"
                if owner
                else "another worker"
            )
            raise UsageError(
                f"session {sid} is leased by {holder} (it is running there, or died "
                "and its lease has not expired yet); not resuming"
            )
        try:
            stored = await db.get_session(sid)  # read under the lease
            if stored.status == "completed":
                raise UsageError(f"session {stored.id} already completed; nothing to resume")
            return await _resume(stored, db, models, on_event, (worker, ttl))
        finally:
            with anyio.CancelScope(shield=True):
                await db.release(sid, worker_id=worker)


async def _resume(
    stored: StoredSession,
    db: Store,
    models: Mapping[str, ModelClient] | None,
    on_event: Listener | None,
    lease: tuple[str, float],
) -> SessionResult:
    spec = _spec_of(stored)
    done_parents = {s.step_key for s in stored.steps if s.status == "completed"}
    extra, sinks = _extra_steps(stored, keep=done_parents)
    seed: dict[str, SeedStep] = {}
    answers: dict[tuple[str, str], deque[RecordedCall]] = {}
    lost: list[CallStarted] = []
    for step in stored.steps:
        if step.parent is not None and step.parent not in done_parents:
            continue  # its decompose step runs again and adds fresh steps
        seeded = _seed_of(step)
        if seeded is not None:
            seed[step.step_key] = seeded
            continue
        for call in step.calls:
            if call.status == "running":
                lost.append(
                    CallStarted(
                        session_id=stored.id,
                        step_id=step.step_key,
                        call_id=call.id,
                        model=call.model_id,
                        attempt=call.attempt,
                        at=call.started_at,
                    )
                )
            elif call.status == "ok" and call.reused_from is None:
                # A finished answer of an unfinished step: serve it, do not send again.
                # (A row that already reused one is skipped: the answer is served from
                # the row it came from, which counts its tokens.)
                answers.setdefault((step.step_key, call.model_id), deque()).append(call)
    restart = Restart(
        session_id=stored.id,
        seed=seed,
        record_seed=False,
        extra_steps=tuple(extra),
        aliases=sinks,
        attempt_base={s.step_key: s.attempts for s in stored.steps},
        lost_calls=tuple(lost),
        wrap=lambda name, pooled: dataclasses.replace(
            pooled, client=ResumeClient(name, pooled.client, answers)
        ),
        origin={"kind": "resume", "session_id": stored.id},
        lease=lease,
    )
    return await execute(
        spec,
        inputs=stored.inputs,
        store=db,
        models=models,
        on_event=on_event,
        source=stored.source,
        restart=restart,
    )


class StepDiff(BaseModel):
    """One difference between the original session and a replay."""

    step: str
    """The step id."""
    field: str
    """What differs: status, output, consensus_score, method, outcome, ..."""
    original: Any
    """The stored value."""
    replayed: Any
    """The replay's value."""
    similarity: float | None = None
    """For text: how alike the two are (0..1)."""
    diff: str | None = None
    """For text: a unified diff, a few lines at most."""


class ReplayReport(BaseModel):
    """What a replay found."""

    original_id: str
    """The session replayed."""
    replay_id: str | None
    """The new session the replay was recorded as (None when not recorded)."""
    kind: Literal["recorded", "remerge", "live"]
    """Recorded answers, recorded answers merged again, or live models."""
    matches: bool
    """True when every step's status, output and consensus are the same."""
    steps: int
    """Steps compared."""
    diffs: list[StepDiff]
    """Every difference."""
    original_cost_usd: float | None
    """What the original session cost."""
    replay_cost_usd: float | None
    """What the replay cost (0 for recorded replays: no model is called)."""


def _text_diff(a: str, b: str) -> tuple[float, str]:
    ratio = difflib.SequenceMatcher(None, a, b).ratio()
    lines = list(
        difflib.unified_diff(a.splitlines(), b.splitlines(), "original", "replay", lineterm="")
    )
    return ratio, "\n".join(lines[:12])


def _compare(stored: StoredSession, result: SessionResult) -> list[StepDiff]:
    diffs: list[StepDiff] = []
    for step in stored.steps:
        got = result.steps.get(step.step_key)
        if got is None:
            diffs.append(
                StepDiff(step=step.step_key, field="missing", original=step.status, replayed=None)
            )
            continue
        if got.status != step.status:
            diffs.append(
                StepDiff(
                    step=step.step_key, field="status", original=step.status, replayed=got.status
                )
            )
        if (got.output or "") != (step.output or ""):
            ratio, text = _text_diff(step.output or "", got.output or "")
            diffs.append(
                StepDiff(
                    step=step.step_key,
                    field="output",
                    original=step.output,
                    replayed=got.output,
                    similarity=ratio,
                    diff=text,
                )
            )
        old, new = step.consensus, got.consensus
        if old is not None and new is not None:
            for name, a, b in (
                ("consensus_score", round(old.score, 9), round(new.score, 9)),
                ("method", old.method, new.method),
                ("outcome", old.outcome, new.outcome),
            ):
                if a != b:
                    diffs.append(StepDiff(step=step.step_key, field=name, original=a, replayed=b))
        elif (old is None) != (new is None):
            diffs.append(
                StepDiff(
                    step=step.step_key,
                    field="consensus",
                    original=old is not None,
                    replayed=new is not None,
                )
            )
    known = {s.step_key for s in stored.steps}
    for key in result.steps:
        if key not in known:
            diffs.append(
                StepDiff(step=key, field="extra", original=None, replayed=result.steps[key].status)
            )
    return diffs


def _remerged(spec: SessionSpec, synthesis: str | None, threshold: float | None) -> SessionSpec:
    """``spec`` with every multi-model step merged by ``synthesis`` at ``threshold``
    (where given), and no consensus cache (a replay re-merges, it does not look up)."""
    update = {
        k: v
        for k, v in {"synthesis": synthesis, "consensus_threshold": threshold}.items()
        if v is not None
    }
    steps = [
        s.model_copy(update=update) if len(spec.step_models(s)) > 1 and s.kind == "prompt" else s
        for s in spec.steps
    ]
    return spec.model_copy(
        update={
            "steps": steps,
            "parallel_execution": spec.parallel_execution.model_copy(update={"cache": False}),
        }
    )


async def _attempts_before(stored: StoredSession, db: Store) -> dict[str, int]:
    """Per step, the attempts made before the run that decided it.

    A session that was killed (or interrupted) and resumed ran in several processes,
    each starting with ``SessionStarted`` in its event log. A step the killed run had
    started was cut there, and the resume numbered its attempts on from the ones
    made; the step's outcome is what the run that finished it decided, so a replay
    starts the step where that run did (and the cut attempts, with their lost calls,
    are not replayed).
    """
    if all(s.attempts <= 1 for s in stored.steps):
        return {}  # one attempt at most: none before the deciding run's first
    first: dict[str, int] = {}
    """The step's first attempt in the run being read."""
    before: dict[str, int] = {}
    # The stored form's ``type`` names (a format the store keeps readable across
    # versions), read as dicts: decoding every event would cost more than this loop.
    for event in await db.events_of(stored.id):
        kind = event["type"]
        if kind == "session_started":
            first = {}
        elif kind == "step_started":
            first.setdefault(event["step_id"], event["attempt"])
        elif kind == "step_finished" and event["step_id"] in first:
            before[event["step_id"]] = first[event["step_id"]] - 1
    return before


async def _replay_restart(stored: StoredSession, db: Store, origin: dict[str, Any]) -> Restart:
    """How a replay from the recording starts: as the recorded session did.

    Steps it did not run (a fork reused them: finished with no attempt) are seeded
    with their stored outcome, the steps their decompose steps had added come back,
    and every step numbers its attempts as the run that decided it did, so each call
    finds its recording by (step, model, attempt).
    """
    seed = {
        s.step_key: seeded
        for s in stored.steps
        if s.attempts == 0 and (seeded := _seed_of(s)) is not None
    }
    extra, sinks = _extra_steps(stored, keep=set(seed))
    return Restart(
        seed=seed,
        extra_steps=tuple(extra),
        aliases=sinks,
        attempt_base=await _attempts_before(stored, db),
        # The recording already answers once per call: no retry of a recorded failure.
        wrap=_unretried,
        origin=origin,
        # A recorded replay (no re-merge) runs the stored, once validated graph.
        validated=origin["replay"] == "recorded",
    )


def _replay_clients(stored: StoredSession, spec: SessionSpec) -> dict[str, ModelClient]:
    """A client per model the session names or called, serving its recorded calls."""
    recordings: dict[tuple[str, str, int], deque[RecordedCall]] = {}
    for step in stored.steps:
        for call in sorted(step.calls, key=lambda c: (c.started_at, c.id)):
            key = (step.step_key, call.model_id, call.attempt)
            recordings.setdefault(key, deque()).append(call)
    names = {c.model_id for s in stored.steps for c in s.calls}
    names |= {m for s in spec.steps for m in [*spec.step_models(s), *s.extra_models()]}
    # Every merge depends on the order answers arrive in: race, quorum and cascade
    # stop on it, and ties go to the earliest answer.
    order = sequences(c for s in stored.steps for c in s.calls)
    return {name: ReplayClient(name, recordings, order) for name in names}


async def replay(
    session_id: str,
    *,
    store: Store | str | None = DEFAULT_STORE,
    synthesis: str | None = None,
    threshold: float | None = None,
    live: bool = False,
    record: bool | None = None,
    models: Mapping[str, ModelClient] | None = None,
    on_event: Listener | None = None,
) -> ReplayReport:
    """Re-execute a stored session and report whether it comes out the same.

    Args:
        session_id: The session (or an id prefix).
        store: Where it is stored (as in ``run``; ``None``, no store, is an error).
        synthesis: Re-merge every multi-model step with this method instead.
        threshold: Re-merge with this consensus threshold instead.
        live: Call the models again instead of serving the recording.
        record: Store the replay as a new session (default: when re-merging or live).
        models: Model clients by name, added to (or replacing) the session's own
            (live replays; a recorded replay serves every model from the recording).
        on_event: Receives every event of the replay.

    Raises:
        UnknownSessionError: no such session.
        UsageError: ``store`` is None, or re-merging with ``judge``.
    """
    if synthesis == "judge":
        raise UsageError(
            "re-merging with 'judge' needs a synthesizer call, which replay does not "
            "make; use majority, medoid, weighted_merge or union (or replay --live)"
        )
    remerge = synthesis is not None or threshold is not None
    kind: Literal["recorded", "remerge", "live"] = (
        "live" if live else ("remerge" if remerge else "recorded")
    )
    keep = record if record is not None else kind != "recorded"
    origin = {
        "kind": "replay",
        "session_id": "",
        "replay": kind,
        "synthesis": synthesis,
        "threshold": threshold,
    }
    async with _opened(store) as db:
        stored = await db.get_session(session_id)
        origin["session_id"] = stored.id
        spec = _remerged(_spec_of(stored), synthesis, threshold)
        if live:
            restart, clients = Restart(origin=origin), {}
        else:
            restart = await _replay_restart(stored, db, origin)
            clients = _replay_clients(stored, spec)
        result = await execute(
            spec,
            inputs=stored.inputs,
            store=db if keep else None,
            models={**(models or {}), **clients},
            on_event=on_event,
            source=stored.source,
            restart=restart,
        )
    diffs = _compare(stored, result)
    return ReplayReport(
        original_id=stored.id,
        replay_id=result.session_id if keep else None,
        kind=kind,
        matches=not diffs,
        steps=len(stored.steps),
        diffs=diffs,
        original_cost_usd=stored.cost_usd,
        replay_cost_usd=0.0 if not live else result.usage.total_cost_usd,
    )


def _forked_spec(
    spec: SessionSpec, step: str, prompt: str | None, step_models: list[str] | None
) -> SessionSpec:
    """``spec`` with ``step``'s prompt and models replaced (where given)."""
    update: dict[str, Any] = {}
    if prompt is not None:
        update["prompt"] = prompt
    if step_models:
        update.update(
            {"model": step_models[0], "models": []}
            if len(step_models) == 1
            else {"model": None, "models": list(step_models)}
        )
    changed = [s.model_copy(update=update) if s.id == step else s for s in spec.steps]
    return SessionSpec.model_validate(
        {**spec.model_dump(), "steps": [s.model_dump() for s in changed]}
    )


async def fork(
    session_id: str,
    *,
    step: str,
    prompt: str | None = None,
    step_models: list[str] | None = None,
    store: Store | str | None = DEFAULT_STORE,
    models: Mapping[str, ModelClient] | None = None,
    on_event: Listener | None = None,
) -> SessionResult:
    """A new session that reuses everything upstream of ``step`` and re-runs ``step``
    (with a new prompt and/or models) and its descendants.

    Args:
        session_id: The session (or an id prefix).
        step: The step to run again.
        prompt: Its new prompt (default: the same).
        step_models: The model names it runs on now (default: the same).
        store: Where it is stored (as in ``run``; ``None``, no store, is an error).
        models: Model clients by name, added to (or replacing) the session's own.
        on_event: Receives every event of the fork.

    Raises:
        UnknownSessionError: no such session.
        UsageError: the session has no such step, or ``store`` is None.
    """
    async with _opened(store) as db:
        stored = await db.get_session(session_id)
        spec = _spec_of(stored)
        if step not in {s.id for s in spec.steps}:
            known = ", ".join(s.id for s in spec.steps)
            raise UsageError(f"session {stored.id} has no step {step!r} (steps: {known})")
        spec = _forked_spec(spec, step, prompt, step_models)
        affected = {step} | StepGraph(spec).descendants(step)
        kept_parents = {
            s.step_key
            for s in stored.steps
            if s.status == "completed" and s.step_key not in affected
        }
        extra, sinks = _extra_steps(stored, keep=kept_parents)
        # Reused, not re-run: the fork spends nothing on these steps.
        seed = {
            s.step_key: SeedStep(
                status="completed",
                output=s.output,
                abstained=_abstention(s),
                consensus=_kept_consensus(s),
            )
            for s in stored.steps
            if s.step_key not in affected
            and (s.parent is None or s.parent in kept_parents)
            and s.status == "completed"
        }
        restart = Restart(
            seed=seed,
            extra_steps=tuple(extra),
            aliases=sinks,
            origin={"kind": "fork", "session_id": stored.id, "step": step},
        )
        return await execute(
            spec,
            inputs=stored.inputs,
            store=db,
            models=models,
            on_event=on_event,
            source=stored.source,
            restart=restart,
        )
