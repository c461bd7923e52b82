"""Unit tests for pulse.transform.enrich: every enrichment rule of MISSION.md.

Rows are column-name dicts as `ChangeAssembler` produces them; the content
cache is built in memory. The reference for `engagement_pct` is the exact
decimal value rounded half away from zero (`Decimal.quantize` with
ROUND_HALF_UP, which is half away from zero for non-negative values).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from pulse.model import Change, EnrichedEvent, Position
from pulse.source.pgoutput import UNCHANGED_TOAST
from pulse.transform.content_cache import ContentCache, ContentInfo
from pulse.transform.enrich import (
    CONTENT_MISSING,
    EXCEEDS_LENGTH,
    MISSING_VALUES,
    NEGATIVE_DURATION,
    NULL_CONTENT_ID,
    PAYLOAD_NOT_SENT,
    ZERO_LENGTH,
    engagement,
    enrich_change,
    enrich_row,
    round_half_away,
)

NOW = datetime(2024, 8, 1, 12, 0, 5, tzinfo=timezone.utc)
COMMIT_TS = datetime(2024, 8, 1, 12, 0, 4, tzinfo=timezone.utc)
EVENT_TS = datetime(2024, 8, 1, 12, 0, 0, tzinfo=timezone.utc)
POS = Position(0x16_B374_D848, 3)

PODCAST = "11111111-1111-1111-1111-111111111111"  # 2 s long
NEWSLETTER = "22222222-2222-2222-2222-222222222222"  # length NULL
ZERO_LEN = "33333333-3333-3333-3333-333333333333"  # length 0
VIDEO = "44444444-4444-4444-4444-444444444444"  # 1 s long
UNKNOWN = "99999999-9999-9999-9999-999999999999"  # not in the cache


def reference_pct(duration_ms: int, length_seconds: int) -> float:
    exact = Decimal(duration_ms) / Decimal(1000 * length_seconds)
    return float(exact.quantize(Decimal("0.01"), ROUND_HALF_UP))


@pytest.fixture
def cache() -> ContentCache:
    return ContentCache({
        PODCAST: ContentInfo("ep-1", "Episode 1", "podcast", 2),
        NEWSLETTER: ContentInfo("weekly", "The Weekly", "newsletter", None),
        ZERO_LEN: ContentInfo("empty", "Empty", "video", 0),
        VIDEO: ContentInfo("clip", "Clip", "video", 1),
    })


def row(**changes) -> dict:
    base = {
        "id": 42,
        "content_id": PODCAST,
        "user_id": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
        "event_type": "play",
        "event_ts": EVENT_TS,
        "duration_ms": 1500,
        "device": "ios",
        "raw_payload": '{"k": 1}',
    }
    base.update(changes)
    return base


def enrich(cache: ContentCache, op: str = "insert", **changes) -> EnrichedEvent:
    return enrich_row(row(**changes), op=op, position=POS, commit_ts=COMMIT_TS, cache=cache, now=NOW)


def change(op: str, new: dict | None, old: dict | None = None) -> Change:
    return Change("engagement_events", op, new, old, POS, COMMIT_TS)  # type: ignore[arg-type]


# --- round_half_away -----------------------------------------------------------


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        (0, 7, 0),
        (1, 2, 1),  # 0.5
        (3, 2, 2),  # 1.5
        (5, 2, 3),  # 2.5: banker's rounding would give 2
        (-1, 2, -1),  # -0.5
        (-3, 2, -2),  # -1.5
        (-5, 2, -3),  # -2.5
        (5, -2, -3),  # sign on the denominator
        (-5, -2, 3),
        (7, -2, -4),  # -3.5
        (1, 3, 0),
        (2, 3, 1),
        (-1, 3, 0),
        (-2, 3, -1),
        (-4, 3, -1),  # -1.33
        (10, 5, 2),  # exact
        (-10, 5, -2),
    ],
)
def test_round_half_away(numerator: int, denominator: int, expected: int) -> None:
    assert round_half_away(numerator, denominator) == expected


def test_round_half_away_matches_decimal_for_random_signed_ints() -> None:
    rng = random.Random(20240801)
    for _ in range(5000):
        n = rng.randint(-10**9, 10**9)
        d = rng.choice([-1, 1]) * rng.randint(1, 10**6)
        expected = int((Decimal(n) / Decimal(d)).quantize(Decimal(1), ROUND_HALF_UP))
        assert round_half_away(n, d) == expected, (n, d)


def test_round_half_away_zero_denominator() -> None:
    with pytest.raises(ZeroDivisionError):
        round_half_away(1, 0)


# --- engagement(): the metric rules -------------------------------------------


@pytest.mark.parametrize(
    ("duration_ms", "length", "pct"),
    [
        (1005, 2, 0.50),  # 0.5025 -> 0.50
        (1010, 2, 0.51),  # exactly 0.505 -> 0.51
        (1015, 1, 1.02),  # exactly 1.015 -> 1.02 (float round(1.015, 2) gives 1.01)
        (5, 1, 0.01),  # 0.005 -> 0.01
        (4, 1, 0.0),  # 0.004 -> 0.00
        (15, 1, 0.02),  # 0.015 -> 0.02 (float gives 0.01)
        (30, 2, 0.02),  # 0.015 -> 0.02 (float gives 0.01)
        (45, 3, 0.02),  # 0.015 -> 0.02 (float gives 0.01)
        (1140, 2, 0.57),
        (0, 2, 0.0),
        (2000, 2, 1.0),
    ],
)
def test_pct_rounds_half_away_on_the_exact_decimal(duration_ms: int, length: int, pct: float) -> None:
    seconds, got, problems = engagement(duration_ms, length)
    assert got == pct
    assert seconds == duration_ms / 1000
    assert problems == ([EXCEEDS_LENGTH] if duration_ms > 1000 * length else [])


def test_float_rounding_would_be_wrong_for_these_cases() -> None:
    # Guards the examples above: they only test the exact-decimal rule if
    # rounding the float quotient disagrees with it. (1010 ms over 2 s is not
    # such a case: the double nearest 0.505 lies above it, so float gives 0.51 too.)
    for duration_ms, length, exact in [(1015, 1, 1.02), (15, 1, 0.02), (30, 2, 0.02), (45, 3, 0.02)]:
        assert round(duration_ms / 1000 / length, 2) == round(exact - 0.01, 2)
        assert engagement(duration_ms, length)[1] == exact


def test_pct_equals_decimal_reference_for_random_pairs() -> None:
    rng = random.Random(1234)
    pairs = [(rng.randint(0, 2**31 - 1), rng.randint(1, 100_000)) for _ in range(5000)]
    # Dense small values, where exact halves are frequent.
    pairs += [(d, n) for d in range(0, 3001) for n in (1, 2, 3, 4, 8)]
    for duration_ms, length in pairs:
        _, pct, _ = engagement(duration_ms, length)
        assert pct == reference_pct(duration_ms, length), (duration_ms, length)


def test_null_duration_gives_null_metrics() -> None:
    assert engagement(None, 2) == (None, None, [])


def test_null_length_gives_null_pct_but_keeps_seconds() -> None:
    assert engagement(1500, None) == (1.5, None, [])


def test_zero_length_gives_null_pct_and_is_flagged() -> None:
    assert engagement(1500, 0) == (1.5, None, [ZERO_LENGTH])
    assert engagement(None, 0) == (None, None, [ZERO_LENGTH])


def test_negative_duration_is_kept_out_of_the_metrics_and_flagged() -> None:
    # Module docstring: kept as sent, metrics NULL, problem `negative_duration`.
    assert engagement(-250, 2) == (None, None, [NEGATIVE_DURATION])
    assert engagement(-250, None) == (None, None, [NEGATIVE_DURATION])
    assert engagement(-250, 0) == (None, None, [NEGATIVE_DURATION, ZERO_LENGTH])


def test_duration_beyond_length_keeps_the_ratio_and_is_flagged() -> None:
    seconds, pct, problems = engagement(3000, 2)
    assert (seconds, pct) == (3.0, 1.5)
    assert problems == [EXCEEDS_LENGTH]
    # Just over the length: flagged even when the rounded ratio shows 1.0.
    assert engagement(2001, 2) == (2.001, 1.0, [EXCEEDS_LENGTH])
    # Exactly the length is not "beyond" it.
    assert engagement(2000, 2) == (2.0, 1.0, [])


def test_negative_length_is_not_turned_into_a_negative_ratio() -> None:
    seconds, pct, problems = engagement(1000, -10)
    assert seconds == 1.0
    assert pct is None
    assert problems and EXCEEDS_LENGTH not in problems


# --- enrich_row: the join and the event -----------------------------------------


def test_insert_is_joined_with_its_content(cache: ContentCache) -> None:
    ev = enrich(cache, duration_ms=1140)
    assert ev.event_id == 42
    assert ev.content_id == PODCAST
    assert ev.user_id == "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
    assert ev.event_type == "play"
    assert ev.event_ts == EVENT_TS
    assert ev.device == "ios"
    assert ev.raw_payload == '{"k": 1}'
    assert (ev.content_slug, ev.content_title, ev.content_type, ev.length_seconds) == (
        "ep-1", "Episode 1", "podcast", 2)
    assert ev.duration_ms == 1140
    assert ev.engagement_seconds == 1.14
    assert ev.engagement_pct == 0.57
    assert ev.op == "insert"
    assert ev.position == POS
    assert ev.commit_ts == COMMIT_TS
    assert ev.processed_ts == NOW
    assert ev.backfill is False
    assert ev.problems == ()
    assert ev.before is None


def test_backfill_flag_is_carried(cache: ContentCache) -> None:
    ev = enrich_row(row(), op="insert", position=POS, commit_ts=None, cache=cache, now=NOW, backfill=True)
    assert ev.backfill is True
    assert ev.commit_ts is None


def test_null_duration_event_is_delivered_with_content(cache: ContentCache) -> None:
    ev = enrich(cache, duration_ms=None, event_type="click")
    assert ev.duration_ms is None
    assert ev.engagement_seconds is None
    assert ev.engagement_pct is None
    assert ev.content_type == "podcast"
    assert ev.length_seconds == 2
    assert ev.problems == ()


def test_newsletter_with_null_length(cache: ContentCache) -> None:
    ev = enrich(cache, content_id=NEWSLETTER, duration_ms=30_000)
    assert ev.content_type == "newsletter"
    assert ev.length_seconds is None
    assert ev.engagement_seconds == 30.0
    assert ev.engagement_pct is None
    assert ev.problems == ()


def test_zero_length_content(cache: ContentCache) -> None:
    ev = enrich(cache, content_id=ZERO_LEN, duration_ms=500)
    assert ev.length_seconds == 0
    assert ev.engagement_seconds == 0.5
    assert ev.engagement_pct is None
    assert ev.problems == (ZERO_LENGTH,)


def test_missing_content_is_delivered_and_flagged(cache: ContentCache) -> None:
    ev = enrich(cache, content_id=UNKNOWN, duration_ms=1500)
    assert ev.content_id == UNKNOWN
    assert (ev.content_slug, ev.content_title, ev.content_type, ev.length_seconds) == (None, None, None, None)
    assert ev.engagement_seconds == 1.5  # what can be known is still computed
    assert ev.engagement_pct is None
    assert ev.problems == (CONTENT_MISSING,)


@pytest.mark.parametrize("ts, kept, problem", [
    ("infinity", None, "event_ts_out_of_range"),
    ("10000-01-01 00:00:00+00", None, "event_ts_out_of_range"),
    # a datetime that leaves the range on its way to UTC (10000-01-01 00:59:59 UTC): no OverflowError
    (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1))), None, "event_ts_out_of_range"),
    (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), None, "event_ts_out_of_range"),
    (datetime(1, 1, 1, tzinfo=timezone.utc), datetime(1, 1, 1, tzinfo=timezone.utc), "event_ts_at_limit"),
    (datetime(1, 1, 1, 12), datetime(1, 1, 1, 12), "event_ts_at_limit"),  # naive: read as UTC
    (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc), datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc),
     "event_ts_at_limit"),
    # 9999-12-31 09:59:59 UTC: the last day, kept with its offset
    (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=14))),
     datetime(9999, 12, 31, 9, 59, 59, tzinfo=timezone.utc), "event_ts_at_limit"),
    (datetime(1, 1, 2, tzinfo=timezone.utc), datetime(1, 1, 2, tzinfo=timezone.utc), None),
    (datetime(9999, 12, 30, 23, 59, 59, tzinfo=timezone.utc), datetime(9999, 12, 30, 23, 59, 59, tzinfo=timezone.utc),
     None),
])
def test_event_ts_at_the_edges_is_delivered_and_flagged(cache: ContentCache, ts, kept, problem) -> None:
    ev = enrich(cache, event_ts=ts, duration_ms=1000)
    assert ev.event_ts == kept
    assert ev.problems == ((problem,) if problem else ())
    assert ev.engagement_seconds == 1.0  # the rest of the row is enriched as usual


def test_null_content_id_is_delivered_and_flagged(cache: ContentCache) -> None:
    ev = enrich(cache, content_id=None, duration_ms=1500)
    assert ev.content_id is None
    assert ev.content_type is None
    assert ev.engagement_seconds == 1.5
    assert ev.engagement_pct is None
    assert ev.problems == (NULL_CONTENT_ID,)
    assert CONTENT_MISSING not in ev.problems


def test_negative_duration_event(cache: ContentCache) -> None:
    ev = enrich(cache, duration_ms=-1)
    assert ev.duration_ms == -1  # kept as sent
    assert ev.engagement_seconds is None
    assert ev.engagement_pct is None
    assert ev.content_type == "podcast"
    assert ev.problems == (NEGATIVE_DURATION,)


def test_duration_beyond_length_event(cache: ContentCache) -> None:
    ev = enrich(cache, content_id=VIDEO, duration_ms=2500)
    assert ev.engagement_pct == 2.5
    assert ev.problems == (EXCEEDS_LENGTH,)


def test_problems_accumulate_in_rule_order(cache: ContentCache) -> None:
    ev = enrich(cache, content_id=None, duration_ms=-5, device=None)
    assert ev.problems == (NULL_CONTENT_ID, NEGATIVE_DURATION)


def test_extra_problems_come_first(cache: ContentCache) -> None:
    ev = enrich_row(row(content_id=UNKNOWN), op="insert", position=POS, commit_ts=COMMIT_TS, cache=cache,
                    now=NOW, extra_problems=("from_caller",))
    assert ev.problems == ("from_caller", CONTENT_MISSING)


@pytest.mark.parametrize(
    ("duration_ms", "content_id", "pct"),
    [(1005, PODCAST, 0.50), (1010, PODCAST, 0.51), (1015, VIDEO, 1.02), (5, VIDEO, 0.01), (4, VIDEO, 0.0)],
)
def test_event_pct_rounding(cache: ContentCache, duration_ms: int, content_id: str, pct: float) -> None:
    assert enrich(cache, duration_ms=duration_ms, content_id=content_id).engagement_pct == pct


def test_unchanged_toast_payload_is_marked_unchanged_not_null(cache: ContentCache) -> None:
    ev = enrich(cache, op="update", raw_payload=UNCHANGED_TOAST)
    assert ev.raw_payload is None
    assert ev.unchanged == ("raw_payload",)
    assert ev.problems == ()  # not a problem any more: every sink keeps the stored value
    assert ev.engagement_pct == 0.75  # the rest of the row is enriched as usual
    doc = ev.to_dict()  # the sentinel never reaches serialisation
    assert "raw_payload" not in doc and doc["unchanged"] == ["raw_payload"]


def test_null_payload_is_not_flagged(cache: ContentCache) -> None:
    ev = enrich(cache, raw_payload=None)
    assert ev.raw_payload is None
    assert ev.problems == ()


def test_the_cache_is_read_at_enrichment_time(cache: ContentCache) -> None:
    before = enrich(cache, content_id=UNKNOWN)
    cache.apply("insert", {"id": UNKNOWN, "slug": "late", "title": "Late", "content_type": "video",
                           "length_seconds": 3}, None)
    after = enrich(cache, content_id=UNKNOWN, duration_ms=1500)
    assert before.problems == (CONTENT_MISSING,)
    assert after.problems == ()
    assert (after.content_slug, after.engagement_pct) == ("late", 0.5)


# --- enrich_change: inserts, updates, deletes ----------------------------------------


def test_enrich_change_insert(cache: ContentCache) -> None:
    ev = enrich_change(change("insert", row(duration_ms=1010)), cache, NOW)
    assert ev.op == "insert"
    assert ev.engagement_pct == 0.51
    assert ev.position == POS
    assert ev.commit_ts == COMMIT_TS
    assert ev.before is None
    assert enrich_change(change("insert", row()), cache, NOW, backfill=True).backfill is True


def test_update_without_old_values(cache: ContentCache) -> None:
    # REPLICA IDENTITY DEFAULT, key unchanged: pgoutput sends no old tuple.
    ev = enrich_change(change("update", row(duration_ms=2000), old=None), cache, NOW)
    assert ev.op == "update"
    assert ev.engagement_pct == 1.0
    assert ev.before is None
    assert ev.problems == ()


def test_update_with_key_only_old_values(cache: ContentCache) -> None:
    # REPLICA IDENTITY DEFAULT with a key change: `old` holds just the key.
    ev = enrich_change(change("update", row(id=43), old={"id": 42}), cache, NOW)
    assert ev.event_id == 43
    assert ev.before is None
    assert MISSING_VALUES not in ev.problems


def test_update_with_full_old_values_builds_before(cache: ContentCache) -> None:
    old = row(duration_ms=1000, content_id=VIDEO, device="web-safari")
    ev = enrich_change(change("update", row(duration_ms=1500), old=old), cache, NOW)
    assert ev.op == "update"
    assert (ev.content_id, ev.engagement_pct, ev.device) == (PODCAST, 0.75, "ios")
    before = ev.before
    assert before is not None
    assert before.event_id == 42
    assert (before.content_id, before.content_type, before.engagement_seconds, before.engagement_pct) == (
        VIDEO, "video", 1.0, 1.0)
    assert before.device == "web-safari"
    assert before.position == POS
    assert before.before is None
    assert ev.problems == ()


def test_update_before_carries_its_own_problems(cache: ContentCache) -> None:
    old = row(content_id=UNKNOWN, duration_ms=-3)
    ev = enrich_change(change("update", row(), old=old), cache, NOW)
    assert ev.problems == ()
    assert ev.before is not None
    assert ev.before.problems == (CONTENT_MISSING, NEGATIVE_DURATION)


def test_key_only_delete_flags_old_values_unknown(cache: ContentCache) -> None:
    ev = enrich_change(change("delete", None, old={"id": 42}), cache, NOW)
    assert ev.op == "delete"
    assert ev.event_id == 42
    assert ev.problems == (MISSING_VALUES,)
    assert ev.before is None
    for name in ("content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload",
                 "content_slug", "content_title", "content_type", "length_seconds", "engagement_seconds",
                 "engagement_pct"):
        assert getattr(ev, name) is None, name
    assert (ev.position, ev.commit_ts, ev.processed_ts) == (POS, COMMIT_TS, NOW)


def test_full_delete_is_enriched_from_old_values(cache: ContentCache) -> None:
    old = row(duration_ms=1010)
    ev = enrich_change(change("delete", None, old=old), cache, NOW, backfill=True)
    assert ev.op == "delete"
    assert ev.event_id == 42
    assert (ev.content_type, ev.engagement_seconds, ev.engagement_pct) == ("podcast", 1.01, 0.51)
    assert ev.problems == ()
    assert ev.backfill is True
    assert ev.before is not None
    assert ev.before.event_id == 42
    assert ev.before.engagement_pct == 0.51
    assert ev.before.backfill is True


def test_delete_without_key_is_an_error(cache: ContentCache) -> None:
    with pytest.raises(ValueError, match="replica identity"):
        enrich_change(change("delete", None, old=None), cache, NOW)


def test_unchanged_toast_payload_is_taken_from_full_old_values(cache: ContentCache) -> None:
    big = '{"blob": "' + "x" * 5000 + '"}'
    old = row(raw_payload=big, duration_ms=1000)
    ev = enrich_change(change("update", row(raw_payload=UNCHANGED_TOAST, duration_ms=1500), old=old), cache, NOW)
    assert ev.raw_payload == big
    assert PAYLOAD_NOT_SENT not in ev.problems


def test_engagement_pct_is_round_half_away_of_the_exact_ratio() -> None:
    import random

    rng = random.Random(11)
    for _ in range(20_000):
        duration, length = rng.randrange(0, 10**7), rng.randrange(1, 10**4)
        _, pct, _ = engagement(duration, length)
        assert pct == round_half_away(duration, 10 * length) / 100, (duration, length)
