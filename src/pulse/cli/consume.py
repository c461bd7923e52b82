"""`pulse consume --sink NAME`: one destination fed from Kafka, in its own consumer group."""

from __future__ import annotations

from typing import Optional

import typer

from pulse.cli import common


def consume(
    sink: str = typer.Option(..., "--sink", "-s", help="Destination: redis, bigquery, external (or a test sink)."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", envvar="PULSE_KAFKA_BOOTSTRAP"),
    topic: Optional[str] = typer.Option(None, "--topic", envvar="PULSE_KAFKA__TOPIC"),
    group: Optional[str] = typer.Option(None, "--group", help="Consumer group (default: <group_prefix>-<sink>)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", envvar="PULSE_RUNTIME__METRICS_PORT"),
) -> None:
    """Consume enriched events into one sink until SIGTERM; scale out by running more instances."""
    from pulse import metrics
    from pulse.bus.consumer import SinkConsumer
    from pulse.cli.produce import install_stop
    from pulse.sinks import build_sink

    cfg = common.settings(kafka={"bootstrap": bootstrap, "topic": topic, "group": group},
                          runtime={"metrics_port": metrics_port})
    build_sink(sink, cfg)  # fail at start on bad config, before joining the group

    def factory(instance):
        # One sink per partition, each with its own position (`SinkInstance`).
        return build_sink(sink, cfg, instance=instance)

    consumer = SinkConsumer(cfg, sink, factory, group=group)
    if cfg.runtime.metrics_port:
        metrics.serve(cfg.runtime.metrics_host, cfg.runtime.metrics_port)
    install_stop(consumer.stop)
    consumer.run()


def register(app: typer.Typer) -> None:
    app.command("consume")(consume)
