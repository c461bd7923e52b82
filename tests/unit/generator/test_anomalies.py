"""Anomalies: absent unless asked, every kind reachable and shaped as declared, nothing else touched."""

from __future__ import annotations

from collections import Counter
from random import Random

import pytest

from pulse.generator.anomalies import (
    DELETE_KIND,
    HUGE_PAYLOAD_BYTES,
    KIND_WEIGHTS,
    ODD_DEVICES,
    ROW_KINDS,
    UPDATE_KIND,
    AnomalyInjector,
)
from pulse.generator.events import DEVICES, Event

from ._build import SINCE_MS, UNTIL_MS, history

_KEY = lambda ev: (ev.user_id, ev.raw_payload["session_id"], ev.raw_payload["seq"])  # noqa: E731


def test_absent_when_not_asked(plain_run):
    events, injector, items = plain_run
    assert injector is None
    assert not [ev for ev in events if "anomaly" in ev.raw_payload]
    assert not [ev for ev in events if ev.content_id is None]
    assert not [ev for ev in events if ev.duration_ms is not None and ev.duration_ms < 0]
    assert {ev.device for ev in events} <= {name for name, _ in DEVICES}
    assert not [c for c in items if c.length_seconds == 0]


def test_fraction_zero_injector_is_a_no_op():
    injector = AnomalyInjector(Random(1), 0.0, lengths={})
    ev = Event("c", "u", "pause", 5, 1000, "ios", {"seq": 0})
    assert injector(ev) is ev
    assert injector.draw_mutation() is None
    assert not injector.counts


@pytest.fixture(scope="module")
def anomalous_run():
    return history(seed=1, count=20_000, anomalies=0.2)


def test_present_when_asked_and_counted(anomalous_run):
    events, injector, _ = anomalous_run
    declared = Counter(ev.raw_payload["anomaly"] for ev in events if "anomaly" in ev.raw_payload)
    assert 0.17 * len(events) < sum(declared.values()) < 0.23 * len(events)
    assert declared == {k: v for k, v in injector.counts.items() if k in ROW_KINDS}
    # all the common kinds occur in a run of this size
    assert set(declared) >= set(ROW_KINDS) - {"huge_payload"}


def test_each_kind_has_its_declared_shape(anomalous_run):
    events, _, items = anomalous_run
    lengths = {c.id: c.length_seconds for c in items}
    for ev in events:
        kind = ev.raw_payload.get("anomaly")
        if kind == "null_content":
            assert ev.content_id is None
        elif kind == "null_duration":
            assert ev.duration_ms is None and ev.event_type in ("pause", "finish")
        elif kind == "negative_duration":
            assert ev.duration_ms < 0
        elif kind == "duration_overflow":
            assert ev.duration_ms >= 5 * lengths[ev.content_id] * 1000
        elif kind == "zero_length_content":
            assert lengths[ev.content_id] == 0
        elif kind == "odd_device":
            assert ev.device in ODD_DEVICES
        elif kind == "late_event":
            assert ev.event_ts_ms < UNTIL_MS
        elif kind == "future_event":
            assert ev.event_ts_ms >= SINCE_MS
        if kind not in ("late_event", "future_event"):
            assert SINCE_MS <= ev.event_ts_ms < UNTIL_MS


def test_odd_devices_cover_emoji_rtl_zero_width_control_and_long():
    joined = "".join(ODD_DEVICES)
    assert any(ord(ch) > 0x1F000 for ch in joined)  # emoji
    assert "\u202e" in joined and any("\u0590" <= ch <= "\u06ff" for ch in joined)  # RTL
    assert "\u200b" in joined and "\u200d" in joined  # zero-width
    assert "\t" in joined and "\n" in joined and "\\" in joined  # COPY must escape these
    assert max(map(len, ODD_DEVICES)) > 2_000


def test_only_declared_rows_differ_from_a_run_without_anomalies(plain_run, anomalous_run):
    plain, _, _ = plain_run
    odd, _, _ = anomalous_run
    assert len(plain) == len(odd)
    untouched = sorted((ev for ev in odd if "anomaly" not in ev.raw_payload), key=_KEY)
    plain_by_key = {_KEY(ev): ev for ev in plain}
    assert len(plain_by_key) == len(plain)
    assert all(plain_by_key[_KEY(ev)] == ev for ev in untouched)


@pytest.mark.parametrize("kind", ROW_KINDS)
def test_every_kind_can_be_applied(kind):
    injector = AnomalyInjector(Random(2), 0.5, lengths={"c": 600, "z": 0}, zero_length_ids=["z"])
    ev = Event("c", "u", "pause", SINCE_MS, 30_000, "ios", {"seq": 1})
    out = injector.apply(ev, kind)
    assert out.raw_payload["anomaly"] == kind
    assert ev.raw_payload == {"seq": 1}  # the input is not mutated
    assert injector.counts == {kind: 1}
    if kind == "huge_payload":
        assert len(out.raw_payload["debug_dump"]) == HUGE_PAYLOAD_BYTES
    if kind == "late_event":
        assert SINCE_MS - out.event_ts_ms >= 120_000
    if kind == "future_event":
        assert out.event_ts_ms - SINCE_MS >= 120_000


def test_inapplicable_kinds_fall_back_and_are_recorded_as_done():
    injector = AnomalyInjector(Random(3), 0.5, lengths={"n": None})
    click = Event("n", "u", "click", 0, None, "ios", {})
    assert injector.apply(click, "duration_overflow").raw_payload["anomaly"] == "negative_duration"
    assert injector.apply(click, "null_duration").raw_payload["anomaly"] == "negative_duration"
    assert injector.apply(click, "zero_length_content").raw_payload["anomaly"] == "null_content"


def test_mutations_are_drawn_at_the_documented_rate():
    injector = AnomalyInjector(Random(4), 0.5, lengths={})
    draws = Counter(injector.draw_mutation() for _ in range(100_000))
    expected = 100_000 * injector.mutation_probability
    assert 0.8 * expected < draws[UPDATE_KIND] < 1.2 * expected
    assert 0.8 * expected < draws[DELETE_KIND] < 1.2 * expected


def test_huge_payload_is_rare():
    share = KIND_WEIGHTS["huge_payload"] / sum(KIND_WEIGHTS.values())
    assert share < 0.001


def test_fraction_is_validated():
    with pytest.raises(ValueError):
        AnomalyInjector(Random(1), 1.5, lengths={})


def test_anomalies_are_reproducible():
    a, ia, _ = history(seed=21, count=3_000, anomalies=0.1)
    b, ib, _ = history(seed=21, count=3_000, anomalies=0.1)
    assert a == b and ia.counts == ib.counts
