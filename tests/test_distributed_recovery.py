"""Workers killed with SIGKILL at random moments (#17): every session completes, no
call the store had recorded goes to the provider again, the store is whole at the end,
and a survivor starts recovering each dead worker within 30 s, exactly once.

Three workers run sessions on PostgreSQL; ten times, at a random moment, one of them is
killed and restarted under the same ``--name`` (a new executor, which must not take the
dead one's identity). The fake provider answers every call after ``DELAY_S`` unless the
caller hangs up first (a kill does: the request is recorded in ``FakeServer.hangups``).
"""

from __future__ import annotations

import bisect
import functools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

pytest.importorskip("dbos")

from tests.fakeserver import FakeServer, Fault
from tests.pg import pg_server, pg_url  # noqa: F401 - fixtures
from tests.pool import (
    DELAY_S,
    call_keys,
    check_store,
    config,  # noqa: F401 - fixture
    executor_id,
    fake,  # noqa: F401 - fixture
    fan_spec,
    submit_all,
    wait_all,
)
from tests.workerproc import WorkerProcess, start_worker, workers
from thinktank.distributed.executor import DistributedExecutor

SESSIONS = 300
KILLS = 10
TTL = "6"
"""The workers' time to live: a dead one is noticed within it plus a beat."""
ARGS = ("--concurrency", "8", "--ttl", TTL)
RECOVERY_LIMIT_S = 30.0
UNRECORDED_S = 2.0
"""How long before a kill an answered call may still have been unrecorded (in the
recorder's next group commit) and so legitimately sent again."""


@dataclass
class Chaos:
    """What the killing did: when, whom, and what the fake had seen by then."""

    kills: list[tuple[str, float]] = field(default_factory=list)
    """(executor id, monotonic time) of each kill."""
    recovery_s: dict[str, float] = field(default_factory=dict)
    """Seconds from each kill until a survivor said it recovered the dead worker."""
    seen: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, requests the fake had received), sampled."""
    every: list[WorkerProcess] = field(default_factory=list)
    """Every worker process started, the killed ones included."""

    def requests_at(self, when: float) -> int:
        """How many requests the fake had received at ``when`` (by the samples)."""
        i = bisect.bisect_right(self.seen, (when, float("inf")))
        return self.seen[i - 1][1] if i else 0

    def recovery_lines(self, eid: str) -> int:
        """How many workers said they recovered ``eid``."""
        line = f"of dead worker {eid} "
        return sum(w.output().count(line) for w in self.every)


async def _watch_recovery(chaos: Chaos, eid: str, killed_at: float) -> None:
    with anyio.move_on_after(RECOVERY_LIMIT_S * 2):
        while not chaos.recovery_lines(eid):  # noqa: ASYNC110 - other processes' logs
            await anyio.sleep(0.1)
        chaos.recovery_s[eid] = time.monotonic() - killed_at


async def _sample(chaos: Chaos, fake: FakeServer) -> None:  # noqa: F811
    while True:
        chaos.seen.append((time.monotonic(), len(fake.requests)))
        await anyio.sleep(0.05)


async def _kill_and_restart(
    chaos: Chaos, pool: list[WorkerProcess], db: str, tmp_path: Path, rng: random.Random
) -> None:
    """Ten times: wait a random moment, SIGKILL a random worker, start it again under
    its name (its log in a directory of its own)."""
    async with anyio.create_task_group() as watchers:
        for k in range(KILLS):
            await anyio.sleep(rng.uniform(0.5, 3.0))
            i = rng.randrange(len(pool))
            victim = pool[i]
            eid = executor_id(victim)
            victim.proc.kill()
            killed_at = time.monotonic()
            await anyio.to_thread.run_sync(victim.proc.wait)
            chaos.kills.append((eid, killed_at))
            watchers.start_soon(_watch_recovery, chaos, eid, killed_at)
            log_dir = tmp_path / f"restart-{k}"
            log_dir.mkdir()
            restart = functools.partial(start_worker, db, victim.name, *ARGS, log_dir=log_dir)
            pool[i] = await anyio.to_thread.run_sync(restart)
            chaos.every.append(pool[i])
            assert executor_id(pool[i]) != eid


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sessions_survive_workers_killed_at_random_moments(
    pg_url: str,  # noqa: F811
    fake: FakeServer,  # noqa: F811
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Ten SIGKILLs at random moments: every session completes; only calls cut off by
    a kill (or answered just before it, before they were recorded) are sent again;
    the store is whole; each dead worker is recovered once, within 30 s."""
    seed = random.randrange(2**32)
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    # The slow fault (not answer_delay_s) notices a caller that hangs up.
    fake.add_faults(*[Fault.slow(DELAY_S) for _ in range(SESSIONS * 8)])
    chaos = Chaos()

    async def main(pool: list[WorkerProcess]) -> dict[str, str]:
        async with DistributedExecutor(db=pg_url) as executor:
            ids = await submit_all(executor, fan_spec(config), SESSIONS)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_sample, chaos, fake)
                await _kill_and_restart(chaos, pool, pg_url, tmp_path, rng)
                statuses = await wait_all(executor, ids)
                tg.cancel_scope.cancel()
            return statuses

    names = ["w1", "w2", "w3"]
    with workers(pg_url, names, *ARGS, log_dir=tmp_path) as pool:
        chaos.every.extend(pool)
        statuses = anyio.run(main, pool)
    assert len(chaos.kills) == KILLS
    assert Counter(statuses.values()) == {"completed": SESSIONS}
    delays = sorted(chaos.recovery_s.values())
    print(f"recovery after a kill: {', '.join(f'{d:.1f}' for d in delays)} s")
    assert len(delays) == KILLS
    assert delays[-1] < RECOVERY_LIMIT_S
    # Two survivors look for dead workers at every beat: exactly one recovers each.
    assert [chaos.recovery_lines(eid) for eid, _ in chaos.kills] == [1] * KILLS
    _check_resent_only_around_kills(chaos, fake)
    check_store(pg_url, list(statuses))


def _check_resent_only_around_kills(chaos: Chaos, fake: FakeServer) -> None:  # noqa: F811
    """A call sent twice was first sent shortly before a kill: cut off, or answered
    and not yet recorded when the process died. One sent earlier was finished, and
    sending it again would be the bug."""
    windows = [
        (chaos.requests_at(at - DELAY_S - UNRECORDED_S), chaos.requests_at(at + 0.5))
        for _, at in chaos.kills
    ]
    first_sent: dict[tuple[str, str], list[int]] = {}
    for index, request in enumerate(list(fake.requests)):
        key = (str(request.model), str(request.json.get("messages")))
        first_sent.setdefault(key, []).append(index)
    resent = {key: at for key, at in first_sent.items() if len(at) > 1}
    stray = [
        (key[0], earlier)
        for key, at in resent.items()
        for earlier in at[:-1]
        if not any(lo <= earlier < hi for lo, hi in windows)
    ]
    print(
        f"calls sent again: {sum(len(at) - 1 for at in resent.values())};"
        f" cut off by a kill: {len(fake.hangups)}; distinct calls: {len(call_keys(fake))}"
    )
    assert not stray, f"finished calls sent again (model, request index): {stray}"
