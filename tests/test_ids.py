"""Row ids: canonical UUIDv7 text that sorts by creation time."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from thinktank import _ids as ids
from thinktank._ids import new_id


def test_new_ids_are_canonical_version_7_uuids() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_carry_their_millisecond_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    first = new_id()
    time.sleep(0.003)
    second = new_id()
    after = time.time_ns() // 1_000_000
    stamp = uuid.UUID(first).int >> 80
    assert before <= stamp <= after
    assert first < second


def test_within_a_millisecond_ids_sort_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids made a quarter of a microsecond or more apart sort in the order made, also
    inside one millisecond."""
    start = (time.time_ns() // 1_000_000) * 1_000_000
    clock = iter(range(start, start + 1_000_000, 250))
    monkeypatch.setattr(ids.time, "time_ns", lambda: next(clock))
    made = [new_id() for _ in range(4000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert {uuid.UUID(t).int >> 80 for t in made} == {start // 1_000_000}


def test_threads_never_share_an_id(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time_ns()
    monkeypatch.setattr(ids.time, "time_ns", lambda: now)
    made: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        for _ in range(20_000):
            out.append(new_id())

    threads = [threading.Thread(target=work, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [text for out in made for text in out]
    assert len(set(everything)) == len(everything) == 80_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_replay_its_parents_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time_ns()
    monkeypatch.setattr(ids.time, "time_ns", lambda: now)
    new_id()  # the parent has a millisecond under way
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert child != new_id()
    uuid.UUID(child)
