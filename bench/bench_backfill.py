"""Backfill benchmark: rows/s of `pulse backfill` to BigQuery and to the external receiver, beside raw COPY.

In one run, on the same N events of a scratch database:

1. **raw COPY**: `COPY (SELECT ... FROM engagement_events) TO STDOUT` of the
   same columns the backfill reads, into /dev/null: how fast PostgreSQL hands
   the rows out, the ceiling;
2. **to BigQuery**: a backfill run over all ids into the `bigquery` sink
   (batch mode, the emulator), timed from submission to the run's `done` plus
   the last load;
3. **to the external receiver**: the same into the `external` sink and an
   in-process `pulse receiver`, timed until the receiver holds every event.

Usage (services up, `source .pulse/services.env`):

    .venv/bin/python bench/bench_backfill.py --events 1000000 [--emulator ephemeral]

`--emulator shared` (the default) uses the emulator of `make services`,
which runs persistent (file-backed DuckDB), so that the tests can restart
it. `--emulator ephemeral` starts a second one of the same version, in its
default in-memory mode, for this run only. The emulator copies the whole
table into a time-travel snapshot after every load job (`CREATE TABLE ...
AS SELECT * FROM` the table); on disk that copy, and the insert itself,
cost about five times what they cost in memory, so the mode decides the
ceiling that the raw load job measures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import ScratchDatabase, insert_events_sql, seed_content  # noqa: E402
from pulse.config import Settings  # noqa: E402
from pulse.runtime.backfill import BackfillSpec, get_run, submit  # noqa: E402
from pulse.runtime.pipeline import Pipeline  # noqa: E402
from pulse.sinks import build_sink  # noqa: E402


class _Null(io.RawIOBase):
    def write(self, b) -> int:  # type: ignore[override]
        return len(b)


def raw_copy(cur) -> float:
    t = time.perf_counter()
    cur.copy_expert("COPY (SELECT id, content_id, user_id, event_type, event_ts, duration_ms, device, "
                    "raw_payload::text FROM engagement_events ORDER BY id) TO STDOUT", _Null())
    return time.perf_counter() - t


def raw_load(cur, settings: Settings, dataset: str) -> tuple[float, float]:
    """The emulator's own ceiling: every row read and enriched column-wise (untimed), one Parquet
    file, one load job into a fresh table of the final schema. Returns (load job s, Parquet bytes)."""
    import io

    import pyarrow.parquet as pq
    from psycopg2 import sql

    from pulse.sinks.bigquery import schema as S
    from pulse.sinks.bigquery.client import Tables, make_client
    from pulse.source.chunks import chunk_query, read_chunk
    from pulse.transform.columnar import ContentColumns, enrich_table
    from pulse.source.content import load_content

    cache = load_content(cur, "public")
    raw = read_chunk(cur, chunk_query("public", sql.SQL("id > %s")), [0, 10**12])
    table = enrich_table(raw, ContentColumns(cache), lsn=1, first_seq=1, commit_ts=None,
                         now=datetime.now(timezone.utc))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    size = buf.tell()
    cfg = settings.bigquery.model_copy(update={"dataset": dataset})
    client = make_client(cfg)
    Tables(client, cfg).ensure()
    from google.cloud import bigquery

    buf.seek(0)
    t = time.perf_counter()
    job = client.load_table_from_file(buf, f"{client.project}.{dataset}.{cfg.table}", job_config=bigquery.LoadJobConfig(
        source_format="PARQUET", schema=S.final_schema(), write_disposition="WRITE_APPEND"))
    job.result()
    return time.perf_counter() - t, size


@contextlib.contextmanager
def ephemeral_emulator():
    """A private in-memory bqemulator on free ports; yields its REST endpoint."""
    from pulse_dev import services as dev

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    exe = Path(sys.executable).parent / "bqemulator"
    log = open(Path(".pulse") / "logs" / "bench-bigquery.log", "ab")
    proc = subprocess.Popen(
        [str(exe), "start", "--ephemeral", "--rest-host", "127.0.0.1", "--rest-port", str(ports[0]),
         "--grpc-host", "127.0.0.1", "--grpc-port", str(ports[1]), "--project", dev.BQ_PROJECT,
         "--log-level", "warning"],
        env=dict(os.environ, HOME=str(dev._bq_home())), stdout=log, stderr=log)
    try:
        _wait(lambda: dev._port_open(ports[0]) and dev._port_open(ports[1]), 90)
        yield f"http://127.0.0.1:{ports[0]}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _wait(predicate, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish")
        time.sleep(interval)


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def backfill_to(db: ScratchDatabase, settings: Settings, sink: str, events: int, done, timeout: float,
                chunk_size: int = 20_000) -> float:
    pipeline = Pipeline(settings, [build_sink(sink, settings)])
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    pipeline.ready.wait(60)
    t = time.perf_counter()
    busy0, total0 = _cpu_ticks()
    run = submit(settings.database, BackfillSpec(min_id=1, sinks=(sink,), chunk_size=chunk_size))
    conn = db.connect()
    with conn.cursor() as cur:
        _wait(lambda: get_run(cur, settings.database, run["run_id"])["state"] == "done", timeout)
    # Polled every 0.2 s: a count query is a job for the emulator, and
    # asking 20 times a second would slow the loads it waits for.
    _wait(done, timeout, 0.2)
    elapsed = time.perf_counter() - t
    busy1, total1 = _cpu_ticks()
    print(f"  machine CPU busy during the {sink} backfill: {100 * (busy1 - busy0) / max(1, total1 - total0):.0f}% "
          f"of {os.cpu_count()} cores")
    pipeline.stop()
    thread.join(120)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--chunk-size", type=int, default=100_000)
    parser.add_argument("--load-interval", type=float, default=None,
                        help="bigquery.load_interval_s (default: the config's; a backfill loads every "
                             "backfill_load_interval_s anyway)")
    parser.add_argument("--skip-external", action="store_true")
    parser.add_argument("--emulator", choices=("shared", "ephemeral"), default="shared")
    args = parser.parse_args()
    from pulse.log import configure_logging

    configure_logging(os.environ.get("PULSE_BENCH_LOG", "warning"))
    from pulse.runtime.gc_tuning import tune_gc

    tune_gc()  # as the CLI does for `pulse run`

    from google.cloud import bigquery  # noqa: F401  (fail early without the extra)

    with contextlib.ExitStack() as stack:
        endpoint = os.environ["PULSE_BIGQUERY_ENDPOINT"]
        if args.emulator == "ephemeral":
            endpoint = stack.enter_context(ephemeral_emulator())
        print(f"emulator: {args.emulator} ({endpoint})")
        run(args, stack.enter_context(ScratchDatabase()), endpoint)


def run(args, db: ScratchDatabase, endpoint: str) -> None:
    from pulse.receiver import Receiver

    cur = db.connect().cursor()
    ids = seed_content(cur)
    insert_events_sql(cur, ids, args.events, 50_000)
    raw_s = raw_copy(cur)
    print(f"raw COPY: {args.events / raw_s:,.0f} rows/s ({raw_s:.1f} s)")

    dataset = f"bench_backfill_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database=db.config("bench_bf"),
        snapshot={"mode": "never"},  # this measures `pulse backfill`; bench_snapshot.py the initial snapshot
        bigquery={"project": os.environ["PULSE_BIGQUERY_PROJECT"], "dataset": dataset,
                  "endpoint": endpoint,
                  "spool_dir": str(Path(".pulse") / "bench" / dataset),
                  **({"load_interval_s": args.load_interval} if args.load_interval else {})},
    )
    from pulse.sinks.bigquery.client import make_client

    client = make_client(settings.bigquery)

    def bq_done() -> bool:
        try:
            rows = client.query(f"SELECT count(*) AS n FROM `{dataset}.engagement_events`").result()
            return next(iter(rows))["n"] >= args.events
        except Exception:
            return False

    try:
        load_s, size = raw_load(cur, settings, dataset + "_raw")
        print(f"raw load job into the emulator: {args.events / load_s:,.0f} rows/s ({load_s:.1f} s, "
              f"{size / 1e6:.0f} MB Parquet)")
    finally:
        client.delete_dataset(dataset + "_raw", delete_contents=True, not_found_ok=True)
    try:
        bq_s = backfill_to(db, settings, "bigquery", args.events, bq_done, args.timeout, args.chunk_size)
        print(f"backfill to BigQuery: {args.events / bq_s:,.0f} rows/s ({bq_s:.1f} s), "
              f"{raw_s / bq_s:.2f}x raw COPY, {load_s / bq_s:.2f}x the raw load job")
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)

    if args.skip_external:
        return
    receiver = Receiver().start()
    try:
        ext = settings.model_copy(update={"external": settings.external.model_copy(update={"url": receiver.url}),
                                          "database": db.config("bench_bf_ext")})
        ext_s = backfill_to(db, ext, "external", args.events,
                            lambda: receiver.stats()["unique"] >= args.events, args.timeout, 20_000)
        print(f"backfill to the external receiver: {args.events / ext_s:,.0f} rows/s ({ext_s:.1f} s), "
              f"{raw_s / ext_s:.2f}x raw COPY")
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
