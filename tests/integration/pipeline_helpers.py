"""Helpers for running the in-process pipeline against a scratch database."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg2

from pulse.config import Settings
from pulse.runtime.backfill import get_run
from pulse.runtime.pipeline import Pipeline
from pulse.source.slot import slot_info


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05) -> object:
    """Poll `predicate` until truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Running:
    """A pipeline on a background thread; stop() drains it and re-raises its failure."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.pipeline.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> "Running":
        self.thread.start()
        wait_for(lambda: self.pipeline.ready.is_set() or self.error, 60, "pipeline start")
        if self.error:
            raise self.error
        return self

    def stop(self) -> None:
        self.pipeline.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "pipeline did not stop"

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.error and exc[0] is None:
            raise self.error


def settings_for(db, **runtime) -> Settings:
    return Settings(database=db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
                    runtime={"sinks": ["memory"], **runtime})


def insert_content(cur, n: int = 3, length: int | None = 100, ctype: str = "podcast") -> list[str]:
    ids = []
    for i in range(n):
        cid = str(uuid.uuid4())
        cur.execute(
            "INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
            "VALUES (%s, %s, %s, %s, %s, now())",
            (cid, f"slug-{cid[:8]}", f"Title {i}", ctype, length),
        )
        ids.append(cid)
    return ids


def insert_events(cur, content_ids: list[str | None], n: int, duration_ms: int | None = 5000,
                  event_ts: datetime | None = None) -> list[int]:
    ts = event_ts or datetime.now(timezone.utc)
    ids = []
    for i in range(n):
        cur.execute(
            "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
            "VALUES (%s, %s, 'play', %s, %s, 'ios', '{\"k\": 1}') RETURNING id",
            (content_ids[i % len(content_ids)], str(uuid.uuid4()), ts - timedelta(milliseconds=i), duration_ms),
        )
        ids.append(cur.fetchone()[0])
    return ids


def insert_events_bulk(cur, content_ids: list[str], start: int, n: int) -> None:
    """`n` events in one transaction, generated server-side (ids follow the sequence)."""
    arr = "{" + ",".join(content_ids) + "}"
    cur.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
        "SELECT (%s::uuid[])[1 + (g %% %s)], gen_random_uuid(), 'play', now(), 1000 + g %% 9000, 'ios', "
        "jsonb_build_object('g', g) FROM generate_series(%s, %s) g",
        (arr, len(content_ids), start, start + n - 1),
    )


def kill_at_random(cmd: list[str], env: dict[str, str], rng, times: int, low: float, high: float, *,
                   may_exit: bool = False, note: str = "") -> int:
    """Start `cmd` `times` times and SIGKILL each run after a random delay in [low, high] s.

    Returns the number of kills. A run that exits by itself fails the test,
    unless `may_exit` (a command that can finish its work first).
    """
    import signal
    import subprocess

    kills = 0
    for _ in range(times):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(low, high))
            if not may_exit:
                raise AssertionError(f"{cmd[1:]} exited by itself with {proc.returncode} {note}".rstrip())
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += 1
    return kills


def backfill_done(db, run_id: str) -> bool:
    conn = psycopg2.connect(db.url)
    try:
        with conn.cursor() as cur:
            return get_run(cur, db.config(), run_id)["state"] == "done"
    finally:
        conn.close()


def sink_counts(sink_url: str) -> tuple[int, int]:
    conn = psycopg2.connect(sink_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('pulse_sink_events') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0, 0
            cur.execute("SELECT count(*), count(DISTINCT event_id) FROM pulse_sink_events")
            return cur.fetchone()
    finally:
        conn.close()


def reported_pid(cur, slot: str) -> int | None:
    cur.execute("SELECT (doc->>'pid')::int FROM pulse.runtime_status WHERE slot_name = %s", (slot,))
    row = cur.fetchone()
    return row[0] if row else None


def pulse_env(db, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update({
        "PULSE_DATABASE_URL": db.url, "PULSE_SLOT": db.slot, "PULSE_PUBLICATION": db.publication,
        "PULSE_DATABASE__HEARTBEAT_INTERVAL_S": "1", "PULSE_DATABASE__STATUS_INTERVAL_S": "1",
    })
    env.update(extra)
    return env


def pulse_cmd(*args: str) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "pulse"), *args]


def slot_streaming(cur, slot: str) -> bool:
    """The slot exists, is consistent and a walsender is attached."""
    info = slot_info(cur, slot)
    return info is not None and info.active and info.confirmed_flush_lsn is not None
