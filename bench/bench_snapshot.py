"""Initial snapshot benchmark: rows/s into BigQuery beside raw COPY, and the live board's latency meanwhile.

In one run, on the same N events of a scratch database:

1. **raw COPY**: `COPY (SELECT ... FROM engagement_events ORDER BY id) TO
   STDOUT` of the columns the snapshot reads, into /dev/null: how fast
   PostgreSQL hands the rows out (the baseline);
2. **the initial snapshot**: a pipeline with the `bigquery` and `redis`
   sinks starts on the populated table (its slot does not exist yet, so it
   snapshots); timed from the pipeline's start to the snapshot run's `done`
   with every row loaded in BigQuery;
3. **live latency during the snapshot**: meanwhile a writer commits small
   transactions (`--rate` events/s), each with one marker content id; a
   prober polls the Redis board for each marker. Latency = first seen on
   the board - commit returned, for the transactions committed while the
   snapshot ran;
4. **the emulator's floor**: the same rows written once more inside the
   emulator (a CTAS of the loaded table), with no Pulse in the way. The
   emulator copies the whole table after every write, so a load of N rows
   costs at least this; raw / (raw + floor) is the best "loaded" ratio any
   pipeline could reach here.

Usage (services up, `source .pulse/services.env`):

    .venv/bin/python bench/bench_snapshot.py --events 1000000 [--emulator ephemeral]

Targets (issue 13): snapshot >= 0.5x raw COPY; live commit-to-board p99 < 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import ScratchDatabase, insert_events_sql, seed_content  # noqa: E402
from bench_backfill import _cpu_ticks, _wait, ephemeral_emulator, raw_copy  # noqa: E402
from pulse.config import RedisConfig, Settings  # noqa: E402
from pulse.runtime.pipeline import Pipeline  # noqa: E402
from pulse.sinks import build_sink  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


class LiveProbe:
    """Commits `rate` events/s in transactions of `txn`, each with a marker content; times them onto the board.

    It runs in a process of its own: in the pipeline's process its writer and
    its prober (polling every 5 ms) took about a fifth of the samples of a
    py-spy profile and competed with the pipeline for the GIL, which a
    deployed Pulse never shares with a latency probe.
    """

    def __init__(self, db: ScratchDatabase, redis_url: str, prefix: str, content: list[str], rate: float,
                 txn: int) -> None:
        import multiprocessing

        import redis

        self.client = redis.Redis.from_url(redis_url)  # the caller's cleanup of the prefix
        ctx = multiprocessing.get_context("spawn")
        self._results = ctx.Queue()
        self._stop, self._ready, self._go = ctx.Event(), ctx.Event(), ctx.Event()
        self.process = ctx.Process(target=_probe_main, daemon=True, args=(
            db.url, redis_url, prefix + "events:10m", content, rate, txn, self._ready, self._go, self._stop,
            self._results))
        self.records: list[tuple[float, float | None]] | None = None  # (commit returned, seen on the board)

    def prepare(self) -> None:
        """Start the process and wait until it is connected (its imports take seconds on a busy machine)."""
        self.process.start()
        if not self._ready.wait(120):
            raise SystemExit("the live probe did not start")

    def start(self) -> None:
        self._go.set()

    def finish(self) -> list[tuple[float, float | None]]:
        """Stop writing; every transaction's times once the process has waited for the pending markers.

        The process gives markers still missing from the board `PENDING_GRACE_S`, then sends what it has.
        """
        if self.records is None:
            self._stop.set()
            self.records = self._results.get(timeout=PENDING_GRACE_S + 30) if self.process.is_alive() else []
            self.process.join(10)
        return self.records

    def close(self) -> None:
        """On a failed run: stop the process without waiting for its markers."""
        if self.records is None and self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


PENDING_GRACE_S = 30.0


def _probe_main(url: str, redis_url: str, key: str, content: list[str], rate: float, txn: int,
                ready, go, stop, results) -> None:
    """The probe process: a writer thread and a prober thread; sends [(committed, seen | None)] when stopped."""
    import psycopg2
    import redis

    client = redis.Redis.from_url(redis_url)
    pending: dict[str, float] = {}
    records: list[tuple[float, float | None]] = []
    lock = threading.Lock()
    done_writing = threading.Event()

    conn = psycopg2.connect(url)
    conn.autocommit = True
    client.ping()
    ready.set()
    while not go.wait(0.1):
        if stop.is_set():  # stopped before it started
            results.put([])
            return

    def write() -> None:
        cur = conn.cursor()
        interval = txn / rate
        start = time.monotonic()
        k = 0
        while not stop.is_set():
            marker = str(uuid.uuid4())
            cur.execute("INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                        "VALUES (%s, %s, 'marker', 'video', 600, now())", (marker, f"m-{marker}"))
            cur.execute("BEGIN")
            cur.execute(
                "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device) "
                "SELECT CASE WHEN g = 0 THEN %s::uuid ELSE (%s::uuid[])[1 + g %% %s] END, gen_random_uuid(), "
                "'play', now(), 1000 + g, 'ios' FROM generate_series(0, %s - 1) g",
                (marker, content, len(content), txn))
            cur.execute("COMMIT")
            with lock:
                pending[marker] = time.time()
            k += 1
            stop.wait(max(0.0, start + k * interval - time.monotonic()))
        conn.close()
        done_writing.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    deadline = float("inf")
    while True:
        if done_writing.is_set() and deadline == float("inf"):
            deadline = time.time() + PENDING_GRACE_S
        with lock:
            items = list(pending.items())
        if items:
            scores = client.zmscore(key, [k for k, _ in items])
            seen = time.time()
            with lock:
                for (cid, t), got in zip(items, scores):
                    if got is not None:
                        records.append((t, seen))
                        pending.pop(cid, None)
        if done_writing.is_set() and (not pending or time.time() > deadline):
            break
        time.sleep(0.005)
    records.extend((t, None) for t in pending.values())
    results.put(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--chunk-size", type=int, default=None, help="snapshot.chunk_size (default: the config's)")
    ap.add_argument("--rate", type=float, default=1_000, help="live events/s during the snapshot")
    ap.add_argument("--txn", type=int, default=20, help="events per live transaction")
    ap.add_argument("--history-days", type=float, default=30, help="event_ts of the history spread over this")
    ap.add_argument("--load-interval", type=float, default=None,
                    help="bigquery.backfill_load_interval_s (default: the config's)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--emulator", choices=("shared", "ephemeral"), default="shared")
    args = ap.parse_args()
    from pulse.log import configure_logging
    from pulse.runtime.gc_tuning import tune_gc

    configure_logging(os.environ.get("PULSE_BENCH_LOG", "warning"))
    tune_gc()
    with contextlib.ExitStack() as stack:
        endpoint = os.environ["PULSE_BIGQUERY_ENDPOINT"]
        if args.emulator == "ephemeral":
            endpoint = stack.enter_context(ephemeral_emulator())
        print(f"emulator: {args.emulator} ({endpoint})")
        run(args, stack.enter_context(ScratchDatabase()), endpoint)


def run(args, db: ScratchDatabase, endpoint: str) -> None:
    import psycopg2

    from pulse.sinks.bigquery.client import make_client

    cur = db.connect().cursor()
    content = seed_content(cur)
    insert_events_sql(cur, content, args.events, 50_000)
    # History is old: spread it over --history-days (a window rebuild reads only the last 10 minutes).
    cur.execute("UPDATE engagement_events SET event_ts = now() - (id %% %s) * interval '1 second'",
                (int(args.history_days * 86400),))
    cur.execute("VACUUM ANALYZE engagement_events")
    raw_s = raw_copy(cur)
    print(f"raw COPY: {args.events / raw_s:,.0f} rows/s ({raw_s:.1f} s)")
    dataset = f"bench_snapshot_{uuid.uuid4().hex[:8]}"
    prefix = f"bench_snap_{uuid.uuid4().hex[:8]}:"
    redis_url = os.environ["PULSE_REDIS_URL"]
    settings = Settings(
        database=db.config("bench_snap"),
        redis=RedisConfig(url=redis_url, prefix=prefix),
        bigquery={"project": os.environ["PULSE_BIGQUERY_PROJECT"], "dataset": dataset, "endpoint": endpoint,
                  "spool_dir": str(Path(".pulse") / "bench" / dataset),
                  **({"backfill_load_interval_s": args.load_interval} if args.load_interval else {})},
        snapshot={"chunk_size": args.chunk_size} if args.chunk_size else {},
    )
    client = make_client(settings.bigquery)

    def loaded() -> bool:
        try:
            rows = client.query(f"SELECT count(*) AS n FROM `{dataset}.engagement_events` "
                                f"WHERE backfill").result()
            return next(iter(rows))["n"] >= args.events
        except Exception:  # the table appears with the first load
            return False

    state = psycopg2.connect(db.url)
    state.autocommit = True
    scur = state.cursor()

    def snapshot_done() -> bool:
        scur.execute("SELECT state FROM pulse.backfill_runs WHERE kind = 'snapshot'")
        row = scur.fetchone()
        return bool(row and row[0] == "done")

    pipeline = Pipeline(settings, [build_sink("bigquery", settings), build_sink("redis", settings)])
    probe = LiveProbe(db, redis_url, prefix, content, args.rate, args.txn)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    try:
        probe.prepare()
        t0 = time.perf_counter()
        busy0, total0 = _cpu_ticks()
        runner.start()
        if not pipeline.ready.wait(120):
            raise SystemExit("pipeline did not start")
        probe.start()
        _wait(snapshot_done, args.timeout, 0.2)
        read_s = time.perf_counter() - t0
        snapshot_end = time.time()
        _wait(loaded, args.timeout, 0.2)
        elapsed = time.perf_counter() - t0
        busy1, total1 = _cpu_ticks()
        # The transactions committed while the snapshot ran, and their time to the board.
        records = [r for r in probe.finish() if r[0] <= snapshot_end]
        during = len(records)
        lat_during = [seen - t for t, seen in records if seen is not None]
        print(f"  machine CPU busy during the snapshot: {100 * (busy1 - busy0) / max(1, total1 - total0):.0f}% "
              f"of {os.cpu_count()} cores")
        scur.execute("SELECT extract(epoch FROM finished_at - started_at) FROM pulse.backfill_runs "
                     "WHERE kind = 'snapshot'")
        copy_s = float(scur.fetchone()[0])
        print(f"initial snapshot, every row durable in the BigQuery sink (the run's own start to done, its spool "
              f"fsync'd): {args.events / copy_s:,.0f} rows/s ({copy_s:.1f} s), {raw_s / copy_s:.2f}x raw COPY")
        print(f"initial snapshot into BigQuery, loaded: {args.events / elapsed:,.0f} rows/s ({elapsed:.1f} s from the "
              f"pipeline's start to every row in the table; copy done after {read_s:.1f} s), "
              f"{raw_s / elapsed:.2f}x raw COPY")
        # The emulator's own floor: writing the same rows once more, with no Pulse in the way (a CTAS of the
        # loaded table; a load job of them costs at least this: the rows written, and its whole-table copy).
        t_ctas = time.perf_counter()
        client.query(f"CREATE TABLE `{dataset}.floor_copy` AS SELECT * FROM `{dataset}.engagement_events` "
                     f"WHERE backfill").result()
        ctas_s = time.perf_counter() - t_ctas
        print(f"emulator floor: writing the same {args.events:,} rows once (CTAS) took {ctas_s:.1f} s; a pipeline "
              f"that took no time beyond the raw COPY and made a single load would reach "
              f"{raw_s / (raw_s + ctas_s):.2f}x raw COPY loaded")
        print(f"live board during the snapshot: {len(lat_during):,} of the {during:,} transactions committed "
              f"meanwhile seen on the board; "
              f"commit-to-board p50 {1000 * _pct(lat_during, 0.5):.0f} ms, p99 {1000 * _pct(lat_during, 0.99):.0f} "
              f"ms, max {1000 * max(lat_during or [float('nan')]):.0f} ms")
    finally:
        probe.close()
        pipeline.stop()
        runner.join(120)
        state.close()
        client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        for key in probe.client.scan_iter(match=prefix + "*", count=1000):
            probe.client.delete(key)


if __name__ == "__main__":
    main()
