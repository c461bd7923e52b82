"""Shared helpers for the benchmarks (not part of the test suite)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg2
from psycopg2 import sql

from pulse.config import DatabaseConfig
from pulse_dev.scratch import drop_scratch
from pulse_dev.scratch import with_database as with_db
from pulse_dev.services import _alive
from pulse.schema import init_database


def base_url() -> str:
    url = os.environ.get("PULSE_DATABASE_URL")
    if not url:
        raise SystemExit("PULSE_DATABASE_URL is not set: run `make services` and `source .pulse/services.env`")
    return url


class ScratchDatabase:
    """A throwaway database with the schema and a publication; dropped (with its slots) on exit.

    Its name carries the creating process id: a benchmark that was killed
    cannot clean up, so the next one drops what dead processes left behind
    (their slots would pin WAL on the dev cluster).
    """

    def __init__(self, prefix: str = "pulse_bench") -> None:
        self.prefix = prefix
        self.name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.admin_url = base_url()
        self.url = with_db(self.admin_url, self.name)
        self.publication = "bench_pub"

    def _sweep(self, cur) -> None:
        cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (self.prefix + "_",))
        for (name,) in cur.fetchall():
            pid = name[len(self.prefix) + 1:].split("_")[0]
            if pid.isdigit() and not _alive(int(pid)):
                drop_scratch(self.admin_url, name)

    def __enter__(self) -> "ScratchDatabase":
        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            self._sweep(cur)
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        conn.close()
        init_database(DatabaseConfig(url=self.url, publication=self.publication))
        return self

    def config(self, slot: str, **kw) -> DatabaseConfig:
        return DatabaseConfig(url=self.url, slot=slot, publication=self.publication, **kw)

    def connect(self):
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        return conn

    def __exit__(self, *exc) -> None:
        drop_scratch(self.admin_url, self.name)


def current_lsn(cur) -> str:
    cur.execute("SELECT pg_current_wal_lsn()::text")
    return cur.fetchone()[0]


def seed_content(cur, n: int = 200) -> list[str]:
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    types = ("podcast", "newsletter", "video")
    for i, cid in enumerate(ids):
        t = types[i % 3]
        cur.execute(
            "INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
            "VALUES (%s, %s, %s, %s, %s, now())",
            (cid, f"bench-{i}", f"Bench content {i}", t, None if t == "newsletter" else 60 + 30 * i),
        )
    return ids


def insert_events_sql(cur, content_ids: list[str], total: int, per_txn: int) -> None:
    """`total` events in transactions of `per_txn` rows, generated server-side (fast, realistic shape)."""
    done = 0
    arr = "{" + ",".join(content_ids) + "}"
    while done < total:
        n = min(per_txn, total - done)
        cur.execute("BEGIN")
        cur.execute(
            "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
            "SELECT (%s::uuid[])[1 + (g %% %s)], gen_random_uuid(), "
            "(ARRAY['play','pause','finish','click'])[1 + g %% 4], now() - (g %% 600) * interval '1 second', "
            "CASE WHEN g %% 4 = 3 THEN NULL ELSE 1000 + g %% 90000 END, "
            "(ARRAY['ios','android','web-chrome','web-safari'])[1 + g %% 4], "
            "jsonb_build_object('app_version', '5.2.' || (g %% 9), 'country', 'DE', 'session', g) "
            "FROM generate_series(%s, %s) g",
            (arr, len(content_ids), done, done + n - 1),
        )
        cur.execute("COMMIT")
        done += n


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
