"""The in-process runtime (`pulse run`): source -> enrichment -> sinks.

Threads and queues:

    ReplicationReader --(bounded queue of payload chunks)--> dispatcher
    dispatcher: decode, assemble, route by table, gather --(one ByteQueue of chunks per sink)--> SinkWorker
    SinkWorker: the chunk's form the sink takes (columns, or enriched events) --> SinkDriver --> Sink

- One queue item: the chunk. A native run of inserts is an `EventChunk`
  (columns), what the row path decodes a `RowChunk` (`Change`s); either is
  enriched on the first sink thread that needs it, and shared by the others
  (`transform/columnar.py`, `transform/rows.py`). The dispatcher only
  decodes, routes each change by its table (`runtime/routing.py`) and
  gathers.

- Each sink has its own byte-bounded queue and its own durable position,
  read from the destination at start (`Sink.open`); the dispatcher hands a
  sink only events after the last position it has (so a fast sink redoes
  nothing on restart and a slow one misses nothing).
- The slot is acknowledged up to the last transaction every sink holds
  durably (`AckTracker`); a crash at any instant replays from there, and
  each sink skips what it already has.
- Backpressure: a full sink queue blocks the dispatcher, which stops reading
  from the reader's queue, which makes the reader stop reading the socket
  (it keeps the session alive meanwhile). Memory stays bounded.
- SIGTERM (`stop`) stops reading, lets every sink drain its queue and
  flush, acknowledges what is durable, and returns.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from pulse import health, metrics
from pulse.config import Settings
from pulse.errors import TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import Change, Position
from pulse.runtime.backfill import BackfillManager
from pulse.runtime.driver import Chunk, SinkDriver
from pulse.runtime.queues import ByteQueue
from pulse.runtime.progress import AckTracker
from pulse.runtime.routing import EVENTS, TableRouter
from pulse.source.db import connect, replica_identity
from pulse.schema import require_database
from pulse.sinks.base import Sink
from pulse.source import native
from pulse.source.changes import ChangeAssembler, Truncated, TxnEnd
from pulse.source.pgoutput import PgOutputDecoder, lsn_to_str
from pulse.source.replication import ReaderFailed, Reconnected, ReplicationReader, queue_items
from pulse.runtime.status import StatusWriter
from pulse.runtime.snapshot import WindowRebuilder, plan_targets, prepare_slot
from pulse.transform.columnar import EventChunk
from pulse.source.content import load_content
from pulse.transform.content_cache import ContentCache
from pulse.transform.rows import RowChunk, change_size

log = get_logger(__name__)

Clock = Callable[[], datetime]

# Row changes gathered into one RowChunk at most (a transaction's end hands them on sooner).
DISPATCH_CHUNK = 1000
# A native run this long or longer goes on as one EventChunk (columns); a
# shorter one is decoded row by row, where per-chunk costs would dominate.
COLUMNS_MIN_ROWS = 128


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class SinkWorker(threading.Thread):
    """Feeds one sink from its queue of chunks through its `SinkDriver` (forms, batches, retries, metrics)."""

    def __init__(self, sink: Sink, start: Position, tracker: AckTracker, settings: Settings,
                 on_terminal: Callable[[str, BaseException], None]) -> None:
        super().__init__(name=f"pulse-sink-{sink.name}", daemon=True)
        rt = settings.runtime
        self.sink = sink
        self.queue: ByteQueue[Chunk] = ByteQueue(rt.queue_max_bytes, rt.queue_max_events)
        self.enqueued = start  # highest position handed to this sink (dispatcher thread only)
        self.durable = start
        self.tracker = tracker
        self.batch_max = rt.batch_max_events
        self.on_terminal = on_terminal
        self.draining = threading.Event()  # finish the queue, then stop
        self.abort = threading.Event()  # stop now (another part failed)
        self.driver = SinkDriver(sink, batch_max=self.batch_max, stopping=self.abort.is_set)

    # The driver's counters, for status and tests.
    written = property(lambda self: self.driver.written)
    retries = property(lambda self: self.driver.retries)
    last_error = property(lambda self: self.driver.last_error)

    def _advance(self, pos: Position | None) -> None:
        if pos is not None and pos > self.durable:
            self.durable = pos
            self.tracker.durable(self.sink.name, pos)

    def _linger(self, chunks: list[Chunk]) -> None:
        """Add to `chunks` what arrives within the sink's `linger_s`, up to `batch_max` events.

        Not while draining or aborting: a shutdown writes what it has at once.
        """
        deadline = time.monotonic() + self.sink.linger_s
        n = _rows(chunks)
        while n < self.batch_max and not self.draining.is_set() and not self.abort.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            more = self.queue.get_many(self.batch_max - n, timeout=min(remaining, 0.2))
            chunks.extend(more)
            n += _rows(more)

    def run(self) -> None:
        name = self.sink.name
        try:
            while not self.abort.is_set():
                chunks = self.queue.get_many(self.batch_max, timeout=0.2)
                if chunks and self.sink.linger_s > 0:
                    self._linger(chunks)
                metrics.QUEUE_BYTES.labels(name).set(self.queue.bytes)
                metrics.QUEUE_EVENTS.labels(name).set(len(self.queue))
                if not chunks:
                    self._advance(self.driver.flush())
                    if self.draining.is_set() and len(self.queue) == 0:
                        return
                    continue
                self._advance(self.driver.write(chunks))
        except BaseException as exc:  # terminal, or a bug in the sink: stop everything
            if not self.abort.is_set():
                metrics.ERRORS.labels(name, "terminal").inc()
                self.on_terminal(name, exc)


class Pipeline:
    """Wires the source, the enrichment and the sinks; `run()` blocks until stopped."""

    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Sink],
        *,
        clock: Clock = utcnow,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        if not sinks:
            raise TerminalError("no sinks configured", hint="set runtime.sinks / --sink")
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise TerminalError(f"sink names must be unique: {names}", hint="give each sink its own name")
        self.settings = settings
        self.sinks = list(sinks)
        self.clock = clock
        self.server_settings = server_settings or {}
        self.stop_event = threading.Event()
        self.failure: BaseException | None = None
        self.ready = threading.Event()
        self.workers: dict[str, SinkWorker] = {}
        self.backfill: BackfillManager | None = None
        self.rebuilder: WindowRebuilder | None = None
        self._assembler: ChangeAssembler | None = None
        self.slot_created = False
        self.reader: ReplicationReader | None = None
        self.tracker: AckTracker | None = None
        self.cache = ContentCache()
        self.events_in = 0
        self.truncates = 0
        # Relaying sinks forward content rows too (the Kafka producer's compacted topic).
        self._content_hooks = [s.publish_content for s in self.sinks if s.relays]
        # Row changes not handed on yet, and the RowChunks handed on that no sink has enriched yet
        # (settled before the content cache changes: `_on_content`).
        self._pending: list[Change] = []
        self._pending_bytes = 0
        self._unbuilt: deque[RowChunk] = deque()
        self._router = TableRouter(events=self._on_event, content=self._on_content, watermarks=self._on_watermark)
        self._status = StatusWriter(settings.database)  # the status document's row (`pulse status`)
        self._last_status = 0.0
        self._ack_moved_at = time.monotonic()
        self._last_acked = 0
        self._last_stall_warning = 0.0
        self._housekept_at = time.monotonic()

    # -- control ---------------------------------------------------------------

    def stop(self) -> None:
        self.stop_event.set()

    def _fail(self, where: str, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            log.error("pipeline.failed", where=where, error=str(exc))
        self.stop_event.set()

    # -- startup -----------------------------------------------------------------

    def _prepare(self) -> None:
        db = self.settings.database
        require_database(db)  # read-only: `pulse db init` (as a role with DDL rights) set the schema up
        rows, windows = plan_targets(self.settings, self.sinks)
        _info, created = prepare_slot(self.settings, rows, windows)
        self.slot_created = created
        conn = connect(db)
        try:
            with conn.cursor() as cur:
                self.cache = load_content(cur, db.source_schema)
                identity = replica_identity(cur, db.source_schema, EVENTS)
        finally:
            conn.close()
        log.info("content.loaded", rows=len(self.cache))
        warning = old_values_warning(identity, self.sinks, f"{db.source_schema}.{EVENTS}")
        if warning:
            log.warning("source.old_values_unavailable", note=warning)

    def _open_sinks(self) -> dict[str, Position]:
        """Each sink's stored position. The sinks open side by side (each waits on its own destination:
        a table to ensure, a script to load, a spool or outbox to scan), each `open` retried under the
        driver's policy until it works, we stop, or another sink's open failed for good."""
        failed = threading.Event()

        def open_one(sink: Sink) -> Position:
            opener = SinkDriver(sink, batch_max=1, retry_event="sink.open.retry",
                                stopping=lambda: self.stop_event.is_set() or failed.is_set())
            try:
                position = opener.call(sink.open)
            except BaseException:
                failed.set()
                raise
            log.info("sink.opened", sink=sink.name, position=str(position))
            return position

        if len(self.sinks) == 1:
            return {self.sinks[0].name: open_one(self.sinks[0])}
        with ThreadPoolExecutor(max_workers=len(self.sinks), thread_name_prefix="pulse-open") as pool:
            futures = [(sink.name, pool.submit(open_one, sink)) for sink in self.sinks]
        errors = [f.exception() for _, f in futures if f.exception() is not None]
        if errors:  # the first that failed for good, not one that stopped retrying because of it
            final = [e for e in errors if not isinstance(e, TransientError)]
            raise (final or errors)[0]
        return {name: f.result() for name, f in futures}

    # -- main loop -----------------------------------------------------------------

    def run(self) -> None:
        self._prepare()
        try:
            positions = self._open_sinks()
        except BaseException:
            self._close_sinks()  # those that opened: their threads and connections
            raise
        volatile = [s.name for s in self.sinks if not s.durable]
        self.tracker = tracker = AckTracker(positions, volatile=volatile)
        if volatile and len(volatile) == len(self.sinks):
            log.warning("slot.acknowledged_without_durable_sink", sinks=",".join(volatile),
                        note="every sink named keeps events in memory only: the slot moves past what they "
                             "read, and a restart does not replay it")
        for sink in self.sinks:
            metrics.declare_sink(sink.name)
            worker = SinkWorker(sink, positions[sink.name], tracker, self.settings, self._fail)
            self.workers[sink.name] = worker
            worker.start()
        self.backfill = BackfillManager(self)
        db = self.settings.database
        in_q: queue.Queue[object] = queue.Queue(maxsize=queue_items(db))
        self.reader = reader = ReplicationReader(
            db, in_q, confirmable=tracker.confirmable, server_settings=self.server_settings
        )
        reader.start()
        windowed = {s.name: s for s in self.sinks if s.snapshot_mode == "window"}
        if windowed:
            # An initial snapshot rebuilds these sinks' windows (runtime/snapshot.py).
            self.rebuilder = WindowRebuilder(db, windowed, self.stop_event)
            self.rebuilder.start()
        self.ready.set()
        health.READINESS.register("replication", self.readiness)
        decoder = PgOutputDecoder(self.settings.database.protocol_version)
        assembler = ChangeAssembler(self.settings.database.source_schema,
                                    state_schema=self.settings.database.state_schema)
        self._assembler = assembler  # its xid: the transaction of the change being handled
        try:
            while not self.stop_event.is_set():
                try:
                    item = in_q.get(timeout=0.2)
                except queue.Empty:
                    item = None
                if type(item) is native.Items:
                    self._on_native(item, decoder, assembler)  # type: ignore[arg-type]
                    self._flush_pending()
                elif type(item) is list:
                    self._feed(item, decoder, assembler)
                    self._flush_pending()
                elif isinstance(item, Reconnected):
                    decoder = PgOutputDecoder(self.settings.database.protocol_version)
                    assembler.reset()
                elif isinstance(item, ReaderFailed):
                    self._fail("replication", item.error)
                    break
                self._housekeeping()
        except BaseException as exc:
            self._fail("dispatcher", exc)
        finally:
            self._shutdown(assembler)
        if self.failure is not None:
            raise self.failure

    def _feed(self, payloads, decoder: PgOutputDecoder, assembler: ChangeAssembler) -> None:
        """The row path: payloads one by one through the decoder, the assembler and `_handle`."""
        decode, feed, handle = decoder.decode, assembler.feed, self._handle
        for payload in payloads:
            for out in feed(decode(payload)):
                handle(out)

    def _on_native(self, batch: native.Items, decoder: PgOutputDecoder, assembler: ChangeAssembler) -> None:
        """A native read: raw payloads through the decoder, long runs of inserts as one chunk each."""
        decode, feed, handle = decoder.decode, assembler.feed, self._handle
        for item in batch.items:
            if type(item) is bytes:
                for out in feed(decode(item)):
                    handle(out)
                continue
            n = item[0]
            if n < COLUMNS_MIN_ROWS or (self.backfill is not None and self.backfill.windows) or b"x" in batch.kinds:
                # Short runs, any run while a backfill window is open (it must
                # see each live id), and runs of a relation with columns the
                # native reader skips (a column the source gained: its values
                # ride in EnrichedEvent.extra): the row path, on the same payloads.
                self._feed(native.run_payloads(item), decoder, assembler)
                continue
            lsn, first_seq, commit_ts = assembler.claim(n)
            chunk = EventChunk(native.run_table(item, batch.columns, batch.kinds), lsn=lsn, first_seq=first_seq,
                               commit_ts=commit_ts, now=self.clock(), cache=self.cache, backfill=False)
            self._flush_pending()  # events before the run go first
            self.events_in += n
            metrics.EVENTS_IN.inc(n)
            metrics.CHANGES_IN.labels("engagement_events", "insert").inc(n)
            if self._enqueue_chunk(chunk, self.workers.values()):
                self.tracker.dispatched(chunk.position)  # type: ignore[union-attr]

    def _handle(self, out: object) -> None:
        t = type(out)
        if t is Change:
            self._router.route(out)  # type: ignore[arg-type]
        elif t is TxnEnd:
            # Events before this boundary are handed on first, so the
            # transaction's last position is known to the tracker.
            self._flush_pending()
            self.tracker.close_txn(out.end_lsn, out.commit_ts.timestamp())  # type: ignore[union-attr]
        elif t is Truncated:
            self.truncates += 1
            metrics.TRUNCATES.labels(out.table).inc()  # type: ignore[union-attr]
            log.warning("source.truncate", table=out.table,  # type: ignore[union-attr]
                        note="TRUNCATE is not propagated to sinks; backfill or clean destinations by hand")

    # -- table routes (`runtime/routing.py`) --------------------------------------

    def _on_event(self, change: Change) -> None:
        """A change of `engagement_events`: gathered, handed on as a RowChunk at the transaction's end."""
        if self.backfill is not None and self.backfill.windows:
            self.backfill.observe(change, self._assembler.xid if self._assembler is not None else None)
        self._pending.append(change)
        self._pending_bytes += change_size(change)
        if len(self._pending) >= DISPATCH_CHUNK:
            self._flush_pending()

    def _on_content(self, change: Change) -> None:
        """A change of `content`: the cache follows, once the events before it are enriched with the old one."""
        metrics.CHANGES_IN.labels("content", change.op).inc()
        self._flush_pending()
        unbuilt = self._unbuilt
        while unbuilt:
            unbuilt.popleft().settle()  # at once if a sink built it already
        self.cache.apply(change.op, change.new, change.old, change.types)
        for hook in self._content_hooks:
            hook(change)

    def _on_watermark(self, change: Change) -> None:
        """A backfill's watermark: its chunk, to the run's target sinks only."""
        self._flush_pending()  # live events before the watermark go first
        chunk = self.backfill.on_watermark(change) if self.backfill else None
        if chunk:
            self._dispatch_to(chunk, self.backfill.targets(change.new["run_id"]))  # type: ignore[union-attr,index]

    def _flush_pending(self) -> None:
        """Hand the gathered row changes to every sink queue as one RowChunk (one lock round trip per sink)."""
        changes = self._pending
        if not changes:
            return
        chunk = RowChunk(changes, self.cache, self.clock(), self._pending_bytes)
        self._pending = []
        self._pending_bytes = 0
        self.events_in += len(changes)
        metrics.EVENTS_IN.inc(len(changes))
        self._changes_by_op(changes)
        unbuilt = self._unbuilt
        while unbuilt and unbuilt[0].built:
            unbuilt.popleft()
        unbuilt.append(chunk)  # until a sink builds it, or a content change settles it
        if self._enqueue_chunk(chunk, self.workers.values()):
            self.tracker.dispatched(chunk.position)

    def _dispatch_to(self, chunk: EventChunk, sinks: list[str]) -> None:
        """A backfill chunk: only to the run's target sinks, as one queue item (its position is its last)."""
        if self._enqueue_chunk(chunk, [self.workers[name] for name in sinks]):
            self.tracker.dispatched(chunk.position, sinks)

    def _enqueue_chunk(self, chunk: Chunk, workers) -> bool:
        """Put `chunk` on each worker's queue, minus the rows it already has; False when stopping."""
        last = chunk.position
        for worker in workers:
            if last <= worker.enqueued:
                continue  # this sink already has all of them (restart or reconnect replay)
            part = chunk.after(worker.enqueued) if chunk.first <= worker.enqueued else chunk
            while not worker.queue.put_many([part], part.size_hint(), timeout=0.5, count=len(part)):
                if self.stop_event.is_set():
                    return False
                self._housekeeping()  # backpressure: keep acknowledging while waiting
            worker.enqueued = last
        return True

    @staticmethod
    def _changes_by_op(changes: list[Change]) -> None:
        counts: dict[str, int] = {}
        for c in changes:
            counts[c.op] = counts.get(c.op, 0) + 1
        for op, n in counts.items():
            metrics.CHANGES_IN.labels("engagement_events", op).inc(n)

    def _housekeeping(self) -> None:
        tracker, reader = self.tracker, self.reader
        assert tracker is not None and reader is not None
        acked = tracker.ackable()
        reader.acknowledge(acked)
        now = time.monotonic()
        self._housekept_at = now
        current = reader.acked
        if current != self._last_acked:
            self._last_acked = current
            self._ack_moved_at = now
            metrics.ACKED_LSN.set(current)
        if reader.server_wal_end:
            metrics.SLOT_LAG.set(max(0, reader.server_wal_end - current))
        stall = now - self._ack_moved_at
        if (tracker.pending() and stall > self.settings.database.ack_stall_warn_s
                and now - self._last_stall_warning > self.settings.database.ack_stall_warn_s):
            self._last_stall_warning = now
            log.warning("ack.stalled", seconds=round(stall), pending_txns=tracker.pending(),
                        waiting_on=",".join(tracker.laggards()),
                        note="the slot cannot advance until these sinks make their events durable; WAL is retained")
        if now - self._last_status >= 2.0:
            self._last_status = now
            self._write_status()
            if self.backfill is not None:
                self.backfill.poll()

    # -- readiness (/readyz, pulse.health) ----------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """Ready: the replication session streams, its loop and the dispatcher run, and the slot is
        acknowledged as sinks make events durable (no transaction older than runtime.ready_stall_s
        waits while the acknowledgement stands still)."""
        reader, tracker = self.reader, self.tracker
        if reader is None or tracker is None or not self.ready.is_set():
            return False, "starting"
        if self.stop_event.is_set():
            return False, "stopping"
        limit = self.settings.runtime.ready_stall_s
        now = time.monotonic()
        if not reader.connected:
            return False, f"replication disconnected ({reader.last_disconnect or 'connecting'}); reconnecting"
        if now - reader.polled_at > limit:
            return False, f"replication loop silent for {now - reader.polled_at:.0f} s"
        if now - self._housekept_at > limit:
            return False, f"dispatcher silent for {now - self._housekept_at:.0f} s"
        oldest = tracker.oldest_pending_commit_ts()
        waiting = time.time() - oldest if oldest else 0.0
        stalled = now - self._ack_moved_at
        if waiting > limit and stalled > limit:
            return False, (f"slot not acknowledged for {stalled:.0f} s, {tracker.pending()} transactions waiting "
                           f"on {','.join(tracker.laggards()) or '?'}")
        return True, f"replication connected, acknowledged {lsn_to_str(reader.acked)}"

    # -- status for `pulse status` ---------------------------------------------

    def status(self) -> dict:
        tracker, reader = self.tracker, self.reader
        oldest = tracker.oldest_pending_commit_ts() if tracker else None
        details = {name: _safe_status(w.sink) for name, w in self.workers.items()}
        now = time.time()
        lags = {name: round(tracker.sink_lag_seconds(name, now), 3) if tracker else 0.0 for name in self.workers}
        for name, detail in details.items():
            metrics.sink_gauges(name, detail)
            metrics.SINK_LAG.labels(name).set(lags[name])
        return {
            "pid": os.getpid(),
            "updated_at": self.clock().isoformat(),
            "events_in": self.events_in,
            "truncates": self.truncates,
            "acked_lsn": lsn_to_str(reader.acked) if reader else None,
            "server_wal_end": lsn_to_str(reader.server_wal_end) if reader else None,
            "pending_txns": tracker.pending() if tracker else 0,
            "lag_seconds": round(time.time() - oldest, 3) if oldest else 0.0,
            "sinks": {
                name: {
                    "durable": str(w.durable),
                    "enqueued": str(w.enqueued),
                    "queue_events": len(w.queue),
                    "queue_bytes": w.queue.bytes,
                    "queue_max_bytes": w.queue.max_bytes,
                    "written": w.written,
                    "lag_seconds": lags[name],
                    "retries": w.retries,
                    "last_error": w.last_error,
                    "details": details[name],
                }
                for name, w in self.workers.items()
            },
        }

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # closing must not hide the real outcome
                log.warning("sink.close_failed", sink=sink.name, error=str(exc))

    def _write_status(self) -> None:
        self._status.write(self.status())

    # -- shutdown ----------------------------------------------------------------

    def _shutdown(self, assembler: ChangeAssembler) -> None:
        health.READINESS.unregister("replication")
        reader = self.reader
        graceful = self.failure is None
        if self.backfill is not None:
            self.backfill.stop()
        if self.rebuilder is not None:
            self.rebuilder.join(30)
        # The reader stays connected while the sinks drain (its queue is no
        # longer read: it just keeps the session alive), so that the final
        # acknowledgement covers everything they made durable.
        deadline = time.monotonic() + self.settings.runtime.shutdown_timeout_s
        for worker in self.workers.values():
            if graceful:
                worker.draining.set()
            else:
                worker.abort.set()
        for worker in self.workers.values():
            worker.join(max(0.1, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("sink.drain_timeout", sink=worker.sink.name, queued=len(worker.queue))
                worker.abort.set()
        if reader is not None:
            if self.tracker is not None:
                reader.acknowledge(self.tracker.ackable())
            reader.stop()
            reader.join(10)
        self._close_sinks()
        assembler.reset()
        if self._status.connected:  # the last word, where a status was written before
            self._write_status()
        self._status.close()
        log.info("pipeline.stopped", events_in=self.events_in,
                 acked=lsn_to_str(reader.acked) if reader else None, graceful=graceful)


def old_values_warning(identity: str | None, sinks: Sequence[Sink], table: str) -> str | None:
    """What `pulse run` says at start when a sink that needs old values runs on a table that does not send
    them (`Sink.needs_old_values`; only REPLICA IDENTITY FULL does); None when all is well."""
    needing = [s.name for s in sinks if s.needs_old_values]
    if not needing or identity in (None, "full"):
        return None
    return (f"{table} has REPLICA IDENTITY {identity.upper()}: its updates and deletes carry no old values, "
            f"so {', '.join(needing)} cannot correct what those rows contributed (each is counted, e.g. the "
            f"board's `uncorrectable`); fix: ALTER TABLE {table} REPLICA IDENTITY FULL (the whole old row is "
            f"then logged on every update and delete)")


def _rows(chunks: list[Chunk]) -> int:
    """Events in a queue read (each chunk counts its rows)."""
    return sum(len(c) for c in chunks)


def _safe_status(sink: Sink) -> dict:
    try:
        return dict(sink.status())
    except Exception as exc:  # a status hook must never break the pipeline
        return {"status_error": str(exc)}
