"""`pulse dlq list | show | replay | purge --sink NAME`: dead letters.

Rows belong to one deployment (`PULSE_SLOT`) and sink name. Two stores:

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

dlq_app = typer.Typer(help="Dead letters of a sink (list, show, replay, purge).", no_args_is_help=True)

_DB = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False)
_SLOT = typer.Option(None, "--slot", envvar="PULSE_SLOT", help="Deployment whose dead letters to manage.")
_SINK = typer.Option("external", "--sink", "--sink-name",
                     help="Sink whose dead letters to manage: external (default), kafka, ...")


def _kind(sink_name: str) -> str:
    """The sink kind of a name as `pulse dlq` takes it (`external`, or an instance's `external@<topic>/<p>`)."""
    from pulse.sinks.base import SinkInstance

    return SinkInstance.of(sink_name).kind


def _is_external(sink_name: str) -> bool:
    return _kind(sink_name) == "external"


def _store(database_url: Optional[str], slot: Optional[str], sink_name: str):
    from pulse.cli import common
    from pulse.sinks.dead_letter import DeadLetters

    cfg = common.settings(database={"url": database_url, "slot": slot})
    store = DeadLetters(cfg.database.dsn(), cfg.database.state_schema, f"{cfg.database.slot}/{sink_name}")
    conn = store.connect(name="pulse-dlq")
    try:
        store.check_schema(conn)
    finally:
        conn.close()
    return cfg, store


def _outbox(database_url: Optional[str], slot: Optional[str], sink_name: str, **external):
    from pulse.cli import common
    from pulse.sinks.external.sink import sink_key
    from pulse.sinks.external.outbox import Outbox

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
    """Show dead letters: position, event, reason or CloudEvent id and attempts, and the last error."""
    if not _is_external(sink_name):
        _cfg, store = _store(database_url, slot, sink_name)
        conn = store.connect(name="pulse-dlq")
        try:
            total = store.count_rows(conn)
            rows = store.list(conn, limit)
        finally:
            conn.close()
        _print_dead_letters(total, store.sink_key, rows, as_json, lambda r: (
            f"reason={r['reason']} bytes={r['bytes']} dead_at={r['dead_at']:%Y-%m-%d %H:%M:%S%z} "
            f"replays={r['replays']} detail={r['detail']}" + (f" error={r['last_error']}" if r['last_error'] else "")))
        return
    _cfg, outbox = _outbox(database_url, slot, sink_name)
    conn = outbox.connect(name="pulse-dlq")
    try:
        outbox.check_schema(conn)
        total = outbox.dead_count(conn)
        rows = outbox.dead_letters(conn, limit)
    finally:
        conn.close()
    _print_dead_letters(total, outbox.sink_key, rows, as_json, lambda r: (
        f"{r['ce_id']} attempts={r['attempts']} status={r['last_status']} "
        f"dead_at={r['dead_at']:%Y-%m-%d %H:%M:%S%z} replays={r['replays']} error={r['last_error']}"))


def _print_dead_letters(total: int, key: str, rows: list[dict], as_json: bool, describe) -> None:
    """`pulse dlq list` output for either store: JSON lines, or a count and one line per row."""
    import orjson

    if as_json:
        for r in rows:
            typer.echo(orjson.dumps(r, default=str).decode())
        return
    typer.echo(f"{total} dead letter(s) for {key}" + (f"; oldest {len(rows)} shown" if rows else ""))
    for r in rows:
        typer.echo(f"  #{r['id']} event {r['event_id']} {describe(r)}")


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

    if _is_external(sink_name):
        _cfg, outbox = _outbox(database_url, slot, sink_name)
        conn = outbox.connect(name="pulse-dlq")
        try:
            outbox.check_schema(conn)
            rows = outbox.dead_letters(conn, 1, ids=[id_])
            full = outbox.dead_letter_row(conn, id_) if rows else None
        finally:
            conn.close()
        if rows and full is not None:
            rows[0]["cloudevent"] = orjson.loads(full.cloudevent())
    else:
        _cfg, store = _store(database_url, slot, sink_name)
        conn = store.connect(name="pulse-dlq")
        try:
            rows = store.list(conn, 1, ids=[id_], with_event=True)
        finally:
            conn.close()
        if rows:
            rows[0]["event"] = orjson.loads(rows[0]["event"])
    if not rows:
        raise TerminalError(f"no dead letter #{id_} for sink {sink_name}", hint="see `pulse dlq list --sink NAME`")
    typer.echo(orjson.dumps(rows[0], default=str).decode())


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
    from pulse.sinks.external.delivery import HttpClient, replay_dead_letters

    if not ids and not all_:
        raise TerminalError("nothing selected to replay", hint="pass --all, or --id N (see `pulse dlq list`)")
    if not _is_external(sink_name):
        kind = _kind(sink_name)
        if kind not in ("kafka", "bigquery"):
            raise TerminalError(f"dead letters of sink {sink_name} cannot be replayed",
                                hint="inspect them with `pulse dlq show`; purge them when handled")
        store_cfg, store = _store(database_url, slot, sink_name)
        if kind == "kafka":
            from pulse.sinks.kafka.sink import replay_dead_letters as replay_kafka

            published, failed, error = replay_kafka(store_cfg.kafka, store, ids=ids or None)
        else:
            from pulse.sinks.bigquery.sink import replay_dead_letters as replay_bigquery

            published, failed, error = replay_bigquery(store_cfg.bigquery, store, ids=ids or None)
        typer.echo(f"replayed {published} event(s)" + (f"; {failed} still failing: {error}" if failed else ""))
        if failed:
            raise typer.Exit(1)
        return
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
    if not _is_external(sink_name):
        _cfg, store = _store(database_url, slot, sink_name)
        if not yes:
            typer.confirm(f"Delete the selected dead letters of {store.sink_key} for good?", abort=True)
        conn = store.connect(name="pulse-dlq")
        try:
            n = store.purge(conn, ids=ids or None, before=before)
        finally:
            conn.close()
        typer.echo(f"purged {n} dead letter(s)")
        return
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
