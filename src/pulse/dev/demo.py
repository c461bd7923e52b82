"""`make demo` (`pulse dev demo`): the whole pipeline on the local services.

Starts what is not running, applies the schema, checks the database with
`pulse doctor`, runs `pulse run` with every destination available, writes
live traffic with anomalies, shows what arrived where and the end-to-end
latency, then stops everything it started and drops its replication slot
(a demo must not leave a slot pinning WAL behind).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
from rich.console import Console

from pulse.dev import services

console = Console()
DEMO_SLOT = "pulse_demo"
DEMO_PUBLICATION = "pulse_demo"


def _pulse() -> str:
    return str(Path(sys.executable).parent / "pulse")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _sinks_available() -> list[str]:
    """Destinations whose module is present in this build (the demo grows as they land)."""
    import importlib.util

    out = []
    for name, module in (("redis", "pulse.sinks.redis"), ("bigquery", "pulse.sinks.bigquery"),
                         ("external", "pulse.sinks.external")):
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out or ["memory"]


def _section(title: str) -> None:
    console.rule(f"[bold]{title}")


def run(rate: float = 200.0, seconds: float = 15.0) -> None:
    before = {r["name"]: r.get("running") for r in services.status()}
    _section("1. local services")
    services.up()
    started_here = [name for name, running in before.items() if not running]
    subprocess.run([_pulse(), "dev", "status"], check=True)

    env = dict(os.environ)
    env.update(services.endpoints())
    env.update(PULSE_SLOT=DEMO_SLOT, PULSE_PUBLICATION=DEMO_PUBLICATION,
               PULSE_DATABASE__HEARTBEAT_INTERVAL_S="2", PULSE_LOG__LEVEL="warning")
    url = env["PULSE_DATABASE_URL"]

    _section("2. schema and preflight")
    subprocess.run([_pulse(), "db", "init"], env=env, check=True)
    subprocess.run([_pulse(), "doctor"], env=env, check=False)

    sinks = _sinks_available()
    _section(f"3. pulse run --sink {' --sink '.join(sinks)}")
    run_args = [_pulse(), "run", "--metrics-port", "0"]
    for s in sinks:
        run_args += ["--sink", s]
    proc = subprocess.Popen(run_args, env=env)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    try:
        def streaming() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"pulse run exited with {proc.returncode}")
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (DEMO_SLOT,))
            row = cur.fetchone()
            return bool(row and row[0])

        _wait(streaming, 60, "pulse run to start streaming")
        console.print(f"streaming from slot [bold]{DEMO_SLOT}[/bold]")

        _section(f"4. live traffic: {rate:g} events/s for {seconds:g} s, 5 % anomalies")
        subprocess.run([_pulse(), "generate", "--rate", str(rate), "--duration", str(seconds),
                        "--anomalies", "0.05"], env=env, check=True)
        cur.execute("SELECT pg_current_wal_lsn()")
        target = cur.fetchone()[0]

        def caught_up() -> bool:
            cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                        (target, DEMO_SLOT))
            row = cur.fetchone()
            return bool(row and row[0])

        _wait(caught_up, 120, "the pipeline to catch up")

        _section("5. what Pulse reports (pulse status)")
        subprocess.run([_pulse(), "status"], env=env, check=False)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        console.print(f"pulse run stopped (exit code {proc.returncode})")
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND NOT active", (DEMO_SLOT,))
        cur.execute("DELETE FROM pulse.slot_registry WHERE slot_name = %s", (DEMO_SLOT,))
        conn.close()
        console.print(f"demo slot {DEMO_SLOT} dropped")
        if started_here:
            services.down(tuple(started_here))
            console.print(f"stopped the services this demo started: {', '.join(started_here)}")
