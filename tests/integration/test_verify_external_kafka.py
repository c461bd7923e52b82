"""`pulse verify --sink external` over Kafka (`pulse consume --sink external`): the events topic against the
external group's committed offsets, on a real broker, a real PostgreSQL and a real receiver.

One story, each step checked against an oracle the test computes itself (the receiver's record, the
broker's offsets read directly, the dead-letter table, the records of the topic):

delivered, dead-lettered and pending events all accounted for (exit 0); the group's offsets rewound by
hand turn delivered events into pending ones; events the producer never published (its slot moved past
them) are named exactly as missing; `--repair` publishes them again for the external sink alone and the
next verify exits 0; once delivered, everything counts as delivered; records removed by retention
(DeleteRecords) make their ids unaccountable, not missing.
"""

from __future__ import annotations

import json
import threading

from typer.testing import CliRunner

from pulse.bus.consumer import SinkConsumer
from pulse.config import Settings
from pulse.receiver import Receiver
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.external.sink import ExternalSink
from pulse.sinks.kafka.sink import KafkaSink
from tests.conftest import unique

from .pipeline_helpers import Running, insert_content, insert_events, wait_for
from .external_helpers import FAST, SECRET, received_by_event, source_ids
from .kafka_helpers import drop_topics

PARTITIONS = 2


class Consuming:
    """`pulse consume --sink external` on a background thread."""

    def __init__(self, cfg: Settings) -> None:
        self.consumer = SinkConsumer(cfg, "external", lambda name: ExternalSink(cfg.external, cfg.database, name=name))
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)

    def __enter__(self) -> "Consuming":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.consumer.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the consumer did not stop"


def _offsets(cfg: Settings) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """(log start, end, the external group's committed offset) per partition, read from the broker."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap, "group.id": cfg.kafka.group_for("external"),
                  "enable.auto.commit": False})
    try:
        tps = [TopicPartition(cfg.kafka.topic, p) for p in range(PARTITIONS)]
        marks = {tp.partition: c.get_watermark_offsets(tp, timeout=10) for tp in tps}
        committed = {tp.partition: max(tp.offset, 0) for tp in c.committed(tps, timeout=10)}
        return {p: m[0] for p, m in marks.items()}, {p: m[1] for p, m in marks.items()}, committed
    finally:
        c.close()


def _commit(cfg: Settings, offsets: dict[int, int]) -> None:
    """Set the external group's committed offsets by hand (the group has no member now)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap, "group.id": cfg.kafka.group_for("external"),
                  "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(cfg.kafka.topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def _all_committed(cfg: Settings) -> bool:
    _low, high, committed = _offsets(cfg)
    return sum(high.values()) > 0 and committed == high


def _records(cfg: Settings) -> dict[int, list[tuple[int, int]]]:
    """partition -> [(offset, event id)] of every readable record, read with a throwaway consumer."""
    from confluent_kafka import Consumer, TopicPartition

    low, high, _ = _offsets(cfg)
    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap, "group.id": unique("oracle"),
                  "enable.auto.commit": False})
    out: dict[int, list[tuple[int, int]]] = {p: [] for p in range(PARTITIONS)}
    try:
        c.assign([TopicPartition(cfg.kafka.topic, p, low[p]) for p in range(PARTITIONS) if high[p] > low[p]])

        def done() -> bool:
            for m in c.consume(500, timeout=0.5):
                if not m.error():
                    out[m.partition()].append((m.offset(), json.loads(m.value())["event_id"]))
            return all(not out[p] and high[p] == low[p] or out[p] and out[p][-1][0] == high[p] - 1
                       for p in range(PARTITIONS))

        wait_for(done, 30, "the topic read to its end")
        return out
    finally:
        c.close()


def _slot_inactive(cur, slot: str) -> bool:
    cur.execute("SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return cur.fetchone()[0]


def _dead(cur) -> set[int]:
    cur.execute("SELECT event_id FROM pulse.external_dead_letter")
    return {r[0] for r in cur.fetchall()}


def _verify(db, cfg: Settings, *extra: str):
    from pulse.cli.main import app

    env = {"PULSE_DATABASE_URL": db.url, "PULSE_SLOT": db.slot, "PULSE_PUBLICATION": db.publication,
           "PULSE_EXTERNAL_URL": cfg.external.url, "PULSE_EXTERNAL_SECRET": SECRET,
           "PULSE_EXTERNAL__OUTBOX": "kafka", "PULSE_VERIFY__SETTLE_S": "2",
           "PULSE_KAFKA_BOOTSTRAP": cfg.kafka.bootstrap, "PULSE_KAFKA__TOPIC": cfg.kafka.topic,
           "PULSE_KAFKA__CONTENT_TOPIC": cfg.kafka.content_topic, "PULSE_KAFKA__PARTITIONS": str(PARTITIONS),
           "PULSE_KAFKA__GROUP_PREFIX": cfg.kafka.group_prefix}
    out = CliRunner().invoke(app, ["verify", "--sink", "external", "--json", *extra], env=env)
    start = out.output.find('{\n  "ok"')  # the document, among the log lines of a repair's pipeline
    doc = json.JSONDecoder().raw_decode(out.output, start)[0] if start >= 0 else None
    return out.exit_code, doc, out.output


def _acc(doc) -> tuple:
    a = doc["results"][0]["accounting"]
    return a["delivered"], a["dead_lettered"], a["pending"], a["missing"], a["unaccountable"]


def test_kafka_mode_accounts_for_every_event_names_unpublished_ones_and_repair_publishes_them(scratch_db, services):
    topic = unique("pulse_vx")
    rec = Receiver(secret=SECRET, seed=7).start()
    cfg = Settings(
        database=scratch_db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
        external={"url": rec.url, "secret": SECRET, **FAST, "outbox": "kafka", "max_attempts": 100_000},
        kafka={"bootstrap": services["PULSE_KAFKA_BOOTSTRAP"], "topic": topic, "content_topic": topic + "_c",
               "partitions": PARTITIONS, "group_prefix": unique("grp")},
        runtime={"sinks": ["kafka"]},
    )
    conn = scratch_db.connect()
    conn.autocommit = True
    cur = conn.cursor()
    try:
        with Running(Pipeline(cfg, [KafkaSink(cfg.kafka)])), Consuming(cfg):
            content = insert_content(cur, 4)
            delivered = insert_events(cur, content, 40)
            wait_for(lambda: set(delivered) <= set(received_by_event(rec)), 60, "40 events at the receiver")
            wait_for(lambda: _all_committed(cfg), 30, "the group to commit past them")
            rec.set_faults(reject_status=400)  # refused for good: dead-lettered
            refused = insert_events(cur, content, 4)
            wait_for(lambda: _dead(cur) == set(refused) and _all_committed(cfg), 30, "4 dead letters")
            rec.set_faults(reject_status=None, error_500=1.0)  # failing: the next events stay pending
            waiting = insert_events(cur, content, 10)
            wait_for(lambda: sum(_offsets(cfg)[1].values()) == 54, 30, "54 records in the topic")

            code, doc, text = _verify(scratch_db, cfg)
            assert code == 0, text
            assert _acc(doc) == (40, 4, 10, 0, 0), doc["results"][0]
            assert doc["results"][0]["accounting"]["outbox"] == "kafka"

        # The group's offsets rewound by hand: what was delivered counts as pending again.
        _low, _high, committed = _offsets(cfg)
        _commit(cfg, {p: 0 for p in committed})
        code, doc, text = _verify(scratch_db, cfg)
        assert code == 0, text
        assert _acc(doc) == (0, 4, 50, 0, 0), doc["results"][0]
        _commit(cfg, committed)

        # Events the producer never published: its slot moved past them while it was stopped.
        unpublished = insert_events(cur, content, 5)
        wait_for(lambda: _slot_inactive(cur, scratch_db.slot), 30, "the producer to leave its slot")
        cur.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", (scratch_db.slot,))
        code, doc, text = _verify(scratch_db, cfg)
        assert code == 1, text
        result = doc["results"][0]
        assert {int(f["key"]) for f in result["findings"]} == set(unpublished)
        assert {f["kind"] for f in result["findings"]} == {"missing"}
        assert _acc(doc) == (40, 4, 10, 5, 0), result

        # --repair publishes them for the external sink alone (no producer runs: verify starts one).
        code, doc, text = _verify(scratch_db, cfg, "--repair")
        assert code == 0, text
        result = doc["results"][0]
        assert result["repair"]["backfilled_ids"] == 5 and _acc(doc) == (40, 4, 15, 0, 0), result
        on_topic = {eid for recs in _records(cfg).values() for _off, eid in recs}
        assert set(unpublished) <= on_topic

        rec.set_faults(error_500=0.0)  # back: the consumer delivers the rest, under the ids they always had
        with Consuming(cfg):
            expected = source_ids(cur) - set(refused)
            wait_for(lambda: set(received_by_event(rec)) >= expected, 60, "every event but the refused at the receiver")
            wait_for(lambda: _all_committed(cfg), 30, "the group to commit to the end")
        code, doc, text = _verify(scratch_db, cfg)
        assert code == 0, text
        assert _acc(doc) == (55, 4, 0, 0, 0), doc["results"][0]

        # Retention cuts the start of a partition: ids only in the removed records cannot be accounted any more.
        # The partition with the most records: 4 content ids over 2 partitions may leave one empty (1 run in 16).
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient

        records = _records(cfg)
        part = max(records, key=lambda p: len(records[p]))
        cut = records[part][len(records[part]) // 2][0]
        removed = {eid for off, eid in records[part] if off < cut}
        kept = {eid for p, recs in records.items() for off, eid in recs if p != part or off >= cut}
        admin = AdminClient({"bootstrap.servers": cfg.kafka.bootstrap})
        for future in admin.delete_records([TopicPartition(topic, part, cut)]).values():
            future.result(30)
        assert _offsets(cfg)[0][part] == cut
        code, doc, text = _verify(scratch_db, cfg)
        assert code == 0, text  # not findings
        unaccountable = removed - kept - set(refused)
        assert unaccountable and _acc(doc) == (55 - len(unaccountable), 4, 0, 0, len(unaccountable)), doc["results"][0]
        assert any(f"retention cut partitions [{part}]" in n for n in doc["results"][0]["notes"])
    finally:
        rec.stop()
        drop_topics(services["PULSE_KAFKA_BOOTSTRAP"], [topic, topic + "_c"])
