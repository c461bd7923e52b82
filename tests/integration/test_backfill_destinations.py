"""A backfill over streamed events with the real destinations: BigQuery each id once, Redis unchanged."""

from __future__ import annotations

import uuid

import psycopg2

from pulse.config import BigQueryConfig
from pulse.runtime.backfill import BackfillSpec, get_run, submit
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.sinks.bigquery.client import make_client
from pulse.sinks.redis.sink import RedisSink

from .pipeline_helpers import Running, insert_content, insert_events_bulk, settings_for, wait_for
from .redis_helpers import board_stats, redis_config


def test_backfill_overlapping_streamed_events_leaves_bigquery_exact_and_redis_unchanged(
        scratch_db, services, rprefix, tmp_path):
    prefix, client = rprefix
    dataset = f"pulse_bf_{uuid.uuid4().hex[:8]}"
    bq_cfg = BigQueryConfig(project=services["PULSE_BIGQUERY_PROJECT"], dataset=dataset,
                            endpoint=services["PULSE_BIGQUERY_ENDPOINT"], spool_dir=tmp_path / "spool",
                            load_interval_s=0.5)
    bq = make_client(bq_cfg)
    cur = scratch_db.connect().cursor()

    def table() -> dict[int, tuple]:
        try:
            rows = bq.query(f"SELECT event_id, duration_ms, backfill FROM `{dataset}.engagement_events`").result()
            return {r["event_id"]: (r["duration_ms"], r["backfill"]) for r in rows}
        except Exception:  # the table appears with the first load
            return {}

    try:
        with Running(Pipeline(settings_for(scratch_db), [BigQuerySink(bq_cfg), RedisSink(
                redis_config(services["PULSE_REDIS_URL"], prefix))])):
            content = insert_content(cur, 6, length=600)
            insert_events_bulk(cur, content, 0, 800)
            wait_for(lambda: len(table()) == 800, 90, "800 rows in BigQuery")
            wait_for(lambda: board_stats(client, prefix).get("events", 0) >= 800, 30, "800 events on the board")
            board_before = client.zrange(prefix + "top:10m", 0, -1, withscores=True)
            stats_before = board_stats(client, prefix)["events"]
            cur.execute("UPDATE engagement_events SET duration_ms = 4242 WHERE id % 10 = 0")
            run = submit(scratch_db.config(), BackfillSpec(min_id=1, sinks=("bigquery",), chunk_size=250))
            conn = psycopg2.connect(scratch_db.url)
            with conn.cursor() as c2:
                wait_for(lambda: get_run(c2, scratch_db.config(), run["run_id"])["state"] == "done", 90, "backfill")
            conn.close()
            wait_for(lambda: all(flag for _d, flag in table().values()), 90, "every row rewritten by the backfill")
        rows = table()
        cur.execute("SELECT id, duration_ms FROM engagement_events")
        assert {i: d for i, (d, _b) in rows.items()} == dict(cur.fetchall())  # each id once, latest values
        # Redis saw the 80 live updates (uncorrectable without old values) but no backfilled event.
        assert client.zrange(prefix + "top:10m", 0, -1, withscores=True) == board_before
        assert board_stats(client, prefix)["events"] == stats_before + 80
    finally:
        bq.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
