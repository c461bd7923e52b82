"""Event shapes: types, NULL rules, devices, payloads, users, popularity, time range, determinism."""

from __future__ import annotations

import statistics
import uuid
from collections import Counter
from random import Random

import pytest

from pulse.generator.events import DEVICES, EVENT_TYPES, Event, EventFactory

from ._build import SINCE_MS, UNTIL_MS, catalogue, history


def test_exact_count_in_range_and_sorted_per_chunk(plain_run):
    events, _, _ = plain_run
    assert len(events) == 20_000
    assert all(SINCE_MS <= ev.event_ts_ms < UNTIL_MS for ev in events)
    for start in range(0, 20_000, 5_000):
        chunk = [ev.event_ts_ms for ev in events[start : start + 5_000]]
        assert chunk == sorted(chunk)


def test_event_type_distribution_is_sane(plain_run):
    events, _, _ = plain_run
    share = {t: n / len(events) for t, n in Counter(ev.event_type for ev in events).items()}
    assert set(share) == set(EVENT_TYPES)
    assert 0.30 < share["play"] < 0.55
    assert 0.20 < share["pause"] < 0.45
    assert 0.03 < share["finish"] < 0.20
    assert 0.08 < share["click"] < 0.35
    assert share["play"] > share["pause"] > share["finish"]


def test_null_rules(plain_run):
    events, _, items = plain_run
    lengths = {c.id: c.length_seconds for c in items}
    for ev in events:
        if ev.event_type in ("click", "play"):
            assert ev.duration_ms is None, ev
        else:
            assert isinstance(ev.duration_ms, int) and ev.duration_ms >= 0, ev
            length = lengths[ev.content_id]
            if length is not None:  # a segment never outlasts its content
                assert ev.duration_ms <= length * 1000, ev
        assert ev.content_id is not None and ev.user_id is not None


def test_every_content_type_gets_events_and_newsletters_are_read_not_played_to_length(plain_run):
    events, _, items = plain_run
    types = {c.id: c.content_type for c in items}
    by_type = Counter(types[ev.content_id] for ev in events)
    assert set(by_type) == {"podcast", "newsletter", "video"}
    newsletter_finishes = [ev for ev in events if types[ev.content_id] == "newsletter" and ev.event_type == "finish"]
    assert newsletter_finishes and all("position_ms" not in ev.raw_payload for ev in newsletter_finishes)


def test_device_mix(plain_run):
    events, _, _ = plain_run
    devices = Counter(ev.device for ev in events)
    assert set(devices) <= {name for name, _ in DEVICES}
    assert len(devices) >= 7
    assert devices.most_common(1)[0][0] in ("ios", "android")
    assert devices["smart-tv"] > 0 and devices["web-safari"] > 0


def test_payload_is_small_and_has_the_client_fields(plain_run):
    events, _, _ = plain_run
    for ev in events[:2_000]:
        p = ev.raw_payload
        assert {"app_version", "country", "session_id", "seq", "network"} <= set(p)
        assert ("target" in p) == (ev.event_type == "click")
        assert "anomaly" not in p
        assert len(str(p)) < 300


def test_sessions_are_ordered_in_time_and_sequence():
    factory = EventFactory(catalogue(), Random(3), users=100)
    for _ in range(500):
        session = factory.session(SINCE_MS)
        assert session
        assert [ev.raw_payload["seq"] for ev in session] == list(range(len(session)))
        assert [ev.event_ts_ms for ev in session] == sorted(ev.event_ts_ms for ev in session)
        assert len({(ev.user_id, ev.content_id, ev.raw_payload["session_id"]) for ev in session}) == 1
        media = [ev for ev in session if ev.event_type != "click"]
        if media:
            assert media[0].event_type == "play"
            assert all(a.event_type == "play" for a, b in zip(media, media[1:]) if b.event_type != "play")


def test_session_is_cut_at_the_end_of_the_range():
    factory = EventFactory(catalogue(), Random(4), users=100)
    for _ in range(300):
        assert all(ev.event_ts_ms < SINCE_MS + 60_000 for ev in factory.session(SINCE_MS, SINCE_MS + 60_000))


def test_user_pool_is_bounded_and_ids_are_uuid4(plain_run):
    events, _, _ = plain_run
    users = Counter(ev.user_id for ev in events)
    assert len(users) <= 500
    assert len(users) > 200
    assert all(uuid.UUID(u).version == 4 for u in users)


def test_zipf_skew(plain_run):
    events, _, items = plain_run
    counts = Counter(ev.content_id for ev in events)
    per_item = [counts.get(c.id, 0) for c in items]
    top, median = max(per_item), statistics.median(per_item)
    assert top > 10 * max(median, 1), (top, median)
    # the head is heavy: the 10 most popular items get a large share
    assert sum(sorted(per_item, reverse=True)[:10]) > 0.35 * len(events)


def test_most_popular_by_rank_is_most_played():
    factory = EventFactory(catalogue(), Random(8), users=1_000)
    firsts = Counter(factory.session(SINCE_MS)[0].content_id for _ in range(20_000))
    ranked = factory.content_by_rank
    assert firsts.most_common(1)[0][0] == ranked[0]
    assert firsts[ranked[0]] > firsts[ranked[1]] > firsts[ranked[len(ranked) // 2]]


def test_same_seed_same_rows_other_seed_other_rows():
    a, _, _ = history(seed=11, count=3_000)
    b, _, _ = history(seed=11, count=3_000)
    c, _, _ = history(seed=12, count=3_000)
    assert a == b
    assert a != c


def test_chunking_does_not_change_the_count_or_the_range():
    events, _, _ = history(seed=2, count=7_001, chunk_rows=1_000)
    assert len(events) == 7_001
    assert all(SINCE_MS <= ev.event_ts_ms < UNTIL_MS for ev in events)


def test_tiny_range_still_exact():
    factory = EventFactory(catalogue(), Random(5))
    events = [ev for chunk in factory.history(1_000, SINCE_MS, SINCE_MS + 1_000) for ev in chunk]
    assert len(events) == 1_000
    assert all(SINCE_MS <= ev.event_ts_ms < SINCE_MS + 1_000 for ev in events)


def test_history_rejects_an_empty_range():
    factory = EventFactory(catalogue(), Random(5))
    with pytest.raises(ValueError):
        next(factory.history(10, SINCE_MS, SINCE_MS))


def test_live_stream_is_stamped_by_the_clock_and_interleaves_sessions():
    now = [1_722_470_400_000]
    factory = EventFactory(catalogue(), Random(6), users=1_000)
    stream = factory.live(lambda: now[0], concurrency=20)
    events = []
    for _ in range(400):
        now[0] += 5
        ev = next(stream)
        assert now[0] - 400 <= ev.event_ts_ms <= now[0]
        events.append(ev)
    sessions = [ev.raw_payload["session_id"] for ev in events[:40]]
    assert len(set(sessions)) > 10  # many users online at once
    assert {ev.event_type for ev in events} == set(EVENT_TYPES)


def test_catalogue_without_playable_content_is_refused():
    zero_only = [c for c in catalogue(zero_length=3) if c.length_seconds == 0]
    with pytest.raises(ValueError):
        EventFactory(zero_only, Random(1))


def test_event_is_a_plain_tuple_in_column_order():
    ev = Event("c", "u", "play", 1, None, "ios", {})
    assert tuple(ev) == ("c", "u", "play", 1, None, "ios", {})
