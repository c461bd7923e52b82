"""One factory of enriched events for tests that need events without a source database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from pulse.model import Batch, Change, EnrichedEvent, Position
from pulse.transform.content_cache import ContentCache
from pulse.transform.rows import RowChunk

CONTENT = ("11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222",
           "33333333-3333-3333-3333-333333333333")


def make_event(event_id: int, position: Position | None = None, *, at: datetime | None = None,
               content_id: str | None = "default", op: str = "insert", duration_ms: int | None = 30_000,
               backfill: bool = False, **fields) -> EnrichedEvent:
    """An enriched event as the pipeline makes it; every field can be overridden."""
    at = at or datetime.now(timezone.utc)
    cid = CONTENT[event_id % len(CONTENT)] if content_id == "default" else content_id
    values = dict(
        event_id=event_id, content_id=cid, user_id="44444444-4444-4444-4444-444444444444",
        event_type="play", event_ts=at, duration_ms=duration_ms, device="ios",
        raw_payload='{"k": 1}', content_slug=f"slug-{cid}" if cid else None,
        content_title=f"Title {cid[:4]}" if cid else None, content_type="video" if cid else None,
        length_seconds=600 if cid else None,
        engagement_seconds=duration_ms / 1000 if duration_ms is not None else None,
        engagement_pct=round(duration_ms / 1000 / 600, 2) if duration_ms is not None and cid else None,
        op=op, position=position or Position(1000 + event_id, 1), commit_ts=at, processed_ts=at,
        backfill=backfill,
    )
    values.update(fields)
    return EnrichedEvent(**values)


def make_batch(first_id: int, n: int, lsn: int, *, at: datetime | None = None, **fields) -> Batch:
    """`n` inserts of consecutive ids in one transaction at `lsn` (positions (lsn, 1..n))."""
    at = at or datetime.now(timezone.utc)
    return Batch(tuple(make_event(first_id + k, Position(lsn, k + 1), at=at - timedelta(milliseconds=k), **fields)
                       for k in range(n)))


def chunk_of(events: Sequence[EnrichedEvent]) -> RowChunk:
    """`events` as the dispatcher hands them to a sink worker: one RowChunk of their inserts.

    Its cache holds each event's content as the event shows it, so the chunk's events carry the same
    ids, positions, content fields and raw values (the enrichment computes the metrics itself).
    """
    cache = ContentCache()
    changes = []
    for ev in events:
        if ev.content_id is not None and ev.content_slug is not None:
            cache.put_row({"id": ev.content_id, "slug": ev.content_slug, "title": ev.content_title,
                           "content_type": ev.content_type, "length_seconds": ev.length_seconds})
        row = {"id": ev.event_id, "content_id": ev.content_id, "user_id": ev.user_id, "event_type": ev.event_type,
               "event_ts": ev.event_ts, "duration_ms": ev.duration_ms, "device": ev.device,
               "raw_payload": ev.raw_payload}
        changes.append(Change("engagement_events", ev.op, row, None, ev.position, ev.commit_ts))
    return RowChunk(changes, cache, events[0].processed_ts)
