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
) -> None:
    """Apply the schema idempotently; never alters the two source tables."""
    from pulse.schema import init_database

    cfg = common.settings(database={"url": database_url, "publication": publication})
    result = init_database(cfg.database)
    typer.echo(
        f"source tables {'created' if result['source_tables_created'] else 'present'}; "
        f"migrations applied: {result['migrations_applied'] or 'none'}; "
        f"publication {cfg.database.publication} {'updated' if result['publication_changed'] else 'up to date'}"
    )
