"""Harnesses of the sink contract suite: one per sink, each building the sink on a destination of its own.

A harness builds fresh instances on the *same* destination (as a restarted
process would), reads back what the destination holds in a form two reads
can be compared by, and builds an instance pointed at a destination that does
not answer. Sinks that need a service get it from the real local services
(tests/conftest.py), as the integration tests do.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import pytest

from pulse.sinks.base import Sink
from tests.conftest import unique


@dataclass
class Harness:
    name: str
    build: Callable[[], Sink]
    read: Callable[[], Any]
    unreachable: Callable[[], Sink]
    durable: bool = True  # keeps its data and position across a restart of the process
    # Writes land in a local outbox whatever the endpoint does (the external sink): an unreachable
    # endpoint delays delivery, it does not fail a write.
    outbox: bool = False
    # What a process's death does to an instance that the test cannot kill (its process is the test's):
    # by default nothing (the instance is simply dropped).
    crash: Callable[[Sink], None] = lambda sink: None
    cleanup: Callable[[], None] = lambda: None  # after the test: what the harness started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def _jsonl(tmp_path) -> Harness:
    import orjson

    from pulse.sinks.jsonl.sink import JsonLinesSink

    folder = tmp_path / "jsonl"

    def read():
        return [orjson.loads(line) for p in sorted(folder.glob("*.jsonl")) for line in p.read_bytes().splitlines()]

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    return Harness("jsonl", lambda: JsonLinesSink(folder, segment_bytes=4096), read,
                   lambda: JsonLinesSink(blocker / "jsonl"))


def _pgtable(url: str) -> Harness:
    import psycopg2

    from pulse.sinks.pgtable import PgTableSink

    table = unique("contract")

    def read():
        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute(f'SELECT event_id, op, lsn, seq FROM "{table}"')  # a generated name: no user input
                return Counter(cur.fetchall())
        finally:
            conn.close()

    return Harness("pgtable", lambda: PgTableSink(url, table=table), read,
                   lambda: PgTableSink(f"postgresql://pulse@127.0.0.1:{_closed_port()}/x?connect_timeout=2",
                                       table=table))


def _redis(redis_url: str, client) -> Harness:
    from pulse.config import RedisConfig
    from pulse.sinks.redis.sink import RedisSink

    prefix = unique("contract") + ":"

    def config(url: str) -> RedisConfig:
        return RedisConfig(url=url, prefix=prefix, flush_interval_ms=1, socket_timeout_s=2)

    def read():
        out = {}
        for key in client.scan_iter(match=prefix + "*"):
            if client.type(key) == b"zset":
                out[key] = client.zrange(key, 0, -1, withscores=True)
        return out

    return Harness("redis", lambda: RedisSink(config(redis_url)), read,
                   lambda: RedisSink(config(f"redis://127.0.0.1:{_closed_port()}/0")))


def _memory() -> Harness:
    from pulse.sinks.memory import MemorySink

    sink = MemorySink("memory")
    return Harness("memory", lambda: sink, lambda: [e.position for e in sink.snapshot()], lambda: None,
                   durable=False)


def _kafka(bootstrap: str) -> Harness:
    """The producer's sink. It keeps no position of its own (`open` is ZERO: the consumers skip by
    position), so it is not durable in the contract's sense; what a consumer sees is the topic's events
    by position, which a batch sent again must not change."""
    from confluent_kafka import Consumer, TopicPartition

    from pulse.bus.codec import POSITION_HEADER
    from pulse.config import KafkaConfig
    from pulse.sinks.kafka.sink import KafkaSink

    cfg = KafkaConfig(bootstrap=bootstrap, topic=unique("contract_t"), content_topic=unique("contract_c"),
                      partitions=2)

    def read():
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("contract_g"),
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        try:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(cfg.topic, p), timeout=10)[1]
                    for p in range(cfg.partitions)}
            consumer.assign([TopicPartition(cfg.topic, p, 0) for p in range(cfg.partitions)])
            seen: dict[str, int] = {}
            done = {p for p, end in ends.items() if end == 0}
            deadline = time.monotonic() + 30
            while len(done) < len(ends) and time.monotonic() < deadline:
                for m in consumer.consume(500, timeout=0.5):
                    if m.error():
                        continue
                    headers = dict(m.headers() or [])
                    seen[headers[POSITION_HEADER].decode()] = orjson.loads(m.value())["event_id"]
                    if m.offset() + 1 >= ends[m.partition()]:
                        done.add(m.partition())
            assert len(done) == len(ends), "the topic was not read to its end"
            return seen  # what a consumer sees: one event per position
        finally:
            consumer.close()

    return Harness("kafka", lambda: KafkaSink(cfg, None), read,
                   lambda: KafkaSink(cfg.model_copy(update={"bootstrap": f"127.0.0.1:{_closed_port()}"}), None),
                   durable=False)


def _external(tmp_path, receiver) -> Harness:
    """The external sink with its local outbox, delivering to a real receiver on loopback. What the
    destination holds: the (event id, CloudEvent id) pairs received, once every instance delivered its
    outbox (ids are stable, so an event sent twice is still one pair)."""
    from pulse.config import DatabaseConfig, ExternalConfig
    from pulse.sinks.external.sink import ExternalSink

    fast = {"retry_initial_s": 0.02, "retry_max_s": 0.25, "retry_after_max_s": 0.5, "connect_timeout_s": 1.0,
            "read_timeout_s": 1.0, "breaker_open_s": 0.3, "breaker_open_max_s": 1.0, "batch_max_age_s": 0.02}
    db = DatabaseConfig(slot=unique("contract"))
    built: list[ExternalSink] = []

    def build(url: str = receiver.url) -> ExternalSink:
        cfg = ExternalConfig(url=url, outbox="local", outbox_dir=tmp_path / "outbox", **fast)
        sink = ExternalSink(cfg, db)
        built.append(sink)
        return sink

    def read():
        deadline = time.monotonic() + 30
        while any(s.flow is not None and s.status().get("pending") for s in built):
            assert time.monotonic() < deadline, "the outbox did not drain"
            time.sleep(0.02)
        return frozenset((e["event"]["data"]["event_id"], e["id"]) for e in receiver.events())

    def crash(sink: ExternalSink) -> None:
        # A dead process's outbox lock is released by the kernel and its delivery threads are gone; in
        # this process, close() does both (it writes nothing beyond what write/flush made durable).
        sink.close()
        built.remove(sink)

    def cleanup() -> None:
        for sink in built:
            if sink.flow is not None:
                sink.close()

    return Harness("external", build, read, lambda: build(f"http://127.0.0.1:{_closed_port()}/"), outbox=True,
                   crash=crash, cleanup=cleanup)


def _bigquery(tmp_path, services, client, dataset: str) -> Harness:
    """The batch sink (spool + in-process loader) on the emulator. What the destination holds: the
    table's rows, once every instance's spool was loaded."""
    from pulse.config import BigQueryConfig
    from pulse.sinks.bigquery.sink import BigQuerySink

    built: list[BigQuerySink] = []

    def config(endpoint: str) -> BigQueryConfig:
        return BigQueryConfig(project=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), dataset=dataset,
                              endpoint=endpoint, spool_dir=tmp_path / "spool", load_interval_s=0.2,
                              write_linger_s=0, request_timeout_s=10)

    def build(endpoint: str = services["PULSE_BIGQUERY_ENDPOINT"]) -> BigQuerySink:
        sink = BigQuerySink(config(endpoint), slot="contract")
        built.append(sink)
        return sink

    def read():
        deadline = time.monotonic() + 60
        while any(s.spool is not None and s.spool.files() for s in built):
            assert time.monotonic() < deadline, "the spool was not loaded"
            time.sleep(0.1)
        rows = client.query(f"SELECT event_id, source_lsn, source_seq, op FROM `{dataset}.engagement_events`").result()
        return Counter(tuple(r.values()) for r in rows)

    def crash(sink: BigQuerySink) -> None:
        # A dead process's spool lock and loader thread are gone; close() stops both (the spool is durable).
        sink.close()
        built.remove(sink)

    def cleanup() -> None:
        for sink in built:
            sink.close()

    return Harness("bigquery", build, read, lambda: build(f"http://127.0.0.1:{_closed_port()}"), crash=crash,
                   cleanup=cleanup)


ALL = ("jsonl", "pgtable", "redis", "memory", "kafka", "external", "bigquery")
DURABLE = ("jsonl", "pgtable", "redis", "external", "bigquery")


@pytest.fixture
def harness(request, tmp_path) -> Harness:
    kind = request.param
    if kind == "jsonl":
        yield _jsonl(tmp_path)
    elif kind == "memory":
        yield _memory()
    elif kind == "pgtable":
        yield _pgtable(request.getfixturevalue("sink_db"))
    elif kind == "bigquery":
        from pulse.config import BigQueryConfig
        from pulse.sinks.bigquery.client import make_client

        services = request.getfixturevalue("services")
        dataset = unique("contract_bq")
        bq_client = make_client(BigQueryConfig(project=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"),
                                               dataset=dataset, endpoint=services["PULSE_BIGQUERY_ENDPOINT"]))
        h = _bigquery(tmp_path, services, bq_client, dataset)
        try:
            yield h
        finally:
            h.cleanup()
            bq_client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
            bq_client.close()
    elif kind == "external":
        from pulse.receiver import Receiver

        with Receiver(seed=3) as receiver:
            h = _external(tmp_path, receiver)
            try:
                yield h
            finally:
                h.cleanup()
    elif kind == "kafka":
        services = request.getfixturevalue("services")
        h = _kafka(services["PULSE_KAFKA_BOOTSTRAP"])
        try:
            yield h
        finally:
            from tests.integration.kafka_helpers import drop_topics

            cfg = h.build().cfg
            drop_topics(services["PULSE_KAFKA_BOOTSTRAP"], [cfg.topic, cfg.content_topic])
    elif kind == "redis":
        import redis

        services = request.getfixturevalue("services")
        client = redis.Redis.from_url(services["PULSE_REDIS_URL"])
        h = _redis(services["PULSE_REDIS_URL"], client)
        try:
            yield h
        finally:
            prefix = h.build().config.prefix
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
            client.close()
    else:  # pragma: no cover
        raise AssertionError(kind)
