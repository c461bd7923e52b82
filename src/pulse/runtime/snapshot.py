"""The initial snapshot: the rows that exist before Pulse's slot, copied once, consistently with the stream.

On the run that creates the slot (`snapshot.mode = initial`, the default),
Pulse copies the existing rows of `engagement_events` to every destination,
with the same no-gap, no-duplicate guarantee as a backfill, because it *is*
one: a backfill run of kind `snapshot`, read in chunks between DBLog
watermarks by the pipeline that owns the slot (`runtime/backfill.py`).

Why nothing is missed or doubled:

1. the run row is written **before** the slot is created, without an id
   bound. A process killed between the two finds it on its next start; a
   slot is therefore never created without its snapshot recorded;
2. the slot is created; every transaction committed before its consistent
   point is not in the stream, every one after it is;
3. the run is bounded **after** the slot exists: `max_id` is the largest id
   visible then, so every row committed before the slot (its id was assigned
   and committed earlier) is at or below it. Rows inserted between the slot
   and the bound are at or below it too, and are also in the stream: DBLog's
   windows resolve each such overlap (the stream's change wins when it falls
   inside a chunk's window; otherwise the chunk's later copy carries the same
   committed value at a later position), so every destination keyed by event
   id ends with the latest committed state, exactly once;
4. the run resumes after `kill -9` like any backfill (`last_id` moves only
   when a chunk is durable in every target), never starting over.

A destination that keeps only a window (the Redis board) is not replayed:
it is **rebuilt** for its window from an exported snapshot (`runtime/rebuild.py`,
a swap that is exact while live writers run), once the slot exists, by the
process that runs that destination: `pulse run` or the `pulse consume` worker
of that sink. The run row's `window_sinks` names them and `window_rebuilt_at`
records that it is done, so a rebuild killed mid-way is done again at the
next start (a rebuild is idempotent: it replaces the whole window).

Which destinations take the rows is declared by each sink
(`Sink.snapshot_mode`): `rows` (BigQuery, the external system unless
`external.snapshot = false`), `window` (Redis), `none`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg2
from psycopg2 import sql

from pulse import metrics
from pulse.config import DatabaseConfig, Settings
from pulse.log import get_logger
from pulse.source.db import connect
from pulse.source.slot import SlotInfo, check_slot, ensure_slot

if TYPE_CHECKING:  # pragma: no cover
    from pulse.sinks.base import Sink

log = get_logger(__name__)

# Above this many rows (the planner's estimate) the progress total is the
# estimate itself: an exact count(*) of a billion-row table takes minutes.
EXACT_COUNT_BELOW = 5_000_000


def plan_targets(settings: Settings, sinks: Sequence["Sink"]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sinks that take the snapshot's rows, sinks rebuilt for their window), from what each declares.

    A relaying sink (Kafka) stands for the destinations of other workers: it
    names them (`Sink.relay_snapshot_targets`).
    """
    rows: list[str] = []
    windows: list[str] = []
    for sink in sinks:
        if sink.relays:
            r, w = sink.relay_snapshot_targets(settings)
            rows.extend(r)
            windows.extend(w)
            continue
        mode = sink.snapshot_mode
        if mode == "rows":
            rows.append(sink.name)
        elif mode == "window":
            windows.append(sink.name)
    return tuple(dict.fromkeys(rows)), tuple(dict.fromkeys(windows))


def prepare_slot(settings: Settings, rows: Sequence[str], windows: Sequence[str]) -> tuple[SlotInfo, bool]:
    """Create the slot when missing, recording the initial snapshot first; bound a snapshot not bounded yet.

    Returns (slot, created). Safe to call from several processes at once (the
    snapshot row is written under an advisory lock).
    """
    db = settings.database
    snap = settings.snapshot
    conn = connect(db)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            if check_slot(cur, db) is None:
                if snap.mode == "initial":
                    _record_intent(conn, db, rows, windows, snap.chunk_size, snap.rate_limit)
                else:
                    log.info("snapshot.skipped", slot=db.slot, reason="snapshot.mode = never",
                             note="rows committed before the slot reach no destination; "
                                  "pulse backfill copies them later")
            info, created = ensure_slot(db)
            bound(cur, db)
            return info, created
    finally:
        conn.close()


def _record_intent(conn, db: DatabaseConfig, rows: Sequence[str], windows: Sequence[str],
                   chunk_size: int, rate_limit: float) -> None:
    st = sql.Identifier(db.state_schema)
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"pulse.snapshot.{db.slot}",))
            cur.execute(sql.SQL("SELECT run_id FROM {}.backfill_runs WHERE slot_name = %s AND kind = 'snapshot' "
                                "AND max_id IS NULL").format(st), (db.slot,))
            row = cur.fetchone()
            if row is None:
                run_id = f"snapshot-{uuid.uuid4().hex[:16]}"
                cur.execute(
                    sql.SQL("INSERT INTO {}.backfill_runs (run_id, kind, slot_name, sinks, window_sinks, chunk_size, "
                            "rate_limit) VALUES (%s, 'snapshot', %s, %s, %s, %s, %s)").format(st),
                    (run_id, db.slot, list(rows), list(windows), chunk_size, rate_limit),
                )
                log.info("snapshot.planned", run=run_id, slot=db.slot, rows_to=",".join(rows) or "-",
                         rebuild=",".join(windows) or "-")
            else:
                log.info("snapshot.planned", run=row[0], slot=db.slot, note="recorded by an earlier start")
        conn.commit()
    finally:
        conn.autocommit = True


def bound(cur, db: DatabaseConfig) -> None:
    """Give a snapshot run of this slot its id bound and row estimate; only call once the slot exists."""
    st = sql.Identifier(db.state_schema)
    src = sql.Identifier(db.source_schema)
    cur.execute(sql.SQL("SELECT run_id FROM {}.backfill_runs WHERE slot_name = %s AND kind = 'snapshot' "
                        "AND max_id IS NULL").format(st), (db.slot,))
    pending = [r[0] for r in cur.fetchall()]
    if not pending:
        return
    cur.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}.engagement_events").format(src))
    max_id = cur.fetchone()[0]
    cur.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
                (f"{db.source_schema}.engagement_events",))
    estimate = cur.fetchone()[0]
    if estimate < EXACT_COUNT_BELOW:
        cur.execute(sql.SQL("SELECT count(*) FROM {}.engagement_events WHERE id <= %s").format(src), (max_id,))
        estimate = cur.fetchone()[0]
    for run_id in pending:
        if max_id == 0:
            # The table was empty when the slot was made: every row is in the
            # stream, so there is nothing to copy and no window to rebuild.
            cur.execute(sql.SQL("UPDATE {}.backfill_runs SET max_id = 0, total_estimate = 0, state = 'done', "
                                "started_at = now(), finished_at = now(), window_rebuilt_at = now(), "
                                "updated_at = now() WHERE run_id = %s AND max_id IS NULL").format(st), (run_id,))
            log.info("snapshot.empty", run=run_id, note="no rows before the slot: nothing to copy")
            continue
        cur.execute(sql.SQL("UPDATE {}.backfill_runs SET max_id = %s, total_estimate = %s, updated_at = now() "
                            "WHERE run_id = %s AND max_id IS NULL").format(st), (max_id, estimate, run_id))
        log.info("snapshot.bounded", run=run_id, max_id=max_id, rows=estimate)


def snapshot_status(cur, db: DatabaseConfig) -> dict[str, Any] | None:
    """The newest snapshot run of this slot, for `pulse status` (None when there is none)."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL",
                (f"{db.state_schema}.backfill_runs",))
    if not cur.fetchone()[0]:
        return None
    cur.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = 'backfill_runs' AND column_name = 'kind'", (db.state_schema,))
    if not cur.fetchone()[0]:
        return None
    cur.execute(sql.SQL("SELECT run_id, state, rows_read, rows_emitted, total_estimate, max_id, last_id, sinks, "
                        "window_sinks, window_rebuilt_at, started_at, finished_at, error FROM {}.backfill_runs "
                        "WHERE slot_name = %s AND kind = 'snapshot' ORDER BY created_at DESC LIMIT 1").format(
        sql.Identifier(db.state_schema)), (db.slot,))
    row = cur.fetchone()
    if row is None:
        return None
    keys = ("run_id", "state", "rows_read", "rows_emitted", "total_estimate", "max_id", "last_id", "sinks",
            "window_sinks", "window_rebuilt_at", "started_at", "finished_at", "error")
    return dict(zip(keys, row))


# -- windowed destinations: rebuilt, not replayed --------------------------------


def pending_rebuilds(cur, db: DatabaseConfig, names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """[(run_id, the window sinks among `names` it still needs)] for bounded snapshot runs of this slot."""
    cur.execute(sql.SQL("SELECT run_id, window_sinks FROM {}.backfill_runs WHERE slot_name = %s "
                        "AND kind = 'snapshot' AND max_id IS NOT NULL AND window_rebuilt_at IS NULL "
                        "AND window_sinks && %s::text[] ORDER BY created_at").format(
        sql.Identifier(db.state_schema)), (db.slot, list(names)))
    return [(r[0], [n for n in r[1] if n in names]) for r in cur.fetchall()]


def rebuild_windows(db: DatabaseConfig, sinks: Mapping[str, "Sink"]) -> int:
    """Rebuild every windowed sink a snapshot of this slot still waits for; returns how many were rebuilt.

    A session advisory lock per run keeps two workers of one sink from
    rebuilding at once (the other goes on with live events, which the
    rebuild's pause holds back until its swap). Not a row lock: a row lock
    takes a transaction id, and the rebuild's exported snapshot waits for
    every running transaction to end, its own caller's included.
    """
    if not sinks:
        return 0
    conn = connect(db)
    conn.autocommit = True
    st = sql.Identifier(db.state_schema)
    done = 0
    try:
        with conn.cursor() as cur:
            for run_id, names in pending_rebuilds(cur, db, list(sinks)):
                cur.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"pulse.window.{run_id}",))
                if not cur.fetchone()[0]:
                    continue
                try:
                    cur.execute(sql.SQL("SELECT window_rebuilt_at IS NULL FROM {}.backfill_runs WHERE run_id = %s"
                                        ).format(st), (run_id,))
                    row = cur.fetchone()
                    if not row or not row[0]:
                        continue
                    for name in names:
                        started = time.monotonic()
                        summary = sinks[name].rebuild_window(db)
                        metrics.WINDOW_REBUILDS.labels(name).inc()
                        log.info("snapshot.window_rebuilt", run=run_id, sink=name,
                                 seconds=round(time.monotonic() - started, 2), **summary)
                        done += 1
                    cur.execute(sql.SQL("UPDATE {}.backfill_runs SET window_rebuilt_at = now(), updated_at = now() "
                                        "WHERE run_id = %s").format(st), (run_id,))
                finally:
                    cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"pulse.window.{run_id}",))
    finally:
        conn.close()
    return done


def unsettled(cur, db: DatabaseConfig, names: Sequence[str]) -> int:
    """Snapshot runs of this slot whose window rebuild for one of `names` is not done (bounded or not)."""
    cur.execute(sql.SQL("SELECT count(*) FROM {}.backfill_runs WHERE slot_name = %s AND kind = 'snapshot' "
                        "AND window_rebuilt_at IS NULL AND window_sinks && %s::text[]").format(
        sql.Identifier(db.state_schema)), (db.slot, list(names)))
    return cur.fetchone()[0]


class WindowRebuilder(threading.Thread):
    """Checks now and then for a snapshot's window rebuild of these sinks and does it (with backoff on failure).

    It stops checking once the slot is known and no rebuild is pending, so a
    settled deployment reads nothing from the source.
    """

    def __init__(self, db: DatabaseConfig, sinks: Mapping[str, "Sink"], stop: threading.Event,
                 interval_s: float = 2.0, on_done: Callable[[], None] | None = None) -> None:
        super().__init__(name="pulse-window-rebuild", daemon=True)
        self.db = db
        self.sinks = dict(sinks)
        self.stop_event = stop
        self.interval_s = interval_s
        self.on_done = on_done
        self.rebuilt = 0
        self.settled = threading.Event()

    def _slot_known(self) -> bool:
        conn = connect(self.db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT 1 FROM {}.slot_registry WHERE slot_name = %s").format(
                    sql.Identifier(self.db.state_schema)), (self.db.slot,))
                return cur.fetchone() is not None
        finally:
            conn.close()

    def run(self) -> None:
        wait = self.interval_s
        while not self.stop_event.is_set():
            try:
                known = self._slot_known()
                self.rebuilt += rebuild_windows(self.db, self.sinks)
                if known:
                    conn = connect(self.db)
                    try:
                        with conn.cursor() as cur:
                            left = unsettled(cur, self.db, list(self.sinks))
                    finally:
                        conn.close()
                    if not left:
                        self.settled.set()
                        if self.on_done:
                            self.on_done()
                        return
                    wait = self.interval_s
                else:
                    # No slot yet (its producer has not started, or runs under another PULSE_SLOT):
                    # look less and less often.
                    wait = min(wait * 1.5, 60.0)
            except (psycopg2.Error, OSError) as exc:
                log.warning("snapshot.window_check_failed", error=str(exc).strip(), retry_s=round(wait, 1))
                wait = min(wait * 2, 60.0)
            except Exception as exc:  # a failed rebuild is retried; the live stream goes on
                log.warning("snapshot.window_rebuild_failed", error=str(exc), retry_s=round(wait, 1))
                wait = min(wait * 2, 60.0)
            self.stop_event.wait(wait)
