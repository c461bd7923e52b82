"""`pulse dlq list | show | replay | purge --sink NAME`: dead letters.

Rows belong to one deployment (`PULSE_SLOT`) and sink name; each sink says
where its dead letters are and whether it can send them again
(`Sink.dead_letters`). Two stores today:

- `--sink external` (the default): the external sink's store, events the
  endpoint refused (terminal 4xx, a lone event refused with 413 after it was
  delivered with a marker) or that ran out of attempts. Replay sends them
  again, oldest first, with their original CloudEvent ids, to
  `PULSE_EXTERNAL_URL` (signed with `PULSE_EXTERNAL_SECRET`), and deletes
  what the endpoint acknowledged.
- any other sink (`--sink kafka`, `--sink bigquery`): Pulse's general
  `dead_letter` table, the full form of events delivered with a marker
  because they exceeded the sink's size limit. Replay publishes them again
  in full to Kafka (after `kafka.message_max_bytes` and the topic's limit
  were raised), or puts the full payload into the BigQuery row by a load job
  and a MERGE; those still refused stay, with the error.
"""

from __future__ import annotations

from typing import Optional

import typer

from pulse.sinks import DLQ_DEFAULT

dlq_app = typer.Typer(help="Dead letters of a sink (list, show, replay, purge).", no_args_is_help=True)

_DB = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False)
_SLOT = typer.Option(None, "--slot", envvar="PULSE_SLOT", help="Deployment whose dead letters to manage.")
_SINK = typer.Option(DLQ_DEFAULT, "--sink", "--sink-name",
                     help=f"Sink whose dead letters to manage: {DLQ_DEFAULT} (default), kafka, ...")


def _access(database_url: Optional[str], slot: Optional[str], sink_name: str, **options):
    from pulse.cli import common
    from pulse.sinks import dead_letters

    cfg = common.settings(database={"url": database_url, "slot": slot})
    return dead_letters(cfg, sink_name, **options)


@dlq_app.command("list")
def list_(
    database_url: Optional[str] = _DB,
    slot: Optional[str] = _SLOT,
    sink_name: str = _SINK,
    limit: int = typer.Option(50, "--limit", min=1, help="Most rows shown, oldest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Show dead letters: position, event, reason or CloudEvent id and attempts, and the last error."""
    import orjson

    access = _access(database_url, slot, sink_name)
    total, rows = access.list(limit)
    if as_json:
        for r in rows:
            typer.echo(orjson.dumps(r, default=str).decode())
        return
    typer.echo(f"{total} dead letter(s) for {access.key}" + (f"; oldest {len(rows)} shown" if rows else ""))
    for r in rows:
        typer.echo(f"  #{r['id']} event {r['event_id']} {access.describe(r)}")


@dlq_app.command("show")
def show(
    id_: int = typer.Option(..., "--id", help="Dead letter id (see `pulse dlq list`)."),
    database_url: Optional[str] = _DB,
    slot: Optional[str] = _SLOT,
    sink_name: str = _SINK,
) -> None:
    """Print one dead letter in full, as JSON: its row and the whole event it keeps."""
    import orjson

    from pulse.errors import TerminalError

    row = _access(database_url, slot, sink_name).show(id_)
    if row is None:
        raise TerminalError(f"no dead letter #{id_} for sink {sink_name}", hint="see `pulse dlq list --sink NAME`")
    typer.echo(orjson.dumps(row, default=str).decode())


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
    """Send dead letters again in full, oldest first; what arrived is removed.

    external: to the endpoint under their original ids; kafka: published to
    the topic again; bigquery: MERGEd into the rows that hold their markers.
    """
    from pulse.errors import TerminalError

    if not ids and not all_:
        raise TerminalError("nothing selected to replay", hint="pass --all, or --id N (see `pulse dlq list`)")
    done, failed, error = _access(database_url, slot, sink_name, url=url).replay(ids or None, attempts=attempts)
    typer.echo(f"replayed {done} event(s)" + (f"; {failed} still failing: {error}" if failed else ""))
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
    access = _access(database_url, slot, sink_name)
    if not yes:
        typer.confirm(f"Delete the selected dead letters of {access.key} for good?", abort=True)
    typer.echo(f"purged {access.purge(ids or None, before)} dead letter(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
