"""Enrichment on columns: a chunk of inserts as one Arrow table, column by column.

The warehouse path of a backfill (issue: >= 200k rows/s) cannot afford a
Python object per row. A snapshot or backfill chunk, read with COPY
(`pulse.source.chunks`), and the native reader's live runs of inserts
(`pulse.source.native`) arrive as tables of `model_arrow.RAW_SCHEMA`. Both
are enriched here with vectorised kernels into `model_arrow.ENRICHED_SCHEMA`
(the columnar form of `EnrichedEvent`, which the BigQuery sink stores as it is). The
rules are those of `enrich.py`, to the digit: `tests/unit/transform/
test_columnar.py` compares both on the same rows, odd ones included.

Two details that keep them equal:

- metrics are computed in the same arithmetic: `engagement_seconds` as the
  float `duration_ms / 1000`, `engagement_pct` from the integer
  hundredths rounded half away from zero, each then cast to NUMERIC's
  decimal(38, 9) as `to_arrow` does;
- an `event_ts` Python cannot hold (infinity, BC, year > 9999) is NULL and
  flagged, decided where the value still exists: in SQL (`_TS_OK`) for CSV,
  in the binary parser, or by the native reader, which hands such rows to
  the Python decoder.

Row sinks (the external system) still get `EnrichedEvent`s: `raw_rows`
turns the same parsed chunk into the dicts `enrich_row` takes.

Columns beyond the known ones take the row path, for every sink:

- a chunk read from a table with extra columns (`source.chunks.read_extra`: the catalog
  is checked after each chunk's COPY, and the extra columns of the chunk's
  ids are read as text by a second query) carries them as `extra:<name>`
  columns of its raw table and the relation's types;
- a chunk enriched with a content cache that holds extra `content` columns
  (`ContentCache.has_extra`).

`EventChunk.row_only` says so; the sink worker then hands even a sink that
takes columns (BigQuery) the chunk's events, which carry the extras through
the machinery of the row path (`EnrichedEvent.extra`).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pulse.model import EnrichedEvent, Position, extra_columns
from pulse.model_arrow import ENRICHED_SCHEMA as ARROW_SCHEMA
from pulse.transform import enrich as E
from pulse.transform.content_cache import ContentCache


class ChunkExtras(Protocol):
    """The extra source columns a raw chunk carries (`pulse.source.chunks.ChunkExtras` builds them)."""

    columns: tuple[Any, ...]  # each with a `name`
    types: dict[str, str]  # the relation's PostgreSQL type names, every column

    def values(self, raw: pa.Table, column: Any) -> list[Any]:
        """`column`'s values in `raw`, converted as the stream's decoder converts them."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TS_MIN_US, _TS_END_US = -62135596800000000, 253402300800000000  # 0001-01-01, 10000-01-01 UTC (as _TS_OK)
_TS = pa.timestamp("us", tz="UTC")
_DEC = pa.decimal128(38, 9)
_BAD_TS_TEXT = "out of range"  # what `raw_rows` puts in event_ts so enrich_row flags it


_ROW_NAMES = ("id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")


def raw_columns(raw: pa.Table) -> list[list[Any]]:
    """The chunk as Python lists in `_ROW_NAMES` order (`event_ts` as a datetime, or text when bad)."""
    names = [n if n != "event_ts" else "event_us" for n in _ROW_NAMES]
    columns = [raw.column(n).to_pylist() for n in names]
    epoch, delta = _EPOCH, timedelta  # (Arrow's own tz-aware to_pylist is slower still)
    stamps = [None if us is None else epoch + delta(0, 0, us) for us in columns[4]]
    bad = raw.column("event_ts_bad")
    if pc.any(pc.fill_null(bad, False)).as_py():
        stamps = [_BAD_TS_TEXT if b else ts for ts, b in zip(stamps, bad.to_pylist())]
    columns[4] = stamps
    return columns


def raw_rows(raw: pa.Table) -> list[dict[str, Any]]:
    """The chunk as the row dicts of `enrich_row`."""
    return [dict(zip(_ROW_NAMES, values)) for values in zip(*raw_columns(raw))]


class ContentColumns:
    """The content cache as columns, for a vectorised lookup."""

    def __init__(self, cache: ContentCache) -> None:
        items = list(cache.items())
        self.ids = pa.array([k for k, _ in items], pa.string())
        self.slug = pa.array([v.slug for _, v in items], pa.string())
        self.title = pa.array([v.title for _, v in items], pa.string())
        self.content_type = pa.array([v.content_type for _, v in items], pa.string())
        self.length = pa.array([v.length_seconds for _, v in items], pa.int64())


# The order enrich_row lists problems in (none of the others occur in a backfill read).
_PROBLEMS = (E.NULL_CONTENT_ID, E.CONTENT_MISSING, E.BAD_EVENT_TS, E.EVENT_TS_AT_LIMIT, E.NEGATIVE_DURATION,
             E.ZERO_LENGTH, E.NEGATIVE_LENGTH, E.EXCEEDS_LENGTH)
_DAY_US = 86_400_000_000  # enrich.EVENT_TS_AT_LIMIT: the first or last day of 0001..9999 (UTC)


def _values(arr: pa.Array | pa.ChunkedArray, fill: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    values = pc.fill_null(arr, fill).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return values, valid


def enrich_table(raw: pa.Table, content: ContentColumns, *, lsn: int, first_seq: int,
                 commit_ts: datetime | None, now: datetime, backfill: bool = True) -> pa.Table:
    """Enrich a chunk (RAW_SCHEMA) into ARROW_SCHEMA rows at positions (lsn, first_seq + i)."""
    n = raw.num_rows
    cid = raw.column("content_id").combine_chunks()
    idx = pc.index_in(cid, value_set=content.ids)
    slug, title, ctype = (pc.take(a, idx) for a in (content.slug, content.title, content.content_type))
    length_arr = pc.take(content.length, idx)

    cid_valid = cid.is_valid().to_numpy(zero_copy_only=False)
    found = idx.is_valid().to_numpy(zero_copy_only=False)
    dur, dur_valid = _values(raw.column("duration_ms"), 0)
    length, len_valid = _values(length_arr, 0)
    bad_ts_arr = pc.fill_null(raw.column("event_ts_bad").combine_chunks(), False)
    bad_ts = bad_ts_arr.to_numpy(zero_copy_only=False)
    us, us_valid = _values(raw.column("event_us"), 0)
    at_limit = us_valid & ~bad_ts & ((us < _TS_MIN_US + _DAY_US) | (us >= _TS_END_US - _DAY_US))

    seconds_ok = dur_valid & (dur >= 0)
    pct_ok = seconds_ok & len_valid & (length > 0)
    den = np.where(pct_ok, 10 * length, 1)
    q, r = np.divmod(np.where(pct_ok, dur, 0), den)
    hundredths = q + (2 * r >= den)  # both sides >= 0 here: half up is half away from zero

    problems = np.column_stack([
        ~cid_valid,                                   # null_content_id
        cid_valid & ~found,                           # content_missing
        bad_ts,                                       # event_ts_out_of_range
        at_limit,                                     # event_ts_at_limit
        dur_valid & (dur < 0),                        # negative_duration
        len_valid & (length == 0),                    # zero_length
        len_valid & (length < 0),                     # negative_length
        pct_ok & (dur > 1000 * length),               # duration_exceeds_length
    ]) if n else np.zeros((0, len(_PROBLEMS)), dtype=bool)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(problems.sum(axis=1), out=offsets[1:])
    names = np.array(_PROBLEMS, dtype=object)[np.nonzero(problems)[1]]  # row-major: per row, in order
    problem_lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(names, pa.string()))

    event_us = raw.column("event_us").combine_chunks()
    event_ts = pc.if_else(bad_ts_arr, pa.scalar(None, pa.int64()), event_us).cast(_TS)
    seconds = pa.array(dur / 1000, pa.float64(), mask=~seconds_ok).cast(_DEC)
    pct = pa.array(hundredths / 100, pa.float64(), mask=~pct_ok).cast(_DEC)

    columns = {
        "event_id": raw.column("id"), "content_id": cid, "user_id": raw.column("user_id"),
        "event_type": raw.column("event_type"), "event_ts": event_ts, "duration_ms": raw.column("duration_ms"),
        "device": raw.column("device"), "raw_payload": raw.column("raw_payload"),
        "content_slug": slug, "content_title": title, "content_type": ctype, "length_seconds": length_arr,
        "engagement_seconds": seconds, "engagement_pct": pct,
        "op": pa.repeat(pa.scalar("insert", pa.string()), n),
        "source_lsn": pa.repeat(pa.scalar(lsn, pa.int64()), n),
        "source_seq": pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)),
        "commit_ts": pa.repeat(pa.scalar(commit_ts, _TS), n),
        "processed_ts": pa.repeat(pa.scalar(now, _TS), n),
        "backfill": pa.repeat(pa.scalar(backfill), n),
        "problems": problem_lists,
    }
    return pa.Table.from_arrays([columns[f.name] for f in ARROW_SCHEMA], schema=ARROW_SCHEMA)


class EventChunk:
    """Consecutive inserts at one commit LSN, as columns: a backfill chunk or a live run.

    A backfill chunk sits at its high watermark; a live run is a stretch of
    one transaction's inserts decoded by the native reader
    (`pulse.source.native`). Both become, on first use, the form a sink
    takes: sinks that take columns (`Sink.accepts_columns`) get `table()`;
    the others get `events()`, built by the sink workers (off the
    dispatcher thread) and shared between them. Both use the content
    cache's snapshot at the chunk's place in the stream: the live cache
    moves on. `position` is the last one: what a sink holds once the chunk
    is durable.
    """

    __slots__ = ("raw", "lsn", "first_seq", "commit_ts", "now", "cache", "targets", "backfill", "_table",
                 "_events", "_lock", "_events_lock", "_problems_lock", "_problems", "extras")

    def __init__(self, raw: pa.Table, *, lsn: int, first_seq: int, commit_ts: datetime | None, now: datetime,
                 cache: ContentCache, targets: tuple[str, ...] | None = None, backfill: bool = True,
                 extras: ChunkExtras | None = None) -> None:
        self.raw = raw
        self.extras = extras  # extra source columns in `raw` (`read_extra`), or None
        self.targets = targets  # for a relaying sink (Kafka): the destinations downstream
        self.lsn = lsn
        self.first_seq = first_seq
        self.commit_ts = commit_ts
        self.now = now
        self.cache = cache.snapshot()
        self.backfill = backfill
        self._table: pa.Table | None = None
        self._events: list[EnrichedEvent] | None = None
        # One lock per form: a worker building the table (kernels, the GIL released) does not wait for
        # another building the events (Python), nor the other way round.
        self._lock = threading.Lock()
        self._events_lock = threading.Lock()
        self._problems_lock = threading.Lock()
        self._problems: dict[str, int] | None = None

    @property
    def row_only(self) -> bool:
        """True when the chunk's events carry extra columns (its own, or its content's): no columnar form."""
        return self.extras is not None or self.cache.has_extra

    @property
    def first(self) -> Position:
        return Position(self.lsn, self.first_seq)

    @property
    def position(self) -> Position:
        return Position(self.lsn, self.first_seq + self.raw.num_rows - 1)

    def __len__(self) -> int:
        return self.raw.num_rows

    def size_hint(self) -> int:
        return int(self.raw.nbytes) * 2  # the raw chunk and its enriched table

    def after(self, position: Position) -> "EventChunk":
        """The rows after `position` (a sink that already holds the start of the chunk)."""
        skip = 0 if position.lsn != self.lsn else max(0, position.seq - self.first_seq + 1)
        if skip == 0:
            return self
        part = EventChunk(self.raw.slice(skip), lsn=self.lsn, first_seq=self.first_seq + skip,
                          commit_ts=self.commit_ts, now=self.now, cache=self.cache, targets=self.targets,
                          backfill=self.backfill, extras=self.extras)
        return part

    def table(self) -> pa.Table:
        with self._lock:
            if self._table is None:
                self._table = enrich_table(self.raw, self.cache.columns(), lsn=self.lsn, first_seq=self.first_seq,
                                           commit_ts=self.commit_ts, now=self.now, backfill=self.backfill)
                if self._problems is None:
                    flat = pc.list_flatten(self._table.column("problems"))
                    counts = pc.value_counts(flat) if len(flat) else []
                    self._count_problems({c["values"].as_py(): c["counts"].as_py() for c in counts})
            return self._table

    def events(self) -> list[EnrichedEvent]:
        with self._events_lock:
            if self._events is None:
                lsn, seq, commit_ts, cache, now, backfill = (self.lsn, self.first_seq, self.commit_ts, self.cache,
                                                             self.now, self.backfill)
                if self.extras is not None:
                    self._events = self._extra_events()
                else:
                    enrich = E.enrich_values
                    self._events = [
                        enrich(i, c, u, t, ts, d, dev, p, "insert", Position(lsn, seq + k), commit_ts, cache, now,
                               backfill)
                        for k, (i, c, u, t, ts, d, dev, p) in enumerate(zip(*raw_columns(self.raw)))
                    ]
                if self._problems is None:
                    counts: dict[str, int] = {}
                    for ev in self._events:
                        for problem in ev.problems:
                            counts[problem] = counts.get(problem, 0) + 1
                    self._count_problems(counts)
            return self._events

    def _count_problems(self, counts: dict[str, int]) -> None:
        """The chunk's problem counts, kept once whichever form is built first."""
        with self._problems_lock:
            if self._problems is None:
                self._problems = counts

    def _extra_events(self) -> list[EnrichedEvent]:
        """The events of a chunk with extra source columns: rows as `enrich_row` takes them."""
        extras = self.extras
        assert extras is not None
        names = [*_ROW_NAMES, *(c.name for c in extras.columns)]
        columns = raw_columns(self.raw) + [
            extras.values(self.raw, c) for c in extras.columns
        ]
        lsn, seq, commit_ts, cache, now, backfill = (self.lsn, self.first_seq, self.commit_ts, self.cache,
                                                     self.now, self.backfill)
        if cache.has_extra:  # content extras too: enrich_row merges both
            enrich_row = E.enrich_row
            return [enrich_row(dict(zip(names, values)), op="insert", position=Position(lsn, seq + k),
                               commit_ts=commit_ts, cache=cache, now=now, backfill=backfill, types=extras.types)
                    for k, values in enumerate(zip(*columns))]
        # The event's own extras only: enrich_values and the columns by their event names (as enrich_row
        # names them: the catalog's extra columns are the relation's, in the same order), one types dict.
        cols = extra_columns(extras.types)
        extra_names = [c.name for c in cols]
        extra_types = {c.name: c.pg_type for c in cols}
        known = len(_ROW_NAMES)
        enrich = E.enrich_values
        return [
            enrich(*values[:known], "insert", Position(lsn, seq + k), commit_ts, cache, now, backfill)._replace(
                extra=dict(zip(extra_names, values[known:])), extra_types=extra_types)
            for k, values in enumerate(zip(*columns))
        ]

    def take_problems(self) -> dict[str, int]:
        """Problem counts of the chunk's rows, once (for metrics): empty on later calls or before a build."""
        with self._problems_lock:
            if not self._problems:
                return {}
            counts, self._problems = self._problems, {}
            return counts
