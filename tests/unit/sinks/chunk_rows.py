"""Raw chunks for the columnar encoders' tests: generated rows, odd rows, and the content catalogue."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import orjson
import pyarrow as pa

from pulse.generator.anomalies import ODD_DEVICES, AnomalyInjector, huge_debug_dump
from pulse.generator.content import ContentItem
from pulse.generator.events import EventFactory
from pulse.model_arrow import RAW_SCHEMA
from pulse.transform.columnar import EventChunk
from pulse.transform.content_cache import ContentCache, ContentInfo

_US_MIN, _US_END = -62135596800000000, 253402300800000000  # 0001-01-01, 10000-01-01 UTC


UTC = timezone.utc


NOW = datetime(2024, 8, 2, 12, 0, 0, 250, tzinfo=UTC)


def _catalogue(rng: random.Random) -> list[ContentItem]:
    titles = ['Plain title', 'He said "hi"', "back\\slash", "Ünïcödé ✓ 🎧", "tab\tin title", "", "x" * 300]
    items = []
    for i in range(40):
        items.append(ContentItem(
            id=str(rng.getrandbits(128)) if i % 13 == 0 else "%032x" % rng.getrandbits(128),
            slug=f"slug-{i}", title=rng.choice(titles) + f" {i}", content_type=rng.choice(["podcast", "video",
                                                                                           "newsletter"]),
            length_seconds=rng.choice([None, 0, -3, 1, 7, 60, 3600, 10**9]), publish_ts=NOW))
    return items


def _cache(items: list[ContentItem], rng: random.Random) -> ContentCache:
    rows = {}
    for c in items:
        rows[c.id] = ContentInfo(rng.choice([c.slug, None]), rng.choice([c.title, None]),
                                 rng.choice([c.content_type, None, 'ty"pe']), c.length_seconds)
    return ContentCache(rows)


def _jsonb_text(value: object) -> str:
    """PostgreSQL's jsonb output: keys by (length, bytes), `", "` and `": "` separators."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(orjson.dumps(k).decode() + ": " + _jsonb_text(value[k]) for k in keys) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_jsonb_text(v) for v in value) + "]"
    return orjson.dumps(value).decode()


_ODD_STRINGS = ['', 'a"b', "c\\d", "new\nline", "\x00nul", "\x1f", "\x7fdel", "\u2028sep", "é", "🎧", "\\\"",
                "</script>", "a, b", '": "', ", \""]


_ODD_PAYLOADS = [
    None, "{}", "[]", "1", '"text"', "null", "not json", "{bad", '{"a": 1.5}', '{"a": 1.50}', '{"a": 1e3}',
    '{"a": -0}', '{"a": 12345678901234567890}', '{"a": 123456789012345678}', '{"a": {"b": 1}}',
    '{"a": [1, 2]}', '{"a":1}', '{ "a": 1 }', '{"a": 1, "a": 2}', '{"b": 1, "a": 2, "aa": 3, "a!": 4}',
    '{"k": "v\\n"}', '{"k": "\\u00e9"}', '{"é": "ü", "e": "u"}', '{"a": true, "b": false, "c": null}',
    '{"": ""}', '{"a, \\"b": 1}', '{"s": "x, \\"y\\": 1"}', '{"a": "x, y", "b": "p: q"}', '{"a": 1}  ',
]


def _stamp(rng: random.Random) -> int | None:
    pick = rng.random()
    if pick < 0.05:
        return None
    if pick < 0.10:
        return rng.choice([_US_MIN, _US_MIN + 1, _US_END - 1, _US_END - 1_000_000, 0, -1, -1_000_000])
    if pick < 0.30:
        return rng.randrange(_US_MIN, _US_END) // 1_000_000 * 1_000_000  # a whole second: no fraction
    return rng.randrange(_US_MIN, _US_END)


def _odd_rows(n: int, rng: random.Random, cids: list[str | None], start_id: int) -> list[dict]:
    rows = []
    for i in range(n):
        us = _stamp(rng)
        rows.append({
            "id": start_id + i, "content_id": rng.choice(cids + [None, "unknown-content", "c\"q", "c\nq"]),
            "user_id": rng.choice([None, "u-1", *_ODD_STRINGS]), "event_type": rng.choice(["play", None,
                                                                                            *_ODD_STRINGS]),
            "event_us": us, "event_ts_bad": us is None and rng.random() < 0.5,
            "duration_ms": rng.choice([None, 0, 1, 5, 999, 1000, 1005, 1010, -1, -600_000, 2**31 - 1,
                                       10**15 - 1, 10**15, 2**62, rng.randrange(0, 10**rng.randrange(1, 16))]),
            "device": rng.choice([None, *ODD_DEVICES, *_ODD_STRINGS]),
            "raw_payload": rng.choice(_ODD_PAYLOADS + [_jsonb_text(
                {"x": rng.choice(_ODD_STRINGS), rng.choice(_ODD_STRINGS): rng.randrange(-99, 99)})]),
        })
    return rows


def _generated_rows(n: int, rng: random.Random, items: list[ContentItem], start_id: int) -> list[dict]:
    lengths = {c.id: c.length_seconds for c in items}
    factory = EventFactory([c for c in items if c.length_seconds not in (0, None)] or items, rng, users=200)
    injector = AnomalyInjector(random.Random(rng.random()), 0.5, lengths=lengths,
                               zero_length_ids=[c.id for c in items if c.length_seconds == 0])
    injector._dump = huge_debug_dump()[:20_000]  # the huge payload's shape, smaller (the test's memory)
    events = next(factory.history(n, 1_700_000_000_000, 1_700_000_600_000, chunk_rows=n, transform=injector))
    rows = []
    for i, ev in enumerate(events):
        us = ev.event_ts_ms * 1000 + (0 if rng.random() < 0.3 else rng.randrange(1000))
        rows.append({"id": start_id + i, "content_id": ev.content_id, "user_id": ev.user_id,
                     "event_type": ev.event_type, "event_us": us, "event_ts_bad": False,
                     "duration_ms": ev.duration_ms, "device": ev.device, "raw_payload": _jsonb_text(ev.raw_payload)})
    return rows


def _chunk(rows: list[dict], cache: ContentCache, rng: random.Random, backfill: bool) -> EventChunk:
    raw = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
    commit = rng.choice([None, NOW - timedelta(microseconds=rng.randrange(10**9)), datetime(2024, 8, 2, tzinfo=UTC)])
    return EventChunk(raw, lsn=rng.randrange(1, 2**40), first_seq=rng.randrange(0, 2**20), commit_ts=commit,
                      now=rng.choice([NOW, NOW.replace(microsecond=0)]), cache=cache, backfill=backfill)
