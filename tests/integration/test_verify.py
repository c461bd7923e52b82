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
from pulse.sinks.bigquery import BigQuerySink
from pulse.verify.run import Options, run_verify

from .pipeline_helpers import Running, wait_for
from .test_bigquery_sink import _bq_settings, _converged, bq  # noqa: F401  (fixture)

OPTS = Options(bucket_s=6 * 3600, leaf_rows=16, settle_s=5)


def _stream(scratch_db, services, dataset, tmp_path, count=3000) -> tuple[Settings, object]:
    """A clean pulse run of `count` generated events (with anomalies) into a fresh dataset."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    settings = _bq_settings(scratch_db, services, dataset, tmp_path / "spool")
    client = bigquery.Client(project=settings.bigquery.project, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=settings.bigquery.endpoint))
    conn = scratch_db.connect()
    cur = conn.cursor()
    now = datetime.now(timezone.utc)
    with Running(Pipeline(settings, [BigQuerySink(settings.bigquery)])):
        generate(scratch_db.config(), GenerateSpec(mode="bulk", count=count, since=now - timedelta(days=2),
                                                   until=now, seed=16, anomalies=0.1, chunk_rows=1000))
        wait_for(lambda: _converged(client, dataset, cur), 90, "the table to match the source", interval=0.5)
    conn.close()
    return settings, client


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
