"""A consistent snapshot of the source tied to an exact stream position.

`exported_snapshot` creates a *temporary* logical slot with
`EXPORT_SNAPSHOT` on a replication connection: PostgreSQL returns the slot's
consistent point and a snapshot that sees exactly the transactions committed
before it. A read in that snapshot plus the change stream after the
consistent point is the whole truth, once: what the Redis board rebuild uses.
The temporary slot disappears with the connection (nothing is left behind,
even after `kill -9`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from pulse.config import DatabaseConfig
from pulse.source.pgoutput import str_to_lsn


@contextmanager
def exported_snapshot(cfg: DatabaseConfig) -> Iterator[tuple[int, str, object]]:
    """Yields (consistent point LSN, snapshot name, a REPEATABLE READ connection already in it)."""
    name = f"pulse_snap_{uuid.uuid4().hex[:12]}"
    assert re.fullmatch(r"[a-z0-9_]+", name)
    repl = psycopg2.connect(cfg.dsn(), connection_factory=psycopg2.extras.LogicalReplicationConnection,
                            application_name="pulse-snapshot")
    try:
        rcur = repl.cursor()
        rcur.execute(sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT").format(
            sql.Identifier(name)).as_string(repl))
        _slot, consistent_point, snapshot, _plugin = rcur.fetchone()
        conn = psycopg2.connect(cfg.dsn(), application_name="pulse-snapshot-read")
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
            yield str_to_lsn(consistent_point), snapshot, conn
            conn.rollback()
        finally:
            conn.close()
    finally:
        repl.close()  # drops the temporary slot
