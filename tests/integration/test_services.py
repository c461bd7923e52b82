"""The local services are real and usable through the clients Pulse uses.

Each test talks to one service started by `pulse dev up` (the `services`
fixture) with the official client library, on objects of its own (scratch
database and slot, Redis prefix, Kafka topic and group, BigQuery dataset),
and removes them afterwards. Nothing here is mocked: if a service is only
a port that answers, these tests fail. The client libraries are imported
plainly (they come with `.[dev]`): a missing one is a broken test
environment and fails here, under CI=true or not, instead of skipping.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.conftest import need, unique

PULSE = Path(sys.executable).parent / "pulse"


# -- PostgreSQL --------------------------------------------------------------


def test_postgres_wal_level_is_logical(scratch_db):
    conn = scratch_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            assert cur.fetchone()[0] == "logical"
    finally:
        conn.close()


def test_postgres_pgoutput_slot_sees_inserts(scratch_db):
    conn = scratch_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT slot_name FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (scratch_db.slot,)
            )
            assert cur.fetchone()[0] == scratch_db.slot

            content_id = uuid.uuid4()
            cur.execute(
                "INSERT INTO public.content (id, slug, title, content_type, length_seconds, publish_ts) "
                "VALUES (%s, %s, %s, 'podcast', 600, now())",
                (str(content_id), unique("slug"), "A test episode"),
            )
            cur.execute(
                "INSERT INTO public.engagement_events (content_id, user_id, event_type, event_ts, duration_ms, "
                "device, raw_payload) VALUES (%s, %s, 'play', now(), 1500, 'ios', '{\"k\": 1}') RETURNING id",
                (str(content_id), str(uuid.uuid4())),
            )
            event_id = cur.fetchone()[0]

            # Peek, not get: the slot is not consumed, so the messages stay readable.
            cur.execute(
                "SELECT lsn, xid, data FROM pg_logical_slot_peek_binary_changes("
                "%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s)",
                (scratch_db.slot, scratch_db.publication),
            )
            messages = [bytes(row[2]) for row in cur.fetchall()]
            kinds = [m[:1] for m in messages]
            # Two autocommit transactions: Begin, Relation, Insert, Commit each.
            assert kinds.count(b"I") == 2, kinds
            assert kinds.count(b"B") == kinds.count(b"C") == 2, kinds
            relations = [m for m in messages if m[:1] == b"R"]
            assert any(b"engagement_events\x00" in m for m in relations)
            assert any(b"content\x00" in m for m in relations)
            # The event's text tuple carries its id, i.e. the row really came through.
            inserts = [m for m in messages if m[:1] == b"I"]
            assert any(str(event_id).encode() in m and b"ios" in m for m in inserts)

            cur.execute("SELECT pg_drop_replication_slot(%s)", (scratch_db.slot,))
            cur.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (scratch_db.slot,))
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()


# -- Redis -------------------------------------------------------------------


def test_redis_round_trip(services):
    import redis
    client = redis.Redis.from_url(services["PULSE_REDIS_URL"], socket_timeout=5)
    prefix = unique("pulse_test") + ":"
    try:
        assert client.ping()
        assert client.set(prefix + "greeting", "hello", ex=60)
        assert client.get(prefix + "greeting") == b"hello"
        assert 0 < client.ttl(prefix + "greeting") <= 60

        board = prefix + "top:10m"
        client.zincrby(board, 2.5, "content-a")
        client.zincrby(board, 1.0, "content-b")
        assert client.zincrby(board, 1.5, "content-b") == 2.5
        client.zincrby(board, 0.5, "content-a")
        assert client.zrevrange(board, 0, -1, withscores=True) == [(b"content-a", 3.0), (b"content-b", 2.5)]
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        assert list(client.scan_iter(match=prefix + "*")) == []
        client.close()


# -- Kafka -------------------------------------------------------------------


def test_kafka_idempotent_produce_and_committed_consume(services):
    import confluent_kafka as kafka
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = services["PULSE_KAFKA_BOOTSTRAP"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = unique("pulse_test")
    # Auto topic creation is off on the broker: the topic must be created explicitly.
    futures = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], operation_timeout=30)
    futures[topic].result(timeout=60)
    try:
        deadline = time.monotonic() + 30
        while True:
            meta = admin.list_topics(topic=topic, timeout=10).topics[topic]
            if meta.error is None and len(meta.partitions) == 3:
                break
            assert time.monotonic() < deadline, f"topic {topic} never showed 3 partitions: {meta.error}"
            time.sleep(0.2)

        n = 60
        sent = {f"key-{i}".encode(): json.dumps({"event_id": i}).encode() for i in range(n)}
        delivered, failed = [], []

        def on_delivery(err, msg):
            (failed if err else delivered).append(err or msg)

        producer = kafka.Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
        )
        for key, value in sent.items():
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        assert producer.flush(30) == 0
        assert failed == []
        assert len(delivered) == n
        # Keyed messages spread over the partitions (a single partition would hide key routing bugs).
        assert len({m.partition() for m in delivered}) > 1

        group = unique("pulse_test_group")
        consumer = kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            consumer.subscribe([topic])
            received: dict[bytes, bytes] = {}
            deadline = time.monotonic() + 60
            while len(received) < n and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                assert msg.error() is None, msg.error()
                received[msg.key()] = msg.value()
            assert received == sent
            committed = consumer.commit(asynchronous=False)
            assert committed and all(tp.error is None for tp in committed)
            positions = consumer.committed(
                [kafka.TopicPartition(topic, p) for p in range(3)], timeout=10
            )
            assert sum(tp.offset for tp in positions if tp.offset >= 0) == n
        finally:
            consumer.close()
        admin.delete_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
    finally:
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=60)


# -- BigQuery emulator -------------------------------------------------------


def _bigquery_client(services):
    from google.cloud import bigquery
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    need("PULSE_BIGQUERY_PROJECT" in services, "PULSE_BIGQUERY_PROJECT missing from the local services")
    return bigquery, bigquery.Client(
        project=services["PULSE_BIGQUERY_PROJECT"],
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=services["PULSE_BIGQUERY_ENDPOINT"]),
    )


def test_bigquery_parquet_load_and_query(services):
    bigquery, client = _bigquery_client(services)
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset = unique("pulse_test")
    client.create_dataset(dataset)
    try:
        table_id = f"{client.project}.{dataset}.events"
        schema = [
            bigquery.SchemaField("event_id", "INT64", mode="REQUIRED"),
            bigquery.SchemaField("device", "STRING"),
            bigquery.SchemaField("event_ts", "TIMESTAMP", mode="REQUIRED"),
            bigquery.SchemaField("raw_payload", "JSON"),
        ]
        created = client.create_table(bigquery.Table(table_id, schema=schema))
        assert [(f.name, f.field_type) for f in created.schema] == [
            ("event_id", "INT64"), ("device", "STRING"), ("event_ts", "TIMESTAMP"), ("raw_payload", "JSON"),
        ]

        ts = dt.datetime(2024, 8, 1, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)
        # A value above 2**53 proves INT64 survives without a float round trip.
        big = 2**53 + 1
        arrow = pa.table(
            {
                "event_id": pa.array([1, 2, big], pa.int64()),
                "device": pa.array(["ios", None, "web-safari"], pa.string()),
                "event_ts": pa.array([ts, ts + dt.timedelta(seconds=1), ts], pa.timestamp("us", tz="UTC")),
                # JSON columns load from Parquet strings holding JSON text.
                "raw_payload": pa.array(['{"a": 1}', None, '{"b": [1, 2]}'], pa.string()),
            }
        )
        buf = io.BytesIO()
        pq.write_table(arrow, buf)
        buf.seek(0)
        job = client.load_table_from_file(
            buf,
            table_id,
            job_config=bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.PARQUET,
                schema=schema,
                write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            ),
        )
        job.result(timeout=120)
        assert job.state == "DONE" and job.errors is None
        assert job.output_rows == 3

        rows = list(
            client.query(
                f"SELECT event_id, device, event_ts, raw_payload, JSON_VALUE(raw_payload, '$.a') AS a "
                f"FROM `{table_id}` ORDER BY event_id"
            ).result(timeout=120)
        )
        assert [r["event_id"] for r in rows] == [1, 2, big]
        assert [r["device"] for r in rows] == ["ios", None, "web-safari"]
        assert rows[0]["event_ts"] == ts
        assert rows[0]["raw_payload"] == {"a": 1} and rows[0]["a"] == "1"
        assert rows[1]["raw_payload"] is None
        assert rows[2]["raw_payload"] == {"b": [1, 2]}
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    assert dataset not in {d.dataset_id for d in client.list_datasets()}


# -- the dev tooling itself --------------------------------------------------


def test_dev_status_shows_every_service_running(services):
    from pulse_dev.services import ALL, project_root

    root = project_root()
    result = subprocess.run(
        [str(PULSE), "dev", "status"], cwd=root, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PULSE_PROJECT_ROOT": str(root)},
    )
    assert result.returncode == 0, result.stderr

    for name in ALL:
        # The first line of each row holds the service name and the running column.
        cells = next(
            ([c.strip() for c in line.split("│")] for line in result.stdout.splitlines()
             if line.startswith("│") and line.split("│")[1].strip() == name),
            None,
        )
        assert cells is not None, f"{name} missing from `pulse dev status`:\n{result.stdout}"
        assert cells[2] == "yes", f"{name} not running:\n{result.stdout}"


def test_dev_status_json_lists_every_service(services):
    import json

    from pulse_dev.services import ALL, project_root

    root = project_root()
    result = subprocess.run(
        [str(PULSE), "dev", "status", "--json"], cwd=root, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PULSE_PROJECT_ROOT": str(root)},
    )
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(ALL)
    assert all(row["running"] is True and isinstance(row["port"], int) for row in rows.values()), rows


def test_services_env_holds_every_endpoint(services):
    from pulse_dev.services import state_dir

    path = state_dir() / "services.env"
    assert path.exists()
    exported = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            exported[key] = value.strip("'")
    for key in (
        "PULSE_DATABASE_URL", "PULSE_REDIS_URL", "PULSE_KAFKA_BOOTSTRAP",
        "PULSE_BIGQUERY_PROJECT", "PULSE_BIGQUERY_ENDPOINT", "PULSE_BIGQUERY__GRPC_ENDPOINT",
    ):
        assert exported.get(key), f"{key} missing from {path}"
    # The file and the fixture agree: tests use exactly what a shell would get.
    assert exported == services
    # The secret-bearing file is private to its owner.
    assert path.stat().st_mode & 0o077 == 0
