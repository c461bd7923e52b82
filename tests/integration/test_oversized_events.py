"""Oversized events (2 MB and 20 MB payloads) never wedge a stream, in both modes.

Each test checks the whole policy of docs/failure-and-bad-input.md against
the real services: the stream goes on (a normal row written after the big
ones arrives), the big events arrive with the marker and the problem
`payload_too_large`, the full rows are in the dead-letter store, and
`pulse dlq show` / `replay` work on them.
"""

from __future__ import annotations

import hashlib
import subprocess

import orjson
import pytest
from typer.testing import CliRunner

from pulse.receiver import Receiver
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.external.sink import ExternalSink
from pulse.source.slot import ensure_slot
from tests.conftest import unique

from .pipeline_helpers import Running, insert_content, wait_for
from .external_helpers import FAST, SECRET, outbox_for, received_by_event, settings
from .kafka_helpers import drop_topics, spawn_pulse, stop_process
from .pipeline_helpers import pulse_cmd, pulse_env

MB = 1024 * 1024
# The stand-in refuses bodies over 16 MiB by default; an endpoint meant to take a 20 MB event whole takes more.
ROOMY = 64 * MB


def insert_sized(cur, content_id: str, blob_bytes: int) -> tuple[int, str]:
    """One event whose raw_payload holds `blob_bytes` bytes of text; returns (id, raw_payload as stored)."""
    cur.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
        "VALUES (%s, gen_random_uuid(), 'play', now(), 5000, 'ios', jsonb_build_object('blob', repeat('x', %s))) "
        "RETURNING id, raw_payload::text", (content_id, blob_bytes))
    return cur.fetchone()


def insert_incompressible(cur, content_id: str, blob_bytes: int) -> tuple[int, str]:
    """Like `insert_sized`, with random hex (lz4 cannot shrink it below the broker's limit)."""
    cur.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
        "SELECT %s, gen_random_uuid(), 'play', now(), 5000, 'ios', jsonb_build_object('blob', string_agg(md5("
        "random()::text), '')) FROM generate_series(1, %s) RETURNING id, raw_payload::text",
        (content_id, blob_bytes // 32))
    return cur.fetchone()


def assert_marker(data: dict, raw: str) -> None:
    """`data` (an enriched event as delivered) carries the marker of `raw` and the flag, nothing of `raw`."""
    marker = orjson.loads(data["raw_payload"])
    assert marker == {"_pulse_truncated": True, "bytes": len(raw.encode()),
                      "sha256": hashlib.sha256(raw.encode()).hexdigest()}
    assert "payload_too_large" in data["problems"]


def dlq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(pulse_cmd("dlq", *args), env=env, capture_output=True, text=True, timeout=120)


def test_kafka_mode_publishes_2mb_and_20mb_events_with_a_marker_and_replays_them_in_full(
        scratch_db, services, bq, tmp_path):
    """`pulse produce` + `pulse consume --sink external / bigquery` on the real broker, then `pulse dlq`."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    client, dataset = bq
    topic = unique("pulse_big")
    bootstrap = services["PULSE_KAFKA_BOOTSTRAP"]
    rec = Receiver(seed=3, max_body_bytes=ROOMY).start()
    env = pulse_env(scratch_db, PULSE_KAFKA_BOOTSTRAP=bootstrap, PULSE_KAFKA__TOPIC=topic,
                    PULSE_KAFKA__CONTENT_TOPIC=topic + "_content", PULSE_KAFKA__PARTITIONS="2",
                    PULSE_KAFKA__GROUP_PREFIX=unique("grp"), PULSE_EXTERNAL_URL=rec.url,
                    PULSE_BIGQUERY_ENDPOINT=services["PULSE_BIGQUERY_ENDPOINT"], PULSE_BIGQUERY_DATASET=dataset,
                    PULSE_BIGQUERY_PROJECT=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"),
                    PULSE_BIGQUERY__SPOOL_DIR=str(tmp_path / "spool"), PULSE_BIGQUERY__LOAD_INTERVAL_S="0.5",
                    **{f"PULSE_EXTERNAL__{k.upper()}": str(v) for k, v in FAST.items()})
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 2)
    ensure_slot(scratch_db.config())
    producer = spawn_pulse(env, "produce")
    consumer = spawn_pulse(env, "consume", "--sink", "external")
    warehouse = spawn_pulse(env, "consume", "--sink", "bigquery")
    procs = [producer, consumer, warehouse]
    try:
        big2, raw2 = insert_sized(cur, content[0], 2 * MB)
        big20, raw20 = insert_sized(cur, content[1], 20 * MB)
        normal, _ = insert_sized(cur, content[0], 10)
        # big20 is another content's (order is per content, across partitions and lanes): wait for all three.
        wait_for(lambda: {big2, big20, normal} <= set(received_by_event(rec)) or any(p.poll() is not None
                                                                                     for p in procs), 90,
                 "the normal row after the big ones, and the 20 MB one of the other content")
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-3000:] for p in procs if p.poll() is not None]
        got = {e["event"]["data"]["event_id"]: e["event"]["data"] for e in rec.events()}
        assert set(got) == {big2, big20, normal}
        assert_marker(got[big2], raw2)
        assert_marker(got[big20], raw20)
        assert "payload_too_large" not in got[normal]["problems"]
        rows = wait_for(lambda: _bq_rows(client, dataset, 3), 90, "three rows in BigQuery")
        assert_marker({"raw_payload": rows[big20][0], "problems": rows[big20][1]}, raw20)
        assert_marker({"raw_payload": rows[big2][0], "problems": rows[big2][1]}, raw2)

        listed = dlq("list", "--sink", "kafka", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
        assert {r["event_id"]: r["reason"] for r in rows} == {big2: "payload_too_large", big20: "payload_too_large"}
        shown = dlq("show", "--sink", "kafka", "--id", str(rows[1]["id"]), env=env)
        assert shown.returncode == 0, shown.stderr
        doc = orjson.loads(shown.stdout)
        assert doc["event"]["event_id"] == big20 and doc["event"]["raw_payload"] == raw20
        assert "payload_too_large" not in doc["event"]["problems"]

        # The limit still refuses them: the replay fails, they stay, with the error and a replay count.
        refused = dlq("replay", "--sink", "kafka", "--all", env=env)
        assert refused.returncode == 1 and "2 still failing" in refused.stdout, refused.stdout + refused.stderr
        again = [orjson.loads(line) for line in dlq("list", "--sink", "kafka", "--json", env=env).stdout.splitlines()]
        assert [(r["replays"], "too large" in (r["last_error"] or "").lower()) for r in again] == [(1, True)] * 2

        # The operator raises the topic's and the producer's limits: the replay publishes them in full,
        # and the external consumer sends the full events under the ids their markers arrived with.
        admin = AdminClient({"bootstrap.servers": bootstrap})
        res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
            ConfigEntry("max.message.bytes", str(32 * MB), incremental_operation=AlterConfigOpType.SET)])
        for future in admin.incremental_alter_configs([res]).values():
            future.result(30)
        raised = dict(env, PULSE_KAFKA__MESSAGE_MAX_BYTES=str(32 * MB))
        replayed = dlq("replay", "--sink", "kafka", "--all", env=raised)
        assert replayed.returncode == 0 and "replayed 2 event(s)" in replayed.stdout, replayed.stdout + replayed.stderr
        assert dlq("list", "--sink", "kafka", "--json", env=env).stdout == ""
        ids = {e["event"]["data"]["event_id"]: e["id"] for e in rec.events()}
        wait_for(lambda: rec.stats()["conflicts"] >= 2, 60, "the full events under their original ids")
        assert sorted(rec.stats()["conflicting_ids"]) == sorted([ids[big2], ids[big20]])
        # ... and the BigQuery consumer MERGEs the full payloads into the rows that held the markers.
        full = wait_for(lambda: (r := _bq_rows(client, dataset, 3)) and r[big20][1] == [] and r[big2][1] == [] and r,
                        90, "the full payloads in BigQuery")
        assert orjson.loads(full[big2][0]) == orjson.loads(raw2)
        assert orjson.loads(full[big20][0]) == orjson.loads(raw20)
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-3000:] for p in procs if p.poll() is not None]
    finally:
        for p in procs:
            stop_process(p)
        rec.stop()
        drop_topics(bootstrap, [topic, topic + "_content"])


def _bq_payload_sizes(client, dataset) -> dict[int, int] | None:
    try:
        return {r[0]: r[1] for r in client.query(
            f"SELECT event_id, LENGTH(TO_JSON_STRING(raw_payload)) FROM `{dataset}.engagement_events`").result()}
    except Exception:  # the table is not there yet
        return None


def test_in_process_run_delivers_2mb_and_20mb_events_past_a_413_and_to_bigquery_in_full(
        scratch_db, services, bq, tmp_path):
    """`pulse run` (in-process) to the receiver, which refuses bodies over 1 MB, and the BigQuery emulator."""
    from pulse.config import Settings
    from pulse.sinks.bigquery.sink import BigQuerySink

    client, dataset = bq
    rec = Receiver(secret=SECRET, seed=5).start()
    rec.set_faults(max_body_bytes=MB)
    cfg = Settings(
        database=scratch_db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
        runtime={"sinks": ["external", "bigquery"]},
        external={"url": rec.url, "secret": SECRET, **FAST},
        bigquery={"project": services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), "dataset": dataset,
                  "endpoint": services["PULSE_BIGQUERY_ENDPOINT"], "spool_dir": str(tmp_path / "spool"),
                  "load_interval_s": 0.5, "request_timeout_s": 60},
    )
    conn = scratch_db.connect()
    cur = conn.cursor()
    outbox = outbox_for(scratch_db)
    oconn = outbox.connect()
    try:
        with Running(Pipeline(cfg, [ExternalSink.from_settings(cfg), BigQuerySink.from_settings(cfg)])):
            content = insert_content(cur, 2)
            big2, raw2 = insert_sized(cur, content[0], 2 * MB)
            big20, raw20 = insert_sized(cur, content[1], 20 * MB)
            normal, _ = insert_sized(cur, content[0], 10)
            # big20 is another content's: its order is its own (another lane), so wait for all three.
            wait_for(lambda: {big2, big20, normal} <= set(received_by_event(rec)), 60,
                     "the normal row after the big ones, and the 20 MB one of the other content")
            wait_for(lambda: outbox.dead_count(oconn) == 2, 30, "the two big events in the dead-letter store")
            got = {e["event"]["data"]["event_id"]: e["event"]["data"] for e in rec.events()}
            assert set(got) == {big2, big20, normal}
            assert_marker(got[big2], raw2)
            assert_marker(got[big20], raw20)
            # BigQuery takes rows up to 100 MB in a load job: it holds both in full.
            sizes = wait_for(lambda: (s := _bq_payload_sizes(client, dataset)) and len(s) == 3 and s, 120,
                             "three rows in BigQuery")
            assert sizes[big20] >= 20 * MB and sizes[big2] >= 2 * MB
    finally:
        rec.stop()
    dead = outbox.dead_letters(oconn, 10)
    oconn.close()
    assert {d["event_id"]: d["last_status"] for d in dead} == {big2: 413, big20: 413}
    assert all(d["last_error"].startswith("payload_too_large") for d in dead)

    env = {"PULSE_DATABASE_URL": scratch_db.url, "PULSE_SLOT": scratch_db.slot, "PULSE_EXTERNAL_SECRET": SECRET}
    app = __import__("typer").Typer()
    from pulse.cli import dlq as dlq_cli

    dlq_cli.register(app)
    runner = CliRunner()
    shown = runner.invoke(app, ["dlq", "show", "--id", str(dead[0]["id"])], env=env)
    assert shown.exit_code == 0, shown.output
    assert orjson.loads(shown.output)["cloudevent"]["data"]["raw_payload"] == raw2
    rec.start()  # the endpoint is back, its limit unchanged: the replay still fails, the rows stay
    refused = runner.invoke(app, ["dlq", "replay", "--all"], env={**env, "PULSE_EXTERNAL_URL": rec.url})
    assert refused.exit_code == 1 and "413" in refused.output, refused.output
    rec.stop()
    roomy = Receiver(secret=SECRET, seed=6, max_body_bytes=ROOMY).start()  # an endpoint that takes large bodies
    try:
        replayed = runner.invoke(app, ["dlq", "replay", "--all"], env={**env, "PULSE_EXTERNAL_URL": roomy.url})
        assert replayed.exit_code == 0 and "replayed 2 event(s)" in replayed.output, replayed.output
        full = {e["event"]["data"]["event_id"]: e for e in roomy.events()}
    finally:
        roomy.stop()
    assert {k: v["event"]["data"]["raw_payload"] for k, v in full.items()} == {big2: raw2, big20: raw20}
    assert {k: v["id"] for k, v in full.items()} == {big2: next(iter(received_by_event(rec)[big2])),
                                                      big20: next(iter(received_by_event(rec)[big20]))}


def test_a_413_for_a_batch_splits_it_and_every_event_arrives_whole(scratch_db):
    """A batch over the endpoint's body limit, of events each under it: split, nothing truncated or dead."""
    rec = Receiver(secret=SECRET, seed=7).start()
    rec.set_faults(max_body_bytes=300_000)
    conn = scratch_db.connect()
    cur = conn.cursor()
    outbox = outbox_for(scratch_db)
    oconn = outbox.connect()
    cfg = settings(scratch_db, rec, concurrency=1, batch_max_age_s=0.5)
    try:
        with Running(Pipeline(cfg, [ExternalSink.from_settings(cfg)])):
            content = insert_content(cur, 1)
            with scratch_db.connect() as txn_conn:  # one transaction: one batch of 12 x 100 KB
                txn_conn.autocommit = False
                tcur = txn_conn.cursor()
                ids = [insert_sized(tcur, content[0], 100_000)[0] for _ in range(12)]
                txn_conn.commit()
            wait_for(lambda: set(ids) <= set(received_by_event(rec)), 30, "all 12 events")
        assert rec.stats()["faults_served"].get("413", 0) >= 1  # the first, full batch was refused
        assert all("payload_too_large" not in e["event"]["data"]["problems"] for e in rec.events())
        assert outbox.dead_count(oconn) == 0
    finally:
        oconn.close()
        rec.stop()


def test_bigquery_stream_mode_writes_a_20mb_event_with_the_marker_and_keeps_it_in_full(
        scratch_db, services, bq, tmp_path):
    """The Storage Write API takes 10 MB per request: the 20 MB row goes in with the marker, the 2 MB one whole."""
    from pulse.config import Settings
    from pulse.sinks.bigquery.sink import BigQuerySink

    client, dataset = bq
    cfg = Settings(
        database=scratch_db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
        runtime={"sinks": ["bigquery"]},
        bigquery={"project": services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), "dataset": dataset,
                  "endpoint": services["PULSE_BIGQUERY_ENDPOINT"],
                  "grpc_endpoint": services.get("PULSE_BIGQUERY__GRPC_ENDPOINT"), "mode": "stream",
                  "spool_dir": str(tmp_path / "spool"), "merge_interval_s": 0.5, "request_timeout_s": 60},
    )
    conn = scratch_db.connect()
    cur = conn.cursor()
    pipeline = Pipeline(cfg, [BigQuerySink.from_settings(cfg)])
    with Running(pipeline):
        content = insert_content(cur, 2)
        big2, raw2 = insert_sized(cur, content[0], 2 * MB)
        big20, raw20 = insert_sized(cur, content[1], 20 * MB)
        normal, _ = insert_sized(cur, content[0], 10)
        rows = wait_for(lambda: _bq_rows(client, dataset, 3), 90, "three rows in BigQuery")
    assert len(rows[big2][0]) >= 2 * MB and "payload_too_large" not in rows[big2][1]
    assert_marker({"raw_payload": rows[big20][0], "problems": rows[big20][1]}, raw20)
    assert rows[normal][1] == []

    env = {"PULSE_DATABASE_URL": scratch_db.url, "PULSE_SLOT": scratch_db.slot}
    listed = dlq("list", "--sink", "bigquery", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    dead = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert [(d["event_id"], d["reason"]) for d in dead] == [(big20, "payload_too_large")]
    shown = dlq("show", "--sink", "bigquery", "--id", str(dead[0]["id"]), env=env)
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["event"]["raw_payload"] == raw20

    # Replay: a load job takes rows up to 100 MB, so the full payload replaces the marker in the row.
    bq_env = {**env, "PULSE_BIGQUERY_ENDPOINT": services["PULSE_BIGQUERY_ENDPOINT"],
              "PULSE_BIGQUERY_PROJECT": services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"),
              "PULSE_BIGQUERY_DATASET": dataset}
    replayed = dlq("replay", "--sink", "bigquery", "--all", env=bq_env)
    assert replayed.returncode == 0 and "replayed 1 event(s)" in replayed.stdout, replayed.stdout + replayed.stderr
    after = _bq_rows(client, dataset, 3)
    assert orjson.loads(after[big20][0]) == orjson.loads(raw20) and after[big20][1] == []
    assert after[big2] == rows[big2] and after[normal] == rows[normal]
    assert dlq("list", "--sink", "bigquery", "--json", env=env).stdout == ""


def _bq_rows(client, dataset, n: int) -> dict[int, tuple[str, list[str]]] | None:
    try:
        rows = {r[0]: (r[1], list(r[2])) for r in client.query(
            f"SELECT event_id, TO_JSON_STRING(raw_payload), problems FROM `{dataset}.engagement_events`").result()}
    except Exception:  # the table is not there yet
        return None
    return rows if len(rows) == n else None


def test_kafka_a_message_the_broker_refuses_as_too_large_is_published_with_the_marker_on_the_retry(
        scratch_db, services):
    """The topic's limit drops below the producer's after it started: the broker's refusal is handled too."""
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    topic = unique("pulse_lim")
    bootstrap = services["PULSE_KAFKA_BOOTSTRAP"]
    env = pulse_env(scratch_db, PULSE_KAFKA_BOOTSTRAP=bootstrap, PULSE_KAFKA__TOPIC=topic,
                    PULSE_KAFKA__CONTENT_TOPIC=topic + "_content", PULSE_KAFKA__PARTITIONS="1")
    cur = scratch_db.connect().cursor()
    content = insert_content(cur, 1)
    ensure_slot(scratch_db.config())
    producer = spawn_pulse(env, "produce")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("grp"), "auto.offset.reset": "earliest"})
    try:
        first, _ = insert_sized(cur, content[0], 10)
        consumer.subscribe([topic])
        seen: dict[int, dict] = {}

        def poll_for(event_id: int) -> bool:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                doc = orjson.loads(msg.value())
                seen[doc["event_id"]] = doc
            return event_id in seen or producer.poll() is not None

        wait_for(lambda: poll_for(first), 60, "the first event on the topic")
        admin = AdminClient({"bootstrap.servers": bootstrap})
        res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
            ConfigEntry("max.message.bytes", "100000", incremental_operation=AlterConfigOpType.SET)])
        for future in admin.incremental_alter_configs([res]).values():
            future.result(30)
        # Under the producer's 1 MB, over the topic's 100 KB even after lz4.
        big, raw = insert_incompressible(cur, content[0], 600_000)
        after, _ = insert_sized(cur, content[0], 10)
        wait_for(lambda: poll_for(after), 60, "the event after the refused one")
        assert producer.poll() is None, producer.stderr.read()[-3000:]
        assert_marker(seen[big], raw)
        listed = dlq("list", "--sink", "kafka", "--json", env=env)
        assert [orjson.loads(line)["event_id"] for line in listed.stdout.splitlines()] == [big]
    finally:
        consumer.close()
        stop_process(producer)
        drop_topics(bootstrap, [topic, topic + "_content"])
