"""`pulse status`: the slot, each sink's position and lag, queue fill.

It is also a health probe: the exit code is 1 (`UNHEALTHY` in pulse.cli.main)
when the slot is missing, lost or inactive, or when the pipeline's report
(`runtime_status.updated_at`, written every 2 s) is missing or older than
`--stale-after`; the reasons are printed (and listed under "problems" with
`--json`). A cron job or a Kubernetes probe can run it as is.
"""

from __future__ import annotations

from typing import NoReturn, Optional

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def status(
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False),
    slot: Optional[str] = typer.Option(None, "--slot", envvar="PULSE_SLOT"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    stale_after: float = typer.Option(30.0, "--stale-after", min=0,
                                      help="Seconds after which the pipeline's last report counts as stale "
                                      "(it reports every 2 s)."),
) -> None:
    """Report the replication slot and what the running pipeline last said about itself.

    Exits 1 when the slot is missing, lost or inactive or the report is missing or stale.
    """
    from psycopg2 import sql

    from pulse.cli import common
    from pulse.schema import connect
    from pulse.source.slot import slot_info

    cfg = common.settings(database={"url": database_url, "slot": slot})
    db = cfg.database
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            info = slot_info(cur, db.slot)
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{db.state_schema}.runtime_status",))
            runtime = None
            if cur.fetchone()[0]:
                cur.execute(
                    sql.SQL("SELECT updated_at, extract(epoch FROM now() - updated_at), doc FROM {}.runtime_status "
                            "WHERE slot_name = %s").format(sql.Identifier(db.state_schema)),
                    (db.slot,),
                )
                row = cur.fetchone()
                if row:
                    runtime = {"updated_at": row[0].isoformat(), "age_s": float(row[1]), **row[2]}
            from pulse.runtime.backfill import list_runs

            from pulse.runtime.snapshot import snapshot_status

            backfills = list_runs(cur, db)
            snapshot = snapshot_status(cur, db)
    finally:
        conn.close()
    problems = health_problems(db.slot, info, runtime, stale_after)
    doc = {"slot": info.__dict__ if info else None, "runtime": runtime, "snapshot": snapshot,
           "backfills": backfills,
           "healthy": not problems, "problems": problems}
    if as_json:
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode())
        _exit(problems)
    console = Console()
    if info is None:
        console.print(f"[red]slot {db.slot!r} does not exist[/red] (it is created by `pulse run`)")
    else:
        t = Table(title=f"slot {info.name}")
        for col in ("active", "wal_status", "confirmed_flush", "restart_lsn", "lag bytes", "lag seconds"):
            t.add_column(col)
        lag_s = f"{runtime['lag_seconds']:.1f}" if runtime else "-"
        t.add_row(str(info.active), str(info.wal_status), str(info.confirmed_flush_lsn), str(info.restart_lsn),
                  f"{info.lag_bytes or 0:,}", lag_s)
        console.print(t)
    if snapshot is not None:
        console.print(snapshot_line(snapshot))
    if backfills:
        bt = Table(title="backfills")
        for col in ("run", "state", "range", "sinks", "rows read", "emitted", "superseded", "updated"):
            bt.add_column(col)
        for b in backfills:
            rng = f"{b['since_ts'] or '-'} .. {b['until_ts'] or '-'}"
            if b["min_id"] is not None or b["max_id"] is not None:
                rng += f" ids {b['min_id'] or '-'}..{b['max_id'] or '-'}"
            bt.add_row(b["run_id"], b["state"], rng, ",".join(b["sinks"]),
                       f"{b['rows_read']:,}/{b['total_estimate'] or 0:,}", f"{b['rows_emitted']:,}",
                       f"{b['rows_superseded']:,}", f"{b['updated_at']:%Y-%m-%d %H:%M:%S}")
        console.print(bt)
    if runtime is None:
        console.print("no pipeline has reported for this slot")
        _print_problems(console, problems)
        _exit(problems)
    stale = " [yellow](stale: the pipeline is not running?)[/yellow]" if runtime["age_s"] > stale_after else ""
    console.print(f"pipeline pid {runtime['pid']}, reported {runtime['age_s']:.1f}s ago{stale}; "
                  f"events in {runtime['events_in']:,}; pending transactions {runtime['pending_txns']}")
    t = Table(title="sinks")
    for col in ("sink", "durable position", "queued", "queue fill", "written", "retries", "last error", "details"):
        t.add_column(col)
    for name, s in runtime["sinks"].items():
        fill = f"{100 * s['queue_bytes'] / s['queue_max_bytes']:.1f}%"
        details = "; ".join(f"{k}: {v}" for k, v in (s.get("details") or {}).items())
        t.add_row(name, s["durable"], f"{s['queue_events']:,}", fill, f"{s['written']:,}", str(s["retries"]),
                  s["last_error"] or "", details)
    console.print(t)
    _print_problems(console, problems)
    _exit(problems)


def health_problems(slot: str, info, runtime: dict | None, stale_after: float) -> list[str]:
    """Why the pipeline is not healthy (empty when it is): what `pulse status` exits 1 for."""
    problems = []
    if info is None:
        problems.append(f"slot {slot!r} does not exist")
    elif info.wal_status == "lost":
        problems.append(f"slot {slot!r} is lost (wal_status = lost): changes were removed before Pulse read them")
    elif not info.active:
        problems.append(f"slot {slot!r} is not active: no pipeline is reading it")
    if runtime is None:
        problems.append("no pipeline has reported for this slot")
    elif runtime["age_s"] > stale_after:
        problems.append(f"the pipeline's last report is {runtime['age_s']:.0f}s old (stale after {stale_after:g}s)")
    return problems


def _print_problems(console, problems: list[str]) -> None:
    from rich.markup import escape

    for problem in problems:
        console.print(f"[red]unhealthy:[/red] {escape(problem)}")


def _exit(problems: list[str]) -> NoReturn:
    from pulse.cli.main import OK, UNHEALTHY

    raise typer.Exit(UNHEALTHY if problems else OK)


def snapshot_line(s: dict) -> str:
    """One line on the initial snapshot: its state, rows, targets and the window rebuild."""
    from pulse.runtime.backfill import bar

    total = s["total_estimate"] or 0
    ratio = min(1.0, s["rows_read"] / total) if total else (1.0 if s["state"] == "done" else 0.0)
    if s["state"] == "done":
        head = f"initial snapshot: [green]done[/green], {s['rows_emitted']:,} rows"
    elif s["state"] == "failed":
        head = f"initial snapshot: [red]failed[/red] ({escape(s['error'] or '')}); a restart resumes it"
    elif s["max_id"] is None:
        head = "initial snapshot: [yellow]planned[/yellow] (the slot is being created)"
    else:
        head = (f"initial snapshot: [yellow]{s['state']}[/yellow] {escape(bar(ratio))} "
                f"{s['rows_read']:,} / {total:,} rows ({100 * ratio:.0f}%)")
    head += f" to {','.join(s['sinks']) or '-'}"
    if s["window_sinks"]:
        rebuilt = s["window_rebuilt_at"]
        head += f"; {','.join(s['window_sinks'])} window " + (
            f"rebuilt {rebuilt:%H:%M:%S}" if rebuilt else "[yellow]rebuild pending[/yellow]")
    return head


def register(app: typer.Typer) -> None:
    app.command("status")(status)
