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


def read_status(db, stale_after: float = 30.0) -> dict:
    """One read of Pulse's own state for this slot: the slot, the pipeline's last report, the snapshot and
    backfill runs, and the health verdict (what `pulse status --json` prints and `pulse board` shows).

    It reads pg_replication_slots and Pulse's state schema only, never the source tables.
    """
    from psycopg2 import sql

    from pulse.runtime.backfill import list_runs
    from pulse.runtime.snapshot import snapshot_status
    from pulse.source.db import connect
    from pulse.source.slot import slot_info

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
            backfills = list_runs(cur, db)
            snapshot = snapshot_status(cur, db)
    finally:
        conn.close()
    problems = health_problems(db.slot, info, runtime, stale_after)
    return {"slot": info.__dict__ if info else None, "runtime": runtime, "snapshot": snapshot,
            "backfills": backfills, "healthy": not problems, "problems": problems}


def status(
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False),
    slot: Optional[str] = typer.Option(None, "--slot", envvar="PULSE_SLOT"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Details: positions, each sink's own counters, every backfill run."),
    stale_after: float = typer.Option(30.0, "--stale-after", min=0,
                                      help="Seconds after which the pipeline's last report counts as stale "
                                      "(it reports every 2 s)."),
) -> None:
    """Report the replication slot and what the running pipeline last said about itself.

    One line per sink (fits 80 columns); --verbose for the details. Exits 1 when the slot is missing, lost or
    inactive or the report is missing or stale.
    """
    from pulse.cli import common

    cfg = common.settings(database={"url": database_url, "slot": slot})
    db = cfg.database
    doc = read_status(db, stale_after)
    problems = doc["problems"]
    if as_json:
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode())
        _exit(problems)
    console = Console()
    for line in render_lines(doc, db.slot, stale_after, verbose):
        console.print(line, overflow="fold")
    _exit(problems)


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def render_lines(doc: dict, slot: str, stale_after: float, verbose: bool = False) -> list[str]:
    """`pulse status` as Rich-markup lines: a slot line, a pipeline line, one line per sink, problems.

    Each line fits 80 columns for sink names up to 12 characters; `verbose` adds indented detail lines.
    """
    lines: list[str] = []
    info, runtime = doc["slot"], doc["runtime"]
    if info is None:
        lines.append(f"[red]slot {escape(slot)!r} does not exist[/red] (it is created by `pulse run`)")
    else:
        state = "active" if info["active"] else "[yellow]inactive[/yellow]"
        wal = info["wal_status"] or "-"
        if wal in ("unreserved", "lost"):
            wal = f"[red]{wal}[/red]"
        lag_s = f", {runtime['lag_seconds']:.1f}s" if runtime else ""
        lines.append(f"slot {escape(info['name'])}: {state}, wal {wal}, lag {human_bytes(info['lag_bytes'] or 0)}"
                     f"{lag_s}, retains {human_bytes(info.get('retained_bytes'))}")
        if verbose:
            safe = info.get("safe_wal_size")
            lines.append(f"  confirmed_flush {info['confirmed_flush_lsn']}, restart_lsn {info['restart_lsn']}, "
                         f"safe_wal_size {human_bytes(safe) if safe is not None else 'unlimited'}")
    if doc["snapshot"] is not None:
        lines.append(snapshot_line(doc["snapshot"]))
    runs = [b for b in doc["backfills"] if b.get("kind") != "snapshot"]
    for b in runs if verbose else [b for b in runs if b["state"] in ("pending", "running")]:
        total = b["total_estimate"] or 0
        lines.append(f"backfill {escape(b['run_id'])}: {b['state']}, {b['rows_read']:,}/{total:,} rows, "
                     f"to {','.join(b['sinks'])}")
        if verbose:
            rng = f"{b['since_ts'] or '-'} .. {b['until_ts'] or '-'}"
            if b["min_id"] is not None or b["max_id"] is not None:
                rng += f" ids {b['min_id'] or '-'}..{b['max_id'] or '-'}"
            lines.append(f"  range {escape(rng)}; emitted {b['rows_emitted']:,}, superseded "
                         f"{b['rows_superseded']:,}; updated {b['updated_at']:%Y-%m-%d %H:%M:%S}")
    if runtime is None:
        lines.append("no pipeline has reported for this slot")
    else:
        stale = " [yellow](stale)[/yellow]" if runtime["age_s"] > stale_after else ""
        lines.append(f"pipeline pid {runtime['pid']}, reported {runtime['age_s']:.1f}s ago{stale}: "
                     f"{runtime['events_in']:,} events in, {runtime['pending_txns']} txns pending")
        sinks = runtime.get("sinks") or {}
        width = max([4, *(len(n) for n in sinks)])
        if sinks:
            lines.append(f"  {'sink':<{width}} {'written':>11} {'queued':>9} {'fill':>5} {'lag':>7} "
                         f"{'retries':>7}  state")
        for name, s in sinks.items():
            fill = 100 * s["queue_bytes"] / s["queue_max_bytes"] if s.get("queue_max_bytes") else 0.0
            details = s.get("details") or {}
            state = "[red]error[/red]" if s.get("last_error") else "ok"
            if isinstance(details.get("backlog"), int) and details["backlog"]:
                state += f", backlog {details['backlog']:,}"
            lag = s.get("lag_seconds")
            lag_text = f"{lag:.1f}s" if isinstance(lag, (int, float)) else "-"
            lines.append(f"  {escape(name):<{width}} {s['written']:>11,} {s['queue_events']:>9,} {fill:>4.0f}% "
                         f"{lag_text:>7} {s['retries']:>7}  {state}")
            if verbose:
                lines.append(f"    durable {s['durable']}, enqueued {s.get('enqueued', '-')}")
                if s.get("last_error"):
                    lines.append(f"    last error: {escape(str(s['last_error']))}")
                for key, value in details.items():
                    lines.append(f"    {escape(str(key))}: {escape(str(value))}")
    for problem in doc["problems"]:
        lines.append(f"[red]unhealthy:[/red] {escape(problem)}")
    return lines


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
