"""Rebuild the Redis board from the source table (`pulse backfill --sinks redis`).

The board covers only the last window (10 minutes by default), so a backfill
for Redis is not a replay of history but a repair: read the window's events
in a snapshot taken at an exact stream position (a temporary slot's exported
snapshot, `source/snapshot.py`), enrich them with the content rows of the
same snapshot, and swap them in as the whole window in one MULTI/EXEC with
that position (`RedisSink.rebuild`). The live stream continues after it:
every change at or below the position is in the snapshot and is skipped by
the sink as a replay; every change after it is not, and is counted. Nothing
is counted twice or missed, whether `pulse run` is streaming meanwhile or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg2 import sql

from pulse.config import Settings
from pulse.errors import TerminalError
from pulse.log import get_logger
from pulse.model import EnrichedEvent, Position
from pulse.source.snapshot import exported_snapshot
from pulse.transform.content_cache import load_content
from pulse.transform.enrich import enrich_row

log = get_logger(__name__)

_COLUMNS = ("id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")


LIVE_WITHIN_S = 10.0


def _refuse_if_live(settings: Settings, sink) -> None:
    """Refuse while a Redis sink is writing the board.

    The snapshot's consistent point can lie *behind* what a live sink already
    applied (the other slot decodes ahead), and the swap would then drop those
    events from the window. Until the sink can be paused around the snapshot,
    the rebuild runs with the Redis writers stopped (the usual case: a lost
    board stopped them with a terminal error).
    """
    meta = sink.client.hgetall(sink.keys.meta)
    updated = meta.get(b"updated_ms")
    if updated is not None:
        age = datetime.now(timezone.utc).timestamp() - int(updated) / 1000
        if age < LIVE_WITHIN_S:
            raise TerminalError(
                f"a Redis sink wrote the board under {settings.redis.prefix!r} {age:.1f}s ago",
                hint="stop `pulse run` (or the `pulse consume --sink redis` workers), run the rebuild, start them "
                     "again: they resume after the rebuild's position",
            )


def rebuild_redis(settings: Settings, clock=lambda: datetime.now(timezone.utc)) -> dict[str, Any]:
    """Rebuild the board of `settings.redis` for its window; returns a summary."""
    from pulse.sinks.redis import RedisSink

    sink = RedisSink(settings.redis, clock=clock)
    cfg = settings.database
    _refuse_if_live(settings, sink)
    window = timedelta(seconds=settings.redis.window_s + settings.redis.bucket_s)
    try:
        with exported_snapshot(cfg) as (lsn, _name, conn):
            with conn.cursor() as cur:
                cache = load_content(cur, cfg.source_schema)
            now = clock()
            position = Position(lsn, 0)  # before every change of the first transaction after the snapshot
            since = now - window
            named = conn.cursor(name="pulse_rebuild")
            named.itersize = 20_000
            named.execute(
                sql.SQL("SELECT id, content_id::text, user_id::text, event_type, event_ts, duration_ms, device, "
                        "raw_payload::text FROM {}.engagement_events WHERE event_ts >= %s").format(
                    sql.Identifier(cfg.source_schema)),
                (since,),
            )

            def events() -> Iterator[EnrichedEvent]:
                for row in named:
                    yield enrich_row(dict(zip(_COLUMNS, row)), op="insert", position=position, commit_ts=None,
                                     cache=cache, now=now, backfill=True)

            counted = sink.rebuild(events(), position)
            named.close()
    finally:
        sink.close()
    summary = {"events": counted, "position": str(position), "since": since.isoformat(), "prefix": settings.redis.prefix}
    log.info("redis.rebuild.done", **summary)
    return summary
