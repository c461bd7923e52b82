"""`pulse verify --watch`: verify the recent range every interval and export the outcome as metrics.

Metrics (served on 127.0.0.1:`--metrics-port` when given):

- `pulse_verify_rows_checked_total{sink}`: source rows compared, summed over rounds;
- `pulse_verify_findings{sink,kind}`: findings of the last round, by kind (0 when clean);
- `pulse_verify_last_clean_timestamp_seconds{sink}`: when a round last found nothing;
- `pulse_verify_runs_total{sink,outcome}`: rounds, by outcome (equal / differs / error).

An alert on `pulse_verify_findings > 0` or on the age of the last clean run
fires on drift.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from pulse.errors import PulseError
from pulse.log import get_logger
from pulse.verify.report import KINDS, Result

log = get_logger(__name__)

ROWS_CHECKED = Counter("pulse_verify_rows_checked_total", "Source rows compared by pulse verify", ["sink"])
FINDINGS = Gauge("pulse_verify_findings", "Findings of the last pulse verify round", ["sink", "kind"])
LAST_CLEAN = Gauge("pulse_verify_last_clean_timestamp_seconds", "Epoch seconds of the last round with no finding",
                   ["sink"])
RUNS = Counter("pulse_verify_runs_total", "pulse verify rounds by outcome", ["sink", "outcome"])
EXTERNAL_IDS = Gauge("pulse_verify_external_ids", "Source event ids of the last pulse verify round of an external "
                     "sink, by state: delivered, pending, dead_lettered, missing, unaccountable (retention cut "
                     "the topic before its offsets were committed)", ["sink", "state"])
ACCOUNTING_STATES = ("delivered", "pending", "dead_lettered", "missing", "unaccountable")


def record(results: list[Result], now: float | None = None) -> None:
    """Export one round's results."""
    now = time.time() if now is None else now
    for r in results:
        ROWS_CHECKED.labels(r.sink).inc(r.rows_source)
        counts = r.by_kind()
        for kind in KINDS:
            FINDINGS.labels(r.sink, kind).set(counts.get(kind, 0))
        for state in ACCOUNTING_STATES if r.accounting else ():
            EXTERNAL_IDS.labels(r.sink, state).set(r.accounting.get(state, 0))
        if r.ok:
            LAST_CLEAN.labels(r.sink).set(now)
        RUNS.labels(r.sink, "equal" if r.ok else "differs").inc()


def watch(round_: Callable[[], list[Result]], interval_s: float, stop: threading.Event,
          on_round: Callable[[list[Result]], None] = lambda results: None, sinks: tuple[str, ...] = ()) -> int:
    """Run `round_` every `interval_s` until `stop` is set; returns the number of rounds.

    `/readyz` (with `--metrics-port`) is ready while a round completed within two
    intervals (findings do not make it unready: the findings metric alerts on drift).
    """
    from pulse import health

    rounds = 0
    completed: list[float] = []

    def readiness() -> tuple[bool, str]:
        if not completed:
            return False, "no round has completed yet"
        age = time.monotonic() - completed[-1]
        limit = 2 * interval_s + 60
        return age <= limit, f"last round completed {age:.0f} s ago (limit {limit:.0f} s)"

    health.READINESS.register("verify", readiness)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                results = round_()
            except PulseError as exc:  # a service down for a while: count it, try again next round
                log.warning("verify.round_failed", error=exc.message)
                for s in sinks:
                    RUNS.labels(s, "error").inc()
            else:
                record(results)
                on_round(results)
                completed[:] = [time.monotonic()]
            rounds += 1
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
    finally:
        health.READINESS.unregister("verify")
    return rounds
