"""Benchmark: the external HTTP sink against a healthy `pulse receiver`, with a raw httpx baseline.

In one run, on the local PostgreSQL and a receiver in its own process (signed, no faults):

1. raw baseline: the same CloudEvents-batch bodies the sink would send (N
   events, `--batch` per request), signed, POSTed directly with httpx from
   `--concurrency` threads over keep-alive connections: the receiver's and
   the loopback's ceiling;
2. throughput: `pulse`'s in-process pipeline with the external sink, once per
   `--outbox` (local segment files, the default; postgres, the old default),
   each on its own slot:
   a. a backlog: N events committed (transactions of 1,000) before the
      pipeline starts, timed from its start (and from its readiness) until
      the receiver has them all: the sink's delivery against the raw POSTs
      with nothing else writing;
   b. N events committed in transactions of 1,000 while it runs, timed from
      the first commit until the receiver has them all (the writer and
      PostgreSQL share the cores with the pipeline and the receiver);
3. latency: events committed at `--rate` per second (transactions of 10) for
   `--duration` seconds; the receiver measures commit_ts -> first arrival per
   event (same host clock); p50 / p99 / max. The baseline for it is the p99
   of one raw POST round trip in 1.

    source .pulse/services.env && .venv/bin/python bench/bench_external.py [--events 200000] [--rate 1000] [--max-age 0.02]
        [--outbox local,postgres]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ScratchDatabase, cpu_seconds, insert_events_sql, seed_content  # noqa: E402

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
CONTROL_TOKEN = os.urandom(24).hex()  # the receiver's /stats and /_reset want it (passed in the environment)
AUTH = {"authorization": f"Bearer {CONTROL_TOKEN}"}

RECEIVER = """
import os, threading
from pulse.receiver import Receiver
rec = Receiver(port=0, secret=os.environ["BENCH_RECEIVER_SECRET"], control_token=os.environ["BENCH_RECEIVER_TOKEN"]).start()
print(rec.port, flush=True)
threading.Event().wait()
"""


def start_receiver() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True,  # secrets not in argv
                            env={**os.environ, "BENCH_RECEIVER_SECRET": SECRET, "BENCH_RECEIVER_TOKEN": CONTROL_TOKEN})
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/"


# One client for every control call: `httpx.get` builds a client (and its SSL context) per call, about
# 30 ms of CPU (1 ms through a kept client; bench_http_poll.py), and `wait_unique` polls 20 times a second in the pipeline's
# own process and GIL.
_CONTROL = httpx.Client(headers=AUTH, timeout=30)


def stats(url: str, latency: bool = True) -> dict:
    r = _CONTROL.get(url + "stats" + ("" if latency else "?latency=false"))
    r.raise_for_status()
    return r.json()


def reset(url: str) -> None:
    _CONTROL.post(url + "_reset").raise_for_status()


def assert_clean(url: str) -> None:
    """No conflicting duplicate, no order violation, no bad signature at the receiver."""
    s = stats(url)
    assert s["conflicts"] == 0 and s["order_violations"] == 0 and s["signature_failures"] == 0, s


def wait_unique(url: str, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    # Counts only: the percentiles sort every latency recorded, tens of ms of the receiver's time per poll.
    while stats(url, latency=False)["unique"] < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: receiver has {stats(url, latency=False)['unique']} of {n}")
        time.sleep(0.05)
    return time.monotonic()


def raw_baseline(url: str, n: int, batch: int, concurrency: int, receiver_pid: int) -> tuple[float, float, float]:
    """events/s, p99 request latency and the receiver's CPU seconds of POSTing pre-built, signed
    CloudEvents batches directly."""
    from pulse.model import EnrichedEvent, Position
    from pulse.sinks.external.delivery import build_request
    from pulse.sinks.external.outbox import encode
    from pulse.sinks.external.signing import Signer

    now = datetime.now(timezone.utc)
    rows = [encode(EnrichedEvent(i, str(uuid.UUID(int=1 + i % 200)), str(uuid.uuid4()), "play", now, 1000 + i, "ios",
                                 '{"app_version": "5.2.1", "country": "DE", "session": %d}' % i, "bench-1",
                                 "Bench content 1", "podcast", 90, 1.0, 0.01, "insert", Position(1 + i, 0), now, now),
                    "/pulse/engagement_events") for i in range(n)]
    reqs = []
    while rows:
        req = build_request(rows, "cloudevents-batch", batch, 1_000_000)
        reqs.append(req)
        rows = rows[len(req.rows):]
    signer = Signer(SECRET)
    lat: list[float] = []
    lock = threading.Lock()
    it = iter(reqs)

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    req = next(it, None)
                if req is None:
                    return
                headers = {"content-type": req.content_type, "idempotency-key": req.msg_id,
                           **signer.headers(req.msg_id, req.body)}
                t0 = time.perf_counter()
                r = client.post(url, content=req.body, headers=headers)
                r.raise_for_status()
                with lock:
                    lat.append(time.perf_counter() - t0)

    cpu0 = cpu_seconds(receiver_pid)
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    lat.sort()
    return n / elapsed, lat[int(0.99 * (len(lat) - 1))], cpu_seconds(receiver_pid) - cpu0


def main() -> None:
    ap = argparse.ArgumentParser()
    # 200,000: a 50,000-event run lasts about 2 s, where the start and the tail after the last commit
    # swung its ratio between 0.67 and 0.88 in three runs in a row.
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--max-age", type=float, default=0.02, help="external.batch_max_age_s")
    ap.add_argument("--outbox", default="local,postgres", help="external.outbox values, each on its own slot")
    args = ap.parse_args()

    proc, url = start_receiver()
    results = {}
    try:
        raw_eps, raw_p99, raw_cpu = raw_baseline(url, args.events, args.batch, args.concurrency, proc.pid)
        s = stats(url)
        assert s["unique"] == args.events and s["signature_failures"] == 0, s
        with ScratchDatabase("pulse_bench_ext") as db, tempfile.TemporaryDirectory() as tmp:
            for outbox in args.outbox.split(","):
                reset(url)
                results[outbox] = run_one(db, url, outbox, Path(tmp) / outbox, args, proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)

    print(f"raw httpx POST of the same signed bodies: {raw_eps:,.0f} events/s "
          f"(batch {args.batch}, {args.concurrency} threads; p99 request {raw_p99 * 1000:.1f} ms; "
          f"receiver CPU {raw_cpu:.1f} s)")
    for outbox, (eps, t_commit, t_done, achieved, lat, cpu, drain) in results.items():
        print(f"external sink (outbox = {outbox}), a backlog of {args.events:,} drained: {drain['events_s']:,.0f} "
              f"events/s from the pipeline's start ({drain['total_s']:.1f} s, start-up {drain['start_s']:.1f} s), "
              f"ratio {drain['events_s'] / raw_eps:.2f}; {drain['after_start_events_s']:,.0f} events/s once "
              f"started, ratio {drain['after_start_events_s'] / raw_eps:.2f}")
        print(f"external sink (outbox = {outbox}), commit -> received: {eps:,.0f} events/s   ratio "
              f"{eps / raw_eps:.2f} (commits took {t_commit:.1f} s of {t_done:.1f} s; CPU: receiver "
              f"{cpu['receiver']:.1f} s, this process (pipeline + writer) {cpu['self']:.1f} s)")
        print(f"  latency (batch_max_age_s {args.max_age}) at {achieved:,.0f} events/s for {args.duration:.0f} s: "
              f"p50 {lat['latency_p50_s'] * 1000:.0f} ms, p99 {lat['latency_p99_s'] * 1000:.0f} ms, "
              f"max {lat['latency_max_s'] * 1000:.0f} ms (p99 / raw POST p99 = {lat['latency_p99_s'] / raw_p99:.1f}); "
              f"duplicates {lat['duplicates']}")


def run_one(db, url: str, outbox: str, folder: Path, args, receiver_pid: int) -> tuple:
    """Throughput and latency of the sink on one outbox, on its own slot of the same database."""
    from pulse.config import Settings
    from pulse.runtime.pipeline import Pipeline
    from pulse.sinks.external.sink import ExternalSink
    from pulse.source.slot import ensure_slot

    cfg = db.config(slot=f"bench_ext_{outbox}", heartbeat_interval_s=1.0)
    settings = Settings(database=cfg, external={"url": url, "secret": SECRET, "batch_max_events": args.batch,
                                                "concurrency": args.concurrency, "batch_max_age_s": args.max_age,
                                                "outbox": outbox, "outbox_dir": str(folder)},
                        runtime={"sinks": ["external"]})
    conn = db.connect()
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM content")
    content = seed_content(cur, 200) if cur.fetchone()[0] == 0 else [
        str(uuid.UUID(int=i + 1)) for i in range(200)]
    ensure_slot(cfg)
    # 2a. a backlog: N events committed before the pipeline starts, drained at the sink's own pace with
    # no writer beside it on the CPU (2b's writer shares the two cores with the pipeline and the receiver).
    insert_events_sql(cur, content, args.events, 1000)
    pipeline = Pipeline(settings, [ExternalSink.from_settings(settings)])
    runner = threading.Thread(target=pipeline.run, daemon=True)
    t0 = time.monotonic()
    runner.start()
    pipeline.ready.wait(60)
    t_ready = time.monotonic() - t0
    t_drained = wait_unique(url, args.events, 600) - t0
    drain = {"start_s": t_ready, "total_s": t_drained, "events_s": args.events / t_drained,
             "after_start_events_s": args.events / (t_drained - t_ready)}
    assert_clean(url)
    reset(url)

    # 2b. throughput while a writer commits
    cpu0 = {"receiver": cpu_seconds(receiver_pid), "self": cpu_seconds(os.getpid())}
    t0 = time.monotonic()
    insert_events_sql(cur, content, args.events, 1000)
    t_commit = time.monotonic() - t0
    t_done = wait_unique(url, args.events, 600) - t0
    cpu = {"receiver": cpu_seconds(receiver_pid) - cpu0["receiver"], "self": cpu_seconds(os.getpid()) - cpu0["self"]}
    eps = args.events / t_done
    assert_clean(url)

    # 3. latency at --rate
    reset(url)
    per_txn = 10
    total = int(args.rate * args.duration)
    start = time.monotonic()
    sent = 0
    while sent < total:
        insert_events_sql(cur, content, per_txn, per_txn)
        sent += per_txn
        delay = start + sent / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    achieved = sent / (time.monotonic() - start)
    wait_unique(url, sent, 120)
    lat = stats(url)
    pipeline.stop()
    runner.join(60)
    conn.close()
    return eps, t_commit, t_done, achieved, lat, cpu, drain


if __name__ == "__main__":
    main()
