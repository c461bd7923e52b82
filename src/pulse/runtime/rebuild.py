"""Rebuild the Redis board from the source table (`pulse backfill --sinks redis`), live writers running.

The board covers only the last window (10 minutes by default), so a backfill
for Redis is not a replay of history but a repair: read the window's events
in a snapshot taken at an exact stream position (a temporary slot's exported
snapshot, `source/snapshot.py`), enrich them with the content rows of the
same snapshot, and swap them in as the whole window in one MULTI/EXEC with
that position (`RedisSink.rebuild`).

The live Redis sinks (`pulse run`, or the `pulse consume --sink redis`
workers with one position field per Kafka partition) keep running; a pause
makes the swap exact:

1. pause: a token and a deadline (Redis' TIME + `redis.rebuild_pause_timeout_s`)
   in the board's meta hash. From then on every live flush answers PAUSED
   and changes nothing (one atomic script), so every stored position is final;
2. the temporary slot is created after that: its consistent point C lies
   after the commit of every event any sink applied, so C is at or after
   every stored position;
3. the snapshot (exactly the transactions committed before C) is read; the
   pause is renewed meanwhile, so a long read does not outlive it;
4. the swap resets the window, stores C#0 in every position field (and as
   the floor of instances without one yet), lifts the pause and adds the
   snapshot. The live sinks resume with what they held back: every change at
   or below C is in the snapshot and is skipped as a replay, every change
   after it is applied. Nothing is counted twice or missed;
5. a rebuild that fails lifts its own pause; one killed leaves it to the
   deadline. A swap after the pause was lost (expired, taken over) is
   refused by Redis and changes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from psycopg2 import sql

from pulse.config import DatabaseConfig, RedisConfig, Settings
from pulse.log import get_logger
from pulse.model import EnrichedEvent, Position
from pulse.source.snapshot import exported_snapshot
from pulse.source.content import load_content
from pulse.transform.enrich import enrich_row

log = get_logger(__name__)

_COLUMNS = ("id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")

T = TypeVar("T")


def renewing(items: Iterable[T], renew: Callable[[], object], every_s: float,
             clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Yield `items`, calling `renew()` each time `every_s` seconds have passed since the last renewal."""
    due = clock() + every_s
    for item in items:
        if clock() >= due:
            renew()
            due = clock() + every_s
        yield item


def rebuild_redis(settings: Settings, clock=lambda: datetime.now(timezone.utc)) -> dict[str, Any]:
    """Rebuild the board of `settings.redis` for its window; returns a summary."""
    return rebuild_board(settings.redis, settings.database, clock)


def rebuild_board(rcfg: "RedisConfig", cfg: "DatabaseConfig",
                  clock=lambda: datetime.now(timezone.utc)) -> dict[str, Any]:
    """Rebuild the board of `rcfg` from the source database `cfg` for its window; returns a summary."""
    from pulse.sinks.redis.sink import RedisSink

    sink = RedisSink(rcfg, clock=clock)
    token = uuid.uuid4().hex
    timeout = rcfg.rebuild_pause_timeout_s
    window = timedelta(seconds=rcfg.window_s + rcfg.bucket_s)
    try:
        until_ms = sink.pause(token, timeout)
        log.info("redis.rebuild.paused", prefix=rcfg.prefix, pause=token[:8],
                 until=datetime.fromtimestamp(until_ms / 1000, timezone.utc).isoformat())
        try:
            # Created after the pause: its consistent point is at or after every stored position.
            with exported_snapshot(cfg) as (lsn, _name, conn):
                sink.renew_pause(token, timeout)  # the slot may have waited for long transactions
                with conn.cursor() as cur:
                    cache = load_content(cur, cfg.source_schema)
                now = clock()
                position = Position(lsn, 0)  # before every change of the first transaction after the snapshot
                since = now - window
                named = conn.cursor(name="pulse_rebuild")
                named.itersize = 20_000
                named.execute(
                    sql.SQL("SELECT id, content_id::text, user_id::text, event_type, event_ts, duration_ms, "
                            "device, raw_payload::text FROM {}.engagement_events WHERE event_ts >= %s").format(
                        sql.Identifier(cfg.source_schema)),
                    (since,),
                )

                def events() -> Iterator[EnrichedEvent]:
                    for row in named:
                        yield enrich_row(dict(zip(_COLUMNS, row)), op="insert", position=position, commit_ts=None,
                                         cache=cache, now=now, backfill=True)

                counted = sink.rebuild(renewing(events(), lambda: sink.renew_pause(token, timeout), timeout / 3),
                                       position, token=token)
                named.close()
        except BaseException:
            _release(sink, token)
            raise
    finally:
        sink.close()
    summary = {"events": counted, "position": str(position), "since": since.isoformat(), "prefix": rcfg.prefix}
    log.info("redis.rebuild.done", **summary)
    return summary


def _release(sink, token: str) -> None:
    """Lift this rebuild's pause after a failure (token-checked: never another rebuild's)."""
    try:
        if sink.release_pause(token):
            log.warning("redis.rebuild.pause_released", prefix=sink.config.prefix, pause=token[:8],
                        note="the rebuild failed; the live sinks resume on the board as it was")
    except Exception as exc:  # the original failure matters more; the deadline lifts the pause anyway
        log.warning("redis.rebuild.release_failed", prefix=sink.config.prefix, pause=token[:8], error=str(exc),
                    note="the pause ends by itself at its deadline (redis.rebuild_pause_timeout_s)")
