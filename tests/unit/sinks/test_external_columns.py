"""The columnar encoder of the external sink writes what the per-event encoder writes, byte for byte.

The oracle is `encode_event` on the events `EventChunk.events()` builds (the
row path every other external sink test trusts); the columnar side is
`encode_table` on the same chunk's `table()` (`enrich_table`). Rows come
from the generator (sessions, popularity, the anomaly injector at a high
rate) and from a seeded draw of odd values the generator does not make:
escapes and control characters in every string, payloads that are not flat
objects or not JSON, durations and timestamps at the edges.
"""

from __future__ import annotations

import random
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest

from pulse.generator.events import EventFactory
from pulse.model import Batch, Position
from pulse.sinks.external.columns import encode_table, fallback_mask
from pulse.sinks.external.local import build_frame, build_frame_columns, parse_frame
from pulse.sinks.external.sink import encode_event
from pulse.transform.columnar import EventChunk
from pulse.transform.content_cache import ContentCache
from tests.unit.sinks.chunk_rows import (
    UTC,
    _cache,
    _catalogue,
    _chunk,
    _generated_rows,
    _jsonb_text,
    _odd_rows,
)

SOURCE = "pulse/test"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _assert_same(chunk: EventChunk, lanes: int) -> np.ndarray:
    table = chunk.table()
    by_rows = [encode_event(e, SOURCE) for e in chunk.events()]
    cols = encode_table(table, SOURCE)
    assert len(cols) == len(by_rows)
    parts = [p.decode() for p in cols.parts()]
    ces = cols.ce_id.to_pylist()
    cids = cols.content_id.to_pylist()
    for k, e in enumerate(by_rows):
        assert parts[k].encode() == e.part, (k, table.slice(k, 1).to_pylist())
        assert (ces[k], int(cols.attrs_len[k]), int(cols.lane_key[k]), cids[k]) == (
            e.ce_id, e.attrs_len, e.lane_key, e.content_id), k
        assert (int(cols.lsn[k]), int(cols.seq[k]), int(cols.event_id[k])) == (e.lsn, e.seq, e.event_id), k
    assert cols.slice(1, 40).events() == by_rows[1:40]  # what an overflowing outbox dead-letters
    frame = build_frame_columns(cols, chunk.position, 1722600000.5, lanes)
    assert frame == build_frame(by_rows, chunk.position, 1722600000.5, lanes)
    parse_frame(frame[12:], lanes, None)  # and it reads back
    return fallback_mask(table)


@pytest.mark.parametrize("seed", range(6))
def test_columns_encode_as_events_do(seed):
    rng = random.Random(seed)
    items = _catalogue(rng)
    cache = _cache(items, rng)
    cids = [c.id for c in items]
    total = common = 0
    for round_ in range(4):
        rows = _generated_rows(rng.randrange(200, 900), rng, items, 1_000_000 * round_)
        rows += _odd_rows(rng.randrange(50, 300), rng, cids, 1_000_000 * round_ + 500_000)
        rng.shuffle(rows)
        bad = _assert_same(_chunk(rows, cache, rng, backfill=rng.random() < 0.5), rng.choice([1, 2, 3, 8]))
        total += len(bad)
        common += int((~bad).sum())
    assert total >= 1000
    assert common > total // 2  # the kernels do take most rows (generated rows are mostly plain)


def test_plain_generated_rows_take_no_fallback():
    rng = random.Random(7)
    items = [c for c in _catalogue(rng) if "\t" not in c.title]
    cache = _cache(items, rng)
    factory = EventFactory([c for c in items if c.length_seconds], rng, users=100)
    events = next(factory.history(2000, 1_700_000_000_000, 1_700_000_600_000, chunk_rows=2000))
    rows = [{"id": i + 1, "content_id": ev.content_id, "user_id": ev.user_id, "event_type": ev.event_type,
             "event_us": ev.event_ts_ms * 1000, "event_ts_bad": False, "duration_ms": ev.duration_ms,
             "device": ev.device, "raw_payload": _jsonb_text(ev.raw_payload)} for i, ev in enumerate(events)]
    bad = _assert_same(_chunk(rows, cache, rng, backfill=False), 4)
    assert not bad.any()


def test_a_chunk_of_only_fallback_rows():
    rng = random.Random(5)
    items = _catalogue(rng)
    rows = [{**r, "device": "roku\nbox"} for r in _odd_rows(200, rng, [c.id for c in items], 1)]
    assert _assert_same(_chunk(rows, _cache(items, rng), rng, backfill=False), 2).all()


def test_empty_table():
    rng = random.Random(1)
    chunk = _chunk([], ContentCache({}), rng, backfill=True)
    cols = encode_table(chunk.table(), SOURCE)
    assert len(cols) == 0
    assert build_frame_columns(cols, Position(5, 0), 1.0, 4) == build_frame([], Position(5, 0), 1.0, 4)


def test_sliced_table():
    """A table that is a slice of a larger one (offsets inside Arrow buffers) encodes the same."""
    rng = random.Random(3)
    items = _catalogue(rng)
    cache = _cache(items, rng)
    rows = _generated_rows(300, rng, items, 1) + _odd_rows(100, rng, [c.id for c in items], 10_000)
    chunk = _chunk(rows, cache, rng, backfill=True).after(Position(0, 0))
    part = chunk.after(Position(chunk.lsn, chunk.first_seq + 57))
    assert part.table().num_rows == len(rows) - 58
    _assert_same(part, 3)
    whole = encode_table(chunk.table().slice(58), SOURCE)
    assert whole.parts() == encode_table(part.table(), SOURCE).parts()


# -- the sink: write_columns keeps write's contract -----------------------------------


class _Frames:
    """A FrameLog that keeps what is appended."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, Position]] = []

    def append(self, frame: bytes, last: Position) -> None:
        self.frames.append((frame, last))

    def bytes(self) -> int:
        return sum(len(f) for f, _ in self.frames)

    def events(self, lanes: int) -> list:
        out = []
        for frame, _last in self.frames:
            _info, chunks = parse_frame(frame[12:], lanes, None)
            out += [c.event(k) for group in chunks.values() for c in group for k in range(len(c))]
        return sorted(out, key=lambda e: (e.lsn, e.seq))


class _Flow:
    error = None
    lane_count = 3
    inflight_bytes = 0
    delivered = Position(0, 0)

    def __init__(self) -> None:
        self.appended: list[tuple[Position, int]] = []

    def appended_frame(self, last: Position, held: int) -> None:
        self.appended.append((last, held))


def _sink(outbox: str = "local"):
    from pulse.config import DatabaseConfig, ExternalConfig
    from pulse.sinks.external.sink import ExternalSink

    sink = ExternalSink(ExternalConfig(url="http://127.0.0.1:9/", outbox=outbox, source=SOURCE), DatabaseConfig())
    sink.frames, sink.flow = _Frames(), _Flow()  # the write contract without a delivery thread
    return sink


def _a_chunk(seed: int) -> EventChunk:
    rng = random.Random(seed)
    items = _catalogue(rng)
    rows = _generated_rows(700, rng, items, 1) + _odd_rows(100, rng, [c.id for c in items], 10_000)
    return _chunk(rows, _cache(items, rng), rng, backfill=True)


@pytest.mark.parametrize("outbox", ["local", "kafka"])
def test_write_columns_appends_what_write_appends_in_frames_of_at_most_frame_events(monkeypatch, outbox):
    import pulse.sinks.external.sink as X
    from pulse.model import Batch

    monkeypatch.setattr(X, "FRAME_EVENTS", 300)
    chunk = _a_chunk(11)
    by_rows, by_cols = _sink(outbox), _sink(outbox)
    assert by_cols.accepts_columns
    by_rows.write(Batch(tuple(chunk.events()), backfill=True))
    by_cols.write_columns(chunk.table(), chunk.first, chunk.position)
    assert by_rows._appended == by_cols._appended == chunk.position
    assert [len(f) for f, _ in by_cols.frames.frames] and len(by_cols.frames.frames) == 3  # 800 rows / 300
    assert [held for _, held in by_cols.flow.appended] == [300, 300, 200]
    assert by_cols.flow.appended[-1][0] == chunk.position
    assert by_cols.frames.events(3) == by_rows.frames.events(3)


def test_frames_are_bounded_by_a_quarter_of_the_outbox_and_hold_every_row_once():
    """A frame larger than the outbox's bound could never be appended in pause mode (it waits for room)."""
    chunk = _a_chunk(13)
    by_rows = _sink()
    by_rows.write(Batch(tuple(chunk.events()), backfill=True))
    sink = _sink()
    sink.cfg = sink.cfg.model_copy(update={"outbox_max_bytes": 200_000})
    sink.frames.bytes = lambda: 0  # delivered as soon as appended: the outbox never fills
    sink.write_columns(chunk.table(), chunk.first, chunk.position)
    sizes = [len(f) for f, _ in sink.frames.frames]
    held = [h for _, h in sink.flow.appended]
    assert len(sizes) > 3 and sum(held) == chunk.table().num_rows
    assert all(size <= 50_000 * 1.3 or h == 1 for size, h in zip(sizes, held))  # texts <= 50,000 + the frame's ids
    assert sink.flow.appended[-1][0] == chunk.position
    assert sink.frames.events(3) == by_rows.frames.events(3)


def test_frame_ends():
    from pulse.sinks.external.sink import frame_ends

    class Cols:
        def __init__(self, sizes):
            self.part_sep = pa.array(["x" * k for k in sizes], pa.large_string())

        def __len__(self):
            return len(self.part_sep)

    assert frame_ends(Cols([]), 5, 100) == [0]
    assert frame_ends(Cols([10] * 12), 5, 1000) == [5, 10, 12]
    assert frame_ends(Cols([10] * 12), 5, 25) == [2, 4, 6, 8, 10, 12]
    assert frame_ends(Cols([10, 500, 10, 10]), 5, 25) == [1, 2, 4]  # a row above the bound goes alone


def test_write_columns_skips_what_is_already_appended():
    from pulse.model import Batch

    chunk = _a_chunk(12)
    events = chunk.events()
    sink, reference = _sink(), _sink()
    reference.write(Batch(tuple(events)))
    sink.write(Batch(tuple(events[:321])))  # a restart, or a retry after the first part was durable
    assert sink.write_columns(chunk.table(), chunk.first, chunk.position) == chunk.position
    assert sink.frames.events(3) == reference.frames.events(3)  # the rest once, nothing twice
    frames = len(sink.frames.frames)
    assert sink.write_columns(chunk.table(), chunk.first, chunk.position) == chunk.position  # a retry: nothing
    assert len(sink.frames.frames) == frames


def test_the_postgres_outbox_takes_events():
    assert not _sink("postgres").accepts_columns


def test_the_digests_in_c_and_in_hashlib_agree(monkeypatch):
    """`_wire.sha256_many` (the common path) against hashlib, on lengths around the block edges."""
    import hashlib

    from pulse.sinks.external import columns as X
    from pulse.source import native

    rng = random.Random(9)
    texts = ["".join(rng.choice("ab\u00e9\u2603") for _ in range(rng.choice([0, 1, 55, 56, 63, 64, 65, 119, 120,
                                                                             rng.randrange(0, 3000)])))
             for _ in range(500)]
    states = pa.array(["x"] * 7 + texts, pa.large_string()).slice(7)  # an offset into the buffers, too
    expected = b"".join(hashlib.sha256(t.encode()).digest() for t in texts)
    assert native.module() is not None and hasattr(native.module(), "sha256_many"), "_wire was not rebuilt"
    assert X._sha256_rows(states) == expected
    monkeypatch.setattr(native, "module", lambda: None)
    assert X._sha256_rows(states) == expected
    assert X._digests(states).to_pylist() == [hashlib.sha256(t.encode()).hexdigest()[:20] for t in texts]


def test_the_joins_in_c_and_in_arrow_agree(monkeypatch):
    """`_wire.join_rows` (the common path) against Arrow's binary_join_element_wise, on whole chunks and slices."""
    from pulse.sinks.external import columns as X
    from pulse.source import native

    assert native.module() is not None and hasattr(native.module(), "join_rows"), "_wire was not rebuilt"
    a = pa.array(["x", "", "é🎧", "yz", "w"], pa.large_string()).slice(1)
    b = pa.array(["1", "22", "", "4444"], pa.string())
    assert X._join("<", a, ",", b, ">").to_pylist() == ["<,1>", "<é🎧,22>", "<yz,>", "<w,4444>"]
    assert X._join("[", a.slice(4), "]").to_pylist() == []
    nulls = pa.array(["p", None, "q", "r"], pa.large_string())
    assert X._join("<", nulls, ">").to_pylist() == ["<p>", None, "<q>", "<r>"]  # Arrow's path: null in, null out
    chunk = _a_chunk(14)
    with_c = encode_table(chunk.table(), SOURCE)
    monkeypatch.setattr(native, "module", lambda: None)
    with_arrow = encode_table(chunk.table(), SOURCE)
    assert with_c.parts() == with_arrow.parts() and with_c.ce_id.to_pylist() == with_arrow.ce_id.to_pylist()
    assert with_c.attrs_len.tolist() == with_arrow.attrs_len.tolist()
