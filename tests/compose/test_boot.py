"""`docker compose up`, booted for real (`make compose-test`; not part of `make test`).

What it proves, in order (docs/deploy.md, "The boot test"):

1. every image builds without a registry (dev/docker-images.sh, run by the make target) and the
   whole stack of docker-compose.yml (+ docker-compose.local.yml: stand-in infrastructure images)
   turns healthy within a deadline: the workers' health checks are their /readyz;
2. the generator's live traffic and a block of history (`pulse generate --count --since`) reach
   every destination exactly once, checked from the host: BigQuery holds each id of
   engagement_events once, the receiver got each event (no conflicting duplicate, every signature
   valid), and `pulse verify` finds the Redis board equal to the window computed in SQL;
3. `docker compose kill` of one worker at a time (producer, each consumer, the uploader) while
   traffic flows, then `docker compose start`: the same exactness afterwards;
4. the seed's workflow: `docker compose exec producer pulse produce --backfill --since ...`
   re-sends history without duplicating anything, `pulse status` and `pulse top --once` answer.

`docker compose down -v` runs at the end, also on failure; a failure prints the logs of the
services involved. Test traffic stays on this machine (the compose network and 127.0.0.1 ports).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.compose

RATE = 20  # generator events/s
BOOT_DEADLINE_S = float(os.environ.get("PULSE_COMPOSE_BOOT_DEADLINE_S", "600"))
CONVERGE_DEADLINE_S = 300.0  # the emulator's MERGE takes 20-40 s per load on a loaded 2-core machine
SERVICES_WITH_HEALTH = ("postgres", "redis", "kafka", "bigquery", "receiver", "generator", "producer",
                        "consumer-redis", "consumer-external", "consumer-bigquery", "uploader")
ONE_SHOTS = ("db-init", "kafka-init")
WORKERS = ("producer", "consumer-redis", "consumer-external", "consumer-bigquery", "uploader")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compose_cmd() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    assert found, "neither `docker compose` nor docker-compose: run dev/docker-engine.sh"
    return [found]


class Stack:
    def __init__(self) -> None:
        self.project = f"pulseboot{secrets.token_hex(4)}"
        self._ids: dict[str, str] = {}
        self.base = [*_compose_cmd(), "-p", self.project, "-f", str(ROOT / "docker-compose.yml"),
                     "-f", str(ROOT / "docker-compose.local.yml")]
        self.secrets = {
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "PULSE_DB_PASSWORD": secrets.token_hex(16),
            "PULSE_REDIS_PASSWORD": secrets.token_hex(16),
            "PULSE_EXTERNAL_SECRET": "whsec_" + __import__("base64").b64encode(secrets.token_bytes(32)).decode(),
            "PULSE_RECEIVER__CONTROL_TOKEN": secrets.token_hex(16),
        }
        self.ports = {name: _free_port() for name in ("PG", "REDIS", "KAFKA", "BQ_REST", "BQ_GRPC", "RECEIVER")}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        self.env.update(self.secrets)
        self.env.update({f"PULSE_COMPOSE_{k}_PORT": str(v) for k, v in self.ports.items()})
        # Two partitions: two consumers' worth of spool folders, so fewer loads to wait for (the default is 6).
        self.env.update({"PULSE_GENERATOR_RATE": str(RATE), "PULSE_BIGQUERY_LOAD_INTERVAL_S": "2",
                         "PULSE_KAFKA_PARTITIONS": "2",
                         "COMPOSE_PROJECT_NAME": self.project})

    # -- compose -------------------------------------------------------------------------

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return proc

    def pulse(self, service: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", service, "pulse", *args, check=check)

    def container(self, service: str) -> str:
        """The service's container id (kill/start keep it, so it is looked up once)."""
        if service not in self._ids:
            out = self.compose("ps", "-q", service).stdout.split()
            assert out, f"no container for {service}"
            self._ids[service] = out[0]
        return self._ids[service]

    def state(self, service: str) -> dict:
        out = subprocess.run(["docker", "inspect", self.container(service)], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out)[0]["State"]

    def wait_exited(self, service: str, deadline_s: float = BOOT_DEADLINE_S) -> None:
        t0 = time.monotonic()
        while True:
            st = self.state(service)
            if st["Status"] == "exited":
                assert st["ExitCode"] == 0, f"{service} exited {st['ExitCode']}:\n{self.logs(service)}"
                return
            assert time.monotonic() - t0 < deadline_s, f"{service} did not finish:\n{self.logs(service)}"
            time.sleep(1)

    def logs(self, *services: str, tail: int = 80) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), *services, check=False).stdout

    def wait_healthy(self, services=SERVICES_WITH_HEALTH, deadline_s: float = BOOT_DEADLINE_S) -> float:
        t0 = time.monotonic()
        pending = set(services)
        while True:
            for name in sorted(pending):
                st = self.state(name)
                if st.get("Health", {}).get("Status") == "healthy":
                    pending.discard(name)
            for name in ONE_SHOTS:
                st = self.state(name)
                if not st["Running"] and st["ExitCode"] != 0:
                    raise AssertionError(f"{name} exited {st['ExitCode']}:\n{self.logs(name)}")
            if not pending:
                return time.monotonic() - t0
            if time.monotonic() - t0 > deadline_s:
                details = []
                for name in sorted(pending):
                    health = self.state(name).get("Health", {})
                    last = (health.get("Log") or [{}])[-1].get("Output", "").strip()
                    details.append(f"--- {name}: {health.get('Status')} ({last})\n{self.logs(name)}")
                raise AssertionError(f"not healthy within {deadline_s:.0f} s: {sorted(pending)}\n"
                                     + "\n".join(details))
            time.sleep(2)

    # -- the destinations, read from the host --------------------------------------------

    def db(self):
        url = (f"postgresql://pulse:{quote(self.secrets['PULSE_DB_PASSWORD'])}@127.0.0.1:{self.ports['PG']}"
               f"/pulse")
        conn = psycopg2.connect(url, connect_timeout=5)
        conn.autocommit = True
        return conn

    def source_ids(self) -> set[int]:
        with self.db() as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM public.engagement_events")
            ids = {r[0] for r in cur.fetchall()}
        conn.close()
        return ids

    def bigquery_ids(self) -> list[int]:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        client = bigquery.Client(project="pulse-local", credentials=AnonymousCredentials(),
                                 client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{self.ports['BQ_REST']}"))
        from google.api_core.exceptions import NotFound

        try:
            rows = client.query("SELECT event_id FROM `pulse-local.pulse.engagement_events`").result()
            return [int(r[0]) for r in rows]
        except NotFound:  # the table appears with the first load
            return []
        finally:
            client.close()

    def receiver(self, path: str) -> dict:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['RECEIVER']}{path}", headers={
            "Authorization": f"Bearer {self.secrets['PULSE_RECEIVER__CONTROL_TOKEN']}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def receiver_rows(self) -> set[int]:
        """Event ids the receiver holds: inserts received minus deletes received (the generator deletes
        a few past events; each change is its own CloudEvent, so `unique` counts changes, not rows)."""
        by_op: dict[str, set[int]] = {"insert": set(), "update": set(), "delete": set()}
        for item in self.receiver("/events")["events"]:
            ev = item["event"]
            by_op[ev["type"].rsplit(".", 1)[-1]].add(int(ev["subject"]))
        return by_op["insert"] - by_op["delete"]

    def check_exact(self, what: str) -> dict:
        """Generator paused: every destination converges to the source, each event exactly once."""
        self.compose("stop", "generator")
        source = self.source_ids()
        assert source, "the generator wrote nothing"
        t0 = time.monotonic()
        bq: list[int] = []
        rx: set[int] = set()
        while time.monotonic() - t0 < CONVERGE_DEADLINE_S:
            bq = self.bigquery_ids()
            rx = self.receiver_rows()
            if set(bq) >= source and rx >= source:
                break
            time.sleep(2)
        stats = self.receiver("/stats")
        missing = source - set(bq)
        assert not missing, f"{what}: {len(missing)} of {len(source)} events missing in BigQuery " \
                            f"(e.g. {sorted(missing)[:5]})\n{self.logs('consumer-bigquery', 'uploader')}"
        assert len(bq) == len(set(bq)) == len(source), f"{what}: BigQuery holds {len(bq)} rows, " \
            f"{len(set(bq))} distinct, for {len(source)} source events"
        assert rx == source, f"{what}: the receiver lacks {len(source - rx)} events, has {len(rx - source)} " \
                             f"the source has not\n{self.logs('consumer-external')}"
        # Delivery to the external system is at least once, deduplicated by CloudEvent id: a row re-read by
        # the initial snapshot or a backfill comes again under the same id (its envelope, e.g. the
        # position, may differ: the receiver counts that as a "conflict"). Every request must be signed.
        assert stats["signature_failures"] == 0 and stats["unsigned"] == 0, stats
        proc = self.pulse("producer", "verify", "--sink", "redis", "--json", check=False)
        report = json.loads(proc.stdout)
        assert proc.returncode == 0 and report["ok"], (f"{what}: the Redis board differs from SQL: {proc.stdout}\n"
                                                       f"{self.logs('consumer-redis', 'producer', tail=200)}")
        self.compose("start", "generator")
        return {"events": len(source), "converged_s": round(time.monotonic() - t0, 1),
                "receiver_duplicates": stats["duplicates"], "receiver_conflicts": stats["conflicts"]}

    def wait_for_growth(self, n: int, timeout: float = 60) -> None:
        """Traffic flows: the source grows by n events (a condition, not a sleep)."""
        with self.db() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM public.engagement_events")
            start = cur.fetchone()[0]
            deadline = time.monotonic() + timeout
            while True:
                cur.execute("SELECT count(*) FROM public.engagement_events")
                if cur.fetchone()[0] >= start + n:
                    break
                assert time.monotonic() < deadline, f"the source did not grow by {n} in {timeout} s"
                time.sleep(0.5)
        conn.close()


@pytest.fixture(scope="module")
def stack():
    assert subprocess.run(["docker", "info"], capture_output=True).returncode == 0, \
        "no Docker engine: run `make compose-test` (it starts one with dev/docker-engine.sh)"
    s = Stack()
    try:
        # The database first: the generator updates and deletes past events, and the Redis board can
        # correct them only with their old values (REPLICA IDENTITY FULL, docs/sinks/redis.md), so that
        # is set before any traffic; then everything else.
        s.compose("up", "-d", "--no-build", "db-init")
        s.wait_exited("db-init")
        with s.db() as conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE public.engagement_events REPLICA IDENTITY FULL")
        conn.close()
        s.compose("up", "-d", "--no-build")
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", check=False, timeout=300)


def test_compose_boots_and_stays_exact(stack: Stack) -> None:
    timings: dict[str, object] = {}
    timings["healthy_s"] = round(stack.wait_healthy(), 1)

    # Live traffic (the generator service) plus a block of history written in bulk.
    now = datetime.now(timezone.utc).replace(microsecond=0)
    iso = lambda hours: (now - timedelta(hours=hours)).isoformat()  # noqa: E731
    stack.compose("run", "--rm", "--no-deps", "-T", "generator", "generate", "--count", "3000", "--since", iso(3),
                  "--until", iso(2), "--seed", "7")
    stack.wait_for_growth(RATE * 3)
    timings["first_check"] = stack.check_exact("after boot")

    # One worker at a time is killed (SIGKILL: no drain) while traffic flows, then started again and
    # must turn healthy (its /readyz) before the next; then every destination is checked exactly.
    # (One check after the five kills, not one per kill: each check waits for the emulator's loads.)
    for worker in WORKERS:
        stack.wait_for_growth(RATE * 2)
        stack.compose("kill", worker)
        assert not stack.state(worker)["Running"], worker
        stack.wait_for_growth(RATE * 3)
        stack.compose("start", worker)
        timings[f"healthy_after_kill_{worker}_s"] = round(stack.wait_healthy((worker,), deadline_s=300), 1)
    timings["after_kills"] = stack.check_exact("after killing and restarting each worker")

    # The seed's workflow: backfill history through the producer, status, top.
    proc = stack.pulse("producer", "produce", "--backfill", "--since", iso(4), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    timings["after_backfill"] = stack.check_exact("after produce --backfill")
    proc = stack.pulse("producer", "status", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pulse" in proc.stdout
    proc = stack.pulse("producer", "status", "--json")
    status = json.loads(proc.stdout)
    assert status, proc.stdout
    proc = stack.pulse("consumer-redis", "top", "--once", "--json")
    top = json.loads(proc.stdout)
    assert top, proc.stdout
    proc = stack.pulse("consumer-redis", "top", "--once")
    assert proc.returncode == 0 and proc.stdout.strip()
    print("compose boot test:", json.dumps(timings, indent=1))
