"""The three destinations as separate workers over Kafka end exactly where `pulse run` would."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import datetime, timedelta, timezone


from pulse.generator import GenerateSpec, run as generate
from pulse.receiver import Receiver
from pulse.source.slot import ensure_slot
from tests.conftest import unique

from .pipeline_helpers import wait_for
from .pipeline_helpers import pulse_cmd
from .redis_helpers import board_stats


def test_redis_bigquery_and_external_consumers_are_exact(scratch_db, services, kafka_env, bq_dataset, tmp_path):
    import redis

    dataset, bq = bq_dataset
    prefix = unique("pulse_k") + ":"
    receiver = Receiver().start()
    env = dict(kafka_env, PULSE_REDIS_URL=services["PULSE_REDIS_URL"], PULSE_REDIS_PREFIX=prefix,
               PULSE_BIGQUERY_PROJECT=services["PULSE_BIGQUERY_PROJECT"],
               PULSE_BIGQUERY_ENDPOINT=services["PULSE_BIGQUERY_ENDPOINT"], PULSE_BIGQUERY_DATASET=dataset,
               PULSE_BIGQUERY__SPOOL_DIR=str(tmp_path / "spool"), PULSE_BIGQUERY__LOAD_INTERVAL_S="1",
               PULSE_EXTERNAL_URL=receiver.url)
    r = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    ensure_slot(scratch_db.config())
    procs = {name: subprocess.Popen(pulse_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
             for name, args in (("produce", ("produce",)), ("redis", ("consume", "--sink", "redis")),
                                ("bigquery", ("consume", "--sink", "bigquery")),
                                ("external", ("consume", "--sink", "external")))}
    try:
        now = datetime.now(timezone.utc)
        summary = generate(scratch_db.config(), GenerateSpec(
            mode="bulk", count=6_000, since=now - timedelta(minutes=8), until=now, seed=5, chunk_rows=1_000,
            anomalies=0.05))
        cur = scratch_db.connect().cursor()
        cur.execute("SELECT count(*), count(content_id) FROM engagement_events")
        total, _with_content = cur.fetchone()
        # Deletes without old values (default replica identity) exercise the broadcast to every partition.
        assert summary.deleted > 0 and total == summary.rows_written - summary.deleted

        def failed() -> list[str]:
            return [f"{n}: {p.stderr.read()[-1500:]}" for n, p in procs.items() if p.poll() is not None]

        def bq_ids() -> list[int]:
            try:
                return [row["event_id"] for row in bq.query(
                    f"SELECT event_id FROM `{dataset}.engagement_events` ORDER BY event_id").result()]
            except Exception:  # the table appears with the first load
                return []

        changes = summary.rows_written + summary.updated + summary.deleted
        wait_for(lambda: board_stats(r, prefix).get("events", 0) >= changes or failed(), 120, "Redis to see every change")
        try:
            wait_for(lambda: receiver.stats()["unique"] >= changes or failed(), 120, "the receiver to hold every event")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {receiver.stats()['unique']} of {changes}") from None
        cur.execute("SELECT array_agg(id ORDER BY id) FROM engagement_events")
        source_ids = cur.fetchone()[0]
        wait_for(lambda: bq_ids() == source_ids or failed(), 180, "BigQuery to hold exactly the source's events")
        assert not failed()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(60)
        receiver.stop()
    cur.execute("SELECT id FROM engagement_events ORDER BY id")
    assert bq_ids() == [row[0] for row in cur.fetchall()]
    # Every change seen (a broadcast delete once per partition); the board itself
    # is checked against the in-process pipeline in test_kafka_equivalence.py.
    assert board_stats(r, prefix)["events"] >= changes
    stats = receiver.stats()
    assert stats["unique"] == changes and stats["conflicts"] == 0 and stats["order_violations"] == 0
    for key in r.scan_iter(match=prefix + "*", count=1000):
        r.delete(key)
    assert all(p.returncode == 0 for p in procs.values()), {n: p.returncode for n, p in procs.items()}
    assert os.path.isdir(tmp_path / "spool")


def test_the_board_of_an_idle_redis_consumer_moves_its_window_with_the_clock(scratch_db, services, kafka_env):
    """With no new message, `pulse consume --sink redis` still expires what left the window (as `pulse run` does).

    Before, the consumer flushed a sink only with something pending: once traffic stopped, the board
    kept every bucket it held, and counted more than the last 10 minutes (the Redis finding of the
    Kafka-mode chaos soak, and the cause of test_snapshot's intermittent board mismatch over Kafka).
    """
    import redis

    prefix = unique("pulse_k") + ":"
    env = dict(kafka_env, PULSE_REDIS_URL=services["PULSE_REDIS_URL"], PULSE_REDIS_PREFIX=prefix,
               PULSE_REDIS__WINDOW_S="60", PULSE_REDIS__BUCKET_S="5")
    r = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    ensure_slot(scratch_db.config())
    procs = [subprocess.Popen(pulse_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for args in (("produce",), ("consume", "--sink", "redis"))]
    try:
        cur = scratch_db.connect().cursor()
        cur.execute("INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                    "VALUES (gen_random_uuid(), 'old', 'Old', 'video', 600, now()) RETURNING id::text")
        cid = cur.fetchone()[0]
        # Dated 50 s ago in a 60 s window: counted now, gone from the board within 15 s.
        cur.execute("INSERT INTO engagement_events (content_id, event_type, event_ts, duration_ms) "
                    "SELECT %s, 'play', now() - interval '50 seconds', 1000 FROM generate_series(1, 10)", (cid,))

        def failed() -> list[str]:
            return [p.stderr.read()[-1500:] for p in procs if p.poll() is not None]

        wait_for(lambda: r.zscore(prefix + "events:1m", cid) == 10 or failed(), 90, "the events on the board")
        assert not failed()
        # No more traffic: the window must still move past them.
        wait_for(lambda: r.zscore(prefix + "events:1m", cid) is None or failed(), 40, "the idle board to expire them")
        assert not failed()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        for key in r.scan_iter(match=prefix + "*", count=1000):
            r.delete(key)
        r.close()
