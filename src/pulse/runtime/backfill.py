"""Backfill: re-process a range of `engagement_events` while live streaming runs.

The live stream and the backfill meet without duplicates or stale values by
DBLog's watermark algorithm, run inside the pipeline that owns the slot:

1. the job writes a **low watermark** (an UPDATE of
   `pulse.backfill_watermarks`, a table in Pulse's publication, so the update
   appears in the change stream at its commit position);
2. it reads the next chunk with keyset pagination on the primary key
   (`id > last_id ... ORDER BY id LIMIT chunk_size`);
3. it writes a **high watermark**.

The dispatcher, reading the stream in commit order, records the ids of every
`engagement_events` change it sees between the low and the high watermark.
At the high watermark it drops those rows from the chunk (the stream carries
their newer value, or their delete, at a later position than the read could
have seen) and emits the rest as backfill events at the high watermark's
position, `(hw_lsn, hw_seq + i)`: after every change the read saw, before
every change it did not. Each destination, applying changes by event id in
position order, therefore ends with every event's latest committed state.

Chunks are read with `COPY` into Arrow (`source/chunks.py`)
and leave the dispatcher as one `EventChunk`: a sink that takes columns
(BigQuery) gets it enriched column-wise, the others as events, enriched by
their own worker thread with the content cache copied at the watermark.

Resumable: a run is identified by its arguments (`run_id`); `last_id` moves
only after a chunk is durable in every target sink, so a killed run, rerun
with the same arguments, continues after its last durable chunk (at most that
one chunk is sent again, at a new position; sinks keyed by event id absorb
it). Bounded memory: one chunk in flight. Rate limit: rows per second.
"""

from __future__ import annotations

import collections

import hashlib
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql

from pulse import metrics
from pulse.config import DatabaseConfig
from pulse.errors import ConfigError
from pulse.log import get_logger
from pulse.model import Change, Position
from pulse.source.db import connect
from pulse.sinks import DEFAULT_BACKFILL_TARGETS
from pulse.source.chunks import ChunkExtras, chunk_query, read_chunk, read_extra
from pulse.transform.columnar import EventChunk

if TYPE_CHECKING:
    from pulse.runtime.pipeline import Pipeline

log = get_logger(__name__)


@dataclass(frozen=True)
class BackfillSpec:
    """What to re-process and where; its fields make the run id."""

    since: datetime | None = None
    until: datetime | None = None
    min_id: int | None = None
    max_id: int | None = None
    sinks: tuple[str, ...] = DEFAULT_BACKFILL_TARGETS  # the registry's rows that declare it
    chunk_size: int = 10_000
    rate_limit: float = 0.0  # rows per second; 0 = unlimited

    def run_id(self, slot: str) -> str:
        doc = {
            "slot": slot, "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None, "min_id": self.min_id,
            "max_id": self.max_id, "sinks": sorted(self.sinks),
        }
        return "bf-" + hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _where(spec_row: dict[str, Any]) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = [sql.SQL("id > %s")]
    params: list[Any] = [spec_row["last_id"]]
    for column, op, key in (("event_ts", ">=", "since_ts"), ("event_ts", "<", "until_ts"),
                            ("id", ">=", "min_id"), ("id", "<=", "max_id")):
        if spec_row.get(key) is not None:
            clauses.append(sql.SQL("{} " + op + " %s").format(sql.Identifier(column)))
            params.append(spec_row[key])
    return sql.SQL(" AND ").join(clauses), params


def submit(cfg: DatabaseConfig, spec: BackfillSpec) -> dict[str, Any]:
    """Create the run (or find the existing one with the same arguments); returns its row."""
    if spec.since and spec.until and spec.since >= spec.until:
        raise ConfigError("--since must be before --until", hint="swap them")
    run_id = spec.run_id(cfg.slot)
    conn = connect(cfg)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            st = sql.Identifier(cfg.state_schema)
            cur.execute(
                sql.SQL("INSERT INTO {}.backfill_runs (run_id, slot_name, since_ts, until_ts, min_id, max_id, sinks, "
                        "chunk_size, rate_limit) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (run_id) DO UPDATE SET chunk_size = EXCLUDED.chunk_size, "
                        "rate_limit = EXCLUDED.rate_limit, "
                        "state = CASE WHEN backfill_runs.state = 'failed' THEN 'pending' ELSE backfill_runs.state END"
                        ).format(st),
                (run_id, cfg.slot, spec.since, spec.until, spec.min_id, spec.max_id, list(spec.sinks),
                 spec.chunk_size, spec.rate_limit),
            )
            row = get_run(cur, cfg, run_id)
            if row["max_id"] is None:
                # Bound the run at the ids that exist now: rows inserted later
                # reach the sinks through the live stream, and an unbounded
                # keyset scan would chase the writers forever.
                cur.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}.engagement_events").format(
                    sql.Identifier(cfg.source_schema)))
                bound = cur.fetchone()[0]
                cur.execute(sql.SQL("UPDATE {}.backfill_runs SET max_id = %s WHERE run_id = %s").format(st),
                            (bound, run_id))
                row["max_id"] = bound
            if row["total_estimate"] is None:
                where, params = _where({**row, "last_id": 0})
                cur.execute(sql.SQL("SELECT count(*) FROM {}.engagement_events WHERE ").format(
                    sql.Identifier(cfg.source_schema)) + where, params)
                total = cur.fetchone()[0]
                cur.execute(sql.SQL("UPDATE {}.backfill_runs SET total_estimate = %s WHERE run_id = %s").format(st),
                            (total, run_id))
                row["total_estimate"] = total
            return row
    finally:
        conn.close()


_RUN_COLUMNS = ("run_id", "kind", "slot_name", "since_ts", "until_ts", "min_id", "max_id", "sinks", "chunk_size",
                "rate_limit", "state", "last_id", "rows_read", "rows_emitted", "rows_superseded", "chunks",
                "total_estimate", "error", "created_at", "started_at", "updated_at", "finished_at")


def get_run(cur, cfg: DatabaseConfig, run_id: str) -> dict[str, Any]:
    cur.execute(sql.SQL("SELECT {} FROM {}.backfill_runs WHERE run_id = %s").format(
        sql.SQL(", ").join(map(sql.Identifier, _RUN_COLUMNS)), sql.Identifier(cfg.state_schema)), (run_id,))
    row = cur.fetchone()
    if row is None:
        raise KeyError(run_id)
    return dict(zip(_RUN_COLUMNS, row))


def list_runs(cur, cfg: DatabaseConfig, limit: int = 20) -> list[dict[str, Any]]:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{cfg.state_schema}.backfill_runs",))
    if not cur.fetchone()[0]:
        return []
    cur.execute(sql.SQL("SELECT {} FROM {}.backfill_runs WHERE slot_name = %s ORDER BY created_at DESC LIMIT %s").format(
        sql.SQL(", ").join(map(sql.Identifier, _RUN_COLUMNS)), sql.Identifier(cfg.state_schema)), (cfg.slot, limit))
    return [dict(zip(_RUN_COLUMNS, r)) for r in cur.fetchall()]


# Chunks read ahead of the sinks (each held in memory until durable).
PIPELINE_DEPTH = 2


@dataclass(frozen=True)
class _Done:
    """A chunk read, awaiting its emission at the high watermark, then durability, before its progress is recorded."""

    window: "_Window"
    last_id: int
    read: int


class Invisible:
    """The transactions a chunk's snapshot does not see: its in-progress xids and everything from xmax on.

    From `pg_current_snapshot()` (64-bit xid8) in the read transaction; the
    stream gives 32-bit xids, compared modulo 2^32 as PostgreSQL does.
    """

    __slots__ = ("xmax", "xip")

    def __init__(self, xmax: int, xip: set[int]) -> None:
        self.xmax = xmax & 0xFFFFFFFF
        self.xip = {x & 0xFFFFFFFF for x in xip}

    def __contains__(self, xid: int) -> bool:
        return xid in self.xip or (xid - self.xmax) & 0xFFFFFFFF < 0x80000000


@dataclass
class _Window:
    run_id: str
    chunk: int
    # The ids the chunk can hold: (after, upto] (the run's last_id when the
    # window opened, its max_id). A change outside them cannot supersede a
    # row of the chunk and is not remembered, so a window's memory grows with
    # the updates and deletes of its own id range, not with live inserts.
    after: int = 0
    upto: int | None = None
    rows: pa.Table | None = None  # the chunk as read (model_arrow.RAW_SCHEMA, then any `extra:` columns)
    extras: ChunkExtras | None = None  # the extra source columns in `rows` (chunks.read_extra)
    low_seen: bool = False
    changed: set[int] = field(default_factory=set)
    # (event id, top-level xid) of changes seen after the window opened but
    # before its low watermark, and the chunk snapshot's invisible xids: see
    # `BackfillManager.observe`.
    early: list[tuple[int, int | None]] = field(default_factory=list)
    invisible: "Invisible | None" = None
    emitted: threading.Event = field(default_factory=threading.Event)
    last_position: Position | None = None
    superseded: int = 0


class BackfillManager:
    """Runs the jobs of this slot's backfill runs and does the dispatcher's part of DBLog."""

    def __init__(self, pipeline: "Pipeline") -> None:
        self.pipeline = pipeline
        self.cfg = pipeline.settings.database
        # (run_id, chunk) -> an open chunk (dispatcher and jobs). A job keeps at
        # most two: one whose high watermark travels the stream while the next
        # one is read.
        self.windows: dict[tuple[str, int], _Window] = {}
        self._lock = threading.Lock()
        self.jobs: dict[str, BackfillJob] = {}
        self._conn = None

    # -- housekeeping (dispatcher thread) -------------------------------------

    def poll(self) -> None:
        """Start jobs for runs waiting on this slot (one at a time, in creation order)."""
        if any(job.is_alive() for job in self.jobs.values()):
            return
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.cfg)
                self._conn.autocommit = True
            with self._conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT run_id FROM {}.backfill_runs WHERE slot_name = %s AND state IN "
                                    "('pending', 'running') AND max_id IS NOT NULL ORDER BY created_at LIMIT 1").format(
                    sql.Identifier(self.cfg.state_schema)), (self.cfg.slot,))
                row = cur.fetchone()
        except psycopg2.Error as exc:
            log.warning("backfill.poll_failed", error=str(exc).strip())
            self._conn = None
            return
        if row:
            job = BackfillJob(self, row[0])
            self.jobs[row[0]] = job
            job.start()

    def stop(self) -> None:
        for job in self.jobs.values():
            job.stop_event.set()
        for job in self.jobs.values():
            job.join(30)
        if self._conn is not None:
            self._conn.close()

    # -- the dispatcher's part ---------------------------------------------------

    def observe(self, change: Change, xid: int | None = None) -> None:
        """An engagement_events change (of top-level transaction `xid`): remember its id in every open window.

        After the low watermark every change supersedes the chunk's row
        (DBLog). Before it, from the moment the window opened, the change is
        noted with its xid: a transaction whose commit record precedes the
        low watermark can still be invisible to the chunk's snapshot (it
        waits between its WAL flush and marking the commit log, e.g. a
        backend descheduled on a loaded machine), and `_begin_after` cannot
        tell it from a running one. At the high watermark such a change
        supersedes the row when the snapshot did not see its transaction
        (`test_backfill_concurrent_with_live_writes_updates_and_deletes_ends_at_the_final_state`
        ended one change behind about one run in five at load 20 without it).
        """
        row = change.new if change.new is not None else change.old
        if not row:
            return
        event_id = row.get("id")
        if event_id is None:
            return
        for window in list(self.windows.values()):  # a job may open the next window meanwhile
            if event_id <= window.after or (window.upto is not None and event_id > window.upto):
                continue
            if window.low_seen:
                window.changed.add(event_id)
            else:
                window.early.append((event_id, xid))

    def on_watermark(self, change: Change) -> EventChunk | None:
        """A watermark passed in the stream; at a high watermark, the chunk's surviving rows."""
        row = change.new
        if not row:
            return None
        window = self.windows.get((row["run_id"], row["chunk"]))
        if window is None:
            return None  # a replay of an older run's watermark, or another process's run
        if row["kind"] == "low":
            window.low_seen = True
            return None
        if not window.low_seen or window.rows is None:
            return None
        raw = window.rows
        invisible = window.invisible
        for event_id, xid in window.early:
            if xid is None or invisible is None or xid in invisible:
                window.changed.add(event_id)  # unknown counts as unseen: the stream's value wins
        window.early = []
        changed = list(window.changed)
        if changed:
            keep = pc.invert(pc.is_in(raw.column("id"), value_set=pa.array(changed, pa.int64())))
            raw = raw.filter(keep)
            window.superseded += window.rows.num_rows - raw.num_rows
        job = self.jobs.get(window.run_id)
        chunk = EventChunk(raw, lsn=change.position.lsn, first_seq=change.position.seq + 1,
                              commit_ts=change.commit_ts, now=self.pipeline.clock(), cache=self.pipeline.cache,
                              targets=job.relayed if job is not None and job.relayed else None,
                              extras=window.extras)
        window.last_position = Position(change.position.lsn, change.position.seq + raw.num_rows)
        with self._lock:
            self.windows.pop((window.run_id, window.chunk), None)
        window.emitted.set()
        return chunk if raw.num_rows else None

    def targets(self, run_id: str) -> list[str]:
        job = self.jobs.get(run_id)
        return list(job.sinks) if job else []


class Progress:
    """Rows done of an initial snapshot or a backfill: metrics on every chunk, a log line every few seconds.

    On a terminal the log line carries a bar; the same figures are in
    `pulse status` (from the run row) and in `pulse_backfill_*` metrics.
    """

    EVERY_S = 5.0

    def __init__(self, kind: str, total: int, done: int, clock=time.monotonic) -> None:
        self.kind = kind
        self.total = total
        self.rows = done
        self.clock = clock
        self.started = clock()
        self.started_rows = done
        self.last_log = self.started
        metrics.BACKFILL_ESTIMATE.labels(kind).set(total)
        metrics.BACKFILL_PROGRESS.labels(kind).set(self.ratio())

    def ratio(self) -> float:
        return min(1.0, self.rows / self.total) if self.total else 0.0

    def advance(self, read: int, emitted: int, run_id: str) -> None:
        self.rows += read
        metrics.BACKFILL_ROWS.labels(self.kind).inc(emitted)
        metrics.BACKFILL_PROGRESS.labels(self.kind).set(self.ratio())
        now = self.clock()
        if now - self.last_log < self.EVERY_S:
            return
        self.last_log = now
        rate = (self.rows - self.started_rows) / max(now - self.started, 1e-9)
        left = max(0, self.total - self.rows)
        fields = {"run": run_id, "rows": self.rows, "of": self.total, "pct": round(100 * self.ratio(), 1),
                  "rows_per_s": round(rate), "eta_s": round(left / rate) if rate > 0 else None}
        if sys.stderr.isatty():
            fields["bar"] = bar(self.ratio())
        log.info(f"{self.kind}.progress", **fields)

    def finish(self) -> None:
        metrics.BACKFILL_PROGRESS.labels(self.kind).set(1.0)
        metrics.BACKFILL_ESTIMATE.labels(self.kind).set(0)


def bar(ratio: float, width: int = 30) -> str:
    """A text progress bar, e.g. `[#########.....................]`."""
    full = int(round(max(0.0, min(1.0, ratio)) * width))
    return "[" + "#" * full + "." * (width - full) + "]"


class BackfillJob(threading.Thread):
    def __init__(self, manager: BackfillManager, run_id: str) -> None:
        super().__init__(name=f"pulse-backfill-{run_id}", daemon=True)
        self.manager = manager
        self.cfg = manager.cfg
        self.run_id = run_id
        self.stop_event = threading.Event()
        self.sinks: tuple[str, ...] = ()  # the pipeline's sinks that receive the chunks
        self.relayed: tuple[str, ...] = ()  # targets reached through a relaying sink (Kafka)
        self.kind = "backfill"
        self.progress = Progress("backfill", 0, 0)
        self.committing_waits = 0  # fresh snapshots taken because one caught a transaction mid-commit

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported in the run row; the live stream goes on
            log.exception("backfill.failed", run=self.run_id, error=str(exc))
            try:
                self._update(state="failed", error=str(exc)[:2000])
            except psycopg2.Error:
                pass

    def _update(self, **values: Any) -> None:
        conn = connect(self.cfg)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                sets = [sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values]
                cur.execute(sql.SQL("UPDATE {}.backfill_runs SET {}, updated_at = now() WHERE run_id = %s").format(
                    sql.Identifier(self.cfg.state_schema), sql.SQL(", ").join(sets)),
                    [*values.values(), self.run_id])
        finally:
            conn.close()

    def _run(self) -> None:
        pipeline = self.manager.pipeline
        conn = connect(self.cfg)
        conn.autocommit = True
        cur = conn.cursor()
        st = sql.Identifier(self.cfg.state_schema)
        try:
            run = get_run(cur, self.cfg, self.run_id)
            local = [s for s in run["sinks"] if s in pipeline.workers]
            missing = [s for s in run["sinks"] if s not in pipeline.workers]
            relays = [n for n, w in pipeline.workers.items() if w.sink.relays]
            if missing and not relays:
                raise ConfigError(f"backfill targets {missing} are not sinks of this pipeline",
                                  hint=f"run the pipeline with --sink {' --sink '.join(missing)}, or publish "
                                       "to Kafka (pulse produce) for `pulse consume` workers")
            # Targets without a sink here go through Kafka, marked with their names.
            self.relayed = tuple(missing)
            self.sinks = tuple(local + (relays if missing else []))
            self.kind = run["kind"]
            self.progress = Progress(run["kind"], run["total_estimate"] or 0, run["rows_read"])
            if not self.sinks:
                # An initial snapshot where no destination takes rows (only a
                # windowed one, rebuilt instead): nothing to read.
                cur.execute(sql.SQL("UPDATE {}.backfill_runs SET state = 'done', started_at = now(), "
                                    "finished_at = now(), updated_at = now() WHERE run_id = %s").format(st),
                            (self.run_id,))
                log.info("backfill.done", run=self.run_id, kind=self.kind, chunks=0, note="no destination takes rows")
                return
            cur.execute(sql.SQL("UPDATE {}.backfill_runs SET state = 'running', "
                                "started_at = coalesce(started_at, now()), updated_at = now() "
                                "WHERE run_id = %s").format(st), (self.run_id,))
            log.info("backfill.started", run=self.run_id, last_id=run["last_id"], sinks=",".join(self.sinks))
            chunk = run["chunks"]
            # Chunks handed on but not yet durable everywhere. The next chunk
            # is read while the sinks write the last ones (PostgreSQL's COPY
            # and Pulse's enrichment then run side by side), but progress is
            # recorded strictly in order and only for durable chunks, so a
            # rerun resumes after the last chunk every target holds.
            pending: collections.deque[_Done] = collections.deque()
            extras: ChunkExtras | None = None
            while not self.stop_event.is_set() and not pipeline.stop_event.is_set():
                chunk += 1
                started = time.monotonic()
                window = _Window(self.run_id, chunk, after=run["last_id"], upto=run["max_id"])
                with self.manager._lock:
                    self.manager.windows[(self.run_id, chunk)] = window
                self._watermark(cur, chunk, "low")
                where, params = _where(run)
                self._begin_after(cur)
                try:
                    cur.execute("SELECT pg_snapshot_xmax(s)::text::bigint, "
                                "ARRAY(SELECT pg_snapshot_xip(s)::text::bigint) FROM pg_current_snapshot() s")
                    xmax, xip = cur.fetchone()
                    window.invisible = Invisible(xmax, set(xip))
                    rows = read_chunk(cur, chunk_query(self.cfg.source_schema, where), [*params, run["chunk_size"]])
                    # Columns beyond the known ones (the table had them before the
                    # first start, or gained them since): read for the chunk's ids.
                    rows, extras = read_extra(cur, self.cfg.source_schema, rows, extras)
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                window.extras = extras
                window.rows = rows
                if window.rows.num_rows == 0:
                    with self.manager._lock:
                        self.manager.windows.pop((self.run_id, chunk), None)
                    if not self._record(cur, pending, keep=0):
                        return
                    cur.execute(sql.SQL("UPDATE {}.backfill_runs SET state = 'done', finished_at = now(), "
                                        "updated_at = now() WHERE run_id = %s").format(st), (self.run_id,))
                    self.progress.finish()
                    log.info("backfill.done", run=self.run_id, kind=self.kind, chunks=chunk - 1,
                             rows=self.progress.rows)
                    return
                self._watermark(cur, chunk, "high")
                run["last_id"] = window.rows.column("id")[-1].as_py()
                pending.append(_Done(window, run["last_id"], window.rows.num_rows))
                # The next chunk is read while this one's high watermark travels
                # the stream: at most two windows open, the older one emitted
                # before a third is opened (the stream emits them in order).
                if len(pending) > 1 and not self._wait(pending[-2].window.emitted.is_set):
                    return
                if not self._record(cur, pending, keep=PIPELINE_DEPTH):
                    return
                if run["rate_limit"] > 0:
                    # Rows per second over the chunk, including the read and the wait.
                    pause = window.rows.num_rows / run["rate_limit"] - (time.monotonic() - started)
                    if pause > 0:
                        self.stop_event.wait(pause)
        finally:
            with self.manager._lock:
                for key in [k for k in self.manager.windows if k[0] == self.run_id]:
                    self.manager.windows.pop(key, None)
            conn.close()

    def _record(self, cur, pending: "collections.deque[_Done]", keep: int) -> bool:
        """Record the progress of the oldest pending chunks, in order, until at most `keep` remain.

        A chunk is recorded once it was emitted at its high watermark and is
        durable in every target (waiting for both when more than `keep` are
        pending); False when stopping. The progress row is committed without
        waiting for its WAL flush (`synchronous_commit = off` for that
        statement): the next high watermark's commit flushes it, and a
        progress row lost to a server crash only makes the run read a chunk
        again, which every target absorbs as after a kill (see the module
        docstring).
        """
        st = sql.Identifier(self.cfg.state_schema)
        while pending:
            done = pending[0]
            ready = done.window.emitted.is_set() and (done.window.last_position is None
                                                      or self._durable(done.window.last_position))
            if len(pending) <= keep and not ready:
                return True
            if not self._wait(done.window.emitted.is_set):
                return False
            last = done.window.last_position
            if last is not None and not self._wait(lambda: self._durable(last)):
                return False
            pending.popleft()
            superseded = done.window.superseded
            cur.execute(
                sql.SQL("SET LOCAL synchronous_commit = off; "
                        "UPDATE {}.backfill_runs SET last_id = %s, rows_read = rows_read + %s, "
                        "rows_emitted = rows_emitted + %s, rows_superseded = rows_superseded + %s, "
                        "chunks = %s, updated_at = now() WHERE run_id = %s").format(st),
                (done.last_id, done.read, done.read - superseded, superseded, done.window.chunk, self.run_id),
            )
            self.progress.advance(done.read, done.read - superseded, self.run_id)
        return True

    # Attempts at a snapshot without a committing transaction before going on anyway (each waits up to 20 ms).
    SNAPSHOT_ATTEMPTS = 250

    def _begin_after(self, cur) -> None:
        """Open the chunk's read transaction on a snapshot that sees every transaction ordered before the low watermark.

        PostgreSQL writes a transaction's commit record, then marks it
        committed in the commit log, and only then makes it visible to new
        snapshots. So a transaction T whose commit record precedes the low
        watermark in the WAL (the stream shows T before the window opens, so
        the window does not note T's rows) can still be invisible to a
        snapshot taken just after the watermark committed: the chunk would
        then carry a row's value from before T at a position after T, and a
        destination would end one change behind. Such a T is in the
        snapshot's in-progress list while the commit log already says
        committed; the read retries on a fresh snapshot until no transaction
        is in that state (usually at once; with synchronous replication, T
        stays there until its standby confirms). A transaction still running
        is no hazard: it commits after the watermark, inside the window.
        """
        for attempt in range(self.SNAPSHOT_ATTEMPTS):
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT count(*) FROM pg_snapshot_xip(pg_current_snapshot()) AS x "
                        "WHERE pg_xact_status(x) = 'committed'")
            if cur.fetchone()[0] == 0:
                return
            cur.execute("ROLLBACK")
            self.committing_waits += 1
            self.stop_event.wait(min(0.0005 * 2 ** attempt, 0.02))
        log.warning("backfill.snapshot_busy", run=self.run_id, attempts=self.SNAPSHOT_ATTEMPTS,
                    note="transactions kept committing around every snapshot taken; reading on the last one")
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _watermark(self, cur, chunk: int, kind: str) -> None:
        """Write a watermark into the stream (an upsert of the run's row in the publication).

        Both watermarks wait for their WAL flush (synchronous commit). The
        low one must: with an asynchronous commit it becomes visible at once,
        while a transaction T whose commit record precedes it in the WAL may
        still wait for its own flush, invisible and not yet "committed" in the
        commit log, so `_begin_after` cannot see it; the chunk's snapshot then
        misses T, the stream shows T before the window opens, and the chunk
        carries a row's value from before T at a position after T (found by
        `test_backfill_concurrent_with_live_writes_updates_and_deletes_ends_at_the_final_state`,
        1 run in 3). A synchronous low watermark flushes T's record with its
        own, so by the time the job opens its snapshot T has (in practice)
        marked itself committed and the check sees it. What remains is the
        instant between that shared flush and T's backend updating the commit
        log, a hazard the unpipelined code had too (see docs/backfill.md).
        """
        cur.execute(sql.SQL("INSERT INTO {}.backfill_watermarks (run_id, chunk, kind) VALUES (%s, %s, %s) "
                            "ON CONFLICT (run_id) DO UPDATE SET chunk = EXCLUDED.chunk, kind = EXCLUDED.kind, "
                            "updated_at = clock_timestamp()").format(sql.Identifier(self.cfg.state_schema)),
                    (self.run_id, chunk, kind))

    def _durable(self, position: Position) -> bool:
        tracker = self.manager.pipeline.tracker
        return tracker is not None and tracker.durable_in(position, self.sinks)

    def _wait(self, predicate) -> bool:
        pipeline = self.manager.pipeline
        while not predicate():
            if self.stop_event.is_set() or pipeline.stop_event.is_set():
                return False
            self.stop_event.wait(0.02)
        return True
