"""Test doubles: a sink that keeps events in memory, and one that misbehaves on demand.

`MemorySink` is durable "by definition" within the process (it survives no
restart: use `PgTableSink` for crash tests). `FaultySink` wraps any sink and
fails (transiently or terminally), stalls, or kills the whole process after
N events, for tests of retries, backpressure and crash recovery.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from pulse.errors import TerminalError, TransientError
from pulse.model import ZERO, Batch, EnrichedEvent, Position
from pulse.sinks.base import Sink, SinkInstance


class MemorySink(Sink):
    """Keeps events (or, with `columns=True`, the enriched Arrow tables a columnar sink gets)."""

    #: In this process's memory only: beside a durable sink it does not count for the slot.
    durable = False

    @classmethod
    def from_settings(cls, settings, name: "str | SinkInstance" = "memory") -> "MemorySink":
        """`--sink memory`: keeps nothing (a throughput probe), so it is never a default (`pipeline_sinks`)."""
        return cls(name, keep=False)

    def __init__(self, name: "str | SinkInstance" = "memory", keep: bool = True, start: Position = ZERO,
                 columns: bool = False) -> None:
        self.identify(name)
        self.keep = keep
        self.accepts_columns = columns
        self.tables: list = []
        self.events: list[EnrichedEvent] = []
        self.batches = 0
        self.count = 0
        self.position = start
        self._lock = threading.Lock()

    def open(self) -> Position:
        return self.position

    def write(self, batch: Batch) -> Position:
        with self._lock:
            # A batch sent again (a retry, a replay) adds nothing: the contract's idempotence.
            events = batch.events if batch.first > self.position else [e for e in batch.events
                                                                       if e.position > self.position]
            if self.keep:
                self.events.extend(events)
            self.count += len(events)
            self.batches += 1
            self.position = max(self.position, batch.last)
        return self.position

    def write_columns(self, table, first: Position, last: Position) -> Position:
        with self._lock:
            if self.keep:
                self.tables.append(table)
            self.count += table.num_rows
            self.batches += 1
            self.position = last
        return last

    def snapshot(self) -> list[EnrichedEvent]:
        with self._lock:
            return list(self.events)


class FaultySink(Sink):
    """Wraps `inner`; each knob is off by default.

    - `fail_rate`: share of writes that raise TransientError before writing;
    - `fail_first`: the first N writes raise TransientError;
    - `terminal_after`: raise TerminalError once this many events were written;
    - `stall_s`: sleep this long in every write (a slow destination);
    - `kill_after`: SIGKILL the whole process once this many events were written
      (after the inner write, before returning: the position is stored, the
      acknowledgement is not).
    """

    def __init__(self, inner: Sink, *, fail_rate: float = 0.0, fail_first: int = 0,
                 terminal_after: int | None = None, stall_s: float = 0.0, kill_after: int | None = None,
                 seed: int | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.snapshot_mode = inner.snapshot_mode
        self.durable = inner.durable
        self.fail_rate = fail_rate
        self.fail_first = fail_first
        self.terminal_after = terminal_after
        self.stall_s = stall_s
        self.kill_after = kill_after
        self.rng = random.Random(seed)
        self.writes = 0
        self.failures = 0
        self.written = 0

    def open(self) -> Position:
        return self.inner.open()

    def write(self, batch: Batch) -> Position:
        self.writes += 1
        if self.stall_s:
            time.sleep(self.stall_s)
        if self.writes <= self.fail_first or (self.fail_rate and self.rng.random() < self.fail_rate):
            self.failures += 1
            raise TransientError(f"injected failure #{self.failures}")
        if self.terminal_after is not None and self.written >= self.terminal_after:
            raise TerminalError("injected terminal failure", hint="this is a test sink")
        pos = self.inner.write(batch)
        self.written += len(batch)
        if self.kill_after is not None and self.written >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return pos

    def flush(self) -> Position | None:
        return self.inner.flush()

    def close(self) -> None:
        self.inner.close()
