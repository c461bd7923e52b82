"""Benchmark: rows/s through the BigQuery sink (batch and stream) vs a raw Parquet load.

In one run, against the BigQuery emulator (or BigQuery), in a scratch dataset
deleted at the end, with the same N synthetic enriched events:

1. raw: the events turned into one Parquet file (`to_arrow` + write, timed)
   and loaded with `client.load_table_from_file` into a plain table: the
   fastest way to land these rows with the client, no exactness;
2. batch mode: `BigQuerySink.write` in batches of `--batch` (spool files),
   with the in-process loader (staging load + MERGE), timed until every row
   is in the table and the spool is empty;
3. stream mode: `BigQuerySink.write` through the Storage Write API (one
   PENDING stream per batch) plus the MERGE, timed until every row is in the table.

Each is repeated (`--repeat`) in a fresh dataset and the median reported,
with the ratio to raw.

    source .pulse/services.env && .venv/bin/python bench/bench_bigquery.py [--count 100000] [--batch 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone

import pyarrow.parquet as pq

from pulse.config import load_settings
from pulse.model import Batch, EnrichedEvent, Position
from pulse.sinks.bigquery import schema as S
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.sinks.bigquery.client import make_client


def events(n: int) -> list[EnrichedEvent]:
    now = datetime.now(timezone.utc)
    out = []
    for i in range(1, n + 1):
        dur = 1000 + (i * 37) % 90_000
        out.append(EnrichedEvent(
            i, f"00000000-0000-0000-0000-{i % 200:012d}", str(uuid.UUID(int=i)), "play",
            now - timedelta(seconds=i % 86_400), dur, "ios", '{"n": %d}' % i, f"slug-{i % 200}", "Title",
            ("podcast", "video", "newsletter")[i % 3], 600, dur / 1000, round(dur / 6000) / 100, "insert",
            Position(1000 + i // 100, i % 100), now, now))
    return out


def _count(client, dataset) -> int:
    try:
        return list(client.query(f"SELECT count(*) FROM `{dataset}.engagement_events`").result())[0][0]
    except Exception:
        return -1


def raw(cfg, evs) -> float:
    from google.cloud import bigquery

    client = make_client(cfg)
    dataset = "bench_raw_" + uuid.uuid4().hex[:8]
    client.create_dataset(dataset)
    try:
        t0 = time.perf_counter()
        buf = io.BytesIO()
        pq.write_table(S.to_arrow(evs), buf, compression="snappy")
        buf.seek(0)
        schema = S.staging_schema()
        job = client.load_table_from_file(buf, f"{client.project}.{dataset}.raw", job_config=bigquery.LoadJobConfig(
            source_format="PARQUET", schema=schema, write_disposition="WRITE_APPEND"))
        job.result()
        took = time.perf_counter() - t0
        assert _count_table(client, dataset, "raw") == len(evs)
        return took
    finally:
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


def _count_table(client, dataset, table) -> int:
    return list(client.query(f"SELECT count(*) FROM `{dataset}.{table}`").result())[0][0]


def through_sink(cfg, evs, mode: str, batch: int) -> float:
    dataset = f"bench_{mode}_" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as spool:
        c = cfg.model_copy(update={"dataset": dataset, "mode": mode, "spool_dir": spool, "load_interval_s": 0.2,
                                   "merge_interval_s": 0.5, "load_max_bytes": 512 * 1024 * 1024})
        sink = BigQuerySink(c)
        sink.open()
        client = sink._client
        try:
            t0 = time.perf_counter()
            for i in range(0, len(evs), batch):
                sink.write(Batch(tuple(evs[i:i + batch])))
            deadline = time.monotonic() + 600
            while _count(client, dataset) < len(evs) or (mode == "batch" and sink.spool.files()):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{mode}: rows did not all arrive")
                time.sleep(0.05)
            took = time.perf_counter() - t0
        finally:
            sink.close()
            make_client(cfg).delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = load_settings().bigquery
    evs = events(args.count)
    results: dict[str, list[float]] = {"raw": [], "batch": [], "stream": []}
    for _ in range(args.repeat):
        results["raw"].append(raw(cfg, evs))
        results["batch"].append(through_sink(cfg, evs, "batch", args.batch))
        results["stream"].append(through_sink(cfg, evs, "stream", args.batch))
    base = args.count / statistics.median(results["raw"])
    print(f"{args.count} rows, batches of {args.batch}, median of {args.repeat}")
    print(f"{'what':<8} {'rows/s':>10} {'vs raw':>8}   runs (s)")
    for name, runs in results.items():
        rate = args.count / statistics.median(runs)
        print(f"{name:<8} {rate:>10,.0f} {rate / base:>7.2f}x   {', '.join(f'{r:.2f}' for r in runs)}")


if __name__ == "__main__":
    main()
