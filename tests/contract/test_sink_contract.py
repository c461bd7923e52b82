"""The sink contract (src/pulse/sinks/base.py, docs/writing-a-sink.md), checked on every sink with a harness.

Each test states one promise the runtime relies on:

- a batch sent again (a retry after a transient error, a replay after a
  restart) changes nothing in the destination;
- the position a sink reports never moves backwards, and never past the
  batch it was given;
- a new instance on the same destination (a restarted process) opens at
  what is durable, and a replay from an older position adds nothing;
- an unreachable destination is a `TransientError` (the runtime retries it
  with backoff; a sink with a local outbox, the external one, makes the
  write durable all the same and delivers later), and the runtime's sink
  driver stops on a `TerminalError`
  with the sink's hint.
"""

from __future__ import annotations

import threading
import time

import pytest

from pulse.config import Settings
from pulse.errors import TerminalError, TransientError
from pulse.model import ZERO, Batch, Position
from pulse.runtime.pipeline import SinkWorker
from pulse.runtime.progress import AckTracker
from pulse.sinks.memory import FaultySink
from tests.contract.conftest import ALL, DURABLE
from tests.factories import chunk_of, make_batch


def _durable_after(sink, batch: Batch) -> Position:
    """Write `batch`, then flush until the sink says it is durable; the positions it reported, in order."""
    reported = [sink.write(batch)]
    flushed = sink.flush()
    if flushed is not None:
        reported.append(flushed)
    assert reported == sorted(reported), f"{sink.name} reported positions out of order: {reported}"
    return reported[-1]


@pytest.mark.parametrize("harness", ALL, indirect=True)
def test_a_new_destination_opens_at_zero_and_positions_never_move_backwards(harness) -> None:
    sink = harness.build()
    assert sink.open() == ZERO
    last = ZERO
    for k in range(3):
        batch = make_batch(100 * k + 1, 20, lsn=5000 + k)
        written = sink.write(batch)
        assert last <= written <= batch.last, f"{harness.name} reported {written} for a batch ending at {batch.last}"
        pos = _durable_after(sink, batch)
        assert pos >= written, f"{harness.name} moved back from {last} to {pos}"
        assert pos == batch.last, f"{harness.name} flush left the batch at {pos}, not durable at {batch.last}"
        last = pos
    sink.close()


@pytest.mark.parametrize("harness", ALL, indirect=True)
def test_a_batch_sent_again_changes_nothing(harness) -> None:
    sink = harness.build()
    sink.open()
    first, second = make_batch(1, 30, lsn=7000), make_batch(31, 30, lsn=7001)
    _durable_after(sink, first)
    _durable_after(sink, second)
    before = harness.read()
    assert before, f"{harness.name}: the destination holds nothing after two batches"
    # The runtime's retry of the last batch, then a replay of both.
    for batch in (second, first, second):
        assert _durable_after(sink, batch) == second.last
    assert harness.read() == before
    sink.close()


@pytest.mark.parametrize("harness", DURABLE, indirect=True)
def test_a_restarted_instance_opens_at_what_is_durable_and_a_replay_adds_nothing(harness) -> None:
    first, second, third = (make_batch(1 + 25 * k, 25, lsn=9000 + k) for k in range(3))
    crashed = harness.build()
    crashed.open()
    _durable_after(crashed, first)
    _durable_after(crashed, second)
    held = harness.read()
    # No close(): the process died. A new instance on the same destination:
    harness.crash(crashed)
    restarted = harness.build()
    assert restarted.open() == second.last
    # The runtime replays from the slot's (older) position: only the new batch counts.
    for batch in (first, second):
        assert _durable_after(restarted, batch) == second.last
    assert harness.read() == held
    assert _durable_after(restarted, third) == third.last
    assert harness.read() != held
    restarted.close()


@pytest.mark.parametrize("harness", DURABLE, indirect=True)
def test_an_unreachable_destination_is_a_transient_error(harness) -> None:
    sink = harness.unreachable()
    if harness.outbox:
        # The write is durable in the local outbox all the same; delivery waits for the endpoint.
        sink.open()
        batch = make_batch(1, 5, lsn=100)
        assert _durable_after(sink, batch) == batch.last
        sink.close()
        return
    with pytest.raises(TransientError):
        sink.open()
        _durable_after(sink, make_batch(1, 5, lsn=100))


def _driver(sink) -> tuple[SinkWorker, list[BaseException]]:
    failures: list[BaseException] = []
    worker = SinkWorker(sink, sink.open(), AckTracker({sink.name: ZERO}), Settings(),
                        on_terminal=lambda _name, exc: failures.append(exc))
    worker.start()
    return worker, failures


def _put(worker: SinkWorker, batch: Batch) -> None:
    chunk = chunk_of(batch.events)
    assert worker.queue.put_many([chunk], chunk.size_hint(), timeout=5)


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        threading.Event().wait(0.02)


@pytest.mark.parametrize("harness", ALL, indirect=True)
def test_the_driver_retries_transient_errors_until_the_batch_is_durable(harness) -> None:
    sink = FaultySink(harness.build(), fail_first=3)
    worker, failures = _driver(sink)
    batch = make_batch(1, 40, lsn=4000)
    _put(worker, batch)
    _wait(lambda: worker.durable >= batch.last)
    worker.draining.set()
    worker.join(10)
    assert sink.failures == 3 and worker.retries == 3 and not failures
    assert harness.read()


@pytest.mark.parametrize("harness", ALL, indirect=True)
def test_the_driver_stops_on_a_terminal_error_with_the_hint(harness) -> None:
    sink = FaultySink(harness.build(), terminal_after=0)
    worker, failures = _driver(sink)
    _put(worker, make_batch(1, 10, lsn=4000))
    _wait(lambda: bool(failures))
    worker.join(10)
    assert not worker.is_alive()
    assert isinstance(failures[0], TerminalError) and failures[0].hint
    assert worker.durable == ZERO


def test_every_registered_sink_has_a_harness() -> None:
    from pulse.sinks import REGISTRY

    assert set(ALL) == set(REGISTRY)
