"""End to end through Kafka vs in-process: events/s and commit-to-board latency (Redis).

For each topology, in its own scratch database, Redis prefix and topic:

- `inprocess`: `pulse run --sink redis`;
- `kafka-1`: `pulse produce` + one `pulse consume --sink redis`;
- `kafka-2`: `pulse produce` + two `pulse consume --sink redis` instances.

Throughput: N events are committed (transactions of 1,000 rows) with the
workers running; events/s from the first commit until the board has counted
all N. Latency: a paced writer at `--rate` events/s for `--seconds`; every
100 ms one marker event for a content id of its own is committed, and a
poller measures when it becomes visible on the board (`ZSCORE` of the events
key), giving commit-to-visible p50 / p99.

Usage (services up, `source .pulse/services.env`):

    .venv/bin/python bench/bench_kafka.py --events 100000 --rate 2000 --seconds 15
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import psycopg2  # noqa: E402
import redis  # noqa: E402

from _common import ScratchDatabase, insert_events_sql, seed_content  # noqa: E402
from pulse.source.slot import ensure_slot  # noqa: E402

PULSE = str(Path(sys.executable).parent / "pulse")


def _spawn(env, *args) -> subprocess.Popen:
    return subprocess.Popen([PULSE, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _events(r, prefix: str) -> int:
    return int(r.hget(prefix + "stats", "events") or 0)


def run(topology: str, events: int, rate: int, seconds: float) -> dict:
    with ScratchDatabase() as db:
        cur = db.connect().cursor()
        content = seed_content(cur, 200)
        slot = "bench_kafka"
        ensure_slot(db.config(slot))
        prefix = f"bench_{uuid.uuid4().hex[:8]}:"
        topic = f"bench_{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items()}
        env.update(PULSE_DATABASE_URL=db.url, PULSE_SLOT=slot, PULSE_PUBLICATION=db.publication,
                   PULSE_REDIS_PREFIX=prefix, PULSE_KAFKA__TOPIC=topic, PULSE_KAFKA__CONTENT_TOPIC=topic + "_c",
                   PULSE_KAFKA__GROUP_PREFIX=topic, PULSE_KAFKA__PARTITIONS="4", PULSE_LOG__LEVEL="warning")
        if topology == "inprocess":
            procs = [_spawn(env, "run", "--sink", "redis")]
        else:
            procs = [_spawn(env, "produce")]
            procs += [_spawn(env, "consume", "--sink", "redis") for _ in range(int(topology.split("-")[1]))]
        r = redis.Redis.from_url(os.environ["PULSE_REDIS_URL"])
        try:
            deadline = time.monotonic() + 60
            insert_events_sql(cur, content, 100, 100)  # warm-up: wait until the path is live
            while _events(r, prefix) < 100:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topology}: workers did not start")
                time.sleep(0.05)
            base = _events(r, prefix)
            t = time.perf_counter()
            insert_events_sql(cur, content, events, 1000)
            while _events(r, prefix) < base + events:
                time.sleep(0.005)
            throughput = events / (time.perf_counter() - t)
            samples = _latency(db.url, cur, r, prefix, content, rate, seconds)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
            for k in r.scan_iter(match=prefix + "*", count=1000):
                r.delete(k)
            _delete_topics(topic)
    q = statistics.quantiles(samples, n=100)
    return {"topology": topology, "events_per_s": round(throughput), "rate": rate, "markers": len(samples),
            "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1)}


def _latency(url, cur, r, prefix, content, rate: int, seconds: float) -> list[float]:
    samples: list[float] = []
    stop = threading.Event()

    def background() -> None:
        conn = psycopg2.connect(url)
        conn.autocommit = True
        c = conn.cursor()
        per_tick = max(1, rate // 100)
        nxt = time.monotonic()
        while not stop.is_set():
            insert_events_sql(c, content, per_tick, per_tick)
            nxt += 0.01
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the writer
        conn.close()

    t = threading.Thread(target=background, daemon=True)
    t.start()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            cid = str(uuid.uuid4())
            cur.execute("INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                        "VALUES (%s, %s, 'marker', 'video', 600, now())", (cid, "m-" + cid))
            cur.execute("INSERT INTO engagement_events (content_id, event_type, event_ts, duration_ms, device) "
                        "VALUES (%s, 'pause', now(), 1000, 'ios')", (cid,))
            committed = time.perf_counter()  # autocommit: the INSERT returned after its commit
            while r.zscore(prefix + "events:10m", cid) is None:
                if time.perf_counter() - committed > 10:
                    raise TimeoutError("a marker never reached the board")
                time.sleep(0.001)
            samples.append(time.perf_counter() - committed)
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(30)
    return samples


def _delete_topics(topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": os.environ["PULSE_KAFKA_BOOTSTRAP"]})
    for f in admin.delete_topics([topic, topic + "_c"]).values():
        try:
            f.result(30)
        except Exception:  # not created in the in-process topology
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--topologies", default="inprocess,kafka-1,kafka-2")
    args = parser.parse_args()
    for topology in args.topologies.split(","):
        res = run(topology, args.events, args.rate, args.seconds)
        print("  ".join(f"{k}={v}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
