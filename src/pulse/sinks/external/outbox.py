"""The external sink's durable outbox and dead-letter store, in Pulse's own schema.

Why an outbox: the external endpoint is someone else's and may be down for
hours. If the sink's durable position waited on it, the replication slot
would pin WAL on the source and every other sink would wait too (the slot
is acknowledged up to the slowest sink). So `write()` appends the batch to
`external_outbox` and moves `external_position` in the same PostgreSQL
transaction, and returns at once; delivery threads send from the outbox and
delete what the receiver acknowledged. A crash at any instant leaves the
outbox and the position in agreement: nothing is lost, and what is re-sent
is the same bytes under the same ids.

The ledger (`external_delivered`, what `pulse verify` reads): the ids of
rows resolved (delivered, or dead-lettered), merged as ranges into one row
per block of 2^LEDGER_BLOCK_BITS ids in the same transaction that deletes
the rows, so a row lost from the outbox (never sent) can be told from one
delivered. One block row per delivery request, never a row per event.

Also here: how one enriched event becomes an outbox row (its CloudEvent id,
attributes and data, serialised once), and the SQL of `pulse dlq`.
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Iterable, Sequence
from datetime import timezone
from typing import NamedTuple

import numpy as np
import orjson
import psycopg2
from psycopg2 import sql
from psycopg2.extras import execute_values

from pulse.arrays import unique_ints
from pulse.errors import TransientError
from pulse.model import ZERO, EnrichedEvent, Position
from pulse.sinks.state_store import StateStore

TYPE_PREFIX = "com.pulse.engagement."
#: The ledger keeps one row per block of 2**LEDGER_BLOCK_BITS event ids (migration 012).
LEDGER_BLOCK_BITS = 16


class OutboxRow(NamedTuple):
    """One event waiting for delivery (or dead-lettered), ready to be put in a request body."""

    lsn: int
    seq: int
    lane_key: int
    content_id: str | None
    event_id: int
    ce_id: str
    attrs: str  # JSON object of the CloudEvent attributes, without `data`
    data: str  # JSON of the enriched event
    attempts: int = 0
    enqueued_at: float = 0.0  # epoch seconds (database clock)

    @property
    def position(self) -> Position:
        return Position(self.lsn, self.seq)

    def cloudevent(self) -> str:
        """The structured-mode CloudEvent JSON: attributes plus `data`, without re-serialising."""
        return self.attrs[:-1] + ',"data":' + self.data + "}"


# -- ids -----------------------------------------------------------------------


def _state_digest(e: EnrichedEvent) -> str:
    """A digest of the source row's values, independent of how they were read (stream or backfill)."""
    raw: object = e.raw_payload
    if isinstance(raw, str):
        try:  # jsonb text from pgoutput and from a query may differ in spacing/order: normalise
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    ts = None
    if e.event_ts is not None:  # the same instant, whatever the session time zone it was read in
        ts = (e.event_ts if e.event_ts.tzinfo else e.event_ts.replace(tzinfo=timezone.utc)).astimezone(
            timezone.utc).isoformat()
    state = [e.content_id, e.user_id, e.event_type, ts, e.duration_ms, e.device, raw]
    return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def cloudevent_id(e: EnrichedEvent) -> str:
    """The CloudEvent id of one change: stable on every retry, replay and restart.

    - insert: `pulse-<event_id>-insert-<digest of the row's values>`. A row is
      inserted once; a backfill re-reading it unchanged produces the same id,
      so a receiver that deduplicates by id does not count it twice.
    - update: `pulse-<event_id>-update-<lsn>-<seq>`: one id per change. Tying
      it to the values instead would give an update that restores earlier
      values (A -> B -> A) the id of an earlier one, and a deduplicating
      receiver would silently drop it.
    - delete: `pulse-<event_id>-delete` (a row is deleted once).
    """
    if e.op == "update":
        return f"pulse-{e.event_id}-update-{e.position.lsn:X}-{e.position.seq}"
    if e.op == "delete":
        return f"pulse-{e.event_id}-delete"
    return f"pulse-{e.event_id}-insert-{_state_digest(e)}"


def lane_key(content_id: str | None) -> int:
    """Stable non-negative hash of a content id (events of one key share a lane, hence an order)."""
    return zlib.crc32((content_id or "").encode()) & 0x7FFFFFFF


def encode(e: EnrichedEvent, source: str, id_of: EnrichedEvent | None = None) -> OutboxRow:
    """An enriched event as an outbox row (serialised once; retries re-send these exact bytes).

    `id_of`: the event whose CloudEvent id this row takes (a replayed full
    event keeps the id its truncated form was delivered under).
    """
    ce_id = cloudevent_id(id_of if id_of is not None else e)
    attrs: dict[str, object] = {
        "specversion": "1.0",
        "id": ce_id,
        "source": source,
        "type": TYPE_PREFIX + e.op,
        "subject": str(e.event_id),
    }
    if e.event_ts is not None:
        attrs["time"] = e.event_ts.isoformat()
    attrs["datacontenttype"] = "application/json"
    if e.content_id is not None:
        attrs["partitionkey"] = e.content_id  # CloudEvents partitioning extension: the ordering key
    return OutboxRow(
        lsn=e.position.lsn,
        seq=e.position.seq,
        lane_key=lane_key(e.content_id),
        content_id=e.content_id,
        event_id=e.event_id,
        ce_id=ce_id,
        attrs=orjson.dumps(attrs).decode(),
        data=orjson.dumps(e.to_dict()).decode(),
    )


# -- SQL -----------------------------------------------------------------------

_COLS = "lsn, seq, lane_key, content_id, event_id, ce_id, attrs, data, attempts, extract(epoch FROM enqueued_at)::float8"


def _db_error(what: str, exc: psycopg2.Error) -> TransientError:
    return TransientError(f"external sink outbox: {what} failed: {str(exc).strip()}")


class Outbox(StateStore):
    """SQL of the outbox, the position and the dead-letter store for one sink key (`<slot>/<name>`)."""

    required_table = "external_outbox"
    what = "the external sink's outbox table"
    migration = "010_outbox.sql"
    label = "external sink outbox"
    application_name = "pulse-external"

    def __init__(self, dsn: str, schema: str, sink_key: str) -> None:
        super().__init__(dsn, schema, sink_key)
        s = sql.Identifier(schema)
        self.t_outbox = sql.SQL("{}.external_outbox").format(s)
        self.t_position = sql.SQL("{}.external_position").format(s)
        self.t_dead = sql.SQL("{}.external_dead_letter").format(s)
        self.t_delivered = sql.SQL("{}.external_delivered").format(s)

    # -- the sink's side ----------------------------------------------------------

    def position(self, conn) -> Position:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT lsn, seq FROM {} WHERE sink = %s").format(self.t_position), (self.sink_key,))
            row = cur.fetchone()
        return Position(*row) if row else ZERO

    def append(self, conn, rows: Sequence[OutboxRow], last: Position) -> tuple[Position, list[OutboxRow]]:
        """Append rows after the stored position and move it to `last`, in one transaction.

        Idempotent: a batch retried after a commit whose answer was lost
        inserts nothing twice (rows at or below the stored position are skipped).
        Returns the new position and the rows actually appended.
        """
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("INSERT INTO {} (sink, lsn, seq) VALUES (%s, 0, 0) ON CONFLICT (sink) DO NOTHING")
                        .format(self.t_position), (self.sink_key,))
            cur.execute(sql.SQL("SELECT lsn, seq FROM {} WHERE sink = %s FOR UPDATE").format(self.t_position),
                        (self.sink_key,))
            stored = Position(*cur.fetchone())
            fresh = [r for r in rows if (r.lsn, r.seq) > stored]
            if fresh:
                execute_values(
                    cur,
                    sql.SQL("INSERT INTO {} (sink, lsn, seq, lane_key, content_id, event_id, ce_id, attrs, data) "
                            "VALUES %s ON CONFLICT DO NOTHING").format(self.t_outbox).as_string(cur),
                    [(self.sink_key, r.lsn, r.seq, r.lane_key, r.content_id, r.event_id, r.ce_id, r.attrs, r.data)
                     for r in fresh],
                    page_size=1000,
                )
            new = max(stored, last)
            if new != stored:
                cur.execute(sql.SQL("UPDATE {} SET lsn = %s, seq = %s, updated_at = now() WHERE sink = %s")
                            .format(self.t_position), (new.lsn, new.seq, self.sink_key))
        return new, fresh

    def put_replays(self, conn, rows: Sequence[OutboxRow]) -> None:
        """Queue full events again whose truncated form was delivered (positions at or below the stored one).

        A row still waiting at that position is replaced by the full one.
        """
        with conn, conn.cursor() as cur:
            execute_values(
                cur,
                sql.SQL("INSERT INTO {} (sink, lsn, seq, lane_key, content_id, event_id, ce_id, attrs, data) "
                        "VALUES %s ON CONFLICT (sink, lsn, seq) DO UPDATE SET attrs = EXCLUDED.attrs, "
                        "data = EXCLUDED.data, ce_id = EXCLUDED.ce_id").format(self.t_outbox).as_string(cur),
                [(self.sink_key, r.lsn, r.seq, r.lane_key, r.content_id, r.event_id, r.ce_id, r.attrs, r.data)
                 for r in rows])

    # -- the delivery lanes' side ------------------------------------------------

    def fetch(self, conn, after: Position, lane: int, lanes: int, limit: int) -> list[OutboxRow]:
        """The oldest rows of one lane after `after`, in source order (a cursor: no rescans of delivered rows)."""
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT " + _COLS + " FROM {} WHERE sink = %s AND (sink, lsn, seq) > (%s, %s, %s) "
                        "AND lane_key %% %s = %s ORDER BY sink, lsn, seq LIMIT %s").format(self.t_outbox),
                (self.sink_key, self.sink_key, after.lsn, after.seq, lanes, lane, limit),
            )
            return [OutboxRow(*r) for r in cur.fetchall()]

    @staticmethod
    def _keys(rows: Iterable[OutboxRow]) -> tuple[list[int], list[int]]:
        lsns, seqs = [], []
        for r in rows:
            lsns.append(r.lsn)
            seqs.append(r.seq)
        return lsns, seqs

    _MATCH = "sink = %s AND (lsn, seq) IN (SELECT * FROM unnest(%s::bigint[], %s::int[]))"

    @contextlib.contextmanager
    def _resolving(self, conn, rows: Sequence[OutboxRow]):
        """One transaction that removes `rows` from the outbox and adds their ids to the ledger.

        The caller's statements (run on the yielded cursor, with the rows'
        match parameters) come first; on any error the transaction is rolled
        back (`conn` in autocommit).
        """
        lsns, seqs = self._keys(rows)
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                yield cur, (self.sink_key, lsns, seqs)
                cur.execute(sql.SQL("DELETE FROM {} WHERE " + self._MATCH).format(self.t_outbox),
                            (self.sink_key, lsns, seqs))
                self.record_resolved(cur, [r.event_id for r in rows])
                cur.execute("COMMIT")
            except BaseException:
                if not conn.closed:
                    cur.execute("ROLLBACK")
                raise

    def delete(self, conn, rows: Sequence[OutboxRow]) -> None:
        """Remove delivered rows and add their ids to the ledger, in one transaction (`conn` in autocommit)."""
        with self._resolving(conn, rows):
            pass

    # -- the ledger (what `pulse verify` reads) --------------------------------------

    def record_resolved(self, cur, event_ids: Sequence[int]) -> None:
        """Add resolved (delivered or dead-lettered) event ids to the ledger, in the caller's transaction.

        One `external_delivered` row per block of 2^LEDGER_BLOCK_BITS ids, its
        ranges merged in place: a request's ids touch one block row (two at a
        block boundary), whatever the number of events. Blocks are locked in
        ascending order, so lanes resolving at once never deadlock.
        """
        from pulse.sinks.external.local import Ledger

        ids = unique_ints(event_ids)
        if not len(ids):
            return
        blocks = ids >> LEDGER_BLOCK_BITS
        for block in unique_ints(blocks).tolist():
            cur.execute(sql.SQL("INSERT INTO {} (sink, block) VALUES (%s, %s) ON CONFLICT (sink, block) "
                                "DO UPDATE SET updated_at = now() RETURNING ranges").format(self.t_delivered),
                        (self.sink_key, block))
            ledger = Ledger(np.asarray(cur.fetchone()[0], np.int64).reshape(-1, 2))
            ledger.add(ids[blocks == block])
            cur.execute(sql.SQL("UPDATE {} SET ranges = %s::bigint[] WHERE sink = %s AND block = %s").format(
                self.t_delivered), (ledger.ranges.ravel().tolist(), self.sink_key, block))

    def ledger(self, cur, lo: int, hi: int):
        """The resolved ids of event ids lo..hi, as an `external.local.Ledger` (read in the caller's snapshot)."""
        from pulse.sinks.external.local import Ledger

        cur.execute(sql.SQL("SELECT ranges FROM {} WHERE sink = %s AND block BETWEEN %s AND %s ORDER BY block")
                    .format(self.t_delivered), (self.sink_key, lo >> LEDGER_BLOCK_BITS, hi >> LEDGER_BLOCK_BITS))
        parts = [np.asarray(r[0], np.int64).reshape(-1, 2) for r in cur.fetchall() if r[0]]
        # Block rows are disjoint and ascending; a range never crosses a block.
        return Ledger(np.concatenate(parts) if parts else None)

    def note_failure(self, conn, rows: Sequence[OutboxRow], error: str) -> None:
        lsns, seqs = self._keys(rows)
        with conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {} SET attempts = attempts + 1, last_error = %s WHERE " + self._MATCH)
                        .format(self.t_outbox), (error[:2000], self.sink_key, lsns, seqs))

    def dead_letter(self, conn, rows: Sequence[OutboxRow], status: int | None, error: str) -> None:
        """Move rows from the outbox to the dead-letter store, in one transaction."""
        with self._resolving(conn, rows) as (cur, match):
            cur.execute(
                sql.SQL("INSERT INTO {} (sink, lsn, seq, lane_key, content_id, event_id, ce_id, attrs, data, "
                        "enqueued_at, attempts, last_status, last_error) "
                        "SELECT sink, lsn, seq, lane_key, content_id, event_id, ce_id, attrs, data, enqueued_at, "
                        "attempts, %s, %s FROM {} WHERE " + self._MATCH + " ORDER BY lsn, seq").format(
                    self.t_dead, self.t_outbox),
                (status, error[:2000], *match),
            )

    def add_dead(self, conn, rows: Sequence[OutboxRow], status: int | None, error: str) -> None:
        """Store rows in the dead-letter store directly (the local outbox's lanes; `conn` in autocommit).

        Idempotent per position: a lane that dead-letters the same events
        again after a restart adds nothing twice.
        """
        with conn.cursor() as cur:
            execute_values(
                cur,
                sql.SQL("INSERT INTO {} (sink, lsn, seq, lane_key, content_id, event_id, ce_id, attrs, data, "
                        "enqueued_at, attempts, last_status, last_error) SELECT v.sink, v.lsn, v.seq, v.lane_key, "
                        "v.content_id, v.event_id, v.ce_id, v.attrs, v.data, to_timestamp(v.enq), v.attempts, "
                        "v.status, v.error FROM (VALUES %s) AS v(sink, lsn, seq, lane_key, content_id, event_id, "
                        "ce_id, attrs, data, enq, attempts, status, error) WHERE NOT EXISTS (SELECT 1 FROM {} d "
                        "WHERE d.sink = v.sink AND d.lsn = v.lsn AND d.seq = v.seq)").format(
                    self.t_dead, self.t_dead).as_string(cur),
                [(self.sink_key, r.lsn, r.seq, r.lane_key, r.content_id, r.event_id, r.ce_id, r.attrs, r.data,
                  r.enqueued_at, r.attempts, status, error[:2000]) for r in rows],
                template="(%s, %s::bigint, %s::int, %s::bigint, %s, %s::bigint, %s, %s, %s, %s::float8, %s::int, "
                         "%s::int, %s)",
                page_size=1000,
            )

    def backlog(self, conn) -> tuple[int, float | None]:
        """(rows waiting, epoch of the oldest) for status and metrics."""
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*), extract(epoch FROM min(enqueued_at)) FROM {} WHERE sink = %s")
                        .format(self.t_outbox), (self.sink_key,))
            n, oldest = cur.fetchone()
        return int(n), float(oldest) if oldest is not None else None

    # -- dead letters (`pulse dlq`) -------------------------------------------------

    def dead_letters(self, conn, limit: int = 100, ids: Sequence[int] | None = None) -> list[dict]:
        where, params = self._where(ids)
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT id, lsn, seq, event_id, content_id, ce_id, attempts, last_status, last_error, "
                        "enqueued_at, dead_at, replays FROM {} WHERE {} ORDER BY lsn, seq, id LIMIT %s").format(
                    self.t_dead, where), (*params, limit))
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r)) for r in cur.fetchall()]
        conn.rollback()
        return out

    def dead_letter_row(self, conn, dead_id: int) -> OutboxRow | None:
        """One dead letter as the row a replay would send (read only: no lock)."""
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT lsn, seq, lane_key, content_id, event_id, ce_id, attrs, data, attempts, "
                                "extract(epoch FROM enqueued_at)::float8 FROM {} WHERE sink = %s AND id = %s")
                        .format(self.t_dead), (self.sink_key, dead_id))
            row = cur.fetchone()
        conn.rollback()
        return OutboxRow(*row) if row else None

    def dead_count(self, conn) -> int:
        return self._count(conn, self.t_dead)

    def lock_dead_for_replay(self, cur, limit: int, ids: Sequence[int] | None) -> list[tuple[int, OutboxRow]]:
        """Lock (SKIP LOCKED) the oldest dead letters; the caller's transaction stays open while it sends."""
        where, params = self._where(ids)
        cur.execute(
            sql.SQL("SELECT id, lsn, seq, lane_key, content_id, event_id, ce_id, attrs, data, attempts, "
                    "extract(epoch FROM enqueued_at)::float8 FROM {} WHERE {} ORDER BY lsn, seq, id LIMIT %s "
                    "FOR UPDATE SKIP LOCKED").format(self.t_dead, where), (*params, limit))
        return [(r[0], OutboxRow(*r[1:])) for r in cur.fetchall()]

    def remove_dead(self, cur, ids: Sequence[int]) -> None:
        cur.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.t_dead), (list(ids),))

    def note_replay_failure(self, cur, ids: Sequence[int], status: int | None, error: str) -> None:
        cur.execute(sql.SQL("UPDATE {} SET replays = replays + 1, last_status = %s, last_error = %s "
                            "WHERE id = ANY(%s)").format(self.t_dead), (status, error[:2000], list(ids)))

    def purge_dead(self, conn, ids: Sequence[int] | None = None, before: str | None = None) -> int:
        where, params = self._where(ids, before)
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(self.t_dead, where), params)
            return cur.rowcount
