"""Chaos soak: live traffic with anomalies, random faults for N minutes, then every destination checked.

    python bench/soak.py --minutes 60 --mode inprocess --seed 1
    python bench/soak.py --minutes 60 --mode kafka --seed 2

Everything it breaks is its own: a private PostgreSQL, Redis, BigQuery
emulator and (kafka mode) Kafka broker, started with the code of `pulse dev
up` (tests/integration/private_services.py), and an in-process receiver. The
source is fed by `pulse generate --mode live --anomalies` (restarted when a
database fault ends it). Pulse runs as real processes: `pulse run` (inprocess)
or `pulse produce` + `pulse consume --sink redis|bigquery|external` (kafka),
each restarted after it exits, as a supervisor would.

At seeded random instants (mean gap --fault-every s) one fault of:
pg_restart_fast, pg_restart_immediate, walsender_terminated, destinations_down
(Redis, the emulator and the receiver together, 5-30 s), kill9 (a random Pulse
process), and in kafka mode broker_stop / broker_kill (5-20 s down). Then it
quiesces (traffic stops, faults heal), waits for the destinations to converge,
and checks them: BigQuery against the source id by id, `pulse verify` on the
table and the Redis board, the receiver's ids. Prints one summary (JSON with
--json): minutes, events, faults by kind, lost, duplicated, max freshness,
RSS of each process at start and end, unexpected exits. Exit 1 when anything
was lost or duplicated, verify differs, an id reached the receiver with two
different bodies, or a process exited unexpectedly. The same seed gives the same fault schedule (the
traffic's timing follows the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402

from pulse.config import DatabaseConfig  # noqa: E402
from pulse.schema import init_database  # noqa: E402
from pulse.source.slot import ensure_slot  # noqa: E402
from tests.integration.chaos_helpers import Destinations, pulse_verify, tally, wait_converged  # noqa: E402
from tests.integration.private_services import (  # noqa: E402
    PrivateBigQuery,
    PrivateKafka,
    PrivatePostgres,
    PrivateRedis,
)

PULSE = str(Path(sys.executable).parent / "pulse")

#: Kafka mode: the topic's and the producer's message limit. The generator's anomalies include raw
#: payloads of about 1 MB, over Kafka's default limit (1 MB less headroom): with it, `produce` would
#: publish those events with a marker and dead-letter them in full, by design (tested in
#: tests/integration/test_oversized_events.py), and verify would report them until `pulse dlq replay
#: --sink kafka`. The soak is about faults, so it raises the limit as a deployment expecting such rows would.
KAFKA_MESSAGE_MAX_BYTES = 4 * 1024 * 1024


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """The events topic, with room for the anomalies' largest events (KAFKA_MESSAGE_MAX_BYTES)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, partitions, 1,
                                            config={"max.message.bytes": str(KAFKA_MESSAGE_MAX_BYTES)})])
    futures[topic].result(60)


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Supervised:
    """One Pulse (or generator) process, restarted whenever it exits; counts unexpected exits."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path, expected_exit=None) -> None:
        self.name, self.args, self.env, self.logdir = name, args, env, logdir
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.killed_on_purpose = 0
        self.unexpected_exits: list[int] = []
        self.expected_exit = expected_exit or (lambda: False)
        self.rss_first: int | None = None
        self.rss_last: int | None = None
        self.started_at = 0.0
        self.lock = threading.Lock()

    def start(self) -> None:
        self.starts += 1
        log = open(self.logdir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen([PULSE, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.started_at = time.monotonic()

    def kill9(self) -> None:
        with self.lock:
            if self.proc and self.proc.poll() is None:
                self.killed_on_purpose += 1
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(30)
                self.start()

    def tick(self) -> None:
        with self.lock:
            if self.proc is None:
                return
            code = self.proc.poll()
            if code is not None:
                if not self.expected_exit():
                    self.unexpected_exits.append(code)
                self.start()
                return
            if time.monotonic() - self.started_at > 10:
                rss = rss_kb(self.proc.pid)
                if rss:
                    if self.rss_first is None:
                        self.rss_first = rss
                    self.rss_last = rss

    def stop(self) -> int | None:
        with self.lock:
            p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(120)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait()


def scratch_database(pg: PrivatePostgres) -> tuple[str, str, str]:
    name, slot, pub = "pulse_soak", "pulse_soak_slot", "pulse_soak_pub"
    admin = psycopg2.connect(pg.url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin.close()
    from pulse_dev.scratch import with_database

    url = with_database(pg.url, name)
    init_database(DatabaseConfig(url=url, publication=pub))
    # The generator updates and deletes past events: with FULL identity the board can undo their
    # old values and must equal SQL (docs/sinks/redis.md); with DEFAULT it cannot, by design.
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE engagement_events REPLICA IDENTITY FULL")
    conn.close()
    ensure_slot(DatabaseConfig(url=url, slot=slot, publication=pub))
    return url, slot, pub


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--mode", choices=("inprocess", "kafka"), required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=100.0, help="generated events per second")
    ap.add_argument("--anomalies", type=float, default=0.05)
    ap.add_argument("--fault-every", type=float, default=30.0, help="mean seconds between faults")
    ap.add_argument("--converge-timeout", type=float, default=900.0)
    ap.add_argument("--workdir", default=None, help="logs and spool (default: a fresh /var/tmp folder)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()

    def _terminate(signum, frame):  # SIGTERM: tear down the private services as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)

    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"pulse-soak-{args.mode}-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    faults: Counter[str] = Counter()
    fault_log: list[tuple[float, str]] = []
    pg = redis_ = bq = kafka = None
    dest = None
    procs: dict[str, Supervised] = {}
    freshness: list[float] = []
    summary: dict = {}
    try:
        pg, redis_, bq = PrivatePostgres(), PrivateRedis(), PrivateBigQuery()
        kafka = PrivateKafka() if args.mode == "kafka" else None
        url, slot, pub = scratch_database(pg)
        dest = Destinations(redis_.url, bq.PROJECT, bq.endpoint, bq.grpc_endpoint, work / "spool")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env.update(dest.env(), PULSE_DATABASE_URL=url, PULSE_SLOT=slot, PULSE_PUBLICATION=pub,
                   PULSE_DATABASE__HEARTBEAT_INTERVAL_S="1", PULSE_DATABASE__STATUS_INTERVAL_S="1")
        if kafka:
            env.update(PULSE_KAFKA_BOOTSTRAP=kafka.bootstrap, PULSE_KAFKA__TOPIC="pulse_soak",
                       PULSE_KAFKA__CONTENT_TOPIC="pulse_soak_content", PULSE_KAFKA__PARTITIONS="4",
                       PULSE_KAFKA__GROUP_PREFIX="pulse_soak",
                       PULSE_KAFKA__MESSAGE_MAX_BYTES=str(KAFKA_MESSAGE_MAX_BYTES))
            _create_topic(kafka.bootstrap, "pulse_soak", 4)
        gen_env = dict(env)
        gen_seed = [args.seed * 1000]

        gen = Supervised("generate", [], gen_env, work, expected_exit=lambda: True)

        def gen_args() -> list[str]:
            gen_seed[0] += 1  # a restarted generator draws new rows, not the same ones again
            return ["generate", "--rate", str(args.rate), "--anomalies", str(args.anomalies),
                    "--seed", str(gen_seed[0])]

        gen_start = gen.start

        def start_gen() -> None:
            gen.args = gen_args()
            gen_start()

        gen.start = start_gen  # type: ignore[method-assign]
        if args.mode == "inprocess":
            roles = {"run": ["run"]}
        else:
            roles = {"produce": ["produce"], "consume-redis": ["consume", "--sink", "redis"],
                     "consume-bigquery": ["consume", "--sink", "bigquery"],
                     "consume-external": ["consume", "--sink", "external"]}
        for name, a in roles.items():
            procs[name] = Supervised(name, a, env, work)
            procs[name].start()
        gen.start()

        def fault_pg(mode: str) -> None:
            pg.restart(mode)

        def fault_walsender() -> None:
            pg.terminate_walsenders(slot)

        def fault_destinations() -> None:
            down = rng.uniform(5, 30)
            redis_.stop()
            bq.stop()
            dest.receiver.stop()
            time.sleep(down)  # the outage itself
            redis_.start()
            bq.start()
            dest.receiver.start()

        def fault_kill9() -> None:
            procs[rng.choice(sorted(procs))].kill9()

        def fault_broker(sig: int) -> None:
            down = rng.uniform(5, 20)
            kafka.stop(sig)
            time.sleep(down)  # the outage itself
            kafka.start()

        kinds = {"pg_restart_fast": lambda: fault_pg("fast"), "pg_restart_immediate": lambda: fault_pg("immediate"),
                 "walsender_terminated": fault_walsender, "destinations_down": fault_destinations,
                 "kill9": fault_kill9}
        if kafka:
            kinds["broker_stop"] = lambda: fault_broker(signal.SIGTERM)
            kinds["broker_kill"] = lambda: fault_broker(signal.SIGKILL)
        names = sorted(kinds)

        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_fault = t0 + 20 + rng.expovariate(1 / args.fault_every)
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_fault:
                kind = rng.choice(names)
                fault_log.append((round(now - t0, 1), kind))
                print(f"[{now - t0:7.1f}s] fault {kind}", file=sys.stderr, flush=True)
                kinds[kind]()
                faults[kind] += 1
                next_fault = time.monotonic() + rng.expovariate(1 / args.fault_every)
            for p in procs.values():
                p.tick()
            gen.tick()
            lat = dest.receiver.stats().get("latency_max_s")
            if lat is not None:
                freshness.append(lat)
            time.sleep(1.0)  # the supervisor's tick

        # Quiesce: no more traffic, no more faults; let every destination catch up.
        gen.stop()
        quiesced = time.monotonic()
        for p in procs.values():
            p.tick()

        def alive() -> bool:
            for p in procs.values():
                p.tick()
            return True

        t = wait_converged(url, dest, args.converge_timeout, alive)
        converge_s = time.monotonic() - quiesced
        rss = {n: {"start_kb": p.rss_first, "end_kb": p.rss_last} for n, p in procs.items()}
        t.verify_ok, t.verify_out = pulse_verify(env, "bigquery", "redis", settle_s=10)
        (work / "verify.json").write_text(t.verify_out)
        t = _final(url, dest, t)
        stats = dest.receiver.stats()
        summary = {
            "mode": args.mode, "seed": args.seed, "minutes": args.minutes, "rate": args.rate,
            "anomalies": args.anomalies, "events": t.source, "faults": dict(sorted(faults.items())),
            "faults_total": sum(faults.values()),
            "lost": t.lost, "duplicated": t.duplicated,
            "detail": {"bq_lost": t.bq_lost, "bq_duplicated": t.bq_duplicated, "bq_extra": t.bq_extra,
                       "rx_lost": t.rx_lost, "rx_extra": t.rx_extra, "rx_unstable_ids": t.rx_unstable,
                       "rx_conflicts": t.rx_conflicts, "rx_redelivered": t.rx_redelivered,
                       "verify_ok": t.verify_ok},
            "rx_conflict_samples": stats.get("conflict_samples", []),
            "max_freshness_s": round(stats.get("latency_max_s") or 0, 1),
            "p99_freshness_s": round(stats.get("latency_p99_s") or 0, 2),
            "converge_after_quiesce_s": round(converge_s, 1),
            "rss_kb": rss,
            "restarts": {n: p.starts - 1 for n, p in procs.items()},
            "unexpected_exits": {n: p.unexpected_exits for n, p in procs.items() if p.unexpected_exits},
            "generator_restarts": gen.starts - 1,
            "workdir": str(work),
        }
        if not t.verify_ok:
            summary["verify_out"] = t.verify_out[-2000:]
    except Exception:  # a fault that could not be applied or healed is a finding: report it, tear down
        import traceback

        summary = {"error": traceback.format_exc(), "faults": dict(faults), "fault_log": fault_log,
                   "workdir": str(work)}
    finally:
        for p in procs.values():
            p.stop()
        if dest is not None:
            dest.receiver.stop()
        for svc in (kafka, bq, redis_, pg):
            if svc is not None:
                svc.close()
    if "error" in summary:
        print(f"soak stopped: {summary['error']}\nfaults so far: {summary['faults']} (see {work})")
        (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary))
    (work / "summary.json").write_text(json.dumps({**summary, "fault_log": fault_log}, indent=2) + "\n")
    ok = summary.get("lost") == 0 and summary.get("duplicated") == 0 and summary["detail"]["verify_ok"] \
        and summary["detail"]["rx_conflicts"] == 0 and not summary["unexpected_exits"]
    return 0 if ok else 1


def _final(url: str, dest: Destinations, t):
    """Recount after verify (it may have waited for late rows); keep verify's verdict."""
    fresh = tally(url, dest)
    fresh.verify_ok, fresh.verify_out = t.verify_ok, t.verify_out
    return fresh


def render(s: dict) -> str:
    lines = [
        f"soak {s['mode']} seed {s['seed']}: {s['minutes']} min, {s['events']} events "
        f"({s['rate']}/s, anomalies {s['anomalies']})",
        f"faults: {s['faults_total']} " + ", ".join(f"{k} {v}" for k, v in s["faults"].items()),
        f"lost {s['lost']}, duplicated {s['duplicated']} ({s['detail']})",
        f"max freshness {s['max_freshness_s']} s (p99 {s['p99_freshness_s']} s, receiver: commit to delivery); "
        f"converged {s['converge_after_quiesce_s']} s after quiesce",
        "RSS (first / last sample, kB): " + ", ".join(
            f"{n} {v['start_kb']} -> {v['end_kb']}" for n, v in s["rss_kb"].items()),
        f"restarts {s['restarts']}, unexpected exits {s['unexpected_exits'] or 'none'}, "
        f"generator restarts {s['generator_restarts']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
