"""`pulse generate`: seed content if empty, then write engagement events.

Live (default): `--rate` events/s for `--duration` seconds (0 = until Ctrl-C
or SIGTERM), timestamps of now, small transactions. Bulk history:
`--count N [--since T] [--until T]`, written with COPY. `--seed N` repeats a
run row for row; `--anomalies 0.05` adds the odd rows real clients send.
The summary goes to stdout (a table, or JSON with `--json`), logs to stderr.
"""

from __future__ import annotations

import signal
import threading
from datetime import datetime, timezone
from typing import Optional

import typer

from pulse.cli import common


def _parse_time(value: Optional[str], flag: str) -> Optional[datetime]:
    if value is None:
        return None
    if value.strip().lower() == "now":
        return datetime.now(timezone.utc)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2024-08-01T00:00:00", param_hint=flag) from exc
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def generate(
    database_url: Optional[str] = typer.Option(
        None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False, help="Source database URL."
    ),
    source_schema: Optional[str] = typer.Option(
        None, "--source-schema", envvar="PULSE_DATABASE__SOURCE_SCHEMA", show_default=False,
        help="Schema of the content and engagement_events tables (default: public).",
    ),
    count: Optional[int] = typer.Option(
        None, "--count", "-n", min=0, show_default=False,
        help="Bulk mode: write exactly this many events with COPY, spread over --since/--until.",
    ),
    since: Optional[str] = typer.Option(
        None, "--since", show_default=False,
        help="Bulk: start of the range, ISO 8601 (naive = UTC) (default: --until minus 7 days).",
    ),
    until: Optional[str] = typer.Option(
        None, "--until", show_default=False, help="Bulk: end of the range (exclusive), ISO 8601 or 'now' (default: now)."
    ),
    rate: Optional[float] = typer.Option(
        None, "--rate", "-r", min=0.001, show_default=False, help="Live mode: events per second (default: 20)."
    ),
    duration: Optional[float] = typer.Option(
        None, "--duration", "-d", min=0, show_default=False,
        help="Live mode: seconds to run; 0 runs until Ctrl-C / SIGTERM (default: 0).",
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", show_default=False,
        help="Make the run reproducible: same content and rows every time "
        "(bulk: with fixed --since and --until; live: same shapes, timestamps of now).",
    ),
    anomalies: float = typer.Option(
        0.0, "--anomalies", min=0.0, max=1.0,
        help="Fraction of events made anomalous (NULL content, negative durations, odd devices, late rows, ...), "
        "plus UPDATEs and DELETEs of past events.",
    ),
    content: int = typer.Option(200, "--content", min=1, help="Content rows to seed when the table is empty."),
    users: int = typer.Option(5_000, "--users", min=1, help="Size of the user pool."),
    chunk_rows: int = typer.Option(50_000, "--chunk-rows", min=1, help="Bulk: rows per COPY (one transaction each)."),
    txn_rows: int = typer.Option(50, "--txn-rows", min=1, help="Live: most rows per INSERT transaction."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Seed `content` if empty, then write engagement events (live, or bulk history with --count)."""
    from pulse.generator import GenerateSpec, run

    if count is not None and (rate is not None or duration is not None):
        raise typer.BadParameter("--count (bulk) and --rate/--duration (live) do not go together", param_hint="--count")
    if count is None and (since is not None or until is not None):
        raise typer.BadParameter("--since/--until need --count (bulk mode)", param_hint="--since")
    spec = GenerateSpec(
        mode="bulk" if count is not None else "live",
        count=count or 0,
        since=_parse_time(since, "--since"),
        until=_parse_time(until, "--until"),
        rate=rate if rate is not None else 20.0,
        duration_s=duration if duration is not None else 0.0,
        seed=seed,
        anomalies=anomalies,
        content_count=content,
        users=users,
        chunk_rows=chunk_rows,
        txn_rows=txn_rows,
    )
    cfg = common.settings(database={"url": database_url, "source_schema": source_schema})
    stop = threading.Event()
    # Live mode stops cleanly (and still prints its summary) on SIGTERM or Ctrl-C;
    # a bulk load is interrupted by Ctrl-C between or inside chunks (each chunk is one transaction).
    handled = (signal.SIGTERM, signal.SIGINT) if spec.mode == "live" else (signal.SIGTERM,)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in handled}
    try:
        summary = run(cfg.database, spec, stop=stop)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _print(summary, as_json)


def _print(summary, as_json: bool) -> None:
    if as_json:
        import orjson

        typer.echo(orjson.dumps(summary.as_dict()).decode())
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"pulse generate ({summary.mode}, seed {summary.seed})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows written", f"{summary.rows_written:,}")
    for event_type, n in summary.by_type.items():
        table.add_row(f"  {event_type}", f"{n:,}")
    if summary.anomalies:
        for kind, n in summary.anomalies.items():
            table.add_row(f"anomaly {kind}", f"{n:,}")
    table.add_row("content", f"{summary.content_total:,} ({summary.content_seeded:,} seeded now)")
    if summary.since:
        table.add_row("range", f"{summary.since} .. {summary.until}")
    table.add_row("elapsed", f"{summary.elapsed_s:.2f} s")
    table.add_row("rate", f"{summary.rows_per_s:,.0f} rows/s")
    console.print(table)
