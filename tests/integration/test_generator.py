"""`pulse generate` against a real PostgreSQL (a scratch database per test)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from pulse.generator import GenerateSpec, run

SINCE = datetime(2024, 8, 1, tzinfo=timezone.utc)
UNTIL = datetime(2024, 8, 3, tzinfo=timezone.utc)


def _one(db, query, params=()):
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


def _rows(db, query, params=()):
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def _bulk(**kw) -> GenerateSpec:
    return GenerateSpec(mode="bulk", since=SINCE, until=UNTIL, **{"seed": 7, **kw})


def test_seeding_is_idempotent(scratch_db):
    cfg = scratch_db.config()
    first = run(cfg, _bulk(count=0, content_count=50))
    assert first.content_seeded == 50
    assert _one(scratch_db, "SELECT count(*) FROM content") == 50
    again = run(cfg, _bulk(count=0, content_count=80, seed=8))
    assert again.content_seeded == 0 and again.content_total == 50
    assert _one(scratch_db, "SELECT count(*) FROM content") == 50
    types = dict(_rows(scratch_db, "SELECT content_type, count(*) FROM content GROUP BY 1"))
    assert set(types) == {"podcast", "newsletter", "video"}
    assert _one(scratch_db, "SELECT count(*) FROM content WHERE content_type = 'newsletter' AND length_seconds IS NOT NULL") == 0
    assert _one(scratch_db, "SELECT count(*) FROM content WHERE length_seconds = 0") == 0
    assert _one(scratch_db, "SELECT bool_and(publish_ts < now()) FROM content")


def test_bulk_writes_exactly_count_rows_in_the_range(scratch_db):
    summary = run(scratch_db.config(), _bulk(count=20_000, chunk_rows=6_000))
    assert summary.rows_written == 20_000
    assert sum(summary.by_type.values()) == 20_000
    assert summary.anomalies == {} and summary.updated == summary.deleted == 0
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events") == 20_000
    outside = _one(
        scratch_db,
        "SELECT count(*) FROM engagement_events WHERE event_ts < %s OR event_ts >= %s",
        (SINCE, UNTIL),
    )
    assert outside == 0
    by_type = dict(_rows(scratch_db, "SELECT event_type, count(*) FROM engagement_events GROUP BY 1"))
    assert by_type == {k: v for k, v in summary.by_type.items() if v}
    # NULL rules as stored
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE event_type = 'click' AND duration_ms IS NOT NULL") == 0
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE content_id IS NULL") == 0
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE duration_ms < 0") == 0
    # ids follow time, roughly, as in a table filled by a live app: chunk order is time order
    assert _one(
        scratch_db,
        "SELECT max(event_ts) FILTER (WHERE id <= 6000) < min(event_ts) FILTER (WHERE id > 12000) FROM engagement_events",
    )


def test_bulk_with_the_same_seed_writes_the_same_rows(scratch_db):
    cfg = scratch_db.config()
    query = (
        "SELECT content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload::text "
        "FROM engagement_events ORDER BY id"
    )
    run(cfg, _bulk(count=3_000, chunk_rows=1_000, seed=99))  # seeds content, then writes
    first = _rows(scratch_db, query)
    conn = scratch_db.connect()
    with conn.cursor() as cur:
        cur.execute("TRUNCATE engagement_events")
    conn.close()
    run(cfg, _bulk(count=3_000, chunk_rows=1_000, seed=99))  # content already there: loaded, not seeded
    assert _rows(scratch_db, query) == first


def test_bulk_anomalies_are_in_the_database(scratch_db):
    summary = run(scratch_db.config(), _bulk(count=20_000, anomalies=0.05))
    a = summary.anomalies
    assert summary.rows_written == 20_000
    assert a["update"] == summary.updated > 0 and a["delete"] == summary.deleted > 0
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events") == 20_000 - summary.deleted
    assert _one(scratch_db, "SELECT count(*) FROM content WHERE length_seconds = 0") > 0

    stored = dict(_rows(
        scratch_db,
        "SELECT raw_payload->>'anomaly', count(*) FROM engagement_events WHERE raw_payload ? 'anomaly' GROUP BY 1",
    ))
    for kind, n in stored.items():  # a deleted row may have been anomalous, never the other way round
        assert n <= a[kind] <= n + summary.deleted
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE content_id IS NULL") > 0
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE duration_ms < 0") > 0
    assert _one(
        scratch_db,
        "SELECT count(*) FROM engagement_events e JOIN content c ON c.id = e.content_id "
        "WHERE e.duration_ms > c.length_seconds * 5000 AND c.length_seconds > 0",
    ) > 0
    assert _one(
        scratch_db,
        "SELECT count(*) FROM engagement_events e JOIN content c ON c.id = e.content_id WHERE c.length_seconds = 0",
    ) > 0
    devices = [r[0] for r in _rows(
        scratch_db, "SELECT DISTINCT device FROM engagement_events WHERE raw_payload->>'anomaly' = 'odd_device'"
    )]
    assert any("\u200b" in d or "\u200d" in d for d in devices) or any(len(d) > 2_000 for d in devices)
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE raw_payload ? 'amended'") == summary.updated
    # only declared late / future rows leave the range
    assert _one(
        scratch_db,
        "SELECT count(*) FROM engagement_events WHERE (event_ts < %s OR event_ts >= %s) "
        "AND coalesce(raw_payload->>'anomaly', '') NOT IN ('late_event', 'future_event')",
        (SINCE, UNTIL),
    ) == 0


def test_live_mode_writes_about_rate_times_duration(scratch_db):
    cfg = scratch_db.config()
    run(cfg, _bulk(count=0))  # seed content first, so the live run's clock covers only events
    result = {}
    started = datetime.now(timezone.utc)
    worker = threading.Thread(
        target=lambda: result.update(summary=run(cfg, GenerateSpec(mode="live", rate=200, duration_s=2, seed=3)))
    )
    worker.start()
    seen_while_running = 0
    deadline = time.monotonic() + 30
    while worker.is_alive() and time.monotonic() < deadline:
        seen_while_running = max(seen_while_running, _one(scratch_db, "SELECT count(*) FROM engagement_events"))
        worker.join(timeout=0.2)
    worker.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not worker.is_alive(), "live run did not finish"
    summary = result["summary"]
    total = _one(scratch_db, "SELECT count(*) FROM engagement_events")
    assert 300 <= total <= 450, total
    assert total == summary.rows_written
    assert seen_while_running > 0  # rows are committed while it runs, not at the end
    assert 1.5 <= summary.elapsed_s <= 6.0
    lo, hi = _rows(scratch_db, "SELECT min(event_ts), max(event_ts) FROM engagement_events")[0]
    assert started - timedelta(seconds=5) <= lo and hi <= datetime.now(timezone.utc) + timedelta(seconds=1)
    # small transactions: many distinct commit batches, not one
    xacts = _one(scratch_db, "SELECT count(DISTINCT xmin::text) FROM engagement_events")
    assert xacts > 50


def test_live_mode_anomalies_update_and_delete_past_events(scratch_db):
    cfg = scratch_db.config()
    summary = run(cfg, GenerateSpec(mode="live", rate=1_000, duration_s=2, seed=5, anomalies=0.5))
    assert summary.rows_written == 2_000
    assert summary.updated > 0 and summary.deleted > 0
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events") == 2_000 - summary.deleted
    # a live app may amend a row twice, or delete a row it amended earlier
    amended = _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE raw_payload ? 'amended'")
    assert 0 < amended <= summary.updated
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE content_id IS NULL") > 0
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events WHERE duration_ms < 0") > 0
    future = _one(
        scratch_db,
        "SELECT count(*) FROM engagement_events WHERE event_ts > now() + interval '1 minute'",
    )
    declared = _one(
        scratch_db, "SELECT count(*) FROM engagement_events WHERE raw_payload->>'anomaly' = 'future_event'"
    )
    assert future == declared > 0


def test_live_mode_stops_when_asked(scratch_db):
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    try:
        summary = run(scratch_db.config(), GenerateSpec(mode="live", rate=100, duration_s=0, seed=1), stop=stop)
    finally:
        timer.cancel()
    assert 50 <= summary.rows_written <= 200
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events") == summary.rows_written


def test_missing_tables_say_what_to_do(scratch_db):
    from pulse.errors import TerminalError

    with pytest.raises(TerminalError) as info:
        run(scratch_db.config(source_schema="nowhere"), _bulk(count=1))
    assert "pulse db init" in info.value.hint


def test_console_script(scratch_db):
    pulse = Path(sys.executable).with_name("pulse")
    env = {**os.environ, "PULSE_DATABASE_URL": scratch_db.url}
    out = subprocess.run(
        [str(pulse), "generate", "--count", "2500", "--since", "2024-08-01T00:00:00", "--until", "2024-08-02",
         "--seed", "4", "--anomalies", "0.05", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    summary = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert summary["rows_written"] == 2500 and summary["seed"] == 4
    assert summary["content_seeded"] > 0
    assert "generator.done" in out.stderr
    assert _one(scratch_db, "SELECT count(*) FROM engagement_events") == 2500 - summary["deleted"]

    table = subprocess.run(
        [str(pulse), "generate", "--rate", "50", "--duration", "0.5"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert table.returncode == 0, table.stderr
    assert "rows written" in table.stdout
