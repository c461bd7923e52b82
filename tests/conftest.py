"""Shared fixtures.

Integration tests (tests/integration) run against the real local services
that `make services` starts; the `services` fixture starts them with the same
code when they are not up. Without them a test skips locally and FAILS under
CI=true: a missing service is never a silent pass.

Every test gets its own objects: a scratch database (with the source schema,
Pulse's schema and a publication), unique slot / publication / Redis prefix /
dataset / topic names, all removed afterwards, replication slots included.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from pulse_dev.scratch import drop_database, drop_slots, with_database

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def need(condition: bool, why: str) -> None:
    """Skip locally, fail in CI, when a required service or tool is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required for this test under CI=true: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """The PULSE_ endpoints of the running local services (started if needed)."""
    from pulse_dev import services as dev

    try:
        rows = {r["name"]: r for r in dev.status()}
        if not all(r.get("running") for r in rows.values()):
            dev.up()
        env = dev.endpoints()
    except Exception as exc:  # any failure to start is reported, in CI as a failure
        need(False, f"local services could not be started: {exc}")
        raise
    for key in ("PULSE_DATABASE_URL", "PULSE_REDIS_URL", "PULSE_KAFKA_BOOTSTRAP", "PULSE_BIGQUERY_ENDPOINT"):
        need(key in env, f"{key} missing from the local services")
    return env


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@dataclass
class ScratchDb:
    """A throwaway database with the source schema, Pulse's schema and a publication."""

    name: str
    url: str
    admin_url: str
    slot: str
    publication: str

    def config(self, **kw):
        from pulse.config import DatabaseConfig

        return DatabaseConfig(url=self.url, slot=self.slot, publication=self.publication, **kw)

    def connect(self):
        import psycopg2

        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        return conn


@contextmanager
def _database(base: str, prefix: str):
    """A new empty database next to `base`; yields (name, url); dropped (slots first) afterwards."""
    import psycopg2
    from psycopg2 import sql

    name = unique(prefix)
    admin = psycopg2.connect(base)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name, with_database(base, name)
    finally:
        drop_slots(base, name)
        drop_database(admin, name)
        admin.close()


@pytest.fixture
def scratch_db(services) -> ScratchDb:
    from pulse.config import DatabaseConfig
    from pulse.schema import init_database

    base = services["PULSE_DATABASE_URL"]
    with _database(base, "pulse_t") as (name, url):
        db = ScratchDb(name=name, url=url, admin_url=base, slot=unique("slot"), publication=unique("pub"))
        init_database(DatabaseConfig(url=db.url, publication=db.publication))
        yield db
    # The external sink's default local outbox folders (relative to the working directory) of this slot
    # and of the slots tests derive from it (`<slot>_a`).
    for folder in Path("external_outbox").glob(db.slot + "*"):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sink_db(services) -> str:
    """URL of an empty throwaway database, for durable test sinks."""
    with _database(services["PULSE_DATABASE_URL"], "pulse_sink") as (_name, url):
        yield url


@pytest.fixture
def superuser_url(services) -> str:
    """The local cluster's bootstrap superuser (for tests that change server settings)."""
    from pulse_dev import services as dev

    parts = urlsplit(services["PULSE_DATABASE_URL"])
    password = (dev.state_dir() / "pg-password").read_text().strip()
    return urlunsplit(parts._replace(netloc=f"postgres:{password}@{parts.hostname}:{parts.port}"))
