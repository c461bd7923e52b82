"""Extra columns beyond the ones streamed live on `engagement_events` (issue 13, "schema changes flow").

- A column added to `content` while streaming reaches BigQuery, the
  receiver and Kafka as `content_<name>` on the events of the content rows
  that carry it (including a long run of inserts: the native reader's
  columnar path).
- A table that already has extra columns (on `engagement_events` and on
  `content`) when `pulse run` first starts: the initial snapshot's chunks
  carry them.

The oracle is the source database, read back with SQL.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from pulse.receiver import Receiver
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.sinks.external.sink import ExternalSink
from pulse.sinks.kafka.sink import KafkaSink

from ..conftest import unique
from .pipeline_helpers import Running, insert_content, wait_for
from .kafka_helpers import drop_topics
from .pipeline_helpers import pulse_cmd, pulse_env
from .schema_helpers import kafka_values, schema_insert, schema_settings


@pytest.fixture
def topic(services):
    name = unique("pulse_cx")
    yield name
    drop_topics(services["PULSE_KAFKA_BOOTSTRAP"], [name, name + "_content"])


def _bq_rows(client, dataset: str, columns: str) -> dict[int, dict]:
    try:
        return {r["event_id"]: dict(r.items()) for r in client.query(
            f"SELECT event_id, {columns} FROM `{dataset}.engagement_events`").result()}
    except Exception:  # the table (or the column) is not there yet
        return {}


@pytest.mark.parametrize("mode", ["batch", "stream"])
def test_a_column_added_to_content_mid_stream_reaches_every_destination(
        scratch_db, services, bq, receiver, topic, tmp_path, mode):  # noqa: F811
    client, dataset = bq
    settings = schema_settings(scratch_db, services, dataset, receiver, topic, tmp_path / "spool", mode)
    sinks = [BigQuerySink(settings.bigquery), ExternalSink.from_settings(settings), KafkaSink.from_settings(settings)]
    cur = scratch_db.connect().cursor()
    c1, c2 = insert_content(cur, 2)
    with Running(Pipeline(settings, sinks)) as run:
        before = schema_insert(cur, c1)
        cur.execute("ALTER TABLE content ADD COLUMN author text, ADD COLUMN rating int")
        untouched = schema_insert(cur, c2)  # c2 is never updated: its events do not carry the columns
        cur.execute("UPDATE content SET author = 'Ann', rating = 4 WHERE id = %s", (c1,))
        after = schema_insert(cur, c1)
        # A long run of inserts (the native reader's columnar chunk) carries them too.
        cur.execute("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, "
                    "raw_payload) SELECT %s, gen_random_uuid(), 'play', now(), 1000, 'ios', '{}' "
                    "FROM generate_series(1, 300) RETURNING id", (c1,))
        bulk = {r[0] for r in cur.fetchall()}
        cur.execute("UPDATE content SET author = 'Bob' WHERE id = %s", (c1,))
        later = schema_insert(cur, c1)
        want = {before, untouched, after, later} | bulk

        def landed():
            if run.error is not None:
                raise run.error
            rows = _bq_rows(client, dataset, "content_author")
            return set(rows) == want and rows[later]["content_author"] == "Bob"

        wait_for(landed, 60, "BigQuery to hold every event", interval=0.5)
        wait_for(lambda: want <= {i["event"]["data"]["event_id"] for i in receiver.events()}, 60,
                 "the receiver to get every event")

    types = {f.name: (f.field_type, f.mode) for f in client.get_table(f"{dataset}.engagement_events").schema}
    assert types["content_author"] == ("STRING", "NULLABLE")
    assert types["content_rating"][0] in ("INT64", "INTEGER") and types["content_rating"][1] == "NULLABLE"
    rows = _bq_rows(client, dataset, "content_author, content_rating, content_slug")
    assert (rows[before]["content_author"], rows[before]["content_rating"]) == (None, None)  # before the ADD
    assert (rows[untouched]["content_author"], rows[untouched]["content_rating"]) == (None, None)
    assert (rows[after]["content_author"], rows[after]["content_rating"]) == ("Ann", 4)
    assert {(rows[i]["content_author"], rows[i]["content_rating"]) for i in bulk} == {("Ann", 4)}
    assert (rows[later]["content_author"], rows[later]["content_rating"]) == ("Bob", 4)
    cur.execute("SELECT slug FROM content WHERE id = %s", (c1,))
    assert rows[after]["content_slug"] == cur.fetchone()[0]

    data = {i["event"]["data"]["event_id"]: i["event"]["data"] for i in receiver.events()}
    assert (data[after]["content_author"], data[after]["content_rating"]) == ("Ann", 4)
    assert data[after]["extra_types"] == {"content_author": "text", "content_rating": "int4"}
    assert "content_author" not in data[before] and "content_author" not in data[untouched]
    assert {data[i]["content_author"] for i in bulk} == {"Ann"} and data[later]["content_author"] == "Bob"

    values = {v["event_id"]: v for v in kafka_values(services["PULSE_KAFKA_BOOTSTRAP"], topic)}
    assert values[after]["content_author"] == "Ann" and values[after]["extra_types"]["content_rating"] == "int4"
    assert "content_author" not in values[before] and values[later]["content_author"] == "Bob"
    assert {values[i]["content_author"] for i in bulk} == {"Ann"}


@pytest.mark.parametrize("mode", ["run", "produce"])
def test_the_initial_snapshot_carries_extra_columns_that_exist_before_the_first_start(
        scratch_db, services, bq, topic, tmp_path, mode):  # noqa: F811
    """`pulse run`: BigQuery and the receiver get the columns; `pulse produce`: the Kafka value carries them."""
    client, dataset = bq
    cur = scratch_db.connect().cursor()
    c1, c2 = insert_content(cur, 2)
    cur.execute("ALTER TABLE content ADD COLUMN author text")
    cur.execute("UPDATE content SET author = 'Ann' WHERE id = %s", (c1,))
    cur.execute("ALTER TABLE engagement_events ADD COLUMN session_id text, ADD COLUMN score int")
    cur.execute("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, "
                "raw_payload, session_id, score) SELECT (ARRAY[%s, %s]::uuid[])[1 + g %% 2], gen_random_uuid(), "
                "'play', now(), 1000, 'ios', '{}', CASE WHEN g %% 10 = 0 THEN NULL ELSE 's-' || g END, g "
                "FROM generate_series(1, 2500) g", (c1, c2))
    cur.execute("SELECT e.id, session_id, score, c.author FROM engagement_events e JOIN content c "
                "ON c.id = e.content_id")
    source = {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}
    want_types = {"session_id": "text", "score": "int4", "content_author": "text"}
    receiver = Receiver().start()  # no secret: the process is given none
    env = pulse_env(scratch_db, PULSE_BIGQUERY_PROJECT=services["PULSE_BIGQUERY_PROJECT"],
                    PULSE_BIGQUERY_ENDPOINT=services["PULSE_BIGQUERY_ENDPOINT"], PULSE_BIGQUERY_DATASET=dataset,
                    PULSE_BIGQUERY__SPOOL_DIR=str(tmp_path / "spool"), PULSE_BIGQUERY__LOAD_INTERVAL_S="0.5",
                    PULSE_EXTERNAL_URL=receiver.url, PULSE_KAFKA_BOOTSTRAP=services["PULSE_KAFKA_BOOTSTRAP"],
                    PULSE_KAFKA__TOPIC=topic, PULSE_KAFKA__CONTENT_TOPIC=topic + "_content",
                    PULSE_KAFKA__PARTITIONS="1", PULSE_SNAPSHOT__CHUNK_SIZE="700")
    args = ("run", "--sink", "bigquery", "--sink", "external") if mode == "run" else ("produce",)
    proc = subprocess.Popen(pulse_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    got: dict[int, tuple] = {}

    def alive() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"pulse {mode} exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")

    try:
        if mode == "produce":
            def published():
                nonlocal got
                alive()
                values = {v["event_id"]: v for v in kafka_values(services["PULSE_KAFKA_BOOTSTRAP"], topic)}
                got = {k: (v.get("session_id"), v.get("score"), v.get("content_author")) for k, v in values.items()}
                return got == source and {str(v["extra_types"]) for v in values.values()} == {str(want_types)}

            wait_for(published, 120, "the Kafka values of the snapshot with their extra columns", interval=0.5)
            return

        def landed():
            nonlocal got
            alive()
            got = {k: (r["session_id"], r["score"], r["content_author"]) for k, r in
                   _bq_rows(client, dataset, "session_id, score, content_author").items()}
            return got == source

        try:
            wait_for(landed, 120, "BigQuery to hold the snapshot with its extra columns", interval=0.5)
        except AssertionError:
            wrong = [(k, source[k], got.get(k)) for k in sorted(source) if got.get(k) != source[k]]
            raise AssertionError(f"{len(wrong)} rows differ, e.g. {wrong[:5]}") from None
        wait_for(lambda: set(source) <= {i["event"]["data"]["event_id"] for i in receiver.events()}, 60,
                 "the receiver to get every snapshot row")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        receiver.stop()
    types = {f.name: (f.field_type, f.mode) for f in client.get_table(f"{dataset}.engagement_events").schema}
    assert types["session_id"] == ("STRING", "NULLABLE") and types["score"][0] in ("INT64", "INTEGER")
    assert types["content_author"] == ("STRING", "NULLABLE")
    data = {i["event"]["data"]["event_id"]: i["event"]["data"] for i in receiver.events()}
    assert all(data[k]["backfill"] for k in source)
    assert {k: (d.get("session_id"), d.get("score"), d.get("content_author")) for k, d in data.items()} == source
    assert {str(d["extra_types"]) for d in data.values()} == {str(want_types)}
