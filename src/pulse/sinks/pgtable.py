"""A durable test sink: rows and position in one PostgreSQL transaction.

Used by crash tests (`kill -9` at random moments): every batch inserts one
row per event (no unique key, so an event delivered twice at two positions
would show) and moves the sink's position in the same transaction, so after
any crash the table and the position agree. Like every sink, it absorbs a
batch sent again: events at or below the stored position are skipped. It lives in a database of its own, not the source.
"""

from __future__ import annotations

import psycopg2
from psycopg2 import sql
from psycopg2.extras import execute_values

from pulse.errors import ConfigError, TransientError
from pulse.model import ZERO, Batch, Position
from pulse.sinks.base import Sink, SinkInstance


class PgTableSink(Sink):
    @classmethod
    def from_settings(cls, settings, name: "str | SinkInstance" = "pgtable") -> "PgTableSink":
        url = settings.testsinks.pgtable_url
        if url is None:
            raise ConfigError("the pgtable sink needs a database URL",
                              hint="set PULSE_TESTSINKS__PGTABLE_URL (a database other than the source)")
        return cls(url.get_secret_value(), table=settings.testsinks.pgtable_table, name=name)

    def __init__(self, url: str, table: str = "pulse_sink_events", name: "str | SinkInstance" = "pgtable") -> None:
        self.url = url
        self.table = table
        self.identify(name)
        self.conn = None

    def _connect(self):
        try:
            conn = psycopg2.connect(self.url, application_name=f"pulse-sink-{self.name}")
        except psycopg2.OperationalError as exc:
            raise TransientError(f"test sink database unreachable: {exc}".strip()) from exc
        return conn

    def open(self) -> Position:
        self.conn = self._connect()
        t = sql.Identifier(self.table)
        pos_t = sql.Identifier(self.table + "_position")
        with self.conn, self.conn.cursor() as cur:
            # Several instances (one per Kafka partition) may open at once: CREATE
            # TABLE IF NOT EXISTS is not safe against itself, so serialise it.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            cur.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (event_id BIGINT NOT NULL, op TEXT NOT NULL, lsn BIGINT NOT NULL, "
                "seq INT NOT NULL, content_type TEXT, engagement_seconds DOUBLE PRECISION, "
                "engagement_pct DOUBLE PRECISION, problems TEXT[], commit_ts TIMESTAMPTZ, written_at TIMESTAMPTZ "
                "DEFAULT clock_timestamp())").format(t))
            cur.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (sink TEXT PRIMARY KEY, lsn BIGINT NOT NULL, seq INT NOT NULL)"
            ).format(pos_t))
            cur.execute(sql.SQL("SELECT lsn, seq FROM {} WHERE sink = %s").format(pos_t), (self.name,))
            row = cur.fetchone()
        return Position(*row) if row else ZERO

    def write(self, batch: Batch) -> Position:
        if self.conn is None or self.conn.closed:
            self.conn = self._connect()
        pos_t = sql.Identifier(self.table + "_position")
        try:
            with self.conn, self.conn.cursor() as cur:
                # A batch sent again (a retry whose commit did get through, a replay) adds
                # nothing: only events past the stored position, read under a row lock.
                cur.execute(sql.SQL("SELECT lsn, seq FROM {} WHERE sink = %s FOR UPDATE").format(pos_t),
                            (self.name,))
                row = cur.fetchone()
                stored = Position(*row) if row else ZERO
                if batch.last <= stored:
                    return stored
                rows = [
                    (e.event_id, e.op, e.position.lsn, e.position.seq, e.content_type, e.engagement_seconds,
                     e.engagement_pct, list(e.problems), e.commit_ts)
                    for e in batch.events if e.position > stored
                ]
                execute_values(
                    cur,
                    sql.SQL("INSERT INTO {} (event_id, op, lsn, seq, content_type, engagement_seconds, "
                            "engagement_pct, problems, commit_ts) VALUES %s").format(
                        sql.Identifier(self.table)).as_string(cur),
                    rows,
                    page_size=1000,
                )
                cur.execute(
                    sql.SQL("INSERT INTO {} (sink, lsn, seq) VALUES (%s, %s, %s) ON CONFLICT (sink) DO UPDATE "
                            "SET lsn = EXCLUDED.lsn, seq = EXCLUDED.seq").format(pos_t),
                    (self.name, batch.last.lsn, batch.last.seq),
                )
        except psycopg2.OperationalError as exc:
            self.conn = None
            raise TransientError(f"test sink write failed: {exc}".strip()) from exc
        return batch.last

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
