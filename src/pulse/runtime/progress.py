"""Progress: every position Pulse promises, and what moves it, in one module.

A sink stores its own position with its data (the contract, `sinks/base.py`)
and reports what it made durable; everything Pulse concludes from those
reports is decided here:

- `AckTracker`: per sink, the durable position; the slot may only be
  acknowledged past a transaction once every sink holds all of that
  transaction's events durably. It keeps the closed, not yet acknowledged
  transactions in order, each with the position of the last event dispatched
  up to and including it; a transaction is complete when every sink's
  durable position has reached that position (a sink that declares itself
  not durable counts only when no durable sink runs). Transactions without events
  for the sinks (content changes, heartbeats) complete as soon as everything
  before them has. Thread-safe: the dispatcher closes transactions, sink
  workers report durability, the reader asks for the acknowledgeable LSN.
- `AckTracker.confirmable`: the idle rule. With nothing in flight, the
  reader may confirm the server's WAL end itself, so an idle slot (WAL of
  other tables, checkpoints) does not hold WAL back.
- `AckTracker.durable_in`: whether a position is durable in given sinks
  (a backfill records a chunk's progress only then).
- `PartitionProgress`: under `pulse consume`, the Kafka offset that may be
  committed for a partition, and the position durable up to it (committed
  as the offset's metadata).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from pulse.model import ZERO, Position


@dataclass(slots=True)
class _Txn:
    end_lsn: int
    last: dict[str, Position]  # per sink: the last position handed to it up to this txn
    commit_ts: float  # unix seconds, for lag in seconds


class AckTracker:
    """The slot's acknowledgement: up to the last transaction every counted sink holds durably.

    `volatile` names sinks that hold nothing durably (`Sink.durable` False: the
    `memory` double): beside a durable sink they neither move nor hold back
    the slot. Only when every sink is volatile (the user named such a sink
    alone: `pulse run` never picks one by default) do their positions count,
    as the user asked.
    """

    def __init__(self, sinks: dict[str, Position], volatile: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._durable: dict[str, Position] = dict(sinks)
        volatile = set(volatile)
        self._counted = frozenset(sinks) - volatile or frozenset(sinks)
        self._pending: deque[_Txn] = deque()
        # Per sink, because a backfill may feed only some of them.
        self._dispatched: dict[str, Position] = {name: ZERO for name in sinks}
        self.acked_lsn = 0
        self.acked_at = time.monotonic()

    def dispatched(self, position: Position, sinks: Iterable[str] | None = None) -> None:
        """An event at `position` was handed to `sinks` (default: all), in position order."""
        with self._lock:
            for name in self._dispatched if sinks is None else sinks:
                if position > self._dispatched[name]:
                    self._dispatched[name] = position

    def close_txn(self, end_lsn: int, commit_ts: float) -> None:
        with self._lock:
            self._pending.append(_Txn(end_lsn, dict(self._dispatched), commit_ts))

    def durable(self, sink: str, position: Position) -> None:
        with self._lock:
            if position > self._durable[sink]:
                self._durable[sink] = position

    def durable_in(self, position: Position, sinks: Iterable[str]) -> bool:
        """Whether each of `sinks` holds `position` durably (a sink this tracker does not know: no)."""
        with self._lock:
            return all(name in self._durable and self._durable[name] >= position for name in sinks)

    def confirmable(self, acked: int, wal_end: int, reader_quiet: bool) -> int:
        """The LSN the reader may confirm: `acked`, or the server's WAL end `wal_end` when the reader
        has nothing in flight (`reader_quiet`: no open transaction or stream, nothing queued, every
        commit it saw at or below `acked`) and every sink holds everything dispatched to it."""
        return wal_end if reader_quiet and wal_end > acked and self.idle() else acked

    def positions(self) -> dict[str, Position]:
        with self._lock:
            return dict(self._durable)

    def _complete(self, txn: _Txn) -> bool:
        durable, counted = self._durable, self._counted
        return all(durable[name] >= pos for name, pos in txn.last.items() if name in counted)

    def ackable(self) -> int:
        """Advance over complete transactions; return the LSN safe to acknowledge."""
        with self._lock:
            while self._pending and self._complete(self._pending[0]):
                self.acked_lsn = max(self.acked_lsn, self._pending.popleft().end_lsn)
                self.acked_at = time.monotonic()
            return self.acked_lsn

    def idle(self) -> bool:
        """Nothing dispatched is waiting on a sink."""
        with self._lock:
            return not self._pending and all(
                self._durable[name] >= pos for name, pos in self._dispatched.items() if name in self._counted
            )

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def oldest_pending_commit_ts(self) -> float | None:
        with self._lock:
            return self._pending[0].commit_ts if self._pending else None

    def sink_lag_seconds(self, sink: str, now: float) -> float:
        """Seconds since the commit of the oldest transaction `sink` does not hold durably yet (0: caught up)."""
        with self._lock:
            durable = self._durable[sink]
            if not self._pending or self._pending[-1].last.get(sink, ZERO) <= durable:
                return 0.0
            for txn in self._pending:  # in commit order: the first one found is the oldest
                if txn.last.get(sink, ZERO) > durable:
                    return max(0.0, now - txn.commit_ts)
            return 0.0

    def laggards(self) -> list[str]:
        """Sinks holding the acknowledgement back."""
        with self._lock:
            if not self._pending:
                return []
            need = self._pending[0].last
            return sorted(name for name, pos in need.items() if name in self._counted and self._durable[name] < pos)


class PartitionProgress:
    """One Kafka partition under `pulse consume`: the offset that may be committed, and the position with it.

    Messages written to the sink wait (`written`) until the sink reports their
    position durable (`durable`); then the offset after them may be committed,
    with that position as its metadata (a sink that keeps no position of its
    own is re-opened from it). Messages the sink already held (skipped by
    position) are committable at once when nothing written waits.
    """

    __slots__ = ("pending", "offset", "position")

    def __init__(self) -> None:
        self.pending: deque[tuple[Position, int]] = deque()  # (position, next offset) written, maybe not durable
        self.offset: int | None = None  # next offset to commit
        self.position: Position | None = None  # durable up to it

    def written(self, position: Position, next_offset: int) -> None:
        self.pending.append((position, next_offset))

    def durable(self, position: Position | None) -> None:
        while position is not None and self.pending and self.pending[0][0] <= position:
            self.position, self.offset = self.pending.popleft()

    def already_held(self, position: Position, next_offset: int) -> None:
        """Messages up to `next_offset` were all in the sink already: committable unless writes wait."""
        if not self.pending:
            self.offset, self.position = next_offset, position

    @property
    def waiting(self) -> bool:
        """Written messages not durable yet, or an offset not committed yet."""
        return bool(self.pending) or self.offset is not None

    def to_commit(self) -> tuple[int, Position | None] | None:
        return None if self.offset is None else (self.offset, self.position)

    def committed(self) -> None:
        self.offset = self.position = None
