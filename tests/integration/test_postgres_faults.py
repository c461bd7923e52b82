"""PostgreSQL itself fails under a running `pulse run`: restarted (fast, immediate), walsender terminated.

Each test runs on a private cluster (tests/integration/private_services.py):
the shared one serves other tests at the same time. Events stream during the
faults; at the end BigQuery holds each once, `pulse verify` finds the board
and the table equal to SQL, and the receiver has every id under one id.
"""

from __future__ import annotations

import subprocess
import time

from pulse.source.slot import ensure_slot

from .chaos_helpers import Destinations, Writer, assert_exact, scrape
from .pipeline_helpers import insert_content, wait_for
from .private_services import free_port, private_pg, private_redis, private_scratch_db  # noqa: F401  (fixtures)
from .pipeline_helpers import pulse_cmd, pulse_env


def test_server_restarts_and_a_terminated_walsender_lose_nothing(private_pg, private_scratch_db, services, tmp_path):
    db = private_scratch_db
    cur = db.connect().cursor()
    content = insert_content(cur, 20)
    ensure_slot(db.config())
    dest = Destinations.shared(services, tmp_path / "spool")
    port = free_port()
    env = pulse_env(db, **dest.env(), PULSE_RUNTIME__METRICS_PORT=str(port))
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log_fh:
        proc = subprocess.Popen(pulse_cmd("run"), env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    writer = Writer(db.url, content, per_txn=200, pause=0.05)
    faults = {
        "restart -m fast": lambda: private_pg.restart("fast"),
        "restart -m immediate": lambda: private_pg.restart("immediate"),
        "pg_terminate_backend(walsender)": lambda: private_pg.terminate_walsenders(db.slot),
    }
    try:
        wait_for(lambda: scrape(port).get("pulse_replication_connected") == 1 or proc.poll() is not None, 60,
                 "pulse run to stream")
        writer.start()
        for name, fault in faults.items():
            seen = len(dest.receiver_ids())
            wait_for(lambda: len(dest.receiver_ids()) > seen + 500 or proc.poll() is not None, 60,
                     f"events flowing before {name}")
            before = scrape(port).get("pulse_replication_disconnects_total", 0)
            fault()
            wait_for(lambda: (scrape(port).get("pulse_replication_disconnects_total", 0) > before
                              and scrape(port).get("pulse_replication_connected") == 1) or proc.poll() is not None,
                     60, f"a reconnect after {name}")
            assert proc.poll() is None, log_path.read_text()[-3000:]
        seen = len(dest.receiver_ids())
        wait_for(lambda: len(dest.receiver_ids()) > seen + 500, 60, "events flowing after the faults")
        writer.stop()
        assert writer.failures > 0, "the writer never saw the server go away: the faults did nothing"
        tally = assert_exact(db.url, dest, env, alive=lambda: proc.poll() is None)
        assert tally.source > 2_000
        metrics = scrape(port)
        assert metrics["pulse_replication_disconnects_total"] >= 3
        assert proc.poll() is None
    finally:
        writer.stop()
        if proc.poll() is None:
            proc.terminate()
        proc.wait(60)
        dest.cleanup()
    log = log_path.read_text()
    assert proc.returncode == 0, log[-3000:]
    assert log.count("replication.disconnected") >= 3, log[-3000:]


def test_a_fast_shutdown_is_not_held_up_by_a_sink_that_is_down(private_pg, private_scratch_db, private_redis,
                                                               services, tmp_path):
    """The server's fast shutdown waits for every logical client to confirm all WAL it was sent.

    With Redis down, Pulse cannot confirm what Redis lacks; before the fix the
    server waited for Pulse until pg_ctl gave up (found by the soak: a fast
    restart while the external sink's outbox, in the same server, could not
    be written). Pulse now sees the server stopping and lets go of the
    replication connection; nothing is lost.
    """
    db = private_scratch_db
    cur = db.connect().cursor()
    content = insert_content(cur, 5)
    ensure_slot(db.config())
    dest = Destinations(private_redis.url, services["PULSE_BIGQUERY_PROJECT"], services["PULSE_BIGQUERY_ENDPOINT"],
                        services.get("PULSE_BIGQUERY__GRPC_ENDPOINT"), tmp_path / "spool")
    port = free_port()
    env = pulse_env(db, **dest.env(), PULSE_RUNTIME__METRICS_PORT=str(port))
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log_fh:
        proc = subprocess.Popen(pulse_cmd("run"), env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    writer = Writer(db.url, content, per_txn=50, pause=0.1)
    try:
        wait_for(lambda: scrape(port).get("pulse_replication_connected") == 1 or proc.poll() is not None, 60,
                 "pulse run to stream")
        writer.start()
        wait_for(lambda: dest.board_events() > 200 or proc.poll() is not None, 60, "events on the board")
        private_redis.stop()
        committed = writer.committed
        wait_for(lambda: writer.committed > committed + 200, 30, "changes Pulse cannot confirm")
        started = time.monotonic()
        private_pg.pg_ctl("-m", "fast", "-w", "-t", "60", "stop", timeout=90)  # fails after 60 s on old code
        stopped_in = time.monotonic() - started
        private_pg.start()
        private_redis.start()
        seen = dest.board_events()
        wait_for(lambda: dest.board_events() > seen + 200 or proc.poll() is not None, 120, "events after the restart")
        writer.stop()
        assert_exact(db.url, dest, env, alive=lambda: proc.poll() is None)
        assert stopped_in < 30, f"the server took {stopped_in:.0f} s to stop"
    finally:
        writer.stop()
        if proc.poll() is None:
            proc.terminate()
        proc.wait(60)
        dest.cleanup()
    log = log_path.read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "replication.server_stopping" in log
