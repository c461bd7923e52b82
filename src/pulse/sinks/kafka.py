"""The producer's sink: enriched events to a Kafka topic (`pulse produce`).

Each event goes to `kafka.topic`, keyed by content id (one content's events
stay in one partition, in source order), with its source position in a
header. The producer is idempotent (`enable.idempotence`, `acks=all`): a
batch is durable once the broker acknowledged every message, and only then
does the slot move. After a crash the slot replays from its last
acknowledgement, so Kafka may hold an event twice; the consumers' sinks
skip it by position (per partition), which is why this sink does not try to
remember its own position (`open` returns ZERO).

Content changes go to the compacted `kafka.content_topic` keyed by id, so a
consumer can rebuild a content cache from it.
"""

from __future__ import annotations

import threading

import orjson

from pulse.bus.codec import BROADCAST_HEADER, NULL_PARTITION, encode
from pulse.config import KafkaConfig, Settings
from pulse.errors import TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import ZERO, Batch, Change, Position
from pulse.sinks.base import Sink

log = get_logger(__name__)


def client_config(cfg: KafkaConfig, **extra: object) -> dict[str, object]:
    conf: dict[str, object] = {"bootstrap.servers": cfg.bootstrap}
    conf.update(cfg.client_config)
    conf.update(extra)
    return conf


def ensure_topics(cfg: KafkaConfig, timeout: float = 30.0) -> None:
    """Create the event topic and the compacted content topic when missing."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(cfg))
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise TransientError(f"Kafka at {cfg.bootstrap} unreachable: {exc}") from exc
    wanted = []
    if cfg.topic not in existing:
        wanted.append(NewTopic(cfg.topic, cfg.partitions, cfg.replication_factor))
    if cfg.content_topic not in existing:
        wanted.append(NewTopic(cfg.content_topic, cfg.partitions, cfg.replication_factor,
                               config={"cleanup.policy": "compact"}))
    for topic, future in admin.create_topics(wanted).items() if wanted else ():
        try:
            future.result(timeout)
            log.info("kafka.topic_created", topic=topic)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise TerminalError(f"cannot create topic {topic}: {exc}",
                                    hint="create it by hand or grant CREATE on the cluster") from exc


class KafkaSink(Sink):
    name = "kafka"
    relays = True

    def __init__(self, cfg: KafkaConfig, flush_timeout_s: float = 30.0) -> None:
        self.cfg = cfg
        self.flush_timeout_s = flush_timeout_s
        self.producer = None
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._partition_count: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, name: str = "kafka") -> "KafkaSink":
        sink = cls(settings.kafka)
        sink.name = name
        return sink

    def relay_snapshot_targets(self, settings: Settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The `pulse consume` workers' sinks: BigQuery (and the external one unless external.snapshot
        is false) take the snapshot's rows from the topic; the Redis worker rebuilds its window."""
        rows = ("bigquery", "external") if settings.external.snapshot else ("bigquery",)
        return rows, ("redis",)

    def open(self) -> Position:
        from confluent_kafka import Producer

        ensure_topics(self.cfg)
        self.producer = Producer(client_config(
            self.cfg, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                         "compression.type": "lz4", "client.id": "pulse-produce",
                         "queue.buffering.max.messages": 500_000}))
        return ZERO

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(str(err))

    def _partitions(self) -> int:
        if self._partition_count is None:
            assert self.producer is not None
            meta = self.producer.list_topics(self.cfg.topic, timeout=30)
            self._partition_count = len(meta.topics[self.cfg.topic].partitions)
        return self._partition_count

    def _produce(self, topic: str, key: bytes, value: bytes | None, headers=None, partition: int | None = None) -> None:
        assert self.producer is not None
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery,
                                      **extra)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let deliveries drain

    def publish_content(self, change: Change) -> None:
        """Content row changes, for consumers' caches (a delete is a tombstone)."""
        if self.producer is None:
            return
        row = change.new if change.op != "delete" else None
        key_src = change.new if change.new is not None else change.old
        if not key_src or "id" not in key_src:
            return
        value = orjson.dumps(row, default=str) if row is not None else None
        self._produce(self.cfg.content_topic, str(key_src["id"]).encode(), value)

    def write(self, batch: Batch) -> Position:
        assert self.producer is not None
        topic = self.cfg.topic
        targets = batch.targets
        for event in batch.events:
            key, value, headers = encode(event, targets)
            if event.content_id is None:
                if event.op == "delete":
                    # A DELETE without old values (default replica identity) does not
                    # know its content id, hence its partition: it goes to every
                    # partition, so in the one holding the event it lands after the
                    # insert (order within a partition). Positions stay increasing in
                    # each partition; sinks that need one copy only take the one in
                    # NULL_PARTITION (see bus/consumer.py).
                    copies = headers + [(BROADCAST_HEADER, b"1")]
                    for partition in range(self._partitions()):
                        self._produce(topic, key, value, copies, partition=partition)
                    continue
                # Events without a content id share one partition, in source order.
                self._produce(topic, key, value, headers, partition=NULL_PARTITION)
                continue
            self._produce(topic, key, value, headers)
        remaining = self.producer.flush(self.flush_timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
        if remaining or errors:
            raise TransientError(
                f"Kafka did not acknowledge the batch ({remaining} undelivered, errors: {errors[:3]})"
            )
        return batch.last

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(self.flush_timeout_s)
            self.producer = None
