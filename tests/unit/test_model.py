"""Unit tests for pulse.model: Position order and text form, the enriched-event contract."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import orjson
import pytest

from pulse.model import ZERO, Batch, Change, EnrichedEvent, Position
from pulse.source.pgoutput import lsn_to_str
from tests.factories import make_event

TS = datetime(2024, 8, 1, 12, 0, 0, tzinfo=timezone.utc)
COMMIT = datetime(2024, 8, 1, 12, 0, 1, tzinfo=timezone.utc)
NOW = datetime(2024, 8, 1, 12, 0, 2, tzinfo=timezone.utc)

# DESIGN.md, "Enriched event": these names, in this order, then the operation,
# the source position, the commit time, the processing time, the backfill flag.
CONTRACT_FIELDS = [
    "event_id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload",
    "content_slug", "content_title", "content_type", "length_seconds", "engagement_seconds", "engagement_pct",
]


def event(**changes) -> EnrichedEvent:
    base = dict(
        event_id=42, position=Position(0x16_B374_D848, 3), at=TS, commit_ts=COMMIT, processed_ts=NOW,
        content_id="c1", duration_ms=1140, user_id="u1", event_type="play", device="ios", raw_payload='{"k": 1}',
        content_slug="ep-1", content_title="Episode 1", content_type="podcast", length_seconds=2,
        engagement_seconds=1.14, engagement_pct=0.57, op="insert",
    )
    return make_event(**{**base, **changes})


# --- Position --------------------------------------------------------------------------


def test_position_orders_by_lsn_then_seq() -> None:
    assert Position(1, 99) < Position(2, 0)
    assert Position(2, 1) < Position(2, 2)
    assert Position(2, 2) == Position(2, 2)
    assert ZERO < Position(0, 1) < Position(1, 0)
    assert max(Position(5, 1), Position(4, 9), Position(5, 0)) == Position(5, 1)
    assert sorted([Position(3, 1), Position(1, 2), Position(1, 1)]) == [Position(1, 1), Position(1, 2),
                                                                          Position(3, 1)]


def test_position_str_uses_postgres_lsn_notation() -> None:
    assert str(Position(0x16_B374_D848, 3)) == "16/B374D848#3"
    assert str(ZERO) == "0/0#0"
    assert str(Position(0xFFFF_FFFF_FFFF_FFFF, 1)) == "FFFFFFFF/FFFFFFFF#1"


def test_position_str_lsn_part_matches_the_decoder() -> None:
    for lsn in (0, 1, 0xFFFFFFFF, 0x1_0000_0000, 0x16_B374_D848):
        assert str(Position(lsn, 0)).split("#")[0] == lsn_to_str(lsn)


def test_position_parse_round_trip() -> None:
    rng = random.Random(7)
    samples = [ZERO, Position(0xFFFF_FFFF_FFFF_FFFF, 2**31)] + [
        Position(rng.getrandbits(64), rng.randint(0, 10**6)) for _ in range(1000)]
    for pos in samples:
        assert Position.parse(str(pos)) == pos


def test_position_parse_accepts_lowercase_and_a_bare_lsn() -> None:
    assert Position.parse("16/b374d848#3") == Position(0x16_B374_D848, 3)
    assert Position.parse("16/B374D848") == Position(0x16_B374_D848, 0)


@pytest.mark.parametrize("text", ["", "garbage", "16/B374D848#x", "zz/1#1"])
def test_position_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        Position.parse(text)


# --- EnrichedEvent -----------------------------------------------------------------------


def test_to_dict_field_names_follow_the_contract() -> None:
    d = event().to_dict()
    keys = list(d)
    assert keys[: len(CONTRACT_FIELDS)] == CONTRACT_FIELDS
    assert keys[len(CONTRACT_FIELDS):] == ["op", "source_lsn", "source_seq", "commit_ts", "processed_ts",
                                           "backfill", "problems"]
    assert "before" not in d


def test_to_dict_values() -> None:
    d = event(problems=("duration_exceeds_length",), backfill=True).to_dict()
    assert d["event_id"] == 42
    assert d["event_ts"] == "2024-08-01T12:00:00+00:00"
    assert d["commit_ts"] == "2024-08-01T12:00:01+00:00"
    assert d["processed_ts"] == "2024-08-01T12:00:02+00:00"
    assert (d["source_lsn"], d["source_seq"]) == (0x16_B374_D848, 3)
    assert d["engagement_pct"] == 0.57 and d["engagement_seconds"] == 1.14
    assert d["length_seconds"] == 2 and isinstance(d["length_seconds"], int)
    assert d["duration_ms"] == 1140 and isinstance(d["duration_ms"], int)
    assert d["op"] == "insert"
    assert d["backfill"] is True
    assert d["problems"] == ["duration_exceeds_length"]


def test_to_dict_nulls() -> None:
    d = event(event_ts=None, commit_ts=None, content_id=None, duration_ms=None, engagement_seconds=None,
              engagement_pct=None, length_seconds=None, raw_payload=None).to_dict()
    for key in ("event_ts", "commit_ts", "content_id", "duration_ms", "engagement_seconds", "engagement_pct",
                "length_seconds", "raw_payload"):
        assert d[key] is None, key
    assert d["problems"] == []


def test_to_dict_is_json_serialisable_and_round_trips() -> None:
    before = event(duration_ms=1000, engagement_seconds=1.0, engagement_pct=0.5)
    d = event(op="update", before=before).to_dict()
    assert orjson.loads(orjson.dumps(d)) == d


def test_to_dict_survives_an_unrepresentable_event_ts() -> None:
    assert event(event_ts="infinity").to_dict()["event_ts"] == "infinity"  # type: ignore[arg-type]


def test_events_are_immutable() -> None:
    ev = event()
    with pytest.raises(AttributeError):  # FrozenInstanceError (an AttributeError subclass) on newer Pythons
        ev.engagement_pct = 0.9  # type: ignore[misc]


def test_size_hint_counts_payload_and_before() -> None:
    small = event(raw_payload=None)
    big = event(raw_payload="x" * 10_000)
    assert big.size_hint() - small.size_hint() == 10_000
    with_before = event(raw_payload=None, before=big)
    assert with_before.size_hint() == small.size_hint() + big.size_hint()


def test_batch_first_last_len() -> None:
    evs = tuple(event(position=Position(100, s)) for s in (1, 2, 3))
    batch = Batch(evs, backfill=True)
    assert (batch.first, batch.last, len(batch)) == (Position(100, 1), Position(100, 3), 3)
    assert batch.backfill


def test_change_is_immutable() -> None:
    ch = Change("engagement_events", "insert", {"id": 1}, None, Position(1, 1), COMMIT)
    with pytest.raises(AttributeError):  # FrozenInstanceError (an AttributeError subclass) on newer Pythons
        ch.op = "delete"  # type: ignore[misc]
