"""The board's aggregate of a table of inserts equals the one of its events, cell for cell and in order.

The oracle is `Aggregate.add_events` on the events `EventChunk.events()`
builds (the row path the Redis sink's integration tests check against SQL);
the columnar side is `Aggregate.add_table` on the same chunk's `table()`.
Rows come from the generator and from the odd draws of the external
encoder's test: null and unknown content, null devices and event types,
negative and null durations, timestamps from year 1 to 9999 (beyond 2**53
microseconds, where float seconds lose precision), future-dated events.
"""

from __future__ import annotations

import random
from datetime import timezone

import pytest

from pulse.model import Position
from pulse.sinks.redis.board import Aggregate
from pulse.transform.columnar import EventChunk
from pulse.transform.content_cache import ContentCache
from tests.unit.sinks.chunk_rows import (
    NOW,
    _cache,
    _catalogue,
    _chunk,
    _generated_rows,
    _odd_rows,
)

UTC = timezone.utc


def _state(agg: Aggregate) -> dict:
    return {
        "content": list(agg.content.items()), "devices": list(agg.devices.items()),
        "event_types": list(agg.event_types.items()), "metadata": list(agg.metadata.items()),
        "counters": (agg.events, agg.uncorrectable, agg.corrections, agg.null_content, agg.newest_event_ms,
                     agg.newest_commit_ms, agg.last),
        "script_args": agg.script_args(),
    }


def _both(chunks: list[EventChunk], now_s: float, bucket_s: int = 10, skew: int = 60) -> tuple[dict, dict]:
    by_events, by_table = Aggregate(bucket_s, skew), Aggregate(bucket_s, skew)
    for chunk in chunks:
        by_events.add_events(chunk.events(), now_s)
        by_table.add_table(chunk.table(), now_s)
    return _state(by_events), _state(by_table)


@pytest.mark.parametrize("seed", range(6))
def test_a_table_aggregates_as_its_events_do(seed):
    rng = random.Random(seed)
    items = _catalogue(rng)
    cache = _cache(items, rng)
    cids = [c.id for c in items]
    chunks = []
    for round_ in range(3):
        rows = _generated_rows(rng.randrange(200, 900), rng, items, 1_000_000 * round_)
        rows += _odd_rows(rng.randrange(50, 300), rng, cids, 1_000_000 * round_ + 500_000)
        rng.shuffle(rows)
        chunks.append(_chunk(rows, cache, rng, backfill=False))
    # now: among the generated events (2023-11), so some are future-dated beyond the skew
    now_s = rng.choice([1_700_000_300.0, NOW.timestamp()])
    by_events, by_table = _both(chunks, now_s, bucket_s=rng.choice([5, 10, 60]))
    assert by_table == by_events
    assert len(by_events["content"]) > 50 and by_events["counters"][3] > 0  # cells, null content


def test_buckets_at_microsecond_edges_and_beyond_2_53_microseconds():
    rng = random.Random(11)
    items = _catalogue(rng)
    cache = _cache(items, rng)
    edges = []
    for base in (1_700_000_000_000_000, 0, -10_000_000, 2**53 - 5, 2**53 + 7, 253402300700_000_000):
        for d in (-1, 0, 1, 9_999_999, 10_000_000):
            edges.append(base - base % 10_000_000 + d)
    rows = [{"id": i + 1, "content_id": items[i % 5].id, "user_id": None, "event_type": "play", "event_us": us,
             "event_ts_bad": False, "duration_ms": 1000, "device": "ios", "raw_payload": None}
            for i, us in enumerate(edges)]
    by_events, by_table = _both([_chunk(rows, cache, rng, backfill=False)], 2.6e11)
    assert by_table == by_events


def test_an_empty_table_and_a_slice():
    rng = random.Random(4)
    items = _catalogue(rng)
    cache = _cache(items, rng)
    empty = _chunk([], ContentCache({}), rng, backfill=False)
    agg = Aggregate(10, 60)
    agg.add_table(empty.table(), NOW.timestamp())
    assert _state(agg) == _state(Aggregate(10, 60))
    rows = _generated_rows(400, rng, items, 1)
    chunk = _chunk(rows, cache, rng, backfill=False)
    part = chunk.after(Position(chunk.lsn, chunk.first_seq + 99))
    by_events, by_table = _both([part], NOW.timestamp())
    assert by_table == by_events and by_table["counters"][0] == 300
