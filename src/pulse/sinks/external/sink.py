"""The external HTTP sink: every event delivered to an endpoint Pulse does not control.

Guarantee: each event reaches the endpoint at least once, always under the
same CloudEvent id (and the same webhook-id / Idempotency-Key for the same
request), in source order per content id; what the endpoint refuses for
good, or what runs out of attempts or age, lands in the dead-letter store
(`pulse dlq`). A dead endpoint never holds the replication slot nor the
other sinks back.

How (docs/sinks/external.md): every event goes through a durable outbox
first, so `write()` returns as soon as the batch is durable there and the
slot advances whatever the endpoint does; delivery lanes send from it.

- `outbox = "local"` (the default under `pulse run`): append-only segment
  files on this machine, fsync'd per batch (`external/local.py`), delivered
  by a feeder and lanes (`external/stream.py`). Nothing is written to the
  source database, except dead letters (`external_dead_letter`).
- `outbox = "kafka"` (the default under `pulse consume`): the topic is the
  log; frames wait in memory and the sink's position is the delivered one,
  so the consumer commits offsets only for acknowledged events, with that
  position, from which it resumes the sink (`holds_position` False).
- `outbox = "postgres"`: the outbox tables in Pulse's schema, one
  transaction per batch (`external/outbox.py`), lanes of `external/delivery.py`;
  a delivered batch's rows are deleted and its ids merged into the ledger
  (`external_delivered`) in one transaction.

`open()` returns the position the outbox holds, so a restart hands the sink
only events it does not hold yet; what was not delivered is sent again,
the same bytes under the same ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg2
import pyarrow as pa

from pulse.arrays import string_bytes
from pulse.config import DatabaseConfig, ExternalConfig, Settings
from pulse import metrics
from pulse.errors import ConfigError, TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import ZERO, Batch, Position
from pulse.model_arrow import rows_after
from pulse.sinks.base import Sink, SinkInstance
from pulse.sinks.external.delivery import CircuitBreaker, HttpClient, Lane, LaneStats, RetryPolicy
from pulse.sinks.external.columns import encode_table
from pulse.sinks.external.local import Encoded, FrameLog, LocalLog, MemoryLog, build_frame, build_frame_columns
from pulse.sinks.external.outbox import Outbox, encode

#: Most events in one frame of a chunk written as columns (a backfill chunk holds up to 50,000; the row
#: path's frames hold up to runtime.batch_max_events, 5,000 by default).
FRAME_EVENTS = 5_000
#: Most CloudEvent bytes in one such frame, and at most a quarter of the outbox's bound (outbox_max_bytes,
#: or inflight_max_bytes over Kafka), so that a frame always fits once delivery has made room.
FRAME_BYTES = 8 << 20

#: Root of the default local outbox folders, relative to the working directory.
DEFAULT_OUTBOX_ROOT = Path("external_outbox")

log = get_logger(__name__)


def sink_key(db: DatabaseConfig, name: str) -> str:
    """Rows of one deployment (slot) and sink name; two deployments may share a state schema."""
    return f"{db.slot}/{name}"


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def outbox_folder(cfg: ExternalConfig, db: DatabaseConfig, name: str) -> Path:
    """The local outbox of one deployment (slot) and sink name: `outbox_dir`, or external_outbox/<slot>/<name>."""
    if cfg.outbox_dir is not None:
        return Path(cfg.outbox_dir)
    return DEFAULT_OUTBOX_ROOT / _safe(db.slot or "default") / _safe(name)


def outbox_kind(cfg: ExternalConfig, instance: "SinkInstance | str") -> str:
    """local | postgres | kafka. `auto`: kafka for an instance fed from a topic (a Kafka partition's)."""
    if cfg.outbox != "auto":
        return cfg.outbox
    return "kafka" if SinkInstance.of(instance).partitioned else "local"


def frame_ends(cols, max_events: int, max_bytes: int) -> list[int]:
    """Where the frames of encoded rows end: at most `max_events` rows and `max_bytes` of texts each
    (but at least one row); `[0]` for no rows (one empty frame still moves the position)."""
    n = len(cols)
    if n == 0:
        return [0]
    _data, offsets = string_bytes(cols.part_sep)
    ends: list[int] = []
    start = 0
    while start < n:
        fits = int(np.searchsorted(offsets, offsets[start] + max_bytes, side="right")) - 1
        start = max(start + 1, min(start + max_events, n, fits))
        ends.append(start)
    return ends


def encode_event(e, source: str, id_of=None) -> Encoded:
    """An enriched event as the local outbox keeps it: its structured CloudEvent text."""
    row = encode(e, source, id_of=id_of)
    return Encoded(row.lsn, row.seq, row.event_id, row.lane_key, row.content_id, row.ce_id,
                   row.cloudevent().encode(), len(row.attrs))


class ExternalSink(Sink):
    """A durable outbox (local segment files, Kafka, or Pulse's schema) + delivery lanes to the endpoint."""

    name = "external"

    @classmethod
    def dead_letters(cls, settings: Settings, name: str, url: str | None = None, **_options: object):
        """The endpoint's refusals, kept with the outbox in Pulse's schema (`external/dead_letters.py`)."""
        from pulse.sinks.external.dead_letters import OutboxAccess

        return OutboxAccess(settings, name, url)

    takes_broadcast_copies = False  # each event once, in order per content id
    takes_replays = True  # a dead letter replayed over Kafka goes out again in full, under its id
    # Live runs and backfill chunks arrive as enriched tables and are encoded column-wise
    # (external.columns): the same bytes as `write`. Not with outbox = postgres (set in __init__).
    accepts_columns = True

    def __init__(self, cfg: ExternalConfig, db: DatabaseConfig, *, name: "str | SinkInstance" = "external",
                 client: HttpClient | None = None) -> None:
        if not cfg.url:
            raise ConfigError("the external sink needs an endpoint URL",
                              hint="set PULSE_EXTERNAL_URL (e.g. the URL `pulse receiver` prints)")
        self.identify(name)
        self.cfg = cfg
        self.db = db
        self.kind = outbox_kind(cfg, self.instance)
        self.holds_position = self.kind != "kafka"  # over Kafka the consumer keeps it with its offsets
        # The PostgreSQL outbox stores rows, not frames: it takes the events the other sinks share.
        self.accepts_columns = self.kind != "postgres"
        self.snapshot_mode = "rows" if cfg.snapshot else "none"  # external.snapshot
        # The dead-letter store (and, with outbox = postgres, the outbox) in Pulse's schema.
        self.outbox = Outbox(db.dsn(), db.state_schema, sink_key(db, self.name))
        self.folder = outbox_folder(cfg, db, self.name) if self.kind == "local" else None
        self._client = client
        self.stats = LaneStats()
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_open_s, cfg.breaker_open_max_s)
        self.policy = RetryPolicy.from_config(cfg)
        self._stop = threading.Event()
        self._lanes: list[Lane] = []
        self._conn = None
        self.frames: FrameLog | None = None
        self.flow = None  # FrameDelivery (local / kafka)
        self._appended = ZERO
        # PostgreSQL outbox: rows at open plus rows appended since (backlog = this - stats.removed).
        self._pg_appended = 0
        self._full_since: float | None = None
        self.overflowed = 0  # events dead-lettered because the outbox was full

    @classmethod
    def from_settings(cls, settings: Settings, name: "str | SinkInstance" = "external") -> "ExternalSink":
        return cls(settings.external, settings.database, name=name)

    @property
    def client(self) -> HttpClient:
        if self._client is None:
            self._client = HttpClient(self.cfg)
        return self._client

    # -- the sink contract ----------------------------------------------------------

    def open(self) -> Position:
        if self.kind == "postgres":
            return self._open_postgres()
        from pulse.sinks.external.stream import FrameDelivery, pending_after

        if self.flow is not None:
            return self._appended if self.kind == "local" else self.flow.delivered
        if self.kind == "local":
            frames = LocalLog(self.folder, self.cfg.outbox_segment_bytes)
            top = frames.open()
            state = frames.state
            pending = pending_after(frames.dir, state.delivered)
            delivered, ledger = state.delivered, state.ledger
        else:
            frames = MemoryLog()
            top = delivered = frames.open()
            pending = 0
            from pulse.sinks.external.local import Ledger

            ledger = Ledger()
        self.frames = frames
        self._appended = top
        self.flow = FrameDelivery(self.name, frames, self.cfg, self.client, self.breaker, self.policy, self.stats,
                                  self.outbox)
        self.flow.start(delivered, top, ledger, pending)
        log.info("external.opened", position=str(top), outbox=self.kind, folder=str(self.folder or "-"),
                 pending=pending, outbox_bytes=frames.bytes(), lanes=self.cfg.concurrency, mode=self.cfg.mode,
                 signed=self.cfg.secret is not None)
        return top if self.kind == "local" else ZERO

    def _open_postgres(self) -> Position:
        conn = self._connection()
        self.outbox.check_schema(conn)
        try:
            pos = self.outbox.position(conn)
            backlog, _oldest = self.outbox.backlog(conn)
            conn.rollback()
            self._pg_appended = backlog + self.stats.removed
        except psycopg2.Error as exc:
            self._conn = None
            raise TransientError(f"external sink: reading its position failed: {str(exc).strip()}") from exc
        if not self._lanes:
            for i in range(self.cfg.concurrency):
                lane = Lane(i, self.cfg.concurrency, self.outbox, self.client, self.cfg, self.breaker,
                            self.policy, self._stop, self.stats)
                lane.start()
                self._lanes.append(lane)
        log.info("external.opened", position=str(pos), outbox="postgres", pending=backlog,
                 lanes=self.cfg.concurrency, mode=self.cfg.mode, signed=self.cfg.secret is not None)
        return pos

    def write(self, batch: Batch) -> Position:
        if self.kind == "postgres":
            return self._write_postgres(batch)
        flow = self._flow()
        last = batch.last
        if last <= self._appended:  # a batch retried after it was durable
            return self._durable()
        appended = self._appended
        events = [encode_event(e, self.cfg.source) for e in batch.events if e.position > appended]
        self._append(build_frame(events, last, time.time(), flow.lane_count), len(events), last, lambda: events)
        return self._durable()

    def write_columns(self, table: pa.Table, first: Position, last: Position) -> Position:
        """A live run or backfill chunk (inserts, `enrich_table`'s columns), encoded column-wise.

        The same texts as `write` makes of the same events (`external.columns`),
        the same contract: rows at or below the appended position are skipped,
        the return is the durable position. A chunk goes out in frames of at
        most FRAME_EVENTS events and FRAME_BYTES of texts (and a quarter of
        the outbox's bound), each durable on its own (a retry skips those).
        """
        flow = self._flow()  # never the PostgreSQL outbox: it declares accepts_columns False
        if last <= self._appended:
            return self._durable()
        appended = self._appended
        if first <= appended:
            table = rows_after(table, appended)
        cols = encode_table(table, self.cfg.source)
        n = len(cols)
        bound = self.cfg.inflight_max_bytes if self.kind == "kafka" else self.cfg.outbox_max_bytes
        start = 0
        for stop in frame_ends(cols, FRAME_EVENTS, min(FRAME_BYTES, bound // 4)):
            part = cols.slice(start, stop)
            end = last if stop >= n else part.position(len(part) - 1)
            self._append(build_frame_columns(part, end, time.time(), flow.lane_count), len(part), end, part.events)
            start = stop
        return self._durable()

    def _flow(self):
        flow = self.flow
        assert flow is not None and self.frames is not None, "open() first"
        if flow.error is not None:
            raise TerminalError(f"external sink: delivery stopped: {flow.error}",
                                hint=getattr(flow.error, "hint", None) or "see the log")
        return flow

    def _append(self, frame: bytes, held: int, last: Position, encoded: Callable[[], list[Encoded]]) -> None:
        """Append one frame of `held` events up to `last` (`encoded()`: its events, should they overflow)."""
        flow, frames = self.flow, self.frames
        if self.kind == "kafka":
            self._wait_for_room(len(frame))
        elif frames.bytes() + len(frame) > self.cfg.outbox_max_bytes and held and not self._room(len(frame)):
            frame = self._outbox_full(encoded(), last, frame)
            held = 0
        else:
            self._full_since = None
        frames.append(frame, last)
        self._appended = last
        flow.appended_frame(last, held)

    def _durable(self) -> Position:
        if self.kind == "local":
            return self._appended
        return self.flow.delivered

    def _room(self, size: int) -> bool:
        """Pause mode: wait up to 10 s for delivery to free room (then the runtime retries the batch)."""
        if self.cfg.outbox_full != "pause":
            return False
        deadline = time.monotonic() + 10.0
        while self.frames.bytes() + size > self.cfg.outbox_max_bytes:
            if time.monotonic() > deadline or self.flow.stop_event.wait(0.02):
                return False
        return True

    def _outbox_full(self, events: list[Encoded], last: Position, frame: bytes) -> bytes:
        """The local outbox is at outbox_max_bytes: pause (hold the slot) or dead-letter, as configured."""
        used = self.frames.bytes()
        if self._full_since is None:
            self._full_since = time.monotonic()
            log.warning("external.outbox_full", bytes=used, max_bytes=self.cfg.outbox_max_bytes,
                        action=self.cfg.outbox_full, folder=str(self.folder),
                        hint="the endpoint is not keeping up or is down; raise external.outbox_max_bytes, or fix "
                             "the endpoint" + ("; the slot is held meanwhile (WAL is retained on the source)"
                                               if self.cfg.outbox_full == "pause" else
                                               "; new events go to the dead-letter store (`pulse dlq`)"))
        if self.cfg.outbox_full == "pause":
            raise TransientError(f"external outbox full ({used} of {self.cfg.outbox_max_bytes} bytes): "
                                 "waiting for the endpoint to drain it (outbox_full = pause)")
        from pulse.sinks.external.outbox import OutboxRow

        now = time.time()
        rows = []
        for e in events:
            part = e.part.decode()
            rows.append(OutboxRow(e.lsn, e.seq, e.lane_key, e.content_id, e.event_id, e.ce_id,
                                  part[:e.attrs_len - 1] + "}", part[e.attrs_len - 1 + 8:-1], 0, now))
        conn = self._connection()
        conn.autocommit = True
        try:
            self.outbox.add_dead(conn, rows, None, "outbox_full: the local outbox was at outbox_max_bytes")
        except psycopg2.Error as exc:
            self._drop_connection()
            raise TransientError(f"external sink: dead-lettering an overflow failed: {str(exc).strip()}") from exc
        self.overflowed += len(rows)
        self.stats.dead += len(rows)
        from pulse.sinks.external.delivery import DEAD, dead_letter_metric

        DEAD.labels("outbox_full").inc(len(rows))
        dead_letter_metric(self.name, "outbox_full", len(rows))
        # An empty frame moves the outbox's position past the batch.
        return build_frame([], last, now, self.flow.lane_count)

    def _wait_for_room(self, size: int) -> None:
        """Kafka mode: hold at most inflight_max_bytes in memory; the consumer retries the batch meanwhile."""
        flow, frames = self.flow, self.frames
        deadline = time.monotonic() + 1.0
        while frames.bytes() + flow.inflight_bytes + size > self.cfg.inflight_max_bytes:
            if time.monotonic() > deadline:
                raise TransientError("external sink: the endpoint is behind by inflight_max_bytes; waiting")
            time.sleep(0.01)

    def flush(self) -> Position | None:
        if self.kind == "kafka" and self.flow is not None:
            return self.flow.delivered
        return None

    def _write_postgres(self, batch: Batch) -> Position:
        rows = [encode(e, self.cfg.source) for e in batch.events]
        conn = self._connection()
        try:
            pos, fresh = self.outbox.append(conn, rows, batch.last)
        except psycopg2.Error as exc:
            self._drop_connection()
            raise TransientError(f"external sink: appending to the outbox failed: {str(exc).strip()}") from exc
        self._pg_appended += len(fresh)
        lanes = len(self._lanes)
        if lanes:
            for index in {r.lane_key % lanes for r in fresh}:
                self._lanes[index].wake.set()
        return pos

    def replay(self, batch: Batch) -> None:
        """Queue full events whose truncated form was delivered, under that form's CloudEvent id."""
        from pulse.sinks.dead_letter import truncate

        if self.kind != "postgres":
            events = [encode_event(e, self.cfg.source, id_of=truncate(e)) for e in batch.events]
            top = max(e.position for e in batch.events)
            self.frames.append(build_frame(events, top, time.time(), self.flow.lane_count), top)
            self.flow.appended_frame(top, len(events))
            return
        rows = [encode(e, self.cfg.source, id_of=truncate(e)) for e in batch.events]
        conn = self._connection()
        try:
            self.outbox.put_replays(conn, rows)
            self._pg_appended += len(rows)  # their truncated form left the outbox when it was delivered
        except psycopg2.Error as exc:
            self._drop_connection()
            raise TransientError(f"external sink: queuing replays failed: {str(exc).strip()}") from exc
        for lane in self._lanes:
            lane.rewind.set()
            lane.wake.set()

    def close(self) -> None:
        timeout = self.cfg.read_timeout_s + self.cfg.connect_timeout_s + 5
        if self.flow is not None:
            # A request in flight finishes (or times out); what is unanswered stays in the outbox.
            self.flow.close(timeout)
            self.flow = None
        if self.frames is not None:
            self.frames.close()
            self.frames = None
        self._stop.set()
        for lane in self._lanes:
            lane.wake.set()
        for lane in self._lanes:
            lane.join(timeout)
            if lane.is_alive():
                log.warning("external.lane_still_running", lane=lane.index)
        self._lanes = []
        if self._client is not None:
            self._client.close()
        self._drop_connection()

    # -- status ---------------------------------------------------------------------

    def status(self) -> dict:
        # `backlog` / `backlog_oldest_s`: the generic keys behind pulse_sink_backlog_*{sink}.
        heads = list(self.stats.heads.values())
        out: dict[str, object] = {
            "outbox": self.kind,
            "backlog": max(0, self._pg_appended - self.stats.removed),
            "backlog_oldest_s": round(max(0.0, time.time() - min(heads)), 3) if heads else 0.0,
            "delivered": self.stats.delivered,
            "dead_lettered": self.stats.dead,
            "failed_attempts": self.stats.failures,
            "last_error": self.stats.last_error,
            "circuit": self.breaker.state,
            "circuit_opened": self.breaker.opened,
        }
        flow, frames = self.flow, self.frames
        if flow is not None and frames is not None:
            oldest = flow.oldest_pending()
            age = round(max(0.0, time.time() - oldest), 3) if oldest is not None else 0.0
            used = frames.bytes()
            out.update({
                "outbox_bytes": used,
                "outbox_max_bytes": self.cfg.outbox_max_bytes if self.kind == "local" else self.cfg.inflight_max_bytes,
                "outbox_full": self._full_since is not None,
                "outbox_full_action": self.cfg.outbox_full,
                "pending": max(0, flow.pending_events),
                "oldest_pending_s": age,
                "backlog": max(0, flow.pending_events),
                "backlog_oldest_s": age,
                "delivered_position": str(flow.delivered),
                "overflow_dead_lettered": self.overflowed,
                "folder": str(self.folder) if self.folder else None,
            })
            metrics.EXTERNAL_OUTBOX_BYTES.labels(self.name).set(used)
            metrics.EXTERNAL_OUTBOX_EVENTS.labels(self.name).set(max(0, flow.pending_events))
            metrics.EXTERNAL_OUTBOX_OLDEST.labels(self.name).set(age)
        return out

    # -- helpers --------------------------------------------------------------------

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = self.outbox.connect(name=f"pulse-sink-{self.name}")
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None


__all__ = ["ExternalSink", "outbox_folder", "outbox_kind", "sink_key"]
