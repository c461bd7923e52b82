"""`pulse consume` holds a trickle for a sink that gathers one (`Sink.linger_s`: BigQuery's spool), as
`pulse run` does.

Found by the 60-minute Kafka soak (issue 17): at 100 events/s over 4 partitions every poll of one or
two messages became a BigQuery spool file of its own (loads of 5,000 files holding 5,000-8,000 rows),
the loads fell behind, and the process grew to 1.5 GB holding the spooled tables."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from confluent_kafka import Consumer, TopicPartition

from pulse.bus.consumer import SinkConsumer
from pulse.config import Settings
from pulse.model import Batch, EnrichedEvent, Position
from pulse.sinks.kafka.sink import KafkaSink
from pulse.sinks.memory import MemorySink
from tests.conftest import unique
from tests.factories import make_event

from .pipeline_helpers import wait_for
from .kafka_helpers import drop_topics


def _event(i: int) -> EnrichedEvent:
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return make_event(i, Position(9000 + i, 0), at=ts, content_id="c-1", duration_ms=1000, user_id="u",
                      event_type="play", device="ios", raw_payload="{}", content_slug="s", content_title="T",
                      content_type="podcast", length_seconds=100, engagement_seconds=1.0, engagement_pct=0.01)


def _committed(bootstrap: str, group: str, topic: str) -> int:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return reader.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        reader.close()


def _trickle(services, linger_s: float) -> tuple[MemorySink, int]:
    """40 events published one at a time, 20 ms apart, to a consumer already assigned; its sink and the
    offset the group committed at the end."""
    bootstrap = services["PULSE_KAFKA_BOOTSTRAP"]
    topic = unique("pulse_linger")
    settings = Settings(kafka={"bootstrap": bootstrap, "topic": topic, "content_topic": topic + "_c",
                               "partitions": 1, "group_prefix": unique("grp")})
    sinks: list[MemorySink] = []

    def build(name: str) -> MemorySink:
        sink = MemorySink(name)
        sink.linger_s = linger_s
        sinks.append(sink)
        return sink

    consumer = SinkConsumer(settings, "memory", build)
    thread = threading.Thread(target=consumer.run, daemon=True)
    producer = KafkaSink(settings.kafka)
    producer.open()
    try:
        thread.start()
        assert consumer.ready.wait(60), "no partition assigned"
        for i in range(1, 41):
            producer.write(Batch((_event(i),)))  # returns once the broker has it
            time.sleep(0.02)  # the trickle's pace, not a wait for a condition
        wait_for(lambda: sinks[0].count == 40, 30, "the 40 events in the sink")
        group = settings.kafka.group_for("memory")
        wait_for(lambda: _committed(bootstrap, group, topic) == 40, 30, "every offset committed")
        return sinks[0], _committed(bootstrap, group, topic)
    finally:
        consumer.stop()
        thread.join(30)
        producer.close()
        drop_topics(bootstrap, [topic, topic + "_c"])


def test_a_sink_with_linger_gets_a_trickle_in_few_writes_and_every_offset_is_committed(services):
    sink, committed = _trickle(services, linger_s=5.0)
    # 40 events over about a second, held up to 5 s: one write, maybe two (a poll landing at the limit).
    assert sink.batches <= 2, sink.batches
    assert [e.event_id for e in sink.events] == list(range(1, 41))
    assert committed == 40


def test_a_sink_without_linger_gets_each_poll_at_once(services):
    """The oracle of the test above: the same trickle without linger is many writes."""
    sink, committed = _trickle(services, linger_s=0.0)
    assert sink.batches >= 10, sink.batches
    assert committed == 40
