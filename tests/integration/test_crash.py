"""`kill -9` of `pulse run` at random moments: a durable sink ends with every event exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import threading

import psycopg2

from pulse.source.slot import ensure_slot

from .pipeline_helpers import insert_content, insert_events_bulk, kill_at_random, wait_for
from .pipeline_helpers import pulse_cmd, pulse_env, reported_pid, sink_counts

TOTAL = 100_000
PER_TXN = 1_000


def _diagnose(cur, sink_url: str, slot: str) -> str:
    cur.execute("SELECT array_agg(id ORDER BY id) FROM engagement_events")
    source = set(cur.fetchone()[0])
    cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    confirmed = cur.fetchone()
    conn = psycopg2.connect(sink_url)
    with conn.cursor() as scur:
        scur.execute("SELECT event_id FROM pulse_sink_events")
        have = {r[0] for r in scur.fetchall()}
        scur.execute("SELECT lsn, seq FROM pulse_sink_events_position")
        pos = scur.fetchall()
        scur.execute("SELECT min(lsn), max(lsn) FROM pulse_sink_events")
        lsns = scur.fetchone()
    conn.close()
    missing = sorted(source - have)
    ranges = []
    for m in missing:
        if ranges and m == ranges[-1][1] + 1:
            ranges[-1][1] = m
        else:
            ranges.append([m, m])
    return f"missing ranges {ranges[:10]}, sink position {pos}, lsn range {lsns}, slot confirmed {confirmed}"


def test_kill_9_at_random_moments_loses_and_repeats_nothing(scratch_db, sink_db):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 20)
    # The slot must exist before the first event is written, or those events are not captured.
    ensure_slot(scratch_db.config())
    env = pulse_env(scratch_db, PULSE_TESTSINKS__PGTABLE_URL=sink_db, PULSE_RUNTIME__BATCH_MAX_EVENTS="2000")

    stop_writing = threading.Event()
    written: list[int] = []

    def writer() -> None:
        wconn = psycopg2.connect(scratch_db.url)
        wconn.autocommit = True
        wcur = wconn.cursor()
        for i in range(TOTAL // PER_TXN):
            insert_events_bulk(wcur, content, i * PER_TXN, PER_TXN)
            written.append(PER_TXN)
            if stop_writing.wait(0.05):  # pacing: spread the writes over several seconds
                break
        wconn.close()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    kills = 0
    try:
        kills = kill_at_random(pulse_cmd("run", "--sink", "pgtable"), env, rng, 6, 0.8, 3.0)
        t.join(120)
        assert sum(written) == TOTAL
        final = subprocess.Popen(pulse_cmd("run", "--sink", "pgtable"), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            try:
                wait_for(lambda: reported_pid(cur, scratch_db.slot) == final.pid or final.poll() is not None, 60,
                         "the final run to start streaming")
                wait_for(lambda: sink_counts(sink_db)[1] >= TOTAL or final.poll() is not None, 60,
                         f"all {TOTAL} events in the sink (seed {seed})", interval=0.5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; sink (rows, distinct) = {sink_counts(sink_db)}; "
                                     f"{_diagnose(cur, sink_db, scratch_db.slot)}") from None
        finally:
            final.send_signal(signal.SIGTERM)
            final.wait(60)
        assert final.returncode == 0, final.stderr.read()[-3000:]
    finally:
        stop_writing.set()

    rows, distinct = sink_counts(sink_db)
    assert kills == 6
    assert (rows, distinct) == (TOTAL, TOTAL), f"seed {seed}: {rows} rows, {distinct} distinct"
    cur.execute("SELECT array_agg(id ORDER BY id) FROM engagement_events")
    source_ids = cur.fetchone()[0]
    sconn = psycopg2.connect(sink_db)
    with sconn.cursor() as scur:
        scur.execute("SELECT array_agg(event_id ORDER BY event_id) FROM pulse_sink_events")
        sink_ids = scur.fetchone()[0]
    sconn.close()
    assert sink_ids == source_ids
