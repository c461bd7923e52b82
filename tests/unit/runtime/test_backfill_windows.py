"""The dispatcher's half of DBLog: what survives a chunk's watermark window."""

from __future__ import annotations

from datetime import datetime, timezone

from pulse.config import Settings
from pulse.model import Change, Position
from pulse.model_arrow import RAW_SCHEMA
from pulse.runtime.backfill import BackfillManager, BackfillSpec, Invisible, _Window
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.memory import MemorySink

TS = datetime(2024, 8, 1, tzinfo=timezone.utc)


def manager() -> BackfillManager:
    """The manager of a real pipeline that was not started (no database, no thread): its dispatcher half."""
    pipeline = Pipeline(Settings(database={"slot": "s", "state_schema": "pulse"}), [MemorySink()], clock=lambda: TS)
    return BackfillManager(pipeline)


def row(i: int, duration: int = 1000) -> dict:
    return {"id": i, "content_id": None, "user_id": None, "event_type": "play", "event_ts": TS,
            "duration_ms": duration, "device": "ios", "raw_payload": None}


def chunk(*ids: int):
    import pyarrow as pa

    us = int(TS.timestamp() * 1_000_000)
    return pa.Table.from_pylist([{"id": i, "content_id": None, "user_id": None, "event_type": "play", "event_us": us,
                                  "event_ts_bad": False, "duration_ms": 1000, "device": "ios", "raw_payload": None}
                                 for i in ids], schema=RAW_SCHEMA)


def mark(kind: str, chunk: int = 1, lsn: int = 100, seq: int = 1) -> Change:
    return Change("backfill_watermarks", "update", {"run_id": "r", "chunk": chunk, "kind": kind}, None,
                  Position(lsn, seq), TS)


def event_change(i: int, op: str = "update") -> Change:
    return Change("engagement_events", op, row(i) if op != "delete" else None, {"id": i}, Position(90, 1), TS)


def test_rows_changed_between_the_watermarks_are_dropped_and_the_rest_take_the_high_position() -> None:
    m = manager()
    w = m.windows[("r", 1)] = _Window("r", 1)
    m.observe(event_change(2), xid=7)  # before the low watermark, by a transaction the read saw: not dropped
    assert m.on_watermark(mark("low", lsn=50)) is None
    w.invisible = Invisible(xmax=10, xip={8})
    w.rows = chunk(1, 2, 3, 4)
    m.observe(event_change(3))
    m.observe(event_change(4, "delete"))
    out = m.on_watermark(mark("high", lsn=200, seq=1))
    assert out.first == Position(200, 2) and out.position == Position(200, 3)
    table = out.table()
    assert table.column("event_id").to_pylist() == [1, 2]
    assert table.column("source_seq").to_pylist() == [2, 3] and table.column("backfill").to_pylist() == [True] * 2
    events = out.events()
    assert [e.event_id for e in events] == [1, 2]
    assert events[0].event_ts == TS
    assert [e.position for e in events] == [Position(200, 2), Position(200, 3)]
    assert all(e.backfill and e.op == "insert" for e in events)
    assert w.superseded == 2 and w.emitted.is_set() and ("r", 1) not in m.windows


def test_two_open_windows_of_one_run_each_drop_only_the_changes_between_their_own_watermarks() -> None:
    # The job reads chunk 2 while chunk 1's high watermark travels the stream.
    m = manager()
    first = m.windows[("r", 1)] = _Window("r", 1)
    second = m.windows[("r", 2)] = _Window("r", 2, rows=chunk(5, 6, 7), invisible=Invisible(xmax=10, xip=set()))
    assert m.on_watermark(mark("low", chunk=1, lsn=50)) is None
    first.rows = chunk(1, 2, 3)
    m.observe(event_change(2), xid=9)  # inside window 1 only: window 2's low has not passed yet
    out1 = m.on_watermark(mark("high", chunk=1, lsn=60))
    assert out1.table().column("event_id").to_pylist() == [1, 3]
    m.observe(event_change(6), xid=9)  # between window 1's high and window 2's low, seen by chunk 2's read: kept
    assert m.on_watermark(mark("low", chunk=2, lsn=70)) is None
    m.observe(event_change(7))
    out2 = m.on_watermark(mark("high", chunk=2, lsn=80))
    assert out2.table().column("event_id").to_pylist() == [5, 6]
    assert first.superseded == 1 and second.superseded == 1 and not m.windows
    assert out1.position < out2.first


def test_watermarks_of_other_chunks_or_runs_are_ignored() -> None:
    m = manager()
    m.windows[("r", 2)] = _Window("r", 2, rows=chunk(1))
    assert m.on_watermark(mark("high", chunk=1)) is None  # an older chunk replayed after a restart
    other = mark("high", chunk=2)
    other = other._replace(new={**other.new, "run_id": "someone-else"})
    assert m.on_watermark(other) is None
    # A high watermark without its low one (a restart between them) emits nothing.
    assert m.on_watermark(mark("high", chunk=2)) is None


def test_run_id_depends_on_the_arguments_only() -> None:
    a = BackfillSpec(since=TS, sinks=("bigquery", "external"), chunk_size=10)
    b = BackfillSpec(since=TS, sinks=("external", "bigquery"), chunk_size=99, rate_limit=5)
    c = BackfillSpec(since=TS, sinks=("bigquery",))
    assert a.run_id("s") == b.run_id("s")  # chunk size and rate may change between reruns
    assert a.run_id("s") != c.run_id("s") != a.run_id("other-slot")


def test_a_change_before_the_low_watermark_by_a_transaction_the_read_did_not_see_drops_the_row() -> None:
    # Its commit record precedes the low watermark, but it was not yet visible
    # when the chunk's snapshot was taken (between its WAL flush and the commit
    # log): the chunk holds the row from before it, so the stream's value wins.
    m = manager()
    w = m.windows[("r", 1)] = _Window("r", 1)
    m.observe(event_change(1), xid=8)   # in the snapshot's in-progress list
    m.observe(event_change(2), xid=12)  # at or after its xmax
    m.observe(event_change(3), xid=7)   # seen by the snapshot
    m.observe(event_change(4), xid=None)  # unknown: the stream's value wins
    assert m.on_watermark(mark("low", lsn=50)) is None
    w.invisible = Invisible(xmax=(1 << 32) + 10, xip={(1 << 32) + 8})  # xid8 of epoch 1: compared modulo 2^32
    w.rows = chunk(1, 2, 3, 4, 5)
    out = m.on_watermark(mark("high", lsn=200))
    assert out.table().column("event_id").to_pylist() == [3, 5]
    assert w.superseded == 3


def test_invisible_compares_xids_modulo_two_to_the_32() -> None:
    inv = Invisible(xmax=(3 << 32) + 5, xip={(3 << 32) + 1})
    assert 1 in inv and 5 in inv and 6 in inv and (5 + (1 << 30)) in inv
    assert 4 not in inv and 2 not in inv
    # Just below xmax across the 32-bit wrap: seen.
    wrap = Invisible(xmax=(2 << 32) + 3, xip=set())
    assert 0xFFFFFFFF not in wrap and 3 in wrap and 2 not in wrap


def test_a_window_remembers_only_changes_of_ids_its_chunk_can_hold() -> None:
    # Live inserts during a snapshot have ids above the run's max_id, and
    # changes below the run's last_id belong to chunks already emitted: a
    # window keeps neither, so its memory does not grow with the live stream.
    m = manager()
    w = m.windows[("r", 1)] = _Window("r", 1, after=10, upto=20)
    for i in (5, 10, 11, 20, 21, 10_000):
        m.observe(event_change(i), xid=3)
    assert [i for i, _ in w.early] == [11, 20]
    assert m.on_watermark(mark("low", lsn=50)) is None
    for i in range(21, 5_021):  # a burst of live inserts
        m.observe(event_change(i, "insert"))
    m.observe(event_change(15))
    assert w.changed == {15}
    w.invisible = Invisible(xmax=10, xip={3})
    w.rows = chunk(11, 15, 19, 20)
    assert m.on_watermark(mark("high", lsn=200)).table().column("event_id").to_pylist() == [19]
