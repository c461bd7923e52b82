"""The source against real PostgreSQL: big transactions, idle slots, lost slots."""

from __future__ import annotations

import subprocess

import psycopg2
import pytest
from psycopg2 import sql

from pulse.errors import SlotLostError
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.memory import MemorySink
from pulse.source.slot import slot_info

from .pipeline_helpers import Running, insert_content, settings_for, wait_for
from .pipeline_helpers import pulse_cmd, pulse_env, slot_streaming
from .private_services import private_pg, private_scratch_db  # noqa: F401  (fixtures)


def _lsn(cur, expr: str = "pg_current_wal_lsn()") -> int:
    cur.execute(f"SELECT ({expr}) - '0/0'::pg_lsn")  # expr is a constant from this file
    return int(cur.fetchone()[0])


def _slot_lsns(cur, slot: str) -> tuple[int, int]:
    cur.execute(
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn, restart_lsn - '0/0'::pg_lsn "
        "FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    row = cur.fetchone()
    return int(row[0]), int(row[1])


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_200k_row_transaction_streams_with_bounded_memory(scratch_db):
    """A 200,000-row transaction, streamed by the server (1 MB decoding memory), spilled and replayed.

    Holding the transaction's enriched events would take hundreds of MB; the
    process's peak RSS stays far below that because the in-progress stream
    goes to a spill file and the sink queue is bounded (8 MB).
    """
    conn = scratch_db.connect()
    cur = conn.cursor()
    [c1] = insert_content(cur, 1)
    env = pulse_env(scratch_db, PGOPTIONS="-c logical_decoding_work_mem=1MB",
                    PULSE_RUNTIME__QUEUE_MAX_BYTES=str(8 * 1024 * 1024), PULSE_RUNTIME__QUEUE_MAX_EVENTS="20000")
    proc = subprocess.Popen(pulse_cmd("run", "--sink", "memory"), env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: slot_streaming(cur, scratch_db.slot) or proc.poll() is not None, 60, "replication start")
        assert proc.poll() is None, proc.stderr.read()
        cur.execute(
            "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
            "SELECT %s, gen_random_uuid(), 'play', now(), 1000 + g %% 5000, 'web-chrome', "
            "jsonb_build_object('n', g, 'pad', repeat('x', 200)) FROM generate_series(1, 200000) g",
            (c1,),
        )
        target = _lsn(cur)
        wait_for(lambda: _slot_lsns(cur, scratch_db.slot)[0] >= target or proc.poll() is not None, 240,
                 "the slot to confirm the 200k-row transaction")
        assert proc.poll() is None
        peak_mb = _peak_rss_kb(proc.pid) / 1024
        cur.execute("SELECT spill_txns, stream_txns, stream_count FROM pg_stat_replication_slots "
                    "WHERE slot_name = %s", (scratch_db.slot,))
        spill_txns, stream_txns, _ = cur.fetchone()
        status = _runtime_status(cur, scratch_db)
    finally:
        proc.terminate()
        proc.wait(60)
    assert stream_txns >= 1, "the server did not stream the transaction; the test would prove nothing"
    assert status["events_in"] == 200_000
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB"
    print(f"peak RSS {peak_mb:.0f} MB for a 200k-row streamed transaction")


def _has_slot(cur, slot: str) -> bool:
    return slot_info(cur, slot) is not None


def _runtime_status(cur, db) -> dict:
    def read():
        cur.execute("SELECT doc FROM pulse.runtime_status WHERE slot_name = %s", (db.slot,))
        row = cur.fetchone()
        return row[0] if row else None

    return wait_for(read, 30, "runtime status")


def test_idle_heartbeat_advances_the_slot(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    cur.execute("CREATE TABLE not_captured (x int)")
    sink = MemorySink()
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        wait_for(lambda: slot_streaming(cur, scratch_db.slot), 30, "replication start")
        start_confirmed, start_restart = _slot_lsns(cur, scratch_db.slot)
        # WAL moves, but nothing the publication covers: only heartbeats can move the slot.
        cur.execute("INSERT INTO not_captured SELECT generate_series(1, 50000)")
        target = _lsn(cur)
        wait_for(lambda: _slot_lsns(cur, scratch_db.slot)[0] >= target, 30, "confirmed_flush_lsn to pass the idle WAL")
        wait_for(lambda: _slot_lsns(cur, scratch_db.slot)[1] > start_restart, 60, "restart_lsn to advance")
    assert sink.count == 0
    assert _slot_lsns(cur, scratch_db.slot)[0] > start_confirmed


def test_dropped_slot_is_a_terminal_error_never_recreated(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    with Running(Pipeline(settings_for(scratch_db), [MemorySink()])):
        wait_for(lambda: _has_slot(cur, scratch_db.slot), 30, "slot")
    cur.execute("SELECT pg_drop_replication_slot(%s)", (scratch_db.slot,))
    with pytest.raises(SlotLostError, match="no longer exists") as info:
        Pipeline(settings_for(scratch_db), [MemorySink()]).run()
    assert "backfill" in str(info.value.hint)
    assert not _has_slot(cur, scratch_db.slot), "the lost slot must not be recreated"


def test_invalidated_slot_is_a_terminal_error(private_pg, private_scratch_db):
    """max_slot_wal_keep_size exceeded: PostgreSQL marks the slot lost; Pulse refuses to go on.

    On a private cluster: the setting is the server's, and on the shared one it would invalidate every
    other slot there (another test's, a benchmark's, `make demo`'s).
    """
    scratch_db, superuser_url = private_scratch_db, private_pg.superuser_url
    conn = scratch_db.connect()
    cur = conn.cursor()
    with Running(Pipeline(settings_for(scratch_db), [MemorySink()])):
        wait_for(lambda: _has_slot(cur, scratch_db.slot), 30, "slot")
    su = psycopg2.connect(superuser_url)
    su.autocommit = True
    scur = su.cursor()
    scur.execute("SHOW max_slot_wal_keep_size")
    previous = scur.fetchone()[0]
    try:
        scur.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        scur.execute("SELECT pg_reload_conf()")

        def invalidated() -> bool:
            cur.execute("CREATE TABLE IF NOT EXISTS filler (x text)")
            cur.execute("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000)")
            scur.execute("SELECT pg_switch_wal()")
            scur.execute("CHECKPOINT")
            info = slot_info(cur, scratch_db.slot)
            return info is not None and info.wal_status == "lost"

        wait_for(invalidated, 120, "the slot to be invalidated", interval=0.2)
    finally:
        scur.execute(sql.SQL("ALTER SYSTEM SET max_slot_wal_keep_size = {}").format(sql.Literal(previous)))
        scur.execute("SELECT pg_reload_conf()")
        su.close()
    with pytest.raises(SlotLostError, match="invalidated"):
        Pipeline(settings_for(scratch_db), [MemorySink()]).run()
