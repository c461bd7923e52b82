"""The external sink's accounting over Kafka (`pulse consume --sink external`): the topic against the group.

Under `pulse consume` the events topic is the outbox: the external sink's
position is the delivered one, so its consumer group (`kafka.group_for
("external")`) commits a partition's offset only past events the endpoint
acknowledged or that were dead-lettered. For each source event id:

- **dead-lettered**: in `external_dead_letter` under one of the partition
  sinks' keys (`<slot>/external@<topic>/<partition>`);
- **delivered**: a record of it meant for the external sink (not a backfill
  for other targets, not a broadcast copy outside the null-content
  partition) at an offset below the group's committed offset of its
  partition;
- **pending**: such a record at or above the committed offset (its age from
  the record's timestamp);
- **unaccountable**: in no readable record, while retention has deleted the
  start of a partition (log start offset > 0): the id may have been in the
  deleted segments, delivered or not; nobody can tell any more. Precisely:
  an id below the highest event id among the first `EDGE_RECORDS` records
  still readable in such a partition (ids are taken in about commit order,
  and transactions in flight together commit within a few records of each
  other). Reported, not a finding: `--repair` cannot recover a deleted
  segment's offsets either.
- **missing** otherwise: at the source, in no record (never published: a
  slot moved past it, a record deleted by hand above the log start).

Bounds: the topic is streamed once from each partition's log start to its
end offset at the start of the verification (then, while settling, from
there to the new end): memory holds a flag per source id of the range and
the (offset, id, time) of pending records only, never the topic; the cost
is one read of the retained topic. The group's offsets are read, never
committed: verify uses its own assignment and does not join the group.
"""

from __future__ import annotations

import time

import numpy as np
import orjson

from pulse.bus.codec import NULL_PARTITION, is_broadcast_copy, is_for
from pulse.config import Settings
from pulse.errors import TransientError
from pulse.log import get_logger
from pulse.verify.external import dead_ids, split

log = get_logger(__name__)

#: In a partition cut by retention, the ids of this many first readable records bound the unaccountable ids.
EDGE_RECORDS = 1_000
#: Records fetched per consume() call.
READ_BATCH = 5_000
#: librdkafka's prefetch queue (its default is 64 MiB): what the read holds of the topic at once.
PREFETCH_KB = 16_384


class KafkaAccounting:
    what = "in no record of the events topic for the external sink, not dead-lettered"

    def __init__(self, settings: Settings, conn, src: np.ndarray, name: str = "external",
                 timeout_s: float = 30.0) -> None:
        from confluent_kafka import Consumer, KafkaException

        from pulse.sinks.kafka.sink import client_config

        self.settings, self.conn, self.src, self.name = settings, conn, src, name
        self.cfg = settings.kafka
        self.topic = self.cfg.topic
        self.group = self.cfg.group_for(name)
        self.timeout_s = timeout_s
        self.queries = 0
        self.notes: list[str] = []
        self.delivered = np.zeros(len(src), bool)
        # Pending records (offset >= committed when read): partition, offset, index into src, epoch seconds.
        self._pend = np.empty(0, [("p", "<i4"), ("off", "<i8"), ("i", "<i8"), ("ts", "<f8")])
        self.edge: dict[int, int] = {}        # partition cut by retention -> highest id of its first records
        self._edge_seen: dict[int, int] = {}
        self.next: dict[int, int] = {}        # partition -> next offset to read
        self.low: dict[int, int] = {}
        # group.id only to read the group's committed offsets: no subscribe, no commit.
        self.consumer = Consumer(client_config(self.cfg, **{
            "group.id": self.group, "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest", "client.id": "pulse-verify", "enable.partition.eof": False,
            "queued.max.messages.kbytes": PREFETCH_KB}))
        try:
            meta = self.consumer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as exc:
            self.consumer.close()
            raise TransientError(f"Kafka at {self.cfg.bootstrap} unreachable: {exc}") from exc
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            self.consumer.close()
            raise TransientError(f"topic {self.topic} not found at {self.cfg.bootstrap}",
                                 hint="check kafka.topic (PULSE_KAFKA__TOPIC): the topic `pulse produce` writes")
        self.partitions = sorted(topic.partitions)
        self.keys = [_key(settings, name, self.topic, p) for p in self.partitions]
        self.refresh()

    # -- reading -------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the group's offsets, then the records up to each partition's end now, then the dead letters."""
        from confluent_kafka import TopicPartition

        c = self.consumer
        committed = {tp.partition: tp.offset for tp in c.committed(
            [TopicPartition(self.topic, p) for p in self.partitions], timeout=self.timeout_s)}
        # No commit yet (OFFSET_INVALID, negative): nothing of the partition is delivered.
        self.committed = {p: max(0, o) for p, o in committed.items()}
        ends = {}
        for p in self.partitions:
            low, high = c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.timeout_s)
            self.low[p] = low
            if low > 0 and p not in self.edge and p not in self.next:
                # Cut before this verification read it; a cut later removes only records already counted.
                self.edge[p] = -1
            start = max(self.next.get(p, low), low)
            if high > start:
                ends[p] = high
                self.next[p] = start
        self.queries += 2
        if ends:
            self._read(ends)
        # Pending records the group has committed past since: delivered now.
        if len(self._pend):
            done = self._pend["off"] < np.array([self.committed[p] for p in self._pend["p"]], np.int64)
            self.delivered[self._pend["i"][done]] = True
            self._pend = self._pend[~done]
        self.dead = dead_ids(self.conn, self.settings, self.keys)
        self.queries += 1

    def _read(self, ends: dict[int, int]) -> None:
        from confluent_kafka import TopicPartition

        c = self.consumer
        c.assign([TopicPartition(self.topic, p, self.next[p]) for p in ends])
        left = set(ends)
        idle_since = time.monotonic()
        found: list[np.ndarray] = [self._pend]  # joined once at the end, not per fetch
        try:
            while left:
                msgs = c.consume(num_messages=READ_BATCH, timeout=1.0)
                if not msgs:
                    # Offsets without a record (transaction markers, compaction) end a partition too.
                    for tp in c.position([TopicPartition(self.topic, p) for p in left]):
                        if tp.offset >= ends[tp.partition]:
                            self.next[tp.partition] = ends[tp.partition]
                            left.discard(tp.partition)
                    if not left:
                        break
                    if time.monotonic() - idle_since > self.timeout_s:
                        raise TransientError(f"reading {self.topic}: no record for {self.timeout_s:g}s before the "
                                             f"end offsets {ends} (at {self.next})")
                    continue
                idle_since = time.monotonic()
                ps, offs, eids, tss = [], [], [], []
                for m in msgs:
                    if m.error():
                        continue
                    p, off = m.partition(), m.offset()
                    if p not in left or off >= ends[p]:
                        continue
                    self.next[p] = off + 1
                    if off + 1 >= ends[p]:
                        left.discard(p)
                    eid = event_id(m.value())
                    if eid is None:
                        continue
                    if p in self.edge and self._edge_seen.get(p, 0) < EDGE_RECORDS:
                        self._edge_seen[p] = self._edge_seen.get(p, 0) + 1
                        self.edge[p] = max(self.edge[p], eid)
                    headers = m.headers()
                    if headers and (not is_for(headers, self.name) or (
                            p != NULL_PARTITION and is_broadcast_copy(headers))):
                        continue  # not for the external sink: its consumer skips it
                    ps.append(p)
                    offs.append(off)
                    eids.append(eid)
                    tss.append(m.timestamp()[1])
                if ps:
                    found.append(self._place(np.array(ps, np.int32), np.array(offs, np.int64),
                                             np.array(eids, np.int64), np.array(tss, np.float64) / 1000.0))
        finally:
            c.unassign()
            self._pend = np.concatenate(found) if len(found) > 1 else found[0]

    def _place(self, ps: np.ndarray, offs: np.ndarray, eids: np.ndarray, tss: np.ndarray) -> np.ndarray:
        """Mark the fetched records' ids delivered; return the pending ones (the ids of the range only)."""
        src = self.src
        k = np.searchsorted(src, eids)
        ok = k < len(src)
        ok[ok] = src[k[ok]] == eids[ok]  # ids outside the verified range are dropped
        ps, offs, k, tss = ps[ok], offs[ok], k[ok], tss[ok]
        committed = np.array([self.committed.get(int(p), 0) for p in range(int(ps.max()) + 1)] if len(ps) else [0],
                             np.int64)
        done = offs < committed[ps]
        self.delivered[k[done]] = True
        new = np.empty(int((~done).sum()), self._pend.dtype)
        new["p"], new["off"], new["i"], new["ts"] = ps[~done], offs[~done], k[~done], tss[~done]
        return new

    # -- the accounting ------------------------------------------------------------

    @property
    def oldest(self) -> float | None:
        pend = self._pend[~self.delivered[self._pend["i"]]] if len(self._pend) else self._pend
        return float(pend["ts"].min()) if len(pend) else None

    def classify(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        assert ids is self.src or np.array_equal(ids, self.src), "the accounting is of the ids it was built for"
        pending = np.zeros(len(ids), bool)
        pending[self._pend["i"]] = True
        unacc = None
        if self.edge:
            # A cut partition with no readable record left bounds nothing: every id not found may have been there.
            bound = -1 if min(self.edge.values()) < 0 else max(self.edge.values())
            unacc = ids <= bound if bound >= 0 else np.ones(len(ids), bool)
            cut = {p: self.low[p] for p in self.edge}
            note = (f"retention cut partitions {sorted(cut)} (log start offsets {cut}): ids at or below {bound} in "
                    "no readable record are unaccountable" if bound >= 0 else
                    f"retention cut partitions {sorted(cut)} and nothing is left to read: no id can be accounted")
            if note not in self.notes:
                self.notes = [n for n in self.notes if not n.startswith("retention cut")] + [note]
        return split(ids, np.isin(ids, self.dead), self.delivered, pending, unacc)

    def close(self) -> None:
        self.consumer.close()


def event_id(value: bytes | None) -> int | None:
    """The event id of a record's value: read off its head when it leads (as `pulse produce` writes it)."""
    if not value:
        return None
    if value.startswith(_HEAD):
        end = value.find(b",", len(_HEAD))
        try:
            return int(value[len(_HEAD):end])
        except ValueError:
            pass
    try:
        return int(orjson.loads(value)["event_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


_HEAD = b'{"event_id":'


def _key(settings: Settings, name: str, topic: str, partition: int) -> str:
    from pulse.sinks.base import SinkInstance
    from pulse.sinks.external.sink import sink_key

    return sink_key(settings.database, SinkInstance(name, topic, partition).name)
