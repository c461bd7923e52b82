"""`pulse db init`: the source schema (where missing), Pulse's state schema, the publication."""

from __future__ import annotations

from typing import Optional

import typer

from pulse.cli import common

app = typer.Typer(help="Database objects.", no_args_is_help=True)


@app.command("init")
def init(
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False,
                                               help="Source database URL."),
    publication: Optional[str] = typer.Option(None, "--publication", envvar="PULSE_PUBLICATION"),
    replica_identity_full: bool = typer.Option(
        False, "--replica-identity-full",
        help="Also set REPLICA IDENTITY FULL on engagement_events: updates and deletes then carry the old row, "
             "so the Redis board can correct for them (docs/sinks/redis.md). Costs WAL: each update and delete "
             "logs the whole old row."),
) -> None:
    """Apply the schema idempotently; never alters the two source tables' columns."""
    from psycopg2 import sql

    from pulse.source.db import connect
    from pulse.schema import init_database

    cfg = common.settings(database={"url": database_url, "publication": publication})
    result = init_database(cfg.database)
    identity = ""
    if replica_identity_full:
        conn = connect(cfg.database)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("ALTER TABLE {}.engagement_events REPLICA IDENTITY FULL").format(
                    sql.Identifier(cfg.database.source_schema)))
        finally:
            conn.close()
        identity = "; engagement_events replica identity FULL"
    typer.echo(
        f"source tables {'created' if result['source_tables_created'] else 'present'}; "
        f"migrations applied: {result['migrations_applied'] or 'none'}; "
        f"publication {cfg.database.publication} {'updated' if result['publication_changed'] else 'up to date'}"
        + identity
    )
