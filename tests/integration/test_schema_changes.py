"""Schema changes of the source and unchanged TOAST, through every destination (issue 13, items 3 and 4).

One pipeline runs BigQuery (batch mode, the emulator through the official
client), the external HTTP sink (a real receiver) and Kafka (a real broker)
while the source table gains, renames, drops and retypes columns, and an
UPDATE leaves a TOASTed `raw_payload` untouched. The oracle is the source
database itself, read back with SQL after the fact.
"""

from __future__ import annotations

import json
import random
import string
from datetime import datetime, timezone

import pytest

from pulse.runtime.pipeline import Pipeline
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.sinks.external.sink import ExternalSink
from pulse.sinks.kafka.sink import KafkaSink

from ..conftest import unique
from ..factories import make_event
from .pipeline_helpers import Running, insert_content, wait_for
from .kafka_helpers import drop_topics
from .schema_helpers import kafka_values, schema_insert, schema_settings


def _bq_has(client, dataset: str, event_id: int) -> bool:
    try:
        return bool(list(client.query(f"SELECT 1 FROM `{dataset}.engagement_events` WHERE event_id = {int(event_id)}")
                         .result()))
    except Exception:  # the table is not there yet
        return False


@pytest.fixture
def topic(services):
    name = unique("pulse_schema")
    yield name
    drop_topics(services["PULSE_KAFKA_BOOTSTRAP"], [name, name + "_content"])


@pytest.mark.parametrize("mode", ["batch", "stream"])
def test_columns_added_renamed_dropped_retyped_reach_every_destination(
        scratch_db, services, bq, receiver, topic, tmp_path, mode):  # noqa: F811
    client, dataset = bq
    settings = schema_settings(scratch_db, services, dataset, receiver, topic, tmp_path / "spool", mode)
    sinks = [BigQuerySink(settings.bigquery), ExternalSink.from_settings(settings), KafkaSink.from_settings(settings)]
    conn = scratch_db.connect()
    cur = conn.cursor()
    [content] = insert_content(cur, 1)
    ids: dict[str, int] = {}
    with Running(Pipeline(settings, sinks)) as run:
        ids["before"] = schema_insert(cur, content)
        cur.execute("ALTER TABLE engagement_events ADD COLUMN session_id text, ADD COLUMN note text, "
                    "ADD COLUMN score int, ADD COLUMN seen_at timestamptz, ADD COLUMN attrs jsonb")
        ids["added"] = schema_insert(cur, content, session_id="s-1", note="n-1", score=5,
                               seen_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
                               attrs='{"a": [1, 2]}')
        # A long run of inserts (the native reader's columnar path for the known shape) carries it too.
        cur.execute("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, "
                    "raw_payload, session_id) SELECT %s, gen_random_uuid(), 'play', now(), 1000, 'ios', '{}', "
                    "'bulk-' || g FROM generate_series(1, 300) g RETURNING id", (content,))
        bulk = {r[0] for r in cur.fetchall()}
        cur.execute("ALTER TABLE engagement_events RENAME COLUMN note TO memo")
        ids["renamed"] = schema_insert(cur, content, session_id="s-2", memo="m-2", score=6)
        cur.execute("ALTER TABLE engagement_events DROP COLUMN session_id")
        ids["dropped"] = schema_insert(cur, content, memo="m-3", score=7)
        # An update after the drop does not carry the column: the stored value stays.
        cur.execute("UPDATE engagement_events SET duration_ms = 4321 WHERE id = %s", (ids["added"],))
        # The type change comes after BigQuery has the column (as INT64).
        wait_for(lambda: _bq_has(client, dataset, ids["dropped"]), 60, "the rows before the type change in BigQuery",
                 interval=0.3)
        cur.execute("ALTER TABLE engagement_events ALTER COLUMN score TYPE text")
        ids["fits"] = schema_insert(cur, content, score="8")
        ids["misfit"] = schema_insert(cur, content, score="eight")
        ids["after"] = schema_insert(cur, content, score="9")  # the sink keeps running

        state = {}

        def landed():
            if run.error is not None:
                raise run.error
            try:
                got = {r[0] for r in client.query(f"SELECT event_id FROM `{dataset}.engagement_events`").result()}
                dead = {r[0] for r in client.query(
                    f"SELECT event_id FROM `{dataset}.engagement_events_dead_letter`").result()}
                state.update(got=sorted(got), dead=sorted(dead))
                updated = list(client.query(f"SELECT duration_ms FROM `{dataset}.engagement_events` "
                                            f"WHERE event_id = {ids['added']}").result())
                return (got == (set(ids.values()) - {ids["misfit"]}) | bulk and dead == {ids["misfit"]}
                        and updated[0][0] == 4321)
            except Exception:  # a table not there yet
                return False

        try:
            wait_for(landed, 60, "BigQuery to hold every row and dead-letter the misfit", interval=0.5)
        except AssertionError:
            raise AssertionError(f"{state} vs {ids}") from None
        want_http = set(ids.values())
        wait_for(lambda: want_http <= {i["event"]["data"]["event_id"] for i in receiver.events()}, 60,
                 "the receiver to get every event")

    # -- BigQuery: the columns, typed from the relation message, NULLABLE --------------------
    table = client.get_table(f"{dataset}.engagement_events")
    types = {f.name: (f.field_type, f.mode) for f in table.schema}
    assert types["session_id"] == ("STRING", "NULLABLE") and types["note"] == ("STRING", "NULLABLE")
    assert types["memo"] == ("STRING", "NULLABLE")
    assert types["score"][0] in ("INT64", "INTEGER") and types["seen_at"][0] == "TIMESTAMP"
    assert types["attrs"][0] == "JSON"
    rows = {r["event_id"]: r for r in client.query(
        f"SELECT event_id, session_id, note, memo, score, seen_at, TO_JSON_STRING(attrs) AS attrs "
        f"FROM `{dataset}.engagement_events`").result()}
    b, a, r, d = (rows[ids[k]] for k in ("before", "added", "renamed", "dropped"))
    assert (b["session_id"], b["note"], b["score"]) == (None, None, None)  # before the ADD: NULL
    assert (a["session_id"], a["note"], a["score"]) == ("s-1", "n-1", 5)  # updated after the DROP: kept
    assert a["memo"] == "n-1"  # ...and after the RENAME: its update carries the value under the new name
    assert a["seen_at"] == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    assert json.loads(a["attrs"]) == {"a": [1, 2]}
    assert (r["session_id"], r["note"], r["memo"]) == ("s-2", None, "m-2")  # renamed: the old name NULL
    assert (d["session_id"], d["memo"], d["score"]) == (None, "m-3", 7)  # dropped: kept, NULL
    assert rows[ids["fits"]]["score"] == 8 and rows[ids["after"]]["score"] == 9
    assert {rows[i]["session_id"] for i in bulk} == {f"bulk-{g}" for g in range(1, 301)}
    dead = list(client.query(f"SELECT event_id, score, reason FROM `{dataset}.engagement_events_dead_letter`")
                .result())
    assert [(x[0], x[1]) for x in dead] == [(ids["misfit"], "eight")]
    assert dead[0][2].startswith("column score: value does not fit the column type INT64")
    # -- the receiver's body: the columns as fields ------------------------------------------
    by_id: dict[int, list[dict]] = {}
    for item in receiver.events():
        by_id.setdefault(item["event"]["data"]["event_id"], []).append(item["event"]["data"])
    added = by_id[ids["added"]][0]
    assert (added["session_id"], added["note"], added["score"]) == ("s-1", "n-1", 5)
    assert added["extra_types"]["session_id"] == "text" and added["extra_types"]["score"] == "int4"
    assert by_id[ids["misfit"]][0]["score"] == "eight"  # text now, as the source sends it
    assert "session_id" not in by_id[ids["dropped"]][0] and by_id[ids["renamed"]][0]["memo"] == "m-2"

    # -- the Kafka value: the same ------------------------------------------------------------
    values = kafka_values(services["PULSE_KAFKA_BOOTSTRAP"], topic)
    kv = {}
    for v in values:
        kv.setdefault(v["event_id"], []).append(v)
    assert kv[ids["added"]][0]["session_id"] == "s-1" and kv[ids["renamed"]][0]["memo"] == "m-2"
    assert "session_id" not in kv[ids["dropped"]][0]
    assert kv[ids["added"]][0]["extra_types"]["attrs"] == "jsonb" and kv[ids["misfit"]][0]["score"] == "eight"
    if mode == "batch":
        _consume_into_bigquery(settings, client, dataset + "_k", tmp_path / "kspool", ids, bulk)


def _consume_into_bigquery(settings, client, dataset: str, spool, ids: dict[str, int], bulk: set[int]) -> None:
    """Kafka mode (`pulse consume --sink bigquery`): the types travel in the Kafka value to the uploader."""
    import threading

    from pulse.bus.consumer import SinkConsumer

    cfg = settings.bigquery.model_copy(update={"dataset": dataset, "spool_dir": spool, "load_interval_s": 0.3})
    consumer = SinkConsumer(settings, "bigquery", lambda name: BigQuerySink(cfg, name=name), group=unique("grp"))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        def landed():
            try:
                got = {r[0] for r in client.query(f"SELECT event_id FROM `{dataset}.engagement_events`").result()}
                dead = {r[0] for r in client.query(
                    f"SELECT event_id FROM `{dataset}.engagement_events_dead_letter`").result()}
            except Exception:  # not there yet
                return False
            return got == (set(ids.values()) - {ids["misfit"]}) | bulk and dead == {ids["misfit"]}

        wait_for(landed, 60, "the Kafka consumer's BigQuery table", interval=0.5)
        rows = {r[0]: tuple(r)[1:] for r in client.query(
            f"SELECT event_id, session_id, memo, score FROM `{dataset}.engagement_events`").result()}
        assert rows[ids["added"]] == ("s-1", "n-1", 5) and rows[ids["renamed"]] == ("s-2", "m-2", 6)
        assert rows[ids["dropped"]] == (None, "m-3", 7) and rows[ids["after"]][2] == 9
        types = {f.name: f.field_type for f in client.get_table(f"{dataset}.engagement_events").schema}
        assert types["seen_at"] == "TIMESTAMP" and types["attrs"] == "JSON"
    finally:
        consumer.stop()
        thread.join(30)
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


@pytest.mark.parametrize("same_load", [False, True], ids=["insert-loaded-first", "insert-and-update-in-one-load"])
def test_an_update_that_leaves_a_toasted_payload_keeps_it_everywhere(
        scratch_db, services, bq, receiver, topic, tmp_path, same_load):  # noqa: F811
    """Default replica identity: pgoutput sends the untouched payload as 'u'; no destination may lose it."""
    import redis

    from pulse.config import RedisConfig
    from pulse.sinks.redis.sink import RedisSink
    from pulse.sinks.redis.board import Keys

    client, dataset = bq
    prefix = unique("pulse_t") + ":"
    rclient = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    settings = schema_settings(scratch_db, services, dataset, receiver, topic, tmp_path / "spool")
    if same_load:  # both changes in one MERGE: the update must take the insert's payload, not NULL
        settings.bigquery.load_interval_s = 30.0
    rcfg = RedisConfig(url=services["PULSE_REDIS_URL"], prefix=prefix)
    sinks = [BigQuerySink(settings.bigquery), ExternalSink.from_settings(settings), KafkaSink.from_settings(settings),
             RedisSink(rcfg)]
    conn = scratch_db.connect()
    cur = conn.cursor()
    [content] = insert_content(cur, 1)
    # A payload PostgreSQL must TOAST out of line: 10 kB of incompressible text in JSON.
    rng = random.Random(13)
    big = json.dumps({"blob": "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(10_000))})
    try:
        with Running(Pipeline(settings, sinks)) as run:
            eid = schema_insert(cur, content)
            cur.execute("UPDATE engagement_events SET raw_payload = %s WHERE id = %s", (big, eid))
            if not same_load:
                wait_for(lambda: _bq_payload(client, dataset, eid) == json.loads(big), 60,
                         "the payload in BigQuery", interval=0.3)
            board = Keys(prefix, rcfg.window_s).top
            wait_for(lambda: rclient.zscore(board, content) is not None, 30, "the event on the board")
            score_before = rclient.zscore(board, content)
            # Only the device changes: raw_payload is sent as unchanged TOAST.
            cur.execute("UPDATE engagement_events SET device = 'web' WHERE id = %s", (eid,))
            if same_load:
                spool = sinks[0].spool
                wait_for(lambda: sum(spool.read(f).num_rows for f in spool.files()) == 3, 30,
                         "the insert and both updates in the spool, none loaded")
                sinks[0].loader.hurry()  # load now, all three in one MERGE

            def bq_updated():
                if run.error is not None:
                    raise run.error
                try:
                    return list(client.query(f"SELECT device FROM `{dataset}.engagement_events` "
                                             f"WHERE event_id = {eid}").result())[0][0] == "web"
                except Exception:  # the table is not there yet
                    return False

            wait_for(bq_updated, 60, "the update in BigQuery", interval=0.3)
            wait_for(lambda: any(i["event"]["data"].get("device") == "web" for i in receiver.events()), 30,
                     "the update at the receiver")
            cur.execute("SELECT raw_payload::text FROM engagement_events WHERE id = %s", (eid,))
            src_payload = json.loads(cur.fetchone()[0])
            assert _bq_payload(client, dataset, eid) == src_payload == json.loads(big)
            assert rclient.zscore(board, content) == score_before == 4.0  # nothing zeroed, nothing added
        update = [i["event"]["data"] for i in receiver.events() if i["event"]["data"]["op"] == "update"
                  and i["event"]["data"]["device"] == "web"][0]
        assert update["unchanged"] == ["raw_payload"] and "raw_payload" not in update
        kafka = [v for v in kafka_values(services["PULSE_KAFKA_BOOTSTRAP"], topic)
                 if v["op"] == "update" and v["device"] == "web"]
        assert kafka and kafka[0]["unchanged"] == ["raw_payload"] and "raw_payload" not in kafka[0]
    finally:
        for key in rclient.scan_iter(match=prefix + "*", count=1000):
            rclient.delete(key)
        rclient.close()


def _bq_payload(client, dataset: str, event_id: int):
    try:
        rows = list(client.query(f"SELECT TO_JSON_STRING(raw_payload) FROM `{dataset}.engagement_events` "
                                 f"WHERE event_id = {int(event_id)}").result())
    except Exception:  # the table is not there yet
        return None
    return json.loads(rows[0][0]) if rows and rows[0][0] is not None else None


def test_string_and_json_extra_columns_take_the_direct_path(services, bq, tmp_path):  # noqa: F811
    """Fresh ids whose extra columns need no cast are loaded straight into the table, columns included."""
    from pulse.config import BigQueryConfig
    from pulse.model import Batch, Position

    client, dataset = bq
    now = datetime.now(timezone.utc)

    def ev(i, pos, extra=None, types=None):
        return make_event(i, pos, at=now, content_id=None, duration_ms=1000, user_id=None, event_type="play",
                          device="web", raw_payload='{"a": 1}', content_slug=None, content_title=None,
                          content_type=None, length_seconds=None, engagement_seconds=1.0, engagement_pct=None,
                          extra=extra, extra_types=types)

    cfg = BigQueryConfig(project=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), dataset=dataset,
                         endpoint=services["PULSE_BIGQUERY_ENDPOINT"], spool_dir=tmp_path, upload_in_process=False)
    sink = BigQuerySink(cfg)
    sink.open()
    try:
        sink.write(Batch((ev(1, Position(10, 1)),)))
        sink.loader.drain()
        sink.write(Batch((ev(2, Position(11, 1), {"sid": "x", "j": '{"b": 2}'}, {"sid": "text", "j": "jsonb"}),)))
        sink.loader.drain()
        assert (sink.loader.direct_loads, sink.loader.merge_loads) == (2, 0)
    finally:
        sink.close()
    rows = [tuple(r) for r in client.query(
        f"SELECT event_id, sid, TO_JSON_STRING(j) FROM `{dataset}.engagement_events` ORDER BY 1").result()]
    assert [(r[0], r[1]) for r in rows] == [(1, None), (2, "x")] and json.loads(rows[1][2]) == {"b": 2}
