"""The Redis sink against real Redis and PostgreSQL: the board equals SQL over the source table.

Every test uses its own key prefix (deleted afterwards) and its own scratch
database. The board is compared with the same window computed in SQL at the
same "now": the sink's clock is frozen or driven where the test needs it,
and for subprocess runs the comparison uses the clock value of the sink's
last write (`meta.updated_ms`), at which the window was last moved.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest

from pulse.errors import TerminalError
from pulse.generator import GenerateSpec
from pulse.generator import run as generate
from pulse.model import Batch, Position
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.memory import MemorySink
from pulse.sinks.redis.sink import RedisSink
from pulse.sinks.redis.board import Keys
from pulse.source.slot import ensure_slot

from ..conftest import need, unique
from .pipeline_helpers import (Running, insert_content, insert_events, insert_events_bulk, kill_at_random,
                               settings_for, wait_for)
from .pipeline_helpers import pulse_cmd, pulse_env, reported_pid
from .redis_helpers import (BUCKET, WINDOW, Clock, assert_board_equals_sql, board_event, board_meta, board_scores,
                            board_stats, redis_config)



def _redis_url(services) -> str:
    return services["PULSE_REDIS_URL"]


# -- 1. a generator run with anomalies ------------------------------------------------------------------


def test_board_equals_sql_after_a_generator_run_with_anomalies(scratch_db, services, rprefix):
    prefix, client = rprefix
    conn = scratch_db.connect()
    cur = conn.cursor()
    cur.execute("ALTER TABLE engagement_events REPLICA IDENTITY FULL")  # updates / deletes are corrected
    now = Clock(datetime.now(timezone.utc).replace(microsecond=123456))
    sink = RedisSink(redis_config(_redis_url(services), prefix), clock=now)
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        summary = generate(scratch_db.config(), GenerateSpec(
            mode="bulk", count=30_000, since=now.at - timedelta(minutes=11), until=now.at, seed=11,
            anomalies=0.08, chunk_rows=5_000))
        total = summary.rows_written + summary.updated + summary.deleted
        wait_for(lambda: board_stats(client, prefix).get("events", 0) >= total, 60, f"{total} changes in Redis")
    stats = board_stats(client, prefix)
    assert stats["events"] == total
    assert summary.updated > 0 and summary.deleted > 0 and summary.anomalies["late_event"] > 0
    # Rows dated before the window (the first minute of the range, late_event anomalies) were not counted...
    assert stats["late"] > 0 and stats["future"] > 0 and stats["corrections"] == summary.updated + summary.deleted
    assert stats.get("uncorrectable", 0) == 0
    want = assert_board_equals_sql(client, prefix, cur, now.at)
    # ...content with events but no seconds is on the board with its score.
    assert len(want["top"]) > 50
    cur.execute("SELECT e.content_id::text FROM engagement_events e WHERE e.content_id IS NOT NULL "
                "AND e.event_ts >= %s AND e.event_ts <= %s GROUP BY 1 HAVING bool_and(coalesce(e.duration_ms, -1) < 0)",
                (now.at - timedelta(seconds=WINDOW - BUCKET), now.at))
    for cid in [r[0] for r in cur.fetchall()]:
        assert client.zscore(prefix + "top:10m", cid) == 0.0
    # Metadata for display.
    some = next(iter(want["top"]))
    cur.execute("SELECT title, slug, content_type FROM content WHERE id = %s", (some,))
    title, slug, ctype = cur.fetchone()
    meta = {k.decode(): v.decode() for k, v in client.hgetall(f"{prefix}content:{some}").items()}
    assert (meta["title"], meta["slug"], meta["content_type"]) == (title, slug, ctype)
    # Every key has a TTL.
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    assert keys and all(client.pttl(k) > 0 for k in keys), [k for k in keys if client.pttl(k) <= 0][:5]


def test_updates_and_deletes_without_old_values_are_not_applied_and_counted(scratch_db, services, rprefix):
    prefix, client = rprefix
    conn = scratch_db.connect()
    cur = conn.cursor()
    sink = RedisSink(redis_config(_redis_url(services), prefix))
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        [c1] = insert_content(cur, 1)
        ids = insert_events(cur, [c1], 3, duration_ms=2000)
        cur.execute("UPDATE engagement_events SET duration_ms = 9000 WHERE id = %s", (ids[0],))
        cur.execute("DELETE FROM engagement_events WHERE id = %s", (ids[1],))
        wait_for(lambda: board_stats(client, prefix).get("uncorrectable", 0) >= 2, 30, "2 uncorrectable changes")
    # DEFAULT replica identity: the board keeps the values it had counted.
    assert board_scores(client, prefix + "top:10m") == {c1: 6.0}
    assert board_stats(client, prefix)["events"] == 5


# -- 2. the window edge, with a driven clock ---------------------------------------------------------------


def test_a_driven_clock_moves_events_out_within_one_bucket_of_their_window_age(scratch_db, services, rprefix):
    prefix, client = rprefix
    conn = scratch_db.connect()
    cur = conn.cursor()
    base = math.floor(time.time() / BUCKET) * BUCKET - 60
    e1 = datetime.fromtimestamp(base + 3.25, timezone.utc)   # bucket [base, base + 10)
    e2 = datetime.fromtimestamp(base + 17.5, timezone.utc)   # the next bucket
    clock = Clock(datetime.fromtimestamp(base + 60, timezone.utc))
    sink = RedisSink(redis_config(_redis_url(services), prefix), clock=clock)
    top = prefix + "top:10m"
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        [a, b] = insert_content(cur, 2)
        insert_events(cur, [a], 1, duration_ms=1500, event_ts=e1)
        insert_events(cur, [b], 1, duration_ms=None, event_ts=e2)  # no seconds: present with score 0
        wait_for(lambda: len(board_scores(client, top)) == 2, 30, "both events on the board")
        assert board_scores(client, top) == {a: 1.5, b: 0.0}
        left: dict[str, float] = {}
        for tenth in range(5950, 6300, 5):  # the clock walks from age 595 s to 630 s of e1, 0.5 s a step
            clock.at = e1 + timedelta(seconds=tenth / 10)
            want_ms = str(int(clock.at.timestamp() * 1000))
            # The worker's idle flush runs the expiry step at the driven time.
            wait_for(lambda: board_meta(client, prefix).get("updated_ms") == want_ms, 10, f"expiry at {want_ms}")
            board = board_scores(client, top)
            for cid, ts in ((a, e1), (b, e2)):
                if cid not in board and cid not in left:
                    left[cid] = (clock.at - ts).total_seconds()
            if len(left) == 2:
                break
    assert set(left) == {a, b}, left
    for cid, age in left.items():
        assert WINDOW < age <= WINDOW + BUCKET + 0.5, (cid, age)  # 0.5: the clock's step
    assert client.zcard(prefix + "devices:10m") == 0 and client.zcard(prefix + "events:10m") == 0


def test_future_dated_events_are_held_and_counted_when_the_clock_reaches_them(scratch_db, services, rprefix):
    """A wrong device clock minutes ahead: not on the board now, on it once its time comes, as SQL says.

    Found by the 40-minute in-process soak: such events used to be rejected for
    good, so once their event_ts entered the window the board was below SQL.
    Corrections of a held event (FULL identity) are applied to the held cells.
    """
    prefix, client = rprefix
    conn = scratch_db.connect()
    cur = conn.cursor()
    cur.execute("ALTER TABLE engagement_events REPLICA IDENTITY FULL")
    base = math.floor(time.time() / BUCKET) * BUCKET
    clock = Clock(datetime.fromtimestamp(base + 1, timezone.utc))
    ahead = datetime.fromtimestamp(base + 300.5, timezone.utc)  # 5 minutes ahead: beyond the 60 s skew
    sink = RedisSink(redis_config(_redis_url(services), prefix), clock=clock)
    top = prefix + "top:10m"
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        [a, b] = insert_content(cur, 2)
        insert_events(cur, [a], 1, duration_ms=1000, event_ts=clock.at)
        held = insert_events(cur, [b], 3, duration_ms=2000, event_ts=ahead)
        cur.execute("UPDATE engagement_events SET duration_ms = 5000 WHERE id = %s", (held[0],))
        cur.execute("DELETE FROM engagement_events WHERE id = %s", (held[1],))
        wait_for(lambda: board_stats(client, prefix).get("events", 0) >= 6, 30, "6 changes in Redis")
        assert board_scores(client, top) == {a: 1.0}
        assert board_stats(client, prefix)["future"] == 2  # held, net: three inserted, one deleted
        assert_board_equals_sql(client, prefix, cur, clock.at)
        # The clock walks to the held bucket's start minus the skew: it enters the board.
        for at in (base + 240 - 0.5, base + 240 + 0.5, base + 400):
            clock.at = datetime.fromtimestamp(at, timezone.utc)
            want_ms = str(int(at * 1000))
            wait_for(lambda: board_meta(client, prefix).get("updated_ms") == want_ms, 10, f"a step at {want_ms}")
            assert_board_equals_sql(client, prefix, cur, clock.at)
        assert board_scores(client, top) == {a: 1.0, b: 7.0}
        assert client.zcard(prefix + "w:fidx") == 0
        # Past the window, the held bucket leaves like any other.
        clock.at = ahead + timedelta(seconds=WINDOW + BUCKET + 1)
        want_ms = str(int(clock.at.timestamp() * 1000))
        wait_for(lambda: board_meta(client, prefix).get("updated_ms") == want_ms, 10, f"a step at {want_ms}")
        assert board_scores(client, top) == {}
        assert_board_equals_sql(client, prefix, cur, clock.at)


def test_a_flush_that_only_deletes_held_events_keeps_the_sink_running(scratch_db, services, rprefix):
    """A flush whose held events are net negative: the held cells shrink and the sink goes on.

    Found by the soak: such a flush passed a negative amount to the
    `pulse_redis_future_events_total` counter, whose ValueError stopped
    `pulse run`. The deletes come in their own transaction, after the held
    inserts are written, so they are a flush of their own.
    """
    from pulse.sinks.redis.sink import BOARD_HELD

    prefix, client = rprefix
    conn = scratch_db.connect()
    cur = conn.cursor()
    cur.execute("ALTER TABLE engagement_events REPLICA IDENTITY FULL")
    base = math.floor(time.time() / BUCKET) * BUCKET
    clock = Clock(datetime.fromtimestamp(base + 1, timezone.utc))
    ahead = datetime.fromtimestamp(base + 300.5, timezone.utc)  # beyond the 60 s skew: held
    sink = RedisSink(redis_config(_redis_url(services), prefix), clock=clock)
    held_before = BOARD_HELD._value.get()
    with Running(Pipeline(settings_for(scratch_db), [sink])) as running:
        [a] = insert_content(cur, 1)
        held = insert_events(cur, [a], 3, duration_ms=2000, event_ts=ahead)
        wait_for(lambda: board_stats(client, prefix).get("future", 0) == 3, 30, "3 held events in Redis")
        assert BOARD_HELD._value.get() - held_before == 3
        cur.execute("DELETE FROM engagement_events WHERE id = ANY(%s)", (held[:2],))
        wait_for(lambda: board_stats(client, prefix).get("future") == 1 or running.error, 30, "2 held events deleted")
        assert running.error is None
        # The sink still writes: an event of now reaches the board.
        insert_events(cur, [a], 1, duration_ms=1000, event_ts=clock.at)
        wait_for(lambda: board_scores(client, prefix + "top:10m") == {a: 1.0} or running.error, 30, "a live event")
        assert running.error is None
        assert_board_equals_sql(client, prefix, cur, clock.at)
    assert BOARD_HELD._value.get() - held_before == 3  # a counter of events held, never decreased


# -- 3. kill -9 of `pulse run --sink redis` ----------------------------------------------------------------


def test_kill_9_at_random_moments_leaves_an_exact_board(scratch_db, services, rprefix):
    prefix, client = rprefix
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    conn = scratch_db.connect()
    cur = conn.cursor()
    cur.execute("ALTER TABLE engagement_events REPLICA IDENTITY FULL")
    content = insert_content(cur, 30)
    ensure_slot(scratch_db.config())
    env = pulse_env(scratch_db, PULSE_REDIS_URL=_redis_url(services), PULSE_REDIS_PREFIX=prefix,
                    PULSE_RUNTIME__BATCH_MAX_EVENTS="1000")
    stop = threading.Event()
    done = threading.Event()
    changes = [0]

    def writer() -> None:
        wconn = psycopg2.connect(scratch_db.url)
        wconn.autocommit = True
        wcur = wconn.cursor()
        for i in range(40):
            insert_events_bulk(wcur, content, i * 500, 500)
            changes[0] += 500
            if i % 4 == 3:  # corrections of events in the window, with old values (FULL)
                wcur.execute("UPDATE engagement_events SET duration_ms = duration_ms + 7 WHERE id %% 97 = %s", (i,))
                changes[0] += wcur.rowcount
                wcur.execute("DELETE FROM engagement_events WHERE id %% 101 = %s", (i,))
                changes[0] += wcur.rowcount
            if stop.wait(0.05):
                break
        wconn.close()
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    kills = 0
    try:
        kills = kill_at_random(pulse_cmd("run", "--sink", "redis"), env, rng, 4, 1.0, 3.0, note=f"(seed {seed})")
        t.join(120)
        assert done.is_set()
        final = subprocess.Popen(pulse_cmd("run", "--sink", "redis"), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: reported_pid(cur, scratch_db.slot) == final.pid or final.poll() is not None, 60,
                     "the final run to start streaming")
            wait_for(lambda: board_stats(client, prefix).get("events", 0) >= changes[0] or final.poll() is not None, 90,
                     f"the final run to catch up (seed {seed})", interval=0.2)
        finally:
            final.send_signal(signal.SIGTERM)
            final.wait(60)
        assert final.returncode == 0, final.stderr.read()[-3000:]
    finally:
        stop.set()
    assert kills == 4
    assert board_stats(client, prefix)["events"] == changes[0], f"seed {seed}"
    now = datetime.fromtimestamp(int(board_meta(client, prefix)["updated_ms"]) / 1000, timezone.utc)
    want = assert_board_equals_sql(client, prefix, cur, now)
    cur.execute("SELECT count(*) FROM engagement_events")
    assert sum(want["events"].values()) == cur.fetchone()[0]  # everything is inside the window


# -- 4. Redis restarted mid-run ---------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own (loopback, temporary dir, AOF on), stopped and started by PID.

    The shared local Redis is not restarted: other tests and engineers use it,
    and `pulse dev` would see it down and start another one.
    """

    def __init__(self, tmp_path: Path) -> None:
        import shutil
        import socket

        self.server = shutil.which("redis-server")
        need(self.server is not None, "redis-server is not installed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tmp_path
        self.pidfile = tmp_path / "redis.pid"
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run([self.server, "--bind", "127.0.0.1", "--port", str(self.port), "--daemonize", "yes",
                        "--pidfile", str(self.pidfile), "--dir", str(self.dir), "--logfile", str(self.dir / "log"),
                        "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""], check=True)
        wait_for(lambda: self._pid() is not None and self._answers(), 30, "the private redis to start")

    def _pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)  # graceful: the AOF is fsynced on shutdown
        except ProcessLookupError:
            return
        wait_for(lambda: not self._alive(pid), 30, "the private redis to stop")

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False


def test_redis_restart_mid_run_other_sinks_flow_and_the_board_catches_up_exactly(scratch_db, tmp_path):
    import redis

    private = PrivateRedis(tmp_path)
    private.start()
    try:
        prefix = unique("pulse_t") + ":"
        client = redis.Redis.from_url(private.url)
        conn = scratch_db.connect()
        cur = conn.cursor()
        content = insert_content(cur, 10)
        sink = RedisSink(redis_config(private.url, prefix))
        memory = MemorySink(keep=False)
        written = 0
        with Running(Pipeline(settings_for(scratch_db), [sink, memory])):
            for i in range(5):
                insert_events_bulk(cur, content, i * 1000, 1000)
                written += 1000
            wait_for(lambda: board_stats(client, prefix).get("events", 0) >= written, 30, "first events in Redis")
            private.stop()
            # Redis is down: the other sink keeps flowing.
            for i in range(5, 10):
                insert_events_bulk(cur, content, i * 1000, 1000)
                written += 1000
            wait_for(lambda: memory.count >= written, 30, "the memory sink while Redis is down")
            assert board_stats(client, prefix) == {}
            private.start()
            for i in range(10, 12):
                insert_events_bulk(cur, content, i * 1000, 1000)
                written += 1000
            wait_for(lambda: board_stats(client, prefix).get("events", 0) >= written, 90,
                     "the Redis sink to catch up after the restart")
        assert board_stats(client, prefix)["events"] == written
        now = datetime.fromtimestamp(int(board_meta(client, prefix)["updated_ms"]) / 1000, timezone.utc)
        want = assert_board_equals_sql(client, prefix, cur, now)
        assert sum(want["events"].values()) == written
        assert sink.position > Position(0, 0)
    finally:
        private.stop()


# -- 5. a Redis that lost the board is detected -----------------------------------------------------------


def test_a_flushed_board_or_a_position_that_went_back_stops_the_sink_with_a_rebuild_hint(services, rprefix):
    prefix, client = rprefix
    now = Clock(datetime.now(timezone.utc))
    cfg = redis_config(_redis_url(services), prefix)
    sink = RedisSink(cfg, clock=now)
    assert sink.open() == Position(0, 0)
    sink.write(Batch((board_event(1, now.at), board_event(2, now.at))))
    sink.flush()
    assert sink.position == Position(1 << 33, 2)
    # Replaying the same batch (a retry whose reply was lost) changes nothing.
    again = RedisSink(cfg, clock=now)
    assert again.open() == Position(1 << 33, 2)
    again._pending.add_events((board_event(1, now.at), board_event(2, now.at)), now.at.timestamp())
    again._flush()
    assert board_scores(client, prefix + "top:10m") == {"c1": 2.0}
    assert board_stats(client, prefix)["batches_replayed"] == 1
    # Redis loses acknowledged writes (its position goes back).
    client.hset(prefix + "meta", "position", "")
    with pytest.raises(TerminalError, match="went back in time") as exc:
        sink.flush()
    assert "backfill" in (exc.value.hint or "")
    # Redis flushed: every key of the prefix gone.
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    with pytest.raises(TerminalError, match="disappeared") as exc:
        sink.flush()
    assert "rebuild" in (exc.value.hint or "")
    # A restart starts a new, clearly incomplete board.
    fresh = RedisSink(cfg, clock=now)
    assert fresh.open() == Position(0, 0)
    meta = board_meta(client, prefix)
    assert meta["epoch"] != sink.epoch and int(meta["complete_from_ms"]) > now.at.timestamp() * 1000 + WINDOW * 1000


def test_pulse_top_once_shows_the_board(scratch_db, services, rprefix):
    from pulse.cli.top import snapshot

    prefix, client = rprefix
    now = Clock(datetime.now(timezone.utc))
    sink = RedisSink(redis_config(_redis_url(services), prefix), clock=now)
    sink.open()
    sink.write(Batch(tuple(board_event(i, now.at, cid=f"c{i % 3}", ms=1000 * i) for i in range(1, 10))))
    sink.flush()
    snap = snapshot(client, Keys(prefix, WINDOW), 5, now=now.at.timestamp() + 1)
    assert [r["content_id"] for r in snap["top"]] == ["c0", "c2", "c1"]
    assert snap["top"][0] == {"content_id": "c0", "title": "T", "content_type": "video", "seconds": 18.0,
                              "events": 3}
    assert snap["by_type"]["video"][0]["content_id"] == "c0"
    assert snap["devices"] == [("ios", 9)] and 0.9 < snap["freshness_s"] < 1.1
    # The command itself, as an operator runs it: it must succeed and print the same board.
    proc = subprocess.run(pulse_cmd("top", "--once", "--json", "--prefix", prefix),
                          env={**os.environ, "PULSE_REDIS_URL": _redis_url(services)}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = json.loads(proc.stdout)
    # By hand: c0 = events 3, 6, 9 (18 s), c2 = 2, 5, 8 (15 s), c1 = 1, 4, 7 (12 s).
    assert shown["top"] == [
        {"content_id": "c0", "title": "T", "content_type": "video", "seconds": 18.0, "events": 3},
        {"content_id": "c2", "title": "T", "content_type": "video", "seconds": 15.0, "events": 3},
        {"content_id": "c1", "title": "T", "content_type": "video", "seconds": 12.0, "events": 3},
    ]
    assert shown["devices"] == [["ios", 9]]


def test_a_bucket_created_between_ttl_refreshes_gets_its_ttl(services, rprefix):
    """TTLs are refreshed at most once a second: a bucket first written in between must still get one."""
    prefix, client = rprefix
    now = Clock(datetime.now(timezone.utc))
    sink = RedisSink(redis_config(_redis_url(services), prefix), clock=now)
    sink.open()
    try:
        sink.write(Batch((board_event(1, now.at),)))
        sink.flush()
        # Well within a second of the first write, a new bucket (another 10 s slot).
        sink.write(Batch((board_event(2, now.at - timedelta(seconds=3 * BUCKET)),)))
        sink.flush()
        keys = list(client.scan_iter(match=prefix + "w:b:*", count=1000))
        assert len(keys) == 2
        assert all(client.pttl(k) > 0 for k in keys), {k: client.pttl(k) for k in keys}
    finally:
        sink.close()
