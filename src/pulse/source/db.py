"""Connections to the source database (the replication connection is `source/replication.py`'s)."""

from __future__ import annotations

import psycopg2

from pulse.config import DatabaseConfig


def connect(cfg: DatabaseConfig, **kw):
    """A plain (non-replication) connection to the source database."""
    return psycopg2.connect(cfg.dsn(), application_name="pulse", **kw)


__all__ = ["connect"]
