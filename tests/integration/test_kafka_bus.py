"""Separate workers over a real Apache Kafka broker: produce, consume, scale out, crash."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import psycopg2
import pytest

from pulse.source.slot import ensure_slot
from tests.conftest import unique

from .pipeline_helpers import insert_content, insert_events_bulk, wait_for
from .test_crash import _sink_counts
from .test_source import pulse_cmd, pulse_env


@pytest.fixture
def kafka_env(scratch_db, sink_db, services):
    topic = unique("pulse_t")
    env = pulse_env(
        scratch_db,
        PULSE_KAFKA_BOOTSTRAP=services["PULSE_KAFKA_BOOTSTRAP"],
        PULSE_KAFKA__TOPIC=topic,
        PULSE_KAFKA__CONTENT_TOPIC=topic + "_content",
        PULSE_KAFKA__PARTITIONS="4",
        PULSE_KAFKA__GROUP_PREFIX=unique("grp"),
        PULSE_TESTSINKS__PGTABLE_URL=sink_db,
    )
    yield env
    drop_topics(services["PULSE_KAFKA_BOOTSTRAP"], [topic, topic + "_content"])


def drop_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete a test's topics (those already gone are fine)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(topics).values():
        try:
            future.result(30)
        except Exception:  # already gone
            pass


def _spawn(env, *args):
    return subprocess.Popen(pulse_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(proc, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(60)


def test_two_consumers_one_killed_and_a_killed_producer_end_exact(scratch_db, sink_db, kafka_env):
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 16)
    ensure_slot(scratch_db.config())  # capture from the first event on
    total, per_txn = 30_000, 500
    producer = _spawn(kafka_env, "produce")
    c1 = _spawn(kafka_env, "consume", "--sink", "pgtable")
    c2 = _spawn(kafka_env, "consume", "--sink", "pgtable")
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
        wait_for(lambda: _sink_counts(sink_db)[1] > 2_000 or any(p.poll() is not None for p in procs), 90,
                 "the first events through Kafka")
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs if p.poll() is not None]
        # A consumer dies: its partitions move to the other one.
        _stop(c2, signal.SIGKILL)
        # The producer dies and comes back: the slot replays, Kafka may hold duplicates.
        _stop(producer, signal.SIGKILL)
        producer = _spawn(kafka_env, "produce")
        procs = [producer, c1]
        t.join(120)
        assert done.is_set()
        wait_for(lambda: _sink_counts(sink_db)[1] >= total or any(p.poll() is not None for p in procs), 180,
                 f"all {total} events in the sink")
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs if p.poll() is not None]
    finally:
        for p in procs:
            _stop(p)
    rows, distinct = _sink_counts(sink_db)
    assert (rows, distinct) == (total, total)
    assert c1.returncode == 0 and producer.returncode == 0
