"""The BigQuery sink against the emulator, through the official clients.

Each test gets its own dataset (deleted after) and spool folder. The check
is always the same: the table holds exactly the source's event ids, each
once, and every row's values are what MISSION.md's enrichment rules give
for the source row and its content, computed independently of Pulse: by
PostgreSQL, in SQL (`round(numeric, 2)` rounds half away from zero, the
rule), never by `pulse.transform`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import pytest

from pulse.generator import GenerateSpec, run as generate
from pulse.model import Batch, Position
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.source.slot import ensure_slot

from .pipeline_helpers import Running, insert_content, insert_events_bulk, wait_for
from .bigquery_helpers import bq_converged, bq_event, bq_settings, bq_table_rows, ensure_emulator_running, source_rows
from .pipeline_helpers import pulse_cmd, pulse_env


def test_the_sql_oracle_applies_the_rules(scratch_db):
    """The oracle itself, on hand-computed cases (the edges of MISSION.md's rules)."""
    conn = scratch_db.connect()
    cur = conn.cursor()
    # (duration_ms, length_seconds) -> (engagement_seconds, engagement_pct), by hand.
    cases = {
        (1140, 2): (Decimal("1.14"), Decimal("0.57")),
        (1005, 2): (Decimal("1.005"), Decimal("0.50")),  # 0.5025
        (1010, 2): (Decimal("1.01"), Decimal("0.51")),  # exactly 0.505: half away from zero
        (1015, 1): (Decimal("1.015"), Decimal("1.02")),  # float rounding would give 1.01
        (3000, 2): (Decimal("3"), Decimal("1.50")),  # beyond the length: ratio kept
        (-250, 2): (None, None),  # negative duration: no metrics
        (None, 2): (None, None),
        (1500, 0): (Decimal("1.5"), None),  # zero length: no ratio
        (1500, -10): (Decimal("1.5"), None),
        (1500, None): (Decimal("1.5"), None),  # content unknown
    }
    cur.execute("DELETE FROM engagement_events")
    for i, (duration, length) in enumerate(cases, start=1):
        content = None
        if length is not None:
            cur.execute("INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                        "VALUES (gen_random_uuid(), %s, 't', 'video', %s, now()) RETURNING id", (f"o{i}", length))
            content = cur.fetchone()[0]
        cur.execute("INSERT INTO engagement_events (id, content_id, event_type, event_ts, duration_ms) "
                    "VALUES (%s, %s, 'play', now(), %s)", (i, content, duration))
    got = source_rows(cur)
    for i, ((duration, length), want) in enumerate(cases.items(), start=1):
        assert got[i][2] == duration and got[i][1] == length
        assert got[i][4:] == want, ((duration, length), got[i][4:], want)
    conn.rollback()


def _assert_exact(client, dataset, cur) -> int:
    rows = bq_table_rows(client, dataset)
    assert rows is not None
    source = source_rows(cur)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate rows"
    assert set(ids) == set(source), (f"missing {sorted(set(source) - set(ids))[:10]}, "
                                     f"extra {sorted(set(ids) - set(source))[:10]}")
    bad = []
    for r in rows:
        want = source[r[0]]
        got = (r[1], r[2], r[3], r[4], r[5], r[6])
        if want != got:  # Decimal == Decimal compares values: 1.140 == 1.14
            bad.append((r[0], want, got))
    assert not bad, f"{len(bad)} rows differ from the enrichment rules (SQL oracle), e.g. {bad[:3]}"
    return len(rows)


# -- in-process -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch", "stream"])
def test_generator_run_with_anomalies_lands_exactly_once(scratch_db, services, bq, tmp_path, mode):
    client, dataset = bq
    settings = bq_settings(scratch_db, services, dataset, tmp_path / "spool", mode=mode)
    conn = scratch_db.connect()
    cur = conn.cursor()
    now = datetime.now(timezone.utc)
    with Running(Pipeline(settings, [BigQuerySink(settings.bigquery)])):
        summary = generate(scratch_db.config(), GenerateSpec(
            mode="bulk", count=4000, since=now - timedelta(days=2), until=now, seed=11, anomalies=0.08,
            chunk_rows=1000))
        # Updates and deletes on top of the generator's own, so both are certain to happen.
        cur.execute("SELECT id FROM engagement_events ORDER BY id LIMIT 40")
        some = [r[0] for r in cur.fetchall()]
        cur.execute("UPDATE engagement_events SET duration_ms = 777, device = 'updated' WHERE id = ANY(%s)",
                    (some[:20],))
        cur.execute("DELETE FROM engagement_events WHERE id = ANY(%s)", (some[20:],))
        cur.execute("UPDATE engagement_events SET duration_ms = 888 WHERE id = %s", (some[0],))
        wait_for(lambda: bq_converged(client, dataset, cur), 90, f"{mode}: the table to match the source",
                 interval=0.5)
    assert summary.rows_written == 4000
    n = _assert_exact(client, dataset, cur)
    assert n == 4000 - summary.deleted - 20
    updated = {r[0]: r for r in bq_table_rows(client, dataset) if r[0] in some[:20]}
    assert updated[some[0]][3] == 888 and all(updated[i][4] == "updated" for i in some[:20])
    assert all(r[7] == "update" for r in updated.values())
    # The table is partitioned by day of event_ts and clustered for the common filters.
    table = client.get_table(f"{dataset}.engagement_events")
    assert table.time_partitioning.field == "event_ts" and table.clustering_fields == ["content_type", "content_id"]
    # The whole schema, by hand (not read from pulse.sinks.bigquery.schema). BigQuery reports the
    # legacy names INTEGER / FLOAT / BOOLEAN for INT64 / FLOAT64 / BOOL: one type, two spellings.
    alias = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}
    assert {f.name: (alias.get(f.field_type, f.field_type), f.mode) for f in table.schema} == EXPECTED_SCHEMA


EXPECTED_SCHEMA = {
    "event_id": ("INT64", "REQUIRED"), "content_id": ("STRING", "NULLABLE"), "user_id": ("STRING", "NULLABLE"),
    "event_type": ("STRING", "NULLABLE"), "event_ts": ("TIMESTAMP", "NULLABLE"),
    "duration_ms": ("INT64", "NULLABLE"), "device": ("STRING", "NULLABLE"), "raw_payload": ("JSON", "NULLABLE"),
    "content_slug": ("STRING", "NULLABLE"), "content_title": ("STRING", "NULLABLE"),
    "content_type": ("STRING", "NULLABLE"), "length_seconds": ("INT64", "NULLABLE"),
    "engagement_seconds": ("NUMERIC", "NULLABLE"), "engagement_pct": ("NUMERIC", "NULLABLE"),
    "op": ("STRING", "NULLABLE"), "source_lsn": ("INT64", "REQUIRED"), "source_seq": ("INT64", "REQUIRED"),
    "commit_ts": ("TIMESTAMP", "NULLABLE"), "processed_ts": ("TIMESTAMP", "NULLABLE"),
    "backfill": ("BOOL", "NULLABLE"), "problems": ("STRING", "REPEATED"),
}


def test_a_rejected_row_goes_to_the_dead_letter_table_and_the_rest_lands(services, bq, tmp_path):
    client, dataset = bq
    from pulse.config import BigQueryConfig

    cfg = BigQueryConfig(project=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), dataset=dataset,
                         endpoint=services["PULSE_BIGQUERY_ENDPOINT"], spool_dir=tmp_path, load_interval_s=0.2)
    sink = BigQuerySink(cfg)
    assert sink.open() == Position(0, 0)
    events = [bq_event(1, Position(10, 1), '{"ok": true}'), bq_event(2, Position(10, 2), "{not json"),
              bq_event(3, Position(10, 3), None)]
    assert sink.write(Batch(tuple(events))) == Position(10, 3)
    try:
        wait_for(lambda: not sink.spool.files(), 30, "the spool to be loaded")
    finally:
        sink.close()
    assert sorted(r[0] for r in client.query(f"SELECT event_id FROM `{dataset}.engagement_events`").result()) == [1, 3]
    dead = list(client.query(f"SELECT event_id, reason, raw_payload FROM `{dataset}.engagement_events_dead_letter`")
                .result())
    assert [(r[0], r[2]) for r in dead] == [(2, "{not json")] and "JSON" in dead[0][1]
    # Reopening recovers the position from the spool's record, and re-applying changes nothing.
    again = BigQuerySink(cfg)
    assert again.open() == Position(10, 3)
    again.loader.tables.apply(again.loader.tables.ref("engagement_events"), Position(10, 3))
    again.close()
    assert len(list(client.query(f"SELECT 1 FROM `{dataset}.engagement_events_dead_letter`").result())) == 1


def test_a_crash_between_a_direct_load_and_its_state_row_leaves_each_row_once(services, bq, tmp_path):
    """Fresh ids are loaded straight into the table; dying before the state row costs one no-op MERGE."""
    client, dataset = bq
    from pulse.config import BigQueryConfig

    cfg = BigQueryConfig(project=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), dataset=dataset,
                         endpoint=services["PULSE_BIGQUERY_ENDPOINT"], spool_dir=tmp_path, upload_in_process=False)

    def ids() -> list[int]:
        return sorted(r[0] for r in client.query(f"SELECT event_id FROM `{dataset}.engagement_events`").result())

    sink = BigQuerySink(cfg)
    sink.open()
    sink.write(Batch(tuple(bq_event(i, Position(10, i), '{"i": %d}' % i) for i in range(1, 51))))

    class Killed(Exception):
        pass

    def die(_position):
        raise Killed("the process died after the load job, before the state row")

    sink.loader.tables.store_position = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        sink.loader.load_once()
    assert ids() == list(range(1, 51)) and len(sink.spool.files()) == 1  # loaded, not yet recorded
    sink.close()

    again = BigQuerySink(cfg)
    assert again.open() == Position(10, 50)
    again.loader.drain()
    assert (again.loader.direct_loads, again.loader.merge_loads) == (0, 1)  # the ids are there: MERGE, a no-op
    assert ids() == list(range(1, 51)) and again.loader.tables.state_position() == Position(10, 50)
    again.write(Batch(tuple(bq_event(i, Position(11, i), None) for i in range(51, 61))))
    again.loader.drain()
    assert again.loader.direct_loads == 1
    assert ids() == list(range(1, 61)) and again.loader.tables.state_position() == Position(11, 60)
    again.close()


def test_emulator_stopped_and_restarted_mid_run(scratch_db, services, bq, tmp_path):
    from pulse_dev import services as dev

    client, dataset = bq
    settings = bq_settings(scratch_db, services, dataset, tmp_path / "spool")
    conn = scratch_db.connect()
    cur = conn.cursor()
    sink = BigQuerySink(settings.bigquery)
    pipeline = Pipeline(settings, [sink])
    try:
        with Running(pipeline):
            content = insert_content(cur, 5)
            insert_events_bulk(cur, content, 0, 1000)
            wait_for(lambda: bq_converged(client, dataset, cur), 60, "the first events in BigQuery", interval=0.3)
            info = dev._load_state()["services"]["bigquery"]
            os.kill(info["pid"], signal.SIGTERM)
            wait_for(lambda: not dev._alive(info["pid"]), 30, "the emulator to stop")
            for i in range(1, 4):
                insert_events_bulk(cur, content, i * 1000, 1000)
            cur.execute("DELETE FROM engagement_events WHERE id IN (SELECT id FROM engagement_events LIMIT 5)")
            cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            target = int(cur.fetchone()[0])
            # BigQuery is down, yet the sink keeps up: its position is in the spool.
            wait_for(lambda: pipeline.workers["bigquery"].durable.lsn >= target - 10_000_000
                     and sink.spool.files(), 30, "the spool to hold the new batches")
            wait_for(lambda: sink.loader.last_error is not None, 30, "the loader to notice the outage")
            dev.up(("bigquery",))
            wait_for(lambda: bq_converged(client, dataset, cur), 90, "the table to catch up after the restart",
                     interval=0.5)
    finally:
        ensure_emulator_running()
    assert _assert_exact(client, dataset, cur) == 3995


# -- kill -9 of `pulse run` and `pulse upload` -------------------------------------------------


def _upload_cmd() -> list[str]:
    return [sys.executable, "-m", "pulse.cli.upload"]


def _logged(p, event: str) -> bool:
    """The process's log file (`start` in the kill -9 test) has a line of this event."""
    return f" {event} " in p.log_file.read_text()


def test_kill_9_of_run_and_upload_at_random_moments(scratch_db, services, bq, tmp_path):
    client, dataset = bq
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 10)
    ensure_slot(scratch_db.config())
    spool = tmp_path / "spool"
    env = pulse_env(
        scratch_db,
        PULSE_BIGQUERY_PROJECT=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"),
        PULSE_BIGQUERY_DATASET=dataset, PULSE_BIGQUERY_ENDPOINT=services["PULSE_BIGQUERY_ENDPOINT"],
        PULSE_BIGQUERY__SPOOL_DIR=str(spool), PULSE_BIGQUERY__LOAD_INTERVAL_S="0.3",
        PULSE_BIGQUERY__UPLOAD_IN_PROCESS="false", PULSE_RUNTIME__BATCH_MAX_EVENTS="700",
    )
    total, per_txn = 20_000, 500
    done = threading.Event()

    def writer() -> None:
        wconn = psycopg2.connect(scratch_db.url)
        wconn.autocommit = True
        wcur = wconn.cursor()
        for i in range(total // per_txn):
            insert_events_bulk(wcur, content, i * per_txn, per_txn)
            if i % 8 == 7:  # updates and deletes of earlier events, interleaved
                wcur.execute("UPDATE engagement_events SET duration_ms = duration_ms + 1 "
                             "WHERE id IN (SELECT id FROM engagement_events ORDER BY random() LIMIT 30)")
                wcur.execute("DELETE FROM engagement_events "
                             "WHERE id IN (SELECT id FROM engagement_events ORDER BY random() LIMIT 10)")
            time.sleep(0.08)
        wconn.close()
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    procs: list[subprocess.Popen] = []

    def start(cmd):
        # Each process's log in a file of its own: an unexpected exit shows why.
        log_file = tmp_path / f"proc-{len(procs)}.log"
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(log_file, "w"))
        p.log_file = log_file  # type: ignore[attr-defined]
        procs.append(p)
        return p

    def why(p) -> str:
        return p.log_file.read_text()[-3000:]

    kills = 0
    try:
        for _ in range(4):
            run_p = start(pulse_cmd("run", "--sink", "bigquery"))
            up_p = start(_upload_cmd())
            victims = [run_p, up_p]
            rng.shuffle(victims)
            for p in victims:
                time.sleep(rng.uniform(0.8, 2.5))
                assert p.poll() is None, f"{p.args} exited by itself with {p.returncode} (seed {seed}): {why(p)}"
                p.send_signal(signal.SIGKILL)
                p.wait(30)
                kills += 1
        t.join(120)
        assert done.is_set()
        run_p = start(pulse_cmd("run", "--sink", "bigquery"))
        up_p = start(_upload_cmd())
        # The SIGTERM below must find both started (their handlers set, which each logs just after):
        # the table may match the source before the new `pulse run` has even imported its modules
        # (the processes killed last had loaded everything), and a SIGTERM then ends it with -15.
        wait_for(lambda: (bq_converged(client, dataset, cur) and _logged(run_p, "run.starting")
                          and _logged(up_p, "upload.starting")) or run_p.poll() is not None
                 or up_p.poll() is not None, 120, f"the table to match the source (seed {seed})", interval=0.5)
        assert run_p.poll() is None, f"pulse run died with {run_p.returncode} (seed {seed}): {why(run_p)}"
        assert up_p.poll() is None, f"pulse upload died with {up_p.returncode} (seed {seed}): {why(up_p)}"
        for p in (run_p, up_p):
            p.send_signal(signal.SIGTERM)
        for p in (run_p, up_p):
            assert p.wait(60) == 0, f"{p.args} ended with {p.returncode} (seed {seed}): {why(p)}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert kills == 8
    _assert_exact(client, dataset, cur)
    # `pulse upload --once` drains whatever is left and exits.
    out = subprocess.run([*_upload_cmd(), "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not [p for p in spool.glob("*.parquet")]
