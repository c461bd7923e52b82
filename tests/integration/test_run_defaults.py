"""`pulse run` with no sink named: the configured destinations, or a refusal (issue 13, safe defaults).

A default never discards: with only PULSE_REDIS_URL set the events reach
Redis (before, the default was a memory sink that kept nothing and still
acknowledged the slot); with no destination configured the command exits 2
with the fix instead of streaming into nothing.
"""

from __future__ import annotations

import signal
import subprocess

from ..conftest import unique
from .pipeline_helpers import insert_content, insert_events_bulk, wait_for
from .pipeline_helpers import pulse_cmd, pulse_env


def _slot_active(cur, slot: str) -> bool:
    cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    row = cur.fetchone()
    return bool(row and row[0])


def test_run_without_a_sink_writes_to_the_only_configured_destination(scratch_db, services):
    import redis

    prefix = unique("pulse_def") + ":"
    client = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    env = pulse_env(scratch_db, PULSE_REDIS_URL=services["PULSE_REDIS_URL"], PULSE_REDIS_PREFIX=prefix)
    proc = subprocess.Popen(pulse_cmd("run"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    conn = scratch_db.connect()
    try:
        cur = conn.cursor()
        wait_for(lambda: _slot_active(cur, scratch_db.slot) or proc.poll() is not None, 60, "pulse run to stream")
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        content = insert_content(cur, 3)
        insert_events_bulk(cur, content, 0, 300)
        cur.execute("SELECT count(*) FROM engagement_events")
        written = cur.fetchone()[0]
        cur.execute("SELECT relreplident::text FROM pg_class WHERE oid = 'engagement_events'::regclass")
        identity = cur.fetchone()[0]

        def counted() -> int:
            raw = client.hget(prefix + "stats", "events")
            return int(raw) if raw else 0

        wait_for(lambda: counted() >= written or proc.poll() is not None, 60, "the events in Redis", interval=0.2)
        got = counted()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            conn.close()
            for key in client.scan_iter(match=prefix + "*", count=1000):
                client.delete(key)
            client.close()
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    assert got == written == 300
    assert "sinks.default" in err and "sink=redis" in err and "PULSE_REDIS_URL" in err
    assert "sinks=redis" in err  # redis alone: bigquery.project and external.url keep their defaults
    # The board needs old values (Sink.needs_old_values); the scratch table has the default identity.
    assert identity == "d"
    assert "source.old_values_unavailable" in err and "REPLICA IDENTITY FULL" in err
    assert "slot.acknowledged_without_durable_sink" not in err


def test_run_with_nothing_configured_exits_with_the_fix(scratch_db):
    conn = scratch_db.connect()
    try:
        out = subprocess.run(pulse_cmd("run"), env=pulse_env(scratch_db), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 3, out.stderr[-3000:]  # a configuration error (docs/operations.md)
        assert "no sink named and no destination configured" in out.stderr
        for name in ("PULSE_REDIS_URL", "PULSE_BIGQUERY_PROJECT", "PULSE_EXTERNAL_URL", "--sink"):
            assert name in out.stderr
        assert "Traceback" not in out.stderr
        # Refused before touching the source: no slot was created, so nothing was acknowledged.
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (scratch_db.slot,))
        assert cur.fetchone()[0] == 0
    finally:
        conn.close()


def test_a_sink_that_keeps_nothing_runs_only_when_named(scratch_db, services):
    """PULSE_REDIS_URL set and `--sink memory` named: memory alone runs (the user asked for it)."""
    env = pulse_env(scratch_db, PULSE_REDIS_URL=services["PULSE_REDIS_URL"], PULSE_REDIS_PREFIX=unique("x") + ":")
    proc = subprocess.Popen(pulse_cmd("run", "--sink", "memory"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    conn = scratch_db.connect()
    try:
        cur = conn.cursor()
        wait_for(lambda: _slot_active(cur, scratch_db.slot) or proc.poll() is not None, 60, "pulse run to stream")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        conn.close()
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    assert "sinks=memory" in err and "sinks.default" not in err
    assert "slot.acknowledged_without_durable_sink" in err  # said, since the user asked for it
    assert "source.old_values_unavailable" not in err  # memory needs no old values


def test_run_reads_its_database_url_from_a_file(scratch_db, services, tmp_path):
    """PULSE_DATABASE_URL_FILE (a Docker / Kubernetes secret): the URL, password included, comes from the file."""
    secret = tmp_path / "db_url"
    secret.write_text(scratch_db.url + "\n")
    env = pulse_env(scratch_db, PULSE_DATABASE_URL_FILE=str(secret))
    del env["PULSE_DATABASE_URL"]
    proc = subprocess.Popen(pulse_cmd("run", "--sink", "memory"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    conn = scratch_db.connect()
    try:
        cur = conn.cursor()
        wait_for(lambda: _slot_active(cur, scratch_db.slot) or proc.poll() is not None, 60, "pulse run to stream")
        assert proc.poll() is None  # it connected with the URL read from the file (no other URL is set)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        conn.close()
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
