"""`pulse verify --watch`: rounds until stopped, metrics of each round."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY

from pulse.cli.verify import duration
from pulse.errors import TransientError
from pulse.verify.report import Finding, Result
from pulse.verify.watch import watch


def _value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_rounds_export_rows_findings_and_the_last_clean_time():
    stop = threading.Event()
    rounds = [
        [Result("wtest", rows_source=100)],
        [Result("wtest", rows_source=50, findings=[Finding("missing", "7"), Finding("missing", "8"),
                                                   Finding("different", "9", ("device",))])],
        TransientError("emulator down"),
    ]
    seen = []
    rows_before = _value("pulse_verify_rows_checked_total", sink="wtest")

    def _round():
        item = rounds[len(seen)]
        seen.append(item)
        if len(seen) == len(rounds):
            stop.set()
        if isinstance(item, Exception):
            raise item
        if len(seen) == 1:
            assert _value("pulse_verify_last_clean_timestamp_seconds", sink="wtest") == 0
        return item

    n = watch(_round, 0.0, stop, sinks=("wtest",))
    assert n == 3
    assert _value("pulse_verify_rows_checked_total", sink="wtest") - rows_before == 150
    assert _value("pulse_verify_findings", sink="wtest", kind="missing") == 2
    assert _value("pulse_verify_findings", sink="wtest", kind="different") == 1
    assert _value("pulse_verify_findings", sink="wtest", kind="extra") == 0
    assert _value("pulse_verify_last_clean_timestamp_seconds", sink="wtest") > 1.7e9
    assert _value("pulse_verify_runs_total", sink="wtest", outcome="equal") == 1
    assert _value("pulse_verify_runs_total", sink="wtest", outcome="differs") == 1
    assert _value("pulse_verify_runs_total", sink="wtest", outcome="error") == 1


def test_duration():
    assert (duration("30s"), duration("5m"), duration("1h"), duration("90")) == (30, 300, 3600, 90)


def test_readyz_is_ready_once_a_round_completed_and_not_after_watch_stops():
    from pulse import health

    stop = threading.Event()
    states = []

    def _round():
        states.append(health.READINESS.check()[0])  # during the first round: none completed yet
        if len(states) == 2:
            stop.set()
        return [Result("wready", rows_source=1)]

    watch(_round, 0.0, stop, sinks=("wready",))
    assert states == [False, True]
    assert "verify" not in health.READINESS.check()[1]


def test_an_external_rounds_accounting_is_exported_unaccountable_ids_included():
    from pulse.verify.watch import record

    accounting = {"outbox": "kafka", "delivered": 90, "pending": 4, "dead_lettered": 1, "missing": 0,
                  "unaccountable": 5, "oldest_pending_s": 2.0}
    record([Result("wext", rows_source=100, accounting=accounting)])
    for state, n in (("delivered", 90), ("pending", 4), ("dead_lettered", 1), ("missing", 0), ("unaccountable", 5)):
        assert _value("pulse_verify_external_ids", sink="wext", state=state) == n, state
    record([Result("wbq", rows_source=100)])  # no accounting (not an external sink): no series
    assert REGISTRY.get_sample_value("pulse_verify_external_ids", {"sink": "wbq", "state": "missing"}) is None
