"""Helpers shared by the integration tests (redis)."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from pulse.config import RedisConfig
from pulse.model import EnrichedEvent, Position
from pulse.sinks.redis.board import NULL_MEMBER, Keys
from tests.factories import make_event

WINDOW, BUCKET, SKEW = 600, 10, 60  # the board's window, bucket and future skew in these tests


class Clock:
    """A settable clock for the sink (the pipeline's own clock stays real)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def redis_config(url: str, prefix: str) -> RedisConfig:
    return RedisConfig(url=url, prefix=prefix, window_s=WINDOW, bucket_s=BUCKET, future_skew_s=SKEW)


def board_meta(client, prefix: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(prefix + "meta").items()}


def board_stats(client, prefix: str) -> dict[str, int]:
    import redis

    try:
        return {k.decode(): int(v) for k, v in client.hgetall(prefix + "stats").items()}
    except redis.ConnectionError:  # includes "loading the dataset" right after a restart
        return {}


def board_scores(client, key: str) -> dict[str, float]:
    return {m.decode(): s for m, s in client.zrange(key, 0, -1, withscores=True)}


def sql_window(cur, now: datetime) -> dict[str, dict]:
    """The board as SQL computes it over the source table at clock time `now`."""
    lo = math.floor((now.timestamp() - WINDOW) / BUCKET) * BUCKET
    start = datetime.fromtimestamp(lo, timezone.utc)
    # The newest bucket counted is the one holding now + SKEW (later ones are held until their time).
    end = datetime.fromtimestamp((math.floor((now.timestamp() + SKEW) / BUCKET) + 1) * BUCKET, timezone.utc)
    where = "e.event_ts >= %(start)s AND e.event_ts < %(end)s"
    p = {"start": start, "end": end}
    secs = "sum(CASE WHEN e.duration_ms >= 0 THEN e.duration_ms ELSE 0 END) / 1000.0"
    cur.execute(f"SELECT e.content_id::text, {secs}, count(*) FROM engagement_events e "
                f"WHERE e.content_id IS NOT NULL AND {where} GROUP BY 1", p)
    rows = cur.fetchall()
    out: dict[str, dict] = {"top": {r[0]: float(r[1]) for r in rows}, "events": {r[0]: r[2] for r in rows}}
    cur.execute(f"SELECT c.content_type, e.content_id::text, {secs} FROM engagement_events e "
                f"JOIN content c ON c.id = e.content_id WHERE {where} GROUP BY 1, 2", p)
    for ctype, cid, s in cur.fetchall():
        out.setdefault(f"top:{ctype}", {})[cid] = float(s)
    cur.execute(f"SELECT coalesce(e.device, %(null)s), count(*) FROM engagement_events e WHERE {where} GROUP BY 1",
                {**p, "null": NULL_MEMBER})
    out["devices"] = {r[0]: r[1] for r in cur.fetchall()}
    cur.execute(f"SELECT coalesce(e.event_type, %(null)s), count(*) FROM engagement_events e WHERE {where} "
                "GROUP BY 1", {**p, "null": NULL_MEMBER})
    out["event_types"] = {r[0]: r[1] for r in cur.fetchall()}
    return out


def assert_board_equals_sql(client, prefix: str, cur, now: datetime) -> dict[str, dict]:
    want = sql_window(cur, now)
    keys = Keys(prefix, WINDOW)
    got_top = board_scores(client, keys.top)
    assert set(got_top) == set(want["top"]), (
        f"ids differ: only in Redis {sorted(set(got_top) - set(want['top']))[:5]}, "
        f"only in SQL {sorted(set(want['top']) - set(got_top))[:5]}")
    bad = {k: (got_top[k], v) for k, v in want["top"].items() if abs(got_top[k] - v) > 1e-6}
    assert not bad, f"scores differ (redis, sql): {list(bad.items())[:5]}"
    assert board_scores(client, keys.events) == {k: float(v) for k, v in want["events"].items()}
    for ctype in ("podcast", "newsletter", "video"):
        got = board_scores(client, keys.top_type(ctype))
        exp = want.get(f"top:{ctype}", {})
        assert set(got) == set(exp), ctype
        assert all(abs(got[k] - exp[k]) <= 1e-6 for k in exp), ctype
    assert board_scores(client, keys.devices) == {k: float(v) for k, v in want["devices"].items()}
    assert board_scores(client, keys.event_types) == {k: float(v) for k, v in want["event_types"].items()}
    return want


def board_event(i: int, ts: datetime, cid: str = "c1", ms: int = 1000) -> EnrichedEvent:
    return make_event(i, Position(1 << 33, i), at=ts, content_id=cid, duration_ms=ms, user_id=None,
                      event_type="play", device="ios", raw_payload=None, content_slug="s", content_title="T",
                      content_type="video", length_seconds=100, engagement_seconds=ms / 1000, engagement_pct=None)
