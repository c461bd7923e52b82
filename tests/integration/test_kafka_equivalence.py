"""Kafka workers vs `pulse run` on the same changes: same ids, same board, same table.

Two slots stream the same source: one feeds an in-process `pulse run` with
the three destinations (Redis prefix A, dataset A, receiver A); the other a
producer and the Kafka workers (prefix B, dataset B, receiver B), with two
instances of the Redis and BigQuery consumers, one of each killed mid-run.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from pulse.receiver import Receiver
from pulse.source.slot import ensure_slot
from tests.conftest import unique

from .pipeline_helpers import insert_content, wait_for
from .pipeline_helpers import pulse_cmd
from .redis_helpers import board_stats


@pytest.fixture
def second_dataset(services):
    from pulse.config import BigQueryConfig
    from pulse.sinks.bigquery.client import make_client

    dataset = unique("pulse_inproc")
    client = make_client(BigQueryConfig(project=services["PULSE_BIGQUERY_PROJECT"], dataset=dataset,
                                        endpoint=services["PULSE_BIGQUERY_ENDPOINT"]))
    yield dataset
    client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


def _write(url: str, content: list[str], total: int, per_txn: int, done: threading.Event) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    arr = "{" + ",".join(content) + "}"
    now = datetime.now(timezone.utc)
    for start in range(0, total, per_txn):
        cur.execute(
            "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device) "
            "SELECT (%s::uuid[])[1 + (g %% %s)], gen_random_uuid(), 'pause', %s - (g %% 500) * interval '1 second', "
            "100 + g %% 9000, (ARRAY['ios','android','web-chrome'])[1 + g %% 3] FROM generate_series(%s, %s) g",
            (arr, len(content), now, start, start + per_txn - 1),
        )
        time.sleep(0.02)  # pacing: keep writing while workers are killed
    conn.close()
    done.set()


def test_kafka_workers_match_the_in_process_pipeline(scratch_db, services, kafka_env, bq_dataset, second_dataset,
                                                    tmp_path):
    import redis

    from pulse.config import BigQueryConfig
    from pulse.sinks.bigquery.client import make_client

    kafka_ds, _ = bq_dataset
    cur = scratch_db.connect().cursor()
    content = insert_content(cur, 30, length=600, ctype="video")
    rx_a, rx_b = Receiver().start(), Receiver().start()
    pa, pb = unique("pulse_a") + ":", unique("pulse_b") + ":"
    common = dict(kafka_env, PULSE_REDIS_URL=services["PULSE_REDIS_URL"],
                  PULSE_BIGQUERY_PROJECT=services["PULSE_BIGQUERY_PROJECT"],
                  PULSE_BIGQUERY_ENDPOINT=services["PULSE_BIGQUERY_ENDPOINT"], PULSE_BIGQUERY__LOAD_INTERVAL_S="1")
    env_a = dict(common, PULSE_SLOT=scratch_db.slot + "_a", PULSE_REDIS_PREFIX=pa, PULSE_BIGQUERY_DATASET=second_dataset,
                 PULSE_BIGQUERY__SPOOL_DIR=str(tmp_path / "a"), PULSE_EXTERNAL_URL=rx_a.url)
    env_b = dict(common, PULSE_REDIS_PREFIX=pb, PULSE_BIGQUERY_DATASET=kafka_ds,
                 PULSE_BIGQUERY__SPOOL_DIR=str(tmp_path / "b"), PULSE_EXTERNAL_URL=rx_b.url)
    ensure_slot(scratch_db.config())  # slot B (Kafka producer)
    from pulse.config import DatabaseConfig

    ensure_slot(DatabaseConfig(url=scratch_db.url, slot=scratch_db.slot + "_a", publication=scratch_db.publication))

    def spawn(env, *args):
        return subprocess.Popen(pulse_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    procs = {
        "run": spawn(env_a, "run", "--sink", "redis", "--sink", "bigquery", "--sink", "external"),
        "produce": spawn(env_b, "produce"),
        "redis1": spawn(env_b, "consume", "--sink", "redis"),
        "redis2": spawn(env_b, "consume", "--sink", "redis"),
        "bq1": spawn(env_b, "consume", "--sink", "bigquery"),
        "bq2": spawn(env_b, "consume", "--sink", "bigquery"),
        "external": spawn(env_b, "consume", "--sink", "external"),
    }
    r = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    bq_a = make_client(BigQueryConfig(project=services["PULSE_BIGQUERY_PROJECT"], dataset=second_dataset,
                                      endpoint=services["PULSE_BIGQUERY_ENDPOINT"]))
    total = 12_000
    done = threading.Event()
    killed = {"redis2", "bq2"}

    def broken() -> list[str]:
        return [f"{n}: {p.stderr.read()[-1500:]}" for n, p in procs.items() if n not in killed and p.poll() is not None]

    def ids(dataset: str) -> list[int]:
        try:
            return [row[0] for row in bq_a.query(
                f"SELECT event_id FROM `{dataset}.engagement_events` ORDER BY event_id").result()]
        except Exception:  # the table appears with the first load
            return []

    try:
        writer = threading.Thread(target=_write, args=(scratch_db.url, content, total, 300, done), daemon=True)
        writer.start()
        wait_for(lambda: board_stats(r, pb).get("events", 0) > 1_500 or broken(), 90, "Kafka-fed events on board B")
        assert not broken()
        for name in killed:
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait(30)
        writer.join(120)
        assert done.is_set()
        for prefix in (pa, pb):
            wait_for(lambda p=prefix: board_stats(r, p).get("events", 0) >= total or broken(), 120, f"board {prefix}")
        for rx in (rx_a, rx_b):
            wait_for(lambda rx=rx: rx.stats()["unique"] >= total or broken(), 120, "a receiver")
        for ds in (second_dataset, kafka_ds):
            wait_for(lambda ds=ds: len(ids(ds)) >= total or broken(), 180, f"dataset {ds}")
        assert not broken()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(60)
        rx_a.stop()
        rx_b.stop()

    def board(prefix: str, key: str) -> dict[str, float]:
        return {m.decode(): round(s, 6) for m, s in r.zrange(prefix + key, 0, -1, withscores=True)}

    try:
        for key in ("top:10m", "top:10m:video", "events:10m", "devices:10m", "event_types:10m"):
            assert board(pa, key) == board(pb, key), key
        assert board_stats(r, pa)["events"] == board_stats(r, pb)["events"] == total
        cur.execute("SELECT id FROM engagement_events ORDER BY id")
        source = [row[0] for row in cur.fetchall()]
        assert ids(second_dataset) == ids(kafka_ds) == source
        assert {e["id"] for e in rx_a.events()} == {e["id"] for e in rx_b.events()}
        assert rx_b.stats()["conflicts"] == 0 and rx_b.stats()["order_violations"] == 0
    finally:
        for prefix in (pa, pb):
            for k in r.scan_iter(match=prefix + "*", count=1000):
                r.delete(k)
    assert all(p.returncode == 0 for n, p in procs.items() if n not in killed)
