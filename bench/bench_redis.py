"""Benchmark of the Redis sink (not part of the test suite).

1. Throughput: enriched events with a realistic content mix (200 content
   items, Zipf-like popularity, 3 content types, 8 devices, 4 event types,
   5 % NULL durations, event times spread over the last 10 minutes) written
   through `RedisSink.write` in batches of `--batch` events, against raw
   `redis-benchmark` ZINCRBY on the same server in the same run (the
   baseline: one ZINCRBY per event, pipelined, 50 clients).
2. Commit-to-visible latency at `--rate` events/s (default 10,000): events
   are inserted into a scratch PostgreSQL database in transactions of
   `--txn` rows, `pulse run`'s in-process pipeline streams them to the
   sink, and a probe reads the board every 5 ms: an insert's latency is
   (first read where the board's event count for its content covers it) -
   (commit time). Each transaction touches one marker content id, so its
   visibility is exact.

    source .pulse/services.env && .venv/bin/python bench/bench_redis.py
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(__file__))

from pulse.config import RedisConfig, Settings  # noqa: E402
from pulse.model import Batch, EnrichedEvent, Position  # noqa: E402
from pulse.sinks.redis.sink import RedisSink  # noqa: E402
from pulse.sinks.redis.board import Keys  # noqa: E402

DEVICES = ("ios", "android", "web-chrome", "web-safari", "web-firefox", "tv", "car", "watch")
EVENT_TYPES = ("play", "pause", "finish", "click")
TYPES = ("podcast", "newsletter", "video")


def make_events(n: int, now: datetime, seed: int = 7, spread: str = "stream") -> list[EnrichedEvent]:
    """`spread` "stream": event times follow a 10k events/s stream ending at `now` (1 % of them up to 10 min
    late, mobile clients syncing); "uniform": uniform over the last 590 s (a backfill-like worst case)."""
    rng = random.Random(seed)
    content = [(str(uuid.UUID(int=rng.getrandbits(128))), TYPES[i % 3], 60 + i * 7) for i in range(200)]
    weights = [1 / (i + 1) for i in range(len(content))]
    picks = rng.choices(content, weights, k=n)
    out = []
    for i, (cid, ctype, length) in enumerate(picks):
        ms = None if rng.random() < 0.05 else rng.randrange(0, length * 1000)
        if spread == "uniform" or rng.random() < 0.01:
            ts = now - timedelta(seconds=rng.uniform(0, 590))
        else:
            ts = now - timedelta(seconds=(n - i) / 10_000 + rng.uniform(0, 2))
        out.append(EnrichedEvent(
            i + 1, cid, None, rng.choice(EVENT_TYPES), ts, ms, rng.choice(DEVICES), None, f"slug-{cid[:8]}",
            f"Title {cid[:8]}", ctype, length, None if ms is None else ms / 1000, None, "insert",
            Position(1 << 32, i + 1), now, now))
    return out


def bench_throughput(url: str, count: int, batch: int, repeat: int, spread: str = "stream") -> list[float]:
    rates = []
    for r in range(repeat):
        prefix = f"bench_{uuid.uuid4().hex[:8]}:"
        now = datetime.now(timezone.utc)
        events = make_events(count, now, seed=r, spread=spread)
        sink = RedisSink(RedisConfig(url=url, prefix=prefix, flush_interval_ms=0), clock=lambda: now)
        sink.open()
        batches = [Batch(tuple(events[i:i + batch])) for i in range(0, count, batch)]
        t0 = time.perf_counter()
        for b in batches:
            sink.write(b)
        sink.flush()
        elapsed = time.perf_counter() - t0
        rates.append(count / elapsed)
        client = sink.client
        assert client.zcard(Keys(prefix).top) > 0
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
        sink.close()
    return rates


def bench_raw(url: str, count: int) -> float:
    parts = urlsplit(url)
    key = f"bench_raw_{uuid.uuid4().hex[:8]}"
    cmd = ["redis-benchmark", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379), "-n", str(count),
           "-c", "50", "-P", "16", "-r", "200", "-q", "ZINCRBY", key, "1.5", "member:__rand_int__"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    import redis

    redis.Redis.from_url(url).delete(key)
    m = re.search(r"([\d.]+) requests per second", out)
    if not m:
        raise SystemExit(f"cannot parse redis-benchmark output: {out!r}")
    return float(m.group(1))


def bench_latency(url: str, rate: float, seconds: float, txn: int) -> list[float]:
    import psycopg2
    import redis

    from _common import ScratchDatabase
    from pulse.runtime.pipeline import Pipeline

    prefix = f"bench_{uuid.uuid4().hex[:8]}:"
    keys = Keys(prefix)
    client = redis.Redis.from_url(url)
    latencies: list[float] = []
    with ScratchDatabase() as db:
        conn = db.connect()
        cur = conn.cursor()
        n_txn = int(seconds * rate / txn)
        ids = [str(uuid.uuid4()) for _ in range(200)]
        markers = [str(uuid.uuid4()) for _ in range(n_txn)]  # one content row seen by one transaction only
        for i, cid in enumerate(ids + markers):
            cur.execute("INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                        "VALUES (%s, %s, %s, %s, %s, now())", (cid, f"s-{cid}", f"T {i}", TYPES[i % 3], 600))
        settings = Settings(database=db.config(slot="bench_slot"), redis=RedisConfig(url=url, prefix=prefix))
        sink = RedisSink(settings.redis)
        pipeline = Pipeline(settings, [sink])
        runner = threading.Thread(target=pipeline.run, daemon=True)
        runner.start()
        if not pipeline.ready.wait(60):
            raise SystemExit("pipeline did not start")
        pending: dict[str, tuple[int, float]] = {}  # marker content -> (events expected, commit time)
        lock = threading.Lock()
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                with lock:
                    items = list(pending.items())
                if items:
                    scores = client.zmscore(keys.events, [k for k, _ in items])
                    seen = time.time()
                    with lock:
                        for (cid, (want, t)), got in zip(items, scores):
                            if got is not None and got >= want:
                                latencies.append(seen - t)
                                pending.pop(cid, None)
                time.sleep(0.005)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        interval = txn / rate
        start = time.monotonic()
        for k in range(n_txn):
            marker = markers[k]
            cur.execute("BEGIN")
            cur.execute(
                "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device) "
                "SELECT CASE WHEN g = 0 THEN %s::uuid ELSE (%s::uuid[])[1 + g %% 200] END, gen_random_uuid(), "
                "'play', now(), 1000 + g, 'ios' FROM generate_series(0, %s - 1) g", (marker, ids, txn))
            cur.execute("COMMIT")
            with lock:
                pending[marker] = (1, time.time())
            delay = start + (k + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        achieved = n_txn * txn / (time.monotonic() - start)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        prober.join()
        pipeline.stop()
        runner.join(60)
        print(f"latency run: {n_txn * txn:,} events at {achieved:,.0f} events/s achieved; "
              f"{len(pending)} markers never seen")
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
        conn.close()
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500_000, help="events per throughput round")
    ap.add_argument("--batch", type=int, default=5_000, help="events per write (runtime.batch_max_events)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=float, default=10_000, help="events/s of the latency run")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--txn", type=int, default=100, help="events per source transaction in the latency run")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    url = os.environ.get("PULSE_REDIS_URL")
    if not url:
        raise SystemExit("PULSE_REDIS_URL is not set: run `make services` and `source .pulse/services.env`")
    raw = bench_raw(url, args.count)
    rates = bench_throughput(url, args.count, args.batch, args.repeat)
    uniform = bench_throughput(url, args.count // 3, args.batch, 1, spread="uniform")
    raw_after = bench_raw(url, args.count)
    med = statistics.median(rates)
    base = statistics.median([raw, raw_after])
    print(f"redis-benchmark ZINCRBY (-c 50 -P 16): {raw:,.0f} / {raw_after:,.0f} ops/s (before / after)")
    print(f"RedisSink.write, batches of {args.batch:,}: " + " / ".join(f"{r:,.0f}" for r in rates)
          + f" events/s; median {med:,.0f} = {med / base:.2f}x raw ZINCRBY ops/s")
    print(f"worst case, event times uniform over the window: {uniform[0]:,.0f} events/s "
          f"= {uniform[0] / base:.2f}x raw")
    if not args.skip_latency:
        lat = sorted(bench_latency(url, args.rate, args.seconds, args.txn))
        if lat:
            p50 = lat[len(lat) // 2]
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(f"commit-to-visible at {args.rate:,.0f} events/s ({len(lat)} transactions): "
                  f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
