"""`pulse produce`: the CDC source and enrichment, publishing to Kafka."""

from __future__ import annotations

import signal
import threading
from typing import Optional

import typer

from pulse.cli import common


def produce(
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PULSE_DATABASE_URL", show_default=False),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", envvar="PULSE_KAFKA_BOOTSTRAP"),
    topic: Optional[str] = typer.Option(None, "--topic", envvar="PULSE_KAFKA__TOPIC"),
    slot: Optional[str] = typer.Option(None, "--slot", envvar="PULSE_SLOT"),
    publication: Optional[str] = typer.Option(None, "--publication", envvar="PULSE_PUBLICATION"),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", envvar="PULSE_RUNTIME__METRICS_PORT"),
    backfill: bool = typer.Option(False, "--backfill", help="Re-process --since/--until into the topic, then exit."),
    since: Optional[str] = typer.Option(None, "--since", help="With --backfill: start of the event_ts range."),
    until: Optional[str] = typer.Option(None, "--until", help="With --backfill: end of the range (exclusive)."),
) -> None:
    """Stream changes from PostgreSQL to the Kafka topic (keyed by content id) until SIGTERM."""
    if backfill:
        from pulse.cli.backfill import backfill as run_backfill

        run_backfill(since=since, until=until, min_id=None, max_id=None, sinks=None, chunk_size=10_000,
                     rate_limit=0.0, database_url=database_url, slot=slot, sink=None, kafka=True)
        return
    from pulse import metrics
    from pulse.runtime.pipeline import Pipeline
    from pulse.sinks.kafka.sink import KafkaSink

    cfg = common.settings(
        database={"url": database_url, "slot": slot, "publication": publication},
        kafka={"bootstrap": bootstrap, "topic": topic},
        runtime={"metrics_port": metrics_port},
    )
    pipeline = Pipeline(cfg, [KafkaSink.from_settings(cfg)])
    if cfg.runtime.metrics_port:
        metrics.serve(cfg.runtime.metrics_host, cfg.runtime.metrics_port)
    install_stop(pipeline.stop)
    pipeline.run()


def install_stop(stop) -> None:
    """SIGTERM / SIGINT drain and stop instead of killing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop())
        signal.signal(signal.SIGINT, lambda *_: stop())


def register(app: typer.Typer) -> None:
    app.command("produce")(produce)
