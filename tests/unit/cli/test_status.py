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
