"""Helpers shared by the integration tests (schema)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson

from pulse.config import Settings

from ..conftest import unique
from .external_helpers import FAST, SECRET


def schema_insert(cur, content_id: str, **extra) -> int:
    cols = ["content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload", *extra]
    values = [content_id, str(uuid.uuid4()), "play", datetime.now(timezone.utc), 4000, "ios", '{"k": 1}',
              *extra.values()]
    from psycopg2 import sql

    cur.execute(sql.SQL("INSERT INTO engagement_events ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * len(cols))), values)
    return cur.fetchone()[0]


def kafka_values(bootstrap: str, topic: str) -> list[dict]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("grp"), "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    out = []
    try:
        while True:
            msgs = consumer.consume(500, timeout=2.0)
            if not msgs:
                return out
            out.extend(orjson.loads(m.value()) for m in msgs if m.error() is None)
    finally:
        consumer.close()


def schema_settings(scratch_db, services, dataset, receiver, topic, spool, mode="batch", **extra) -> Settings:  # noqa: F811
    return Settings(
        database=scratch_db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
        runtime={"sinks": ["bigquery", "external", "kafka"]},
        bigquery={"project": services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), "dataset": dataset,
                  "endpoint": services["PULSE_BIGQUERY_ENDPOINT"], "spool_dir": str(spool),
                  "grpc_endpoint": services.get("PULSE_BIGQUERY__GRPC_ENDPOINT"), "merge_interval_s": 0.5,
                  "mode": mode,
                  "load_interval_s": 0.3, "request_timeout_s": 20},
        external={"url": receiver.url, "secret": SECRET, **FAST},
        kafka={"bootstrap": services["PULSE_KAFKA_BOOTSTRAP"], "topic": topic, "content_topic": topic + "_content",
               "partitions": 1},
        **extra,
    )
