"""Row ids: canonical UUIDv7 text that sorts by creation time."""

from __future__ import annotations

import time
import uuid

from thinktank.ids import new_id, new_ids


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


def test_batches_of_ids_are_valid_distinct_and_increasing() -> None:
    batches = [new_ids(n) for n in (0, 1, 5, 3000)] + [new_ids(50) for _ in range(200)]
    assert [len(b) for b in batches[:4]] == [0, 1, 5, 3000]
    everything = [text for batch in batches for text in batch]
    assert len(set(everything)) == len(everything)
    for batch in batches:
        assert batch == sorted(batch)
        for text in batch:
            parsed = uuid.UUID(text)
            assert str(parsed) == text
            assert parsed.version == 7
            assert parsed.variant == uuid.RFC_4122
