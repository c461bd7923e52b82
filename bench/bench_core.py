"""Streaming core benchmark: raw walsender rate vs Pulse, and end-to-end latency.

1. Throughput, on the same data in one run: N events in transactions of
   `--per-txn` rows are written once; two slots created before the writes
   capture them. The raw baseline is `pg_recvlogical` writing to /dev/null
   with the same pgoutput options (what the walsender alone can do); Pulse is
   the in-process pipeline (decode + assemble + enrich + dispatch) into a
   memory sink, timed from its first event to its N-th.
2. Latency: a paced live writer at `--rates` events/s (server-side inserts
   every 10 ms), Pulse running with a sink that records, for each event, the
   time from its commit in PostgreSQL to the moment the sink holds it.

Usage (services up, `source .pulse/services.env`):

    .venv/bin/python bench/bench_core.py --events 200000 --rates 1000,10000

Prints a table and, with --json, one JSON line per result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import orjson  # noqa: E402

from _common import ScratchDatabase, current_lsn, insert_events_sql, seed_content  # noqa: E402
from pulse.config import Settings  # noqa: E402
from pulse.model import ZERO, Batch, Position  # noqa: E402
from pulse.runtime.pipeline import Pipeline  # noqa: E402
from pulse.sinks.base import Sink  # noqa: E402
from pulse.sinks.memory import MemorySink  # noqa: E402
from pulse.source.slot import ensure_slot  # noqa: E402


def pg_recvlogical() -> str:
    found = shutil.which("pg_recvlogical")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_recvlogical")):
        return str(candidate)
    raise SystemExit("pg_recvlogical not found (Debian package postgresql-client)")


def throughput(events: int, per_txn: int) -> dict:
    with ScratchDatabase() as db:
        ensure_slot(db.config("raw"))
        ensure_slot(db.config("pulse"))
        cur = db.connect().cursor()
        ids = seed_content(cur)
        t = time.perf_counter()
        insert_events_sql(cur, ids, events, per_txn)
        write_s = time.perf_counter() - t
        end = current_lsn(cur)

        t = time.perf_counter()
        subprocess.run(
            [pg_recvlogical(), "-d", db.url, "--slot", "raw", "--start", "--no-loop", "-E", end, "-f", "/dev/null",
             "-o", "proto_version=2", "-o", f"publication_names={db.publication}", "-o", "streaming=on",
             "-o", "messages=true"],
            check=True,
        )
        raw_s = time.perf_counter() - t

        sink = MemorySink(keep=False)
        pipeline = Pipeline(Settings(database=db.config("pulse")), [sink])
        thread = threading.Thread(target=pipeline.run, daemon=True)
        thread.start()
        while sink.count == 0:
            time.sleep(0.0005)
        t = time.perf_counter()
        while sink.count < events:
            time.sleep(0.0005)
        pulse_s = time.perf_counter() - t
        pipeline.stop()
        thread.join(60)
    return {
        "bench": "core.throughput", "events": events, "per_txn": per_txn, "write_s": round(write_s, 3),
        "raw_events_per_s": round(events / raw_s), "pulse_events_per_s": round(events / pulse_s),
        "ratio": round(raw_s / pulse_s, 3),
    }


class LatencySink(Sink):
    """Records commit-to-durable seconds for every event it receives."""

    name = "latency"

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.count = 0

    def open(self) -> Position:
        return ZERO

    def write(self, batch: Batch) -> Position:
        now = time.time()
        self.samples.extend(now - e.commit_ts.timestamp() for e in batch.events if e.commit_ts)
        self.count += len(batch)
        return batch.last


def latency(rate: int, seconds: float) -> dict:
    with ScratchDatabase() as db:
        cfg = db.config("lat")
        ensure_slot(cfg)
        cur = db.connect().cursor()
        ids = seed_content(cur)
        sink = LatencySink()
        pipeline = Pipeline(Settings(database=cfg), [sink])
        thread = threading.Thread(target=pipeline.run, daemon=True)
        thread.start()
        pipeline.ready.wait(60)
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        total = 0
        start = time.monotonic()
        next_tick = start
        while time.monotonic() - start < seconds:
            insert_events_sql(cur, ids, per_tick, per_tick)
            total += per_tick
            next_tick += tick
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the writer, not waiting for a condition
        achieved = total / (time.monotonic() - start)
        deadline = time.monotonic() + 60
        while sink.count < total and time.monotonic() < deadline:
            time.sleep(0.01)
        pipeline.stop()
        thread.join(60)
    samples = sorted(sink.samples)
    q = statistics.quantiles(samples, n=100)
    return {
        "bench": "core.latency", "target_rate": rate, "achieved_rate": round(achieved), "events": total,
        "received": sink.count, "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
        "max_ms": round(samples[-1] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--per-txn", type=int, default=1000)
    parser.add_argument("--rates", default="1000,10000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PULSE_LOG__LEVEL", "warning")
    from pulse.log import configure_logging

    configure_logging("warning")
    results = [throughput(args.events, args.per_txn)]
    results += [latency(int(r), args.seconds) for r in args.rates.split(",") if r]
    for r in results:
        print(orjson.dumps(r).decode() if args.json else "  ".join(f"{k}={v}" for k, v in r.items()))
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
