"""The external sink under `pulse consume` keeps no position of its own (its outbox is the topic): the
consumer resumes it from the position committed with the group's offset, so the copies a restarted
producer published again, enriched anew, are skipped instead of reaching the endpoint with a second body.

Found by the 60-minute Kafka soak (issue 17): 11 CloudEvent ids arrived with two different bodies."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from confluent_kafka import Consumer, TopicPartition

from pulse.bus.consumer import SinkConsumer
from pulse.config import Settings
from pulse.model import Batch, EnrichedEvent, Position
from pulse.receiver import Receiver
from pulse.sinks.external.sink import ExternalSink
from pulse.sinks.kafka.sink import KafkaSink
from tests.conftest import unique
from tests.factories import make_event

from .pipeline_helpers import wait_for
from .external_helpers import FAST, SECRET
from .kafka_helpers import drop_topics


def _events(ids: range, processed: datetime) -> list[EnrichedEvent]:
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [make_event(i, Position(5000 + i, 0), at=ts, processed_ts=processed, content_id=f"c-{i % 3}",
                       duration_ms=1000, user_id="u", event_type="play", device="ios", raw_payload="{}",
                       content_slug="s", content_title="T", content_type="podcast", length_seconds=100,
                       engagement_seconds=1.0, engagement_pct=0.01) for i in ids]


def _committed(bootstrap: str, group: str, topic: str) -> tuple[int, str | None]:
    """The group's committed offset of partition 0 and its metadata, read from the broker."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        (tp,) = reader.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset, tp.metadata
    finally:
        reader.close()


def test_a_reopened_external_consumer_skips_copies_a_restarted_producer_published_again(scratch_db, services):
    bootstrap = services["PULSE_KAFKA_BOOTSTRAP"]
    topic = unique("pulse_ext")
    rec = Receiver(secret=SECRET, seed=3).start()
    settings = Settings(
        database=scratch_db.config(),
        external={"url": rec.url, "secret": SECRET, **FAST},
        kafka={"bootstrap": bootstrap, "topic": topic, "content_topic": topic + "_c", "partitions": 1,
               "group_prefix": unique("grp")},
    )
    group = settings.kafka.group_for("external")
    producer = KafkaSink(settings.kafka)
    producer.open()
    t1 = datetime.now(timezone.utc)

    def consume() -> tuple[SinkConsumer, threading.Thread]:
        consumer = SinkConsumer(settings, "external",
                                lambda name: ExternalSink(settings.external, scratch_db.config(), name=name))
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        return consumer, thread

    try:
        producer.write(Batch(tuple(_events(range(1, 21), t1))))
        first, thread = consume()
        wait_for(lambda: _committed(bootstrap, group, topic)[0] == 20, 60, "the first 20 offsets committed")
        first.stop()
        thread.join(30)
        assert _committed(bootstrap, group, topic)[1] == str(Position(5020, 0))

        # A producer killed before its slot acknowledgement publishes 11..20 again, enriched anew.
        producer.write(Batch(tuple(_events(range(11, 31), t1 + timedelta(seconds=7)))))
        second, thread = consume()
        wait_for(lambda: _committed(bootstrap, group, topic)[0] == 40, 60, "all 40 offsets committed")
        second.stop()
        thread.join(30)

        stats = rec.stats()
        assert stats["unique"] == 30
        assert stats["conflicts"] == 0, stats["conflict_samples"]
        assert second.skipped == 10 and second.written == 10
    finally:
        producer.close()
        rec.stop()
        drop_topics(bootstrap, [topic, topic + "_c"])
