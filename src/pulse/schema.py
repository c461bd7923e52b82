"""Applying the source schema and Pulse's own objects (`pulse db init`).

The source tables are created only where they do not exist (Pulse does not
own them and never alters them). Pulse's objects live in their own schema
and are applied by numbered, idempotent migrations; the publication covers
exactly the two source tables.
"""

from __future__ import annotations

from importlib import resources

import psycopg2
from psycopg2 import sql

from pulse.config import DatabaseConfig
from pulse.log import get_logger

log = get_logger(__name__)

SOURCE_TABLES = ("content", "engagement_events")
WATERMARK_TABLE = "backfill_watermarks"


def _sql_text(*parts: str) -> str:
    return resources.files("pulse").joinpath("sql", *parts).read_text()


def connect(cfg: DatabaseConfig, **kw):
    """A plain (non-replication) connection to the source database."""
    return psycopg2.connect(cfg.dsn(), application_name="pulse", **kw)


def source_tables_exist(cur, schema: str) -> dict[str, bool]:
    out = {}
    for table in SOURCE_TABLES:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.{table}",))
        out[table] = cur.fetchone()[0]
    return out


def apply_source_schema(cur, schema: str) -> bool:
    """Create the brief's two tables if neither exists; returns True when created."""
    present = source_tables_exist(cur, schema)
    if all(present.values()):
        return False
    if any(present.values()):
        missing = [t for t, ok in present.items() if not ok]
        raise psycopg2.ProgrammingError(f"only some source tables exist in {schema}; missing: {missing}")
    cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
    cur.execute(_sql_text("source_schema.sql"))
    return True


def apply_state_schema(cur, schema: str) -> list[int]:
    """Apply Pulse's numbered migrations not applied yet; returns the versions applied."""
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
    files = sorted(
        (f for f in resources.files("pulse").joinpath("sql", "pulse").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    cur.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    cur.execute("SELECT version FROM schema_migrations")
    done = {row[0] for row in cur.fetchall()}
    applied = []
    for f in files:
        version = int(f.name.split("_", 1)[0])
        if version in done:
            continue
        cur.execute(f.read_text())
        cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        applied.append(version)
    return applied


def ensure_publication(cur, publication: str, schema: str, state_schema: str | None = None) -> bool:
    """Create the publication over the source tables (and Pulse's watermark table), or add a missing one.

    Returns True when something changed. The watermark table lets a backfill
    mark its chunk boundaries inside the change stream (see pulse.runtime.backfill).
    """
    wanted = [(schema, t) for t in SOURCE_TABLES]
    if state_schema is not None:
        wanted.append((state_schema, WATERMARK_TABLE))
    idents = [sql.SQL("{}.{}").format(sql.Identifier(s), sql.Identifier(t)) for s, t in wanted]
    cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
    if cur.fetchone() is None:
        cur.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate')").format(
                sql.Identifier(publication), sql.SQL(", ").join(idents)
            )
        )
        return True
    cur.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))
    have = {(row[0], row[1]) for row in cur.fetchall()}
    changed = False
    for key, ident in zip(wanted, idents):
        if key not in have:
            cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(publication), ident))
            changed = True
    return changed


def init_database(cfg: DatabaseConfig) -> dict[str, object]:
    """Everything `pulse db init` does, in one transaction."""
    conn = connect(cfg)
    try:
        with conn, conn.cursor() as cur:
            # Workers may start together (compose, several consumers): one applies, the others wait and find it done.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('pulse.db_init'))")
            created = apply_source_schema(cur, cfg.source_schema)
            applied = apply_state_schema(cur, cfg.state_schema)
            pub = ensure_publication(cur, cfg.publication, cfg.source_schema, cfg.state_schema)
    finally:
        conn.close()
    result = {"source_tables_created": created, "migrations_applied": applied, "publication_changed": pub}
    log.info("db.init", database=cfg.safe_url(), **result)
    return result
