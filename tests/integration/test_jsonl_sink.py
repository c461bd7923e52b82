"""The JSON-lines sink end to end: `pulse run` with only PULSE_JSONL__PATH set, history, live rows, `kill -9`.

Every event of the source, the rows before the first start included (the
initial snapshot), ends in the files exactly once, the update as a line of
its own after its insert; the sink is registered by one registry row and
enabled by its setting like any destination (docs/writing-a-sink.md).
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter

import orjson

from .pipeline_helpers import insert_content, insert_events_bulk, wait_for
from .pipeline_helpers import pulse_cmd, pulse_env


def _lines(folder) -> list[dict]:
    return [orjson.loads(x) for p in sorted(folder.glob("*.jsonl")) for x in p.read_bytes().splitlines()]


def test_history_and_live_rows_land_once_across_a_kill_9(scratch_db, tmp_path):
    folder = tmp_path / "events"
    env = pulse_env(scratch_db, PULSE_JSONL__PATH=str(folder), PULSE_JSONL__SEGMENT_BYTES="65536")
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 3)
    insert_events_bulk(cur, content, 0, 2_000)  # before the slot: the snapshot copies them

    def start() -> subprocess.Popen:
        return subprocess.Popen(pulse_cmd("run"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    def source_ids() -> set[int]:
        cur.execute("SELECT id FROM engagement_events")
        return {r[0] for r in cur.fetchall()}

    proc = start()
    try:
        wait_for(lambda: len(_lines(folder)) >= 2_000 or proc.poll() is not None, 120, "the snapshot in the files")
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        insert_events_bulk(cur, content, 2_000, 1_000)
        wait_for(lambda: len(_lines(folder)) >= 2_500, 60, "live rows in the files")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        insert_events_bulk(cur, content, 3_000, 1_000)  # while it is down
        cur.execute("UPDATE engagement_events SET duration_ms = 7 WHERE id = (SELECT min(id) FROM engagement_events)")
        proc = start()
        want = source_ids()
        wait_for(lambda: {d["event_id"] for d in _lines(folder)} >= want and
                 any(d["op"] == "update" for d in _lines(folder)), 120, "every event in the files")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            conn.close()
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    assert "sink=jsonl" in err and "PULSE_JSONL__PATH" in err
    got = _lines(folder)
    inserts = Counter(d["event_id"] for d in got if d["op"] == "insert")
    assert set(inserts) == want and max(inserts.values()) == 1, [i for i, n in inserts.items() if n > 1][:10]
    updates = [d for d in got if d["op"] == "update"]
    assert len(updates) == 1 and updates[0]["duration_ms"] == 7
    positions = [(d["source_lsn"], d["source_seq"]) for d in got]
    assert positions == sorted(positions)  # one sink, one order: the stream's
    assert len(list(folder.glob("*.jsonl"))) > 1  # segments rotated at 64 KiB
