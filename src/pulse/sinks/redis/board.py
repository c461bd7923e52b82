"""The real-time board's model, without I/O: key names, bucket math, pre-aggregation.

The board is a set of sorted sets over a rolling window of event time,
maintained incrementally from fixed-width buckets of `event_ts`:

- an event with `event_ts` t falls in bucket `floor(t / bucket_s)`;
- at clock time `now` the window holds the buckets `>= lowest_bucket(now)`
  (`floor((now - window_s) / bucket_s)`), so an event leaves the board
  when its age is in (window_s, window_s + bucket_s]: accurate to one bucket
  (10 s by default) at the window's edge;
- a batch of events becomes one `Aggregate`: per (bucket, content type,
  content id) the sum of engagement milliseconds and the number of events,
  per (bucket, device) and per (bucket, event type) the number of events.
  A run of inserts that arrives as columns (`enrich_table`'s table: a live
  run of the native reader) is folded in by `add_table`, a group-by per
  kind of cell instead of a Python object per event, to the same cells,
  counters and key order as `add_events` (tests/unit/sinks/test_redis_columns.py
  compares both on the same rows).
  The Lua script (`redis.lua`) applies it in one atomic step, however many
  events the batch held: the cost in Redis is per distinct key, not per event.

Exact arithmetic: engagement is summed in integer milliseconds (`duration_ms`
as the source stores it), and a board score is `ms / 1000` computed once
from the exact integer, so adding and subtracting buckets for hours never
accumulates floating-point error.

Updates and deletes: a change whose old values are known (`before`, i.e.
REPLICA IDENTITY FULL) subtracts the old contribution and adds the new one;
without old values nothing is changed and the change is counted as
`uncorrectable` (see docs/sinks/redis.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Iterable

import numpy as np

from pulse.model import EnrichedEvent, Position

if TYPE_CHECKING:
    import pyarrow as pa

#: Member used for a NULL device / event type in the count boards.
NULL_MEMBER = "(null)"


def window_label(window_s: int) -> str:
    """'10m' for 600 s, '90s' for 90 s, '2h' for 7200 s: the suffix of the board keys."""
    if window_s % 3600 == 0:
        return f"{window_s // 3600}h"
    if window_s % 60 == 0:
        return f"{window_s // 60}m"
    return f"{window_s}s"


@dataclass(frozen=True)
class Keys:
    """Every key the Redis sink writes, under one prefix (default `pulse:`)."""

    prefix: str = "pulse:"
    window_s: int = 600

    @property
    def label(self) -> str:
        return window_label(self.window_s)

    @property
    def top(self) -> str:
        return f"{self.prefix}top:{self.label}"

    def top_type(self, content_type: str) -> str:
        return f"{self.prefix}top:{self.label}:{content_type}"

    @property
    def events(self) -> str:
        return f"{self.prefix}events:{self.label}"

    @property
    def devices(self) -> str:
        return f"{self.prefix}devices:{self.label}"

    @property
    def event_types(self) -> str:
        return f"{self.prefix}event_types:{self.label}"

    def content(self, content_id: str) -> str:
        return f"{self.prefix}content:{content_id}"

    @property
    def meta(self) -> str:
        return f"{self.prefix}meta"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    # Internal state of the window (same TTL as the boards).
    @property
    def acc(self) -> str:
        return f"{self.prefix}w:acc"

    @property
    def index(self) -> str:
        return f"{self.prefix}w:idx"

    @property
    def types(self) -> str:
        return f"{self.prefix}w:types"

    def bucket(self, b: int) -> str:
        return f"{self.prefix}w:b:{b}"

    def hash_tag(self) -> str | None:
        """The Redis Cluster hash tag of the prefix ('{pulse}:' -> 'pulse'), None when it has none."""
        start = self.prefix.find("{")
        if start < 0:
            return None
        end = self.prefix.find("}", start + 1)
        if end <= start + 1:
            return None
        return self.prefix[start + 1:end]


def lowest_bucket(now_s: float, window_s: int, bucket_s: int) -> int:
    """The oldest bucket still inside the window at clock time `now_s` (epoch seconds)."""
    return math.floor((now_s - window_s) / bucket_s)


def bucket_of(ts_s: float, bucket_s: int) -> int:
    """The bucket of an event time (epoch seconds)."""
    return math.floor(ts_s / bucket_s)


def encode_position(pos: Position) -> str:
    """A fixed-width hex string that sorts like the position (Lua numbers cannot hold a 64-bit LSN)."""
    return f"{pos.lsn:016x}{pos.seq:08x}"


def decode_position(text: str | bytes | None) -> Position:
    if not text:
        return Position(0, 0)
    if isinstance(text, bytes):
        text = text.decode()
    return Position(int(text[:16], 16), int(text[16:], 16))


def engagement_ms(event: EnrichedEvent) -> int:
    """The event's contribution in milliseconds: `duration_ms` when `engagement_seconds` is set, else 0."""
    return event.duration_ms if event.engagement_seconds is not None else 0  # type: ignore[return-value]


@dataclass
class Aggregate:
    """Pre-aggregated increments of one or more batches, ready for one atomic write."""

    bucket_s: int
    future_skew_s: int
    # (bucket, content type or "", content id) -> [ms delta, events delta]
    content: dict[tuple[int, str, str], list[int]] = field(default_factory=dict)
    devices: dict[tuple[int, str], int] = field(default_factory=dict)
    event_types: dict[tuple[int, str], int] = field(default_factory=dict)
    # content id -> (title, slug, type, length) for the metadata hashes
    metadata: dict[str, tuple[str | None, str | None, str | None, int | None]] = field(default_factory=dict)
    events: int = 0
    uncorrectable: int = 0
    corrections: int = 0
    null_content: int = 0
    newest_event_ms: int = 0
    newest_commit_ms: int = 0
    last: Position | None = None

    def __len__(self) -> int:
        return self.events

    def add_events(self, events: Iterable[EnrichedEvent], now_s: float) -> None:
        """Fold events (in position order) into the aggregate, as seen at clock time `now_s`."""
        add = self._add
        for ev in events:
            self.events += 1
            op = ev.op
            if op == "insert":
                add(ev, 1, now_s)
            elif ev.before is not None:
                # Old values known (REPLICA IDENTITY FULL): take the old contribution out...
                add(ev.before, -1, now_s)
                self.corrections += 1
                if op == "update":  # ...and put the new one in.
                    add(ev, 1, now_s)
            else:
                # DEFAULT identity: the old values are unknown, so the board cannot
                # be corrected; counting the new values too would double count.
                self.uncorrectable += 1
            if ev.commit_ts is not None:
                c = int(ev.commit_ts.timestamp() * 1000)
                if c > self.newest_commit_ms:
                    self.newest_commit_ms = c
            self.last = ev.position

    def add_table(self, table: "pa.Table", now_s: float) -> None:
        """`add_events` of the rows of an enriched table of inserts (`enrich_table`, position order).

        The same arithmetic as the per-event path: each time in seconds is the
        float `us / 10**6` (what `datetime.timestamp()` returns), its bucket
        `floor(t / bucket_s)`, its milliseconds `int(t * 1000)`. Cells are
        summed per group and merged in the order of their first row, so the
        dicts (hence the script's arguments) come out as `add_events` makes them.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        n = table.num_rows
        if n == 0:
            return
        col = {name: _combined(table.column(name)) for name in (
            "event_ts", "commit_ts", "content_id", "content_type", "device", "event_type", "duration_ms",
            "engagement_seconds", "source_lsn", "source_seq")}
        self.events += n
        commit_ok = _valid(col["commit_ts"])
        if commit_ok.any():
            c = int(_trunc_ms(_seconds(_micros(col["commit_ts"])[commit_ok])).max())
            if c > self.newest_commit_ms:
                self.newest_commit_ms = c
        lsn, seq = col["source_lsn"], col["source_seq"]
        self.last = Position(lsn[n - 1].as_py(), seq[n - 1].as_py())

        ts_ok = _valid(col["event_ts"])
        if not ts_ok.any():
            return
        t = _seconds(_micros(col["event_ts"]))
        bucket = np.floor(t / self.bucket_s).astype(np.int64)
        fresh = ts_ok & (t <= now_s + self.future_skew_s)  # freshness: a future-dated event says nothing of it
        if fresh.any():
            ms = int(_trunc_ms(t[fresh]).max())
            if ms > self.newest_event_ms:
                self.newest_event_ms = ms
        cid = col["content_id"]
        cid_ok = _valid(cid)
        self.null_content += int((ts_ok & ~cid_ok).sum())
        rows = pa.array(np.arange(n, dtype=np.int64))
        null = pa.scalar(NULL_MEMBER, pa.string())
        engaged = _valid(col["engagement_seconds"])
        ms_of = np.where(engaged, pc.fill_null(col["duration_ms"], 0).to_numpy(zero_copy_only=False), 0)
        base = pa.table({"b": pa.array(bucket), "row": rows})
        timed = pa.array(ts_ok)

        # Milliseconds summed as two halves (high bits, low 31 bits) that cannot overflow int64 for any
        # duration_ms, joined in Python's integers as `add_events` sums them.
        ms_of = ms_of.astype(np.int64)
        counted = base.append_column("c", cid).append_column("t", pc.fill_null(col["content_type"], "")) \
            .append_column("hi", pa.array(ms_of >> 31)).append_column("lo", pa.array(ms_of & 0x7FFFFFFF)) \
            .filter(pa.array(ts_ok & cid_ok))
        content = self.content
        for b, ctype, c, hi, lo, k in _groups(counted, ["b", "t", "c"], [("hi", "sum"), ("lo", "sum"),
                                                                         ("row", "count")]):
            total = (hi << 31) + lo
            cell = content.get((b, ctype, c))
            if cell is None:
                content[(b, ctype, c)] = [total, k]
            else:
                cell[0] += total
                cell[1] += k
        for name, target in (("device", self.devices), ("event_type", self.event_types)):
            part = base.append_column("m", pc.fill_null(col[name].cast(pa.string()), null)).filter(timed)
            for b, member, k in _groups(part, ["b", "m"], [("row", "count")]):
                target[(b, member)] = target.get((b, member), 0) + k
        # Display metadata: each content id's last row (`add_events` overwrites), in the order of its first.
        last = _groups(pa.table({"c": cid, "row": rows}).filter(pa.array(ts_ok & cid_ok)), ["c"], [("row", "max")])
        if last:
            at = pa.array([r for _c, r in last])
            values = zip(*(pc.take(table.column(name), at).to_pylist()
                           for name in ("content_title", "content_slug", "content_type", "length_seconds")))
            for (c, _r), value in zip(last, values):
                self.metadata[c] = value

    def _add(self, ev: EnrichedEvent, sign: int, now_s: float) -> None:
        ts: datetime | None = ev.event_ts
        if ts is None:
            return
        t = ts.timestamp()
        # A cell of a bucket beyond the allowed skew (a wrong device clock) is
        # held by the apply script until the clock reaches its bucket, so the
        # board stays the source's window by event_ts; see redis.lua.
        b = math.floor(t / self.bucket_s)
        cid = ev.content_id
        if cid is not None:
            key = (b, ev.content_type or "", cid)
            cell = self.content.get(key)
            if cell is None:
                self.content[key] = [sign * engagement_ms(ev), sign]
            else:
                cell[0] += sign * engagement_ms(ev)
                cell[1] += sign
            if sign > 0:
                self.metadata[cid] = (ev.content_title, ev.content_slug, ev.content_type, ev.length_seconds)
        elif sign > 0:
            self.null_content += 1
        dk = (b, ev.device if ev.device is not None else NULL_MEMBER)
        self.devices[dk] = self.devices.get(dk, 0) + sign
        ek = (b, ev.event_type if ev.event_type is not None else NULL_MEMBER)
        self.event_types[ek] = self.event_types.get(ek, 0) + sign
        if sign > 0 and t <= now_s + self.future_skew_s:  # freshness: a future-dated event says nothing of it
            ms = int(t * 1000)
            if ms > self.newest_event_ms:
                self.newest_event_ms = ms

    def script_args(self) -> list[object]:
        """The flat argument list of the apply script: counts, then the cells (zero cells dropped)."""
        content = [(k, v) for k, v in self.content.items() if v[0] or v[1]]
        devices = [(k, v) for k, v in self.devices.items() if v]
        etypes = [(k, v) for k, v in self.event_types.items() if v]
        out: list[object] = [len(content), len(devices), len(etypes)]
        for (b, ctype, cid), (ms, n) in content:
            out += (b, ctype, cid, ms, n)
        for (b, dev), n in devices:
            out += (b, dev, n)
        for (b, et), n in etypes:
            out += (b, et, n)
        return out


def _combined(col):
    return col.combine_chunks() if hasattr(col, "combine_chunks") else col


def _valid(col) -> np.ndarray:
    return col.is_valid().to_numpy(zero_copy_only=False)


def _micros(col) -> np.ndarray:
    """A timestamp[us] column as int64 microseconds since the epoch (0 where null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)


_EXACT = 2**53  # integers a float64 holds exactly


def _seconds(us: np.ndarray) -> np.ndarray:
    """`us / 10**6` as Python computes it (what `datetime.timestamp()` returns), element by element.

    Below 2**53 microseconds (until about year 2255) both operands are exact
    floats and numpy's division is Python's; beyond, Python's correctly rounded
    integer division, row by row.
    """
    t = us.astype(np.float64) / 1e6
    big = np.flatnonzero(np.abs(us) >= _EXACT)
    if len(big):
        t[big] = [int(u) / 10**6 for u in us[big].tolist()]
    return t


def _trunc_ms(t: np.ndarray) -> np.ndarray:
    """`int(t * 1000)` of each float."""
    return np.trunc(t * 1000).astype(np.int64)


def _groups(table, keys: list[str], aggregations: list[tuple[str, str]]) -> list[tuple]:
    """Rows of a group-by as tuples (keys..., aggregates...), ordered by each group's first row (`row`)."""
    import pyarrow as pa

    if table.num_rows == 0:
        return []
    out = table.group_by(keys, use_threads=False).aggregate([*aggregations, ("row", "min")])
    order = pa.array(np.argsort(out.column("row_min").to_numpy(), kind="stable"))
    names = [*keys, *(f"{c}_{f}" for c, f in aggregations)]
    return list(zip(*(out.column(name).take(order).to_pylist() for name in names)))


@dataclass
class PauseState:
    """What a live sink knows of a rebuild's pause (no I/O; times are `time.monotonic()` seconds).

    While a rebuild holds the board, the sink's flush answers PAUSED and
    changes nothing; the sink keeps its pending events, logs the pause once,
    and tries again at most every `retry_interval_s` (its writes and the
    runtime's idle flushes call it far more often).
    """

    retry_interval_s: float
    since: float | None = None  # when this sink first saw the current pause
    until_ms: int = 0  # the pause's deadline, in Redis' clock (ms)
    next_try: float = 0.0
    pauses: int = 0  # pauses this sink has waited through (or is waiting in)

    @property
    def active(self) -> bool:
        return self.since is not None

    def paused(self, until_ms: int, now: float) -> bool:
        """Record a PAUSED answer; True when this pause is new (log it then, not on every retry)."""
        new = self.since is None
        if new:
            self.since = now
            self.pauses += 1
        self.until_ms = until_ms
        self.next_try = now + self.retry_interval_s
        return new

    def may_try(self, now: float) -> bool:
        """A flush may go to Redis: not paused, or paused and the retry interval has passed."""
        return self.since is None or now >= self.next_try

    def resumed(self, now: float) -> float | None:
        """Record an answer other than PAUSED: the seconds waited if a pause just ended, else None."""
        if self.since is None:
            return None
        waited, self.since = now - self.since, None
        return waited
