#!/usr/bin/env python3
"""Health checks of the Pulse containers (installed in the image as `pulse-healthcheck`).

    pulse-healthcheck ready [--spool-max-age S]
                                           the worker's /readyz answers 200 (produce, consume, upload:
                                           replication acknowledging / consumer assigned and committing /
                                           loads succeeding; docs/deploy.md, "Health endpoints"); with
                                           --spool-max-age also the spool check below
    pulse-healthcheck metrics              the worker's Prometheus endpoint answers
    pulse-healthcheck http URL             URL answers 2xx/3xx (the receiver's /healthz)
    pulse-healthcheck db-progress --within S
                                           engagement_events grew in the last S seconds (the generator)
    pulse-healthcheck spool --max-age S    no batch in the BigQuery spool is older than S seconds
                                           (the uploader keeps up, BigQuery is reachable)

Exit 0 healthy, 1 unhealthy (a one-line reason on stderr, which `docker inspect` shows).
Standard library only, plus psycopg2 for db-progress (installed with Pulse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def _fail(reason: str) -> int:
    print(f"unhealthy: {reason}", file=sys.stderr)
    return 1


def check_http(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read(65536)
            return 0
    except urllib.error.HTTPError as exc:
        return _fail(f"{url} answered {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return _fail(f"{url}: {exc}")


def check_metrics(timeout: float) -> int:
    port = os.environ.get("PULSE_RUNTIME__METRICS_PORT", "0")
    if port in ("", "0"):
        return _fail("PULSE_RUNTIME__METRICS_PORT is not set: the worker serves no metrics to check")
    return check_http(f"http://127.0.0.1:{port}/metrics", timeout)


def check_ready(timeout: float, spool_max_age: float | None) -> int:
    port = os.environ.get("PULSE_RUNTIME__METRICS_PORT", "0")
    if port in ("", "0"):
        return _fail("PULSE_RUNTIME__METRICS_PORT is not set: the worker serves no /readyz to check")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read(65536)
    except urllib.error.HTTPError as exc:
        try:
            checks = json.loads(exc.read(65536))["checks"]
            reasons = "; ".join(f"{name}: {c['detail']}" for name, c in checks.items() if not c["ok"])
        except (ValueError, KeyError, TypeError):
            reasons = f"answered {exc.code}"
        return _fail(f"not ready: {reasons}")
    except (urllib.error.URLError, OSError) as exc:
        return _fail(f"{url}: {exc}")
    if spool_max_age is not None:
        return check_spool(spool_max_age)
    return 0


def check_db_progress(within: float, state_file: Path) -> int:
    import psycopg2

    url = os.environ.get("PULSE_DATABASE_URL")
    if not url:
        return _fail("PULSE_DATABASE_URL is not set")
    schema = os.environ.get("PULSE_DATABASE__SOURCE_SCHEMA", "public")
    try:
        with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(f'SELECT coalesce(max(id), 0) FROM "{schema}".engagement_events')
            newest = int(cur.fetchone()[0])
    except psycopg2.Error as exc:
        return _fail(f"database: {str(exc).strip()}")
    now = time.time()
    try:
        seen = json.loads(state_file.read_text())
    except (OSError, ValueError):
        seen = None
    if seen is None or newest != seen.get("id"):
        state_file.write_text(json.dumps({"id": newest, "at": now}))
        return 0
    idle = now - float(seen.get("at", now))
    if idle > within:
        return _fail(f"no new engagement_events for {idle:.0f} s (newest id {newest})")
    return 0


def check_spool(max_age: float) -> int:
    spool = Path(os.environ.get("PULSE_BIGQUERY__SPOOL_DIR", "bigquery_batches"))
    if not spool.is_dir():
        return _fail(f"spool folder {spool} does not exist")
    now = time.time()
    oldest = None
    for path in spool.rglob("*.parquet"):
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:  # loaded and removed meanwhile
            continue
        oldest = mtime if oldest is None else min(oldest, mtime)
    if oldest is not None and now - oldest > max_age:
        return _fail(f"a batch has waited {now - oldest:.0f} s in {spool} (limit {max_age:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pulse-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=4.0)
    sub = parser.add_subparsers(dest="check", required=True)
    ready = sub.add_parser("ready")
    ready.add_argument("--spool-max-age", type=float, default=None)
    sub.add_parser("metrics")
    http = sub.add_parser("http")
    http.add_argument("url")
    progress = sub.add_parser("db-progress")
    progress.add_argument("--within", type=float, default=60.0)
    progress.add_argument("--state-file", type=Path, default=Path("/tmp/pulse-healthcheck-progress.json"))
    spool = sub.add_parser("spool")
    spool.add_argument("--max-age", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.check == "ready":
        return check_ready(args.timeout, args.spool_max_age)
    if args.check == "metrics":
        return check_metrics(args.timeout)
    if args.check == "http":
        return check_http(args.url, args.timeout)
    if args.check == "db-progress":
        return check_db_progress(args.within, args.state_file)
    return check_spool(args.max_age)


if __name__ == "__main__":
    sys.exit(main())
