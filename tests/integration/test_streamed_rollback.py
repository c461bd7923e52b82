"""Large transactions the server streams before they end, then rolls back: nothing reaches any destination.

With `streaming = on` (protocol 2) and a small `logical_decoding_work_mem`,
PostgreSQL sends a big transaction's rows while it is still open (Stream
Start / Stop) and, if it aborts, a Stream Abort; a `ROLLBACK TO SAVEPOINT`
inside it is a Stream Abort of the subtransaction only. Pulse must forget
exactly those rows. Both readers: the native C one and the Python one
(`database.native_reader`). Runs on the shared cluster (nothing restarts).
"""

from __future__ import annotations

import subprocess

import pytest

from pulse.source.slot import ensure_slot

from .chaos_helpers import Destinations, assert_exact, scrape
from .pipeline_helpers import insert_content, insert_events_bulk, wait_for
from .private_services import free_port
from .pipeline_helpers import pulse_cmd, pulse_env

ROWS = 200_000


def _streamed(cur, slot: str) -> tuple[int, int]:
    cur.execute("SELECT stream_txns, stream_bytes FROM pg_stat_replication_slots WHERE slot_name = %s", (slot,))
    row = cur.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _big_insert(cur, content: str) -> None:
    cur.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
        "SELECT %s, gen_random_uuid(), 'play', now(), 1000 + g %% 5000, 'ios', "
        "jsonb_build_object('doomed', g, 'pad', repeat('x', 100)) FROM generate_series(1, %s) g",
        (content, ROWS),
    )


@pytest.mark.parametrize("native", [True, False], ids=["native-reader", "python-reader"])
def test_streamed_transactions_rolled_back_whole_and_to_a_savepoint_deliver_nothing_of_them(
        scratch_db, services, tmp_path, native):
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 10)
    ensure_slot(scratch_db.config())
    dest = Destinations.shared(services, tmp_path / "spool")
    port = free_port()
    env = pulse_env(scratch_db, **dest.env(), PGOPTIONS="-c logical_decoding_work_mem=1MB",
                    PULSE_DATABASE__NATIVE_READER=str(native).lower(), PULSE_RUNTIME__METRICS_PORT=str(port))
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(pulse_cmd("run"), env=env, stdout=fh, stderr=subprocess.STDOUT)
    wconn = scratch_db.connect()
    wconn.autocommit = False
    wcur = wconn.cursor()
    try:
        wait_for(lambda: scrape(port).get("pulse_replication_connected") == 1 or proc.poll() is not None, 60,
                 "pulse run to stream")
        insert_events_bulk(cur, content, 0, 1_000)  # committed before

        # 1. A whole transaction of 200,000 rows, streamed while open, then rolled back.
        before = _streamed(cur, scratch_db.slot)
        _big_insert(wcur, content[0])
        wait_for(lambda: _streamed(cur, scratch_db.slot)[1] > before[1] + 10_000_000 or proc.poll() is not None,
                 120, "the server to stream the open transaction")
        wconn.rollback()
        insert_events_bulk(cur, content, 0, 1_000)  # committed between

        # 2. Kept rows, a savepoint, 200,000 rows streamed, ROLLBACK TO SAVEPOINT, kept rows, COMMIT.
        before = _streamed(cur, scratch_db.slot)
        insert_events_bulk(wcur, content, 0, 500)
        wcur.execute("SAVEPOINT doomed")
        _big_insert(wcur, content[1])
        wait_for(lambda: _streamed(cur, scratch_db.slot)[1] > before[1] + 10_000_000 or proc.poll() is not None,
                 120, "the server to stream the subtransaction")
        wcur.execute("ROLLBACK TO SAVEPOINT doomed")
        insert_events_bulk(wcur, content, 0, 500)
        wconn.commit()
        insert_events_bulk(cur, content, 0, 1_000)  # committed after
        assert proc.poll() is None, log_path.read_text()[-3000:]

        cur.execute("SELECT count(*) FROM engagement_events WHERE raw_payload ? 'doomed'")
        assert cur.fetchone()[0] == 0
        tally = assert_exact(scratch_db.url, dest, env, alive=lambda: proc.poll() is None)
        assert tally.source == 4_000
        cur.execute("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s", (scratch_db.slot,))
        assert cur.fetchone()[0] >= 2, "the server streamed nothing: the test would prove nothing"
        assert dest.board_events() == 4_000  # no doomed row was ever counted, not even once undone
    finally:
        wconn.rollback()
        wconn.close()
        if proc.poll() is None:
            proc.terminate()
        proc.wait(60)
        dest.cleanup()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
