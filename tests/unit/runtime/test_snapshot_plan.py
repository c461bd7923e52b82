"""Which sinks take the initial snapshot's rows, which are rebuilt, and how progress reads."""

from __future__ import annotations

from datetime import datetime, timezone

from pulse.cli.status import snapshot_line
from pulse.config import Settings
from pulse.runtime.backfill import Progress, bar
from pulse.runtime.snapshot import plan_targets
from pulse.sinks.base import Sink
from pulse.sinks.memory import FaultySink, MemorySink


class _Relay(Sink):
    name = "kafka"
    relays = True

    def write(self, batch):  # pragma: no cover - never called
        raise AssertionError

    def relay_snapshot_targets(self, settings):
        return ("bigquery", "external") if settings.external.snapshot else ("bigquery",), ("redis",)


def _sink(name: str, mode: str) -> Sink:
    s = MemorySink(name)
    s.snapshot_mode = mode
    return s


def test_each_sink_declares_its_part():
    rows, windows = plan_targets(Settings(), [_sink("bq", "rows"), _sink("board", "window"), _sink("x", "none"),
                                              FaultySink(_sink("ext", "rows"))])
    assert rows == ("bq", "ext")
    assert windows == ("board",)


def test_a_relay_names_the_workers_behind_it_and_external_snapshot_false_leaves_it_out():
    assert plan_targets(Settings(), [_Relay()]) == (("bigquery", "external"), ("redis",))
    s = Settings(external={"snapshot": False})
    assert plan_targets(s, [_Relay()]) == (("bigquery",), ("redis",))


def test_the_real_sinks_declare_window_and_rows():
    from pulse.sinks.external.sink import ExternalSink
    from pulse.sinks.redis.sink import RedisSink

    s = Settings(external={"url": "http://127.0.0.1:9/x"})
    assert RedisSink.from_settings(s).snapshot_mode == "window"
    assert ExternalSink.from_settings(s).snapshot_mode == "rows"
    s = Settings(external={"url": "http://127.0.0.1:9/x", "snapshot": False})
    assert ExternalSink.from_settings(s).snapshot_mode == "none"


def test_bar_and_progress_ratio():
    assert bar(0.0, 10) == "[..........]"
    assert bar(0.5, 10) == "[#####.....]"
    assert bar(1.7, 10) == "[##########]"
    t = [0.0]
    p = Progress("snapshot", 1000, 100, clock=lambda: t[0])
    assert p.ratio() == 0.1
    t[0] = 10.0
    p.advance(400, 390, "run")
    assert p.rows == 500 and p.ratio() == 0.5
    assert Progress("snapshot", 0, 0).ratio() == 0.0


def test_status_line_says_what_the_snapshot_is_doing():
    base = {"run_id": "s", "rows_read": 250, "rows_emitted": 250, "total_estimate": 1000, "max_id": 1000,
            "last_id": 250, "sinks": ["bigquery", "external"], "window_sinks": ["redis"], "window_rebuilt_at": None,
            "started_at": None, "finished_at": None, "error": None}
    line = snapshot_line({**base, "state": "running"})
    assert "running" in line and "250 / 1,000 rows (25%)" in line and "redis window" in line and "pending" in line
    done = snapshot_line({**base, "state": "done", "rows_emitted": 1000,
                          "window_rebuilt_at": datetime(2026, 1, 1, 12, 0, 1, tzinfo=timezone.utc)})
    assert "done" in done and "1,000 rows" in done and "rebuilt 12:00:01" in done
    assert "planned" in snapshot_line({**base, "state": "pending", "max_id": None})
    assert "[/]" not in snapshot_line({**base, "state": "failed", "error": "boom [/]"}).replace("\\[/]", "")
