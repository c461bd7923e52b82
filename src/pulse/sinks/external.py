"""The external HTTP sink: every event delivered to an endpoint Pulse does not control.

Guarantee: each event reaches the endpoint at least once, always under the
same CloudEvent id (and the same webhook-id / Idempotency-Key for the same
request), in source order per content id; what the endpoint refuses for
good, or what runs out of attempts or age, lands in the dead-letter store
(`pulse dlq`). A dead endpoint never holds the replication slot nor the
other sinks back.

How (docs/sinks/external.md):

    write(batch) --one transaction--> external_outbox rows + external_position
       (returns batch.last at once: the slot advances)
    Lane threads (one per `concurrency`, content ids hashed onto them)
       --read outbox in order--> POST (signed) --2xx--> delete rows
                                            \\--terminal / exhausted--> external_dead_letter

`open()` returns the position stored next to the outbox, so a restart hands
the sink only events it does not hold yet; the lanes resume from whatever is
still in the outbox, re-sending the same bytes under the same ids.
"""

from __future__ import annotations

import threading

import psycopg2

from pulse.config import DatabaseConfig, ExternalConfig, Settings
from pulse.errors import ConfigError, TransientError
from pulse.log import get_logger
from pulse.model import Batch, Position
from pulse.sinks.base import Sink
from pulse.sinks.external_delivery import CircuitBreaker, HttpClient, Lane, LaneStats, RetryPolicy
from pulse.sinks.external_outbox import Outbox, encode

log = get_logger(__name__)


def sink_key(db: DatabaseConfig, name: str) -> str:
    """Rows of one deployment (slot) and sink name; two deployments may share a state schema."""
    return f"{db.slot}/{name}"


class ExternalSink(Sink):
    """Outbox in Pulse's schema + delivery lanes to the external HTTP endpoint."""

    name = "external"

    takes_broadcast_copies = False  # each event once, in order per content id
    takes_replays = True  # a dead letter replayed over Kafka goes out again in full, under its id

    def __init__(self, cfg: ExternalConfig, db: DatabaseConfig, *, name: str = "external",
                 client: HttpClient | None = None) -> None:
        if not cfg.url:
            raise ConfigError("the external sink needs an endpoint URL",
                              hint="set PULSE_EXTERNAL_URL (e.g. the URL `pulse receiver` prints)")
        self.name = name
        self.cfg = cfg
        self.db = db
        self.snapshot_mode = "rows" if cfg.snapshot else "none"  # external.snapshot
        self.outbox = Outbox(db.dsn(), db.state_schema, sink_key(db, name))
        self.client = client or HttpClient(cfg)
        self.stats = LaneStats()
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_open_s, cfg.breaker_open_max_s)
        self.policy = RetryPolicy.from_config(cfg)
        self._stop = threading.Event()
        self._lanes: list[Lane] = []
        self._conn = None
        self._appended = 0  # outbox rows at open plus rows appended since (backlog = this - stats.removed)

    @classmethod
    def from_settings(cls, settings: Settings, name: str = "external") -> "ExternalSink":
        return cls(settings.external, settings.database, name=name)

    # -- the sink contract ----------------------------------------------------------

    def open(self) -> Position:
        conn = self._connection()
        self.outbox.check_schema(conn)
        try:
            pos = self.outbox.position(conn)
            backlog, _oldest = self.outbox.backlog(conn)
            conn.rollback()
            self._appended = backlog + self.stats.removed
        except psycopg2.Error as exc:
            self._conn = None
            raise TransientError(f"external sink: reading its position failed: {str(exc).strip()}") from exc
        if not self._lanes:
            for i in range(self.cfg.concurrency):
                lane = Lane(i, self.cfg.concurrency, self.outbox, self.client, self.cfg, self.breaker,
                            self.policy, self._stop, self.stats)
                lane.start()
                self._lanes.append(lane)
        log.info("external.opened", position=str(pos), outbox=backlog, lanes=self.cfg.concurrency,
                 mode=self.cfg.mode, signed=self.cfg.secret is not None)
        return pos

    def write(self, batch: Batch) -> Position:
        rows = [encode(e, self.cfg.source) for e in batch.events]
        conn = self._connection()
        try:
            pos, fresh = self.outbox.append(conn, rows, batch.last)
        except psycopg2.Error as exc:
            self._drop_connection()
            raise TransientError(f"external sink: appending to the outbox failed: {str(exc).strip()}") from exc
        self._appended += len(fresh)
        lanes = len(self._lanes)
        if lanes:
            for index in {r.lane_key % lanes for r in fresh}:
                self._lanes[index].wake.set()
        return pos

    def replay(self, batch: Batch) -> None:
        """Queue full events whose truncated form was delivered, under that form's CloudEvent id."""
        from pulse.sinks.dead_letter import truncate

        rows = [encode(e, self.cfg.source, id_of=truncate(e)) for e in batch.events]
        conn = self._connection()
        try:
            self.outbox.put_replays(conn, rows)
            self._appended += len(rows)  # their truncated form left the outbox when it was delivered
        except psycopg2.Error as exc:
            self._drop_connection()
            raise TransientError(f"external sink: queuing replays failed: {str(exc).strip()}") from exc
        for lane in self._lanes:
            lane.rewind.set()
            lane.wake.set()

    def close(self) -> None:
        self._stop.set()
        for lane in self._lanes:
            lane.wake.set()
        # A request in flight finishes (or times out); its rows stay in the outbox if unanswered.
        for lane in self._lanes:
            lane.join(self.cfg.read_timeout_s + self.cfg.connect_timeout_s + 5)
            if lane.is_alive():
                log.warning("external.lane_still_running", lane=lane.index)
        self._lanes = []
        self.client.close()
        self._drop_connection()

    # -- status ---------------------------------------------------------------------

    def status(self) -> dict:
        import time

        heads = list(self.stats.heads.values())
        return {
            "backlog": max(0, self._appended - self.stats.removed),
            "backlog_oldest_s": round(max(0.0, time.time() - min(heads)), 3) if heads else 0.0,
            "delivered": self.stats.delivered,
            "dead_lettered": self.stats.dead,
            "failed_attempts": self.stats.failures,
            "last_error": self.stats.last_error,
            "circuit": self.breaker.state,
            "circuit_opened": self.breaker.opened,
        }

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


__all__ = ["ExternalSink", "sink_key"]
