"""Benchmark: does loading a fresh batch cost more as the table grows? (docs/sinks/bigquery.md, "Cost model")

For each table size N, in a scratch dataset deleted at the end, against the
BigQuery emulator (or BigQuery):

1. the table is built: Pulse's own table (partitioned by day of event_ts,
   clustered), N synthetic rows over 60 days loaded with one Parquet load
   job; then one fresh batch through the sink, so the high-water mark is
   started (the one-time `MAX(event_id)` read) before anything is timed;
2. `--repeat` times, alternating which goes first:
   - *pulse*: a batch of `--batch` fresh inserts (ids above the table's)
     written to the sink and loaded (`Loader.load_once`: state read, claim,
     load job, state row), timed from `write` to the load's end;
   - *bare*: the same number of rows turned into Parquet and loaded with one
     plain `load_table_from_file` job into the same table, timed the same
     way: what the emulator needs to append that batch at all;
   - *checked*: a batch of ids below the mark (a sequence reset), which
     takes the checked path (ids looked up in every partition, then the
     load): what a fresh batch would cost without the mark.
3. printed: the medians and the ratios pulse / bare and checked / bare.

The emulator rewrites a table on every write, so the bare load itself grows
with N; only the ratio means anything. With the mark the ratio should stay
flat; the checked path reads the table and its ratio may grow.

    source .pulse/services.env && .venv/bin/python bench/bench_bigquery_cost.py \\
        [--sizes 100000,1000000,10000000] [--batch 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pulse.config import load_settings
from pulse.model import Batch, EnrichedEvent, Position
from pulse.sinks.bigquery import schema as S
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.sinks.bigquery.client import Tables, make_client

DAYS = 60


def table_rows(first: int, n: int, now: datetime) -> pa.Table:
    """n rows in the table's shape (ids first.., event_ts spread over DAYS days), built column-wise."""
    ids = np.arange(first, first + n, dtype=np.int64)
    us = int(now.timestamp() * 1_000_000) - (ids % (DAYS * 86_400)) * 1_000_000
    ts = pa.array(us, pa.timestamp("us", tz="UTC"))
    content = pa.array([f"00000000-0000-0000-0000-{i:012d}" for i in range(200)])
    cidx = pa.array(ids % 200)
    cols = {
        "event_id": pa.array(ids), "content_id": content.take(cidx), "user_id": content.take(pa.array((ids * 7) % 200)),
        "event_type": pa.array(np.where(ids % 2 == 0, "play", "pause")), "event_ts": ts,
        "duration_ms": pa.array(1000 + ids % 90_000), "device": pa.array(np.where(ids % 3 == 0, "ios", "web")),
        "raw_payload": pa.nulls(n, pa.string()), "content_slug": pa.nulls(n, pa.string()),
        "content_title": pa.nulls(n, pa.string()),
        "content_type": pa.array(np.array(["podcast", "video", "newsletter"])[ids % 3]),
        "length_seconds": pa.array(np.full(n, 600, np.int64)),
        "engagement_seconds": pa.array((1000 + ids % 90_000) / 1000.0).cast(pa.decimal128(38, 9)),
        "engagement_pct": pa.nulls(n, pa.decimal128(38, 9)), "op": pa.array(np.full(n, "insert")),
        "source_lsn": pa.array(ids), "source_seq": pa.array(np.zeros(n, np.int64)), "commit_ts": ts,
        "processed_ts": ts, "backfill": pa.array(np.zeros(n, bool)),
        "problems": pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string())),
    }
    return pa.Table.from_arrays([cols[c.name].cast(c.arrow) for c in S.COLUMNS], schema=S.ARROW_SCHEMA)


def events(first: int, n: int, lsn: int, now: datetime) -> tuple[EnrichedEvent, ...]:
    return tuple(EnrichedEvent(
        i, f"00000000-0000-0000-0000-{i % 200:012d}", str(uuid.UUID(int=i)), "play", now - timedelta(seconds=i % 600),
        1000 + i % 9000, "ios", None, None, None, ("podcast", "video", "newsletter")[i % 3], 600,
        (1000 + i % 9000) / 1000, None, "insert", Position(lsn, k), now, now) for k, i in enumerate(range(first, first + n)))


def bare_load(client, table_id: str, rows: tuple[EnrichedEvent, ...]) -> float:
    from google.cloud import bigquery

    t0 = time.perf_counter()
    buf = io.BytesIO()
    pq.write_table(S.to_arrow(rows), buf, compression="snappy")
    buf.seek(0)
    client.load_table_from_file(buf, table_id, job_config=bigquery.LoadJobConfig(
        source_format="PARQUET", schema=S.final_schema(), write_disposition="WRITE_APPEND")).result()
    return time.perf_counter() - t0


def through_pulse(sink: BigQuerySink, rows: tuple[EnrichedEvent, ...]) -> tuple[float, str]:
    t0 = time.perf_counter()
    sink.write(Batch(rows))
    assert sink.loader.load_once() == 1
    took = time.perf_counter() - t0
    path = "direct-unchecked" if sink.loader.checks == through_pulse.checks else "direct-checked"
    through_pulse.checks = sink.loader.checks
    return took, path


through_pulse.checks = 0


def one_size(cfg, n: int, batch: int, repeat: int) -> dict[str, list[float]]:
    dataset = f"bench_cost_{n}_" + uuid.uuid4().hex[:6]
    client = make_client(cfg)
    now = datetime.now(timezone.utc)
    out: dict[str, list[float]] = {"pulse": [], "bare": [], "checked": [], "build": []}
    with tempfile.TemporaryDirectory() as spool:
        c = cfg.model_copy(update={"dataset": dataset, "spool_dir": spool, "upload_in_process": False,
                                   "request_timeout_s": 3600, "load_jobs_per_day": 100_000})
        try:
            tables = Tables(client, c)
            tables.ensure()
            table_id = tables.id(tables.table)
            t0 = time.perf_counter()
            with tempfile.NamedTemporaryFile(suffix=".parquet") as fh:
                pq.write_table(table_rows(1_000_000_000, n, now), fh.name, compression="snappy")
                tables.load_parquet(fh.name, table_id, S.final_schema(), "WRITE_APPEND", "pulse_bench_", "build")
            out["build"].append(time.perf_counter() - t0)
            # The table was filled behind Pulse's back: forget the mark, as for a table from before it.
            tables.query(f"UPDATE {tables.ref(S.STATE_TABLE)} SET max_event_id = NULL WHERE TRUE", "bench")
            sink = BigQuerySink(c)
            sink.open()
            through_pulse.checks = 0
            top = 1_000_000_000 + n
            lsn = 10
            through_pulse(sink, events(top, batch, lsn, now))  # starts the mark (reads MAX(event_id) once)
            top += batch
            low = 1  # the checked batches: ids far below the mark (a sequence reset)
            for r in range(repeat):
                order = ("pulse", "bare") if r % 2 == 0 else ("bare", "pulse")
                for what in order:
                    lsn += 1
                    if what == "pulse":
                        took, path = through_pulse(sink, events(top, batch, lsn, now))
                        assert path == "direct-unchecked", path
                        out["pulse"].append(took)
                    else:
                        out["bare"].append(bare_load(client, table_id, events(top, batch, lsn, now)))
                    top += batch
                lsn += 1
                took, path = through_pulse(sink, events(low, batch, lsn, now))
                assert path == "direct-checked", path
                out["checked"].append(took)
                low += batch
            rows = list(client.query(f"SELECT count(*) FROM {tables.ref(tables.table)}").result())[0][0]
            expected = n + batch * (1 + 3 * repeat)
            assert rows == expected, (rows, expected)
            sink.close()
        finally:
            client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000", help="table sizes, comma separated")
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = load_settings().bigquery
    print(f"fresh batch of {args.batch} rows, median of {args.repeat}; seconds")
    print(f"{'table rows':>12} {'build':>8} {'bare':>7} {'pulse':>7} {'checked':>8} {'pulse/bare':>11} "
          f"{'checked/bare':>13}")
    for n in (int(s) for s in args.sizes.split(",")):
        r = one_size(cfg, n, args.batch, args.repeat)
        med = {k: statistics.median(v) for k, v in r.items()}
        print(f"{n:>12,} {med['build']:>8.1f} {med['bare']:>7.2f} {med['pulse']:>7.2f} {med['checked']:>8.2f} "
              f"{med['pulse'] / med['bare']:>11.2f} {med['checked'] / med['bare']:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
