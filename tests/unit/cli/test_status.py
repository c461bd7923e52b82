"""`pulse status`'s health rule on given slot / report facts (the integration test covers a real slot)."""

from __future__ import annotations

from pulse.cli.status import health_problems
from pulse.source.slot import SlotInfo


def _slot(**over) -> SlotInfo:
    base = dict(name="pulse", plugin="pgoutput", database="app", active=True, active_pid=42, wal_status="reserved",
                restart_lsn="0/1", confirmed_flush_lsn="0/2", lag_bytes=0, current_lsn="0/2")
    base.update(over)
    return SlotInfo(**base)


FRESH = {"age_s": 3.0}


def test_streaming_and_fresh_is_healthy() -> None:
    assert health_problems("pulse", _slot(), FRESH, 30) == []


def test_each_reason_is_reported() -> None:
    assert health_problems("pulse", None, FRESH, 30) == ["slot 'pulse' does not exist"]
    [lost] = health_problems("pulse", _slot(wal_status="lost", active=False), FRESH, 30)
    assert "lost" in lost
    [idle] = health_problems("pulse", _slot(active=False), FRESH, 30)
    assert "not active" in idle
    assert health_problems("pulse", _slot(), None, 30) == ["no pipeline has reported for this slot"]
    [stale] = health_problems("pulse", _slot(), {"age_s": 31.0}, 30)
    assert "31s old" in stale and "stale after 30s" in stale
    assert health_problems("pulse", _slot(), {"age_s": 30.0}, 30) == []  # the threshold itself is still fresh


def _doc(**runtime_over) -> dict:
    sink = {"durable": "0/16B3748#1", "enqueued": "0/16B3748#1", "queue_events": 1234, "queue_bytes": 10_000,
            "queue_max_bytes": 67_108_864, "written": 123_456_789, "retries": 3, "last_error": None,
            "lag_seconds": 0.4, "details": {"backlog": 1500, "backlog_oldest_s": 12.5, "circuit": "closed"}}
    runtime = {"pid": 4242, "age_s": 1.2, "events_in": 123_456_789, "pending_txns": 7, "lag_seconds": 0.8,
               "sinks": {"redis": dict(sink, details={}), "bigquery": sink,
                         "external": dict(sink, last_error="HTTP 503 from the endpoint " * 4)}}
    runtime.update(runtime_over)
    slot = _slot(lag_bytes=3 * 1024 ** 3, retained_bytes=5 * 1024 ** 3, safe_wal_size=None).__dict__
    return {"slot": slot, "runtime": runtime, "snapshot": None, "backfills": [], "healthy": True, "problems": []}


def _printed(lines: list[str], width: int = 80) -> list[str]:
    import io

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    for line in lines:
        console.print(line, overflow="fold")
    return out.getvalue().splitlines()


def test_status_is_one_line_per_sink_within_80_columns() -> None:
    from pulse.cli.status import render_lines

    lines = render_lines(_doc(), "pulse", 30)
    printed = _printed(lines)
    assert len(printed) == len(lines)  # nothing wrapped at 80 columns
    assert max(len(p) for p in printed) <= 80
    sink_lines = [p for p in printed if p.lstrip().startswith(("redis ", "bigquery ", "external "))]
    assert len(sink_lines) == 3
    assert "123,456,789" in sink_lines[1] and "backlog 1,500" in sink_lines[1]
    assert "error" in sink_lines[2] and "503" not in "".join(printed)  # the error text waits for --verbose
    assert "lag 3.0 GB" in printed[0] and "retains 5.0 GB" in printed[0]


def test_status_verbose_adds_the_details() -> None:
    from pulse.cli.status import render_lines

    short = render_lines(_doc(), "pulse", 30)
    long = render_lines(_doc(), "pulse", 30, verbose=True)
    text = "\n".join(_printed(long))
    assert len(long) > len(short)
    assert "safe_wal_size unlimited" in text
    assert "durable 0/16B3748#1" in text and "HTTP 503 from the endpoint" in text and "circuit: closed" in text
