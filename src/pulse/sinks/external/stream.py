"""Delivery from a frame log (the local outbox, or memory under Kafka): a feeder, lanes, resolution.

- The **feeder** thread reads frames in order from the log and hands each
  lane its chunk, holding at most `inflight_max_bytes` of frames in memory.
- A **lane** sends its chunks oldest first, one request at a time: the body
  is `[` + slices of the chunks' joined CloudEvent texts + `]` (no object per
  event), sized by `batch_max_events` and `batch_max_bytes`; the same retry
  helper, circuit breaker and 413 handling as the PostgreSQL outbox's lanes
  (`external.delivery`).
- **Resolution**: a frame is resolved when every lane has delivered or
  dead-lettered its part; `delivered` is the highest frame position with
  everything at or below it resolved. About once a second (and at close) the
  feeder stores it with the ledger of resolved event ids (`state`, fsync'd),
  then deletes the segments wholly at or below it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg2

from pulse import metrics
from pulse.config import ExternalConfig
from pulse.errors import PulseError
from pulse.log import get_logger
from pulse.model import ZERO, Position
from pulse.sinks.external.delivery import (CONTENT_TYPES, DEAD, DELIVERED, DELIVERY_LAG, TOO_LARGE, CircuitBreaker,
                                           HttpClient, dead_letter_metric, LaneStats, Request, RetryPolicy, Verdict, build_request,
                                           deliver, truncated_row)
from pulse.sinks.external.local import (Chunk, FrameInfo, FrameLog, Ledger, LocalLog, OutboxState, message_id_of,
                                        parse_frame, write_state)
from pulse.sinks.external.outbox import Outbox, OutboxRow

log = get_logger(__name__)

_DATA_PREFIX = len(',"data":')


def outbox_row(c: Chunk, k: int) -> OutboxRow:
    """Event `k` of a chunk as a dead-letter row (attributes and data apart, as the store keeps them)."""
    e = c.event(k)
    part = e.part.decode()
    attrs = part[:e.attrs_len - 1] + "}"
    data = part[e.attrs_len - 1 + _DATA_PREFIX:-1]
    return OutboxRow(e.lsn, e.seq, e.lane_key, e.content_id, e.event_id, e.ce_id, attrs, data, 0, c.enqueued_at)


class Slices:
    """The events of one request: (chunk, i, j) runs, in lane order."""

    __slots__ = ("runs", "n")

    def __init__(self, runs: list[tuple[Chunk, int, int]]) -> None:
        self.runs = runs
        self.n = sum(j - i for _c, i, j in runs)

    def rows(self) -> list[OutboxRow]:
        return [outbox_row(c, k) for c, i, j in self.runs for k in range(i, j)]

    def oldest(self) -> float:
        return min(c.enqueued_at for c, _i, _j in self.runs)


def body_of(s: Slices, mode: str) -> bytes:
    if mode == "single":
        c, i, _j = s.runs[0]
        return c.parts_slice(i, i + 1)
    if mode == "json-array":
        parts = []
        for c, i, j in s.runs:
            for k in range(i, j):
                p = c.parts_slice(k, k + 1)
                parts.append(p[int(c.meta["attrs_len"][k]) - 1 + _DATA_PREFIX:-1])
        return b"[" + b",".join(parts) + b"]"
    return b"[" + b",".join(c.parts_slice(i, j) for c, i, j in s.runs) + b"]"


class StreamLane(threading.Thread):
    """One lane: its chunks in frame order, one request at a time."""

    def __init__(self, index: int, flow: "FrameDelivery") -> None:
        super().__init__(name=f"pulse-external-lane-{index}", daemon=True)
        self.index = index
        self.flow = flow
        self.cfg = flow.cfg
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self.chunks: deque[Chunk] = deque()
        self.head = 0  # index of the next event in chunks[0]
        self.events = 0  # events waiting (all chunks, from head)
        self.cap: int | None = None  # most events per request after a 413
        self._db = None

    def put(self, chunks: Sequence[Chunk]) -> None:
        with self._lock:
            self.chunks.extend(chunks)
            self.events += sum(len(c) for c in chunks)
        self.wake.set()

    # -- building a request from the head --------------------------------------------

    def take(self, limit: int, max_bytes: int) -> Slices:
        runs: list[tuple[Chunk, int, int]] = []
        n, size = 0, 2
        with self._lock:
            chunks = list(self.chunks)
            head = self.head
        for idx, c in enumerate(chunks):
            i = head if idx == 0 else 0
            room = max_bytes - size
            # the most events from i whose parts (with separators) fit in `room`
            j = int(np.searchsorted(c.part_off, c.part_off[i] + room, side="right")) - 1
            j = min(j, len(c), i + (limit - n))
            if j <= i:
                if n == 0:
                    j = i + 1  # one event larger than the limit still goes, alone
                else:
                    break
            runs.append((c, i, j))
            n += j - i
            size += int(c.part_off[j] - c.part_off[i])
            if j < len(c) or n >= limit:
                break
        return Slices(runs)

    def advance(self, s: Slices) -> None:
        """The events of `s` are resolved: move the head, hand finished chunks to the flow."""
        done: list[FrameInfo] = []
        with self._lock:
            for c, _i, j in s.runs:
                assert self.chunks and self.chunks[0] is c
                if j >= len(c):
                    self.chunks.popleft()
                    self.head = 0
                    done.append(c.frame)
                else:
                    self.head = j
            self.events -= s.n
        for info in done:
            self.flow.part_done(info)

    # -- the loop --------------------------------------------------------------------

    def run(self) -> None:
        cfg, flow = self.cfg, self.flow
        stop = flow.stop_event
        first_seen: float | None = None
        failures = 0
        while not stop.is_set():
            try:
                self.wake.clear()
                if not self.events:
                    first_seen = None
                    self.wake.wait(cfg.poll_interval_s)
                    continue
                now = time.monotonic()
                if first_seen is None:
                    first_seen = now
                limit = 1 if cfg.mode == "single" else (self.cap or cfg.batch_max_events)
                s = self.take(limit, cfg.batch_max_bytes)
                full = s.n >= limit or s.n < self.events
                if not full and now - first_seen < cfg.batch_max_age_s:
                    self.wake.wait(cfg.batch_max_age_s - (now - first_seen))
                    continue
                verdict = self._deliver(s)
                if verdict.kind == "stopped":
                    break
                if verdict.kind == "split":
                    self.cap = max(1, s.n // 2)
                    log.info("external.split", lane=self.index, events=s.n, next=self.cap)
                    continue
                if self.cap is not None and verdict.kind == "delivered":
                    self.cap = None if self.cap * 2 >= cfg.batch_max_events else self.cap * 2
                self.advance(s)
                first_seen = time.monotonic() if self.events else None
                failures = 0
            except (PulseError, psycopg2.Error, OSError) as exc:
                # Dead-lettering needs the database; until it answers, the events stay here.
                failures += 1
                flow.stats.last_error = f"{type(exc).__name__}: {str(exc).strip()}"[:300]
                log.warning("external.lane_error", lane=self.index, error=flow.stats.last_error)
                self._close_db()
                stop.wait(flow.policy.wait(failures, None) + 0.1)
            except Exception as exc:  # a bug must not end delivery silently: log, back off, go on
                failures += 1
                flow.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("external.lane_error", lane=self.index, error=flow.stats.last_error)
                stop.wait(flow.policy.wait(failures, None) + 0.1)
        self._close_db()

    def _request(self, s: Slices) -> Request:
        return Request((), body_of(s, self.cfg.mode), CONTENT_TYPES[self.cfg.mode], message_id_of(s.runs))

    def _deliver(self, s: Slices) -> Verdict:
        flow = self.flow
        req = self._request(s)

        def on_failure(outcome) -> None:
            flow.stats.failures += 1
            flow.stats.last_error = outcome.error
            log.info("external.retry", lane=self.index, events=s.n, status=outcome.status, error=outcome.error,
                     retry_after=outcome.retry_after)

        verdict = deliver(lambda: flow.client.send(req), flow.policy, flow.breaker, flow.stop_event,
                          oldest_enqueued=s.oldest(), on_failure=on_failure)
        if verdict.kind == "delivered":
            flow.stats.delivered += s.n
            DELIVERED.inc(s.n)
            now = time.time()
            for c, i, j in s.runs:
                metrics.observe_many(DELIVERY_LAG, max(0.0, now - c.enqueued_at), j - i)
        elif verdict.kind == "dead" and verdict.status == TOO_LARGE and s.n > 1:
            return verdict._replace(kind="split")
        elif verdict.kind == "dead" and verdict.status == TOO_LARGE:
            return self._deliver_truncated(s, verdict)
        elif verdict.kind == "dead":
            rows = s.rows()
            self._dead_letter(rows, verdict.status, verdict.error or verdict.reason)
            flow.stats.dead += len(rows)
            DEAD.labels(verdict.reason).inc(len(rows))
            dead_letter_metric(flow.name, verdict.reason, len(rows))
            log.warning("external.dead_letter", lane=self.index, events=len(rows), reason=verdict.reason,
                        status=verdict.status, error=verdict.error, first=str(rows[0].position),
                        hint="inspect with `pulse dlq list`, fix the receiver, then `pulse dlq replay`")
        return verdict

    def _deliver_truncated(self, s: Slices, refused: Verdict) -> Verdict:
        from pulse.sinks import dead_letter as dl

        flow, cfg = self.flow, self.cfg
        row = s.rows()[0]
        req = build_request([truncated_row(row)], cfg.mode, 1, cfg.batch_max_bytes)
        verdict = deliver(lambda: flow.client.send(req), flow.policy, flow.breaker, flow.stop_event,
                          oldest_enqueued=row.enqueued_at)
        if verdict.kind == "stopped":
            return verdict
        if verdict.kind == "delivered":
            self._dead_letter([row], refused.status, f"{dl.PAYLOAD_TOO_LARGE}: {refused.error}; delivered with a marker")
            flow.stats.delivered += 1
            flow.stats.dead += 1
            DELIVERED.inc()
            DEAD.labels(dl.PAYLOAD_TOO_LARGE).inc()
            dl.count(flow.name, dl.PAYLOAD_TOO_LARGE)
            log.warning("external.event_too_large", lane=self.index, event_id=row.event_id, bytes=len(row.data),
                        position=str(row.position),
                        hint="delivered with a marker; the full event is in `pulse dlq list` (replay it once "
                             "the endpoint takes larger bodies)")
            return verdict
        self._dead_letter([row], verdict.status, verdict.error or verdict.reason)
        flow.stats.dead += 1
        DEAD.labels(verdict.reason).inc()
        dead_letter_metric(flow.name, verdict.reason, 1)
        return verdict

    def _dead_letter(self, rows: list[OutboxRow], status: int | None, error: str) -> None:
        flow = self.flow
        if self._db is None or self._db.closed:
            self._db = flow.dead.connect(autocommit=True, name=f"pulse-external-lane-{self.index}")
        flow.dead.add_dead(self._db, rows, status, error)

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except psycopg2.Error:
                pass
            self._db = None


class FrameDelivery:
    """The feeder, the lanes and the delivered position of one frame log."""

    def __init__(self, name: str, frames: FrameLog, cfg: ExternalConfig, client: HttpClient, breaker: CircuitBreaker,
                 policy: RetryPolicy, stats: LaneStats, dead: Outbox, *, lanes: int | None = None) -> None:
        self.name = name
        self.log = frames
        self.cfg = cfg
        self.client = client
        self.breaker = breaker
        self.policy = policy
        self.stats = stats
        self.dead = dead
        self.lane_count = lanes or cfg.concurrency
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self.frames: deque[FrameInfo] = deque()  # read, not yet resolved, in order
        self.inflight_bytes = 0
        self.delivered = ZERO  # every frame at or below: resolved
        self.appended = ZERO
        self.pending_events = 0  # appended or found at open, not resolved
        self._resolved_ids: list[np.ndarray] = []
        self._stored = ZERO  # delivered position in `state`
        self.ledger = Ledger()
        self.lanes: list[StreamLane] = []
        self._feeder: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, delivered: Position, appended: Position, ledger: Ledger, pending_events: int) -> None:
        self.delivered = self._stored = delivered
        self.appended = appended
        self.ledger = ledger
        self.pending_events = pending_events
        self.lanes = [StreamLane(i, self) for i in range(self.lane_count)]
        for lane in self.lanes:
            lane.start()
        self._feeder = threading.Thread(target=self._feed, name=f"pulse-external-feeder-{self.name}", daemon=True)
        self._feeder.start()

    def appended_frame(self, last: Position, events: int) -> None:
        with self._lock:
            self.appended = max(self.appended, last)
            self.pending_events += events
        self.wake.set()

    # -- feeder ----------------------------------------------------------------------

    def _feed(self) -> None:
        stored_at = time.monotonic()
        try:
            while not self.stop_event.is_set():
                with self._lock:
                    full = self.inflight_bytes >= self.cfg.inflight_max_bytes
                    if full:
                        self._room.wait(0.2)
                item = None if full else self.log.read_next()
                if item is None:
                    if time.monotonic() - stored_at >= 1.0:
                        self.store()
                        stored_at = time.monotonic()
                    if not full:
                        self.wake.wait(0.2)
                        self.wake.clear()
                    continue
                rest, segment = item
                info, chunks = parse_frame(rest, self.lane_count, segment)
                with self._lock:
                    self.frames.append(info)
                    self.inflight_bytes += info.nbytes
                    if info.open_parts == 0:
                        self._resolve_head()
                for lane, cs in chunks.items():
                    self.lanes[lane].put(cs)
                if time.monotonic() - stored_at >= 1.0:
                    self.store()
                    stored_at = time.monotonic()
        except BaseException as exc:  # a damaged segment: say so in status, stop feeding
            self.error = exc
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("external.feeder_failed", error=self.stats.last_error,
                      hint=getattr(exc, "hint", None))

    def part_done(self, info: FrameInfo) -> None:
        with self._lock:
            info.open_parts -= 1
            self._resolve_head()

    def _resolve_head(self) -> None:
        """Pop resolved frames from the head (lock held)."""
        moved = False
        while self.frames and self.frames[0].open_parts <= 0:
            info = self.frames.popleft()
            self.delivered = max(self.delivered, info.last)
            self.inflight_bytes -= info.nbytes
            self.pending_events -= info.events
            if info.events:
                self._resolved_ids.append(info.event_ids)
            moved = True
        if moved:
            self._room.notify_all()

    def store(self) -> None:
        """Write the delivered position and the ledger (LocalLog), then drop delivered segments."""
        if not isinstance(self.log, LocalLog):
            with self._lock:
                self._resolved_ids = []
            return
        with self._lock:
            delivered, appended, ids = self.delivered, self.appended, self._resolved_ids
            self._resolved_ids = []
        if delivered == self._stored and not ids:
            return
        if ids:
            self.ledger.add(np.concatenate(ids))
        write_state(self.log.dir, OutboxState(delivered, appended, self.ledger))
        self._stored = delivered
        self.log.resolved(delivered)

    # -- status ----------------------------------------------------------------------

    def oldest_pending(self) -> float | None:
        with self._lock:
            if self.frames:
                return self.frames[0].enqueued_at
        return None

    def close(self, timeout: float) -> None:
        self.stop_event.set()
        self.wake.set()
        for lane in self.lanes:
            lane.wake.set()
        with self._lock:
            self._room.notify_all()
        for lane in self.lanes:
            lane.join(timeout)
            if lane.is_alive():
                log.warning("external.lane_still_running", lane=lane.index)
        if self._feeder is not None:
            self._feeder.join(5)
        try:
            self.store()
        except OSError as exc:
            log.warning("external.outbox_state_write_failed", error=str(exc))


def pending_after(directory: Path, delivered: Position) -> int:
    """Events in segments above `delivered` (status at open, tests)."""
    from pulse.sinks.external.local import frame_ids

    return len(frame_ids(directory, delivered)[0])
