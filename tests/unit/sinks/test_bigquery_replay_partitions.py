"""Which partitions a dead-letter replay reads: the days of the replayed events, or all when one is unknown."""

from __future__ import annotations

from datetime import datetime, timezone

from pulse.sinks.bigquery.sink import _partitions


def test_the_days_of_the_replayed_events_and_the_null_partition() -> None:
    docs = [{"event_ts": "2024-08-01T23:30:00+00:00"}, {"event_ts": datetime(2024, 8, 2, 1, tzinfo=timezone.utc)},
            {"event_ts": "2024-08-02T00:30:00+02:00"}, {"event_ts": None}]
    where = _partitions(docs)
    assert "TIMESTAMP '2024-08-01 00:00:00+00'" in where and "TIMESTAMP '2024-08-03 00:00:00+00'" in where
    assert "IS NULL" in where


def test_an_event_ts_that_names_no_day_reads_every_partition() -> None:
    # Text that is not ISO 8601, and the first instant of year 1 with a positive offset (before
    # 0001-01-01 in UTC: astimezone overflows), used to raise out of the replay.
    for odd in ("yesterday", "0001-01-01T00:00:00+05:00", 17):
        assert _partitions([{"event_ts": "2024-08-01T00:00:00+00:00"}, {"event_ts": odd}]) == "TRUE", odd
