"""The initial snapshot on the real services: rows that exist before the first start reach every destination.

A table holds 100,000 events before Pulse's slot exists; `pulse run` (or the
Kafka workers) starts, copies them while live writes go on, and is killed
with SIGKILL twice in the middle of the copy. At the end BigQuery holds each
source row once with its latest values, the receiver every id (at least
once, one stable CloudEvent id per event), and the Redis board equals the
window computed in SQL.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from datetime import datetime, timezone

import psycopg2
import pytest

from pulse.receiver import Receiver
from tests.conftest import unique

from .pipeline_helpers import Running, insert_content, settings_for, wait_for
from .pipeline_helpers import pulse_cmd, pulse_env
from .redis_helpers import assert_board_equals_sql, board_stats

HISTORY = 100_000


def _history(cur, content: list[str], n: int) -> None:
    """`n` events before the first start: a sixth inside the last 5 minutes, the rest days old."""
    arr = "{" + ",".join(content) + "}"
    cur.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
        "SELECT (%s::uuid[])[1 + (g %% %s)], gen_random_uuid(), (ARRAY['play','pause','finish'])[1 + g %% 3], "
        "CASE WHEN g %% 6 = 0 THEN now() - (g %% 290) * interval '1 second' "
        "     ELSE now() - interval '2 days' - (g %% 86400) * interval '1 second' END, "
        "CASE WHEN g %% 50 = 0 THEN NULL ELSE 100 + g %% 9000 END, (ARRAY['ios','web-chrome','android'])[1 + g %% 3], "
        "jsonb_build_object('g', g) FROM generate_series(1, %s) g",
        (arr, len(content), n),
    )


class _LiveWriter(threading.Thread):
    """Inserts fresh events and updates old ones, in small transactions, until stopped."""

    def __init__(self, url: str, content: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.content = url, content
        self.stop_event = threading.Event()
        self.inserted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = psycopg2.connect(self.url)
            conn.autocommit = True
            cur = conn.cursor()
            arr = "{" + ",".join(self.content) + "}"
            while not self.stop_event.is_set():
                cur.execute(
                    "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device) "
                    "SELECT (%s::uuid[])[1 + (g %% %s)], gen_random_uuid(), 'play', now(), 1000 + g, 'ios' "
                    "FROM generate_series(1, 20) g", (arr, len(self.content)))
                self.inserted += 20
                # Rows of the history change while the snapshot reads them.
                cur.execute("UPDATE engagement_events SET duration_ms = coalesce(duration_ms, 0) + 7, device = 'moved' "
                            "WHERE id IN (SELECT (random() * %s)::bigint + 1 FROM generate_series(1, 10))",
                            (HISTORY,))
                self.stop_event.wait(0.05)
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def _run_row(cur, slot: str) -> dict:
    cur.execute("SELECT run_id, state, rows_read, chunks, max_id, window_rebuilt_at FROM pulse.backfill_runs "
                "WHERE slot_name = %s AND kind = 'snapshot'", (slot,))
    rows = cur.fetchall()
    assert len(rows) <= 1, f"one snapshot run per slot, found {rows}"
    if not rows:
        return {}
    return dict(zip(("run_id", "state", "rows_read", "chunks", "max_id", "window_rebuilt_at"), rows[0]))


def _kill_twice_mid_snapshot(spawn, cur, slot: str, check_alive) -> tuple[subprocess.Popen, list[int]]:
    """Start the process that copies; SIGKILL it twice while the copy is under way; returns the third run."""
    seen: list[int] = []
    proc = spawn()
    for _ in range(2):
        floor = seen[-1] if seen else 0
        row = wait_for(lambda: (r := _run_row(cur, slot)) and r["state"] == "running" and r["rows_read"] > floor
                       and r or check_alive(proc), 120, "the snapshot to make progress")
        assert row["state"] == "running", "the snapshot ended before it could be killed (slow it down)"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        seen.append(_run_row(cur, slot)["rows_read"])
        proc = spawn()
    return proc, seen


def _bq_rows(client, dataset: str) -> dict[int, tuple]:
    try:
        rows = client.query(f"SELECT event_id, duration_ms, device FROM `{dataset}.engagement_events`").result()
    except Exception:  # the table appears with the first load
        return {}
    out: dict[int, tuple] = {}
    for r in rows:
        assert r[0] not in out, f"event {r[0]} twice in BigQuery"
        out[r[0]] = (r[1], r[2])
    return out


def _source_rows(cur) -> dict[int, tuple]:
    cur.execute("SELECT id, duration_ms, device FROM engagement_events")
    return {r[0]: (r[1], r[2]) for r in cur.fetchall()}


ROW_FIELDS = ("event_id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")


def _check_receiver(rx: Receiver, source_ids: set[int]) -> None:
    """Every source event arrived, and one row state always travelled under one CloudEvent id.

    A row the snapshot re-sends (it was also streamed, or was sent before a
    kill) must come with the id it had: a receiver deduplicating by id then
    keeps it once. Its delivery metadata (position, backfill flag) may differ.
    """
    ids_by_state: dict[tuple, set[str]] = {}
    for e in rx.events():
        data = e["event"]["data"]
        state = (data["op"], *(str(data.get(k)) for k in ROW_FIELDS))
        ids_by_state.setdefault(state, set()).add(e["id"])
    unstable = {k: v for k, v in ids_by_state.items() if len(v) > 1}
    assert not unstable, f"one row state under several CloudEvent ids: {list(unstable.items())[:3]}"
    missing = source_ids - _received_ids(rx)
    assert not missing, f"{len(missing)} events never reached the receiver, e.g. {sorted(missing)[:5]}"


def _wait_equal(read, source: dict, check_alive, proc, what: str, timeout: float = 240) -> None:
    """Wait until `read()` equals `source`; on a timeout, say which rows differ."""
    got: dict = {}

    def same() -> bool:
        nonlocal got
        got = read()
        return got == source or check_alive(proc)

    try:
        wait_for(same, timeout, f"{what} to equal the source", interval=0.5)
    except AssertionError:
        missing = sorted(set(source) - set(got))
        extra = sorted(set(got) - set(source))
        wrong = sorted(k for k in set(source) & set(got) if source[k] != got[k])
        raise AssertionError(
            f"{what}: {len(got)} rows, source {len(source)}; missing {len(missing)} {missing[:5]}, extra "
            f"{len(extra)} {extra[:5]}, different {len(wrong)} {[(k, source[k], got[k]) for k in wrong[:5]]}") from None


def _received_ids(rx: Receiver) -> set[int]:
    return {e["event"]["data"]["event_id"] for e in rx.events()}


def _assert_exact_everywhere(cur, slot: str, writer: _LiveWriter, bigquery: tuple, rx: Receiver, board: tuple,
                             broken) -> None:
    """Stop the writer; then BigQuery equals the source, the receiver holds every event, the board equals SQL."""
    (bq, dataset), (redis_client, prefix) = bigquery, board
    writer.stop_event.set()
    writer.join(30)
    assert writer.error is None and writer.inserted > 0
    source = _source_rows(cur)
    _wait_equal(lambda: _bq_rows(bq, dataset), source, lambda _p: broken(), None, "BigQuery")
    wait_for(lambda: set(source) <= _received_ids(rx) or broken(), 240, "the receiver to hold every event")
    _check_receiver(rx, set(source))
    wait_for(lambda: _run_row(cur, slot)["window_rebuilt_at"] is not None or broken(), 120, "the board's rebuild")
    cur.execute("SELECT count(*) FROM engagement_events WHERE content_id IS NOT NULL AND event_ts >= now() - "
                "interval '9 minutes'")
    in_window = cur.fetchone()[0]
    wait_for(lambda: sum(float(s) for _m, s in redis_client.zrange(prefix + "events:10m", 0, -1, withscores=True))
             >= in_window or broken(), 120, "the board to hold the window")
    # The board moves its window when its sink writes (every batch, and every idle flush): on a
    # loaded machine its lowest bucket can trail the wall clock by a few seconds. Compare until it
    # has caught up; a count that is wrong stays wrong for the whole window (10 minutes).
    deadline = time.monotonic() + 30
    while True:
        try:
            assert_board_equals_sql(redis_client, prefix, cur, datetime.now(timezone.utc))
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            broken()
            time.sleep(0.5)


def _finish(cur, slot: str, check_alive, proc, what: str) -> dict:
    return wait_for(lambda: ((r := _run_row(cur, slot)) and r["state"] == "done" and r) or check_alive(proc),
                    240, what)


@pytest.mark.timeout(900)
def test_initial_snapshot_in_process_killed_twice_ends_exact_everywhere(scratch_db, services, bq_dataset, rprefix,
                                                                       tmp_path):
    dataset, bq = bq_dataset
    prefix, redis_client = rprefix
    cur = scratch_db.connect().cursor()
    cur.execute("ALTER TABLE engagement_events REPLICA IDENTITY FULL")  # the board corrects updates
    content = insert_content(cur, 40, length=900, ctype="video")
    _history(cur, content, HISTORY)
    rx = Receiver().start()
    env = pulse_env(scratch_db, PULSE_REDIS_URL=services["PULSE_REDIS_URL"], PULSE_REDIS_PREFIX=prefix,
                    PULSE_BIGQUERY_PROJECT=services["PULSE_BIGQUERY_PROJECT"],
                    PULSE_BIGQUERY_ENDPOINT=services["PULSE_BIGQUERY_ENDPOINT"], PULSE_BIGQUERY_DATASET=dataset,
                    PULSE_BIGQUERY__SPOOL_DIR=str(tmp_path / "spool"), PULSE_BIGQUERY__LOAD_INTERVAL_S="1",
                    PULSE_EXTERNAL_URL=rx.url, PULSE_SNAPSHOT__CHUNK_SIZE="2000", PULSE_SNAPSHOT__RATE_LIMIT="12000")
    errors: list[str] = []

    def spawn():
        return subprocess.Popen(pulse_cmd("run", "--sink", "redis", "--sink", "bigquery", "--sink", "external"),
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def check_alive(proc) -> bool:
        if proc.poll() is not None:
            errors.append(proc.stderr.read()[-3000:])
            raise AssertionError(f"pulse run exited with {proc.returncode}: {errors[-1]}")
        return False

    writer = _LiveWriter(scratch_db.url, content)
    writer.start()
    proc = None
    try:
        proc, seen = _kill_twice_mid_snapshot(spawn, cur, scratch_db.slot, check_alive)
        run = _finish(cur, scratch_db.slot, check_alive, proc, "the snapshot to finish")
        _assert_exact_everywhere(cur, scratch_db.slot, writer, (bq, dataset), rx, (redis_client, prefix),
                                 lambda: check_alive(proc))
    finally:
        writer.stop_event.set()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        rx.stop()
    # Resumed, never started over: one run, and the rows read exceed the
    # history by at most the chunks in flight at each kill.
    assert run["max_id"] >= HISTORY
    assert HISTORY <= run["rows_read"] <= HISTORY + 2 * 4 * 2000, run
    assert seen[0] < seen[1] < run["rows_read"]
    assert proc.returncode == 0, errors


def test_snapshot_mode_never_starts_at_the_slot(scratch_db):
    from pulse.sinks.memory import MemorySink

    cur = scratch_db.connect().cursor()
    content = insert_content(cur, 3)
    _history(cur, content, 500)
    settings = settings_for(scratch_db)
    settings = settings.model_copy(update={"snapshot": settings.snapshot.model_copy(update={"mode": "never"})})
    sink = MemorySink("rows")
    with Running(Pipeline_(settings, [sink])):
        _history(cur, content, 7)
        wait_for(lambda: sink.count >= 7, 30, "the live events")
    assert sink.count == 7 and not any(e.backfill for e in sink.events)
    assert _run_row(cur, scratch_db.slot) == {}


def test_snapshot_in_process_reaches_row_sinks_once_and_only_on_the_run_that_creates_the_slot(scratch_db):
    from pulse.sinks.memory import MemorySink

    cur = scratch_db.connect().cursor()
    content = insert_content(cur, 3)
    _history(cur, content, 3_000)
    cur.execute("SELECT id FROM engagement_events")
    before = {r[0] for r in cur.fetchall()}
    settings = settings_for(scratch_db)
    settings = settings.model_copy(update={"snapshot": settings.snapshot.model_copy(update={"chunk_size": 700})})
    rows, none = MemorySink("rows"), MemorySink("none")
    none.snapshot_mode = "none"
    with Running(Pipeline_(settings, [rows, none])):
        wait_for(lambda: _run_row(cur, scratch_db.slot).get("state") == "done", 60, "the snapshot")
        _history(cur, content, 5)
        wait_for(lambda: none.count >= 5 and rows.count >= 3_005, 30, "the live events")
    assert {e.event_id for e in rows.events if e.backfill} == before
    assert not any(e.backfill for e in none.events) and none.count == 5
    # A second start finds the slot: no new snapshot.
    with Running(Pipeline_(settings, [MemorySink("rows")])):
        pass
    cur.execute("SELECT count(*) FROM pulse.backfill_runs WHERE kind = 'snapshot'")
    assert cur.fetchone()[0] == 1


def Pipeline_(settings, sinks):  # noqa: N802  (a constructor)
    from pulse.runtime.pipeline import Pipeline

    return Pipeline(settings, sinks)


@pytest.mark.timeout(900)
def test_initial_snapshot_over_kafka_killed_twice_ends_exact_everywhere(scratch_db, services, kafka_env, bq_dataset,
                                                                       rprefix, tmp_path):
    dataset, bq = bq_dataset
    prefix, redis_client = rprefix
    cur = scratch_db.connect().cursor()
    cur.execute("ALTER TABLE engagement_events REPLICA IDENTITY FULL")
    content = insert_content(cur, 40, length=900, ctype="podcast")
    _history(cur, content, HISTORY)
    rx = Receiver().start()
    env = dict(kafka_env, PULSE_REDIS_URL=services["PULSE_REDIS_URL"], PULSE_REDIS_PREFIX=prefix,
               PULSE_BIGQUERY_PROJECT=services["PULSE_BIGQUERY_PROJECT"],
               PULSE_BIGQUERY_ENDPOINT=services["PULSE_BIGQUERY_ENDPOINT"], PULSE_BIGQUERY_DATASET=dataset,
               PULSE_BIGQUERY__SPOOL_DIR=str(tmp_path / "spool"), PULSE_BIGQUERY__LOAD_INTERVAL_S="1",
               PULSE_EXTERNAL_URL=rx.url, PULSE_SNAPSHOT__CHUNK_SIZE="2000", PULSE_SNAPSHOT__RATE_LIMIT="12000",
               PULSE_BIGQUERY__UPLOAD_IN_PROCESS="false")  # the uploader is a worker of its own
    errors: list[str] = []

    def spawn(*args):
        return subprocess.Popen(pulse_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    workers = {name: spawn("consume", "--sink", name) for name in ("redis", "bigquery", "external")}
    workers["upload"] = spawn("upload")

    def check_alive(proc) -> bool:
        for name, p in [("produce", proc), *workers.items()]:
            if p is not None and p.poll() is not None:
                errors.append(f"{name}: {p.stderr.read()[-3000:]}")
                raise AssertionError(f"{name} exited with {p.returncode}: {errors[-1]}")
        return False

    writer = _LiveWriter(scratch_db.url, content)
    proc = None
    try:
        writer.start()
        proc, seen = _kill_twice_mid_snapshot(lambda: spawn("produce"), cur, scratch_db.slot, check_alive)
        run = _finish(cur, scratch_db.slot, check_alive, proc, "the snapshot to finish")
        _assert_exact_everywhere(cur, scratch_db.slot, writer, (bq, dataset), rx, (redis_client, prefix),
                                 lambda: check_alive(proc))
    finally:
        writer.stop_event.set()
        for p in [proc, *workers.values()]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [proc, *workers.values()]:
            if p is not None:
                p.wait(60)
        rx.stop()
    assert HISTORY <= run["rows_read"] <= HISTORY + 2 * 4 * 2000, run
    assert seen[0] < seen[1] < run["rows_read"]


def test_an_empty_table_needs_no_copy_and_no_rebuild(scratch_db, services, rprefix):
    from pulse.sinks.redis.sink import RedisSink

    from .redis_helpers import redis_config

    prefix, client = rprefix
    cur = scratch_db.connect().cursor()
    sink = RedisSink(redis_config(services["PULSE_REDIS_URL"], prefix))
    with Running(Pipeline_(settings_for(scratch_db), [sink])) as running:
        row = _run_row(cur, scratch_db.slot)
        assert row["state"] == "done" and row["max_id"] == 0 and row["window_rebuilt_at"] is not None
        wait_for(running.pipeline.rebuilder.settled.is_set, 30, "the rebuilder to settle")
        assert running.pipeline.rebuilder.rebuilt == 0
        [c1] = insert_content(cur, 1)
        cur.execute("INSERT INTO engagement_events (content_id, event_type, event_ts, duration_ms) "
                    "SELECT %s, 'play', now(), 1000 FROM generate_series(1, 5)", (c1,))
        wait_for(lambda: board_stats(client, prefix).get("events", 0) >= 5, 30, "the live events on the board")
