"""`pulse dlq list | replay | purge`: the external sink's dead-letter store.

Rows belong to one deployment (`PULSE_SLOT`) and sink name; replay sends
them again, oldest first, with their original CloudEvent ids, to
`PULSE_EXTERNAL_URL` (signed with `PULSE_EXTERNAL_SECRET`), and deletes
what the endpoint acknowledged.
"""

from __future__ import annotations

from typing import Optional

import typer

dlq_app = typer.Typer(help="The external sink's dead-letter store (list, replay, purge).", no_args_is_help=True)

_DB = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False)
_SLOT = typer.Option(None, "--slot", envvar="PULSE_SLOT", help="Deployment whose dead letters to manage.")
_SINK = typer.Option("external", "--sink-name", help="Sink name (default: external).")


def _outbox(database_url: Optional[str], slot: Optional[str], sink_name: str, **external):
    from pulse.cli import common
    from pulse.sinks.external import sink_key
    from pulse.sinks.external_outbox import Outbox

    cfg = common.settings(database={"url": database_url, "slot": slot}, external=external)
    outbox = Outbox(cfg.database.dsn(), cfg.database.state_schema, sink_key(cfg.database, sink_name))
    return cfg, outbox


@dlq_app.command("list")
def list_(
    database_url: Optional[str] = _DB,
    slot: Optional[str] = _SLOT,
    sink_name: str = _SINK,
    limit: int = typer.Option(50, "--limit", min=1, help="Most rows shown, oldest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Show dead letters: position, event, CloudEvent id, attempts and the last error."""
    import orjson

    _cfg, outbox = _outbox(database_url, slot, sink_name)
    conn = outbox.connect(name="pulse-dlq")
    try:
        outbox.check_schema(conn)
        total = outbox.dead_count(conn)
        rows = outbox.dead_letters(conn, limit)
    finally:
        conn.close()
    if as_json:
        for r in rows:
            typer.echo(orjson.dumps(r, default=str).decode())
        return
    typer.echo(f"{total} dead letter(s) for {outbox.sink_key}" + (f"; oldest {len(rows)} shown" if rows else ""))
    for r in rows:
        typer.echo(f"  #{r['id']} event {r['event_id']} {r['ce_id']} attempts={r['attempts']} "
                   f"status={r['last_status']} dead_at={r['dead_at']:%Y-%m-%d %H:%M:%S%z} "
                   f"replays={r['replays']} error={r['last_error']}")


@dlq_app.command("replay")
def replay(
    database_url: Optional[str] = _DB,
    slot: Optional[str] = _SLOT,
    sink_name: str = _SINK,
    ids: Optional[list[int]] = typer.Option(None, "--id", help="Dead letter id to replay (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Replay every dead letter of this deployment."),
    url: Optional[str] = typer.Option(None, "--url", envvar="PULSE_EXTERNAL_URL", show_default=False,
                                      help="Endpoint (default: the sink's)."),
    attempts: int = typer.Option(5, "--attempts", min=1, help="Attempts per batch before the replay stops."),
) -> None:
    """Send dead letters again, oldest first, with their original ids; delivered ones are removed."""
    from pulse.errors import TerminalError
    from pulse.sinks.external_delivery import HttpClient, replay_dead_letters

    if not ids and not all_:
        raise TerminalError("nothing selected to replay", hint="pass --all, or --id N (see `pulse dlq list`)")
    cfg, outbox = _outbox(database_url, slot, sink_name, url=url)
    conn = outbox.connect(name="pulse-dlq")
    try:
        outbox.check_schema(conn)
    finally:
        conn.close()
    client = HttpClient(cfg.external)
    try:
        delivered, failed, error = replay_dead_letters(outbox, client, cfg.external, ids=ids or None,
                                                       max_attempts=attempts)
    finally:
        client.close()
    typer.echo(f"replayed {delivered} event(s)" + (f"; {failed} still failing: {error}" if failed else ""))
    if failed:
        raise typer.Exit(1)


@dlq_app.command("purge")
def purge(
    database_url: Optional[str] = _DB,
    slot: Optional[str] = _SLOT,
    sink_name: str = _SINK,
    ids: Optional[list[int]] = typer.Option(None, "--id", help="Dead letter id to delete (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Delete every dead letter of this deployment."),
    before: Optional[str] = typer.Option(None, "--before", help="Only those dead-lettered before this ISO time."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete dead letters for good (the events are then not delivered)."""
    from pulse.errors import TerminalError

    if not ids and not all_ and not before:
        raise TerminalError("nothing selected to purge", hint="pass --all, --before TIME or --id N")
    _cfg, outbox = _outbox(database_url, slot, sink_name)
    if not yes:
        typer.confirm(f"Delete the selected dead letters of {outbox.sink_key} for good?", abort=True)
    conn = outbox.connect(name="pulse-dlq")
    try:
        outbox.check_schema(conn)
        n = outbox.purge_dead(conn, ids=ids or None, before=before)
    finally:
        conn.close()
    typer.echo(f"purged {n} dead letter(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
