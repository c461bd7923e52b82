"""Connections to the source database (the replication connection is `source/replication.py`'s)."""

from __future__ import annotations

import psycopg2

from pulse.config import DatabaseConfig


def connect(cfg: DatabaseConfig, **kw):
    """A plain (non-replication) connection to the source database."""
    return psycopg2.connect(cfg.dsn(), application_name="pulse", **kw)


#: `pg_class.relreplident` by name.
REPLICA_IDENTITIES = {"d": "default", "f": "full", "n": "nothing", "i": "index"}


def replica_identity(cur, schema: str, table: str) -> str | None:
    """The table's REPLICA IDENTITY (default, full, nothing, index); None when the table is not there."""
    cur.execute("SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s", (schema, table))
    row = cur.fetchone()
    return REPLICA_IDENTITIES.get(row[0], row[0]) if row else None


__all__ = ["REPLICA_IDENTITIES", "connect", "replica_identity"]
