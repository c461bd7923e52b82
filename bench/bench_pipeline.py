"""Benchmark: `pulse run` with all three sinks drains a backlog until a plain HTTP receiver holds every event.

In one run, on one backlog of N events (transactions of `--per-txn` rows,
written after both slots exist, so both readers see the same changes):

1. **pg_recvlogical** (the raw walsender rate) on its own slot, to /dev/null,
   same pgoutput options, timed from its start to the backlog's end LSN;
2. **pulse run** (a subprocess: Redis, the BigQuery spool and the external
   sink on its local outbox, all configured) on its own slot, timed from
   the process start until the receiver holds all N events (by CloudEvent id);
3. **raw httpx**: N CloudEvents of the same shape, encoded and batched as the
   sink does (`--batch` per request), POSTed from `--concurrency` threads
   over keep-alive connections to the same receiver: the receiver's and the
   loopback's ceiling.

The receiver is deliberately plain (a threaded `http.server` in its own
process that parses each body with orjson and keeps the set of ids): it is
the endpoint's speed, not Pulse's test receiver's bookkeeping, that is the
baseline. `--profile` wraps `pulse run` in py-spy (all threads, `--idle`
off) and prints the top functions by own samples.

    source .pulse/services.env && .venv/bin/python bench/bench_pipeline.py --events 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ScratchDatabase, cpu_seconds, current_lsn, insert_events_sql, seed_content  # noqa: E402
from bench_core import pg_recvlogical  # noqa: E402

RECEIVER = r"""
import gzip, sys, threading, orjson
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
ids = set(); lock = threading.Lock(); requests = [0]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        got = [e["id"] for e in orjson.loads(body)]
        with lock:
            ids.update(got); requests[0] += 1
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def do_GET(self):
        with lock:
            out = orjson.dumps({"unique": len(ids), "requests": requests[0]})
        if self.path == "/reset":
            with lock:
                ids.clear(); requests[0] = 0
        self.send_response(200); self.send_header("content-length", str(len(out))); self.end_headers()
        self.wfile.write(out)
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


def start_receiver() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/"


# One client for every poll: `httpx.get` builds a client and its SSL context per call, 25-32 ms of CPU
# each on this host against 0.6-1.1 ms through a kept client (bench_http_poll.py); polled 20 times a
# second, that took about a third of a core from `pulse run` and the receiver (and nothing from
# pg_recvlogical's run, never polled).
_POLL = httpx.Client(timeout=30)


def unique(url: str) -> int:
    return _POLL.get(url + "count").json()["unique"]


def wait_unique(url: str, n: int, timeout: float, proc: subprocess.Popen | None = None) -> float:
    deadline = time.monotonic() + timeout
    while (got := unique(url)) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: receiver has {got} of {n}")
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"pulse run exited ({proc.returncode}) with {got} of {n} at the receiver")
        time.sleep(0.05)
    return time.monotonic()


def raw_http(url: str, n: int, batch: int, concurrency: int) -> float:
    """events/s of POSTing the sink's bodies for n events of the benchmark's shape, from `concurrency` threads."""
    from pulse.model import EnrichedEvent, Position
    from pulse.sinks.external.sink import encode_event
    from pulse.sinks.external.local import build_frame, parse_frame
    from pulse.sinks.external.stream import Slices, body_of

    now = datetime.now(timezone.utc)
    bodies: list[bytes] = []
    step = 5000
    for start in range(0, n, step):
        evs = [encode_event(EnrichedEvent(i, str(uuid.UUID(int=1 + i % 200)), str(uuid.uuid4()), "play", now,
                                          1000 + i % 90000, "ios", '{"app_version": "5.2.%d", "country": "DE", '
                                          '"session": %d}' % (i % 9, i), f"bench-{i % 200}",
                                          f"Bench content {i % 200}", "podcast", 90, 1.0, 0.01, "insert",
                                          Position(1 + i, 0), now, now), "/pulse/engagement_events")
               for i in range(start, min(n, start + step))]
        _info, chunks = parse_frame(build_frame(evs, Position(start + step, 0), 0.0, 1)[12:], 1, None)
        (c,) = chunks[0]
        for i in range(0, len(c), batch):
            bodies.append(body_of(Slices([(c, i, min(len(c), i + batch))]), "cloudevents-batch"))
    it = iter(bodies)
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while True:
                with lock:
                    body = next(it, None)
                if body is None:
                    return
                client.post(url, content=body,
                            headers={"content-type": "application/cloudevents-batch+json"}).raise_for_status()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.monotonic() - t0)


def top_functions(raw: Path, limit: int = 25) -> list[tuple[str, float]]:
    """Own-time share per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        own[stack.split(";")[-1]] += n
    return [(f, n / total) for f, n in own.most_common(limit)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--per-txn", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=500, help="external.batch_max_events and the raw baseline's batch")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--sinks", default="redis,bigquery,external")
    ap.add_argument("--outboxes", default="local", help="external.outbox values to run, each on its own slot "
                    "(e.g. local,postgres: the old default against the new in the same run)")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw output file (wraps pulse run)")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()

    from pulse.source.slot import ensure_slot

    work = Path(tempfile.mkdtemp(prefix="pulse_bench_pipeline_"))
    proc, url = start_receiver()
    dataset = f"bench_pipe_{uuid.uuid4().hex[:8]}"
    prefix = f"bench_pipe_{uuid.uuid4().hex[:8]}:"
    pulse = None
    try:
        with ScratchDatabase("pulse_bench_pipe") as db:
            conn = db.connect()
            cur = conn.cursor()
            content = seed_content(cur, 200)
            ensure_slot(db.config("bench_raw"))
            outboxes = args.outboxes.split(",")
            for outbox in outboxes:
                ensure_slot(db.config(f"bench_pulse_{outbox}"))
            t0 = time.monotonic()
            insert_events_sql(cur, content, args.events, args.per_txn)
            end = current_lsn(cur)
            print(f"backlog: {args.events:,} events written in {time.monotonic() - t0:.1f} s", flush=True)

            t0 = time.perf_counter()
            subprocess.run([pg_recvlogical(), "-d", db.url, "--slot", "bench_raw", "--start", "--no-loop", "-E", end,
                            "-f", "/dev/null", "-o", "proto_version=2", "-o", f"publication_names={db.publication}",
                            "-o", "streaming=on", "-o", "messages=true"], check=True)
            raw_s = time.perf_counter() - t0
            print(f"pg_recvlogical: {raw_s:.1f} s ({args.events / raw_s:,.0f} events/s)", flush=True)

            results = {}
            for outbox in outboxes:
                _POLL.get(url + "reset")
                env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
                env.update({
                    "PULSE_DATABASE_URL": db.url, "PULSE_SLOT": f"bench_pulse_{outbox}",
                    "PULSE_PUBLICATION": db.publication,
                    "PULSE_RUNTIME__SINKS": "[" + ",".join(f'"{s}"' for s in args.sinks.split(",")) + "]",
                    "PULSE_EXTERNAL_URL": url, "PULSE_EXTERNAL__OUTBOX": outbox,
                    "PULSE_EXTERNAL__OUTBOX_DIR": str(work / f"outbox_{outbox}"),
                    "PULSE_EXTERNAL__BATCH_MAX_EVENTS": str(args.batch),
                    "PULSE_EXTERNAL__CONCURRENCY": str(args.concurrency),
                    "PULSE_REDIS_URL": os.environ["PULSE_REDIS_URL"], "PULSE_REDIS_PREFIX": prefix + outbox + ":",
                    "PULSE_BIGQUERY_PROJECT": os.environ["PULSE_BIGQUERY_PROJECT"],
                    "PULSE_BIGQUERY_DATASET": dataset + "_" + outbox,
                    "PULSE_BIGQUERY_ENDPOINT": os.environ.get("PULSE_BIGQUERY_ENDPOINT", ""),
                    "PULSE_BIGQUERY__SPOOL_DIR": str(work / f"spool_{outbox}"),
                })
                cmd = [str(Path(sys.executable).parent / "pulse"), "run"]
                if args.profile:
                    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "50",
                           "--threads", "--output", str(args.profile), "--", *cmd]
                t0 = time.monotonic()
                pulse = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                         stderr=open(work / f"pulse_{outbox}.log", "w"))
                receiver_cpu = cpu_seconds(proc.pid)
                t_done = wait_unique(url, args.events, args.timeout, pulse) - t0
                pulse_cpu = cpu_seconds(pulse.pid)  # py-spy's own with --profile
                receiver_cpu = cpu_seconds(proc.pid) - receiver_cpu
                results[outbox] = t_done
                print(f"pulse run ({args.sinks}; external.outbox = {outbox}) until the receiver holds every event: "
                      f"{t_done:.1f} s ({args.events / t_done:,.0f} events/s), ratio to pg_recvlogical "
                      f"{raw_s / t_done:.2f}; CPU: pulse {pulse_cpu:.1f} s, receiver {receiver_cpu:.1f} s", flush=True)
                pulse.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
                pulse.wait(120)
                pulse = None
            t_done = results[outboxes[0]]

            _POLL.get(url + "reset")
            raw_eps = raw_http(url, args.events, args.batch, args.concurrency)
            assert unique(url) == args.events
            pulse_eps = args.events / t_done
            print(f"raw httpx POSTs of the same bodies ({args.concurrency} threads, {args.batch} per request): "
                  f"{raw_eps:,.0f} events/s; pulse run / raw httpx = {pulse_eps / raw_eps:.2f}", flush=True)
    finally:
        if pulse is not None:
            pulse.kill()
            pulse.wait()
        proc.terminate()
        proc.wait(10)
        try:
            import redis

            client = redis.Redis.from_url(os.environ["PULSE_REDIS_URL"])
            for key in client.scan_iter(match=prefix + "*", count=1000):  # every outbox's prefix
                client.delete(key)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            print(f"redis cleanup: {exc}")
        try:
            from pulse.config import Settings
            from pulse.sinks.bigquery.client import make_client

            s = Settings(bigquery={"project": os.environ["PULSE_BIGQUERY_PROJECT"], "dataset": dataset,
                                   "endpoint": os.environ.get("PULSE_BIGQUERY_ENDPOINT") or None})
            for outbox in args.outboxes.split(","):
                make_client(s.bigquery).delete_dataset(dataset + "_" + outbox, delete_contents=True,
                                                       not_found_ok=True)
        except Exception as exc:  # noqa: BLE001
            print(f"bigquery cleanup: {exc}")
        shutil.rmtree(work, ignore_errors=True)
    if args.profile:
        print("\ntop functions by own samples (all threads, pulse run):")
        for name, share in top_functions(args.profile):
            print(f"  {share * 100:5.1f}%  {name}")


if __name__ == "__main__":
    main()
