"""The pipeline's dispatcher (runtime/pipeline.py) without a database: what each change does.

The workers are built but not started, so their queues show exactly what was
handed to each sink; the tracker shows what the slot may be acknowledged to.
"""

import threading
from datetime import datetime, timezone

import pytest

from pulse.config import Settings
from pulse.model import ZERO, Change, Position
from pulse.runtime.pipeline import Pipeline, SinkWorker, old_values_warning
from pulse.runtime.progress import AckTracker
from pulse.sinks.memory import MemorySink
from pulse.source.changes import TxnEnd
from pulse.transform.rows import RowChunk

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
CID = "11111111-1111-1111-1111-111111111111"


def _pipeline(start: dict[str, Position]) -> Pipeline:
    sinks = [MemorySink(name) for name in start]
    pipeline = Pipeline(Settings(), sinks, clock=lambda: NOW)
    pipeline.tracker = AckTracker(dict(start))
    for sink in sinks:
        pipeline.workers[sink.name] = SinkWorker(sink, start[sink.name], pipeline.tracker, pipeline.settings,
                                                 on_terminal=lambda *_: None)
    return pipeline


def _insert(event_id: int, pos: Position, content_id: str = CID) -> Change:
    row = {"id": event_id, "content_id": content_id, "user_id": "u", "event_type": "play", "event_ts": NOW,
           "duration_ms": 60_000, "device": "ios", "raw_payload": None}
    return Change("engagement_events", "insert", row, None, pos, NOW)


def _content(op: str, slug: str, content_type: str, length_seconds: int, pos: Position, title: str = "T") -> Change:
    row = {"id": CID, "slug": slug, "title": title, "content_type": content_type, "length_seconds": length_seconds}
    return Change("content", op, row, None, pos, NOW)


def _queued(pipeline: Pipeline, name: str) -> list[int]:
    worker = pipeline.workers[name]
    return [e.event_id for chunk in worker.queue.get_many(1000, timeout=0) for e in chunk.events()]


def test_a_content_change_updates_the_cache_before_the_events_after_it_are_enriched():
    pipeline = _pipeline({"a": ZERO})
    pipeline._handle(_content("insert", "s", "video", 120, Position(10, 0)))
    pipeline._handle(_insert(1, Position(10, 1)))
    pipeline._handle(TxnEnd(10, 11, NOW))
    (chunk,) = pipeline.workers["a"].queue.get_many(10, timeout=0)
    (event,) = chunk.events()
    assert (event.content_slug, event.content_type, event.engagement_pct) == ("s", "video", 0.5)


def test_events_handed_on_before_a_content_change_keep_the_content_committed_before_them():
    # The row path enriches on the sink threads (RowChunk), from the live cache: a content change
    # later in the stream must not reach events already queued and not yet built.
    pipeline = _pipeline({"a": ZERO})
    pipeline._handle(_content("insert", "old", "video", 120, Position(10, 0)))
    pipeline._handle(_insert(1, Position(10, 1)))
    pipeline._handle(TxnEnd(10, 11, NOW))
    pipeline._handle(_content("update", "new", "audio", 60, Position(20, 1), title="T2"))
    pipeline._handle(_insert(2, Position(20, 2)))
    pipeline._handle(TxnEnd(20, 21, NOW))
    first, second = pipeline.workers["a"].queue.get_many(10, timeout=0)  # built only now, both
    assert [(e.event_id, e.content_slug, e.engagement_pct) for e in first.events()] == [(1, "old", 0.5)]
    assert [(e.event_id, e.content_slug, e.engagement_pct) for e in second.events()] == [(2, "new", 1.0)]


def test_every_queue_item_is_a_chunk_and_the_dispatcher_enriches_nothing_itself():
    pipeline = _pipeline({"a": ZERO, "b": ZERO})
    for i in range(1, 4):
        pipeline._handle(_insert(i, Position(10, i)))
    pipeline._handle(TxnEnd(10, 11, NOW))
    assert len(pipeline.workers["a"].queue) == 3  # one chunk, counted as its events (queue_max_events, status)
    (a,) = pipeline.workers["a"].queue.get_many(10, timeout=0)
    (b,) = pipeline.workers["b"].queue.get_many(10, timeout=0)
    assert a is b and isinstance(a, RowChunk) and not a.built  # one shared chunk, not enriched yet
    assert a.events() is b.events() and [e.event_id for e in a.events()] == [1, 2, 3]


def test_a_change_of_a_table_nobody_routes_is_an_error_not_an_event():
    pipeline = _pipeline({"a": ZERO})
    with pytest.raises(ValueError, match="'other'"):
        pipeline._handle(Change("other", "insert", {"id": 1}, None, Position(10, 1), NOW))


def test_events_reach_every_sink_minus_what_each_already_holds_and_the_slot_waits_for_all():
    # "b" restarted with the first transaction durable (its stored position): it gets only the second.
    pipeline = _pipeline({"a": ZERO, "b": Position(20, 2)})
    for lsn, ids in ((20, (1, 2)), (30, (3, 4))):
        for seq, i in enumerate(ids, start=1):
            pipeline._handle(_insert(i, Position(lsn, seq)))
        pipeline._handle(TxnEnd(lsn, lsn + 5, NOW))
    assert _queued(pipeline, "a") == [1, 2, 3, 4]
    assert _queued(pipeline, "b") == [3, 4]
    tracker = pipeline.tracker
    assert tracker.ackable() == 0  # nothing durable in "a" yet
    tracker.durable("a", Position(20, 2))
    assert tracker.ackable() == 25  # the first transaction: durable in both
    tracker.durable("a", Position(30, 2))
    assert tracker.ackable() == 25 and tracker.laggards() == ["b"]
    tracker.durable("b", Position(30, 2))
    assert tracker.ackable() == 35


def test_a_content_change_reaches_relaying_sinks_only():
    class Relay(MemorySink):
        relays = True

        def __init__(self, name):
            super().__init__(name)
            self.content = []

        def publish_content(self, change):
            self.content.append(change.new["id"])

    relay, plain = Relay("kafka-like"), MemorySink("plain")
    pipeline = Pipeline(Settings(), [relay, plain], clock=lambda: NOW)
    pipeline._handle(_content("insert", "s", "video", 60, Position(5, 0)))
    assert relay.content == [CID]


def test_a_sink_that_needs_old_values_is_warned_about_a_table_that_does_not_send_them():
    class Board(MemorySink):
        needs_old_values = True

    board, plain = Board("board"), MemorySink("plain")
    warning = old_values_warning("default", [board, plain], "public.engagement_events")
    assert warning is not None and "board" in warning and "plain" not in warning
    assert "ALTER TABLE public.engagement_events REPLICA IDENTITY FULL" in warning
    assert old_values_warning("full", [board], "t") is None  # the old values come
    assert old_values_warning("default", [plain], "t") is None  # nobody needs them
    assert old_values_warning(None, [board], "t") is None  # no table (the start fails elsewhere, clearly)


def test_a_sink_that_holds_nothing_durably_does_not_count_for_the_slot_beside_a_durable_one():
    class Durable(MemorySink):
        durable = True

    sinks = MemorySink("memory"), Durable("durable")
    volatile = [s.name for s in sinks if not s.durable]  # as Pipeline.run derives it
    assert volatile == ["memory"]
    tracker = AckTracker({"memory": ZERO, "durable": ZERO}, volatile=volatile)
    tracker.dispatched(Position(10, 1))
    tracker.close_txn(15, 0.0)
    tracker.durable("durable", Position(10, 1))
    assert tracker.ackable() == 15 and tracker.laggards() == []  # memory wrote nothing: not waited for
    tracker.dispatched(Position(20, 1))
    tracker.close_txn(25, 0.0)
    tracker.durable("memory", Position(20, 1))
    assert tracker.ackable() == 15 and tracker.laggards() == ["durable"]  # nor does it move the slot
    # Named alone (never a default), volatile sinks count: the user asked for them.
    alone = AckTracker({"memory": ZERO}, volatile=["memory"])
    alone.dispatched(Position(10, 1))
    alone.close_txn(15, 0.0)
    assert alone.ackable() == 0
    alone.durable("memory", Position(10, 1))
    assert alone.ackable() == 15


def test_sinks_open_side_by_side_and_one_that_fails_for_good_stops_the_others_retrying():
    from pulse.errors import TerminalError, TransientError

    started = threading.Barrier(2, timeout=10)  # both opens run at once, or this times out

    class Slow(MemorySink):
        def open(self):
            started.wait()
            return Position(7, 1)

    pipeline = Pipeline(Settings(), [Slow("a"), Slow("b")], clock=lambda: NOW)
    assert pipeline._open_sinks() == {"a": Position(7, 1), "b": Position(7, 1)}

    class Down(MemorySink):
        opens = 0

        def open(self):
            Down.opens += 1
            raise TransientError("destination down")

    class Refused(MemorySink):
        def open(self):
            raise TerminalError("bad credentials", hint="fix them")

    pipeline = Pipeline(Settings(), [Down("down"), Refused("refused")], clock=lambda: NOW)
    with pytest.raises(TerminalError, match="bad credentials"):
        pipeline._open_sinks()  # returns: "down" stopped retrying once "refused" failed
    assert Down.opens >= 1
