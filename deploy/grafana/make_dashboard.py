"""Writes deploy/grafana/dashboards/pulse.json (run: python deploy/grafana/make_dashboard.py).

The dashboard is generated so every panel has the same shape; a test checks that each query uses only
metrics listed in docs/metrics.md.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "prometheus"}
PANELS = [
    # (title, unit, [(expr, legend)], description)
    ("Events in and out per second", "ops",
     [("sum(rate(pulse_events_in_total[1m]))", "in"),
      ("sum by (sink) (rate(pulse_events_out_total[1m]))", "out {{sink}}")],
     "Events read from the slot and made durable by each sink."),
    ("Commit to durable, p50 / p99", "s",
     [("histogram_quantile(0.5, sum by (sink, le) (rate(pulse_end_to_end_seconds_bucket[5m])))", "p50 {{sink}}"),
      ("histogram_quantile(0.99, sum by (sink, le) (rate(pulse_end_to_end_seconds_bucket[5m])))", "p99 {{sink}}")],
     "Seconds from the commit in PostgreSQL to durable in the sink (the brief's bar: under 5 s)."),
    ("Sink lag", "s", [("max by (sink) (pulse_sink_lag_seconds)", "{{sink}}")],
     "Seconds since the commit of the oldest event each sink does not hold yet."),
    ("Slot lag and retained WAL", "bytes",
     [("max(pulse_slot_lag_bytes)", "lag (server end - acknowledged)"),
      ("max(pulse_slot_retained_wal_bytes)", "retained (server end - restart_lsn)"),
      ("min(pulse_slot_safe_wal_size_bytes)", "safe_wal_size (left before the slot is lost)")],
     "WAL the server keeps for Pulse's slot, and how much may still be written before it is invalidated."),
    ("Slot wal_status", "none", [("max by (status) (pulse_slot_wal_status) == 1", "{{status}}")],
     "reserved is normal; extended means max_wal_size is exceeded; unreserved is about to be lost."),
    ("Queues", "short", [("sum by (sink) (pulse_queue_events)", "{{sink}}")],
     "Events waiting in each sink's in-memory queue (backpressure when full)."),
    ("External backlog", "short",
     [("sum by (sink) (pulse_sink_backlog_events)", "{{sink}} events"),
      ("max by (sink) (pulse_sink_backlog_oldest_seconds)", "{{sink}} oldest (s)")],
     "Events held durably but not delivered to the endpoint yet, and the age of the oldest."),
    ("Dead letters (per 15 min)", "short",
     [("sum by (sink, reason) (increase(pulse_dead_letters_total[15m]))", "{{sink}} {{reason}}")],
     "Events moved to a dead-letter store (pulse dlq list)."),
    ("Kafka consumer lag", "short", [("sum by (sink) (pulse_consumer_lag_messages)", "{{sink}}")],
     "Messages each pulse consume group has yet to read."),
    ("Snapshot / backfill progress", "percentunit",
     [("max by (kind) (pulse_backfill_progress_ratio)", "{{kind}}")],
     "Share of the running initial snapshot or backfill done (1 when none runs)."),
    ("Errors and problems (per 5 min)", "short",
     [("sum by (sink, kind) (increase(pulse_errors_total[5m]))", "{{sink}} {{kind}}"),
      ("sum by (problem) (increase(pulse_problems_total[5m]))", "odd rows: {{problem}}")],
     "Sink errors by kind, and odd rows delivered with their problem flagged."),
    ("Verify findings", "short", [("max by (sink, kind) (pulse_verify_findings)", "{{sink}} {{kind}}")],
     "Rows the last pulse verify round found different between the source and a destination."),
]


def panel(i: int, title: str, unit: str, targets, description: str) -> dict:
    return {
        "id": i + 1, "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 2, "fillOpacity": 10}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + j)}
                    for j, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict:
    return {
        "uid": "pulse-overview", "title": "Pulse", "tags": ["pulse", "cdc"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []}, "annotations": {"list": []},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "dashboards" / "pulse.json"
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(out)
