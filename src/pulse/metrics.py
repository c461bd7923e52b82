"""Prometheus metrics, served on 127.0.0.1 when `runtime.metrics_port` is set.

Names are stable (dashboards depend on them): `pulse_events_in_total`,
`pulse_events_out_total{sink}`, `pulse_end_to_end_seconds{sink}` (commit
time in PostgreSQL to durable in the sink), `pulse_slot_lag_bytes`,
`pulse_queue_bytes{sink}`, `pulse_queue_events{sink}`,
`pulse_errors_total{sink,kind}`, `pulse_problems_total{problem}`,
`pulse_dead_letters_total{sink,reason}`, `pulse_acked_lsn`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
DEAD_LETTERS = Counter("pulse_dead_letters_total", "Events kept in full in a dead-letter store (delivered "
                       "truncated, e.g. payload_too_large)", ["sink", "reason"])
TRUNCATES = Counter("pulse_truncates_total", "TRUNCATEs of captured tables seen", ["table"])


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
