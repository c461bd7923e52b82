"""Throwaway databases on the dev cluster: dropping one with its replication slots.

Shared by the test fixtures (`tests/conftest.py`) and the benchmarks
(`bench/_common.py`): a slot left behind pins WAL, so both drop a scratch
database's slots (terminating their walsenders) before the database itself.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
from psycopg2 import sql


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def drop_slots(admin_url: str, database: str) -> None:
    """Drop every replication slot of `database`, terminating its walsenders first."""
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    deadline = time.monotonic() + 30
    with conn.cursor() as cur:
        while True:
            cur.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", (database,)
            )
            rows = cur.fetchall()
            if not rows:
                break
            for slot, pid in rows:
                if pid:
                    cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    continue
                try:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                except psycopg2.Error:
                    pass  # became active again or already gone: loop re-checks
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not drop replication slots of {database}: {rows}")
            time.sleep(0.1)
    conn.close()


def drop_database(admin, name: str, timeout: float = 60.0) -> None:
    """DROP DATABASE ... WITH (FORCE) on connection `admin`, retried while an autovacuum worker is in it.

    FORCE terminates the other sessions, but a non-superuser may not terminate
    an autovacuum worker (it runs as the bootstrap superuser): PostgreSQL
    answers InsufficientPrivilege until the worker is done.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with admin.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            return
        except psycopg2.errors.InsufficientPrivilege:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def drop_scratch(admin_url: str, name: str) -> None:
    """Drop database `name` and its slots."""
    drop_slots(admin_url, name)
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        drop_database(admin, name)
    finally:
        admin.close()
