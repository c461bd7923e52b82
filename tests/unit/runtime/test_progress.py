"""Unit tests for pulse.runtime.progress: the acknowledgement rule, the idle rule, and partition offsets.

The dispatcher calls `dispatched(pos)` for every event in position order and
`close_txn(end_lsn, ...)` after each transaction; sink workers call
`durable(sink, pos)`; `ackable()` is the LSN the slot may be acknowledged to.
"""

from __future__ import annotations

import threading

from pulse.model import ZERO, Position
from pulse.runtime.progress import AckTracker

T0 = 1_722_500_000.0


def txn(tracker: AckTracker, commit_lsn: int, n: int, end_lsn: int | None = None, commit_ts: float = T0) -> Position:
    """Dispatch `n` events of a transaction committed at `commit_lsn`, close it; return its last position."""
    for seq in range(1, n + 1):
        tracker.dispatched(Position(commit_lsn, seq))
    tracker.close_txn(end_lsn if end_lsn is not None else commit_lsn + 8, commit_ts)
    return Position(commit_lsn, n)


def test_nothing_to_acknowledge_at_start() -> None:
    tracker = AckTracker({"a": ZERO, "b": ZERO})
    assert tracker.ackable() == 0
    assert tracker.pending() == 0
    assert tracker.idle()
    assert tracker.laggards() == []
    assert tracker.oldest_pending_commit_ts() is None


def test_ack_waits_for_every_sink() -> None:
    tracker = AckTracker({"a": ZERO, "b": ZERO})
    last = txn(tracker, 100, 3, end_lsn=108)
    assert tracker.ackable() == 0
    tracker.durable("a", last)
    assert tracker.ackable() == 0  # b has nothing yet
    assert tracker.laggards() == ["b"]
    tracker.durable("b", Position(100, 2))
    assert tracker.ackable() == 0  # b holds only part of the transaction
    assert tracker.laggards() == ["b"]
    tracker.durable("b", last)
    assert tracker.ackable() == 108
    assert tracker.pending() == 0
    assert tracker.laggards() == []


def test_ack_stops_at_the_first_incomplete_transaction() -> None:
    tracker = AckTracker({"a": ZERO, "b": ZERO})
    first = txn(tracker, 100, 2, end_lsn=108)
    second = txn(tracker, 200, 2, end_lsn=208)
    third = txn(tracker, 300, 1, end_lsn=308)
    tracker.durable("a", third)
    tracker.durable("b", Position(200, 1))
    assert tracker.ackable() == 108
    assert tracker.pending() == 2
    tracker.durable("b", second)
    assert tracker.ackable() == 208
    tracker.durable("b", third)
    assert tracker.ackable() == 308
    assert first < second < third


def test_a_sink_durable_beyond_a_transaction_completes_it() -> None:
    tracker = AckTracker({"a": ZERO})
    txn(tracker, 100, 2, end_lsn=108)
    tracker.durable("a", Position(150, 1))  # positions compare, not equality
    assert tracker.ackable() == 108


def test_empty_transactions_complete_once_everything_before_them_has() -> None:
    tracker = AckTracker({"a": ZERO, "b": ZERO})
    txn(tracker, 50, 0, end_lsn=58)  # nothing dispatched yet: complete at once
    assert tracker.ackable() == 58
    last = txn(tracker, 100, 2, end_lsn=108)
    txn(tracker, 120, 0, end_lsn=128)  # content change only
    txn(tracker, 140, 0, end_lsn=148)  # heartbeat
    assert tracker.ackable() == 58
    assert tracker.pending() == 3
    tracker.durable("a", last)
    assert tracker.ackable() == 58
    tracker.durable("b", last)
    assert tracker.ackable() == 148
    assert tracker.pending() == 0


def test_empty_transaction_after_an_acknowledged_one_completes_immediately() -> None:
    tracker = AckTracker({"a": ZERO})
    last = txn(tracker, 100, 1, end_lsn=108)
    tracker.durable("a", last)
    assert tracker.ackable() == 108
    txn(tracker, 200, 0, end_lsn=208)
    assert tracker.ackable() == 208


def test_stored_start_position_ahead_of_the_replay_counts_as_having_those_events() -> None:
    # After a restart the slot replays from the slowest sink; "a" already
    # stored up to (300, 1) and the dispatcher skips those events for it.
    tracker = AckTracker({"a": Position(300, 1), "b": Position(100, 2)})
    txn(tracker, 100, 2, end_lsn=108)  # b already had all of it too
    assert tracker.ackable() == 108
    last = txn(tracker, 200, 3, end_lsn=208)
    assert tracker.ackable() == 108
    assert tracker.laggards() == ["b"]
    tracker.durable("b", last)
    assert tracker.ackable() == 208
    third = txn(tracker, 300, 1, end_lsn=308)
    assert tracker.ackable() == 208
    tracker.durable("b", third)
    assert tracker.ackable() == 308


def test_a_lower_durable_report_does_not_move_a_position_back() -> None:
    tracker = AckTracker({"a": ZERO, "b": ZERO})
    last = txn(tracker, 100, 3, end_lsn=108)
    tracker.durable("a", last)
    tracker.durable("a", Position(100, 1))
    tracker.durable("a", ZERO)
    assert tracker.positions()["a"] == last
    tracker.durable("b", last)
    assert tracker.ackable() == 108


def test_acknowledged_lsn_never_moves_back() -> None:
    tracker = AckTracker({"a": ZERO})
    last = txn(tracker, 200, 1, end_lsn=208)
    tracker.durable("a", last)
    assert tracker.ackable() == 208
    # A reconnect replays an older transaction: it completes, the ack stays.
    tracker.close_txn(108, T0)
    assert tracker.ackable() == 208


def test_positions_is_a_snapshot() -> None:
    tracker = AckTracker({"a": ZERO})
    snap = tracker.positions()
    snap["a"] = Position(999, 9)
    assert tracker.positions() == {"a": ZERO}
    tracker.durable("a", Position(1, 1))
    assert snap["a"] == Position(999, 9)
    assert tracker.positions() == {"a": Position(1, 1)}


def test_the_caller_dict_is_not_shared() -> None:
    start = {"a": ZERO}
    tracker = AckTracker(start)
    tracker.durable("a", Position(5, 1))
    assert start == {"a": ZERO}


def test_laggards_names_every_sink_behind_the_oldest_pending_transaction() -> None:
    tracker = AckTracker({"redis": ZERO, "bigquery": ZERO, "external": ZERO})
    last = txn(tracker, 100, 2)
    assert tracker.laggards() == ["bigquery", "external", "redis"]  # sorted
    tracker.durable("redis", last)
    tracker.durable("bigquery", Position(100, 1))
    assert tracker.laggards() == ["bigquery", "external"]
    tracker.durable("bigquery", last)
    tracker.durable("external", last)
    assert tracker.laggards() == []  # complete, even before ackable() pops it
    tracker.ackable()
    assert tracker.laggards() == []


def test_idle() -> None:
    tracker = AckTracker({"a": ZERO, "b": ZERO})
    tracker.dispatched(Position(100, 1))
    assert not tracker.idle()  # dispatched, not yet durable, txn still open
    tracker.close_txn(108, T0)
    tracker.durable("a", Position(100, 1))
    assert not tracker.idle()
    tracker.durable("b", Position(100, 1))
    assert not tracker.idle()  # durable everywhere, but the txn is not acknowledged yet
    assert tracker.ackable() == 108
    assert tracker.idle()


def test_idle_with_an_open_empty_transaction() -> None:
    tracker = AckTracker({"a": ZERO})
    tracker.close_txn(58, T0)
    assert not tracker.idle()
    tracker.ackable()
    assert tracker.idle()


def test_pending_and_oldest_commit_ts() -> None:
    tracker = AckTracker({"a": ZERO})
    first = txn(tracker, 100, 1, commit_ts=T0)
    txn(tracker, 200, 1, commit_ts=T0 + 5)
    assert tracker.pending() == 2
    assert tracker.oldest_pending_commit_ts() == T0
    tracker.durable("a", first)
    tracker.ackable()
    assert tracker.pending() == 1
    assert tracker.oldest_pending_commit_ts() == T0 + 5


def test_acked_at_moves_when_a_transaction_completes() -> None:
    tracker = AckTracker({"a": ZERO})
    start = tracker.acked_at
    last = txn(tracker, 100, 1)
    tracker.ackable()
    assert tracker.acked_at == start  # nothing completed
    tracker.durable("a", last)
    tracker.ackable()
    assert tracker.acked_at >= start
    assert tracker.acked_lsn == 108


def test_without_sinks_transactions_complete_when_dispatched() -> None:
    tracker = AckTracker({})
    txn(tracker, 100, 2, end_lsn=108)
    assert tracker.ackable() == 108
    assert tracker.idle()
    assert tracker.laggards() == []


def test_dispatched_only_moves_forward() -> None:
    tracker = AckTracker({"a": ZERO})
    tracker.dispatched(Position(100, 2))
    tracker.dispatched(Position(100, 1))  # a replayed, lower position
    tracker.close_txn(108, T0)
    tracker.durable("a", Position(100, 1))
    assert tracker.ackable() == 0
    tracker.durable("a", Position(100, 2))
    assert tracker.ackable() == 108


def test_concurrent_durable_reports() -> None:
    tracker = AckTracker({f"s{i}": ZERO for i in range(4)})
    n = 500
    for lsn in range(1, n + 1):
        txn(tracker, lsn * 100, 1, end_lsn=lsn * 100 + 8)
    barrier = threading.Barrier(4)

    def report(name: str) -> None:
        barrier.wait(timeout=10)
        for lsn in range(1, n + 1):
            tracker.durable(name, Position(lsn * 100, 1))
            tracker.ackable()

    threads = [threading.Thread(target=report, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert tracker.ackable() == n * 100 + 8
    assert tracker.pending() == 0
    assert set(tracker.positions().values()) == {Position(n * 100, 1)}


def test_sink_lag_seconds_is_the_age_of_the_oldest_commit_a_sink_lacks() -> None:
    tracker = AckTracker({"fast": ZERO, "slow": ZERO})
    first = txn(tracker, 100, 2, commit_ts=T0)
    second = txn(tracker, 200, 3, commit_ts=T0 + 10)
    assert tracker.sink_lag_seconds("slow", T0 + 30) == 30.0  # lacks both: the first one's age
    tracker.durable("fast", second)
    tracker.durable("slow", first)
    assert tracker.sink_lag_seconds("fast", T0 + 30) == 0.0  # holds everything
    assert tracker.sink_lag_seconds("slow", T0 + 30) == 20.0  # lacks the second only
    tracker.durable("slow", second)
    assert tracker.sink_lag_seconds("slow", T0 + 30) == 0.0


def test_durable_in_needs_every_named_sink_and_never_counts_an_unknown_one() -> None:
    tracker = AckTracker({"a": ZERO, "b": ZERO})
    tracker.durable("a", Position(200, 3))
    assert tracker.durable_in(Position(200, 3), ["a"])
    assert not tracker.durable_in(Position(200, 3), ["a", "b"])
    assert not tracker.durable_in(ZERO, ["not-a-sink"])  # was counted as durable before the progress module


def test_the_wal_end_is_confirmed_only_when_the_reader_is_quiet_and_every_sink_holds_what_it_got() -> None:
    tracker = AckTracker({"a": ZERO})
    assert tracker.confirmable(100, 500, reader_quiet=True) == 500  # nothing dispatched: idle
    assert tracker.confirmable(100, 500, reader_quiet=False) == 100
    assert tracker.confirmable(600, 500, reader_quiet=True) == 600  # never backwards
    tracker.dispatched(Position(300, 1))
    tracker.close_txn(350, T0)
    assert tracker.confirmable(100, 500, reader_quiet=True) == 100  # an event not durable yet
    tracker.durable("a", Position(300, 1))
    assert tracker.confirmable(tracker.ackable(), 500, reader_quiet=True) == 500


def test_a_partitions_offset_is_committable_once_what_precedes_it_is_durable() -> None:
    from pulse.runtime.progress import PartitionProgress

    p = PartitionProgress()
    assert not p.waiting and p.to_commit() is None
    p.written(Position(10, 1), 5)
    p.written(Position(20, 1), 9)
    p.already_held(Position(20, 1), 12)  # writes wait: not committable past them
    assert p.to_commit() is None and p.waiting
    p.durable(Position(15, 0))
    assert p.to_commit() == (5, Position(10, 1))
    p.durable(None)  # nothing reported: unchanged
    p.durable(Position(20, 1))
    assert p.to_commit() == (9, Position(20, 1)) and not p.pending
    p.committed()
    assert not p.waiting
    p.already_held(Position(20, 1), 12)
    assert p.to_commit() == (12, Position(20, 1))
