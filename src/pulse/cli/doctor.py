"""`pulse doctor`: preflight checks of the source database, with the SQL that fixes each problem.

Renders `pulse.doctor`'s results as a table followed by each fix as plain,
paste-able text (no table borders inside SQL), or as JSON with `--json`.
Exit code 1 when any check is an error, 0 otherwise (warnings included).
"""

from __future__ import annotations

import sys
from typing import Optional

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pulse.cli import common

_STYLE = {"ok": "green", "warn": "yellow", "error": "bold red"}


def doctor(
    database_url: Optional[str] = typer.Option(
        None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False, help="Source database URL."
    ),
    slot: Optional[str] = typer.Option(None, "--slot", envvar="PULSE_SLOT", help="Replication slot name."),
    publication: Optional[str] = typer.Option(
        None, "--publication", envvar="PULSE_PUBLICATION", help="Publication name."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Check the source database before anything runs; print the exact fix for each problem."""
    from pulse import doctor as checks

    cfg = common.settings(database={"url": database_url, "slot": slot, "publication": publication})
    db = cfg.database
    results = checks.run(db)
    status = checks.overall(results)
    if as_json:
        doc = {
            "status": status,
            "database": db.safe_url(),
            "slot": db.slot,
            "publication": db.publication,
            "checks": [r.to_dict() for r in results],
        }
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        _render(results, db.safe_url(), status)
    raise typer.Exit(1 if status == "error" else 0)


def _render(results, url: str, status: str) -> None:
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"pulse doctor: {url}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for r in results:
        table.add_row(r.name, Text(r.status, style=_STYLE[r.status]), r.detail)
    console.print(table)
    problems = [r for r in results if r.status != "ok" and r.fix]
    for r in problems:
        console.print(Text(f"\n[{r.status}] {r.name}: fix", style=_STYLE[r.status]))
        # Plain text, never wrapped or marked up, so the SQL can be pasted as printed.
        console.print(r.fix, markup=False, highlight=False, soft_wrap=True)
    errors = sum(r.status == "error" for r in results)
    warnings = sum(r.status == "warn" for r in results)
    summary = f"\n{errors} error(s), {warnings} warning(s)"
    console.print(Text(summary, style=_STYLE[status]))


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
