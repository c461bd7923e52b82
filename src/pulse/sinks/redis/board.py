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
from typing import Iterable

from pulse.model import EnrichedEvent, Position

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
