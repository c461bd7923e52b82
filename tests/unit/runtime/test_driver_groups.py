"""The driver's groups: consecutive chunks waiting for a sink reach it in as few writes as allowed, in order.

Columnar chunks for a sink that takes columns: one table, bounded in rows. Row chunks (and any chunk for
a sink that takes events): one run of events. Never across backfill and live rows, nor two targets.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pyarrow as pa

from pulse.config import Settings
from pulse.model import ZERO, Position
from pulse.runtime.driver import SinkDriver
from pulse.runtime.pipeline import SinkWorker
from pulse.runtime.progress import AckTracker
from pulse.sinks.memory import MemorySink
from pulse.model_arrow import RAW_SCHEMA
from pulse.transform.columnar import EventChunk
from pulse.transform.content_cache import ContentCache
from pulse.transform.rows import RowChunk
from pulse.model import Change

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _chunk(lsn: int, n: int, start_id: int = 1, backfill: bool = False, targets=None) -> EventChunk:
    raw = pa.Table.from_pylist([{"id": start_id + i, "content_id": "c", "user_id": "u", "event_type": "play",
                                 "event_us": 0, "event_ts_bad": False, "duration_ms": 1, "device": "ios",
                                 "raw_payload": "{}"} for i in range(n)], schema=RAW_SCHEMA)
    return EventChunk(raw, lsn=lsn, first_seq=0, commit_ts=NOW, now=NOW, cache=ContentCache({}), backfill=backfill,
                      targets=targets)


def _rows(lsn: int, *ids: int) -> RowChunk:
    changes = [Change("engagement_events", "insert", {"id": i, "content_id": "c", "user_id": "u", "event_type": "play",
                                                      "event_ts": NOW, "duration_ms": 1, "device": "ios",
                                                      "raw_payload": None}, None, Position(lsn, k), NOW)
               for k, i in enumerate(ids, start=1)]
    return RowChunk(changes, ContentCache({}), NOW)


def _plan(columns: bool, chunks, monkeypatch, max_rows: int = 10_000):
    monkeypatch.setattr("pulse.runtime.driver.COLUMNS_MERGE_ROWS", max_rows)
    driver = SinkDriver(MemorySink(columns=columns), batch_max=500, stopping=lambda: False)
    return [(columnar, tuple(group)) for columnar, group in driver.plan(chunks)]


def test_consecutive_chunks_merge_up_to_the_row_bound_and_never_across_rows_or_kinds(monkeypatch):
    a, b, c, d = _chunk(10, 3), _chunk(11, 4), _chunk(12, 5), _chunk(13, 2)
    rows = _rows(12, 1)
    bf = _chunk(14, 2, backfill=True)
    other = _chunk(15, 2, targets=("x",))
    parts = _plan(True, [a, b, rows, c, d, bf, other], monkeypatch, max_rows=8)
    # a row chunk, a backfill chunk, other targets: no merge
    assert parts == [(True, (a, b)), (False, (rows,)), (True, (c, d)), (True, (bf,)), (True, (other,))]
    assert _plan(True, [a, b, c, d], monkeypatch, max_rows=9) == [(True, (a, b)), (True, (c, d))]
    assert _plan(True, [a, b, c, d], monkeypatch, max_rows=100) == [(True, (a, b, c, d))]
    assert _plan(True, [a], monkeypatch, max_rows=1) == [(True, (a,))]


def test_a_sink_of_events_gets_consecutive_live_chunks_of_either_kind_as_one_run(monkeypatch):
    a, r1, b, r2 = _chunk(10, 3), _rows(11, 1, 2), _chunk(12, 2, start_id=3), _rows(13, 5)
    bf = _chunk(14, 2, backfill=True)
    assert _plan(False, [a, r1, b, r2, bf], monkeypatch) == [(False, (a, r1, b, r2)), (False, (bf,))]


def test_a_sink_of_events_gets_them_in_order_in_batches_of_batch_max():
    sink = MemorySink()
    driver = SinkDriver(sink, batch_max=4, stopping=lambda: False)
    chunks = [_chunk(10, 3), _rows(11, 4, 5), _chunk(12, 3, start_id=6)]
    assert driver.write(chunks) == chunks[-1].position
    assert [e.event_id for e in sink.events] == list(range(1, 9))
    assert sink.batches == 2 and driver.written == 8


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
