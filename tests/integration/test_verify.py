"""`pulse verify` on the real services: a clean run verifies equal; each kind of drift is named and repaired.

The oracle of each case is the drift the test itself makes (which id, which
column, which board member), never verify's own code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from pulse.config import Settings
from pulse.generator import GenerateSpec, run as generate
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.verify.run import Options, run_verify

from .pipeline_helpers import Running, wait_for
from .bigquery_helpers import bq_converged, bq_settings

OPTS = Options(bucket_s=6 * 3600, leaf_rows=16, settle_s=5)


def _stream(scratch_db, services, dataset, tmp_path, count=3000) -> tuple[Settings, object]:
    """A clean pulse run of `count` generated events (with anomalies) into a fresh dataset."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    settings = bq_settings(scratch_db, services, dataset, tmp_path / "spool")
    client = bigquery.Client(project=settings.bigquery.project, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=settings.bigquery.endpoint))
    conn = scratch_db.connect()
    cur = conn.cursor()
    now = datetime.now(timezone.utc)
    with Running(Pipeline(settings, [BigQuerySink.from_settings(settings)])):
        generate(scratch_db.config(), GenerateSpec(mode="bulk", count=count, since=now - timedelta(days=2),
                                                   until=now, seed=16, anomalies=0.1, chunk_rows=1000))
        wait_for(lambda: bq_converged(client, dataset, cur), 90, "the table to match the source", interval=0.5)
    conn.close()
    return settings, client


def test_rows_in_flight_while_verifying_are_settled_not_reported(scratch_db, services, bq, tmp_path, monkeypatch):
    import contextlib
    from pathlib import Path

    from pulse.sinks.bigquery.spool import Spool
    from pulse.verify import bigquery as VB

    from .pipeline_helpers import insert_content, insert_events

    client, dataset = bq
    settings = bq_settings(scratch_db, services, dataset, tmp_path / "spool")
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 2)
    insert_events(cur, content, 200)
    conn.commit()
    held = contextlib.ExitStack()
    # Instrumentation, not a stand-in: the loaders' lock is released when verify starts settling.
    real_settle = VB.settle

    def settle_after_release(*args, **kw):
        held.close()
        return real_settle(*args, **kw)

    monkeypatch.setattr(VB, "settle", settle_after_release)
    with Running(Pipeline(settings, [BigQuerySink.from_settings(settings)])):
        wait_for(lambda: bq_converged(client, dataset, cur), 60, "the first rows in BigQuery", interval=0.5)
        # Hold the spool's loader lock: new rows become durable in the spool (the slot is
        # acknowledged) but cannot reach the table until verify settles.
        held.enter_context(Spool(Path(settings.bigquery.spool_dir)).locked())
        fresh = insert_events(cur, content, 5)
        conn.commit()
        [r] = run_verify(settings, ["bigquery"], Options(leaf_rows=16, settle_s=30))
        held.close()
    assert r.ok, r.findings
    assert r.rows_source == r.rows_destination + 5  # the first pass saw the fresh rows missing...
    assert r.settled == 5, (r.settled, fresh)       # ...and they agreed once the sink caught up
    conn.close()


def _dml(client, dataset, statement: str) -> None:
    client.query(statement.replace("T.", f"`{dataset}.engagement_events`"), ).result()


def _some_ids(scratch_db, n: int) -> list[int]:
    conn = scratch_db.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM engagement_events ORDER BY id")
        ids = [r[0] for r in cur.fetchall()]
    conn.close()
    step = len(ids) // (n + 1)
    return [ids[step * (i + 1)] for i in range(n)]


def _kinds(result) -> dict[str, list[tuple[str, tuple]]]:
    out: dict[str, list] = {}
    for f in result.findings:
        out.setdefault(f.kind, []).append((f.key, f.columns))
    return out


def test_a_clean_run_verifies_equal_and_each_drift_is_named_then_repaired(scratch_db, services, bq, tmp_path):
    _, dataset = bq
    settings, client = _stream(scratch_db, services, dataset, tmp_path)
    [r] = run_verify(settings, ["bigquery"], OPTS)
    assert r.ok, r.findings[:5]
    assert r.rows_source == r.rows_destination >= 2500

    deleted, changed, other = _some_ids(scratch_db, 3)
    _dml(client, dataset, f"DELETE FROM T. WHERE event_id = {deleted}")
    _dml(client, dataset, f"UPDATE T. SET device = 'tampered' WHERE event_id = {changed}")
    [r] = run_verify(settings, ["bigquery"], OPTS)
    assert _kinds(r) == {"missing": [(str(deleted), ())], "different": [(str(changed), ("device",))]}
    # Naming two rows among thousands takes a few queries, not one per row.
    assert r.queries <= 20, r.queries

    [r] = run_verify(settings, ["bigquery"], OPTS, repair=True)
    assert r.ok, r.findings
    assert r.repair["findings_before"] == 2 and r.repair["runs"] == 2

    # A row the source does not have: extra; repair deletes it.
    _dml(client, dataset, "INSERT INTO T. (event_id, source_lsn, source_seq, event_ts, device) "
                          f"SELECT 999999999, 1, 1, event_ts, 'ghost' FROM T. WHERE event_id = {other}")
    [r] = run_verify(settings, ["bigquery"], OPTS)
    assert _kinds(r) == {"extra": [("999999999", ())]}
    [r] = run_verify(settings, ["bigquery"], OPTS, repair=True)
    assert r.ok and r.repair["deleted"] == 1

    # A row updated at the source while the sink is stopped: different, until the backfill replays it.
    conn = scratch_db.connect()
    with conn.cursor() as cur:
        cur.execute("UPDATE engagement_events SET duration_ms = 4321 WHERE id = %s", (other,))
    conn.commit()
    conn.close()
    [r] = run_verify(settings, ["bigquery"], OPTS)
    assert _kinds(r) == {"different": [(str(other), ("duration_ms", "engagement_seconds", "engagement_pct"))]} or \
        _kinds(r) == {"different": [(str(other), ("duration_ms", "engagement_seconds"))]}, r.findings
    assert any("no consumer" in n for n in r.notes)
    [r] = run_verify(settings, ["bigquery"], OPTS, repair=True)
    assert r.ok, r.findings


ODD = [
    # (content length, duration_ms, device, raw_payload, event_ts offset): each a case the canonical form must agree on
    (100, None, None, None),
    (100, -1500, "web", '{"b": 1, "a": [1, 2.50, 100.0, 1e2, null, true, false]}'),
    (2, 1005, "ios", '{"zz": {"y": 0.10, "x": "é ü 中文 \\" , : {}"}, "a": ""}'),
    (2, 1010, "ünïcødé-device", '"just a string"'),
    (0, 5000, "web", "[]"),
    (None, 5000, "web", "{}"),
    (3, 2_000_000_000, "x" * 300, '{"big": "' + "p" * 20_000 + '"}'),
    (7, 0, "", '{"n": -0.000001, "m": 123456789012345678}'),
]


def test_odd_rows_hash_the_same_in_both_engines(scratch_db, services, bq, tmp_path):
    import uuid

    from pulse.source.db import connect
    from pulse.verify import checksum as C
    from pulse.verify.bigquery import BigQuerySide, Scope, SourceSide
    from pulse.sinks.bigquery import schema as S

    client, dataset = bq
    settings = bq_settings(scratch_db, services, dataset, tmp_path / "spool")
    conn = scratch_db.connect()
    cur = conn.cursor()
    now = datetime.now(timezone.utc)
    with Running(Pipeline(settings, [BigQuerySink.from_settings(settings)])):
        for i, (length, duration, device, payload) in enumerate(ODD):
            cid = str(uuid.uuid4())
            cur.execute("INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                        "VALUES (%s, %s, %s, 'video', %s, now())", (cid, f"s-{i}", f"Tïtle «{i}»", length))
            cur.execute("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, "
                        "device, raw_payload) VALUES (%s, %s, 'play', %s, %s, %s, %s)",
                        (cid, str(uuid.uuid4()), now - timedelta(seconds=i), duration, device, payload))
        cur.execute("INSERT INTO engagement_events (content_id, event_ts) VALUES (NULL, now())")
        conn.commit()
        wait_for(lambda: bq_converged(client, dataset, cur), 60, "the odd rows in BigQuery", interval=0.5)
    src = SourceSide(connect(settings.database), "public", None, None, 3600 * 10**6)
    dst = BigQuerySide(client, S.ref(client.project, dataset, "engagement_events"), None, None, 3600 * 10**6)
    a, b = src.rows(Scope()), dst.rows(Scope())
    assert len(a) == len(ODD) + 1
    for eid in a:
        assert a[eid] == b[eid], (eid, [(n, x, y) for n, x, y in zip(C.COMPARED, a[eid][0], b[eid][0]) if x != y])
    # The checksum aggregate agrees, and equals the definition computed in Python from the fetched fields.
    sa, sb = src.aggregate(Scope(), None), dst.aggregate(Scope(), None)
    assert {k: v.sums for k, v in sa.items()} == {k: v.sums for k, v in sb.items()}
    h = [C.halves(C.render(dict(zip(C.COMPARED, rows[0])))) for rows in a.values()]
    assert sum(v.s1 for v in sa.values()) == sum(x for x, _ in h)
    assert sum(v.s2 for v in sa.values()) == sum(y for _, y in h)
    # Spot values of the rendering: NULL seconds for a negative duration, half away from zero at 2 decimals.
    by_duration = {r[0][5]: r[0] for r in a.values()}
    assert by_duration["-1500"][12] is None and by_duration["-1500"][13] is None
    assert by_duration["1005"][13] == str(50 * 10**7) and by_duration["1010"][13] == str(51 * 10**7)
    assert by_duration["2000000000"][12] == str(2_000_000_000 * 10**6)


def test_redis_board_verified_then_a_changed_entry_found_and_rebuilt(scratch_db, services, tmp_path):
    import uuid

    import redis as redis_lib

    from pulse.sinks.redis.sink import RedisSink
    from .pipeline_helpers import insert_content, insert_events

    prefix = f"pulse_v_{uuid.uuid4().hex[:8]}:"
    settings = Settings(database=scratch_db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
                        runtime={"sinks": ["redis"]},
                        redis={"url": services["PULSE_REDIS_URL"], "prefix": prefix, "window_s": 600, "bucket_s": 10})
    client = redis_lib.Redis.from_url(services["PULSE_REDIS_URL"])
    try:
        conn = scratch_db.connect()
        cur = conn.cursor()
        ids = insert_content(cur, 4)
        conn.commit()
        with Running(Pipeline(settings, [RedisSink(settings.redis)])):
            insert_events(cur, ids, 400, duration_ms=2500)
            conn.commit()
            wait_for(lambda: sum(s for _, s in client.zrange(prefix + "events:10m", 0, -1, withscores=True)) >= 400,
                     30, "400 events on the board")
        [r] = run_verify(settings, ["redis"], OPTS)
        assert r.ok, r.findings
        client.zincrby(prefix + "top:10m", 7, ids[1])
        [r] = run_verify(settings, ["redis"], OPTS)
        assert [(f.kind, f.key) for f in r.findings] == [("different", f"top/{ids[1]}")]
        [r] = run_verify(settings, ["redis"], OPTS, repair=True)
        assert r.ok and r.repair["findings_before"] == 1, r.findings
        # A delete under the default replica identity: the board cannot take the event out, and
        # verify says why and how to fix it.
        with Running(Pipeline(settings, [RedisSink(settings.redis)])):
            cur.execute("DELETE FROM engagement_events WHERE id = (SELECT min(id) FROM engagement_events)")
            conn.commit()
            wait_for(lambda: int(client.hget(prefix + "stats", "uncorrectable") or 0) >= 1, 30, "the delete counted")
        [r] = run_verify(settings, ["redis"], OPTS)
        assert not r.ok and any("--replica-identity-full" in n for n in r.notes), (r.findings, r.notes)
        conn.close()
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
        client.close()


def test_cli_exit_codes_and_json(scratch_db, services, bq, tmp_path):
    _, dataset = bq
    settings, client = _stream(scratch_db, services, dataset, tmp_path, count=500)
    env = {**os.environ, "PULSE_DATABASE_URL": scratch_db.url, "PULSE_SLOT": scratch_db.slot,
           "PULSE_BIGQUERY_DATASET": dataset, "PULSE_BIGQUERY_ENDPOINT": services["PULSE_BIGQUERY_ENDPOINT"],
           "PULSE_BIGQUERY_PROJECT": settings.bigquery.project}
    cmd = [sys.executable, "-m", "pulse.cli.main", "verify", "--sink", "bigquery", "--json", "--settle-s", "1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["results"][0]["rows_source"] == doc["results"][0]["rows_destination"] > 400
    victim = _some_ids(scratch_db, 1)[0]
    _dml(client, dataset, f"DELETE FROM T. WHERE event_id = {victim}")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["results"][0]["findings"] == [{"kind": "missing", "key": str(victim), "columns": [], "detail": ""}]
    table = subprocess.run(cmd[:-3], env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 1 and "missing" in table.stdout and str(victim) in table.stdout
