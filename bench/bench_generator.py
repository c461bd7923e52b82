"""Benchmark: `pulse generate` bulk (COPY) speed against raw COPY of pre-built rows.

In one run, in a scratch database on the local PostgreSQL:

1. baseline: the COPY text of N events is built first (not timed), then
   copied into a scratch table of the same shape as `engagement_events`
   (bigserial key, foreign key to `content`, the CHECK), in transactions of
   50,000 rows as the generator does: the server's ingest speed for those bytes;
2. `pulse generate --count N` (the console script, in a subprocess), timed by
   its own summary (writing phase) and by wall clock (process start to exit);
3. the same with `--anomalies 0.05` (1 MB payloads, odd devices, UPDATEs and DELETEs).

Each is repeated (`--repeat`) on an emptied table and the median is reported,
with the ratio generator / raw COPY.

    source .pulse/services.env && .venv/bin/python bench/bench_generator.py [--count 500000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[1]
SINCE = "2024-08-01T00:00:00"
UNTIL = "2024-08-08T00:00:00"
SEED = 7

RAW_TABLE = """
CREATE TABLE bench_raw_copy (
    id           BIGSERIAL PRIMARY KEY,
    content_id   UUID REFERENCES content(id),
    user_id      UUID,
    event_type   TEXT CHECK (event_type IN ('play', 'pause', 'finish', 'click')),
    event_ts     TIMESTAMPTZ NOT NULL,
    duration_ms  INTEGER,
    device       TEXT,
    raw_payload  JSONB
)
"""


def _with_db(url: str, db: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + db))


def _prebuilt_chunks(db_url: str, count: int, chunk_rows: int) -> list[bytes]:
    """The COPY bytes `pulse generate --seed SEED` would write, built ahead (content seeded as a side effect)."""
    from pulse.config import DatabaseConfig
    from pulse.generator.content import ensure_content
    from pulse.generator.events import EventFactory
    from pulse.generator.runner import Streams, _ms
    from pulse.generator.writer import TimestampText, encode_copy
    from pulse.source.db import connect

    streams = Streams.from_seed(SEED)
    since = datetime.fromisoformat(SINCE).replace(tzinfo=timezone.utc)
    until = datetime.fromisoformat(UNTIL).replace(tzinfo=timezone.utc)
    conn = connect(DatabaseConfig(url=db_url))
    try:
        catalogue, _ = ensure_content(conn, "public", count=200, rng=streams.content, zero_length_rng=None,
                                      published_before=since)
    finally:
        conn.close()
    factory = EventFactory(catalogue, streams.events)
    ts = TimestampText()
    return [encode_copy(c, ts) for c in factory.history(count, _ms(since, ceil=True), _ms(until),
                                                        chunk_rows=chunk_rows)]


def _reset(conn, table: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.Identifier(table)))
        try:
            cur.execute("CHECKPOINT")
        except psycopg2.Error:
            pass  # needs pg_checkpoint or superuser; the bench runs without it too


def raw_copy(conn, chunks: list[bytes]) -> float:
    """Seconds to COPY the pre-built chunks into bench_raw_copy, one transaction each."""
    import io

    statement = sql.SQL("COPY bench_raw_copy ({}) FROM STDIN").format(
        sql.SQL(", ").join(map(sql.Identifier, (
            "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")))
    )
    conn.autocommit = False
    started = time.perf_counter()
    for data in chunks:
        with conn.cursor() as cur:
            cur.copy_expert(statement, io.BytesIO(data), size=1 << 20)
        conn.commit()
    elapsed = time.perf_counter() - started
    conn.autocommit = True
    return elapsed


def pulse_generate(db_url: str, count: int, anomalies: float) -> tuple[dict, float]:
    """Run the console script; return (its JSON summary, wall seconds)."""
    pulse = ROOT / ".venv" / "bin" / "pulse"
    cmd = [str(pulse), "--log-level", "warning", "generate", "--count", str(count), "--since", SINCE,
           "--until", UNTIL, "--seed", str(SEED), "--json"]
    if anomalies:
        cmd += ["--anomalies", str(anomalies)]
    env = {**os.environ, "PULSE_DATABASE_URL": db_url}
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    return orjson.loads(out.stdout.strip().splitlines()[-1]), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args = parser.parse_args()
    base = os.environ.get("PULSE_DATABASE_URL")
    if not base:
        print("PULSE_DATABASE_URL is not set: source .pulse/services.env first", file=sys.stderr)
        return 2

    from pulse.config import DatabaseConfig
    from pulse.schema import init_database

    name = f"pulse_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(base)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db_url = _with_db(base, name)
    try:
        init_database(DatabaseConfig(url=db_url, publication="pulse_bench"))
        conn = psycopg2.connect(db_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(RAW_TABLE)
            cur.execute("SELECT version()")
            server = cur.fetchone()[0].split(",")[0]
        t0 = time.perf_counter()
        chunks = _prebuilt_chunks(db_url, args.count, args.chunk_rows)
        build_s = time.perf_counter() - t0
        size = sum(map(len, chunks))
        print(f"server: {server}; cpus: {os.cpu_count()}; rows: {args.count:,}; "
              f"COPY bytes: {size / 1e6:.1f} MB (built in {build_s:.2f} s, not timed)")

        raw, plain, plain_wall, anom, anom_wall = [], [], [], [], []
        for i in range(args.repeat):
            _reset(conn, "bench_raw_copy")
            raw.append(args.count / raw_copy(conn, chunks))
            _reset(conn, "engagement_events")
            summary, wall = pulse_generate(db_url, args.count, 0.0)
            assert summary["rows_written"] == args.count, summary
            plain.append(summary["rows_per_s"])
            plain_wall.append(args.count / wall)
            _reset(conn, "engagement_events")
            summary, wall = pulse_generate(db_url, args.count, 0.05)
            anom.append(summary["rows_per_s"])
            anom_wall.append(args.count / wall)
            print(f"run {i + 1}: raw COPY {raw[-1]:,.0f}/s, generate {plain[-1]:,.0f}/s "
                  f"(wall {plain_wall[-1]:,.0f}/s), generate --anomalies 0.05 {anom[-1]:,.0f}/s "
                  f"(wall {anom_wall[-1]:,.0f}/s)")
        conn.close()
        med = statistics.median
        r = med(raw)
        print()
        print(f"| what | events/s (median of {args.repeat}) | vs raw COPY |")
        print("|---|---:|---:|")
        print(f"| raw COPY of pre-built rows | {r:,.0f} | 1.00 |")
        print(f"| `pulse generate --count {args.count}` (writing phase) | {med(plain):,.0f} | {med(plain) / r:.2f} |")
        print(f"| same, wall clock incl. process start and content load | {med(plain_wall):,.0f} | "
              f"{med(plain_wall) / r:.2f} |")
        print(f"| `... --anomalies 0.05` (writing phase) | {med(anom):,.0f} | {med(anom) / r:.2f} |")
        print(f"| same, wall clock | {med(anom_wall):,.0f} | {med(anom_wall) / r:.2f} |")
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
