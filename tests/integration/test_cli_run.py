"""`pulse run`, `pulse status` and the metrics endpoint, as an operator uses them."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request

from .pipeline_helpers import insert_content, insert_events, wait_for
from .pipeline_helpers import pulse_cmd, pulse_env, slot_streaming
from .private_services import free_port


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_run_status_and_metrics(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    port = free_port()
    env = pulse_env(scratch_db)
    proc = subprocess.Popen(pulse_cmd("run", "--sink", "memory", "--metrics-port", str(port)), env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: slot_streaming(cur, scratch_db.slot) or proc.poll() is not None, 60, "replication start")
        assert proc.poll() is None, proc.stderr.read()
        [c1] = insert_content(cur, 1)
        insert_events(cur, [c1, None], 40)

        def scraped() -> str | None:
            # Read in by the dispatcher and written by the sink thread are counted at different moments:
            # wait until both have seen the 40 events, then check every figure.
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            done = (_metric(body, "pulse_events_in_total") >= 40
                    and _metric(body, 'pulse_events_out_total{sink="memory"}') >= 40)
            return body if done else None

        body = wait_for(scraped, 30, "metrics to count 40 events in and out")
        assert _metric(body, 'pulse_events_out_total{sink="memory"}') >= 40
        assert _metric(body, 'pulse_end_to_end_seconds_count{sink="memory"}') >= 40
        assert _metric(body, 'pulse_problems_total{problem="null_content_id"}') == 20

        def status() -> dict | None:
            out = subprocess.run(pulse_cmd("status", "--json"), env=env, capture_output=True, text=True)
            if out.returncode != 0:  # not healthy yet (no report in the first seconds)
                return None
            doc = json.loads(out.stdout)
            rt = doc["runtime"]
            return doc if rt and rt["events_in"] >= 40 and rt["sinks"]["memory"]["written"] >= 40 else None

        doc = wait_for(status, 30, "pulse status to report the events")
        assert doc["slot"]["active"] is True and doc["slot"]["wal_status"] == "reserved"
        assert doc["runtime"]["pid"] == proc.pid
        human = subprocess.run(pulse_cmd("status"), env=env, capture_output=True, text=True, check=True).stdout
        assert "memory" in human and scratch_db.slot in human
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0


def test_bad_config_fails_at_start_with_the_key_and_the_fix(scratch_db):
    env = pulse_env(scratch_db, PULSE_SLOT="bad-slot-name!", PULSE_RUNTIME__QUEUE_MAX_BYTES="12")
    out = subprocess.run(pulse_cmd("run", "--sink", "memory"), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3  # configuration (pulse.cli.main.EXIT_CODES)
    assert "database.slot (PULSE_SLOT)" in out.stderr
    assert "runtime.queue_max_bytes (PULSE_RUNTIME__QUEUE_MAX_BYTES)" in out.stderr
    assert "fix:" in out.stderr
    assert "Traceback" not in out.stderr
