"""Backfill against real PostgreSQL, with the live stream running: no duplicates, latest values."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time

import psycopg2

from pulse.runtime.backfill import BackfillSpec, get_run, submit
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.memory import MemorySink

from .pipeline_helpers import Running, insert_content, insert_events_bulk, settings_for, wait_for
from .pipeline_helpers import backfill_done, pulse_cmd, pulse_env, slot_streaming


def apply_in_order(events) -> dict[int, object]:
    """What a destination keyed by event id holds after applying the events in arrival order."""
    state: dict[int, object] = {}
    for e in events:
        if e.op == "delete":
            state.pop(e.event_id, None)
        else:
            state[e.event_id] = e
    return state


def source_state(cur) -> dict[int, tuple]:
    cur.execute("SELECT id, duration_ms, device FROM engagement_events")
    return {r[0]: (r[1], r[2]) for r in cur.fetchall()}


def _caught_up(cur, slot: str):
    cur.execute("SELECT pg_current_wal_lsn()")
    target = cur.fetchone()[0]

    def check() -> bool:
        cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    (target, slot))
        row = cur.fetchone()
        return bool(row and row[0])

    return check


def test_backfill_over_streamed_events_sends_each_once_and_only_to_its_targets(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    target, other = MemorySink("bq"), MemorySink("redis")
    with Running(Pipeline(settings_for(scratch_db), [target, other])) as running:
        content = insert_content(cur, 5)
        insert_events_bulk(cur, content, 0, 500)
        wait_for(lambda: target.count >= 500 and other.count >= 500, 30, "the live events")
        run = submit(scratch_db.config(), BackfillSpec(min_id=1, sinks=("bq",), chunk_size=120))
        wait_for(lambda: backfill_done(scratch_db, run["run_id"]), 60, "the backfill to finish")
        wait_for(lambda: target.count >= 1000, 30, "the backfilled events")
        assert running.pipeline.failure is None
    backfilled = [e for e in target.events if e.backfill]
    assert sorted(e.event_id for e in backfilled) == sorted(source_state(cur))
    assert not any(e.backfill for e in other.events), "a sink that is not a target got backfill events"
    positions = [e.position for e in target.events]
    assert positions == sorted(positions), "a sink must receive events in position order"
    final = apply_in_order(target.events)
    assert {i: (e.duration_ms, e.device) for i, e in final.items()} == source_state(cur)
    assert all(e.content_type is not None for e in backfilled)  # enriched like live events


def test_backfill_concurrent_with_live_writes_updates_and_deletes_ends_at_the_final_state(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    sink = MemorySink("bq")
    stop = threading.Event()
    rng = random.Random(11)

    with Running(Pipeline(settings_for(scratch_db), [sink])):
        content = insert_content(cur, 8)
        insert_events_bulk(cur, content, 0, 3000)

        def writer() -> None:
            w = psycopg2.connect(scratch_db.url)
            w.autocommit = True
            wc = w.cursor()
            n = 3000
            while not stop.is_set():
                # Rows inside the backfilled range change while it reads them.
                wc.execute("UPDATE engagement_events SET duration_ms = duration_ms + 1, device = 'changed' "
                           "WHERE id IN (SELECT id FROM engagement_events ORDER BY random() LIMIT 25)")
                if rng.random() < 0.3:
                    wc.execute("DELETE FROM engagement_events WHERE id = "
                               "(SELECT id FROM engagement_events ORDER BY random() LIMIT 1)")
                insert_events_bulk(wc, content, n, 20)
                n += 20
            w.close()

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            run = submit(scratch_db.config(), BackfillSpec(min_id=1, sinks=("bq",), chunk_size=150))
            wait_for(lambda: backfill_done(scratch_db, run["run_id"]), 120, "the backfill to finish")
        finally:
            stop.set()
            t.join(30)
        wait_for(_caught_up(cur, scratch_db.slot), 60, "the pipeline to catch up")
    final = apply_in_order(sink.events)
    got = {i: (e.duration_ms, e.device) for i, e in final.items()}
    want = source_state(cur)
    bad = sorted(i for i in set(got) | set(want) if got.get(i) != want.get(i))
    assert not bad, f"{len(bad)} rows differ; " + "; ".join(
        f"id {i}: sink {got.get(i)}, source {want.get(i)}, received "
        f"{[(e.op, tuple(e.position), e.backfill, e.duration_ms) for e in sink.events if e.event_id == i]}"
        for i in bad[:3])
    with conn.cursor() as c2:
        info = get_run(c2, scratch_db.config(), run["run_id"])
    # Bounded at the ids that existed when it was submitted; rows deleted before
    # their chunk was read are simply not read.
    cur.execute("SELECT count(*) FROM engagement_events WHERE id <= %s", (info["max_id"],))
    assert cur.fetchone()[0] <= info["rows_read"] <= info["max_id"]
    print(f"rows read {info['rows_read']}, superseded by the stream {info['rows_superseded']}")


def _sink_lww(sink_url: str) -> dict[int, float | None]:
    conn = psycopg2.connect(sink_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DISTINCT ON (event_id) event_id, op, engagement_seconds FROM pulse_sink_events "
                        "ORDER BY event_id, lsn DESC, seq DESC")
            return {r[0]: r[2] for r in cur.fetchall() if r[1] != "delete"}
    finally:
        conn.close()


def _sink_rows(sink_url: str) -> int:
    conn = psycopg2.connect(sink_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('pulse_sink_events') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT count(*) FROM pulse_sink_events")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_backfill_killed_at_random_moments_and_rerun_finishes_exact(scratch_db, sink_db):
    """Three SIGKILLs, each while the backfill is writing (asserted, not hoped for), then a rerun."""
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 8)
    for i in range(20):
        insert_events_bulk(cur, content, i * 1000, 1000)
    env = pulse_env(scratch_db, PULSE_TESTSINKS__PGTABLE_URL=sink_db)
    # 8000 rows/s: a whole run takes ~2.5 s; a kill lands within ~0.2 s + 0.3 s of a chunk.
    args = pulse_cmd("backfill", "--min-id", "1", "--sinks", "pgtable", "--chunk-size", "700",
                     "--rate-limit", "8000")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    written_at_kill = []
    for _ in range(3):
        before = _sink_rows(sink_db)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # Killed at a random moment after it has written at least one more chunk: mid-work, for sure.
            wait_for(lambda: _sink_rows(sink_db) >= before + 700 or proc.poll() is not None, 60,
                     f"the backfill to write a chunk (seed {seed})", interval=0.02)
            deadline = time.monotonic() + rng.uniform(0, 0.3)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            assert proc.poll() is None, (f"the backfill ended (exit {proc.returncode}) before the kill "
                                         f"(seed {seed}): {proc.stderr.read()[-2000:]}")
            proc.kill()
        finally:
            proc.kill()
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        written_at_kill.append(_sink_rows(sink_db))
    assert written_at_kill == sorted(written_at_kill) and written_at_kill[0] > 0
    cur.execute("SELECT count(*) FROM engagement_events")
    assert written_at_kill[-1] < cur.fetchone()[0]  # the last kill still left work for the rerun
    wait_for(lambda: not slot_streaming(cur, scratch_db.slot), 30, "the killed walsender to go")
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "done" in final.stdout
    cur.execute("SELECT id, duration_ms FROM engagement_events")
    expected = {r[0]: r[1] / 1000 for r in cur.fetchall()}
    assert _sink_lww(sink_db) == expected


def test_backfill_json_prints_one_document_with_the_finished_run(scratch_db, sink_db):
    """`pulse backfill --json`: no progress bar, the run's final row as JSON (state, rows) on stdout."""
    import json

    cur = scratch_db.connect().cursor()
    content = insert_content(cur, 3)
    insert_events_bulk(cur, content, 0, 500)
    env = pulse_env(scratch_db, PULSE_TESTSINKS__PGTABLE_URL=sink_db)
    out = subprocess.run(pulse_cmd("backfill", "--min-id", "1", "--sinks", "pgtable", "--chunk-size", "200",
                                   "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads(out.stdout)["run"]
    assert (run["state"], run["rows_read"], run["rows_emitted"], run["chunks"]) == ("done", 500, 500, 3)
    assert run["sinks"] == ["pgtable"]
    assert _sink_rows(sink_db) == 500
    again = subprocess.run(pulse_cmd("backfill", "--min-id", "1", "--sinks", "pgtable", "--chunk-size", "200",
                                     "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["already_done"] is True
