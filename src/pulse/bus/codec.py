"""The Kafka wire format of an enriched event: JSON, the contract's field names.

The value is `EnrichedEvent.to_dict()` plus `before` (the old values, when the
replica identity sent them), encoded with orjson (extra source columns as
fields of their own, named in `extra_types`; fields not resent named in
`unchanged` and left out: see `EnrichedEvent.to_dict`); the key is the content id
(events of one content stay in one partition, in order); headers carry the
source position so a consumer can skip what its sink already holds without
decoding the value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from pulse.model import EnrichedEvent, Position

POSITION_HEADER = "pulse-position"
BACKFILL_HEADER = "pulse-backfill"
# On backfill events: the comma-separated sinks the backfill is for.
TARGETS_HEADER = "pulse-targets"
NULL_KEY = b"__null_content__"
# Events without a content id go to this partition; a key-only DELETE goes to
# every partition, its copies marked with BROADCAST_HEADER.
NULL_PARTITION = 0
BROADCAST_HEADER = "pulse-broadcast"
# A dead-lettered event published again in full (`pulse dlq replay --sink kafka`):
# it carries its original position, at or below what the consumers hold.
REPLAY_HEADER = "pulse-replay"


def _ts(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def to_dict(event: EnrichedEvent) -> dict[str, Any]:
    doc = event.to_dict()
    doc["before"] = event.before.to_dict() if event.before is not None else None
    return doc


def from_dict(doc: dict[str, Any]) -> EnrichedEvent:
    before = doc.get("before")
    extra_types = doc.get("extra_types") or None
    extra = {k: doc.get(k) for k in extra_types} if extra_types else None
    return EnrichedEvent(
        event_id=doc["event_id"],
        content_id=doc.get("content_id"),
        user_id=doc.get("user_id"),
        event_type=doc.get("event_type"),
        event_ts=_ts(doc.get("event_ts")),
        duration_ms=doc.get("duration_ms"),
        device=doc.get("device"),
        raw_payload=doc.get("raw_payload"),  # absent when unchanged
        content_slug=doc["content_slug"],
        content_title=doc["content_title"],
        content_type=doc["content_type"],
        length_seconds=doc["length_seconds"],
        engagement_seconds=doc["engagement_seconds"],
        engagement_pct=doc["engagement_pct"],
        op=doc["op"],
        position=Position(doc["source_lsn"], doc["source_seq"]),
        commit_ts=_ts(doc["commit_ts"]),
        processed_ts=_ts(doc["processed_ts"]),  # type: ignore[arg-type]
        backfill=doc["backfill"],
        problems=tuple(doc["problems"]),
        before=from_dict(before) if before else None,
        extra=extra,
        extra_types=extra_types,
        unchanged=tuple(doc.get("unchanged") or ()),
    )


def encode(event: EnrichedEvent, targets: tuple[str, ...] | None = None) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of one event; `targets`: a backfill's destinations."""
    key = event.content_id.encode() if event.content_id else NULL_KEY
    headers = [(POSITION_HEADER, str(event.position).encode())]
    if event.backfill:
        headers.append((BACKFILL_HEADER, b"1"))
        if targets:
            headers.append((TARGETS_HEADER, ",".join(targets).encode()))
    return key, orjson.dumps(to_dict(event)), headers


def is_for(headers: list[tuple[str, bytes]] | None, kind: str) -> bool:
    """False for a backfill event whose targets leave out sink kind `kind`."""
    for name, value in headers or ():
        if name == TARGETS_HEADER:
            return kind in value.decode().split(",")
    return True


def decode(value: bytes) -> EnrichedEvent:
    return from_dict(orjson.loads(value))


def is_broadcast_copy(headers: list[tuple[str, bytes]] | None) -> bool:
    return any(name == BROADCAST_HEADER for name, _ in headers or ())


def header_position(headers: list[tuple[str, bytes]] | None) -> Position | None:
    for name, raw in headers or ():
        if name == POSITION_HEADER:
            return Position.parse(raw.decode())
    return None


def is_replay(headers: list[tuple[str, bytes]] | None) -> bool:
    return any(name == REPLAY_HEADER for name, _ in headers or ())
