"""Separate workers over a real Apache Kafka broker: produce, consume, scale out, crash."""

from __future__ import annotations

import signal
import threading
import time

import psycopg2

from pulse.source.slot import ensure_slot

from .pipeline_helpers import insert_content, insert_events_bulk, wait_for
from .kafka_helpers import spawn_pulse, stop_process
from .pipeline_helpers import sink_counts


def test_two_consumers_one_killed_and_a_killed_producer_end_exact(scratch_db, sink_db, kafka_env):
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 16)
    ensure_slot(scratch_db.config())  # capture from the first event on
    total, per_txn = 30_000, 500
    producer = spawn_pulse(kafka_env, "produce")
    c1 = spawn_pulse(kafka_env, "consume", "--sink", "pgtable")
    c2 = spawn_pulse(kafka_env, "consume", "--sink", "pgtable")
    procs = [producer, c1, c2]
    done = threading.Event()

    def writer() -> None:
        w = psycopg2.connect(scratch_db.url)
        w.autocommit = True
        wc = w.cursor()
        for i in range(total // per_txn):
            insert_events_bulk(wc, content, i * per_txn, per_txn)
            time.sleep(0.05)  # pacing: keep writing while workers are killed
        w.close()
        done.set()

    try:
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        wait_for(lambda: sink_counts(sink_db)[1] > 2_000 or any(p.poll() is not None for p in procs), 90,
                 "the first events through Kafka")
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs if p.poll() is not None]
        # A consumer dies: its partitions move to the other one.
        stop_process(c2, signal.SIGKILL)
        # The producer dies and comes back: the slot replays, Kafka may hold duplicates.
        stop_process(producer, signal.SIGKILL)
        producer = spawn_pulse(kafka_env, "produce")
        procs = [producer, c1]
        t.join(120)
        assert done.is_set()
        wait_for(lambda: sink_counts(sink_db)[1] >= total or any(p.poll() is not None for p in procs), 180,
                 f"all {total} events in the sink")
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs if p.poll() is not None]
    finally:
        for p in procs:
            stop_process(p)
    rows, distinct = sink_counts(sink_db)
    assert (rows, distinct) == (total, total)
    assert c1.returncode == 0 and producer.returncode == 0
