"""Enrichment: pure functions from a change and the content cache to an event.

The rules (MISSION.md):

- join `content` on `content_id` for slug, title, type and length;
- `engagement_seconds = duration_ms / 1000`, NULL when `duration_ms` is NULL;
- `engagement_pct = engagement_seconds / length_seconds` rounded to 2
  decimals half away from zero on the exact decimal value; NULL when either
  side is NULL or the length is 0.

Odd rows are never dropped: they carry what can be known and a `problems`
tuple naming what is odd. Decisions where the brief is silent:

- a negative `duration_ms` is kept as sent, but `engagement_seconds` and
  `engagement_pct` are NULL (a negative engagement would subtract from the
  board) and the problem is `negative_duration`;
- a duration beyond the content's length keeps its ratio (> 1) and is
  flagged `duration_exceeds_length`;
- a large `raw_payload` (or any column) that an UPDATE did not change is
  not resent by PostgreSQL (unchanged TOAST): taken from the old row when
  REPLICA IDENTITY FULL sent it, else its value is None and its name is in
  the event's `unchanged` (sinks keep what they have: it is not a NULL);
- source columns beyond the known ones (an `ALTER TABLE ... ADD COLUMN`)
  go to the event's `extra`, named by `model.extra_columns`, with their
  PostgreSQL types in `extra_types`; a known column the relation no longer
  has is None;
- `content` columns beyond the known ones go to `extra` too, as
  `content_<name>` (`model.content_extra_columns`), from the content row
  the event joins; a name an `engagement_events` column already uses gets
  `col_` in front;
- a negative `length_seconds` (the column has no CHECK) gives no ratio and
  is flagged `negative_length`;
- an `event_ts` Python cannot hold ('infinity', BC, year > 9999, or beyond
  the range once in UTC) is NULL and flagged `event_ts_out_of_range`;
- an `event_ts` on the first or last day of that range (0001-01-01 or
  9999-12-31 UTC: a sentinel more often than a moment) is kept as sent and
  flagged `event_ts_at_limit`.

No I/O here: the caller passes the cache and the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timezone
from typing import Any

from pulse.model import UNCHANGED_TOAST
from pulse.model import COLLISION_PREFIX, EVENT_COLUMNS, Change, EnrichedEvent, Position, extra_columns
from pulse.transform.content_cache import ContentCache, ContentInfo

NULL_CONTENT_ID = "null_content_id"
CONTENT_MISSING = "content_missing"
NEGATIVE_DURATION = "negative_duration"
ZERO_LENGTH = "zero_length"
EXCEEDS_LENGTH = "duration_exceeds_length"
MISSING_VALUES = "old_values_unknown"
PAYLOAD_NOT_SENT = "raw_payload_not_resent"  # no longer flagged: see `EnrichedEvent.unchanged`
_EVENT_FIELDS = {c: ("event_id" if c == "id" else c) for c in EVENT_COLUMNS}
_KNOWN = len(EVENT_COLUMNS)
NEGATIVE_LENGTH = "negative_length"
BAD_EVENT_TS = "event_ts_out_of_range"
EVENT_TS_AT_LIMIT = "event_ts_at_limit"
_LIMIT_DAYS = (date(1, 1, 1), date(9999, 12, 31))


def round_half_away(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded to the nearest integer, halves away from zero (exact)."""
    if denominator == 0:
        raise ZeroDivisionError("denominator is 0")
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    q, r = divmod(abs(numerator), denominator)
    if 2 * r >= denominator:
        q += 1
    return q if numerator >= 0 else -q


def engagement(duration_ms: int | None, length_seconds: int | None) -> tuple[float | None, float | None, list[str]]:
    """(engagement_seconds, engagement_pct, problems) for one event."""
    problems: list[str] = []
    if duration_ms is None:
        seconds = None
    elif duration_ms < 0:
        problems.append(NEGATIVE_DURATION)
        seconds = None
    else:
        seconds = duration_ms / 1000
    if length_seconds is None:
        pct = None
    elif length_seconds == 0:
        problems.append(ZERO_LENGTH)
        pct = None
    elif length_seconds < 0:
        problems.append(NEGATIVE_LENGTH)
        pct = None
    elif seconds is None:
        pct = None
    else:
        # pct = duration_ms / (1000 * length) to 2 decimals = hundredths / 100,
        # computed on integers so 1005 ms over 2 s gives 0.50 -> 0.5025 -> 0.50
        # and 1010 ms over 2 s gives exactly 0.505 -> 0.51.
        den = 10 * length_seconds
        q, r = divmod(duration_ms, den)  # type: ignore[operator]
        pct = (q + (2 * r >= den)) / 100  # both sides >= 0 here: half up is half away from zero
        if duration_ms > 1000 * length_seconds:  # type: ignore[operator]
            problems.append(EXCEEDS_LENGTH)
    return seconds, pct, problems


def enrich_row(
    row: dict[str, Any],
    *,
    op: str,
    position: Position,
    commit_ts: datetime | None,
    cache: ContentCache,
    now: datetime,
    backfill: bool = False,
    before: EnrichedEvent | None = None,
    extra_problems: tuple[str, ...] = (),
    types: Mapping[str, str] | None = None,
) -> EnrichedEvent:
    """Enrich one `engagement_events` row (as a column-name dict).

    `types` (column -> PostgreSQL type name, `Change.types`) names the
    row's extra columns; without it a column beyond the known ones is typed
    `text`.
    """
    get = row.get
    unchanged: list[str] = []
    if op == "update" and UNCHANGED_TOAST in row.values():
        unchanged = [_EVENT_FIELDS[k] for k, v in row.items() if v is UNCHANGED_TOAST and k in _EVENT_FIELDS
                     and k != "raw_payload"]
        if unchanged:
            row = {k: (None if v is UNCHANGED_TOAST and k in _EVENT_FIELDS and k != "raw_payload" else v)
                   for k, v in row.items()}
            get = row.get
    event = enrich_values(row["id"], get("content_id"), get("user_id"), get("event_type"), get("event_ts"),
                          get("duration_ms"), get("device"), get("raw_payload"), op, position, commit_ts, cache,
                          now, backfill, before, extra_problems)
    if len(row) > _KNOWN or (types is not None and len(types) > _KNOWN):
        event = _with_extra(event, row, types, unchanged)
    elif unchanged:
        event = event._replace(unchanged=tuple(unchanged) + event.unchanged)
    return event


def _with_extra(event: EnrichedEvent, row: dict[str, Any], types: Mapping[str, str] | None,
                unchanged: list[str]) -> EnrichedEvent:
    """`event` with the row's columns beyond EVENT_COLUMNS in `extra` (and any not resent in `unchanged`)."""
    if types is None:
        types = {k: "text" for k in row}
    extra: dict[str, Any] = {}
    extra_types: dict[str, str] = {}
    for col in extra_columns(types):
        if col.source not in row:
            continue  # an old row (FULL identity) of a relation without it
        value = row[col.source]
        if value is UNCHANGED_TOAST:
            unchanged.append(col.name)
            value = None
        extra[col.name] = value
        extra_types[col.name] = col.pg_type
    if not extra:
        return event._replace(unchanged=tuple(unchanged) + event.unchanged) if unchanged else event
    if event.extra:  # the content row's extra columns, after the event's own
        for name, value in event.extra.items():
            target = name
            while target.lower() in {k.lower() for k in extra}:
                target = COLLISION_PREFIX + target
            extra[target] = value
            extra_types[target] = event.extra_types[name]  # type: ignore[index]
    return event._replace(extra=extra, extra_types=extra_types, unchanged=tuple(unchanged) + event.unchanged)


def enrich_values(event_id: int, content_id: str | None, user_id: str | None, event_type: str | None,
                  event_ts: object, duration: int | None, device: str | None, payload: object, op: str,
                  position: Position, commit_ts: datetime | None, cache: ContentCache, now: datetime,
                  backfill: bool = False, before: EnrichedEvent | None = None,
                  extra_problems: tuple[str, ...] = ()) -> EnrichedEvent:
    """`enrich_row` on the row's values, positionally (the columnar chunks' row path calls it per row)."""
    problems: list[str] = list(extra_problems) if extra_problems else []
    info: ContentInfo | None = None
    if content_id is None:
        problems.append(NULL_CONTENT_ID)
    else:
        info = cache.get(content_id)
        if info is None:
            problems.append(CONTENT_MISSING)
    length = info.length_seconds if info is not None else None
    unchanged: tuple[str, ...] = ()
    if payload is UNCHANGED_TOAST:
        # An UPDATE that left a large (TOASTed) payload untouched does not resend
        # it; without REPLICA IDENTITY FULL its value is unknown here, and the
        # sinks keep the one they have.
        payload = None
        unchanged = ("raw_payload",)
    if event_ts is not None:
        if isinstance(event_ts, datetime) and (event_ts.year == 1 or event_ts.year == 9999):
            try:  # naive: UTC (the time zone Pulse reads in)
                at = event_ts.astimezone(timezone.utc) if event_ts.tzinfo else event_ts
                if at.date() in _LIMIT_DAYS:
                    problems.append(EVENT_TS_AT_LIMIT)
            except OverflowError:  # beyond the range once in UTC
                event_ts = "out of range"
        if not isinstance(event_ts, datetime):
            # 'infinity' or a year beyond 9999: no sink can place it in time.
            event_ts = None
            problems.append(BAD_EVENT_TS)
    seconds, pct, metric_problems = engagement(duration, length)
    if metric_problems:
        problems.extend(metric_problems)
    # Positional: this is the hottest constructor in Pulse (field order of EnrichedEvent).
    return EnrichedEvent(
        event_id, content_id, user_id, event_type, event_ts, duration, device, payload,  # type: ignore[arg-type]
        info.slug if info else None, info.title if info else None, info.content_type if info else None,
        length, seconds, pct, op, position, commit_ts, now, backfill, tuple(problems), before,  # type: ignore[arg-type]
        # A content row with extra columns: its own dicts, shared (events never change them).
        info.extra if info is not None else None, info.extra_types if info is not None else None, unchanged,
    )


def enrich_change(change: Change, cache: ContentCache, now: datetime, backfill: bool = False) -> EnrichedEvent:
    """Enrich a change of `engagement_events` (insert, update or delete).

    For UPDATE / DELETE the `before` event is built when the old row is
    complete (REPLICA IDENTITY FULL); with the default identity only the key
    is known and `old_values_unknown` is flagged on deletes.
    """
    before = None
    old = change.old
    types = change.types
    if old is not None and "event_ts" in old:
        before = enrich_row(old, op=change.op, position=change.position, commit_ts=change.commit_ts,
                            cache=cache, now=now, backfill=backfill, types=types)
    if change.op == "delete":
        row = old if old is not None else {}
        if "id" not in row:
            raise ValueError("a DELETE of engagement_events without its key: replica identity NOTHING?")
        if before is None:
            # Only the key is known: no content lookup, no metrics, nothing to flag but that.
            return EnrichedEvent(
                event_id=row["id"], content_id=None, user_id=None, event_type=None, event_ts=None,
                duration_ms=None, device=None, raw_payload=None, content_slug=None, content_title=None,
                content_type=None, length_seconds=None, engagement_seconds=None, engagement_pct=None,
                op="delete", position=change.position, commit_ts=change.commit_ts, processed_ts=now,
                backfill=backfill, problems=(MISSING_VALUES,),
            )
        return enrich_row(row, op="delete", position=change.position, commit_ts=change.commit_ts,
                          cache=cache, now=now, backfill=backfill, before=before, types=types)
    assert change.new is not None
    new = change.new
    if old is not None and before is not None and UNCHANGED_TOAST in new.values():
        # REPLICA IDENTITY FULL inlines TOASTed values in the old row: an
        # unchanged one is known after all.
        new = {k: (old.get(k, v) if v is UNCHANGED_TOAST else v) for k, v in new.items()}
    return enrich_row(new, op=change.op, position=change.position, commit_ts=change.commit_ts,
                      cache=cache, now=now, backfill=backfill, before=before, types=types)
