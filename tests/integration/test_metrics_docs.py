"""Every metric docs/metrics.md names is exported by a real process, and the shipped rules and dashboard are valid.

Three processes are scraped, as an operator runs them: `pulse run` with the
Redis, external (against a real `Receiver`) and memory sinks, `pulse consume
--sink memory` on a Kafka topic, and `pulse verify --watch`. The union of
their /metrics must hold every family the page lists; the families the
traffic of this test must move (events in and out, latency, the slot's
gauges, the external backlog, the consumer lag, ...) must have samples.
`promtool check rules` and `promtool test rules` run on deploy/prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulse.receiver import Receiver
from tests.conftest import need, unique

from .pipeline_helpers import insert_content, insert_events, wait_for
from .kafka_helpers import drop_topics, spawn_pulse, stop_process
from .pipeline_helpers import pulse_env, slot_streaming
from .private_services import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
RULES = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "pulse.json"

# Families this test's traffic must give a sample (the others must at least be declared).
MUST_HAVE_SAMPLES = {
    "pulse_build_info", "pulse_events_in_total", "pulse_changes_in_total", "pulse_events_out_total",
    "pulse_end_to_end_seconds", "pulse_sink_lag_seconds", "pulse_queue_events", "pulse_queue_bytes",
    "pulse_errors_total", "pulse_problems_total", "pulse_acked_lsn", "pulse_slot_lag_bytes",
    "pulse_slot_retained_wal_bytes", "pulse_slot_safe_wal_size_bytes", "pulse_slot_wal_status",
    "pulse_sink_backlog_events", "pulse_sink_backlog_oldest_seconds", "pulse_external_delivered_total",
    "pulse_external_requests_total", "pulse_external_delivery_seconds", "pulse_consumer_lag_messages",
    "pulse_verify_runs_total", "pulse_verify_rows_checked_total", "pulse_verify_findings",
}


def documented() -> set[str]:
    names = set(re.findall(r"^\| `(pulse_[a-z0-9_]+)", DOC.read_text(), re.MULTILINE))
    assert len(names) >= 30, names
    return names


def _families(text: str) -> dict[str, int]:
    """Family name (and its `_total` form for counters) -> number of samples."""
    out: dict[str, int] = {}
    for fam in text_string_to_metric_families(text):
        n = len(fam.samples)
        out[fam.name] = out.get(fam.name, 0) + n
        if fam.type == "counter":
            out[fam.name + "_total"] = out.get(fam.name + "_total", 0) + n
    return out


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(pulse_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_promtool_checks_and_unit_tests_the_alert_rules():
    exe = shutil.which("promtool")
    need(exe is not None, "promtool (Debian's prometheus package, installed by `pulse dev up`)")
    check = subprocess.run([exe, "check", "rules", str(RULES / "alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    tests = subprocess.run([exe, "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_the_dashboard_and_the_rules_use_only_documented_metrics():
    import yaml

    names = documented()
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = set().union(*map(_metric_names, exprs))
    assert used - names == set(), f"queries use metrics docs/metrics.md does not list: {sorted(used - names)}"
    # The alerts the issue asks for exist.
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"PulseSlotLagHigh", "PulseSlotAboutToBeInvalidated", "PulseSinkStalled", "PulseDeadLettersGrowing",
            "PulseFreshnessOver5s", "PulseVerifyFindings"} <= alerts


@pytest.fixture
def topic(services):
    name = unique("pulse_t")
    yield name
    drop_topics(services["PULSE_KAFKA_BOOTSTRAP"], [name])


def test_every_documented_metric_is_exported(scratch_db, services, rprefix, topic):
    prefix, _client = rprefix
    receiver = Receiver().start()
    ports = {"run": free_port(), "consume": free_port(), "verify": free_port()}
    env = pulse_env(scratch_db, PULSE_REDIS_URL=services["PULSE_REDIS_URL"], PULSE_REDIS_PREFIX=prefix,
                    PULSE_EXTERNAL_URL=receiver.url, PULSE_KAFKA_BOOTSTRAP=services["PULSE_KAFKA_BOOTSTRAP"],
                    PULSE_KAFKA__TOPIC=topic, PULSE_KAFKA__PARTITIONS="2",
                    PULSE_KAFKA__GROUP_PREFIX=unique("grp"))
    conn = scratch_db.connect()
    cur = conn.cursor()
    procs = []
    try:
        run = spawn_pulse(env, "run", "--sink", "redis", "--sink", "external", "--sink", "memory",
                     "--metrics-port", str(ports["run"]))
        procs.append(run)
        consume = spawn_pulse(env, "consume", "--sink", "memory", "--metrics-port", str(ports["consume"]))
        procs.append(consume)
        # A producer on its own slot feeds the topic, so the consumer's per-sink series move too.
        producer_slot = unique("slot")
        produce = spawn_pulse(dict(env, PULSE_SLOT=producer_slot), "produce")
        procs.append(produce)
        for slot in (scratch_db.slot, producer_slot):
            wait_for(lambda: slot_streaming(cur, slot) or any(p.poll() is not None for p in procs), 60,
                     "replication start")
        assert run.poll() is None, run.stderr.read()
        assert produce.poll() is None, produce.stderr.read()
        [c1] = insert_content(cur, 1)
        insert_events(cur, [c1, None], 20)  # half without content: pulse_problems_total moves
        verify = spawn_pulse(env, "verify", "--watch", "--sink", "redis", "--interval", "2s", "--recent", "1h",
                        "--metrics-port", str(ports["verify"]))
        procs.append(verify)

        def scraped() -> dict[str, int] | None:
            for p in procs:
                if p.poll() is not None:
                    raise AssertionError(f"{p.args}: exited {p.returncode}: {p.stderr.read()}")
            try:
                families: dict[str, int] = {}
                for port in ports.values():
                    for name, n in _families(_scrape(port)).items():
                        families[name] = families.get(name, 0) + n
            except OSError:
                return None
            missing = {n for n in MUST_HAVE_SAMPLES if not families.get(n)}
            return families if not missing else None

        families = wait_for(scraped, 90, "every process to export its samples")
        missing = documented() - set(families)
        assert not missing, f"docs/metrics.md names metrics no process exports: {sorted(missing)}"
        run_text = _scrape(ports["run"])
        assert 'pulse_slot_wal_status{status="reserved"} 1.0' in run_text
        assert re.search(r'pulse_sink_backlog_events\{sink="external"\} 0\.0', run_text), "external delivered all"
        assert re.search(r'pulse_dead_letters_total|# HELP pulse_dead_letters_total', run_text)
        consume_text = _scrape(ports["consume"])
        assert re.search(r'pulse_consumer_lag_messages\{partition="[01]",sink="memory"\}', consume_text)

        def consumed() -> dict | None:
            fams = {f.name: f for f in text_string_to_metric_families(_scrape(ports["consume"]))}
            out = sum(s.value for s in fams["pulse_events_out"].samples if s.labels.get("sink") == "memory")
            e2e = sum(s.value for s in fams["pulse_end_to_end_seconds"].samples
                      if s.name.endswith("_count") and s.labels.get("sink") == "memory")
            return {"out": out, "e2e": e2e} if out >= 20 and e2e >= 20 else None

        # `pulse consume` exports the same per-sink series as `pulse run`.
        assert wait_for(consumed, 60, "pulse consume to count the 20 events")
    finally:
        for p in procs:
            stop_process(p)
        receiver.stop()
        conn.close()
