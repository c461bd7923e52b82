"""Helpers of the fault tests and of bench/soak.py: a writer that outlives outages, the three
destinations of one run, and the end check that every destination equals the source.

The end check judges behaviour only: BigQuery holds each source event once,
`pulse verify` finds the Redis board (and the table) equal to SQL, and the
receiver got every event id at least once under one CloudEvent id (no other
ids, no payload conflicts). Nothing here reads how the external sink keeps
its undelivered events.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from pulse.receiver import Receiver
from tests.conftest import unique


class Writer(threading.Thread):
    """Inserts `per_txn` events per transaction every `pause` s, reconnecting through outages.

    A commit whose outcome is unknown (the server died during it) is fine:
    the end check reads the source, not this writer's count.
    """

    def __init__(self, url: str, content: list[str], per_txn: int = 100, pause: float = 0.05) -> None:
        super().__init__(name="chaos-writer", daemon=True)
        self.url, self.content, self.per_txn, self.pause = url, content, per_txn, pause
        self.halt = threading.Event()
        self.committed = 0
        self.failures = 0

    def run(self) -> None:
        arr = "{" + ",".join(self.content) + "}"
        conn = None
        while not self.halt.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg2.connect(self.url, connect_timeout=5)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, "
                        "device, raw_payload) SELECT (%s::uuid[])[1 + (g %% %s)], gen_random_uuid(), 'play', now(), "
                        "1000 + g %% 9000, (ARRAY['ios','android','web-chrome'])[1 + g %% 3], "
                        "jsonb_build_object('g', g) FROM generate_series(1, %s) g",
                        (arr, len(self.content), self.per_txn),
                    )
                self.committed += self.per_txn
            except psycopg2.Error:
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
                self.halt.wait(0.5)
                continue
            self.halt.wait(self.pause)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(60)


@dataclass
class Destinations:
    """Redis (own prefix), BigQuery (own dataset) and an in-process receiver for one run."""

    redis_url: str
    bq_project: str
    bq_endpoint: str
    bq_grpc: str | None
    spool_dir: Path
    prefix: str = field(default_factory=lambda: unique("pulse_chaos") + ":")
    dataset: str = field(default_factory=lambda: unique("pulse_chaos"))
    receiver: Receiver = field(default_factory=lambda: Receiver().start())

    @classmethod
    def shared(cls, services: dict[str, str], spool_dir: Path) -> "Destinations":
        return cls(services["PULSE_REDIS_URL"], services["PULSE_BIGQUERY_PROJECT"],
                   services["PULSE_BIGQUERY_ENDPOINT"], services.get("PULSE_BIGQUERY__GRPC_ENDPOINT"), spool_dir)

    def env(self) -> dict[str, str]:
        env = {"PULSE_REDIS_URL": self.redis_url, "PULSE_REDIS_PREFIX": self.prefix,
               "PULSE_BIGQUERY_PROJECT": self.bq_project, "PULSE_BIGQUERY_ENDPOINT": self.bq_endpoint,
               "PULSE_BIGQUERY_DATASET": self.dataset, "PULSE_BIGQUERY__SPOOL_DIR": str(self.spool_dir),
               "PULSE_BIGQUERY__LOAD_INTERVAL_S": "1", "PULSE_EXTERNAL_URL": self.receiver.url}
        if self.bq_grpc:
            env["PULSE_BIGQUERY__GRPC_ENDPOINT"] = self.bq_grpc
        return env

    def bq_client(self):
        from pulse.config import BigQueryConfig
        from pulse.sinks.bigquery.client import make_client

        return make_client(BigQueryConfig(project=self.bq_project, dataset=self.dataset, endpoint=self.bq_endpoint))

    def bq_ids(self) -> list[int]:
        """Every event_id row of the table (duplicates kept), [] while it does not exist or answer."""
        try:
            return [row[0] for row in self.bq_client().query(
                f"SELECT event_id FROM `{self.dataset}.engagement_events`").result()]
        except Exception:  # the table appears with the first load; the emulator may be down
            return []

    def receiver_ids(self) -> dict[int, set[str]]:
        """Source event id -> the CloudEvent ids it was delivered under (inserts)."""
        out: dict[int, set[str]] = {}
        for doc in self.receiver.events():
            if "-insert-" in doc["id"]:
                out.setdefault(int(doc["event"]["subject"]), set()).add(doc["id"])
        return out

    def receiver_deleted(self) -> set[int]:
        """Source event ids whose delete was delivered."""
        return {int(doc["event"]["subject"]) for doc in self.receiver.events() if doc["id"].endswith("-delete")}

    def board_events(self) -> int:
        import redis

        try:
            raw = redis.Redis.from_url(self.redis_url).hget(self.prefix + "stats", "events")
            return int(raw or 0)
        except redis.RedisError:
            return 0

    def cleanup(self) -> None:
        import redis

        self.receiver.stop()
        try:
            r = redis.Redis.from_url(self.redis_url)
            for key in r.scan_iter(match=self.prefix + "*", count=1000):
                r.delete(key)
        except redis.RedisError:
            pass
        try:
            self.bq_client().delete_dataset(self.dataset, delete_contents=True, not_found_ok=True)
        except Exception:  # a private emulator may already be gone
            pass


def source_ids(url: str) -> list[int]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM engagement_events ORDER BY id")
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


@dataclass
class Tally:
    """What each destination holds against the source."""

    source: int
    bq_lost: int
    bq_duplicated: int
    bq_extra: int
    rx_lost: int
    rx_extra: int
    rx_unstable: int  # source events delivered under more than one CloudEvent id
    rx_conflicts: int
    rx_redelivered: int  # the same id sent again (allowed: at least once)
    verify_ok: bool | None = None
    verify_out: str = ""

    @property
    def lost(self) -> int:
        return self.bq_lost + self.rx_lost

    @property
    def duplicated(self) -> int:
        return self.bq_duplicated + self.rx_unstable + self.rx_conflicts

    @property
    def exact(self) -> bool:
        return (self.lost == 0 and self.duplicated == 0 and self.bq_extra == 0 and self.rx_extra == 0
                and self.verify_ok is not False)


def tally(url: str, dest: Destinations) -> Tally:
    src = set(source_ids(url))
    bq = dest.bq_ids()
    rx = dest.receiver_ids()
    stats = dest.receiver.stats()
    return Tally(source=len(src), bq_lost=len(src - set(bq)), bq_duplicated=len(bq) - len(set(bq)),
                 bq_extra=len(set(bq) - src), rx_lost=len(src - set(rx)),
                 rx_extra=len(set(rx) - src - dest.receiver_deleted()),
                 rx_unstable=sum(1 for ids in rx.values() if len(ids) > 1), rx_conflicts=stats["conflicts"],
                 rx_redelivered=stats["duplicates"])


def wait_converged(url: str, dest: Destinations, timeout: float, alive=lambda: True, board: bool = False) -> Tally:
    """Poll until BigQuery and the receiver (and with `board`, the Redis board's count of changes) hold
    every source event (or `timeout`); returns the tally. A sink back from an outage may still be in a
    retry backoff of up to 30 s: the end check waits for it rather than for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        t = tally(url, dest)
        done = t.bq_lost == 0 and t.rx_lost == 0 and (not board or dest.board_events() >= t.source)
        if done or time.monotonic() > deadline or not alive():
            return t
        time.sleep(1.0)


def pulse_verify(env: dict[str, str], *sinks: str, settle_s: float = 5) -> tuple[bool, str]:
    """`pulse verify --json` on `sinks`: (every one equal, its output)."""
    args = [a for s in sinks for a in ("--sink", s)]
    out = subprocess.run([sys.executable, "-m", "pulse.cli.main", "verify", *args, "--json", "--settle-s",
                          str(settle_s)], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode not in (0, 1):
        return False, out.stderr[-3000:]
    return json.loads(out.stdout)["ok"] and out.returncode == 0, out.stdout


def assert_exact(url: str, dest: Destinations, env: dict[str, str], timeout: float = 180, alive=lambda: True,
                 verify: tuple[str, ...] = ("bigquery", "redis")) -> Tally:
    """Every destination equals the source: waits for convergence, then `pulse verify` and the receiver."""
    t = wait_converged(url, dest, timeout, alive, board="redis" in verify)
    t.verify_ok, t.verify_out = pulse_verify(env, *verify)
    assert t.exact, f"destinations differ from the source: {t}"
    return t


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of a Prometheus endpoint ({} while it does not answer)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in body.splitlines():
        m = re.match(r"^([a-z_]+) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def pulse_bin() -> str:
    return os.path.join(os.path.dirname(sys.executable), "pulse")
