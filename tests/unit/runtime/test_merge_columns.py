"""Consecutive chunks waiting for a columnar sink reach it as one table, in order, bounded in rows."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pyarrow as pa

from pulse.config import Settings
from pulse.model import ZERO, Position
from pulse.runtime.pipeline import SinkWorker, _merge_columns, _runs
from pulse.runtime.progress import AckTracker
from pulse.sinks.memory import MemorySink
from pulse.model_arrow import RAW_SCHEMA
from pulse.transform.columnar import EventChunk
from pulse.transform.content_cache import ContentCache
from tests.factories import make_event

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _chunk(lsn: int, n: int, start_id: int = 1, backfill: bool = False, targets=None) -> EventChunk:
    raw = pa.Table.from_pylist([{"id": start_id + i, "content_id": "c", "user_id": "u", "event_type": "play",
                                 "event_us": 0, "event_ts_bad": False, "duration_ms": 1, "device": "ios",
                                 "raw_payload": "{}"} for i in range(n)], schema=RAW_SCHEMA)
    return EventChunk(raw, lsn=lsn, first_seq=0, commit_ts=NOW, now=NOW, cache=ContentCache({}), backfill=backfill,
                      targets=targets)


def test_consecutive_chunks_merge_up_to_the_row_bound_and_never_across_events_or_kinds():
    a, b, c, d = _chunk(10, 3), _chunk(11, 4), _chunk(12, 5), _chunk(13, 2)
    ev = make_event(1, Position(12, 9))
    bf = _chunk(14, 2, backfill=True)
    other = _chunk(15, 2, targets=("x",))
    parts = _merge_columns(_runs([a, b, ev, c, d, bf, other]), max_rows=8)
    assert parts == [(a, b), [ev], (c, d), bf, other]  # an event, a backfill chunk, other targets: no merge
    assert _merge_columns(_runs([a, b, c, d]), max_rows=9) == [(a, b), (c, d)]
    assert _merge_columns(_runs([a, b, c, d]), max_rows=100) == [(a, b, c, d)]
    assert _merge_columns(_runs([a]), max_rows=1) == [a]


def test_a_columnar_sink_gets_queued_chunks_as_one_write_in_order():
    sink = MemorySink(columns=True)
    worker = SinkWorker(sink, sink.open(), AckTracker({sink.name: ZERO}), Settings(), on_terminal=lambda *_: None)
    chunks = [_chunk(100 + k, 300, start_id=1 + 300 * k) for k in range(5)]
    for chunk in chunks:  # all waiting before the worker starts: one queue read
        assert worker.queue.put_many([chunk], chunk.size_hint(), timeout=5)
    worker.start()
    deadline = threading.Event()
    for _ in range(500):
        if sink.count == 1500:
            break
        deadline.wait(0.01)
    worker.draining.set()
    worker.join(10)
    assert sink.count == 1500 and sink.batches == 1
    table = sink.tables[0]
    assert table.column("event_id").to_pylist() == list(range(1, 1501))
    assert worker.durable == chunks[-1].position
