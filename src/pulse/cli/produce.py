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
) -> None:
    """Stream changes from PostgreSQL to the Kafka topic (keyed by content id) until SIGTERM."""
    from pulse import metrics
    from pulse.runtime.pipeline import Pipeline
    from pulse.sinks.kafka import KafkaSink

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
