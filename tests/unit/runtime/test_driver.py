"""The sink driver that `pulse run`'s workers and `pulse consume`'s partitions share: retries, batches, metrics."""

import pytest

from pulse.errors import TerminalError, TransientError
from pulse.runtime.driver import SinkDriver, newer
from pulse.sinks.memory import FaultySink, MemorySink
from tests.factories import make_batch


def _driver(sink, batch_max=500, stop=lambda: False, metric="driver-test"):
    return SinkDriver(sink, batch_max=batch_max, stopping=stop, metric=metric)


def test_transient_failures_are_retried_and_counted_then_the_write_lands():
    inner = MemorySink()
    sink = FaultySink(inner, fail_first=2)
    driver = _driver(sink)
    events = make_batch(1, 5, lsn=100).events
    assert driver.write_events(events) == events[-1].position
    assert sink.failures == 2 and driver.retries == 2 and "injected failure #2" in driver.last_error
    assert [e.event_id for e in inner.events] == [1, 2, 3, 4, 5] and driver.written == 5


def test_a_terminal_error_is_not_retried():
    sink = FaultySink(MemorySink(), terminal_after=0)
    with pytest.raises(TerminalError):
        _driver(sink).write_events(make_batch(1, 3, lsn=100).events)
    assert sink.writes == 1


def test_a_stopping_caller_gets_the_transient_error_instead_of_waiting():
    sink = FaultySink(MemorySink(), fail_first=10)
    with pytest.raises(TransientError):
        _driver(sink, stop=lambda: True).write_events(make_batch(1, 3, lsn=100).events)
    assert sink.writes == 1


def test_events_go_in_batches_of_at_most_batch_max_and_the_newest_durable_position_is_returned():
    inner = MemorySink()
    driver = _driver(inner, batch_max=3)
    events = make_batch(1, 7, lsn=200).events
    assert driver.write_events(events) == events[-1].position
    assert inner.batches == 3 and inner.count == 7


def test_live_events_are_observed_once_written_and_backfill_events_are_not():
    from prometheus_client import REGISTRY

    def sample(name):
        return REGISTRY.get_sample_value(name, {"sink": "driver-e2e"}) or 0.0

    driver = _driver(MemorySink(), metric="driver-e2e")
    before = sample("pulse_end_to_end_seconds_count")
    driver.write_events(make_batch(1, 4, lsn=300).events)
    driver.write_events(make_batch(10, 4, lsn=301, backfill=True).events)
    assert sample("pulse_end_to_end_seconds_count") - before == 4
    assert sample("pulse_events_out_total") == 8


def test_newer_keeps_the_later_position_and_ignores_none():
    a, b = make_batch(1, 1, lsn=5).events[0].position, make_batch(1, 1, lsn=6).events[0].position
    assert newer(None, a) == a and newer(a, None) == a and newer(b, a) == b and newer(a, b) == b
