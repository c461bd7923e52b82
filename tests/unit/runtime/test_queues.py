"""Unit tests for pulse.runtime.queues.ByteQueue: bounds, blocking and release.

Cross-thread tests never sleep to "make sure" a thread is blocked: the
queue's condition is instrumented so the test knows when the other thread
is waiting inside it, and every wait has a timeout so a bug fails instead
of hanging.
"""

from __future__ import annotations

import threading

import pytest

from pulse.runtime.queues import ByteQueue

WAIT = 10.0  # generous upper bound for anything that should happen "now"


def instrument_waits(q: ByteQueue) -> threading.Event:
    """An Event set each time a thread starts waiting on the queue's condition."""
    waiting = threading.Event()
    cond = q._cond
    original = cond.wait

    def wait(timeout=None):
        waiting.set()
        return original(timeout)

    cond.wait = wait  # type: ignore[method-assign]
    return waiting


class Runner(threading.Thread):
    """Runs `fn` in a thread and keeps its result."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.fn()
        finally:
            self.done.set()


def test_put_and_get_track_bytes_and_items() -> None:
    q: ByteQueue[str] = ByteQueue(max_bytes=1000, max_items=10)
    assert q.put("a", 100)
    assert q.put("b", 250)
    assert len(q) == 2
    assert q.bytes == 350
    assert q.get_many(1, timeout=0) == ["a"]
    assert (len(q), q.bytes) == (1, 250)
    assert q.get_many(10, timeout=0) == ["b"]
    assert (len(q), q.bytes) == (0, 0)


def test_bounded_by_items() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=10**9, max_items=3)
    for i in range(3):
        assert q.put(i, 1, timeout=0)
    assert q.put(3, 1, timeout=0) is False
    assert q.put(3, 1, timeout=0.01) is False
    assert len(q) == 3
    q.get_many(1, timeout=0)
    assert q.put(3, 1, timeout=0)
    assert q.get_many(10, timeout=0) == [1, 2, 3]


def test_bounded_by_bytes() -> None:
    q: ByteQueue[str] = ByteQueue(max_bytes=100, max_items=1000)
    assert q.put("a", 60, timeout=0)
    assert q.put("b", 40, timeout=0)  # exactly full is allowed
    assert q.bytes == 100
    assert q.put("c", 1, timeout=0) is False
    assert q.put("c", 1, timeout=0.01) is False
    assert (len(q), q.bytes) == (2, 100)


def test_bytes_boundary_after_get() -> None:
    q: ByteQueue[str] = ByteQueue(max_bytes=100, max_items=1000)
    q.put("a", 60, timeout=0)
    q.put("b", 40, timeout=0)
    q.get_many(1, timeout=0)  # 40 left
    assert q.put("c", 61, timeout=0) is False
    assert q.put("c", 60, timeout=0) is True
    assert q.bytes == 100


def test_item_larger_than_max_bytes_is_admitted_into_an_empty_queue() -> None:
    q: ByteQueue[str] = ByteQueue(max_bytes=100, max_items=10)
    assert q.put("huge", 10_000, timeout=0)
    assert q.bytes == 10_000
    assert q.put("small", 1, timeout=0) is False  # nothing else until it is taken
    assert q.get_many(10, timeout=0) == ["huge"]
    assert q.put("huge again", 10_000, timeout=0)


def test_item_larger_than_max_bytes_waits_for_a_non_empty_queue() -> None:
    q: ByteQueue[str] = ByteQueue(max_bytes=100, max_items=10)
    q.put("small", 1, timeout=0)
    assert q.put("huge", 10_000, timeout=0) is False


def test_get_many_keeps_fifo_order_and_limit() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=10**6, max_items=100)
    for i in range(10):
        q.put(i, 10)
    assert q.get_many(3, timeout=0) == [0, 1, 2]
    assert q.get_many(4, timeout=0) == [3, 4, 5, 6]
    assert q.bytes == 30
    assert q.get_many(100, timeout=0) == [7, 8, 9]
    assert q.get_many(100, timeout=0) == []


def test_get_many_on_an_empty_queue_times_out_empty() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=100, max_items=10)
    assert q.get_many(5, timeout=0) == []
    assert q.get_many(5, timeout=0.01) == []


def test_blocked_put_is_released_by_a_get_from_another_thread() -> None:
    q: ByteQueue[str] = ByteQueue(max_bytes=100, max_items=10)
    q.put("first", 100)
    waiting = instrument_waits(q)
    putter = Runner(lambda: q.put("second", 50, timeout=WAIT))
    putter.start()
    assert waiting.wait(WAIT), "the put never blocked"
    assert not putter.done.is_set()
    assert q.get_many(10, timeout=0) == ["first"]
    assert putter.done.wait(WAIT), "the get did not release the blocked put"
    assert putter.result is True
    assert q.get_many(10, timeout=0) == ["second"]
    putter.join(WAIT)


def test_blocked_put_without_timeout_is_released_by_a_get() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=10**6, max_items=1)
    q.put(1, 1)
    waiting = instrument_waits(q)
    putter = Runner(lambda: q.put(2, 1))
    putter.start()
    assert waiting.wait(WAIT)
    assert q.get_many(1, timeout=0) == [1]
    assert putter.done.wait(WAIT)
    assert putter.result is True
    assert len(q) == 1


def test_waiting_get_is_released_by_a_put() -> None:
    q: ByteQueue[str] = ByteQueue(max_bytes=100, max_items=10)
    waiting = instrument_waits(q)
    getter = Runner(lambda: q.get_many(10, timeout=WAIT))
    getter.start()
    assert waiting.wait(WAIT)
    assert q.put("x", 1)
    assert getter.done.wait(WAIT)
    assert getter.result == ["x"]


def test_close_releases_a_waiting_get() -> None:
    q: ByteQueue[str] = ByteQueue(max_bytes=100, max_items=10)
    waiting = instrument_waits(q)
    getter = Runner(lambda: q.get_many(10, timeout=3600))
    getter.start()
    assert waiting.wait(WAIT)
    assert not getter.done.is_set()
    q.close()
    assert getter.done.wait(WAIT), "close() did not release the waiting get"
    assert getter.result == []
    assert q.closed


def test_a_closed_queue_still_hands_out_what_it_holds() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=100, max_items=10)
    q.put(1, 1)
    q.put(2, 1)
    q.close()
    assert q.get_many(1, timeout=WAIT) == [1]
    assert q.get_many(10, timeout=WAIT) == [2]
    assert q.get_many(10, timeout=3600) == []  # returns at once: closed and empty


@pytest.mark.parametrize("producers", [1, 4])
def test_no_item_lost_or_duplicated_under_backpressure(producers: int) -> None:
    q: ByteQueue[tuple[int, int]] = ByteQueue(max_bytes=50, max_items=7)
    per_producer = 500

    def produce(p: int):
        for i in range(per_producer):
            assert q.put((p, i), 5, timeout=WAIT)

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(producers)]
    for t in threads:
        t.start()
    got: list[tuple[int, int]] = []
    while len(got) < producers * per_producer:
        batch = q.get_many(3, timeout=WAIT)
        assert batch, "consumer starved"
        assert len(batch) <= 3
        assert q.bytes <= 50 and len(q) <= 7
        got.extend(batch)
    for t in threads:
        t.join(WAIT)
    assert sorted(got) == [(p, i) for p in range(producers) for i in range(per_producer)]
    for p in range(producers):  # each producer's items keep their order
        mine = [i for (pp, i) in got if pp == p]
        assert mine == list(range(per_producer))
    assert (len(q), q.bytes) == (0, 0)


# --- put_many ----------------------------------------------------------------------------


def test_put_many_adds_a_chunk_in_order() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=1000, max_items=100)
    assert q.put_many([1, 2, 3], 30, timeout=0)
    assert (len(q), q.bytes) == (3, 30)
    assert q.put(4, 5, timeout=0)
    assert q.get_many(2, timeout=0) == [1, 2]
    assert q.bytes == 15  # 10 bytes per chunk item, then the single one
    assert q.get_many(10, timeout=0) == [3, 4]
    assert (len(q), q.bytes) == (0, 0)


def test_put_many_waits_for_room_in_bytes() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=100, max_items=100)
    q.put(0, 80)
    assert q.put_many([1, 2], 40, timeout=0) is False
    assert q.put_many([1, 2], 40, timeout=0.01) is False
    assert len(q) == 1
    q.get_many(1, timeout=0)
    assert q.put_many([1, 2], 40, timeout=0)


def test_put_many_chunk_larger_than_max_bytes_is_admitted_into_an_empty_queue() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=100, max_items=100)
    assert q.put_many(list(range(10)), 5000, timeout=0)
    assert q.bytes == 5000
    assert q.put(99, 1, timeout=0) is False


def test_put_many_bytes_return_to_zero_when_size_does_not_divide() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=1000, max_items=100)
    assert q.put_many([1, 2, 3], 10, timeout=0)
    q.get_many(1, timeout=0)
    q.get_many(5, timeout=0)
    assert q.bytes == 0  # no drift below or above zero whatever the rounding


def test_blocked_put_many_is_released_by_a_get() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=100, max_items=100)
    q.put(0, 100)
    waiting = instrument_waits(q)
    putter = Runner(lambda: q.put_many([1, 2, 3], 60, timeout=WAIT))
    putter.start()
    assert waiting.wait(WAIT)
    assert q.get_many(1, timeout=0) == [0]
    assert putter.done.wait(WAIT)
    assert putter.result is True
    assert q.get_many(10, timeout=0) == [1, 2, 3]


def test_put_many_respects_max_items_on_a_non_empty_queue() -> None:
    q: ByteQueue[int] = ByteQueue(max_bytes=10**9, max_items=4)
    q.put(0, 1)
    q.put_many([1, 2, 3, 4, 5, 6, 7, 8], 8, timeout=0)
    assert len(q) <= 4


def test_items_that_weigh_more_than_one_count_toward_the_bound_and_the_length() -> None:
    # A sink's queue holds chunks and counts their events (runtime.queue_max_events, pulse status).
    q: ByteQueue[str] = ByteQueue(max_bytes=10_000, max_items=100)
    assert q.put_many(["chunk of 60"], 10, count=60)
    assert len(q) == 60
    assert not q.put_many(["chunk of 50"], 10, timeout=0, count=50)  # 110 events would pass the bound
    assert q.put_many(["chunk of 40"], 10, timeout=0, count=40)
    assert len(q) == 100
    assert q.get_many(1, timeout=0) == ["chunk of 60"] and len(q) == 40  # get_many counts items
    q2: ByteQueue[str] = ByteQueue(max_bytes=10_000, max_items=5)
    assert q2.put_many(["huge"], 10, count=50)  # more than the bound, admitted into an empty queue
    assert len(q2) == 50 and q2.get_many(1, timeout=0) == ["huge"] and len(q2) == 0
    assert q2.put_many(["a", "b", "c"], 30, count=7) and len(q2) == 7  # spread over the items, none lost
    assert q2.get_many(2, timeout=0) == ["a", "b"] and len(q2) == 2  # (3 + 2 taken, 2 left)
    assert q2.get_many(5, timeout=0) == ["c"] and len(q2) == 0
