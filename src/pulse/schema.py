"""Applying the source schema and Pulse's own objects (`pulse db init`).

The source tables are created only where they do not exist (Pulse does not
own them and never alters them). Pulse's objects live in their own schema
and are applied by numbered, idempotent migrations; the publication covers
exactly the two source tables.

Only `pulse db init` changes the schema. The long-running verbs (`pulse run`,
`pulse produce`, `pulse backfill`) call `require_database`, a read-only check
that the migrations this Pulse ships are applied and the publication covers
its tables, so they run as a role without DDL rights (docs/deploy.md gives
the grants).
"""

from __future__ import annotations

from importlib import resources

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from pulse.config import DatabaseConfig
from pulse.errors import TerminalError
from pulse.log import get_logger
from pulse.source.db import connect

log = get_logger(__name__)

SOURCE_TABLES = ("content", "engagement_events")
WATERMARK_TABLE = "backfill_watermarks"


def _sql_text(*parts: str) -> str:
    return resources.files("pulse").joinpath("sql", *parts).read_text()


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


def _migration_files() -> list:
    return sorted(
        (f for f in resources.files("pulse").joinpath("sql", "pulse").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )


def migration_versions() -> list[int]:
    """The numbered migrations this Pulse ships (what `pulse db init` applies)."""
    return [int(f.name.split("_", 1)[0]) for f in _migration_files()]


def apply_state_schema(cur, schema: str) -> list[int]:
    """Apply Pulse's numbered migrations not applied yet; returns the versions applied."""
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
    files = _migration_files()
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


def _init_hint(cfg: DatabaseConfig, database: str) -> str:
    database = '"' + database.replace('"', '""') + '"'
    return (
        f"run `pulse db init` once (and after each Pulse upgrade) as a role with CREATE on database {database} "
        f"that owns the source tables (the database owner, or: GRANT CREATE ON DATABASE {database} TO ...), "
        "then start again; the running role needs no DDL rights (docs/deploy.md, \"Least privilege\")"
    )


def require_database(cfg: DatabaseConfig) -> None:
    """Read-only: Pulse's state schema has every shipped migration and the publication covers its tables.

    Raises TerminalError (with the `pulse db init` fix) otherwise; changes nothing.
    """
    conn = connect(cfg)
    try:
        conn.set_session(readonly=True, autocommit=True)
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            database = cur.fetchone()[0]
            cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, 'schema_migrations'))", (cfg.state_schema,))
            if cur.fetchone()[0] is None:
                raise TerminalError(
                    f"Pulse's state schema {cfg.state_schema!r} is not set up in database {database}",
                    hint=_init_hint(cfg, database),
                )
            try:
                cur.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(
                    sql.Identifier(cfg.state_schema)))
            except psycopg2.errors.InsufficientPrivilege as exc:
                raise TerminalError(
                    f"role cannot read {cfg.state_schema}.schema_migrations: {exc.pgerror or exc}".strip(),
                    hint=f"GRANT USAGE ON SCHEMA {cfg.state_schema} and SELECT, INSERT, UPDATE, DELETE ON ALL "
                    f"TABLES IN SCHEMA {cfg.state_schema} to the role (docs/deploy.md, \"Least privilege\")",
                ) from exc
            have = {row[0] for row in cur.fetchall()}
            missing = [v for v in migration_versions() if v not in have]
            if missing:
                raise TerminalError(
                    f"Pulse's state schema {cfg.state_schema!r} lacks migrations {missing} that this Pulse needs",
                    hint=_init_hint(cfg, database),
                )
            cur.execute("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = %s",
                        (cfg.publication,))
            covered = {(row[0], row[1]) for row in cur.fetchall()}
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (cfg.publication,))
            if cur.fetchone() is None:
                raise TerminalError(f"publication {cfg.publication!r} does not exist in database {database}",
                                    hint=_init_hint(cfg, database))
            wanted = [(cfg.source_schema, t) for t in SOURCE_TABLES] + [(cfg.state_schema, WATERMARK_TABLE)]
            absent = [f"{s}.{t}" for s, t in wanted if (s, t) not in covered]
            if absent:
                raise TerminalError(f"publication {cfg.publication!r} does not cover {', '.join(absent)}",
                                    hint=_init_hint(cfg, database))
    finally:
        conn.close()
