"""Oversized events: the marker, and Pulse's general dead-letter store.

A destination has limits of its own (a Kafka message, an HTTP body the
endpoint accepts, a BigQuery request). One event above such a limit must
never stop a stream, nor be dropped. The policy (docs/failure-and-bad-input.md):

- the event is delivered with its `raw_payload` (and its `before`'s) replaced
  by a marker, `{"_pulse_truncated": true, "bytes": N, "sha256": "..."}`,
  and the problem `payload_too_large`; every other field is intact;
- the full event is kept in the `dead_letter` table of Pulse's state schema
  (`pulse dlq list / show / replay / purge --sink NAME`), in the same step
  that the sink makes the batch durable, before the slot moves past it;
- it is counted: `pulse_dead_letters_total{sink,reason}` and
  `pulse_problems_total{problem="payload_too_large"}`.

The external sink's own delivery failures stay in `external_dead_letter`
(which holds the exact CloudEvent bytes); its 413 path uses the marker here.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import orjson
import psycopg2
from psycopg2 import sql
from psycopg2.extras import execute_values

from pulse import metrics
from pulse.errors import TerminalError, TransientError
from pulse.model import EnrichedEvent
from pulse.sinks.base import SinkInstance
from pulse.sinks.state_store import StateStore

PAYLOAD_TOO_LARGE = "payload_too_large"
MARKER_KEY = "_pulse_truncated"


def marker(raw: str) -> str:
    """The JSON text that stands in for an oversized payload: its size and digest, nothing of its content."""
    data = raw.encode()
    return orjson.dumps({MARKER_KEY: True, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}).decode()


def truncate(event: EnrichedEvent) -> EnrichedEvent:
    """The event with its payloads replaced by markers and the problem `payload_too_large` (once)."""
    problems = event.problems if PAYLOAD_TOO_LARGE in event.problems else (*event.problems, PAYLOAD_TOO_LARGE)
    before = event.before
    if before is not None and before.raw_payload is not None:
        before = before._replace(raw_payload=marker(before.raw_payload))
    raw = marker(event.raw_payload) if event.raw_payload is not None else None
    return event._replace(raw_payload=raw, problems=problems, before=before)


def full_json(event: EnrichedEvent) -> bytes:
    """The whole event as the dead-letter store keeps it (the Kafka value's shape, `before` included)."""
    from pulse.bus.codec import to_dict

    return orjson.dumps(to_dict(event))


def count(sink: str, reason: str, n: int = 1) -> None:
    metrics.DEAD_LETTERS.labels(SinkInstance.of(sink).kind, reason).inc(n)
    if reason == PAYLOAD_TOO_LARGE:
        metrics.PROBLEMS.labels(PAYLOAD_TOO_LARGE).inc(n)


class DeadLetters(StateStore):
    """SQL of the `dead_letter` table for one sink key (`<slot>/<sink name>`)."""

    required_table = "dead_letter"
    what = "the dead-letter table"
    migration = "011_dead_letter.sql"
    label = "dead-letter store"
    application_name = "pulse-dead-letter"

    def __init__(self, dsn: str, schema: str, sink_key: str) -> None:
        super().__init__(dsn, schema, sink_key)
        self.table = sql.SQL("{}.dead_letter").format(sql.Identifier(schema))

    def add(self, items: Sequence[tuple[EnrichedEvent, bytes]], reason: str, detail: str) -> int:
        """Store (event, its full JSON) pairs; idempotent per position (a retried batch adds nothing twice).

        Commits before it returns: the caller makes the truncated batch
        durable only after this, so the slot never passes an event whose
        full form is nowhere.
        """
        conn = self.connect()
        try:
            with conn, conn.cursor() as cur:
                execute_values(
                    cur,
                    sql.SQL("INSERT INTO {} (sink, reason, lsn, seq, event_id, content_id, bytes, event, detail) "
                            "VALUES %s ON CONFLICT (sink, lsn, seq) DO NOTHING").format(self.table).as_string(cur),
                    [(self.sink_key, reason, e.position.lsn, e.position.seq, e.event_id, e.content_id, len(doc),
                      doc.decode(), detail[:2000]) for e, doc in items])
                return cur.rowcount
        except psycopg2.Error as exc:
            raise TransientError(f"dead-letter store: insert failed: {str(exc).strip()}") from exc
        finally:
            conn.close()

    # -- `pulse dlq` ---------------------------------------------------------------

    def list(self, conn, limit: int = 100, ids: Sequence[int] | None = None, *, with_event: bool = False) -> list[dict]:
        where, params = self._where(ids)
        cols = "id, lsn, seq, event_id, content_id, reason, bytes, detail, dead_at, replays, last_error"
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT " + cols + (", event" if with_event else "") +
                                " FROM {} WHERE {} ORDER BY lsn, seq, id LIMIT %s").format(self.table, where),
                        (*params, limit))
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r)) for r in cur.fetchall()]
        conn.rollback()
        return out

    def count_rows(self, conn) -> int:
        return self._count(conn, self.table)

    def lock_for_replay(self, cur, limit: int, ids: Sequence[int] | None, max_bytes: int = 256 * 1024 * 1024,
                        ) -> list[dict]:
        """Lock (SKIP LOCKED) the oldest rows, at most `limit` and about `max_bytes` of events (at least one).

        The caller's transaction stays open while it re-sends them; only the
        rows returned are read into memory.
        """
        where, params = self._where(ids)
        cur.execute(sql.SQL("SELECT id, bytes FROM {} WHERE {} ORDER BY lsn, seq, id LIMIT %s "
                            "FOR UPDATE SKIP LOCKED").format(self.table, where), (*params, limit))
        chosen, total = [], 0
        for row_id, size in cur.fetchall():
            if chosen and total + size > max_bytes:
                break
            chosen.append(row_id)
            total += size
        if not chosen:
            return []
        cur.execute(sql.SQL("SELECT id, lsn, seq, event_id, content_id, event FROM {} WHERE id = ANY(%s) "
                            "ORDER BY lsn, seq, id").format(self.table), (chosen,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def remove(self, cur, ids: Sequence[int]) -> None:
        cur.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.table), (list(ids),))

    def note_replay_failure(self, cur, ids: Sequence[int], error: str) -> None:
        cur.execute(sql.SQL("UPDATE {} SET replays = replays + 1, last_error = %s WHERE id = ANY(%s)")
                    .format(self.table), (error[:2000], list(ids)))

    def purge(self, conn, ids: Sequence[int] | None = None, before: str | None = None) -> int:
        where, params = self._where(ids, before)
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(self.table, where), params)
            return cur.rowcount


class DeadLetterAccess(ABC):
    """What `pulse dlq` does with the dead letters of one sink instance; `Sink.dead_letters` returns one."""

    key: str  # the store's key (`<slot>/<sink name>`), shown to the user
    store: StateStore  # where the dead letters are

    def _with(self, fn):
        """`fn(conn)` on a connection of its own to the store, its schema checked first; closed after."""
        conn = self.store.connect(name="pulse-dlq")
        try:
            self.store.check_schema(conn)
            return fn(conn)
        finally:
            conn.close()

    @abstractmethod
    def list(self, limit: int) -> tuple[int, list[dict]]:
        """(how many there are, the oldest `limit` rows)."""

    @abstractmethod
    def describe(self, row: dict) -> str:
        """One line of `pulse dlq list` for a row (after `#id event N`)."""

    @abstractmethod
    def show(self, dead_id: int) -> dict | None:
        """One row with the whole event it keeps, as JSON-ready values; None when there is no such row."""

    @abstractmethod
    def replay(self, ids: Sequence[int] | None, *, attempts: int) -> tuple[int, int, str | None]:
        """Send again in full, oldest first; (done, still failing, last error). TerminalError when it cannot."""

    @abstractmethod
    def purge(self, ids: Sequence[int] | None, before: str | None) -> int:
        """Delete for good; how many."""


class StoreAccess(DeadLetterAccess):
    """Dead letters in Pulse's `dead_letter` table: the full form of events a sink delivered with a marker.

    `replayer(settings, store, ids)` sends them again (None: this sink cannot, they are only inspected and purged).
    """

    def __init__(self, settings, sink_name: str, replayer=None) -> None:
        db = settings.database
        self.settings, self.sink_name, self.replayer = settings, sink_name, replayer
        self.store = DeadLetters(db.dsn(), db.state_schema, f"{db.slot}/{sink_name}")
        self.key = self.store.sink_key
        self._with(lambda conn: None)  # a missing table fails here, with its fix

    def list(self, limit: int) -> tuple[int, list[dict]]:
        return self._with(lambda conn: (self.store.count_rows(conn), self.store.list(conn, limit)))

    def describe(self, r: dict) -> str:
        return (f"reason={r['reason']} bytes={r['bytes']} dead_at={r['dead_at']:%Y-%m-%d %H:%M:%S%z} "
                f"replays={r['replays']} detail={r['detail']}" + (f" error={r['last_error']}" if r['last_error'] else ""))

    def show(self, dead_id: int) -> dict | None:
        rows = self._with(lambda conn: self.store.list(conn, 1, ids=[dead_id], with_event=True))
        if not rows:
            return None
        rows[0]["event"] = orjson.loads(rows[0]["event"])
        return rows[0]

    def replay(self, ids: Sequence[int] | None, *, attempts: int) -> tuple[int, int, str | None]:
        if self.replayer is None:
            raise TerminalError(f"dead letters of sink {self.sink_name} cannot be replayed",
                                hint="inspect them with `pulse dlq show`; purge them when handled")
        return self.replayer(self.settings, self.store, ids)

    def purge(self, ids: Sequence[int] | None, before: str | None) -> int:
        return self._with(lambda conn: self.store.purge(conn, ids=ids, before=before))
