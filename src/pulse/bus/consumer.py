"""A sink fed from Kafka (`pulse consume --sink NAME`).

One consumer group per destination (`<group_prefix>-<sink>`), so a stuck
external system never delays the Redis group. Exactness does not rely on
Kafka's offsets:

- each assigned partition gets its own sink instance, named
  `<sink>@<topic>/<partition>`, whose position the destination stores with
  its data (per partition: events of one partition arrive in source order,
  across partitions they interleave);
- a message at or below that position is skipped: a redelivery after a
  rebalance, or a duplicate written by a producer that restarted, changes
  nothing;
- a sink that gathers a trickle into one write (`Sink.linger_s`: BigQuery's
  spool file) gets the events of a partition held up to that long, up to
  `kafka.batch_max_messages`, as `pulse run` does: otherwise every poll of
  a few messages was a spool file of its own;
- offsets are committed only up to what the sink reported durable, with that
  position as the offset's metadata: a sink that keeps no position of its
  own (`Sink.holds_position` False: the external sink, whose outbox is the
  topic) is re-opened from it, so the copies a restarted producer published
  again are skipped by it too, never sent a second time with a new body;
- a replayed dead letter (header `pulse-replay`: an event the producer had
  to publish with a marker, published again in full) is at or below the
  sink's position: a sink that can correct an event it holds
  (`takes_replays`) gets it through `Sink.replay`, the others skip it.

Scale-out: run more instances with the same group; Kafka splits the
partitions (cooperative-sticky), and a partition that moves is re-opened on
its new owner from the position stored in the destination.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from pulse import health, metrics
from pulse.bus.codec import NULL_PARTITION, decode, header_position, is_broadcast_copy, is_for, is_replay
from pulse.config import Settings
from pulse.errors import TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import ZERO, Batch, Position
from pulse.runtime.driver import SinkDriver
from pulse.runtime.progress import PartitionProgress
from pulse.sinks.base import Sink, SinkInstance
from pulse.sinks.kafka.sink import client_config, ensure_topics

log = get_logger(__name__)

SinkFactory = Callable[[SinkInstance], Sink]  # the sink of one partition (`build_sink(kind, settings, instance)`)

#: How often librdkafka reports its statistics (the consumer lag metric comes from them).
STATS_INTERVAL_MS = 2_000


class _Partition:
    __slots__ = ("sink", "driver", "position", "progress", "held", "held_since", "held_offset")

    def __init__(self, sink: Sink, position: Position, driver: SinkDriver) -> None:
        self.sink = sink
        self.driver = driver  # the sink's writes: retries, batches, metrics (as `pulse run`'s workers)
        self.position = position  # highest position written to the sink
        # (position, next offset) of messages written but maybe not durable yet.
        self.progress = PartitionProgress()  # the offset committable, and the position durable up to it
        # Events held for the sink's linger_s (not written yet), since when, and the offset after them.
        self.held: list = []
        self.held_since = 0.0
        self.held_offset = 0

    def due(self, now: float, max_events: int) -> bool:
        """Whether the held events are to be written now: the sink's linger is over, or the batch is full."""
        linger = self.sink.linger_s
        return bool(self.held) and (linger <= 0 or len(self.held) >= max_events or now - self.held_since >= linger)


class SinkConsumer:
    def __init__(self, settings: Settings, sink_name: str, factory: SinkFactory,
                 group: str | None = None, instance: str | None = None) -> None:
        self.settings = settings
        self.cfg = settings.kafka
        self.sink_name = sink_name
        self.factory = factory
        self.group = group or self.cfg.group_for(sink_name)
        self.instance = instance
        self.stop_event = threading.Event()
        self.parts: dict[int, _Partition] = {}
        self.consumer = None
        self.consumed = 0
        self.written = 0
        self.skipped = 0
        self.ready = threading.Event()
        # For /readyz: when the loop last ran, and when it last had nothing waiting (all committed).
        self.polled_at = time.monotonic()
        self.progress_at = time.monotonic()
        self._rebuilder = None  # runtime.snapshot.WindowRebuilder, for a sink that keeps a window

    def stop(self) -> None:
        self.stop_event.set()

    # -- rebalance callbacks (run inside poll/consume) ----------------------------

    def _on_assign(self, consumer, partitions) -> None:
        for tp in partitions:
            instance = SinkInstance(self.sink_name, tp.topic, tp.partition)
            sink = self.factory(instance)
            driver = SinkDriver(sink, batch_max=self.cfg.batch_max_messages, stopping=self.stop_event.is_set,
                                metric=self.sink_name, retry_event="consume.retry")
            position = driver.call(sink.open)  # the driver's retry policy, as for every write
            if not sink.holds_position:
                position = max(position, driver.call(self._committed_position, consumer, tp.partition))
            self.parts[tp.partition] = _Partition(sink, position, driver)
            self._start_window_rebuilder(sink)
            log.info("consume.assigned", sink=instance.name, position=str(position))
        self.ready.set()

    def _committed_position(self, consumer, partition: int) -> Position:
        """The position committed with the group's offset of `partition` (ZERO: none yet, or an older Pulse)."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            (tp,) = consumer.committed([TopicPartition(self.cfg.topic, partition)], timeout=10)
        except KafkaException as exc:
            raise TransientError(f"reading the committed offset of {self.cfg.topic}/{partition}: {exc}") from exc
        if tp.error is not None:
            raise TransientError(f"reading the committed offset of {self.cfg.topic}/{partition}: {tp.error}")
        try:
            return Position.parse(tp.metadata) if tp.metadata else ZERO
        except ValueError:
            log.warning("consume.foreign_offset_metadata", partition=partition, metadata=tp.metadata[:80])
            return ZERO

    def _on_revoke(self, consumer, partitions) -> None:
        for tp in partitions:
            part = self.parts.pop(tp.partition, None)
            if part is None:
                continue
            _forget_lag(self.sink_name, tp.partition)
            self._write_held(part)
            self._flush(part)
            self._commit({tp.partition: part})
            try:
                part.sink.close()
            finally:
                log.info("consume.revoked", sink=part.sink.name)

    def _on_lost(self, consumer, partitions) -> None:
        # Another member may own them already: close without committing.
        for tp in partitions:
            part = self.parts.pop(tp.partition, None)
            if part is not None:
                _forget_lag(self.sink_name, tp.partition)
                part.sink.close()

    # -- main loop -------------------------------------------------------------------

    def _on_stats(self, text: str) -> None:
        """librdkafka's statistics (every `STATS_INTERVAL_MS`, from within consume): the lag per partition.

        `consumer_lag` is the partition's high watermark minus the group's committed offset, which
        Pulse moves only past what the sink made durable: the messages this sink has yet to hold.
        Non-blocking (no broker round trip of its own); -1 (not known yet) is skipped.
        """
        import json

        try:
            partitions = json.loads(text).get("topics", {}).get(self.cfg.topic, {}).get("partitions", {})
        except ValueError:
            return
        for p, info in partitions.items():
            lag = info.get("consumer_lag")
            if p != "-1" and int(p) in self.parts and isinstance(lag, int) and lag >= 0:
                metrics.CONSUMER_LAG.labels(self.sink_name, p).set(lag)

    def export_metrics(self) -> None:
        """The sinks' own gauges (backlog, its oldest age), summed over this consumer's partitions."""
        backlog, oldest = 0, 0.0
        reported = False
        for part in list(self.parts.values()):
            try:
                status = part.sink.status()
            except Exception:  # a status hook must never break consumption
                continue
            if isinstance(status.get("backlog"), int):
                reported = True
                backlog += status["backlog"]
                oldest = max(oldest, float(status.get("backlog_oldest_s") or 0.0))
        if reported:
            metrics.sink_gauges(self.sink_name, {"backlog": backlog, "backlog_oldest_s": oldest})

    def run(self) -> None:
        from confluent_kafka import Consumer

        metrics.declare_sink(self.sink_name)

        health.READINESS.register("consumer", self.readiness)
        if not self._wait_for_broker():
            health.READINESS.unregister("consumer")
            return
        conf = client_config(self.cfg, **{
            "group.id": self.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "client.id": f"pulse-consume-{self.sink_name}",
            "max.poll.interval.ms": 600_000,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": self._on_stats,
        })
        if self.instance:
            conf["group.instance.id"] = self.instance
        self.consumer = consumer = Consumer(conf)
        consumer.subscribe([self.cfg.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        last_flush = last_export = last_idle_flush = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self.polled_at = time.monotonic()
                # consume(n, timeout) waits for n messages or the whole timeout: take
                # what is there at once, and block only while there is nothing.
                msgs = consumer.consume(num_messages=self.cfg.batch_max_messages, timeout=0)
                if not msgs:
                    msgs = consumer.consume(num_messages=1, timeout=0.2)
                    if msgs:
                        msgs += consumer.consume(num_messages=self.cfg.batch_max_messages - 1, timeout=0)
                if msgs:
                    self._handle(msgs)
                now = time.monotonic()
                for part in self.parts.values():
                    if part.due(now, self.cfg.batch_max_messages):
                        self._write_held(part)
                if time.monotonic() - last_flush > 1.0 or not msgs:
                    # Idle, a sink is flushed even with nothing pending, at most every second:
                    # a windowed sink (the Redis board) moves its window with the clock only
                    # when it writes, as `pulse run`'s idle flush does.
                    idle = not msgs and time.monotonic() - last_idle_flush >= 1.0
                    for part in self.parts.values():
                        self._flush(part, idle=idle)
                    if idle:
                        last_idle_flush = time.monotonic()
                    self._commit(self.parts)
                    last_flush = time.monotonic()
                    if not any(part.progress.waiting or part.held
                               for part in self.parts.values()):
                        self.progress_at = last_flush  # everything written is durable and committed
                if time.monotonic() - last_export > 2.0:
                    self.export_metrics()
                    last_export = time.monotonic()
        finally:
            health.READINESS.unregister("consumer")
            for part in self.parts.values():
                try:
                    self._write_held(part)
                    self._flush(part)
                except TransientError as exc:
                    log.warning("consume.final_flush_failed", sink=part.sink.name, error=str(exc))
            self._commit(self.parts)
            consumer.close()  # leaves the group: its partitions move to the others now
            for part in list(self.parts.values()):
                part.sink.close()
            self.parts.clear()
            if self._rebuilder is not None:
                self._rebuilder.join(30)
            log.info("consume.stopped", sink=self.sink_name, consumed=self.consumed, written=self.written,
                     skipped=self.skipped)

    def _wait_for_broker(self) -> bool:
        """Create the topics, waiting for the broker as long as it takes (False: stopped meanwhile).

        A broker that is down when the consumer starts (the whole stack
        restarting, a broker rolled while a consumer is rescheduled) is the
        same transient fault as one that goes away later, which the loop
        waits out: retried with jittered exponential backoff up to 30 s.
        """
        delay = 0.5
        while True:
            try:
                ensure_topics(self.cfg, timeout=10.0)
                return True
            except TransientError as exc:
                sleep_s = random.uniform(delay / 2, delay)
                log.warning("consume.broker_unreachable", sink=self.sink_name, error=str(exc),
                            sleep_s=round(sleep_s, 2))
                metrics.ERRORS.labels(self.sink_name, "transient").inc()
                delay = min(delay * 2, 30.0)
                if self.stop_event.wait(sleep_s):
                    return False

    def readiness(self) -> tuple[bool, str]:
        """Ready: assigned by the group, the loop runs, and what it wrote was made durable and
        committed within runtime.ready_stall_s (a sink retrying for longer is not ready)."""
        if self.stop_event.is_set():
            return False, "stopping"
        if not self.ready.is_set():
            return False, f"waiting for a partition assignment in group {self.group}"
        limit = self.settings.runtime.ready_stall_s
        now = time.monotonic()
        if now - self.polled_at > limit:
            return False, f"consumer loop silent for {now - self.polled_at:.0f} s (a write or flush retrying?)"
        if now - self.progress_at > limit:
            return False, f"nothing committed for {now - self.progress_at:.0f} s while events wait"
        return True, f"assigned partitions {sorted(self.parts)} of {self.cfg.topic} in group {self.group}"

    def _start_window_rebuilder(self, sink: Sink) -> None:
        """A sink that keeps a window (Redis) rebuilds it for an initial snapshot of the producer's slot.

        Started once, with the first partition's sink (rebuild_window uses its
        configuration only, so a later revocation of that partition is harmless).
        """
        from pulse.runtime.snapshot import WindowRebuilder

        if self._rebuilder is not None or sink.snapshot_mode != "window":
            return
        self._rebuilder = WindowRebuilder(self.settings.database, {self.sink_name: sink}, self.stop_event)
        self._rebuilder.start()

    def _handle(self, msgs) -> None:
        by_partition: dict[int, list] = {}
        for m in msgs:
            if m.error():
                err = m.error()
                if err.fatal():
                    raise TerminalError(f"Kafka consumer error: {err}", hint="check the broker and the group")
                log.warning("consume.message_error", error=str(err))
                continue
            by_partition.setdefault(m.partition(), []).append(m)
        for p, items in by_partition.items():
            part = self.parts.get(p)
            if part is None:
                continue  # revoked meanwhile; its new owner resumes from the stored position
            self.consumed += len(items)
            events = []
            replays = []
            for m in items:
                pos = header_position(m.headers())
                if pos is None:
                    raise TerminalError(f"message at {m.topic()}/{p}@{m.offset()} has no position header",
                                        hint="only `pulse produce` may write to this topic")
                headers = m.headers()
                if is_replay(headers):
                    if part.sink.takes_replays and is_for(headers, self.sink_name):
                        replays.append(decode(m.value()))
                    else:
                        self.skipped += 1
                    continue
                if pos <= part.position or (
                        p != NULL_PARTITION and not part.sink.takes_broadcast_copies and is_broadcast_copy(headers)) or (
                        not is_for(headers, self.sink_name)):
                    self.skipped += 1
                    continue
                events.append(decode(m.value()))
                part.position = pos
            next_offset = items[-1].offset() + 1
            if replays:
                part.driver.replay(Batch(tuple(replays)))
                log.info("consume.replayed", sink=part.sink.name, events=len(replays))
            if events:
                if part.held and part.held[0].backfill != events[0].backfill:
                    self._write_held(part)  # one batch is live or backfill, never both
                if not part.held:
                    part.held_since = time.monotonic()
                part.held.extend(events)
                part.held_offset = next_offset
                if part.due(time.monotonic(), self.cfg.batch_max_messages):
                    self._write_held(part)
            elif not part.held:
                part.progress.already_held(part.position, next_offset)  # everything here was in the sink

    def _write_held(self, part: _Partition) -> None:
        """Write the events held for `part`'s sink; their offsets wait in `pending` until durable."""
        if not part.held:
            return
        events, part.held = part.held, []
        durable = part.driver.write_events(events)
        self.written += len(events)
        part.progress.written(part.position, part.held_offset)  # the last held event's
        part.progress.durable(durable)

    def _flush(self, part: _Partition, idle: bool = False) -> None:
        if part.progress.pending or idle:
            part.progress.durable(part.driver.flush())

    def _commit(self, parts: dict[int, _Partition]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(self.cfg.topic, p, c[0], metadata=str(c[1] or ZERO))
                   for p, part in parts.items() if (c := part.progress.to_commit()) is not None]
        if not offsets or self.consumer is None:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            self.progress_at = time.monotonic()
        except KafkaException as exc:
            # Not fatal: the positions in the destination keep the sink exact.
            log.warning("consume.commit_failed", error=str(exc))
        for part in parts.values():
            part.progress.committed()


def _forget_lag(sink: str, partition: int) -> None:
    """A partition that moved to another member: its lag is that member's to report."""
    try:
        metrics.CONSUMER_LAG.remove(sink, str(partition))
    except KeyError:
        pass
