"""`pulse verify --repair`: fix what verify found with the machinery that exists.

BigQuery:

- `missing` and `different` ids: a backfill (`runtime.backfill`) of exactly
  their id ranges, to BigQuery only. The backfill's rows carry a newer
  position than the table's row, so the sink's MERGE replaces the row (or
  inserts it); the live stream keeps running meanwhile (DBLog windows).
- `extra` ids (the destination has a row the source does not): Pulse has no
  change to replay for them (a delete it never saw, e.g. while the table was
  restored from an old copy), so verify deletes them in BigQuery with one
  DML statement, after checking that the source still lacks them (an id that
  exists there but outside the verified time range is backfilled instead).
- `duplicate` ids: all their rows are deleted, then they are backfilled.

The backfill runs are executed by the pipeline that consumes the slot (`pulse
run`, it polls for runs); when none runs, verify runs one itself, as `pulse
backfill` does, until the runs are done.

Redis: the window is rebuilt from the source (`runtime.rebuild.rebuild_redis`).

External system: the `missing` ids (in no outbox segment, not delivered, not
dead-lettered) are backfilled to the external sink alone, by id range: they
enter its outbox again (under their stable CloudEvent ids) and are pending
until the endpoint acknowledges them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from pulse.config import Settings
from pulse.errors import TransientError
from pulse.log import get_logger
from pulse.verify.bigquery import id_ranges
from pulse.verify.report import DIFFERENT, DUPLICATE, EXTRA, MISSING, Result

log = get_logger(__name__)


def repair_bigquery(settings: Settings, result: Result, timeout_s: float = 600.0, client=None) -> dict[str, Any]:
    from psycopg2 import sql

    from pulse.source.db import connect
    from pulse.sinks.bigquery import schema as S
    from pulse.sinks.bigquery.client import make_client, query_config, retries

    ids = {k: sorted(int(f.key) for f in result.findings if f.kind == k) for k in (MISSING, DIFFERENT, EXTRA,
                                                                                     DUPLICATE)}
    backfill = set(ids[MISSING]) | set(ids[DIFFERENT]) | set(ids[DUPLICATE])
    delete = set(ids[DUPLICATE])
    if ids[EXTRA]:
        conn = connect(settings.database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT id FROM {}.engagement_events WHERE id = ANY(%s)").format(
                    sql.Identifier(settings.database.source_schema)), (ids[EXTRA],))
                present = {r[0] for r in cur.fetchall()}
        finally:
            conn.close()
        backfill |= present
        delete |= set(ids[EXTRA]) - present
    done: dict[str, Any] = {"deleted": 0, "backfilled_ids": len(backfill), "runs": 0}
    if delete:
        from google.cloud import bigquery

        cfg = settings.bigquery
        own = client is None
        client = client or make_client(cfg)
        retry, job_retry = retries(cfg.request_timeout_s)
        try:
            table = S.ref(client.project, S.check_identifier("dataset", cfg.dataset),
                          S.check_identifier("table", cfg.table))
            job = client.query(f"DELETE FROM {table} WHERE event_id IN UNNEST(@ids)", job_config=query_config(
                cfg, settings.database.slot, "verify-repair",
                [bigquery.ArrayQueryParameter("ids", "INT64", sorted(delete))]), retry=retry, job_retry=job_retry)
            job.result(timeout=cfg.request_timeout_s, retry=retry, job_retry=job_retry)
            done["deleted"] = int(job.num_dml_affected_rows or 0)
        finally:
            if own:
                client.close()
    if backfill:
        done["runs"] = _backfill_ids(settings, backfill, "bigquery", timeout_s)
    return done


def _backfill_ids(settings: Settings, ids: list[int], sink: str, timeout_s: float, via: str | None = None) -> int:
    """Backfill exactly the id ranges covering `ids` to `sink` and wait for them; returns the number of runs.

    `via`: the relaying sink (kafka) a pipeline started here runs instead of `sink` itself.
    """
    from pulse.runtime.backfill import BackfillSpec, submit
    from pulse.schema import init_database

    init_database(settings.database)
    runs = [submit(settings.database, BackfillSpec(min_id=lo, max_id=hi, sinks=(sink,)))["run_id"]
            for lo, hi in id_ranges(ids)]
    execute_runs(settings, runs, [via or sink], timeout_s)
    return len(runs)


def execute_runs(settings: Settings, run_ids: list[str], targets: list[str], timeout_s: float) -> None:
    """Wait for the runs: handed to the running pipeline, or run by a pipeline started here."""
    from pulse.cli.backfill import _slot_active

    if _slot_active(settings):
        _wait(settings, run_ids, timeout_s)
        return
    from pulse.runtime.pipeline import Pipeline
    from pulse.sinks import build_sink

    names = list(dict.fromkeys([*(s for s in settings.runtime.sinks if s != "memory"), *targets]))
    pipeline = Pipeline(settings, [build_sink(n, settings) for n in names])
    failure: list[BaseException] = []

    def _run() -> None:
        try:
            pipeline.run()
        except BaseException as exc:  # re-raised below, on this thread
            failure.append(exc)

    thread = threading.Thread(target=_run, name="verify-repair", daemon=True)
    thread.start()
    try:
        _wait(settings, run_ids, timeout_s, failure)
    finally:
        pipeline.stop()
        thread.join(120)
    if failure:
        raise failure[0]
    if "bigquery" in names:
        # Durable in the spool is not yet in the table: load what the run left there
        # (what `pulse upload --once` does), so the verification that follows sees it.
        from pulse.sinks.bigquery.client import Tables, make_client
        from pulse.sinks.bigquery.load import Loader
        from pulse.sinks.bigquery.spool import Spool

        cfg = settings.bigquery
        if Path(cfg.spool_dir).exists():
            tables = Tables(make_client(cfg), cfg, slot=settings.database.slot)
            try:
                Loader(tables, Spool(Path(cfg.spool_dir)), cfg).drain()
            finally:
                tables.client.close()


def _wait(settings: Settings, run_ids: list[str], timeout_s: float, failure: list | None = None) -> None:
    from pulse.runtime.backfill import get_run
    from pulse.source.db import connect

    conn = connect(settings.database)
    conn.autocommit = True
    deadline = time.monotonic() + timeout_s
    try:
        with conn.cursor() as cur:
            while True:
                states = {r: get_run(cur, settings.database, r)["state"] for r in run_ids}
                if "failed" in states.values():
                    raise TransientError(f"repair backfill failed: {[r for r, s in states.items() if s == 'failed']}")
                if all(s == "done" for s in states.values()):
                    return
                if failure:
                    return
                if time.monotonic() > deadline:
                    raise TransientError(f"repair backfills not done after {timeout_s:g}s: {states}")
                time.sleep(0.2)
    finally:
        conn.close()

def repair_external(settings: Settings, result: Result, timeout_s: float = 600.0) -> dict[str, Any]:
    """Backfill the missing ids to the external sink: into its outbox (local, postgres), or onto the topic (kafka).

    Over Kafka the runs are relayed: the producer (`pulse produce`, or a
    pipeline with the Kafka sink started here) publishes the rows marked for
    the external sink alone, and its `pulse consume` worker delivers them.
    """
    missing = sorted(int(f.key) for f in result.findings if f.kind == MISSING)
    done: dict[str, Any] = {"backfilled_ids": len(missing), "runs": 0}
    if missing:
        from pulse.verify.external import outbox_of

        relay = "kafka" if outbox_of(settings) == "kafka" else None
        done["runs"] = _backfill_ids(settings, missing, "external", timeout_s, via=relay)
    return done


def repair_redis(settings: Settings) -> dict[str, Any]:
    from pulse.runtime.rebuild import rebuild_redis

    summary = rebuild_redis(settings)
    return {"rebuilt_events": summary["events"]}
