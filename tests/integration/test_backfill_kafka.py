"""A backfill through Kafka reaches only the `pulse consume` workers of its targets."""

from __future__ import annotations

import threading

from pulse.bus.consumer import SinkConsumer
from pulse.config import Settings
from pulse.runtime.backfill import BackfillSpec, submit
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.kafka.sink import KafkaSink
from pulse.sinks.memory import MemorySink
from tests.conftest import unique

from .pipeline_helpers import Running, insert_content, insert_events_bulk, wait_for
from .kafka_helpers import drop_topics
from .pipeline_helpers import backfill_done


def test_backfill_published_to_kafka_is_taken_by_its_targets_only(scratch_db, services):
    topic = unique("pulse_bf")
    settings = Settings(
        database=scratch_db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
        runtime={"sinks": ["kafka"]},
        kafka={"bootstrap": services["PULSE_KAFKA_BOOTSTRAP"], "topic": topic, "content_topic": topic + "_c",
               "partitions": 2, "group_prefix": unique("grp")},
    )
    made: dict[str, list[MemorySink]] = {"ext": [], "bq": []}

    def factory(kind):
        def build(name):
            sink = MemorySink(name)
            made[kind].append(sink)
            return sink
        return build

    consumers = [SinkConsumer(settings, kind, factory(kind)) for kind in made]
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    cur = scratch_db.connect().cursor()
    try:
        with Running(Pipeline(settings, [KafkaSink(settings.kafka)])) as running:
            content = insert_content(cur, 4)
            insert_events_bulk(cur, content, 0, 300)
            for t in threads:
                t.start()
            run = submit(scratch_db.config(), BackfillSpec(min_id=1, sinks=("ext",), chunk_size=70))
            wait_for(lambda: backfill_done(scratch_db, run["run_id"]), 60, "the backfill to be published")

            def counts(kind):
                events = [e for s in made[kind] for e in s.events]
                return sum(not e.backfill for e in events), sum(e.backfill for e in events)

            wait_for(lambda: counts("ext") == (300, 300), 60, "the target's consumer to take live and backfill")
            # The other consumer reads the same topic to its end and skips the backfill.
            wait_for(lambda: consumers[1].skipped >= 300, 60, "the other consumer to pass the backfill")
            assert counts("bq") == (300, 0)
            assert running.pipeline.failure is None
    finally:
        for c in consumers:
            c.stop()
        for t in threads:
            t.join(30)
        drop_topics(services["PULSE_KAFKA_BOOTSTRAP"], [topic, topic + "_c"])
