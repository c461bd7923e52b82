"""The replication connection, on a thread of its own.

`ReplicationReader` owns psycopg2's `LogicalReplicationConnection`: it
reads pgoutput payloads, hands them on in chunks through a bounded queue,
answers keepalives and sends standby status updates with the position the
runtime says is durable (`acknowledge`). It never blocks for long: while
the queue is full (backpressure from the sinks) it keeps sending status
updates so the server does not time the connection out.

Idle slots must still advance (a quiet slot pins WAL): after
`heartbeat_interval_s` without traffic it emits a *transactional* logical
message (`pg_logical_emit_message(true, ...)`); that transaction flows
through the pipeline like any other and its acknowledgement moves the
slot's restart point. When everything received is durable and no
transaction is open, the server's reported WAL end is acknowledged too.

Connection loss is transient: the reader reconnects with backoff and puts a
`Reconnected` marker in the queue (the server resends from the slot's
confirmed position; the runtime drops what it already dispatched). A lost
or invalidated slot is terminal (`SlotLostError`).
"""

from __future__ import annotations

import queue
import random
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg2
import psycopg2.extras

from pulse import metrics
from pulse.config import DatabaseConfig
from pulse.errors import PulseError, SlotLostError, TerminalError
from pulse.log import get_logger
from pulse.source.db import connect
from pulse.source import native
from pulse.source.pgoutput import lsn_to_str

log = get_logger(__name__)

HEARTBEAT_PREFIX = "pulse.heartbeat"
CHUNK_MESSAGES = 512
# Native reads: messages and payload bytes per call (one queue item each),
# and the bounds of one run of inserts (a read ends between runs, so a run
# may take a read past the first two). With the pipeline's queue of
# QUEUE_ITEMS_NATIVE items, at most 64 MiB of payloads are read ahead
# (typically a few MiB).
NATIVE_MESSAGES = 2048
NATIVE_BYTES = 4 << 20
RUN_MAX_ROWS = 16384
RUN_MAX_BYTES = 4 << 20
QUEUE_ITEMS = 64
QUEUE_ITEMS_NATIVE = 8
# A fast shutdown of the server waits until every logical walsender's client has
# confirmed all WAL sent. While some of it is not durable in every sink (a sink
# down, or writing into this very server), Pulse cannot confirm, and the server
# would never stop. After this many seconds without new data and with WAL
# unconfirmed, the reader asks the server (a plain connection attempt) whether
# it is shutting down, and if so lets go of the replication connection.
SHUTDOWN_PROBE_S = 5.0


def queue_items(cfg: DatabaseConfig) -> int:
    """The size of the reader's queue, in items: native reads are much bigger than Python chunks."""
    return QUEUE_ITEMS_NATIVE if cfg.native_reader and native.available() else QUEUE_ITEMS


@dataclass(frozen=True, slots=True)
class Reconnected:
    """Marker: a new replication session starts; partial decoder state is void."""

    session: int


@dataclass(frozen=True, slots=True)
class ReaderFailed:
    """Marker: the reader stopped with a terminal error."""

    error: BaseException


class ReplicationReader(threading.Thread):
    def __init__(
        self,
        cfg: DatabaseConfig,
        out: "queue.Queue[object]",
        *,
        confirmable: Callable[[int, int, bool], int] = lambda acked, _wal_end, _quiet: acked,
        extra_options: dict[str, str] | None = None,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name="pulse-replication", daemon=True)
        self.cfg = cfg
        self.out = out
        # (acknowledged LSN, server's WAL end, reader quiet) -> the LSN that may be confirmed:
        # the runtime's rule (`runtime.progress.AckTracker.confirmable`); by default never past what was acked.
        self.confirmable = confirmable
        self.extra_options = extra_options or {}
        self.server_settings = server_settings or {}
        self.stop_event = threading.Event()
        self._ack = 0
        self._ack_lock = threading.Lock()
        self.sent_ack = 0
        self.server_wal_end = 0
        self.last_message_at = time.monotonic()
        # For /readyz (pulse.health): a session is streaming, and when its loop last ran.
        self.connected = False
        self.polled_at = time.monotonic()
        self.last_disconnect: str | None = None
        self.session = 0
        self.wire = native.load() if cfg.native_reader else None
        if cfg.native_reader and self.wire is None:
            log.warning("native.unavailable", note="pulse.source._wire was not built (no C compiler at install?): "
                        "using the pure-Python reader")
        self.error: BaseException | None = None
        self.messages = 0
        # Transaction state seen on the wire (first byte of each payload), so
        # the idle acknowledgement never jumps over an open transaction.
        self._in_txn = False
        self._open_streams: set[int] = set()
        self._last_commit_end = 0
        self._native_session = False
        self._last_feedback = 0.0
        self._last_probe = 0.0

    # -- called from other threads ------------------------------------------

    def acknowledge(self, lsn: int) -> None:
        """Everything up to `lsn` is durable in every sink (monotonic)."""
        with self._ack_lock:
            if lsn > self._ack:
                self._ack = lsn

    @property
    def acked(self) -> int:
        return self._ack

    def stop(self) -> None:
        self.stop_event.set()

    # -- the thread ------------------------------------------------------------

    def run(self) -> None:
        backoff = 0.5
        while not self.stop_event.is_set():
            sessions = self.session
            try:
                self._session()
                return
            except SlotLostError as exc:
                self._fail(exc)
                return
            except TerminalError as exc:
                self._fail(exc)
                return
            except (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.DatabaseError) as exc:
                lost = _slot_error(exc, self.cfg)
                if lost is not None:
                    self._fail(lost)
                    return
                if self.stop_event.is_set():
                    return
                if self.session > sessions:  # the lost session had streamed: start the backoff over
                    backoff = 0.5
                delay = random.uniform(0, backoff)  # full jitter
                metrics.REPLICATION_CONNECTED.set(0)
                metrics.REPLICATION_DISCONNECTS.inc()
                self.last_disconnect = str(exc).strip()
                log.warning("replication.disconnected", error=str(exc).strip(), retry_in_s=round(delay, 2))
                self.stop_event.wait(delay)
                backoff = min(backoff * 2, 30.0)
            except BaseException as exc:  # a bug: stop the pipeline loudly rather than spin
                self._fail(exc)
                return

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        log.error("replication.failed", error=str(exc))
        self._put(ReaderFailed(exc), None)

    def _connect(self):
        settings = dict(native.SERVER_SETTINGS)  # both readers: ISO text, in UTC (not the database's defaults)
        settings.update(self.server_settings)
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        conn = psycopg2.connect(
            self.cfg.dsn(),
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            application_name="pulse-replication",
            options=options or None,
        )
        return conn

    def _start_options(self) -> dict[str, str]:
        opts = {
            "proto_version": str(self.cfg.protocol_version),
            "publication_names": self.cfg.publication,
            "messages": "true",
        }
        if self.cfg.protocol_version >= 2:
            opts["streaming"] = "on"
        opts.update(self.extra_options)
        return opts

    def _session(self) -> None:
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.start_replication(
                slot_name=self.cfg.slot,
                decode=False,
                options=self._start_options(),
                status_interval=self.cfg.status_interval_s,
            )
            self.session += 1
            self.connected = True
            self.polled_at = time.monotonic()
            self._in_txn = False
            self._open_streams.clear()
            if self.session > 1:
                self._put(Reconnected(self.session), cur)
            metrics.REPLICATION_CONNECTED.set(1)
            log.info("replication.started", slot=self.cfg.slot, session=self.session,
                     proto=self.cfg.protocol_version)
            self._native_session = self.wire is not None
            if self.wire is not None:
                self._loop_native(conn, cur)
            else:
                self._loop(conn, cur)
        finally:
            self.connected = False
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def _loop(self, conn, cur) -> None:
        chunk: list[bytes] = []
        hb = _Heartbeat(self.cfg)
        read = cur.read_message
        track = self._track
        stopping = self.stop_event.is_set
        try:
            while not stopping():
                # Hot loop: locals only; the GIL is shared with the dispatcher.
                msg = read()
                if msg is not None:
                    payload = msg.payload
                    if payload[0] != 0x49:  # not an Insert: maybe a transaction boundary
                        track(payload)
                    chunk.append(payload)
                    if len(chunk) >= CHUNK_MESSAGES:
                        self.messages += len(chunk)
                        self.last_message_at = time.monotonic()
                        self._put(chunk, cur)
                        chunk = []
                    continue
                now = time.monotonic()
                self.polled_at = now
                if chunk:
                    self.messages += len(chunk)
                    self.last_message_at = now
                    self._put(chunk, cur)
                    chunk = []
                self.server_wal_end = max(self.server_wal_end, cur.wal_end or 0)
                self._feedback(cur)
                self._let_go_if_server_stops(now)
                if now - hb.last_activity(self) >= self.cfg.heartbeat_interval_s:
                    hb.emit()
                try:
                    select.select([conn], [], [], min(1.0, self.cfg.status_interval_s))
                except InterruptedError:
                    pass
        finally:
            hb.close()
        # Graceful stop: hand on what was read, report the final position.
        if chunk:
            self._put(chunk, cur)
        self._feedback(cur, force=True)

    def _loop_native(self, conn, cur) -> None:
        """The loop on `_wire`: runs of inserts come decoded, everything else as raw payloads.

        Items go on in the order they arrived, one queue item per read; a
        message that may change the fast relation's layout ends a read, so
        the layout is updated before the next Insert is decoded.
        """
        reader = self.wire.Reader(conn.pgconn_ptr, RUN_MAX_ROWS, RUN_MAX_BYTES)  # type: ignore[union-attr]
        layout = native.FastLayout(self.cfg.source_schema, self.cfg.protocol_version)
        observed = layout.OBSERVED
        hb = _Heartbeat(self.cfg)
        track = self._track
        timeout_ms = int(min(1.0, self.cfg.status_interval_s) * 1000)
        try:
            while not self.stop_event.is_set():
                columns, kinds = layout.columns, layout.kinds  # what this read's runs are decoded with
                items, flags = reader.read(timeout_ms, NATIVE_MESSAGES, NATIVE_BYTES)
                self.server_wal_end = max(self.server_wal_end, reader.wal_end)
                now = time.monotonic()
                self.polled_at = now
                if items:
                    changed = False
                    for item in items:
                        if type(item) is bytes and item[0] != 0x49:  # not an Insert: maybe a boundary
                            track(item)
                            if item[0] in observed:
                                changed |= layout.observe(item)
                    if changed:
                        reader.set_fast(layout.oid, layout.kinds)
                    self.messages = reader.messages
                    self.last_message_at = now
                    self._put(native.Items(items, columns, kinds), cur)
                if flags & self.wire.FLAG_ENDED:  # type: ignore[union-attr]
                    cur.read_message()  # raises the connection's own error
                    raise psycopg2.OperationalError("the replication stream ended")
                self._feedback(cur, force=bool(flags & self.wire.FLAG_REPLY))  # type: ignore[union-attr]
                if not items:
                    self._let_go_if_server_stops(now)
                if not items and now - hb.last_activity(self) >= self.cfg.heartbeat_interval_s:
                    hb.emit()
        finally:
            hb.close()
        self._feedback(cur, force=True)

    def _track(self, payload: bytes) -> None:
        kind = payload[0]
        if kind == 0x42:  # 'B'
            self._in_txn = True
        elif kind == 0x43:  # 'C': flags(1) commit_lsn(8) end_lsn(8)
            self._in_txn = False
            self._last_commit_end = int.from_bytes(payload[10:18], "big")
        elif kind == 0x53:  # 'S' stream start: xid
            self._open_streams.add(int.from_bytes(payload[1:5], "big"))
        elif kind == 0x63:  # 'c' stream commit: xid flags commit_lsn end_lsn
            self._open_streams.discard(int.from_bytes(payload[1:5], "big"))
            self._last_commit_end = int.from_bytes(payload[14:22], "big")
        elif kind == 0x41:  # 'A' stream abort: xid subxid
            xid = int.from_bytes(payload[1:5], "big")
            if xid == int.from_bytes(payload[5:9], "big"):
                self._open_streams.discard(xid)

    def _feedback(self, cur, force: bool = False) -> None:
        ack = self._ack
        now = time.monotonic()
        if self._native_session and now - self._last_feedback >= self.cfg.status_interval_s:
            # psycopg2 sends its periodic status update from read_message,
            # which the native loop never calls: send it from here.
            force = True
        quiet = not self._in_txn and not self._open_streams and self.out.empty() and ack >= self._last_commit_end
        if quiet:
            # Nothing of ours in flight: the runtime's progress decides whether the server's WAL end
            # can be confirmed (every sink holds everything dispatched: idle slots advance).
            wal_end = self.server_wal_end if self._native_session else (cur.wal_end or 0)
            confirmed = self.confirmable(ack, wal_end, quiet)
            if confirmed > ack:
                ack = confirmed
                self.acknowledge(ack)
        if ack > self.sent_ack or force:
            cur.send_feedback(write_lsn=ack, flush_lsn=ack, apply_lsn=ack, force=force)
            if force:
                self._last_feedback = now
            self.sent_ack = max(self.sent_ack, ack)
            log.debug("replication.ack", lsn=lsn_to_str(ack))
        else:
            cur.send_feedback()  # only sends when status_interval elapsed

    def _put(self, item: object, cur) -> None:
        # Backpressure: wait for room, but keep the session alive meanwhile.
        while True:
            try:
                self.out.put(item, timeout=0.5)
                return
            except queue.Full:
                if self.stop_event.is_set():
                    return  # not acknowledged, so the server sends it again next time
                if cur is not None:
                    self._feedback(cur)
                    self._let_go_if_server_stops(time.monotonic())

    def _let_go_if_server_stops(self, now: float) -> None:
        """Raise (and so reconnect later) when the server shuts down waiting for a confirmation we lack.

        Nothing is lost: what was not confirmed is sent again by the restarted
        server, and each sink skips what it already holds.
        """
        if (self.sent_ack >= self.server_wal_end or now - self.last_message_at < SHUTDOWN_PROBE_S
                or now - self._last_probe < SHUTDOWN_PROBE_S):
            return
        self._last_probe = now
        try:
            psycopg2.connect(self.cfg.dsn(), connect_timeout=3, application_name="pulse-probe").close()
        except psycopg2.OperationalError as exc:
            if "shutting down" in str(exc):
                log.warning("replication.server_stopping", unconfirmed_from=lsn_to_str(self.sent_ack),
                            note="the server waits for a confirmation the sinks cannot give yet: "
                                 "closing the replication connection so it can stop")
                raise psycopg2.OperationalError("the server is shutting down") from exc


class _Heartbeat:
    """Emits a transactional logical message on a plain connection when idle."""

    def __init__(self, cfg: DatabaseConfig) -> None:
        self.cfg = cfg
        self.conn = None
        self.last_emit = time.monotonic()
        self.emitted = 0

    def last_activity(self, reader: ReplicationReader) -> float:
        return max(self.last_emit, reader.last_message_at)

    def emit(self) -> None:
        self.last_emit = time.monotonic()
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.cfg)
                self.conn.autocommit = True
            with self.conn.cursor() as cur:
                # Transactional: only a transaction moves a quiet slot's restart point.
                cur.execute("SELECT pg_logical_emit_message(true, %s, now()::text)", (HEARTBEAT_PREFIX,))
            self.emitted += 1
        except psycopg2.Error as exc:
            log.warning("heartbeat.failed", error=str(exc).strip())
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
            self.conn = None


def _slot_error(exc: BaseException, cfg: DatabaseConfig) -> PulseError | None:
    text = str(exc)
    if "does not exist" in text and "replication slot" in text:
        return SlotLostError(
            f"replication slot {cfg.slot!r} does not exist any more: {text.strip()}",
            hint="it was dropped while Pulse ran; see `pulse doctor`, then backfill the gap",
        )
    if "invalidated" in text or "can no longer get changes" in text or "has been invalidated" in text:
        return SlotLostError(
            f"replication slot {cfg.slot!r} was invalidated: {text.strip()}",
            hint="the WAL it needed is gone; drop the slot, forget it in the slot registry, restart, and backfill",
        )
    if "publication" in text and "does not exist" in text:
        return TerminalError(f"publication {cfg.publication!r} does not exist", hint="run `pulse db init`")
    return None
