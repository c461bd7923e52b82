"""`pulse backfill` (and `pulse produce --backfill`): re-process a range without duplicates.

If a pipeline is already streaming from the slot, the run is handed to it (it
polls for runs) and this command follows its progress. Otherwise this command
runs the pipeline itself, with every configured sink so that none misses live
changes meanwhile, until the backfill is done.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Optional

import typer

from pulse.cli import common


def parse_ts(text: str | None) -> datetime | None:
    if text is None:
        return None
    if text == "now":
        return datetime.now(timezone.utc)
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 timestamp (e.g. 2024-08-01T00:00:00)") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def backfill(
    since: Optional[str] = typer.Option(None, "--since", help="Start of the event_ts range, ISO 8601 (naive = UTC)."),
    until: Optional[str] = typer.Option(None, "--until", help="End of the event_ts range (exclusive), or 'now'."),
    min_id: Optional[int] = typer.Option(None, "--min-id", help="Lowest event id (instead of / as well as a time range)."),
    max_id: Optional[int] = typer.Option(None, "--max-id", help="Highest event id."),
    sinks: Optional[str] = typer.Option(None, "--sinks", help="Comma-separated targets (default: bigquery,external)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1, envvar="PULSE_BACKFILL__CHUNK_SIZE",
                                             help="Rows per chunk (memory bound); default backfill.chunk_size."),
    rate_limit: Optional[float] = typer.Option(None, "--rate-limit", min=0, envvar="PULSE_BACKFILL__RATE_LIMIT",
                                               help="Rows per second read from the source; 0 = unlimited."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False),
    slot: Optional[str] = typer.Option(None, "--slot", envvar="PULSE_SLOT"),
    sink: Optional[list[str]] = typer.Option(None, "--sink", help="Sinks of the pipeline when this command runs it "
                                             "(default: runtime.sinks, else the configured destinations, plus the targets)."),
    kafka: bool = typer.Option(False, "--kafka", help="Publish to Kafka (pulse produce --backfill)."),
    as_json: bool = typer.Option(False, "--json", help="No progress bar; print one JSON document at the end "
                                                      "(the run, and the Redis rebuild if any)."),
) -> None:
    """Re-process historical events (by event_ts or id range) into the chosen destinations."""
    from pulse.runtime.backfill import BackfillSpec, submit
    from pulse.sinks import DEFAULT_BACKFILL_TARGETS, build_sink, rebuilt_not_replayed

    targets = tuple(s.strip() for s in sinks.split(",") if s.strip()) if sinks else DEFAULT_BACKFILL_TARGETS
    window = tuple(t for t in targets if rebuilt_not_replayed(t))
    if since is None and until is None and min_id is None and max_id is None and len(window) < len(targets):
        raise typer.BadParameter("give a range: --since/--until and/or --min-id/--max-id")
    cfg = common.settings(database={"url": database_url, "slot": slot},
                          backfill={"chunk_size": chunk_size, "rate_limit": rate_limit})
    from pulse.schema import require_database

    require_database(cfg.database)  # read-only; `pulse db init` applies the schema
    report: dict = {}
    for name in window:
        # A sink that keeps only the last window (the Redis board) is rebuilt
        # from a snapshot at an exact stream position, not replayed (Sink.rebuild_window).
        summary = build_sink(name, cfg).rebuild_window(cfg.database)
        report[name] = summary
        if not as_json:
            where = f" under {summary['prefix']!r}" if "prefix" in summary else ""
            typer.echo(f"{name} window{where} rebuilt from {summary['since']}: "
                       f"{summary['events']:,} events, live stream continues after {summary['position']}")
    if window:
        targets = tuple(t for t in targets if t not in window)
        if not targets:
            _print_json(report, as_json)
            return
    spec = BackfillSpec(parse_ts(since), parse_ts(until), min_id, max_id, targets, cfg.backfill.chunk_size,
                        cfg.backfill.rate_limit)
    run = submit(cfg.database, spec)
    if run["state"] == "done":
        if as_json:
            _print_json({**report, "run": run, "already_done": True}, True)
            return
        typer.echo(f"backfill {run['run_id']} already done ({run['rows_emitted']:,} rows); "
                   "a different range or sinks makes a new run")
        return
    if _slot_active(cfg):
        if not as_json:
            typer.echo(f"backfill {run['run_id']} handed to the running pipeline on slot {cfg.database.slot}")
        _follow(cfg, run["run_id"], None, report if as_json else None)
        return
    from pulse.runtime.pipeline import Pipeline
    from pulse.sinks import pipeline_sinks, relay_sink

    named = list(sink) if sink else pipeline_sinks(cfg, required=False)
    names = list(dict.fromkeys([*named, *targets])) if not kafka else [relay_sink()]
    pipeline = Pipeline(cfg, [build_sink(n, cfg) for n in names])
    from pulse.cli.produce import install_stop

    install_stop(pipeline.stop)
    thread = threading.Thread(target=_run_pipeline, args=(pipeline,), daemon=True)
    thread.start()
    try:
        _follow(cfg, run["run_id"], pipeline, report if as_json else None)
    finally:
        pipeline.stop()
        thread.join(120)
    if getattr(pipeline, "_cli_error", None):
        raise pipeline._cli_error  # type: ignore[attr-defined]


def _run_pipeline(pipeline) -> None:
    try:
        pipeline.run()
    except BaseException as exc:
        pipeline._cli_error = exc


def _slot_active(cfg) -> bool:
    from pulse.source.db import connect
    from pulse.source.slot import slot_info

    conn = connect(cfg.database)
    try:
        with conn.cursor() as cur:
            info = slot_info(cur, cfg.database.slot)
            return bool(info and info.active)
    finally:
        conn.close()


def _print_json(report: dict, as_json: bool) -> None:
    if as_json:
        import orjson

        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode())


class _Quiet:
    """Stands in for rich's Progress under --json: nothing on the terminal."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kw) -> int:
        return 0

    def update(self, *args, **kw) -> None:
        return None


def _follow(cfg, run_id: str, pipeline, report: dict | None = None) -> None:
    """A progress bar (rows, rows/s, ETA) until the run is done; then a summary (JSON when `report` is given)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pulse.runtime.backfill import get_run
    from pulse.source.db import connect

    conn = connect(cfg.database)
    conn.autocommit = True
    started = time.monotonic()
    try:
        with conn.cursor() as cur, (_Quiet() if report is not None else Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"), TimeRemainingColumn(),
        )) as progress:
            run = get_run(cur, cfg.database, run_id)
            task = progress.add_task(f"backfill {run_id}", total=run["total_estimate"] or None, rate="-")
            while True:
                run = get_run(cur, cfg.database, run_id)
                elapsed = max(time.monotonic() - started, 1e-6)
                progress.update(task, completed=run["rows_read"], rate=f"{run['rows_read'] / elapsed:,.0f}")
                if run["state"] in ("done", "failed"):
                    break
                if pipeline is not None and pipeline.failure is not None:
                    break
                if pipeline is not None and getattr(pipeline, "_cli_error", None):
                    break
                time.sleep(0.25)
    finally:
        conn.close()
    if report is not None:
        _print_json({**report, "run": run}, True)
        if run["state"] == "failed":
            raise typer.Exit(1)
        return
    typer.echo(
        f"backfill {run_id}: {run['state']}; {run['rows_read']:,} rows read in {run['chunks']:,} chunks, "
        f"{run['rows_emitted']:,} emitted, {run['rows_superseded']:,} superseded by the live stream"
        + (f"; error: {run['error']}" if run["error"] else "")
    )
    if run["state"] == "failed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("backfill")(backfill)
