"""`make demo` (`pulse dev demo`): the whole pipeline on the local services.

Starts what is not running, applies the schema, checks the database with
`pulse doctor`, runs `pulse run` with every destination available, writes
live traffic with anomalies, shows what arrived where and the end-to-end
latency, then stops everything it started and drops its replication slot
(a demo must not leave a slot pinning WAL behind).
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg2
from rich.console import Console
from rich.table import Table

from pulse_dev import services
from pulse.receiver import Receiver

console = Console()
DEMO_SLOT = "pulse_demo"
DEMO_PUBLICATION = "pulse_demo"
DEMO_PREFIX = "pulse_demo:"
DEMO_DATASET = "pulse_demo"
DEMO_DB = "pulse_demo"


def _pulse() -> str:
    return str(Path(sys.executable).parent / "pulse")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _section(title: str) -> None:
    console.rule(f"[bold]{title}")


def run(rate: float = 200.0, seconds: float = 15.0, history: int = 20_000) -> None:
    before = {r["name"]: r.get("running") for r in services.status()}
    _section("1. local services")
    services.up()
    started_here = [name for name, running in before.items() if not running]
    subprocess.run([_pulse(), "dev", "status"], check=True)

    env = dict(os.environ)
    env.update(services.endpoints())
    # A source database of its own, fresh each time, so the counts compare exactly.
    env["PULSE_DATABASE_URL"] = _fresh_database(env["PULSE_DATABASE_URL"])
    _fresh_destinations(env)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = Receiver(secret=secret).start()
    metrics_port = _free_port()
    env.update(
        PULSE_SLOT=DEMO_SLOT, PULSE_PUBLICATION=DEMO_PUBLICATION, PULSE_DATABASE__HEARTBEAT_INTERVAL_S="2",
        PULSE_LOG__LEVEL="warning", PULSE_REDIS_PREFIX=DEMO_PREFIX, PULSE_BIGQUERY_DATASET=DEMO_DATASET,
        PULSE_BIGQUERY__SPOOL_DIR=str(services.state_dir() / "demo" / "bigquery_batches"),
        PULSE_BIGQUERY__LOAD_INTERVAL_S="2", PULSE_EXTERNAL_URL=receiver.url, PULSE_EXTERNAL_SECRET=secret,
    )
    url = env["PULSE_DATABASE_URL"]

    _section("2. schema and preflight")
    # FULL identity: the generator's updates and deletes carry the old row, so the board corrects for them.
    subprocess.run([_pulse(), "db", "init", "--replica-identity-full"], env=env, check=True)
    subprocess.run([_pulse(), "doctor"], env=env, check=False)

    _section(f"2b. history before Pulse's first start: {history:,} events over the last 2 hours")
    subprocess.run([_pulse(), "generate", "--count", str(history), "--since",
                    (datetime.now(timezone.utc) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S"),
                    "--until", "now", "--anomalies", "0.05", "--seed", "7"], env=env, check=True)
    console.print("[dim]these rows exist before the slot: the initial snapshot (snapshot.mode = initial) copies "
                  "them to BigQuery and the external system, and rebuilds the Redis board's window[/dim]")

    sinks = ["redis", "bigquery", "external"]
    # No --sink: `pulse run` runs every destination whose endpoint is configured (all three here).
    _section(f"3. pulse run (every configured destination: {', '.join(sinks)})")
    run_args = [_pulse(), "run", "--metrics-port", str(metrics_port)]
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

        _wait(streaming, 90, "pulse run to start streaming")
        console.print(f"streaming from slot [bold]{DEMO_SLOT}[/bold] to {', '.join(sinks)}; "
                      f"receiver at {receiver.url}")
        _wait(lambda: _snapshot_done(cur), 300, "the initial snapshot")
        subprocess.run([_pulse(), "status"], env=env, check=False)

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

        _section("5. Redis: the live board (pulse top --once)")
        subprocess.run([_pulse(), "top", "--once", "--limit", "8"], env=env, check=False)

        _section("6. the external system (pulse receiver's counts)")
        stats = receiver.stats()
        console.print({k: stats[k] for k in ("requests", "received", "unique", "duplicates", "conflicts",
                                              "order_violations", "signature_ok", "signature_failures")})

        _section("7. BigQuery: what arrived (a query through the official client)")
        _wait(lambda: _bigquery_rows(env) >= _source_events(cur), 120, "BigQuery to hold every event")
        _bigquery_report(env)

        _section("8. end-to-end latency, commit in PostgreSQL to durable in the sink")
        _latency_report(metrics_port)

        _section("9. what Pulse reports (pulse status)")
        subprocess.run([_pulse(), "status"], env=env, check=False)

        _section("10. does every destination equal the source? (pulse verify)")
        subprocess.run([_pulse(), "verify", "--sink", "bigquery", "--sink", "redis", "--sink", "external"], env=env,
                       check=False)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        console.print(f"pulse run stopped (exit code {proc.returncode})")
        receiver.stop()
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND NOT active", (DEMO_SLOT,))
        conn.close()
        console.print(f"demo slot {DEMO_SLOT} dropped, receiver stopped")
        if started_here:
            services.down(tuple(started_here))
            console.print(f"stopped the services this demo started: {', '.join(started_here)}")


def _fresh_database(base_url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    from psycopg2 import sql

    admin = psycopg2.connect(base_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT active", (DEMO_DB,))
        for (slot,) in cur.fetchall():
            cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    admin.close()
    return urlunsplit(urlsplit(base_url)._replace(path="/" + DEMO_DB))


def _fresh_destinations(env: dict[str, str]) -> None:
    import redis

    client = _bq_client(env)
    client.delete_dataset(DEMO_DATASET, delete_contents=True, not_found_ok=True)
    r = redis.Redis.from_url(env["PULSE_REDIS_URL"])
    keys = list(r.scan_iter(match=DEMO_PREFIX + "*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()
    spool = services.state_dir() / "demo" / "bigquery_batches"
    if spool.exists():
        import shutil

        shutil.rmtree(spool)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot_done(cur) -> bool:
    cur.execute("SELECT state = 'done' AND (window_rebuilt_at IS NOT NULL OR window_sinks = '{}') "
                "FROM pulse.backfill_runs WHERE slot_name = %s AND kind = 'snapshot'", (DEMO_SLOT,))
    row = cur.fetchone()
    return bool(row and row[0])


def _source_events(cur) -> int:
    cur.execute("SELECT count(*) FROM engagement_events")
    return cur.fetchone()[0]


def _bq_client(env: dict[str, str]):
    from pulse.config import BigQueryConfig
    from pulse.sinks.bigquery.client import make_client

    return make_client(BigQueryConfig(project=env["PULSE_BIGQUERY_PROJECT"], dataset=DEMO_DATASET,
                                      endpoint=env["PULSE_BIGQUERY_ENDPOINT"]))


def _bigquery_rows(env: dict[str, str]) -> int:
    client = _bq_client(env)
    try:
        rows = client.query(f"SELECT count(*) AS n FROM `{DEMO_DATASET}.engagement_events`").result()
        return next(iter(rows))["n"]
    except Exception:  # the table appears with the first load
        return 0


def _bigquery_report(env: dict[str, str]) -> None:
    client = _bq_client(env)
    sql_text = (
        f"SELECT content_type, count(*) AS events, count(DISTINCT event_id) AS ids, "
        f"round(sum(engagement_seconds), 1) AS seconds FROM `{DEMO_DATASET}.engagement_events` "
        f"GROUP BY content_type ORDER BY events DESC"
    )
    console.print(f"[dim]{sql_text}[/dim]")
    table = Table()
    for col in ("content_type", "events", "distinct ids", "engagement seconds"):
        table.add_column(col)
    for row in client.query(sql_text).result():
        table.add_row(str(row["content_type"]), f"{row['events']:,}", f"{row['ids']:,}", str(row["seconds"]))
    console.print(table)


def _latency_report(port: int) -> None:
    """p50 / p99 per sink from the Prometheus histogram (bucket upper bounds)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets: dict[str, list[tuple[float, float]]] = {}
    for line in body.splitlines():
        if line.startswith("pulse_end_to_end_seconds_bucket{"):
            labels, value = line.rsplit(" ", 1)
            sink = labels.split('sink="')[1].split('"')[0]
            le = labels.split('le="')[1].split('"')[0]
            buckets.setdefault(sink, []).append((float("inf") if le == "+Inf" else float(le), float(value)))
    table = Table()
    for col in ("sink", "events", "p50 <=", "p99 <="):
        table.add_column(col)
    for sink, rows in sorted(buckets.items()):
        rows.sort()
        total = rows[-1][1]
        if not total:
            continue

        def q(frac: float) -> str:
            for le, count in rows:
                if count >= frac * total:
                    return "inf" if le == float("inf") else f"{le * 1000:g} ms"
            return "-"

        table.add_row(sink, f"{int(total):,}", q(0.5), q(0.99))
    console.print(table)
    console.print("[dim]durable = in Redis / in the external outbox / in the BigQuery spool (batch mode loads "
                  "it every bigquery.load_interval_s)[/dim]")
