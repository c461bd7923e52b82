"""The columnar enrichment equals the row enrichment, value for value, odd rows included.

Two implementations agreeing is not proof that either is right, so the metrics
are also checked against MISSION.md's rules computed here with `Decimal`
(`_expected_metrics`), independently of `pulse.transform`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pyarrow as pa
import pytest

from pulse.model import Position
from pulse.sinks.bigquery.schema import to_arrow
from pulse.model_arrow import RAW_SCHEMA
from pulse.source.chunks import parse_chunk
from pulse.transform.columnar import ContentColumns, enrich_table, raw_rows
from pulse.transform.content_cache import ContentCache, ContentInfo
from pulse.transform.enrich import enrich_row

NOW = datetime(2024, 8, 2, 12, 0, tzinfo=timezone.utc)
COMMIT = datetime(2024, 8, 2, 11, 59, 59, 123456, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UTC = timezone.utc
EDGE_TS = [  # the first and last days of the range (event_ts_at_limit) and the days next to them (not flagged)
    datetime(1, 1, 1, tzinfo=_UTC), datetime(1, 1, 1, 23, 59, 59, 999999, tzinfo=_UTC), datetime(1, 1, 2, tzinfo=_UTC),
    datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=_UTC), datetime(9999, 12, 31, tzinfo=_UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=_UTC),
]


def _cache() -> ContentCache:
    return ContentCache({
        "c-ok": ContentInfo("slug-ok", "Title", "podcast", 2),
        "c-zero": ContentInfo("slug-zero", "Zero", "video", 0),
        "c-neg": ContentInfo("slug-neg", None, "newsletter", -5),
        "c-null": ContentInfo(None, None, None, None),
        "c-long": ContentInfo("slug-long", "Long", "video", 3600),
    })


def _raw(rows: list[dict]) -> pa.Table:
    out = []
    for r in rows:
        ts = r["event_ts"]
        bad = ts == "infinity"
        out.append({**{k: v for k, v in r.items() if k != "event_ts"},
                    "event_us": None if bad else (ts - EPOCH) // timedelta(microseconds=1), "event_ts_bad": bad})
    return pa.Table.from_pylist(out, schema=RAW_SCHEMA)


def _random_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    cids = ["c-ok", "c-zero", "c-neg", "c-null", "c-long", "c-missing", None]
    durations = [None, 0, 1, 999, 1000, 1005, 1010, 2000, 2001, 2499, 2500, 7_200_000, -1, -5000]
    rows = []
    for i in range(n):
        rows.append({
            "id": 1000 + i, "content_id": rng.choice(cids), "user_id": rng.choice([None, f"u-{i}"]),
            "event_type": rng.choice(["play", "pause", "finish", "click", ""]),
            "event_ts": rng.choice([NOW - timedelta(microseconds=rng.randrange(10**12)), "infinity", *EDGE_TS]),
            "duration_ms": rng.choice(durations + [rng.randrange(-10, 10**7)]),
            "device": rng.choice(["ios", None, ""]), "raw_payload": rng.choice(['{"a": 1}', None, "{}"]),
        })
    return rows


LENGTHS = {"c-ok": 2, "c-zero": 0, "c-neg": -5, "c-null": None, "c-long": 3600}  # as in _cache()


def _expected_metrics(duration_ms: int | None, content_id: str | None) -> tuple[Decimal | None, Decimal | None]:
    """(engagement_seconds, engagement_pct) by MISSION.md's rules, on exact decimals."""
    length = LENGTHS.get(content_id)  # unknown content: no length
    if duration_ms is None or duration_ms < 0:
        return None, None
    seconds = Decimal(duration_ms) / 1000
    if length is None or length <= 0:
        return seconds, None
    # Half away from zero; ROUND_HALF_UP is that for the non-negative values here.
    return seconds, (seconds / length).quantize(Decimal("0.01"), ROUND_HALF_UP)


def _by_rows(raw: pa.Table, cache: ContentCache, lsn: int, seq: int) -> pa.Table:
    events = [enrich_row(r, op="insert", position=Position(lsn, seq + i), commit_ts=COMMIT, cache=cache, now=NOW,
                         backfill=True) for i, r in enumerate(raw_rows(raw))]
    return to_arrow(events)


@pytest.mark.parametrize("seed", range(5))
def test_columns_equal_rows(seed):
    cache = _cache()
    raw = _raw(_random_rows(2000, seed))
    by_columns = enrich_table(raw, ContentColumns(cache), lsn=77, first_seq=3, commit_ts=COMMIT, now=NOW)
    by_rows = _by_rows(raw, cache, 77, 3)
    assert by_columns.schema == by_rows.schema
    for name in by_rows.column_names:
        assert by_columns.column(name).to_pylist() == by_rows.column(name).to_pylist(), name
    # And both equal the rules, computed independently (Decimal == Decimal compares values).
    want = [_expected_metrics(d, c) for d, c in zip(raw.column("duration_ms").to_pylist(),
                                                    raw.column("content_id").to_pylist())]
    got = list(zip(by_columns.column("engagement_seconds").to_pylist(),
                   by_columns.column("engagement_pct").to_pylist()))
    bad = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
    assert not bad, f"{len(bad)} rows break the rules, e.g. {bad[:3]}"


def test_timestamps_on_the_first_and_last_day_are_kept_and_flagged():
    rows = [{"id": i, "content_id": "c-ok", "user_id": None, "event_type": "play", "event_ts": ts, "duration_ms": 1,
             "device": None, "raw_payload": None} for i, ts in enumerate(EDGE_TS)]
    table = enrich_table(_raw(rows), ContentColumns(_cache()), lsn=1, first_seq=0, commit_ts=COMMIT, now=NOW)
    assert table.column("event_ts").to_pylist() == EDGE_TS
    assert table.column("problems").to_pylist() == [["event_ts_at_limit"]] * 2 + [[]] * 2 + [["event_ts_at_limit"]] * 2


def test_the_rounding_cases_of_the_brief():
    cache = _cache()
    rows = [{"id": i, "content_id": "c-ok", "user_id": None, "event_type": "play", "event_ts": NOW,
             "duration_ms": d, "device": None, "raw_payload": None} for i, d in enumerate([1005, 1010, 2500, None])]
    t = enrich_table(_raw(rows), ContentColumns(cache), lsn=1, first_seq=0, commit_ts=None, now=NOW)
    assert [str(v) if v is not None else None for v in t.column("engagement_pct").to_pylist()] == [
        "0.500000000", "0.510000000", "1.250000000", None]
    assert t.column("problems").to_pylist()[2] == ["duration_exceeds_length"]
    assert t.column("commit_ts").null_count == 4


def test_empty_chunk():
    t = enrich_table(parse_chunk(b""), ContentColumns(_cache()), lsn=1, first_seq=0, commit_ts=COMMIT, now=NOW)
    assert t.num_rows == 0


def test_copy_csv_nulls_and_empty_strings_and_quotes():
    data = (b'1,c-ok,,play,1722470400000000,f,1000,,"{""a"": ""x,\ny""}"\n'
            b'2,,u,"",,t,,"",\n')
    raw = parse_chunk(data)
    assert raw.column("user_id").to_pylist() == [None, "u"]
    assert raw.column("device").to_pylist() == [None, ""]
    assert raw.column("event_type").to_pylist() == ["play", ""]
    assert raw.column("raw_payload").to_pylist() == ['{"a": "x,\ny"}', None]
    assert raw.column("event_ts_bad").to_pylist() == [False, True]
    rows = raw_rows(raw)
    assert rows[0]["event_ts"] == datetime(2024, 8, 1, tzinfo=timezone.utc) and isinstance(rows[1]["event_ts"], str)
