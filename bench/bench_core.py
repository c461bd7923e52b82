"""Streaming core benchmark: raw walsender rate vs Pulse, and end-to-end latency.

1. Throughput, on the same data in one run: N events in transactions of
   `--per-txn` rows are written once; two slots created before the writes
   capture them. The raw baseline is `pg_recvlogical` writing to /dev/null
   with the same pgoutput options (what the walsender alone can do); Pulse is
   the in-process pipeline (decode + assemble + enrich + dispatch) into a
   memory sink, timed from the replication reader's start to its N-th
   event, in three modes (`MODES`).
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


# Pulse variants measured on the same data, each on its own slot:
# columns: native reader, runs as Arrow chunks into a sink that takes columns (BigQuery's path);
# rows:    native reader, into a sink that takes events (Redis', the external system's path);
# python:  the pure-Python reader (database.native_reader = false), into a sink that takes events.
MODES = ("columns", "rows", "python")


def _pulse_rate(db: ScratchDatabase, mode: str, events: int) -> float:
    cfg = db.config(mode, native_reader=mode != "python")
    sink = MemorySink(keep=False, columns=mode == "columns")
    pipeline = Pipeline(Settings(database=cfg), [sink])
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    # From the replication reader's start (as pg_recvlogical's time runs
    # from its own start) to the N-th event held by the sink: timing from
    # the first event held would leave out what the server sent meanwhile.
    pipeline.ready.wait(60)
    t = time.perf_counter()
    while sink.count < events:
        time.sleep(0.0005)
    pulse_s = time.perf_counter() - t
    pipeline.stop()
    thread.join(60)
    return events / pulse_s


def _raw_rate(db: ScratchDatabase, slot: str, end: str, events: int) -> float:
    t = time.perf_counter()
    subprocess.run(
        [pg_recvlogical(), "-d", db.url, "--slot", slot, "--start", "--no-loop", "-E", end, "-f", "/dev/null",
         "-o", "proto_version=2", "-o", f"publication_names={db.publication}", "-o", "streaming=on",
         "-o", "messages=true"],
        check=True,
    )
    return events / (time.perf_counter() - t)


def _minimal_rate(db: ScratchDatabase, slot: str, events: int) -> float:
    """A second raw baseline: Pulse's native reader doing nothing but receive (no decoding).

    pg_recvlogical writes every message to its output (two write calls), so
    on two cores it may not keep up with the walsender; this client only
    takes the messages off the socket and counts the Inserts.
    """
    import psycopg2
    import psycopg2.extras

    from pulse.source import native

    wire = native.load()
    conn = psycopg2.connect(db.url, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        t = time.perf_counter()
        cur = conn.cursor()
        cur.start_replication(slot_name=slot, decode=False, options={
            "proto_version": "2", "publication_names": db.publication, "streaming": "on", "messages": "true"})
        reader = wire.Reader(conn.pgconn_ptr)
        seen = 0
        while seen < events:
            items, flags = reader.read(1000, 4096, 8 << 20)
            seen += sum(1 for p in items if p[0] == 0x49)
            if flags & wire.FLAG_REPLY:
                cur.send_feedback(force=True)
        return events / (time.perf_counter() - t)
    finally:
        conn.close()


def throughput(events: int, per_txn: int, modes: list[str]) -> list[dict]:
    with ScratchDatabase() as db:
        # Two raw slots: the raw rate is measured before and after Pulse's
        # runs and the faster kept (the first reader of fresh WAL pays for
        # reading it from disk; pg_recvlogical's time includes its start).
        for slot in ("raw", "raw_after", "minimal", *modes):
            ensure_slot(db.config(slot))
        cur = db.connect().cursor()
        ids = seed_content(cur)
        t = time.perf_counter()
        insert_events_sql(cur, ids, events, per_txn)
        write_s = time.perf_counter() - t
        end = current_lsn(cur)
        raw_before = _raw_rate(db, "raw", end, events)
        rates = {mode: _pulse_rate(db, mode, events) for mode in modes}
        raw_after = _raw_rate(db, "raw_after", end, events)
        minimal = _minimal_rate(db, "minimal", events)
        raw_rate = max(raw_before, raw_after, minimal)
        return [{
            "bench": "core.throughput", "mode": mode, "events": events, "per_txn": per_txn,
            "write_s": round(write_s, 3), "raw_before_per_s": round(raw_before), "raw_after_per_s": round(raw_after),
            "minimal_per_s": round(minimal),
            "pulse_events_per_s": round(rate), "ratio": round(rate / raw_rate, 3),
        } for mode, rate in rates.items()]


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
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PULSE_LOG__LEVEL", "warning")
    from pulse.log import configure_logging

    configure_logging("warning")
    from pulse.runtime.gc_tuning import tune_gc

    tune_gc()  # as the CLI does for `pulse run`
    results = throughput(args.events, args.per_txn, [m for m in args.modes.split(",") if m])
    results += [latency(int(r), args.seconds) for r in args.rates.split(",") if r]
    for r in results:
        print(orjson.dumps(r).decode() if args.json else "  ".join(f"{k}={v}" for k, v in r.items()))
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
