"""Status reporting: `pulse run`'s status document, written where `pulse status` reads it.

The pipeline builds the document (`Pipeline.status`: positions, queues, lag,
each sink's own `status()`); `StatusWriter` stores it in the state schema's
`runtime_status` row of the slot, every two seconds, and exports the slot's
WAL gauges read on the same connection. A failed write is logged and
retried on the next call (the status is advisory: it never stops the stream).
"""

from __future__ import annotations

import orjson
import psycopg2
from psycopg2 import sql

from pulse import metrics
from pulse.config import DatabaseConfig
from pulse.log import get_logger
from pulse.source.db import connect
from pulse.source.slot import slot_info

log = get_logger(__name__)


class StatusWriter:
    def __init__(self, db: DatabaseConfig) -> None:
        self.db = db
        self._conn = None

    def write(self, doc: dict) -> None:
        db = self.db
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(db)
                self._conn.autocommit = True
            with self._conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {}.runtime_status (slot_name, updated_at, doc) VALUES (%s, now(), %s) "
                        "ON CONFLICT (slot_name) DO UPDATE SET updated_at = now(), doc = EXCLUDED.doc"
                    ).format(sql.Identifier(db.state_schema)),
                    (db.slot, orjson.dumps(doc).decode()),
                )
                info = slot_info(cur, db.slot)
                if info is not None:
                    metrics.slot_gauges(info.wal_status, info.safe_wal_size, info.retained_bytes)
        except psycopg2.Error as exc:
            log.debug("status.write_failed", error=str(exc).strip())
            self._conn = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None


__all__ = ["StatusWriter"]
