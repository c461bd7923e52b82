"""Rebuilding the Redis board from the source table: exact, flushed or not, live stream running."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pulse.config import Settings
from pulse.errors import TerminalError
from pulse.runtime.pipeline import Pipeline
from pulse.runtime.rebuild import rebuild_redis
from pulse.sinks.redis import RedisSink

from .pipeline_helpers import Running, insert_content, settings_for, wait_for
from .test_redis_sink import Clock, _assert_board_equals_sql, _config, _stats, rprefix  # noqa: F401


def _write(cur, content: list[str], n: int, now: datetime, start: int = 0) -> None:
    """`n` events spread over the last 9 minutes, in one transaction."""
    arr = "{" + ",".join(content) + "}"
    cur.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device) "
        "SELECT (%s::uuid[])[1 + (g %% %s)], gen_random_uuid(), 'pause', "
        "%s - (g %% 540) * interval '1 second', 100 + g %% 7000, (ARRAY['ios','web-chrome'])[1 + g %% 2] "
        "FROM generate_series(%s, %s) g",
        (arr, len(content), now, start, start + n - 1),
    )


def _settings(db, services, prefix: str) -> Settings:
    s = settings_for(db)
    return s.model_copy(update={"redis": _config(services["PULSE_REDIS_URL"], prefix)})


def test_a_flushed_board_is_detected_and_rebuilt_exactly(scratch_db, services, rprefix):
    prefix, client = rprefix
    cur = scratch_db.connect().cursor()
    now = Clock(datetime.now(timezone.utc))
    content = insert_content(cur, 12, length=600, ctype="video")
    running = Running(Pipeline(settings_for(scratch_db), [RedisSink(_config(services["PULSE_REDIS_URL"], prefix),
                                                                    clock=now)]))
    running.__enter__()
    try:
        _write(cur, content, 2000, now.at)
        wait_for(lambda: _stats(client, prefix).get("events", 0) >= 2000, 30, "2000 events on the board")
        for key in client.scan_iter(match=prefix + "*", count=1000):  # Redis loses everything
            client.delete(key)
        _write(cur, content, 10, now.at, start=5000)
        wait_for(lambda: running.error is not None, 30, "the sink to notice the lost board")
    finally:
        running.stop()
    assert isinstance(running.error, TerminalError) and "backfill --sinks redis" in running.error.hint
    # Changes keep arriving while nothing consumes; the rebuild takes them from the table.
    _write(cur, content, 300, now.at, start=6000)
    summary = rebuild_redis(_settings(scratch_db, services, prefix), clock=now)
    assert summary["events"] == 2310
    _assert_board_equals_sql(client, prefix, cur, now.at)
    # The pipeline resumes after the rebuild's position: no event counted twice, none missed.
    with Running(Pipeline(settings_for(scratch_db), [RedisSink(_config(services["PULSE_REDIS_URL"], prefix),
                                                               clock=now)])):
        _write(cur, content, 400, now.at, start=9000)
        wait_for(lambda: _board_total(client, prefix) == _sql_total(cur), 30, "the live events after the rebuild")
    _assert_board_equals_sql(client, prefix, cur, now.at)


def test_rebuild_is_refused_while_a_sink_writes_the_board(scratch_db, services, rprefix):
    """The snapshot's consistent point may lie behind what a live sink applied: refuse, never corrupt."""
    prefix, client = rprefix
    cur = scratch_db.connect().cursor()
    now = Clock(datetime.now(timezone.utc))
    content = insert_content(cur, 4)
    with Running(Pipeline(settings_for(scratch_db), [RedisSink(_config(services["PULSE_REDIS_URL"], prefix),
                                                               clock=now)])):
        _write(cur, content, 100, now.at)
        wait_for(lambda: _stats(client, prefix).get("events", 0) >= 100, 30, "events on the board")
        before = client.zrange(prefix + "top:10m", 0, -1, withscores=True)
        with pytest.raises(TerminalError, match="wrote the board") as info:
            rebuild_redis(_settings(scratch_db, services, prefix), clock=now)
        assert "stop `pulse run`" in info.value.hint
        assert client.zrange(prefix + "top:10m", 0, -1, withscores=True) == before
        assert "rebuilds" not in _stats(client, prefix)


def _board_total(client, prefix: str) -> float:
    return round(sum(s for _m, s in client.zrange(prefix + "events:10m", 0, -1, withscores=True)))


def _sql_total(cur) -> int:
    cur.execute("SELECT count(*) FROM engagement_events WHERE content_id IS NOT NULL")
    return cur.fetchone()[0]
