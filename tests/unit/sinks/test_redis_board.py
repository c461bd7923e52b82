"""Bucket math and pre-aggregation of the Redis board (no Redis needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pulse.config import RedisConfig
from pulse.errors import ConfigError
from pulse.model import EnrichedEvent, Position
from pulse.sinks.redis.board import (
    NULL_MEMBER,
    Aggregate,
    Keys,
    PauseState,
    bucket_of,
    decode_position,
    encode_position,
    lowest_bucket,
    window_label,
)
from tests.factories import make_event

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
NOW = T0.timestamp()


def ev(i: int, cid: str | None = "c1", ms: int | None = 1000, ts: datetime = T0, op: str = "insert",
       before: EnrichedEvent | None = None, ctype: str | None = "podcast", device: str | None = "ios",
       etype: str | None = "play") -> EnrichedEvent:
    seconds = None if ms is None or ms < 0 else ms / 1000
    return make_event(i, Position(10, i), at=T0, event_ts=ts, op=op, content_id=cid, duration_ms=ms, user_id=None,
                      event_type=etype, device=device, raw_payload=None, content_slug="slug", content_title="Title",
                      content_type=ctype, length_seconds=100, engagement_seconds=seconds, engagement_pct=None,
                      before=before)


def agg(*events: EnrichedEvent, now: float = NOW, skew: int = 60) -> Aggregate:
    a = Aggregate(bucket_s=10, future_skew_s=skew)
    a.add_events(events, now)
    return a


def test_window_labels_and_key_names():
    assert window_label(600) == "10m" and window_label(90) == "90s" and window_label(7200) == "2h"
    k = Keys()
    assert (k.top, k.top_type("video"), k.devices, k.event_types, k.events, k.meta) == (
        "pulse:top:10m", "pulse:top:10m:video", "pulse:devices:10m", "pulse:event_types:10m",
        "pulse:events:10m", "pulse:meta")
    assert k.content("abc") == "pulse:content:abc"
    assert k.hash_tag() is None and Keys("{pulse}:").hash_tag() == "pulse"
    assert Keys("{pulse}:").top == "{pulse}:top:10m"
    assert Keys("a{}b:").hash_tag() is None  # an empty tag hashes the whole key in Redis Cluster


def test_an_event_leaves_between_window_and_window_plus_one_bucket():
    ts = NOW + 3.2  # inside bucket [NOW, NOW + 10)
    b = bucket_of(ts, 10)
    assert b == NOW // 10
    # The window holds buckets >= lowest_bucket(now); find when b drops out.
    ages = [age / 10 for age in range(5900, 6200) if lowest_bucket(ts + age / 10, 600, 10) > b]
    first_gone = ages[0]
    assert 600 < first_gone <= 610
    assert all(lowest_bucket(ts + a / 10, 600, 10) <= b for a in range(0, 6000))


def test_bucket_boundaries_are_exact_at_microseconds():
    edge = datetime(2025, 1, 1, 12, 0, 10, tzinfo=timezone.utc)
    assert bucket_of(edge.timestamp(), 10) == bucket_of((edge - timedelta(microseconds=1)).timestamp(), 10) + 1
    assert bucket_of(edge.timestamp(), 10) == bucket_of((edge + timedelta(seconds=9.999999)).timestamp(), 10)


def test_positions_encode_in_sort_order():
    ps = [Position(0, 0), Position(1, 5), Position(1, 10), Position(0xFFFF_FFFF_0000_0001, 0), Position(2**64 - 1, 7)]
    enc = [encode_position(p) for p in ps]
    assert enc == sorted(enc)
    assert [decode_position(e) for e in enc] == ps
    assert decode_position(None) == Position(0, 0) and decode_position(b"") == Position(0, 0)


def test_pre_aggregation_sums_integer_milliseconds_per_bucket_type_and_content():
    a = agg(ev(1, ms=1500), ev(2, ms=None), ev(3, ms=-20), ev(4, cid="c2", ms=333, ts=T0 + timedelta(seconds=12)),
            ev(5, cid="c2", ms=1, ts=T0 + timedelta(seconds=19.9)))
    b0 = int(NOW // 10)
    assert a.content == {(b0, "podcast", "c1"): [1500, 3], (b0 + 1, "podcast", "c2"): [334, 2]}
    assert a.devices == {(b0, "ios"): 3, (b0 + 1, "ios"): 2}
    assert a.event_types == {(b0, "play"): 3, (b0 + 1, "play"): 2}
    assert a.events == 5 and a.last == Position(10, 5)
    assert a.newest_event_ms == int((NOW + 19.9) * 1000)
    assert a.metadata["c1"] == ("Title", "slug", "podcast", 100)


def test_null_content_counts_in_devices_and_event_types_only():
    a = agg(ev(1, cid=None, device=None, etype=None))
    assert a.content == {} and a.null_content == 1
    b0 = int(NOW // 10)
    assert a.devices == {(b0, NULL_MEMBER): 1} and a.event_types == {(b0, NULL_MEMBER): 1}


def test_unknown_content_type_is_kept_under_an_empty_type():
    a = agg(ev(1, ctype=None))
    assert list(a.content) == [(int(NOW // 10), "", "c1")]


def test_future_events_keep_their_own_bucket_and_say_nothing_of_freshness():
    # The apply script holds a bucket beyond the skew until its time comes (tested against Redis).
    a = agg(ev(1, ts=T0 + timedelta(seconds=3600)), ev(2, ts=T0 + timedelta(seconds=59)))
    assert set(a.content) == {(int((NOW + 3600) // 10), "podcast", "c1"), (int((NOW + 59) // 10), "podcast", "c1")}
    assert a.newest_event_ms == int((NOW + 59) * 1000)


def test_update_and_delete_with_old_values_correct_the_board():
    old = ev(1, ms=1000)
    a = agg(ev(1, ms=4000, op="update", before=old), ev(2, ms=0, op="delete", before=ev(2, ms=700)))
    b0 = int(NOW // 10)
    assert a.content == {(b0, "podcast", "c1"): [4000 - 1000 - 700, -1]}
    assert a.corrections == 2 and a.uncorrectable == 0
    # An update that moves an event to another bucket and content.
    moved = agg(ev(3, cid="c2", ms=10, ts=T0 + timedelta(seconds=30), op="update", before=ev(3, ms=10)))
    assert moved.content == {(b0, "podcast", "c1"): [-10, -1], (b0 + 3, "podcast", "c2"): [10, 1]}


def test_changes_without_old_values_change_nothing_and_are_counted():
    a = agg(ev(1, ms=4000, op="update"), ev(2, op="delete", cid=None, ms=None))
    assert a.content == {} and a.devices == {} and a.uncorrectable == 2


def test_insert_then_delete_in_one_batch_nets_to_nothing_on_the_wire():
    a = agg(ev(1, ms=500), ev(1, ms=500, op="delete", before=ev(1, ms=500)))
    args = a.script_args()
    assert args[:3] == [0, 0, 0]


def test_script_args_layout():
    a = agg(ev(1, ms=500))
    b0 = int(NOW // 10)
    assert a.script_args() == [1, 1, 1, b0, "podcast", "c1", 500, 1, b0, "ios", 1, b0, "play", 1]


def test_sink_rejects_inconsistent_window_settings():
    from pulse.sinks.redis.sink import RedisSink

    with pytest.raises(ConfigError):
        RedisSink(RedisConfig(window_s=600, bucket_s=7))
    with pytest.raises(ConfigError):
        RedisSink(RedisConfig(window_s=3600, bucket_s=10, state_ttl_s=3600))
    RedisSink(RedisConfig())  # defaults are consistent; no connection until open()


def test_a_pause_is_logged_once_and_retried_at_most_every_interval():
    p = PauseState(retry_interval_s=0.1)
    assert not p.active and p.may_try(0.0) and p.resumed(0.0) is None
    assert p.paused(until_ms=5_000, now=10.0) is True  # new: log it
    assert p.active and p.pauses == 1 and p.until_ms == 5_000
    assert not p.may_try(10.05)  # writes and idle flushes in between do not reach Redis
    assert p.may_try(10.1)
    assert p.paused(until_ms=5_000, now=10.1) is False  # the same pause: no second log line
    assert not p.may_try(10.15) and p.pauses == 1
    assert p.resumed(12.5) == 2.5  # the first other answer ends it, once
    assert not p.active and p.may_try(12.5) and p.resumed(12.6) is None
    assert p.paused(until_ms=9_000, now=20.0) is True and p.pauses == 2  # a later rebuild is a new pause


def test_positions_compare_as_strings_in_lua_like_tuples():
    """The scripts compare encoded positions as strings (fence, DUP, SPLIT, the rebuild's floor)."""
    ps = [Position(0, 0), Position(1, 0), Position(1, 1), Position(1, 0xFFFF), Position(2, 0),
          Position(1 << 40, 3), Position((1 << 64) - 1, (1 << 32) - 1)]
    assert sorted(encode_position(p) for p in ps) == [encode_position(p) for p in sorted(ps)]
    assert "" < encode_position(Position(0, 0))  # no field yet sorts below every position
