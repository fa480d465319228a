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
  same arrival order, however loaded the machine. A missing recording is an error naming the step
  and model, never a silent live call. The report says whether every output and
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
from collections.abc import Mapping
from typing import Any, Literal

import anyio
from pydantic import BaseModel

from thinktank.engine.result import SessionResult
from thinktank.engine.runner import Listener, Restart, SeedStep, lease_ttl, new_worker_id, run
from thinktank.errors import ProviderError, UsageError
from thinktank.events import CallStarted
from thinktank.providers.base import NO_RETRY, ModelClient, ModelRequest, ModelResponse, PooledModel
from thinktank.session.graph import StepGraph
from thinktank.session.spec import SessionSpec, StepSpec
from thinktank.store import Store, StoredCall, StoredSession, StoredStep

__all__ = [
    "RecordedClient",
    "ReplayReport",
    "StepDiff",
    "fork",
    "replay",
    "resume",
]


DIVERGED_WAIT_S = 2.0
"""How long a recorded answer waits for the one recorded before it to be asked for.
Past that the replay has diverged (another merge, a mode that stopped elsewhere): the
answer goes on, and the report shows the difference instead of the replay hanging."""


class _Sequence:
    """The recorded completion order of one step attempt's answers.

    Answer ``i`` is released once every answer recorded before it was released (or its
    call ended otherwise), so the answers arrive in the recorded order without any
    wall-clock sleep. An answer recorded earlier that the replay does not ask for
    within ``wait_s`` is passed over.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.next = 0
        """The position whose answer goes next."""
        self.asked: set[int] = set()
        self.done: set[int] = set()
        self._moved: anyio.Event | None = None
        self._moved_at: float | None = None

    async def turn(self, index: int) -> None:
        """Wait until the answers recorded before ``index`` are out."""
        self.asked.add(index)
        now = anyio.current_time()
        if self._moved_at is None:
            self._moved_at = now  # the wait for the first answer starts with the step
        while self.next < index:
            deadline = self._moved_at + self.wait_s
            if now >= deadline and self.next not in self.asked:
                # Never asked for: the replay diverged before this answer; go on.
                self._advance()
                continue
            if self._moved is None:
                self._moved = anyio.Event()
            moved = self._moved
            with anyio.move_on_after(deadline - now if now < deadline else self.wait_s):
                await moved.wait()
            now = anyio.current_time()

    def release(self, index: int) -> None:
        """``index`` answered (or its call ended): the next one may go."""
        self.done.add(index)
        if index == self.next:
            self._advance()

    def _advance(self) -> None:
        self.next += 1
        while self.next in self.done:
            self.next += 1
        self._moved_at = anyio.current_time()
        if self._moved is not None:
            self._moved.set()
            self._moved = None


def _sequences(
    steps: list[StoredStep], wait_s: float = DIVERGED_WAIT_S
) -> dict[str, tuple[_Sequence, int]]:
    """Each recorded call's step-attempt sequence and position in it, by call id.

    The order is the recorded completion order (ties: call id, which is time-ordered).
    Calls that never answered (cancelled, or left running) have no place in it.
    """
    placed: dict[str, tuple[_Sequence, int]] = {}
    for step in steps:
        by_attempt: dict[int, list[StoredCall]] = {}
        for call in step.calls:
            if call.status not in ("cancelled", "running") and call.completed_at is not None:
                by_attempt.setdefault(call.attempt, []).append(call)
        for calls in by_attempt.values():
            sequence = _Sequence(wait_s)
            calls.sort(key=lambda c: (c.completed_at, c.id))
            placed.update({call.id: (sequence, i) for i, call in enumerate(calls)})
    return placed


class RecordedClient:
    """A model client that answers from a stored session.

    Recordings are queued per key in the order they were made; ``fallback`` (a live
    client) answers what was never recorded, or — with no fallback — that is an error
    naming the step and model. With ``order`` (replay), each answer waits for the ones
    recorded before it in its step attempt. With ``reuse`` (resume), each answer says
    which stored call it is (``reused_from``), so the store does not count its tokens
    twice.
    """

    def __init__(
        self,
        name: str,
        provider: str,
        recordings: dict[tuple[Any, ...], deque[StoredCall]],
        *,
        by_attempt: bool,
        fallback: ModelClient | None = None,
        order: Mapping[str, tuple[_Sequence, int]] | None = None,
        reuse: bool = False,
    ) -> None:
        self._name = name
        self._provider = provider
        self.recordings = recordings
        self.by_attempt = by_attempt
        self.fallback = fallback
        self.order = order or {}
        self.reuse = reuse
        self.served = 0
        self.live = 0

    @property
    def name(self) -> str:
        """The model name."""
        return self._name

    @property
    def provider(self) -> str:
        """The original model's provider."""
        return self._provider

    def _key(self, request: ModelRequest) -> tuple[Any, ...]:
        if self.by_attempt:
            return (request.step_id, self._name, request.attempt)
        return (request.step_id, self._name)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """The recorded answer for this step, model (and attempt)."""
        queue = self.recordings.get(self._key(request))
        if not queue:
            if self.fallback is not None:
                self.live += 1
                return await self.fallback.complete(request)
            raise ProviderError(
                f"no recording for step {request.step_id!r}, model {self._name!r}, "
                f"attempt {request.attempt}",
                provider="replay",
                model=self._name,
            )
        rec = queue.popleft()
        self.served += 1
        if rec.status == "cancelled":
            # The original run cancelled this call when its mode had decided (or the
            # step's deadline cut it). Replayed, it must lose the same way: answer
            # nothing until it is cancelled again, and only if that never happens (the
            # replay diverged) fail after a generous wait rather than hang.
            with anyio.move_on_after(DIVERGED_WAIT_S + 2 * (rec.latency_ms or 0) / 1000):
                await anyio.Event().wait()
            raise ProviderError(
                f"not recorded: the original run cancelled this call (step "
                f"{request.step_id!r}, model {self._name!r})",
                provider="replay",
                model=self._name,
            )
        place = self.order.get(rec.id)
        if place is None:
            await anyio.lowlevel.checkpoint()
        else:
            sequence, index = place
            try:
                # This answer arrived in the original run, so it must arrive here even if
                # the mode decides (and cancels) while it waits for its turn: the wait is
                # shielded, and bounded (answers before it are out or passed over soon),
                # so a cancellation is only deferred until the answer is in.
                with anyio.CancelScope(shield=True):
                    await sequence.turn(index)
            finally:
                # Released on return (nothing awaits between here and the answer's
                # arrival in the step), or when it failed: either way it is out.
                sequence.release(index)
        if rec.status != "ok":
            raise ProviderError(
                rec.error or f"recorded {rec.status}", provider="replay", model=self._name
            )
        return ModelResponse(
            content=rec.response or "",
            model=self._name,
            input_tokens=rec.input_tokens,
            output_tokens=rec.output_tokens,
            latency_ms=float(rec.latency_ms or 0),
            cost_usd=rec.cost_usd,
            finish_reason=rec.finish_reason,
            reused_from=rec.id if self.reuse else None,
        )


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


def _seed_of(step: StoredStep) -> SeedStep | None:
    if step.status == "completed":
        return SeedStep(
            status="completed",
            output=step.output,
            input_tokens=step.input_tokens,
            output_tokens=step.output_tokens,
            cost_usd=step.cost_usd,
        )
    if step.status == "failed":
        return SeedStep(status="failed", error=step.error)
    return None


async def _open(store: Store | str | None) -> tuple[Store, bool]:
    if isinstance(store, Store):
        return store, False
    # Every caller reads a stored session first: a mistyped path creates nothing.
    return await Store.open(store, create=False), True


async def resume(
    session_id: str,
    *,
    store: Store | str | None = None,
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
        store: Where it is stored.
        models: Model clients by name, added to (or replacing) the session's own.
        on_event: Called with every event as it happens.
        worker_id: This worker's lease id (default: host, process and a random part).
        lease_ttl_s: How long the lease lasts unless renewed (default
            ``$THINKTANK_LEASE_TTL`` or 30 s).

    Raises:
        UnknownSessionError: no such session.
        UsageError: another worker holds the session's lease (a run or resume of it
            is alive, or died less than the lease's time to live ago), or it already
            completed.
    """
    ttl = lease_ttl(lease_ttl_s)
    db, owned = await _open(store)
    try:
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
    finally:
        if owned:
            with anyio.CancelScope(shield=True):
                await db.close()


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
    recordings: dict[tuple[Any, ...], deque[StoredCall]] = {}
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
                recordings.setdefault((step.step_key, call.model_id), deque()).append(call)
    restart = Restart(
        session_id=stored.id,
        seed=seed,
        record_seed=False,
        extra_steps=extra,
        aliases=sinks,
        attempt_base={s.step_key: s.attempts for s in stored.steps},
        lost_calls=lost,
        wrap=lambda name, pooled: dataclasses.replace(
            pooled,
            client=RecordedClient(
                name,
                pooled.client.provider,
                recordings,
                by_attempt=False,
                fallback=pooled.client,
                reuse=True,
            ),
        ),
        origin={"kind": "resume", "session_id": stored.id},
        lease=lease,
    )
    return await run(
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


async def replay(
    session_id: str,
    *,
    store: Store | str | None = None,
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
        store: Where it is stored.
        synthesis: Re-merge every multi-model step with this method instead.
        threshold: Re-merge with this consensus threshold instead.
        live: Call the models again instead of serving the recording.
        record: Store the replay as a new session (default: when re-merging or live).
        models: Live model clients by name (live replays).
        on_event: Receives every event of the replay.
    """
    db, owned = await _open(store)
    try:
        stored = await db.get_session(session_id)
        spec = _spec_of(stored)
        remerge = synthesis is not None or threshold is not None
        if synthesis == "judge":
            raise UsageError(
                "re-merging with 'judge' needs a synthesizer call, which replay does not "
                "make; use majority, medoid, weighted_merge or union (or replay --live)"
            )
        steps = [
            s.model_copy(
                update={
                    k: v
                    for k, v in {"synthesis": synthesis, "consensus_threshold": threshold}.items()
                    if v is not None
                }
            )
            if len(spec.step_models(s)) > 1 and s.kind == "prompt"
            else s
            for s in spec.steps
        ]
        spec = spec.model_copy(
            update={
                "steps": steps,
                "parallel_execution": spec.parallel_execution.model_copy(update={"cache": False}),
            }
        )
        kind: Literal["recorded", "remerge", "live"] = (
            "live" if live else ("remerge" if remerge else "recorded")
        )
        recordings: dict[tuple[Any, ...], deque[StoredCall]] = {}
        for step in stored.steps:
            for call in sorted(step.calls, key=lambda c: (c.started_at, c.id)):
                key = (step.step_key, call.model_id, call.attempt)
                recordings.setdefault(key, deque()).append(call)
        restart = Restart(
            # A recorded replay (no re-merge) runs the stored, once validated graph.
            validated=kind == "recorded",
            origin={
                "kind": "replay",
                "session_id": stored.id,
                "replay": kind,
                "synthesis": synthesis,
                "threshold": threshold,
            },
        )
        clients: dict[str, ModelClient] | None = None
        if not live:
            names = {c.model_id for s in stored.steps for c in s.calls}
            names |= {m for s in spec.steps for m in [*spec.step_models(s), *s.extra_models()]}
            order = _sequences(stored.steps)
            clients = {
                name: RecordedClient(
                    name,
                    "replay",
                    recordings,
                    by_attempt=True,
                    # Every merge depends on the order answers arrive in: race, quorum
                    # and cascade stop on it, and ties go to the earliest answer.
                    order=order,
                )
                for name in names
            }
            restart.wrap = lambda name, pooled: PooledModel(client=pooled.client, retry=NO_RETRY)
        keep = record if record is not None else kind != "recorded"
        result = await run(
            spec,
            inputs=stored.inputs,
            store=db if keep else None,
            models={**(models or {}), **(clients or {})},
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
    finally:
        if owned:
            with anyio.CancelScope(shield=True):
                await db.close()


async def fork(
    session_id: str,
    *,
    step: str,
    prompt: str | None = None,
    models: list[str] | None = None,
    store: Store | str | None = None,
    clients: Mapping[str, ModelClient] | None = None,
    on_event: Listener | None = None,
) -> SessionResult:
    """A new session that reuses everything upstream of ``step`` and re-runs ``step``
    (with a new prompt and/or models) and its descendants.

    Raises:
        UsageError: the session has no such step.
    """
    db, owned = await _open(store)
    try:
        stored = await db.get_session(session_id)
        spec = _spec_of(stored)
        if step not in {s.id for s in spec.steps}:
            known = ", ".join(s.id for s in spec.steps)
            raise UsageError(f"session {stored.id} has no step {step!r} (steps: {known})")
        changed = []
        for s in spec.steps:
            if s.id == step:
                update: dict[str, Any] = {}
                if prompt is not None:
                    update["prompt"] = prompt
                if models:
                    update.update(
                        {"model": models[0], "models": []}
                        if len(models) == 1
                        else {"model": None, "models": list(models)}
                    )
                s = s.model_copy(update=update)
            changed.append(s)
        spec = SessionSpec.model_validate(
            {**spec.model_dump(), "steps": [s.model_dump() for s in changed]}
        )
        graph = StepGraph(spec)
        affected = {step} | graph.descendants(step)
        kept_parents = {
            s.step_key
            for s in stored.steps
            if s.status == "completed" and s.step_key not in affected
        }
        extra, sinks = _extra_steps(stored, keep=kept_parents)
        # Reused, not re-run: the fork spends nothing on these steps.
        seed = {
            s.step_key: SeedStep(status="completed", output=s.output)
            for s in stored.steps
            if s.step_key not in affected
            and (s.parent is None or s.parent in kept_parents)
            and s.status == "completed"
        }
        restart = Restart(
            seed=seed,
            extra_steps=extra,
            aliases=sinks,
            origin={"kind": "fork", "session_id": stored.id, "step": step},
        )
        return await run(
            spec,
            inputs=stored.inputs,
            store=db,
            models=clients,
            on_event=on_event,
            source=stored.source,
            restart=restart,
        )
    finally:
        if owned:
            with anyio.CancelScope(shield=True):
                await db.close()
