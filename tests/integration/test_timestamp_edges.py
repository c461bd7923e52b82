"""Timestamps at the edges of the range, through `pulse run` into the real destinations.

`event_ts` is `TIMESTAMPTZ NOT NULL`, so PostgreSQL accepts 'infinity',
BC dates, years beyond 9999 and the first and last instants of the years
1 and 9999. A Python datetime (and a BigQuery TIMESTAMP) holds
0001-01-01 .. 9999-12-31 UTC only. Each such row must reach BigQuery,
Redis and the external receiver flagged, be counted in
`pulse_problems_total`, and the stream must go on (a normal row after them
arrives), with the native reader and with the pure-Python one; a backfill
of the same rows (binary COPY chunks) writes them to BigQuery alike.

The scratch database's own defaults are a time zone west of UTC and a
non-ISO DateStyle, as a production database may have: the replication
connection must set its own (ISO, UTC), or a value such as
'9999-12-31 23:59:59-01' comes out as a datetime that leaves Python's
range once converted to UTC.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from psycopg2 import sql

from pulse import metrics
from pulse.config import Settings
from pulse.receiver import Receiver
from pulse.runtime.backfill import BackfillSpec, get_run, submit
from pulse.runtime.pipeline import Pipeline
from pulse.sinks import build_sink
from pulse.source import native

from ..conftest import need, unique
from .pipeline_helpers import Running, insert_content, wait_for
from .external_helpers import FAST, SECRET

OUT = "event_ts_out_of_range"  # the value is not representable: NULL and flagged
LIMIT = "event_ts_at_limit"  # the value is kept, on the first or last day of the range
EDGES = {  # event_ts as inserted -> (event_ts delivered, problem)
    "infinity": (None, OUT),
    "-infinity": (None, OUT),
    "4713-01-01 00:00:00+00 BC": (None, OUT),
    "0001-01-01 00:00:00+01": (None, OUT),  # 1 BC in UTC
    "0001-01-01 00:00:00+00": (datetime(1, 1, 1, tzinfo=timezone.utc), LIMIT),
    "9999-12-31 23:59:59+00": (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc), LIMIT),
    "9999-12-31 23:59:59-01": (None, OUT),  # 10000-01-01 00:59:59 UTC
    "10000-01-01 00:00:00+00": (None, OUT),
}


def _problem_count(problem: str) -> float:
    return metrics.PROBLEMS.labels(problem)._value.get()


def _bq_rows(client, dataset: str) -> dict[int, tuple]:
    try:
        query = f"SELECT event_id, event_ts, problems, backfill FROM `{dataset}.engagement_events`"
        rows = client.query(query).result()
        return {r["event_id"]: (r["event_ts"], tuple(r["problems"]), r["backfill"]) for r in rows}
    except Exception:  # table not there yet
        return {}


@pytest.mark.parametrize("native_reader", [True, False], ids=["native", "python"])
def test_edge_timestamps_are_flagged_everywhere_and_the_stream_goes_on(scratch_db, services, tmp_path,
                                                                     native_reader):
    if native_reader:
        need(native.available(), "pulse.source._wire (a C compiler at install time)")
    need("PULSE_BIGQUERY_ENDPOINT" in services, "the BigQuery emulator")
    import redis
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    conn = scratch_db.connect()
    cur = conn.cursor()
    cur.execute("SELECT current_database()")
    dbname = cur.fetchone()[0]
    cur.execute(sql.SQL("ALTER DATABASE {} SET TimeZone = 'America/New_York'").format(sql.Identifier(dbname)))
    cur.execute(sql.SQL("ALTER DATABASE {} SET DateStyle = 'SQL, DMY'").format(sql.Identifier(dbname)))
    [content] = insert_content(cur, 1, length=100)

    project = services.get("PULSE_BIGQUERY_PROJECT", "pulse-local")
    client = bigquery.Client(project=project, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=services["PULSE_BIGQUERY_ENDPOINT"]))
    dataset, prefix = unique("pulse_ts"), unique("pulse_ts") + ":"
    rclient = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    receiver = Receiver(secret=SECRET, seed=3).start()
    try:
        settings = Settings(
            database=scratch_db.config(heartbeat_interval_s=1.0, status_interval_s=1.0, native_reader=native_reader),
            runtime={"sinks": ["bigquery", "redis", "external"]},
            bigquery={"project": project, "dataset": dataset, "endpoint": services["PULSE_BIGQUERY_ENDPOINT"],
                      "grpc_endpoint": services.get("PULSE_BIGQUERY__GRPC_ENDPOINT"),
                      "spool_dir": str(tmp_path / "spool"),
                      "load_interval_s": 0.5, "request_timeout_s": 20},
            redis={"url": services["PULSE_REDIS_URL"], "prefix": prefix},
            external={"url": receiver.url, "secret": SECRET, **FAST},
        )
        sinks = [build_sink(name, settings) for name in settings.runtime.sinks]
        before = {p: _problem_count(p) for p in (OUT, LIMIT)}
        with Running(Pipeline(settings, sinks)) as running:
            for ts in EDGES:  # content.publish_ts at the edges too: content changes are decoded on the way
                cur.execute("UPDATE content SET publish_ts = %s WHERE id = %s", (ts, content))
            ids: dict[int, str] = {}
            cur.execute("BEGIN")  # one transaction: the native reader sees a run with the odd rows in it
            for ts in EDGES:
                cur.execute(
                    "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, "
                    "raw_payload) VALUES (%s, %s, 'play', %s, 1000, 'ios', '{}') RETURNING id",
                    (content, str(uuid.uuid4()), ts))
                ids[cur.fetchone()[0]] = ts
            cur.execute("COMMIT")
            cur.execute(  # a normal row after them: the stream went on
                "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, "
                "raw_payload) VALUES (%s, %s, 'play', now(), 2000, 'ios', '{}') RETURNING id",
                (content, str(uuid.uuid4())))
            normal = cur.fetchone()[0]
            want = set(ids) | {normal}

            def arrived() -> bool:
                assert running.error is None, running.error
                got = {item["event"]["data"]["event_id"] for item in receiver.events()}
                stats = {k.decode(): int(v) for k, v in rclient.hgetall(prefix + "stats").items()}
                return got >= want and stats.get("events", 0) >= len(want) and set(_bq_rows(client, dataset)) >= want

            wait_for(arrived, 90, "every row at the receiver, in Redis and in BigQuery", interval=0.25)
            streamed = _bq_rows(client, dataset)
            counted = {p: _problem_count(p) - before[p] for p in (OUT, LIMIT)}  # before the backfill counts again

            # The backfill path (binary COPY chunks, enriched on columns) with the same rows.
            run = submit(settings.database, BackfillSpec(min_id=1, sinks=("bigquery",), chunk_size=4))
            wait_for(lambda: get_run(cur, settings.database, run["run_id"])["state"] in ("done", "failed"), 60,
                     "the backfill")
            assert get_run(cur, settings.database, run["run_id"])["state"] == "done"
            wait_for(lambda: all(r[2] for r in _bq_rows(client, dataset).values()), 60,
                     "every row rewritten by the backfill")

        received = {item["event"]["data"]["event_id"]: item["event"]["data"] for item in receiver.events()}
        backfilled = _bq_rows(client, dataset)
        assert set(backfilled) == set(streamed) == want
        for event_id, ts in ids.items():
            value, problem = EDGES[ts]
            assert problem in received[event_id]["problems"], (ts, received[event_id])
            for in_bq in (streamed, backfilled):
                assert problem in in_bq[event_id][1], (ts, in_bq[event_id])
                assert in_bq[event_id][0] == value, (ts, in_bq[event_id])
            if value is None:
                assert received[event_id]["event_ts"] is None, ts
            else:
                assert datetime.fromisoformat(received[event_id]["event_ts"]) == value, ts
        assert received[normal]["problems"] == [] and streamed[normal][1] == backfilled[normal][1] == ()
        # The normal row is on the Redis board; the odd ones are not (no time, or far outside the window).
        assert rclient.zscore(prefix + "top:10m", content) == 2.0  # 2000 ms -> 2 s for the one row in the window
        stats = {k.decode(): int(v) for k, v in rclient.hgetall(prefix + "stats").items()}
        assert stats["events"] == len(want)
        assert stats["future"] == 1  # 9999-12-31: beyond the allowed skew, not on the board
        assert stats.get("late", 0) == 1  # 0001-01-01: older than the window (the NULL ones have no bucket at all)
        outs = sum(1 for _v, p in EDGES.values() if p == OUT)
        assert counted == {OUT: outs, LIMIT: len(EDGES) - outs}  # each row once, whatever the number of sinks
        assert _problem_count(OUT) - before[OUT] == 2 * outs  # and once more for the backfill
    finally:
        receiver.stop()
        for key in rclient.scan_iter(match=prefix + "*", count=1000):
            rclient.delete(key)
        rclient.close()
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        client.close()
