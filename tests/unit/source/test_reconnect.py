"""The replication reader's reconnect loop: counted, backoff with jitter, started over after a good session."""

from __future__ import annotations

import queue

import psycopg2

from pulse import metrics
from pulse.config import DatabaseConfig
from pulse.source import replication
from pulse.source.replication import ReplicationReader


def _reader(monkeypatch, outcomes: list[str]) -> tuple[ReplicationReader, list[float]]:
    """A reader whose sessions follow `outcomes` ("fail": connect fails; "streamed": a session then a loss)."""
    reader = ReplicationReader(DatabaseConfig(url="postgresql://x@127.0.0.1:1/db", slot="s", publication="p",
                                              native_reader=False), queue.Queue())
    delays: list[float] = []
    steps = iter(outcomes)

    def session() -> None:
        step = next(steps, None)
        if step is None:
            reader.stop()
            return
        if step == "streamed":
            reader.session += 1
        raise psycopg2.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(reader, "_session", session)
    monkeypatch.setattr(reader.stop_event, "wait", lambda d: delays.append(d) or reader.stop_event.is_set())
    monkeypatch.setattr(replication.random, "uniform", lambda lo, hi: hi)  # the ceiling of the jitter
    return reader, delays


def test_backoff_doubles_while_failing_and_starts_over_after_a_session_that_streamed(monkeypatch):
    before = metrics.REPLICATION_DISCONNECTS._value.get()
    reader, delays = _reader(monkeypatch, ["fail", "fail", "fail", "streamed", "fail"])
    reader.run()
    # Without the reset, the fourth wait would be 4.0 and the fifth 8.0: a server that restarts
    # every few minutes would leave Pulse waiting up to 30 s after each restart.
    assert delays == [0.5, 1.0, 2.0, 0.5, 1.0]
    assert metrics.REPLICATION_DISCONNECTS._value.get() - before == 5
    assert metrics.REPLICATION_CONNECTED._value.get() == 0
