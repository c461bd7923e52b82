"""`pulse upload`: the uploader alone, over an existing spool folder.

For the separate-workers mode (`pulse run` / `consume` with
`bigquery.upload_in_process = false` spools; this loads) and to drain a spool
by hand (`--once`). It runs the same `Loader` as the sink's thread, under the
same spool lock, so running both at once is safe.

Also runnable as `python -m pulse.cli.upload` (before the verb is registered).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from pulse.cli import common


def upload(
    spool_dir: Optional[Path] = typer.Option(None, "--spool-dir", envvar="PULSE_BIGQUERY__SPOOL_DIR",
                                             help="Folder of Parquet files to load (and its sub-folders); default: "
                                             "bigquery.spool_dir, else the folders `pulse run` (this slot) and "
                                             "`pulse consume --sink bigquery` write with this configuration."),
    once: bool = typer.Option(False, "--once", help="Load everything spooled, then exit."),
    as_json: bool = typer.Option(False, "--json", help="On exit, print what was loaded as one JSON document "
                                                      "(files and rows per spool folder, the table)."),
    project: Optional[str] = typer.Option(None, "--project", envvar="PULSE_BIGQUERY_PROJECT"),
    dataset: Optional[str] = typer.Option(None, "--dataset", envvar="PULSE_BIGQUERY_DATASET"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", envvar="PULSE_BIGQUERY_ENDPOINT",
                                           help="REST endpoint of an emulator; unset means Google."),
    load_interval_s: Optional[float] = typer.Option(None, "--load-interval", envvar="PULSE_BIGQUERY__LOAD_INTERVAL_S",
                                                    help="Seconds between load jobs (default 60)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", envvar="PULSE_RUNTIME__METRICS_PORT",
                                               help="Serve /metrics, /healthz, /readyz on runtime.metrics_host:PORT "
                                               "(0: off; not with --once)."),
) -> None:
    """Load spooled BigQuery batches (bigquery_batches/) into the table, exactly once."""
    import time

    from pulse import health, metrics
    from pulse.errors import TransientError
    from pulse.log import get_logger
    from pulse.sinks.bigquery.sink import BigQuerySink
    from pulse.sinks.bigquery.client import Tables, make_client
    from pulse.sinks.bigquery.load import Loader
    from pulse.sinks.bigquery.spool import Spool, holds_batches, upload_folders

    cfg = common.settings(bigquery={"spool_dir": spool_dir, "project": project, "dataset": dataset,
                                    "endpoint": endpoint, "load_interval_s": load_interval_s},
                          runtime={"metrics_port": metrics_port})
    bq = cfg.bigquery
    log = get_logger("pulse.upload")
    stop = threading.Event()

    def _stop(signum, _frame) -> None:
        log.info("signal", signal=signal.Signals(signum).name, action="stopping after the current load")
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    if bq.spool_dir is not None and not bq.spool_dir.exists():
        # A worker started next to its sink may come first: wait on an empty folder.
        log.warning("upload.spool_missing", spool=str(bq.spool_dir), action="created; waiting for files")
        bq.spool_dir.mkdir(parents=True, exist_ok=True)
    tables = Tables(make_client(bq), bq, slot=cfg.database.slot)
    # The run spool (pulse run) and one folder per Kafka partition (pulse
    # consume --sink bigquery keeps one spool and position per partition);
    # each must belong to this table (its owner.json).
    owner = BigQuerySink.upload_owner(cfg)
    loaders: dict[Path, Loader] = {}

    def refresh() -> list[Loader]:
        dirs = upload_folders(bq.spool_dir, owner)
        for d in dirs:
            if d not in loaders:
                spool = Spool(d, owner=owner, table_only=True)
                if spool.owner is None and holds_batches(d):
                    log.warning("upload.spool_without_owner", spool=str(d), table=owner.table_id,
                                action="loading it into this table (written by an earlier Pulse)")
                loaders[d] = Loader(tables, spool, bq)
        if len(dirs) > 1:
            # Partition spools: an event id can move between partitions, so no
            # loader is the table's single writer; always MERGE.
            for loader in loaders.values():
                loader.direct = False
                loader.single_writer = False
        return list(loaders.values())

    refresh()
    log.info("upload.starting", spool=str(bq.spool_dir or "bigquery_batches/" + owner.table_id),
             folders=len(loaders), once=once,
             table=tables.id(tables.table))
    backoff = 0.5
    ensured = False
    # For /readyz: when a round (the table check, the due loads) last went through without an error.
    progress = {"at": time.monotonic(), "error": "", "ok": False}

    def readiness() -> tuple[bool, str]:
        limit = cfg.runtime.ready_stall_s
        idle = time.monotonic() - progress["at"]
        if stop.is_set():
            return False, "stopping"
        if not progress["ok"] and not ensured:
            return False, f"BigQuery table not checked yet{': ' + progress['error'] if progress['error'] else ''}"
        if idle > limit:
            return False, f"no successful load round for {idle:.0f} s: {progress['error'] or 'busy'}"
        return True, (f"loading {len(loaders)} spool folders; {sum(ld.loaded_files for ld in loaders.values())} "
                      f"files loaded")

    if not once and cfg.runtime.metrics_port:
        metrics.serve(cfg.runtime.metrics_host, cfg.runtime.metrics_port)
        health.READINESS.register("uploader", readiness)
    while not stop.is_set():
        try:
            if not ensured:
                tables.ensure()
                ensured = True
            if once:
                n = sum(loader.drain() for loader in refresh())
                log.info("upload.drained", files=n, rows=sum(ld.loaded_rows for ld in loaders.values()))
                _report(as_json, tables.id(tables.table), loaders)
                return
            busy = False
            for loader in refresh():
                if loader.due():
                    loader.load_once()
                    busy = True
            progress.update(at=time.monotonic(), error="", ok=True)
            if busy:
                backoff = 0.5
                continue
        except TransientError as exc:
            log.warning("upload.retry", error=str(exc), sleep_s=backoff)
            progress["error"] = str(exc)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        stop.wait(0.2)
    health.READINESS.unregister("uploader")
    log.info("upload.stopped", files=sum(ld.loaded_files for ld in loaders.values()),
             rows=sum(ld.loaded_rows for ld in loaders.values()))
    _report(as_json, tables.id(tables.table), loaders)


def _report(as_json: bool, table: str, loaders: dict) -> None:
    """`--json`: what this run loaded, on stdout (the logs stay on stderr)."""
    if not as_json:
        return
    import orjson

    folders = {str(path): {"files": ld.loaded_files, "rows": ld.loaded_rows} for path, ld in loaders.items()}
    doc = {"table": table, "files": sum(f["files"] for f in folders.values()),
           "rows": sum(f["rows"] for f in folders.values()), "folders": folders}
    typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def register(app: typer.Typer) -> None:
    app.command("upload")(upload)


if __name__ == "__main__":  # pragma: no cover
    import sys

    from pulse.errors import PulseError

    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(_app)
    common.configure_early_logging("info", "console")
    try:
        # One command: Typer runs it directly (no verb on the command line).
        _app(sys.argv[1:], standalone_mode=True)
    except PulseError as exc:
        typer.secho(f"pulse: error: {exc}", fg="red", err=True)
        sys.exit(2)
