"""Verify the external system (which Pulse cannot read): the accounting of every event in the range.

Each source row of `engagement_events` in the range (by `event_ts`) must be,
by its event id, in one of:

- **dead-lettered**: in the dead-letter store (`external_dead_letter`);
- **delivered**: resolved by the sink (acknowledged by the endpoint, or
  dead-lettered and since replayed);
- **pending**: held by the outbox, not acknowledged yet (with the oldest's age).

An id in none of them is a finding (`missing`). Where "delivered" and
"pending" are read depends on the outbox (`external.outbox`), one
`Accounting` each, all with the same two calls (`refresh`, `classify`):

- `local` (`LocalAccounting`): the ledger of resolved ids in the outbox
  folder's `state` file; pending = frames of segments above the delivered
  position. Segments are read first, then `state`: a segment is deleted
  only after a `state` covering it was written, so a frame that disappears
  between the two reads is in the ledger read second.
- `postgres` (`PostgresAccounting`): the ledger table `external_delivered`
  (resolved ids as ranges, one row per block of 65,536 ids, written in the
  transaction that deletes the delivered outbox rows); pending = the rows
  of `external_outbox`. Both and the dead letters are read in one
  REPEATABLE READ snapshot, so a row delivered meanwhile is seen on exactly
  one side.
- `kafka` (`verify.external_kafka.KafkaAccounting`): the events topic read
  against the external consumer group's committed offsets; ids that may have
  been in segments retention deleted are `unaccountable`, not missing.

Changes newer than the sink's durable position are not in the outbox yet:
as for BigQuery, on findings verify waits (at most `settle_s`) until the
slot's consumer has caught up with the source's current position and counts
again; what is accounted for by then is `settled`.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
from psycopg2 import sql

from pulse.arrays import unique_ints
from pulse.config import Settings
from pulse.errors import ConfigError
from pulse.verify.report import MISSING, Finding, Result

#: The kinds an id is classed in, in order of precedence (the first that holds wins).
KINDS = ("dead", "delivered", "pending", "unaccountable", "missing")


def dead_ids(conn, settings: Settings, keys: list[str]) -> np.ndarray:
    """Event ids in the dead-letter store under any of the sink keys."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT event_id FROM {}.external_dead_letter WHERE sink = ANY(%s)").format(
            sql.Identifier(settings.database.state_schema)), (keys,))
        return np.array(sorted(r[0] for r in cur.fetchall()), np.int64)


def split(ids: np.ndarray, dead: np.ndarray, delivered: np.ndarray, pending: np.ndarray,
          unaccountable: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Class each id by masks, in the order of KINDS."""
    dead = dead.copy()
    delivered = ~dead & delivered
    pending = ~dead & ~delivered & pending
    rest = ~(dead | delivered | pending)
    unacc = rest & unaccountable if unaccountable is not None else np.zeros(len(ids), bool)
    return {"dead": ids[dead], "delivered": ids[delivered], "pending": ids[pending],
            "unaccountable": ids[unacc], "missing": ids[rest & ~unacc]}


class LocalAccounting:
    """The local outbox: the ledger in `state`, the frames of the segments, the dead letters."""

    what = "in no outbox segment, not delivered, not dead-lettered"

    def __init__(self, settings: Settings, conn, folder: Path, key: str) -> None:
        self.settings, self.conn, self.folder, self.key = settings, conn, folder, key
        self.queries = 0
        self.notes: list[str] = []
        self.refresh()

    def refresh(self) -> None:
        from pulse.sinks.external.local import frame_ids, read_state

        pending, oldest = frame_ids(self.folder, read_state(self.folder).delivered) if self.folder.is_dir() else (
            np.empty(0, np.int64), None)
        state = read_state(self.folder)  # after the segments (see the module's docstring)
        self.pending = unique_ints(pending)
        self.oldest = oldest
        self.ledger = state.ledger
        self.dead = dead_ids(self.conn, self.settings, [self.key])
        self.queries += 1

    def classify(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return split(ids, np.isin(ids, self.dead), self.ledger.contains(ids), np.isin(ids, self.pending))

    def close(self) -> None:
        pass


class PostgresAccounting:
    """The PostgreSQL outbox: its ledger table, its rows and the dead letters, in one snapshot."""

    what = "not in the outbox table, not in its ledger of delivered ids, not dead-lettered"

    def __init__(self, settings: Settings, conn, key: str, lo: int, hi: int) -> None:
        from pulse.sinks.external.outbox import Outbox

        self.settings, self.conn, self.key, self.lo, self.hi = settings, conn, key, lo, hi
        self.outbox = Outbox(settings.database.dsn(), settings.database.state_schema, key)
        self.queries = 0
        self.notes: list[str] = []
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (f"{settings.database.state_schema}.external_delivered",))
            if not cur.fetchone()[0]:
                raise ConfigError("the PostgreSQL outbox's ledger table external_delivered is missing",
                                  hint="run `pulse db init` (migration 012), then restart the sink")
        self.refresh()

    def refresh(self) -> None:
        conn = self.conn
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                cur.execute(sql.SQL("SELECT event_id, extract(epoch FROM enqueued_at)::float8 FROM {} "
                                    "WHERE sink = %s AND event_id BETWEEN %s AND %s").format(self.outbox.t_outbox),
                            (self.key, self.lo, self.hi))
                rows = cur.fetchall()
                self.pending_ids = np.array([r[0] for r in rows], np.int64)
                self.pending_at = np.array([r[1] for r in rows], np.float64)
                self.ledger = self.outbox.ledger(cur, self.lo, self.hi)
                self.dead = dead_ids(conn, self.settings, [self.key])
            finally:
                cur.execute("COMMIT")
        self.queries += 3

    @property
    def oldest(self) -> float | None:
        return float(self.pending_at.min()) if len(self.pending_at) else None

    def classify(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return split(ids, np.isin(ids, self.dead), self.ledger.contains(ids), np.isin(ids, self.pending_ids))

    def close(self) -> None:
        pass


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


def outbox_of(settings: Settings, name: str = "external") -> str:
    """The outbox verify reads: `external.outbox`; `auto` is the local one (`pulse run`'s), when its folder exists.

    Under `pulse consume` `auto` means Kafka, which verify cannot tell from
    here: with no local outbox folder it refuses rather than call every event
    missing (and have `--repair` send them all again).
    """
    from pulse.sinks.external.sink import outbox_folder

    cfg = settings.external
    if cfg.outbox != "auto":
        return cfg.outbox
    folder = outbox_folder(cfg, settings.database, name)
    if not folder.is_dir():
        raise ConfigError(f"external.outbox is auto and there is no local outbox folder at {folder}",
                          hint="name the outbox the external sink uses: PULSE_EXTERNAL__OUTBOX=kafka (pulse consume), "
                               "=postgres, or =local with PULSE_EXTERNAL__OUTBOX_DIR set to the folder `pulse run` uses")
    return "local"


def accounting(settings: Settings, conn, kind: str, src: np.ndarray, name: str = "external"):
    from pulse.sinks.external.sink import outbox_folder, sink_key

    if kind == "local":
        return LocalAccounting(settings, conn, outbox_folder(settings.external, settings.database, name),
                               sink_key(settings.database, name))
    lo, hi = (int(src[0]), int(src[-1])) if len(src) else (0, -1)
    if kind == "postgres":
        return PostgresAccounting(settings, conn, sink_key(settings.database, name), lo, hi)
    from pulse.verify.external_kafka import KafkaAccounting

    return KafkaAccounting(settings, conn, src, name)


def verify_external(settings: Settings, *, since: datetime | None, until: datetime | None, settle_s: float = 30.0,
                    name: str = "external") -> Result:
    from pulse.source.db import connect
    from pulse.verify.bigquery import settle

    started = time.monotonic()
    result = Result("external", unit="checks")
    kind = outbox_of(settings, name)
    conn = connect(settings.database)
    conn.autocommit = True
    acc = None
    try:
        src = _source_ids(conn, settings.database.source_schema, since, until)
        acc = accounting(settings, conn, kind, src, name)
        parts = acc.classify(src)
        result.buckets = 1
        if len(parts["missing"]):
            why = settle(conn, settings.database.slot, settle_s)
            if why is None:
                deadline = time.monotonic() + settle_s
                while True:
                    acc.refresh()
                    result.buckets += 1
                    before = len(parts["missing"])
                    parts = acc.classify(src)
                    result.settled += before - len(parts["missing"])
                    if not len(parts["missing"]) or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
            else:
                result.notes.append(why)
        result.queries = 1 + acc.queries
        result.rows_source = len(src)
        result.rows_destination = len(parts["delivered"])
        oldest = acc.oldest
        age = round(max(0.0, time.time() - oldest), 1) if oldest is not None else 0.0
        result.notes.append(f"outbox {kind}: delivered {len(parts['delivered']):,}, pending {len(parts['pending']):,} "
                            f"(oldest {age:g} s), dead-lettered {len(parts['dead']):,}, "
                            f"in none of them {len(parts['missing']):,}")
        result.notes.extend(acc.notes)
        if len(parts["unaccountable"]):
            first = " ".join(str(int(i)) for i in parts["unaccountable"][:5])
            result.notes.append(f"unaccountable {len(parts['unaccountable']):,} (first {first}): not in the topic, "
                                "which retention has cut; not findings")
        result.accounting = {"outbox": kind, "delivered": len(parts["delivered"]), "pending": len(parts["pending"]),
                             "dead_lettered": len(parts["dead"]), "missing": len(parts["missing"]),
                             "unaccountable": len(parts["unaccountable"]), "oldest_pending_s": age}
        result.findings = [Finding(MISSING, str(int(i)), detail=acc.what) for i in parts["missing"]]
        result.seconds = time.monotonic() - started
        return result
    finally:
        if acc is not None:
            acc.close()
        conn.close()
