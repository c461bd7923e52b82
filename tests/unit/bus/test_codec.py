"""The Kafka wire format round-trips every field, `before` included."""

from datetime import datetime, timezone

from pulse.bus.codec import NULL_KEY, decode, encode, header_position
from pulse.model import EnrichedEvent, Position
from tests.factories import make_event

NOW = datetime(2024, 8, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def event(**kw) -> EnrichedEvent:
    base = dict(event_id=7, position=Position(0x1_0000_0010, 3), at=NOW, content_id="c-1", duration_ms=1500,
                user_id="u-1", event_type="pause", device="web-safari 🧪", raw_payload='{"country": "DE"}',
                content_slug="s", content_title="T", content_type="video", length_seconds=10,
                engagement_seconds=1.5, engagement_pct=0.15, op="insert", backfill=False, problems=(), before=None)
    return make_event(**{**base, **kw})


def test_round_trip_with_before_and_problems() -> None:
    e = event(op="update", problems=("duration_exceeds_length",), before=event(duration_ms=900))
    key, value, headers = encode(e)
    assert key == b"c-1"
    assert decode(value) == e
    assert header_position(headers) == e.position


def test_null_content_and_backfill_flag() -> None:
    e = event(content_id=None, backfill=True, event_ts=None, engagement_pct=None)
    key, value, headers = encode(e)
    assert key == NULL_KEY
    assert ("pulse-backfill", b"1") in headers
    assert decode(value) == e


def test_missing_position_header_is_none() -> None:
    assert header_position([("other", b"x")]) is None
    assert header_position(None) is None


def test_backfill_targets_travel_in_a_header_and_select_the_consumers():
    from pulse.bus.codec import TARGETS_HEADER, encode, is_for

    ev = event(backfill=True)
    _key, _value, headers = encode(ev, ("external", "bigquery"))
    assert (TARGETS_HEADER, b"external,bigquery") in headers
    assert is_for(headers, "bigquery") and is_for(headers, "external")
    assert not is_for(headers, "redis")
    live = encode(event(), ("external",))[2]
    assert all(name != TARGETS_HEADER for name, _ in live) and is_for(live, "redis")


def test_timestamps_at_the_edges_of_the_range_round_trip() -> None:
    for ts, problems in ((datetime(1, 1, 1, tzinfo=timezone.utc), ("event_ts_at_limit",)),
                         (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), ("event_ts_at_limit",)),
                         (None, ("event_ts_out_of_range",))):
        e = event(event_ts=ts, problems=problems)
        assert decode(encode(e)[1]) == e
