"""A sink's `linger_s`: the driver gathers a trickle of events into one write."""

from __future__ import annotations

import threading
import time

from pulse.config import Settings
from pulse.model import ZERO, Position
from pulse.runtime.pipeline import SinkWorker
from pulse.runtime.progress import AckTracker
from pulse.sinks.memory import MemorySink
from tests.factories import chunk_of, make_event


def _worker(sink: MemorySink) -> SinkWorker:
    return SinkWorker(sink, sink.open(), AckTracker({sink.name: ZERO}), Settings(),
                      on_terminal=lambda _name, exc: None)


def _trickle(worker: SinkWorker, n: int, gap_s: float) -> threading.Thread:
    """One event every `gap_s` (a producer's pace, as transactions of one event arrive)."""
    def put() -> None:
        for i in range(1, n + 1):
            chunk = chunk_of([make_event(i, Position(100 + i, 0))])
            assert worker.queue.put_many([chunk], chunk.size_hint(), timeout=5)
            time.sleep(gap_s)
    thread = threading.Thread(target=put, daemon=True)
    thread.start()
    return thread


def _written(sink: MemorySink, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while sink.count < n:
        assert time.monotonic() < deadline, f"{sink.count} of {n} written"
        threading.Event().wait(0.01)


def test_without_linger_each_arrival_is_a_write_of_its_own() -> None:
    sink = MemorySink()
    worker = _worker(sink)
    worker.start()
    _trickle(worker, 10, 0.05).join()
    _written(sink, 10)
    worker.draining.set()
    worker.join(10)
    assert sink.batches > 2  # (a loaded machine may hand two at once)


def test_a_lingering_sink_gets_the_trickle_in_few_writes_in_order() -> None:
    sink = MemorySink()
    sink.linger_s = 5.0  # longer than the trickle: the batch closes when it is full
    worker = _worker(sink)
    worker.batch_max = 10
    worker.start()
    _trickle(worker, 20, 0.02).join()
    _written(sink, 20)
    assert sink.batches == 2
    assert [e.event_id for e in sink.events] == list(range(1, 21))
    worker.draining.set()
    worker.join(10)


def test_draining_writes_what_a_lingering_sink_holds_at_once() -> None:
    sink = MemorySink()
    sink.linger_s = 60.0
    worker = _worker(sink)
    worker.start()
    _trickle(worker, 3, 0.0).join()
    started = time.monotonic()
    worker.draining.set()
    worker.join(10)
    assert not worker.is_alive() and sink.count == 3
    assert time.monotonic() - started < 5  # not the minute of linger
