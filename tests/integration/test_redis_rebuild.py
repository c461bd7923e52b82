"""Rebuilding the Redis board from the source table: exact, flushed or not, live writers running.

The rebuild pauses the live Redis sinks around its snapshot (docs/sinks/redis.md, "Rebuilding"): these
tests rebuild while a pipeline, or Kafka workers with one position field per partition, keep writing,
and compare the board with SQL over the source table at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest

from pulse.config import KafkaConfig, Settings
from pulse.errors import TerminalError, TransientError
from pulse.model import Batch, Position
from pulse.runtime.pipeline import Pipeline
from pulse.runtime.rebuild import rebuild_redis
from pulse.sinks.redis.sink import RedisSink
from pulse.source.slot import ensure_slot

from .pipeline_helpers import Running, insert_content, settings_for, wait_for
from .kafka_helpers import spawn_pulse, stop_process
from .redis_helpers import Clock, assert_board_equals_sql, board_event, board_meta, board_scores, board_stats, redis_config


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
    return s.model_copy(update={"redis": redis_config(services["PULSE_REDIS_URL"], prefix)})


def test_a_flushed_board_is_detected_and_rebuilt_exactly(scratch_db, services, rprefix):
    prefix, client = rprefix
    cur = scratch_db.connect().cursor()
    now = Clock(datetime.now(timezone.utc))
    content = insert_content(cur, 12, length=600, ctype="video")
    running = Running(Pipeline(settings_for(scratch_db), [RedisSink(redis_config(services["PULSE_REDIS_URL"], prefix),
                                                                    clock=now)]))
    running.__enter__()
    try:
        _write(cur, content, 2000, now.at)
        wait_for(lambda: board_stats(client, prefix).get("events", 0) >= 2000, 30, "2000 events on the board")
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
    assert_board_equals_sql(client, prefix, cur, now.at)
    # The pipeline resumes after the rebuild's position: no event counted twice, none missed.
    with Running(Pipeline(settings_for(scratch_db), [RedisSink(redis_config(services["PULSE_REDIS_URL"], prefix),
                                                               clock=now)])):
        _write(cur, content, 400, now.at, start=9000)
        wait_for(lambda: _board_total(client, prefix) == _sql_total(cur), 30, "the live events after the rebuild")
    assert_board_equals_sql(client, prefix, cur, now.at)


def _board_total(client, prefix: str) -> float:
    return round(sum(s for _m, s in client.zrange(prefix + "events:10m", 0, -1, withscores=True)))


def _sql_total(cur) -> int:
    cur.execute("SELECT count(*) FROM engagement_events WHERE content_id IS NOT NULL")
    return cur.fetchone()[0]


# -- rebuilds while live sinks write ------------------------------------------------------------------


class _Writer(threading.Thread):
    """Inserts `per_txn` events per transaction, from its own connection, until stopped."""

    def __init__(self, db, content: list[str], at: datetime, start: int, per_txn: int = 25) -> None:
        super().__init__(daemon=True)
        self.db, self.content, self.at, self.per_txn = db, content, at, per_txn
        self.written = 0
        self.start_id = start
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = self.db.connect()
        try:
            cur = conn.cursor()
            while not self.stopping.is_set():
                _write(cur, self.content, self.per_txn, self.at, start=self.start_id + self.written)
                self.written += self.per_txn
                self.stopping.wait(0.01)  # pacing: a steady stream of small transactions
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


@contextmanager
def _writing(db, content: list[str], at: datetime, start: int) -> Iterator[_Writer]:
    writer = _Writer(db, content, at, start)
    writer.start()
    try:
        yield writer
    finally:
        writer.stopping.set()
        writer.join(30)
    assert writer.error is None, writer.error
    assert writer.written > 0


class _RecordingRedisSink(RedisSink):
    """The real sink, recording every position it reports to the runtime."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.reported: list[Position] = []

    def write(self, batch: Batch) -> Position:
        pos = super().write(batch)
        self.reported.append(pos)
        return pos

    def flush(self) -> Position | None:
        pos = super().flush()
        if pos is not None:
            self.reported.append(pos)
        return pos


def _rebuild_during(writer: _Writer, settings: Settings, clock, times: int, every: int) -> list[dict]:
    """`times` rebuilds, each after `every` more live events were written."""
    summaries = []
    for i in range(times):
        target = (i + 1) * every
        wait_for(lambda: writer.written >= target or writer.error, 60, f"{target} live events")
        summaries.append(rebuild_redis(settings, clock=clock))
    return summaries


def _every_pause_reaches(monkeypatch, live) -> None:
    """Make each rebuild's pause one that every live sink waits in, so the pause counts are exact.

    Without this, whether a live sink flushes inside a short pause is timing: a fast rebuild may
    swap before any sink tried, and the test would not exercise writing during a rebuild at all.
    Each rebuild's `pause()` first waits until every live sink has left the previous pause, and
    returns only once every live sink answered PAUSED (the writer keeps them flushing).
    """
    real_pause = RedisSink.pause

    def pause(self, token: str, timeout_s: float) -> int:
        wait_for(lambda: not any(s.status()["paused"] for s in live()), 30,
                 "the live sinks to leave the previous pause")
        until = real_pause(self, token, timeout_s)
        wait_for(lambda: all(s.status()["paused"] for s in live()), 30, "every live sink to see the pause")
        return until

    monkeypatch.setattr(RedisSink, "pause", pause)


def _settle_and_compare(client, prefix: str, cur, at: datetime) -> None:
    try:
        wait_for(lambda: _board_total(client, prefix) == _sql_total(cur), 60, "the board to catch up")
    finally:  # on a timeout too: the comparison says which ids and scores differ
        assert_board_equals_sql(client, prefix, cur, at)


def test_rebuilds_while_the_pipeline_writes_leave_the_board_exact(scratch_db, services, rprefix, monkeypatch):
    prefix, client = rprefix
    cur = scratch_db.connect().cursor()
    now = Clock(datetime.now(timezone.utc))
    content = insert_content(cur, 12, length=600, ctype="video")
    settings = _settings(scratch_db, services, prefix)
    sink = _RecordingRedisSink(settings.redis, clock=now)
    _every_pause_reaches(monkeypatch, lambda: [sink])
    with Running(Pipeline(settings_for(scratch_db), [sink])) as running:
        _write(cur, content, 3000, now.at)  # a window worth rebuilding
        wait_for(lambda: _board_total(client, prefix) == 3000, 30, "3000 events on the board")
        with _writing(scratch_db, content, now.at, start=10_000) as writer:
            summaries = _rebuild_during(writer, settings, now, times=3, every=400)
        _settle_and_compare(client, prefix, cur, now.at)
    assert running.error is None  # no LOST, no REGRESSED: the pipeline ran through
    assert board_stats(client, prefix)["rebuilds"] == 3
    assert all(s["events"] >= 3000 for s in summaries)
    # The runtime saw the sink's position only move forward, and it ends at the last event.
    assert sink.reported == sorted(sink.reported)
    meta = board_meta(client, prefix)
    assert "pause_token" not in meta and meta["rebuilt_epoch"] == meta["epoch"] == sink.epoch
    # The live sink waited in each of the three pauses (so it did write while a rebuild ran) and left it.
    assert sink.status()["rebuild pauses"] == 3 and not sink.status()["paused"]


def test_rebuilds_while_kafka_workers_write_cover_every_partition(scratch_db, services, kafka_env, rprefix,
                                                                  monkeypatch):
    """`pulse consume --sink redis`: one sink instance and position field per partition, all paused and moved."""
    from pulse.bus.consumer import SinkConsumer

    prefix, client = rprefix
    cur = scratch_db.connect().cursor()
    now = Clock(datetime.now(timezone.utc))
    # 64 content ids (the message key) over 4 partitions: every partition gets events (P(one empty) ~ 1e-7).
    content = insert_content(cur, 64, length=600, ctype="podcast")
    kafka = KafkaConfig(bootstrap=kafka_env["PULSE_KAFKA_BOOTSTRAP"], topic=kafka_env["PULSE_KAFKA__TOPIC"],
                        content_topic=kafka_env["PULSE_KAFKA__CONTENT_TOPIC"], partitions=4,
                        group_prefix=kafka_env["PULSE_KAFKA__GROUP_PREFIX"])
    settings = _settings(scratch_db, services, prefix).model_copy(update={"kafka": kafka})
    instances: list[RedisSink] = []

    def factory(name: str) -> RedisSink:
        instances.append(RedisSink(settings.redis, clock=now, name=name))
        return instances[-1]

    _every_pause_reaches(monkeypatch, lambda: list({i.name: i for i in instances}.values()))  # newest per partition
    ensure_slot(scratch_db.config())
    producer = spawn_pulse(kafka_env, "produce")
    consumer = SinkConsumer(settings, "redis", factory)
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            consumer.run()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        wait_for(lambda: consumer.ready.is_set() or failure or producer.poll() is not None, 60, "partitions")
        _write(cur, content, 3000, now.at)
        wait_for(lambda: _board_total(client, prefix) == 3000 or failure or producer.poll() is not None, 60,
                 "3000 events on the board")
        with _writing(scratch_db, content, now.at, start=10_000) as writer:
            _rebuild_during(writer, settings, now, times=3, every=400)
        _settle_and_compare(client, prefix, cur, now.at)
    finally:
        consumer.stop()
        thread.join(60)
        stop_process(producer)
    assert not failure, failure
    assert producer.returncode == 0, producer.stderr.read()[-2000:]
    assert board_stats(client, prefix)["rebuilds"] == 3
    fields = {k: v for k, v in board_meta(client, prefix).items() if k.startswith("position:redis@")}
    assert len(fields) >= 2, fields  # several instances wrote the board, each in its own field
    assert len({i.name for i in instances}) == 4 == len(instances)  # one instance per partition, no rebalance
    # Every partition's sink waited in each of the three pauses, and none is still paused.
    assert [(i.status()["rebuild pauses"], i.status()["paused"]) for i in instances] == [(3, False)] * 4


PAUSE_S = 4


def test_a_rebuild_killed_after_its_pause_frees_the_board_at_the_deadline(scratch_db, services, rprefix):
    prefix, client = rprefix
    cur = scratch_db.connect().cursor()
    now = Clock(datetime.now(timezone.utc))
    content = insert_content(cur, 6)
    settings = _settings(scratch_db, services, prefix)
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(
        update={"rebuild_pause_timeout_s": 1.0})})
    sink = RedisSink(settings.redis, clock=now)
    with Running(Pipeline(settings_for(scratch_db), [sink])) as running:
        _write(cur, content, 200, now.at)
        wait_for(lambda: _board_total(client, prefix) == 200, 30, "200 events on the board")
        # A rebuild takes the pause and dies (kill -9): no swap, no release. The pause is long enough
        # (PAUSE_S) for the check below to run inside it on a slow machine too; if it did not, the test
        # fails saying so instead of skipping the check.
        until_ms = RedisSink(settings.redis, clock=now).pause("killed-rebuild", PAUSE_S)
        redis_now = client.time()
        assert PAUSE_S * 1000 - 500 <= until_ms - (redis_now[0] * 1000 + redis_now[1] // 1000) <= PAUSE_S * 1000
        _write(cur, content, 300, now.at, start=1000)
        wait_for(lambda: (sink._pending.events == 300 and sink.status()["paused"]) or running.error, 10,
                 "the live sink to hold the 300 events, paused")
        assert running.error is None
        pipe = client.pipeline(transaction=True)
        pipe.time()
        pipe.zrange(prefix + "events:10m", 0, -1, withscores=True)
        (sec, usec), held = pipe.execute()
        assert sec * 1000 + usec // 1000 < until_ms, f"the check ran after the {PAUSE_S} s pause; raise PAUSE_S"
        assert round(sum(s for _m, s in held)) == 200  # still paused: nothing of the 300 is applied
        # The deadline frees the board; the held events are applied, each once.
        wait_for(lambda: _board_total(client, prefix) == 500, 30, "the sink to resume after the deadline")
        wait_for(lambda: not sink.status()["paused"], 10, "the sink to leave the pause")
        # A later rebuild is not blocked by the dead one's expired pause.
        rebuild_redis(settings, clock=now)
        _write(cur, content, 50, now.at, start=5000)
        wait_for(lambda: _board_total(client, prefix) == 550, 30, "the live events after the rebuild")
    assert_board_equals_sql(client, prefix, cur, now.at)
    assert sink.status()["rebuild pauses"] >= 1 and running.error is None


def test_a_failed_rebuild_lifts_its_own_pause(scratch_db, services, rprefix):
    prefix, client = rprefix
    cur = scratch_db.connect().cursor()
    now = Clock(datetime.now(timezone.utc))
    content = insert_content(cur, 3)
    _write(cur, content, 20, now.at)
    settings = _settings(scratch_db, services, prefix)
    first = rebuild_redis(settings, clock=now)
    assert first["events"] == 20
    board = board_scores(client, prefix + "top:10m")
    # Fails after the pause and the slot: the snapshot read finds no source tables.
    broken = settings.model_copy(update={"database": settings.database.model_copy(
        update={"source_schema": "no_such_schema"})})
    with pytest.raises(Exception, match="no_such_schema"):
        rebuild_redis(broken, clock=now)
    meta = board_meta(client, prefix)
    assert "pause_token" not in meta and "pause_until_ms" not in meta
    assert board_scores(client, prefix + "top:10m") == board
    live = RedisSink(settings.redis, clock=now)
    live.open()
    # After the first rebuild's position (a long-lived cluster's LSN can be anywhere).
    after = Position(Position.parse(first["position"]).lsn + 1, 1)
    live.write(Batch((board_event(1, now.at, cid="x")._replace(position=after),)))
    assert live.flush() == after  # not paused: applied at once
    assert board_scores(client, prefix + "top:10m")["x"] == 1.0


# -- the protocol, one sink at a time (real Redis, no database) -------------------------------------------


def _pos(i: int) -> Position:
    return Position(1 << 33, i)


def test_a_live_sink_adopts_a_board_rebuilt_after_redis_lost_it_and_stays_exact(services, rprefix):
    prefix, client = rprefix
    now = Clock(datetime.now(timezone.utc))
    cfg = redis_config(services["PULSE_REDIS_URL"], prefix)
    live = RedisSink(cfg, clock=now)
    live.open()
    live.write(Batch((board_event(1, now.at), board_event(2, now.at))))
    assert live.flush() == _pos(2)
    for key in client.scan_iter(match=prefix + "*"):  # Redis loses everything...
        client.delete(key)
    rebuild = RedisSink(cfg, clock=now)
    rebuild.pause("t1", 30)  # ...and a rebuild starts before the live sink writes again
    live.write(Batch((board_event(3, now.at), board_event(4, now.at))))
    assert live.flush() == _pos(2) and live.status()["paused"]  # PAUSED, not LOST: it waits
    old_epoch = live.epoch
    # The snapshot holds events 1..3 (its consistent point is between 3 and 4).
    assert rebuild.rebuild([board_event(i, now.at) for i in (1, 2, 3)], _pos(3), token="t1") == 3
    # Adopts the new epoch; event 3 is in the snapshot (dropped), event 4 is applied.
    wait_for(lambda: live.flush() == _pos(4), 5, "the live sink to resume on the rebuilt board")
    assert live.epoch == board_meta(client, prefix)["epoch"] != old_epoch
    assert board_scores(client, prefix + "top:10m") == {"c1": 4.0}
    assert board_scores(client, prefix + "events:10m") == {"c1": 4.0}
    # A board lost and started afresh (not rebuilt) is still LOST for a live sink.
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    RedisSink(cfg, clock=now).open()
    live.write(Batch((board_event(5, now.at),)))
    with pytest.raises(TerminalError, match="disappeared"):
        live.flush()


def test_the_rebuild_position_covers_an_instance_that_has_no_position_field_yet(services, rprefix):
    """Kafka workers: a partition's sink may open (and buffer) before it ever stored a position."""
    prefix, client = rprefix
    now = Clock(datetime.now(timezone.utc))
    cfg = redis_config(services["PULSE_REDIS_URL"], prefix)
    a = RedisSink(cfg, clock=now, name="redis@t/0")
    a.open()
    a.write(Batch((board_event(1, now.at),)))
    a.flush()
    b = RedisSink(cfg, clock=now, name="redis@t/1")
    assert b.open() == Position(0, 0)
    rebuild = RedisSink(cfg, clock=now)
    rebuild.pause("t", 30)
    b.write(Batch((board_event(2, now.at), board_event(3, now.at))))
    b.flush()  # PAUSED: held in memory, no field stored
    assert "position:redis@t/1" not in board_meta(client, prefix)
    rebuild.rebuild([board_event(1, now.at), board_event(2, now.at)], _pos(2), token="t")
    # Event 2 is in the snapshot: skipped although b never stored a position; event 3 is applied.
    wait_for(lambda: b.flush() == _pos(3), 5, "the instance to resume")
    assert board_scores(client, prefix + "events:10m") == {"c1": 3.0}
    meta = board_meta(client, prefix)
    assert meta["position:redis@t/0"] == meta["rebuilt_position"] == "0000000200000000" + "00000002"
    # An instance opened later starts from the rebuild's position too.
    assert RedisSink(cfg, clock=now, name="redis@t/2").open() == _pos(2)


def test_one_rebuild_at_a_time_and_a_lost_pause_never_swaps(services, rprefix):
    prefix, client = rprefix
    now = Clock(datetime.now(timezone.utc))
    cfg = redis_config(services["PULSE_REDIS_URL"], prefix)
    live = RedisSink(cfg, clock=now)
    live.open()
    live.write(Batch((board_event(1, now.at),)))
    live.flush()
    first, second = RedisSink(cfg, clock=now), RedisSink(cfg, clock=now)
    first.pause("first", 30)
    with pytest.raises(TerminalError, match="another rebuild") as info:
        second.pause("second", 30)
    assert "expires by itself" in info.value.hint
    assert not second.release_pause("second")  # a rebuild never lifts another one's pause
    assert board_meta(client, prefix)["pause_token"] == "first"
    assert first.release_pause("first")
    # A pause that ends before the swap (too slow a rebuild): the swap changes nothing.
    first.pause("slow", 0.2)
    until = int(board_meta(client, prefix)["pause_until_ms"])
    wait_for(lambda: client.time()[0] * 1000 + client.time()[1] // 1000 > until, 5, "the pause to expire")
    with pytest.raises(TerminalError, match="renew|lost before the swap"):
        first.renew_pause("slow", 30)
    live.write(Batch((board_event(2, now.at),)))
    assert live.flush() == _pos(2)  # the live sink writes past the snapshot the rebuild took
    with pytest.raises(TerminalError, match="lost before the swap") as info:
        first.rebuild([board_event(9, now.at, cid="snapshot")], _pos(1), token="slow")
    assert "REBUILD_PAUSE_TIMEOUT_S" in info.value.hint
    assert board_scores(client, prefix + "top:10m") == {"c1": 2.0}
    assert board_meta(client, prefix)["position"] == "0000000200000000" + "00000002"
    assert "rebuilds" not in board_stats(client, prefix)


def test_a_paused_sink_holds_at_most_max_pending_events(services, rprefix):
    prefix, client = rprefix
    now = Clock(datetime.now(timezone.utc))
    cfg = redis_config(services["PULSE_REDIS_URL"], prefix).model_copy(update={"max_pending_events": 3})
    live = RedisSink(cfg, clock=now)
    live.open()
    rebuild = RedisSink(cfg, clock=now)
    rebuild.pause("t", 30)
    live.write(Batch((board_event(1, now.at),)))
    assert live.flush() == Position(0, 0) and live.status()["paused"]
    batch = Batch((board_event(2, now.at), board_event(3, now.at)))
    with pytest.raises(TransientError, match="paused by a rebuild"):
        live.write(batch)  # full: the runtime retries this batch with backoff, its queue holds the rest
    with pytest.raises(TransientError, match="paused by a rebuild"):
        live.write(batch)  # the retry is not buffered twice
    assert live._pending.events == 3
    rebuild.release_pause("t")
    assert live.write(batch) == _pos(3)  # the retry after the pause: applied, once
    assert board_scores(client, prefix + "events:10m") == {"c1": 3.0}
