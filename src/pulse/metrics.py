"""Prometheus metrics, served on 127.0.0.1 when `runtime.metrics_port` is set.

Names are stable (dashboards and the alert rules in deploy/ depend on them);
docs/metrics.md lists every one with what it measures, and a test scrapes
each name it lists. `pulse run` and `pulse produce` export the pipeline's
(events in, per-sink out, end-to-end latency, queues, the slot); `pulse
consume` exports the same per-sink families for its sink plus the consumer
lag. Gauges a sink reports through `Sink.status()` (`backlog`,
`backlog_oldest_s`) become `pulse_sink_backlog_*{sink}` whatever the sink.
"""

from __future__ import annotations

import platform

from prometheus_client import Counter, Gauge, Histogram

from pulse import __version__

BUILD_INFO = Gauge("pulse_build_info", "Always 1; the labels say which Pulse and Python this process runs",
                   ["version", "python"])
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

EVENTS_IN = Counter("pulse_events_in_total", "Engagement event changes read from the source")
CHANGES_IN = Counter("pulse_changes_in_total", "Row changes read from the source", ["table", "op"])
EVENTS_OUT = Counter("pulse_events_out_total", "Events made durable by a sink", ["sink"])
E2E = Histogram(
    "pulse_end_to_end_seconds",
    "Seconds from commit in PostgreSQL to durable in the sink",
    ["sink"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SLOT_LAG = Gauge("pulse_slot_lag_bytes", "Bytes of WAL between the server's end and the acknowledged position")
SLOT_RETAINED = Gauge("pulse_slot_retained_wal_bytes",
                      "Bytes of WAL the server keeps for the slot (current WAL position minus the slot's restart_lsn)")
SLOT_SAFE_WAL = Gauge("pulse_slot_safe_wal_size_bytes",
                      "pg_replication_slots.safe_wal_size: bytes of WAL that may still be written before the slot "
                      "is lost (NaN when max_slot_wal_keep_size is unlimited)")
SLOT_WAL_STATUS = Gauge("pulse_slot_wal_status",
                        "1 for the slot's current pg_replication_slots.wal_status, 0 for the others "
                        "(unreserved: about to be invalidated; lost: invalidated)", ["status"])
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
ACKED_LSN = Gauge("pulse_acked_lsn", "LSN acknowledged to the replication slot")
QUEUE_BYTES = Gauge("pulse_queue_bytes", "Bytes waiting in a sink's queue", ["sink"])
QUEUE_EVENTS = Gauge("pulse_queue_events", "Events waiting in a sink's queue", ["sink"])
ERRORS = Counter("pulse_errors_total", "Errors by sink and kind", ["sink", "kind"])
PROBLEMS = Counter("pulse_problems_total", "Odd rows delivered, by problem", ["problem"])
BACKFILL_ROWS = Counter("pulse_backfill_rows_total",
                        "Rows of an initial snapshot or a backfill durable in every target", ["kind"])
BACKFILL_ESTIMATE = Gauge("pulse_backfill_rows_estimate",
                          "Rows the running initial snapshot or backfill expects to read (0: none running)", ["kind"])
BACKFILL_PROGRESS = Gauge("pulse_backfill_progress_ratio",
                          "Share of the running initial snapshot or backfill done, 0..1 (1: none running)", ["kind"])
WINDOW_REBUILDS = Counter("pulse_window_rebuilds_total",
                          "Windowed destinations (the Redis board) rebuilt from the source for an initial snapshot",
                          ["sink"])
DEAD_LETTERS = Counter("pulse_dead_letters_total", "Events moved to a sink's dead-letter store, by sink and reason "
                       "(refused by the destination, out of attempts, or kept in full while a truncated copy was "
                       "delivered: payload_too_large)", ["sink", "reason"])
SINK_LAG = Gauge("pulse_sink_lag_seconds",
                 "Seconds since the commit of the oldest event a sink does not hold durably yet (0: caught up); "
                 "set every 2 s by `pulse run` / `pulse produce`", ["sink"])
SINK_BACKLOG = Gauge("pulse_sink_backlog_events",
                     "Events a sink holds durably but has not delivered downstream yet (the external outbox)", ["sink"])
SINK_BACKLOG_AGE = Gauge("pulse_sink_backlog_oldest_seconds",
                         "Age of the oldest event a sink holds undelivered (0 when its backlog is empty)", ["sink"])
CONSUMER_LAG = Gauge("pulse_consumer_lag_messages",
                     "Messages of an assigned partition after the `pulse consume` group's committed offset (which "
                     "moves only past what the sink made durable), from librdkafka's statistics every 2 s",
                     ["sink", "partition"])
EXTERNAL_OUTBOX_BYTES = Gauge("pulse_external_outbox_bytes", "Disk used by the external sink's local outbox "
                             "(memory held, with outbox = kafka)", ["sink"])
EXTERNAL_OUTBOX_EVENTS = Gauge("pulse_external_outbox_events", "Events in the external sink's outbox not yet "
                              "delivered or dead-lettered", ["sink"])
EXTERNAL_OUTBOX_OLDEST = Gauge("pulse_external_outbox_oldest_seconds", "Age of the oldest event waiting in the "
                              "external sink's outbox (0: none)", ["sink"])
BQ_TABLE_JOBS = Gauge("pulse_bigquery_table_jobs", "Jobs that wrote the BigQuery table today (UTC): direct loads "
                      "and MERGEs, as counted in the state table", ["table"])
BQ_TABLE_JOBS_BUDGET = Gauge("pulse_bigquery_table_jobs_budget", "bigquery.load_jobs_per_day: the most jobs that "
                             "may write the table per day", ["table"])
BQ_BYTES_BILLED = Counter("pulse_bigquery_bytes_billed_total", "Bytes BigQuery billed for Pulse's query jobs, by "
                          "job path (the pulse_path label)", ["path"])
TRUNCATES = Counter("pulse_truncates_total", "TRUNCATEs of captured tables seen", ["table"])
REPLICATION_DISCONNECTS = Counter("pulse_replication_disconnects_total",
                                  "Replication connections lost (server restart, walsender terminated, network); "
                                  "each is followed by a reconnect with backoff")
REPLICATION_CONNECTED = Gauge("pulse_replication_connected", "1 while the replication connection streams, else 0")


def sink_gauges(sink: str, status: dict) -> None:
    """Set the generic sink gauges from what a sink reported in `Sink.status()` (keys it does not report stay unset)."""
    backlog = status.get("backlog")
    if isinstance(backlog, int):
        SINK_BACKLOG.labels(sink).set(backlog)
    age = status.get("backlog_oldest_s")
    if isinstance(age, (int, float)):
        SINK_BACKLOG_AGE.labels(sink).set(age)


def slot_gauges(wal_status: str | None, safe_wal_size: int | None, retained: int | None) -> None:
    """Set the slot's gauges from one read of pg_replication_slots."""
    for status in WAL_STATUSES:
        SLOT_WAL_STATUS.labels(status).set(1 if status == wal_status else 0)
    SLOT_SAFE_WAL.set(float("nan") if safe_wal_size is None else safe_wal_size)
    if retained is not None:
        SLOT_RETAINED.set(retained)


def declare_sink(sink: str) -> None:
    """Create a sink's labelled series at 0, so a dashboard shows 0 (not "no data") before the first event."""
    EVENTS_OUT.labels(sink)
    E2E.labels(sink)
    for kind in ("transient", "terminal"):
        ERRORS.labels(sink, kind)


def serve(host: str, port: int):
    """Expose /metrics, /healthz and /readyz (pulse.health); binds to `host` (127.0.0.1 by default)."""
    from pulse.health import serve as serve_http

    return serve_http(host, port)


def observe_many(hist, value: float, count: int) -> None:
    """`count` observations of the same value (a chunk of events sharing a commit time).

    prometheus_client has no bulk observe; one call per event would cost a
    microsecond each on the hot path. This adds to the sum and the one
    bucket directly, falling back to single observations if the client's
    internals ever change.
    """
    buckets = getattr(hist, "_buckets", None)
    bounds = getattr(hist, "_upper_bounds", None)
    total = getattr(hist, "_sum", None)
    if buckets is None or bounds is None or total is None:
        for _ in range(count):
            hist.observe(value)
        return
    total.inc(value * count)
    for i, bound in enumerate(bounds):
        if value <= bound:
            buckets[i].inc(count)
            return
