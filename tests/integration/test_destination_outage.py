"""Redis, the BigQuery emulator and the receiver all down at once for 30 s under `pulse run`, then back.

Redis and the emulator are private instances (the shared ones serve other
tests); the receiver is stopped and started on its port. Events keep coming
during the outage; the sinks retry with backoff, the slot is not acknowledged
past what they hold, and at the end every destination equals the source.
"""

from __future__ import annotations

import subprocess
import time

from pulse.source.slot import ensure_slot

from .chaos_helpers import Destinations, Writer, assert_exact, scrape
from .pipeline_helpers import insert_content, wait_for
from .private_services import free_port, private_bigquery, private_redis  # noqa: F401  (fixtures)
from .pipeline_helpers import pulse_cmd, pulse_env

OUTAGE_S = 30


def test_redis_bigquery_and_receiver_down_together_for_30s(scratch_db, private_redis, private_bigquery, tmp_path):
    cur = scratch_db.connect().cursor()
    content = insert_content(cur, 20)
    ensure_slot(scratch_db.config())
    dest = Destinations(private_redis.url, private_bigquery.PROJECT, private_bigquery.endpoint,
                        private_bigquery.grpc_endpoint, tmp_path / "spool")
    port = free_port()
    env = pulse_env(scratch_db, **dest.env(), PULSE_RUNTIME__METRICS_PORT=str(port))
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(pulse_cmd("run"), env=env, stdout=fh, stderr=subprocess.STDOUT)
    writer = Writer(scratch_db.url, content, per_txn=50, pause=0.1)
    try:
        wait_for(lambda: scrape(port).get("pulse_replication_connected") == 1 or proc.poll() is not None, 90,
                 "pulse run to stream")
        writer.start()
        wait_for(lambda: len(dest.receiver_ids()) > 500 or proc.poll() is not None, 60, "events delivered")
        private_redis.stop()
        private_bigquery.stop()
        dest.receiver.stop()
        down_at = time.monotonic()
        committed = writer.committed
        wait_for(lambda: writer.committed > committed + 1_000, 30, "the source to keep changing")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage itself, not a wait for a state
        assert proc.poll() is None, log_path.read_text()[-3000:]
        private_redis.start()
        private_bigquery.start()
        dest.receiver.start()
        seen = len(dest.receiver_ids())
        wait_for(lambda: len(dest.receiver_ids()) > seen + 500 or proc.poll() is not None, 120,
                 "deliveries after the outage")
        writer.stop()
        tally = assert_exact(scratch_db.url, dest, env, timeout=240, alive=lambda: proc.poll() is None)
        assert tally.source > 3_000
    finally:
        writer.stop()
        if proc.poll() is None:
            proc.terminate()
        proc.wait(90)
        dest.cleanup()
    log = log_path.read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "sink.retry" in log  # the sinks saw the outage and retried
