"""Verify the Redis board (the maintained window) against the same window computed in SQL.

At one instant `now` (Redis' clock) verify reads every board of the window in
one MULTI/EXEC, and computes in SQL, in one snapshot of the source, each
member's value twice:

- inner: events with `event_ts` in [lowest_bucket(now) * bucket_s, now];
- outer: events with `event_ts` in [(lowest_bucket(now) - 1) * bucket_s,
  the end of the bucket holding now + future_skew_s).

The board evicts a bucket only when the sink next writes, and it counts a
bucket that starts up to `future_skew_s` ahead of the clock (later ones are
held until their time comes), so a board value is right when it lies between
the two (the board's documented one-bucket accuracy at the window's edge). Boards: `top:<window>` (seconds of
engagement per content), `top:<window>:<type>`, `events:<window>` (events per
content), `devices:<window>`, `event_types:<window>`. A member outside that
band is a finding: `missing` (SQL has it, the board does not), `extra` (the
board has it, SQL says 0), `different` (both, value outside the band).

Changes in flight are handled as for BigQuery: on findings, wait until the
slot's consumer caught up with the source's current position, then read
both sides again once.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from psycopg2 import sql

from pulse.config import Settings
from pulse.verify.report import DIFFERENT, EXTRA, MISSING, Finding, Result

_TYPES = ("podcast", "newsletter", "video")
_EPS = 1e-6


def _sql_boards(cur, schema: str, start: datetime, end: datetime, null_member: str,
                end_inclusive: bool = True) -> dict[str, dict[str, float]]:
    src = sql.SQL("{}.engagement_events e").format(sql.Identifier(schema))
    content = sql.SQL("{}.content c").format(sql.Identifier(schema))
    where = sql.SQL("e.event_ts >= %(start)s AND e.event_ts {} %(end)s").format(
        sql.SQL("<=" if end_inclusive else "<"))
    p = {"start": start, "end": end, "null": null_member}
    secs = sql.SQL("sum(CASE WHEN e.duration_ms >= 0 THEN e.duration_ms ELSE 0 END) / 1000.0")
    out: dict[str, dict[str, float]] = {"top": {}, "events": {}, "devices": {}, "event_types": {}}
    cur.execute(sql.SQL("SELECT e.content_id::text, c.content_type, {}, count(*) FROM {} LEFT JOIN {} "
                        "ON c.id = e.content_id WHERE e.content_id IS NOT NULL AND {} GROUP BY 1, 2").format(
        secs, src, content, where), p)
    for cid, ctype, s, n in cur.fetchall():
        out["top"][cid] = float(s)
        out["events"][cid] = float(n)
        if ctype is not None:
            out.setdefault(f"top:{ctype}", {})[cid] = float(s)
    for board, col in (("devices", "device"), ("event_types", "event_type")):
        cur.execute(sql.SQL("SELECT coalesce(e.{}, %(null)s), count(*) FROM {} WHERE {} GROUP BY 1").format(
            sql.Identifier(col), src, where), p)
        out[board] = {k: float(n) for k, n in cur.fetchall()}
    return out


def _read(settings: Settings):
    """(now in epoch seconds, boards from Redis, inner, outer) at one instant."""
    import redis as redis_lib

    from pulse.source.db import connect
    from pulse.sinks.redis.board import NULL_MEMBER, Keys, bucket_of, lowest_bucket

    cfg = settings.redis
    keys = Keys(cfg.prefix, cfg.window_s)
    names = {"top": keys.top, "events": keys.events, "devices": keys.devices, "event_types": keys.event_types,
             **{f"top:{t}": keys.top_type(t) for t in _TYPES}}
    client = redis_lib.Redis.from_url(cfg.url.get_secret_value(), socket_timeout=cfg.socket_timeout_s)
    conn = connect(settings.database)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # the snapshot starts here, before Redis is read
            pipe = client.pipeline(transaction=True)
            pipe.time()
            for key in names.values():
                pipe.zrange(key, 0, -1, withscores=True)
            replies = pipe.execute()
            sec, usec = replies[0]
            now = sec + usec / 1e6
            boards = {b: {m.decode(): float(s) for m, s in r} for b, r in zip(names, replies[1:])}
            lo = lowest_bucket(now, cfg.window_s, cfg.bucket_s) * cfg.bucket_s
            ts = lambda x: datetime.fromtimestamp(x, timezone.utc)  # noqa: E731
            inner = _sql_boards(cur, settings.database.source_schema, ts(lo), ts(now), NULL_MEMBER)
            newest = bucket_of(now + cfg.future_skew_s, cfg.bucket_s)
            outer = _sql_boards(cur, settings.database.source_schema, ts(lo - cfg.bucket_s),
                                ts((newest + 1) * cfg.bucket_s), NULL_MEMBER, end_inclusive=False)
        conn.rollback()
        return now, boards, inner, outer
    finally:
        conn.close()
        client.close()


def compare(boards: dict, inner: dict, outer: dict) -> list[Finding]:
    out: list[Finding] = []
    for board in sorted(set(boards) | set(inner) | set(outer)):
        got, lo, hi = boards.get(board, {}), inner.get(board, {}), outer.get(board, {})
        for member in sorted(set(got) | set(lo) | set(hi)):
            v, a, b = got.get(member), lo.get(member, 0.0), hi.get(member, 0.0)
            if v is None:
                if a > _EPS:
                    out.append(Finding(MISSING, f"{board}/{member}", detail=f"redis none, sql {a:g}..{b:g}"))
            elif not (a - _EPS <= v <= b + _EPS):
                kind = EXTRA if b <= _EPS else DIFFERENT
                out.append(Finding(kind, f"{board}/{member}", detail=f"redis {v:g}, sql {a:g}..{b:g}"))
    return out


def verify_redis(settings: Settings, settle_s: float = 30.0) -> Result:
    from pulse.source.db import connect
    from pulse.verify.bigquery import settle

    started = time.monotonic()
    _now, boards, inner, outer = _read(settings)
    findings = compare(boards, inner, outer)
    result = Result("redis", rows_source=int(sum(inner.get("events", {}).values())),
                    rows_destination=int(sum(boards.get("events", {}).values())), buckets=len(boards), queries=8, unit="boards")
    if findings:
        conn = connect(settings.database)
        conn.autocommit = True
        try:
            why = settle(conn, settings.database.slot, settle_s)
        finally:
            conn.close()
        if why is None:
            _now, boards, inner, outer = _read(settings)
            again = compare(boards, inner, outer)
            result.settled = len({f.key for f in findings} - {f.key for f in again})
            result.queries += 8
            findings = again
        else:
            result.notes.append(why)
    if findings:
        uncorrectable = _uncorrectable(settings)
        if uncorrectable:
            result.notes.append(
                f"the board could not apply {uncorrectable:,} updates or deletes (stats.uncorrectable: without "
                "REPLICA IDENTITY FULL the old row is unknown); set it (`pulse db init --replica-identity-full`) "
                "and rebuild the window (`pulse verify --sink redis --repair`)")
    result.findings = findings
    result.seconds = time.monotonic() - started
    return result


def _uncorrectable(settings: Settings) -> int:
    """The board's count of changes it could not apply (old values unknown, or never counted)."""
    import redis as redis_lib

    from pulse.sinks.redis.board import Keys

    cfg = settings.redis
    client = redis_lib.Redis.from_url(cfg.url.get_secret_value(), socket_timeout=cfg.socket_timeout_s)
    try:
        return int(client.hget(Keys(cfg.prefix, cfg.window_s).stats, "uncorrectable") or 0)
    finally:
        client.close()

