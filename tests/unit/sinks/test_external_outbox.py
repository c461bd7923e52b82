"""CloudEvent ids and outbox rows: stable, distinct where they must be, exact bytes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson

from pulse.model import EnrichedEvent, Position
from pulse.sinks.external.outbox import cloudevent_id, encode, lane_key
from tests.factories import make_event

TS = datetime(2024, 8, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)


def event(**kw) -> EnrichedEvent:
    base = dict(event_id=42, position=Position(1000, 3), at=TS, content_id="c-1", duration_ms=5000, user_id="u-1",
                event_type="play", device="ios", raw_payload='{"b": 2, "a": 1}', content_slug="s", content_title="T",
                content_type="podcast", length_seconds=100, engagement_seconds=5.0, engagement_pct=0.05, op="insert")
    return make_event(**{**base, **kw})


def test_insert_id_is_the_same_for_a_replay_and_a_backfill_of_the_same_row_state():
    live = event()
    replayed = event(processed_ts=TS + timedelta(hours=1))
    # A backfill reads the row at another position, maybe in another session time zone and jsonb spelling.
    backfill = event(position=Position(9999, 0), backfill=True, raw_payload='{"a":1,"b":2}',
                     event_ts=TS.astimezone(timezone(timedelta(hours=2))), processed_ts=TS + timedelta(days=1))
    assert cloudevent_id(live) == cloudevent_id(replayed) == cloudevent_id(backfill)
    assert cloudevent_id(live).startswith("pulse-42-insert-")


def test_a_different_row_state_or_event_gets_a_different_id():
    ids = {cloudevent_id(event()), cloudevent_id(event(duration_ms=6000)), cloudevent_id(event(event_id=43)),
           cloudevent_id(event(raw_payload='{"a": 2}'))}
    assert len(ids) == 4


def test_updates_are_identified_by_position_so_a_revert_is_not_mistaken_for_a_duplicate():
    a_to_b = event(op="update", duration_ms=6000, position=Position(2000, 0))
    b_to_a = event(op="update", duration_ms=5000, position=Position(3000, 0))
    b_to_a_again = event(op="update", duration_ms=5000, position=Position(4000, 0))
    assert len({cloudevent_id(a_to_b), cloudevent_id(b_to_a), cloudevent_id(b_to_a_again)}) == 3
    assert cloudevent_id(b_to_a) == cloudevent_id(event(op="update", duration_ms=5000, position=Position(3000, 0)))
    assert cloudevent_id(event(op="delete")) == "pulse-42-delete"


def test_row_is_a_cloudevent_with_the_enriched_event_as_data():
    row = encode(event(), "/pulse/test")
    ce = orjson.loads(row.cloudevent())
    assert ce["specversion"] == "1.0" and ce["id"] == row.ce_id and ce["source"] == "/pulse/test"
    assert ce["type"] == "com.pulse.engagement.insert" and ce["time"] == TS.isoformat()
    assert ce["datacontenttype"] == "application/json" and ce["partitionkey"] == "c-1" and ce["subject"] == "42"
    assert ce["data"] == orjson.loads(orjson.dumps(event().to_dict()))
    assert (row.lsn, row.seq, row.event_id) == (1000, 3, 42)


def test_null_content_and_null_time_are_valid_cloudevents():
    row = encode(event(content_id=None, event_ts=None), "/s")
    ce = orjson.loads(row.cloudevent())
    assert "partitionkey" not in ce and "time" not in ce and ce["data"]["content_id"] is None
    assert row.lane_key == lane_key(None)


def test_lane_key_is_stable_and_non_negative():
    assert lane_key("c-1") == lane_key("c-1") >= 0
    assert {lane_key(f"c-{i}") % 4 for i in range(100)} == {0, 1, 2, 3}
