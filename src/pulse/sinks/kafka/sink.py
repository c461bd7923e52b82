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

An event larger than a message may be (`kafka.message_max_bytes`, lowered
by the topic's `max.message.bytes`) is published with its payload replaced
by a marker and the problem `payload_too_large`, and kept in full in the
dead-letter store first (sinks/dead_letter.py). When the broker refuses a
message as too large all the same (its topic's limit was lowered, or a
compressed batch of several messages is too large), the batch's retry reads
the topic's limit again, and an event refused twice is truncated whatever
its size. One large row never stops the producer. `pulse dlq replay --sink kafka` publishes the
full events again once the limits were raised (`replay_dead_letters`).
"""

from __future__ import annotations

import threading

import orjson

from pulse.bus.codec import BROADCAST_HEADER, NULL_PARTITION, REPLAY_HEADER, encode
from pulse.config import DatabaseConfig, KafkaConfig, Settings
from pulse.errors import TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import ZERO, Batch, Change, EnrichedEvent, Position
from pulse.sinks import dead_letter as dl
from pulse.sinks.base import Sink, SinkInstance

log = get_logger(__name__)

#: Room left in a message for its key, headers and record overhead.
HEADROOM_BYTES = 4096


def client_config(cfg: KafkaConfig, **extra: object) -> dict[str, object]:
    conf: dict[str, object] = {"bootstrap.servers": cfg.bootstrap}
    conf.update(cfg.client_config)
    conf.update(extra)
    return conf


def topic_max_message_bytes(cfg: KafkaConfig, timeout: float = 10.0) -> int | None:
    """The event topic's `max.message.bytes` as the broker reports it (None when it cannot be read)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient(client_config(cfg))
    try:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, cfg.topic)])
        entries = next(iter(futures.values())).result(timeout)
        return int(entries["max.message.bytes"].value)
    except (KafkaException, KeyError, ValueError, TypeError) as exc:
        log.warning("kafka.topic_limit_unknown", topic=cfg.topic, error=str(exc))
        return None


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
    replays_dead_letters = True  # published again in full once the limits were raised

    @classmethod
    def replay_dead_letters(cls, settings: Settings, store, ids) -> tuple[int, int, str | None]:
        return replay_dead_letters(settings.kafka, store, ids=ids)

    def __init__(self, cfg: KafkaConfig, db: DatabaseConfig | None = None, flush_timeout_s: float = 30.0,
                 name: "str | SinkInstance" = "kafka") -> None:
        self.cfg = cfg
        self.identify(name)
        self.flush_timeout_s = flush_timeout_s
        self.producer = None
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._partition_count: int | None = None
        # Largest value published as is; set at open from the config and the topic.
        self.max_value_bytes = cfg.message_max_bytes - HEADROOM_BYTES
        # Times the broker refused an event's message as too large (by position), since the last good batch.
        self._refused: dict[Position, int] = {}
        self._limit_stale = False  # a refusal: read the topic's limit again before the retry
        self.durable = ZERO  # the highest position acknowledged: what write reports never moves back
        self.dead_letters = (dl.DeadLetters(db.dsn(), db.state_schema, f"{db.slot}/{self.name}")
                             if db is not None else None)
        self.truncated = 0

    @classmethod
    def from_settings(cls, settings: Settings, name: "str | SinkInstance" = "kafka") -> "KafkaSink":
        return cls(settings.kafka, settings.database, name=name)

    def relay_snapshot_targets(self, settings: Settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The `pulse consume` workers' sinks: BigQuery (and the external one unless external.snapshot
        is false) take the snapshot's rows from the topic; the Redis worker rebuilds its window."""
        rows = ("bigquery", "external") if settings.external.snapshot else ("bigquery",)
        return rows, ("redis",)

    def open(self) -> Position:
        from confluent_kafka import Producer

        ensure_topics(self.cfg)
        self._read_limit()
        if self.dead_letters is not None:
            conn = self.dead_letters.connect()
            try:
                self.dead_letters.check_schema(conn)
            finally:
                conn.close()
        self.producer = Producer(client_config(
            self.cfg, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                         "compression.type": "lz4", "client.id": "pulse-produce",
                         "queue.buffering.max.messages": 500_000,
                         "message.max.bytes": self.cfg.message_max_bytes}))
        log.info("kafka.opened", topic=self.cfg.topic, max_value_bytes=self.max_value_bytes)
        return ZERO

    def _read_limit(self) -> None:
        """The largest value published as is: the producer's limit, or the topic's when lower, less headroom."""
        limit = self.cfg.message_max_bytes
        topic_limit = topic_max_message_bytes(self.cfg)
        if topic_limit is not None and topic_limit < limit:
            limit = topic_limit
        self.max_value_bytes = max(1024, limit - HEADROOM_BYTES)

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            from confluent_kafka import KafkaError

            with self._lock:
                self._errors.append(str(err))
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    self._limit_stale = True
                    # Delivery reports carry no headers; the value names its position (rare path).
                    try:
                        doc = orjson.loads(msg.value())
                        pos = Position(doc["source_lsn"], doc["source_seq"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        return  # a content-topic message
                    self._refused[pos] = self._refused.get(pos, 0) + 1

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

    def _fit(self, events: tuple, targets) -> list[tuple[bytes, bytes, list, EnrichedEvent]]:
        """Encoded messages of a batch, oversized events truncated after their full form is dead-lettered."""
        out = []
        oversized: list[tuple[EnrichedEvent, bytes]] = []
        for event in events:
            key, value, headers = encode(event, targets)
            if len(value) > self.max_value_bytes or self._refused.get(event.position, 0) >= 2:
                oversized.append((event, value))
                event = dl.truncate(event)
                key, value, headers = encode(event, targets)
            out.append((key, value, headers, event))
        if oversized:
            if self.dead_letters is None:
                raise TerminalError(f"an event of {len(oversized[0][1])} bytes exceeds the Kafka message limit "
                                    "and this producer has no dead-letter store",
                                    hint="build the sink with the database config (KafkaSink.from_settings)")
            detail = (f"Kafka message limit {self.max_value_bytes + HEADROOM_BYTES} bytes "
                      f"(kafka.message_max_bytes / the topic's max.message.bytes)")
            added = self.dead_letters.add(oversized, dl.PAYLOAD_TOO_LARGE, detail)
            if added:
                dl.count(self.name, dl.PAYLOAD_TOO_LARGE, added)
                self.truncated += added
            for event, value in oversized:
                log.warning("kafka.event_too_large", position=str(event.position), event_id=event.event_id,
                            bytes=len(value), limit=self.max_value_bytes,
                            hint="published with a marker; the full event is in `pulse dlq list --sink kafka`")
        return out

    def write(self, batch: Batch) -> Position:
        assert self.producer is not None
        topic = self.cfg.topic
        targets = batch.targets
        if self._limit_stale:
            self._limit_stale = False
            self._read_limit()
            log.warning("kafka.limit_reread", max_value_bytes=self.max_value_bytes)
        for key, value, headers, event in self._fit(batch.events, targets):
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
            if not errors:
                self._refused.clear()
        if remaining or errors:
            raise TransientError(
                f"Kafka did not acknowledge the batch ({remaining} undelivered, errors: {errors[:3]})"
            )
        # A batch sent again (an older one) is published again, and consumers skip it by position; the
        # position reported stays the highest acknowledged (the contract: never backwards).
        self.durable = max(self.durable, batch.last)
        return self.durable

    def status(self) -> dict[str, object]:
        return {"truncated": self.truncated, "max_value_bytes": self.max_value_bytes}

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(self.flush_timeout_s)
            self.producer = None


def replay_dead_letters(cfg: KafkaConfig, store: "dl.DeadLetters", ids: list[int] | None = None,
                        timeout_s: float = 30.0) -> tuple[int, int, str | None]:
    """Publish dead-lettered events again, in full, oldest first; returns (published, failed, last error).

    Each goes to the event topic under its key and original position, with
    the header `pulse-replay`; what the broker acknowledged leaves the store.
    An event the limits still refuse (MSG_SIZE_TOO_LARGE) stays, with the
    error and its replay count, until `kafka.message_max_bytes` and the
    topic's `max.message.bytes` are raised (or it is purged). Works in chunks
    (bounded memory) and stops after the first chunk with a failure.
    """
    from confluent_kafka import Producer

    ensure_topics(cfg)
    producer = Producer(client_config(cfg, **{"enable.idempotence": True, "acks": "all",
                                              "client.id": "pulse-dlq-replay",
                                              "message.max.bytes": cfg.message_max_bytes}))
    published = failed = 0
    error: str | None = None
    conn = store.connect(name="pulse-dlq-replay")
    try:
        while not failed:
            with conn, conn.cursor() as cur:
                rows = store.lock_for_replay(cur, 1000, ids)
                if not rows:
                    break
                failures = _publish_full(producer, cfg, rows, timeout_s)
                done = [r["id"] for r in rows if r["id"] not in failures]
                if done:
                    store.remove(cur, done)
                for row_id, err in failures.items():
                    store.note_replay_failure(cur, [row_id], err)
                published += len(done)
                failed += len(failures)
                error = next(iter(failures.values()), error)
    finally:
        conn.close()
    return published, failed, error


def _publish_full(producer, cfg: KafkaConfig, rows: list[dict], timeout_s: float) -> dict[int, str]:
    """Produce the stored events and wait for the broker; returns {dead letter id: error} of those refused."""
    from confluent_kafka import KafkaException

    from pulse.bus.codec import BACKFILL_HEADER, NULL_KEY, POSITION_HEADER

    failures: dict[int, str] = {}

    def delivered(row_id: int):
        def cb(err, _msg) -> None:
            if err is not None:
                failures[row_id] = str(err)
        return cb

    for row in rows:
        doc = orjson.loads(row["event"])
        headers = [(POSITION_HEADER, str(Position(row["lsn"], row["seq"])).encode()), (REPLAY_HEADER, b"1")]
        if doc.get("backfill"):
            headers.append((BACKFILL_HEADER, b"1"))
        key = row["content_id"].encode() if row["content_id"] else NULL_KEY
        extra = {} if row["content_id"] else {"partition": NULL_PARTITION}
        try:
            producer.produce(cfg.topic, value=row["event"].encode(), key=key, headers=headers,
                             on_delivery=delivered(row["id"]), **extra)
        except (KafkaException, BufferError) as exc:
            failures[row["id"]] = str(exc)
    if producer.flush(timeout_s):
        for row in rows:
            failures.setdefault(row["id"], "not acknowledged by Kafka in time")
    return failures
