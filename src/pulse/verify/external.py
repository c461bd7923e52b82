"""Verify the external system (which Pulse cannot read): the accounting of every event in the range.

Each source row of `engagement_events` in the range (by `event_ts`) must be,
by its event id, in one of:

- **dead-lettered**: in the dead-letter store (`external_dead_letter`);
- **delivered**: in the local outbox's ledger (the ids of every frame
  resolved, i.e. acknowledged by the endpoint or dead-lettered, kept as
  ranges in the outbox's `state` file);
- **pending**: in a frame of a segment above the delivered position
  (appended, fsync'd, not yet acknowledged), with the oldest's age.

An id in none of them is a finding (`missing`): the outbox lost it (a
segment deleted or damaged by hand, a restored disk) or never had it.

Read without locks while `pulse run` writes: the segments are read first,
then `state`. A segment is deleted only after a `state` that covers it was
written, so a frame that disappears between the two reads is in the ledger
read second. Changes newer than the sink's durable position are not in the
outbox yet: as for BigQuery, on findings verify waits (at most `settle_s`)
until the slot's consumer has caught up with the source's current position
and counts again; what is accounted for by then is `settled`.

Only the local outbox keeps a ledger. With `external.outbox = postgres`,
delivered rows are deleted without a trace, so the accounting cannot be
done and verify says so; with `kafka`, the consumer group's committed
offsets are the delivered mark (not verified here).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
from psycopg2 import sql

from pulse.config import Settings
from pulse.verify.report import MISSING, Finding, Result

class Accounting:
    """One reading of the sink's side: dead-lettered ids, the ledger, pending ids."""

    def __init__(self, settings: Settings, conn, folder: Path, sink_key: str) -> None:
        from pulse.sinks.external_local import frame_ids, read_state

        pending, oldest = frame_ids(folder, read_state(folder).delivered) if folder.is_dir() else (
            np.empty(0, np.int64), None)
        state = read_state(folder)  # after the segments (see the module's docstring)
        self.pending = np.unique(pending)
        self.oldest = oldest
        self.ledger = state.ledger
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT DISTINCT event_id FROM {}.external_dead_letter WHERE sink = %s").format(
                sql.Identifier(settings.database.state_schema)), (sink_key,))
            self.dead = np.array(sorted(r[0] for r in cur.fetchall()), np.int64)

    def classify(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        dead = np.isin(ids, self.dead)
        delivered = ~dead & self.ledger.contains(ids)
        pending = ~dead & ~delivered & np.isin(ids, self.pending)
        return {"dead": ids[dead], "delivered": ids[delivered], "pending": ids[pending],
                "missing": ids[~(dead | delivered | pending)]}


def _source_ids(conn, schema: str, since: datetime | None, until: datetime | None) -> np.ndarray:
    where, params = [], []
    if since is not None:
        where.append(sql.SQL("event_ts >= %s"))
        params.append(since)
    if until is not None:
        where.append(sql.SQL("event_ts < %s"))
        params.append(until)
    cond = sql.SQL(" AND ").join(where) if where else sql.SQL("true")
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT id FROM {}.engagement_events WHERE {} ORDER BY id").format(
            sql.Identifier(schema), cond), params)
        return np.array([r[0] for r in cur.fetchall()], np.int64)


def verify_external(settings: Settings, *, since: datetime | None, until: datetime | None, settle_s: float = 30.0,
                    name: str = "external") -> Result:
    from pulse.schema import connect
    from pulse.sinks.external import outbox_folder, outbox_kind, sink_key
    from pulse.verify.bigquery import settle

    started = time.monotonic()
    cfg = settings.external
    result = Result("external", unit="checks")
    kind = outbox_kind(cfg, name)
    if kind != "local":
        result.notes.append(f"external.outbox = {kind}: only the local outbox keeps a ledger of delivered events, "
                            "so the accounting cannot be done here")
        result.seconds = time.monotonic() - started
        return result
    folder = outbox_folder(cfg, settings.database, name)
    key = sink_key(settings.database, name)
    conn = connect(settings.database)
    conn.autocommit = True
    try:
        src = _source_ids(conn, settings.database.source_schema, since, until)
        acc = Accounting(settings, conn, folder, key)
        parts = acc.classify(src)
        result.queries = 2
        result.buckets = 1
        if len(parts["missing"]):
            why = settle(conn, settings.database.slot, settle_s)
            if why is None:
                deadline = time.monotonic() + settle_s
                while True:
                    acc = Accounting(settings, conn, folder, key)
                    result.queries += 1
                    result.buckets += 1
                    before = len(parts["missing"])
                    parts = acc.classify(src)
                    result.settled += before - len(parts["missing"])
                    if not len(parts["missing"]) or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
            else:
                result.notes.append(why)
        result.rows_source = len(src)
        result.rows_destination = len(parts["delivered"])
        age = round(max(0.0, time.time() - acc.oldest), 1) if acc.oldest is not None else 0.0
        result.notes.append(f"delivered {len(parts['delivered']):,}, pending {len(parts['pending']):,} "
                            f"(oldest {age:g} s), dead-lettered {len(parts['dead']):,}, "
                            f"in none of them {len(parts['missing']):,}")
        result.accounting = {"delivered": len(parts["delivered"]), "pending": len(parts["pending"]),
                             "dead_lettered": len(parts["dead"]), "missing": len(parts["missing"]),
                             "oldest_pending_s": age}
        result.findings = [Finding(MISSING, str(int(i)), detail="in no outbox segment, not delivered, not "
                                   "dead-lettered") for i in parts["missing"]]
        result.seconds = time.monotonic() - started
        return result
    finally:
        conn.close()
