"""`pulse run`: the all-in-one pipeline on the in-process bus."""

from __future__ import annotations

import signal
import threading
from typing import Optional

import typer

from pulse.cli import common


def run(
    sink: Optional[list[str]] = typer.Option(
        None, "--sink", "-s",
        help="Sink to run (repeatable); default: runtime.sinks, else every destination whose endpoint is "
        "configured (PULSE_REDIS_URL, PULSE_BIGQUERY_PROJECT, PULSE_EXTERNAL_URL); none: an error."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False),
    slot: Optional[str] = typer.Option(None, "--slot", envvar="PULSE_SLOT"),
    publication: Optional[str] = typer.Option(None, "--publication", envvar="PULSE_PUBLICATION"),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", envvar="PULSE_RUNTIME__METRICS_PORT",
                                               help="Serve Prometheus metrics on 127.0.0.1:PORT (0: off)."),
) -> None:
    """Stream changes from PostgreSQL to the sinks until SIGTERM / Ctrl-C (which drains cleanly)."""
    from pulse import metrics
    from pulse.log import get_logger
    from pulse.runtime.pipeline import Pipeline
    from pulse.sinks import build_sink, pipeline_sinks

    cfg = common.settings(
        database={"url": database_url, "slot": slot, "publication": publication},
        runtime={"sinks": sink or None, "metrics_port": metrics_port},
    )
    log = get_logger("pulse.run")
    names = pipeline_sinks(cfg)
    sinks = [build_sink(name, cfg) for name in names]
    pipeline = Pipeline(cfg, sinks)
    if cfg.runtime.metrics_port:
        metrics.serve(cfg.runtime.metrics_host, cfg.runtime.metrics_port)
        log.info("metrics.serving", addr=f"{cfg.runtime.metrics_host}:{cfg.runtime.metrics_port}")

    def _stop(signum, _frame) -> None:
        log.info("signal", signal=signal.Signals(signum).name, action="draining")
        pipeline.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    log.info("run.starting", database=cfg.database.safe_url(), slot=cfg.database.slot,
             sinks=",".join(names))
    pipeline.run()


def register(app: typer.Typer) -> None:
    app.command("run")(run)
