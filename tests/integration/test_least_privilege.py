"""`pulse run` as a role with only the grants of docs/deploy.md ("Least privilege").

The owner runs `pulse db init` (here: the scratch_db fixture); a second role
with REPLICATION, SELECT on the two source tables and read/write on Pulse's
schema, and nothing else (no CREATE anywhere, owner of nothing), streams.
The grants below are the ones the page prints, statement for statement.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from psycopg2 import sql
from pydantic import SecretStr

from pulse.doctor import run as doctor_run

from .pipeline_helpers import insert_content, insert_events, wait_for
from .pipeline_helpers import pulse_cmd, pulse_env, slot_streaming

# docs/deploy.md, "Least privilege", self-managed PostgreSQL: {role}, {db}; run as the owner of the
# tables and of Pulse's schema (the role that ran `pulse db init`).
OWNER_GRANTS = """
GRANT CONNECT ON DATABASE {db} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON public.content, public.engagement_events TO {role};
GRANT USAGE ON SCHEMA pulse TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pulse TO {role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pulse TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA pulse GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA pulse GRANT USAGE ON SEQUENCES TO {role};
"""


@pytest.fixture
def stream_role(scratch_db, superuser_url):
    """(name, url) of a LOGIN REPLICATION role holding exactly the documented grants; dropped afterwards."""
    name = f"pulse_stream_{uuid.uuid4().hex[:8]}"
    password = secrets.token_hex(12)
    admin = psycopg2.connect(superuser_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD %s").format(sql.Identifier(name)),
                    (password,))
    owner = scratch_db.connect()
    try:
        with owner.cursor() as cur:
            for stmt in filter(None, (s.strip() for s in OWNER_GRANTS.split(";"))):
                cur.execute(sql.SQL(stmt).format(
                    db=sql.Identifier(scratch_db.name), role=sql.Identifier(name)))
        parts = urlsplit(scratch_db.url)
        url = urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port}"))
        yield name, url
    finally:
        owner.close()
        on_db = urlunsplit(urlsplit(superuser_url)._replace(path="/" + scratch_db.name))
        cleanup = psycopg2.connect(on_db)
        cleanup.autocommit = True
        with cleanup.cursor() as cur:
            cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        cleanup.close()
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        admin.close()


def test_the_documented_grants_are_enough_to_stream(scratch_db, stream_role):
    name, url = stream_role
    owner = scratch_db.connect()
    cur = owner.cursor()
    # The oracle for "least": the catalog says this role can create nothing and owns nothing ...
    cur.execute("SELECT has_database_privilege(%s, current_database(), 'CREATE'), "
                "has_schema_privilege(%s, 'pulse', 'CREATE'), has_schema_privilege(%s, 'public', 'CREATE'), "
                "rolsuper, pg_get_userbyid(d.datdba) = %s "
                "FROM pg_roles, pg_database d WHERE rolname = %s AND d.datname = current_database()",
                (name, name, name, name, name))
    assert cur.fetchone() == (False, False, False, False, False)
    # ... and the server refuses it DDL.
    as_role = psycopg2.connect(url)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        with as_role, as_role.cursor() as rcur:
            rcur.execute("CREATE TABLE pulse.not_allowed (x int)")
    as_role.close()

    # Doctor, as that role: nothing to warn about privileges; as the owner (REPLICATION + owner): a warning.
    checks = {r.name: r for r in doctor_run(scratch_db.config().model_copy(update={"url": SecretStr(url)}))}
    assert checks["least_privilege"].status == "ok", checks["least_privilege"]
    assert checks["state_schema"].status == "ok", checks["state_schema"]
    assert checks["select.engagement_events"].status == "ok"
    assert {r.name: r for r in doctor_run(scratch_db.config())}["least_privilege"].status == "warn"

    env = pulse_env(scratch_db, PULSE_DATABASE_URL=url)
    # A publication `pulse db init` never made: refused at start with the fix, exit 5 (terminal).
    refused = subprocess.run(pulse_cmd("run", "--sink", "memory"), env={**env, "PULSE_PUBLICATION": "never_made"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 5, refused.stderr
    assert "pulse db init" in refused.stderr and "CREATE" in refused.stderr

    proc = subprocess.Popen(pulse_cmd("run", "--sink", "memory"), env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: slot_streaming(cur, scratch_db.slot) or proc.poll() is not None, 60, "replication start")
        assert proc.poll() is None, proc.stderr.read()
        [c1] = insert_content(cur, 1)
        insert_events(cur, [c1], 25)

        def reported() -> dict | None:
            cur.execute("SELECT doc FROM pulse.runtime_status WHERE slot_name = %s", (scratch_db.slot,))
            row = cur.fetchone()
            doc = row[0] if row else None
            return doc if doc and doc["sinks"]["memory"]["written"] >= 25 else None

        doc = wait_for(reported, 30, "the restricted role's pipeline to write 25 events")
        assert doc["events_in"] >= 25
        cur.execute("SELECT active_pid IS NOT NULL, usename FROM pg_replication_slots s "
                    "JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE slot_name = %s", (scratch_db.slot,))
        assert cur.fetchone() == (True, name)  # the stream is read by the restricted role
        status = subprocess.run(pulse_cmd("status", "--json"), env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["healthy"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, proc.stderr.read()


def test_run_refuses_a_schema_db_init_has_not_brought_up_to_date(scratch_db):
    """Nothing is created or migrated by `pulse run`: a missing migration or schema is a terminal error."""
    cur = scratch_db.connect().cursor()
    env = pulse_env(scratch_db)
    cur.execute("DELETE FROM pulse.schema_migrations WHERE version = 10")
    behind = subprocess.run(pulse_cmd("run", "--sink", "memory"), env=env, capture_output=True, text=True, timeout=60)
    assert behind.returncode == 5, behind.stderr
    assert "lacks migrations [10]" in behind.stderr and "pulse db init" in behind.stderr
    cur.execute("SELECT count(*) FROM pulse.schema_migrations WHERE version = 10")
    assert cur.fetchone()[0] == 0  # not re-applied behind the operator's back
    cur.execute("DROP SCHEMA pulse CASCADE")
    gone = subprocess.run(pulse_cmd("run", "--sink", "memory"), env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 5 and "is not set up" in gone.stderr, gone.stderr
    cur.execute("SELECT to_regnamespace('pulse')")
    assert cur.fetchone()[0] is None
