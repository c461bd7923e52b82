"""`pulse doctor` against the real PostgreSQL: facts gathered from a scratch database.

The fixes doctor prints are executed here where the test role may run them,
which proves the quoting and the SQL, not just the wording. A lost slot cannot
be produced without superuser rights (ALTER SYSTEM), so that branch is covered
by the unit tests over facts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from psycopg2 import sql

from pulse.doctor import gather_facts, overall, run

PULSE = Path(sys.executable).parent / "pulse"


def _by_name(results):
    return {r.name: r for r in results}


def _sql_of(fix: str) -> str:
    """The statements of a fix, without its comment lines."""
    return "\n".join(line for line in fix.splitlines() if not line.startswith("--"))


def _execute(scratch_db, statement, params=()) -> list[tuple]:
    """Run one statement in autocommit (psycopg2's `with conn` would wrap it in a transaction)."""
    conn = scratch_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _insert_event(cur) -> None:
    content_id = str(uuid.uuid4())
    cur.execute(
        "INSERT INTO public.content (id, slug, title, content_type, length_seconds, publish_ts) "
        "VALUES (%s, %s, 'Doctor test', 'video', 120, now())",
        (content_id, content_id),
    )
    cur.execute(
        "INSERT INTO public.engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device) "
        "VALUES (%s, %s, 'play', now(), 1000, 'web')",
        (content_id, str(uuid.uuid4())),
    )


def test_prepared_scratch_database_passes(scratch_db):
    results = _by_name(run(scratch_db.config()))
    for name in ("server_version", "wal_level", "replication_slots", "wal_senders", "role_replication",
                 "select.content", "select.engagement_events", "state_schema", "publication_rights",
                 "publication", "slot", "replication_connection"):
        assert results[name].status == "ok", results[name]
    assert "content" in results["publication"].detail and "engagement_events" in results["publication"].detail
    # The brief's tables have primary keys and DEFAULT identity: a warning, not an error.
    assert results["replica_identity.engagement_events"].status == "warn"
    assert overall(list(results.values())) == "warn"


def test_facts_come_from_the_catalog(scratch_db):
    facts = gather_facts(scratch_db.config())
    assert facts["database"] == scratch_db.name
    assert facts["settings"]["wal_level"] == "logical"
    assert facts["server"]["version_num"] >= 140000
    assert facts["tables"]["engagement_events"]["has_primary_key"] is True
    assert facts["tables"]["engagement_events"]["replica_identity"] == "default"
    assert "raw_payload" in facts["tables"]["engagement_events"]["columns"]
    assert set(facts["publication"]["tables"]) == {"content", "engagement_events"}
    assert facts["replication_connection"]["ok"] is True
    assert facts["replication_connection"]["database"] == scratch_db.name


def test_missing_publication_is_an_error_whose_fix_creates_it(scratch_db):
    cfg = scratch_db.config().model_copy(update={"publication": "pub_" + uuid.uuid4().hex[:10]})
    results = _by_name(run(cfg))
    pub = results["publication"]
    assert pub.status == "error"
    assert "CREATE PUBLICATION" in pub.fix
    assert results["publication_rights"].status == "ok"  # the test role owns the scratch tables

    # The printed fix runs as printed and cures the problem.
    _execute(scratch_db, _sql_of(pub.fix))
    assert _by_name(run(cfg))["publication"].status == "ok"


def test_publication_missing_a_table_gets_a_working_alter(scratch_db):
    _execute(scratch_db, sql.SQL("ALTER PUBLICATION {} DROP TABLE public.content").format(
        sql.Identifier(scratch_db.publication)))
    pub = _by_name(run(scratch_db.config()))["publication"]
    assert pub.status == "error" and "public.content" in pub.detail
    _execute(scratch_db, _sql_of(pub.fix))
    assert _by_name(run(scratch_db.config()))["publication"].status == "ok"


def test_replica_identity_changes_are_seen(scratch_db):
    cfg = scratch_db.config()
    before = _by_name(run(cfg))["replica_identity.engagement_events"]
    assert before.status == "warn"
    _execute(scratch_db, before.fix)
    assert _by_name(run(cfg))["replica_identity.engagement_events"].status == "ok"
    _execute(scratch_db, "ALTER TABLE public.content REPLICA IDENTITY NOTHING")
    assert _by_name(run(cfg))["replica_identity.content"].status == "error"


def test_existing_slot_is_reported_with_its_lag(scratch_db):
    cfg = scratch_db.config()
    conn = scratch_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (scratch_db.slot,))
            for _ in range(20):
                _insert_event(cur)  # autocommit: each insert is committed, so WAL is written
            cur.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (scratch_db.slot,),
            )
            lag_before = cur.fetchone()[0]
    finally:
        conn.close()
    assert lag_before > 0
    results = _by_name(run(cfg))
    slot = results["slot"]
    assert slot.status == "ok", slot
    assert scratch_db.slot in slot.detail and "lag" in slot.detail
    assert slot.data["wal_status"] == "reserved"
    assert slot.data["database"] == scratch_db.name
    # Measured after the insertions, so at least what the test saw (doctor's session adds none).
    assert slot.data["lag_bytes"] >= lag_before
    assert results["replication_slots"].data["used"] >= 1

    # Consuming the changes moves the slot forward: the lag doctor reports shrinks.
    consumed = _execute(
        scratch_db,
        "SELECT count(*) FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, "
        "'proto_version', '1', 'publication_names', %s)",
        (scratch_db.slot, scratch_db.publication),
    )
    assert consumed[0][0] >= 40 * 3  # 40 single-insert transactions: Begin, Insert, Commit each
    after = _by_name(run(cfg))["slot"].data
    # Compared as LSNs, not as lag: other tests writing WAL concurrently would make lag flaky.
    assert _lsn(after["confirmed_flush_lsn"]) > _lsn(slot.data["confirmed_flush_lsn"])


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def test_registered_slot_that_is_gone_is_reported_lost(scratch_db):
    # What Pulse records when it creates its slot; the slot itself was never created (or was dropped).
    _execute(scratch_db, "INSERT INTO pulse.slot_registry (slot_name, publication) VALUES (%s, %s)",
             (scratch_db.slot, scratch_db.publication))
    slot = _by_name(run(scratch_db.config()))["slot"]
    assert slot.status == "error" and "missed" in slot.detail
    assert "pulse backfill" in slot.fix
    _execute(scratch_db, _sql_of(slot.fix))  # the operator acknowledges the loss (after backfilling)
    assert _by_name(run(scratch_db.config()))["slot"].status == "ok"


def test_slot_with_another_plugin_is_an_error(scratch_db):
    _execute(scratch_db, "SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (scratch_db.slot,))
    slot = _by_name(run(scratch_db.config()))["slot"]
    assert slot.status == "error" and "test_decoding" in slot.detail


def test_unreachable_database_is_one_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    from pulse.config import DatabaseConfig

    results = run(DatabaseConfig(url=f"postgresql://pulse:secret@127.0.0.1:{port}/x"))
    assert [r.name for r in results] == ["connection"]
    assert results[0].status == "error"
    assert "secret" not in results[0].detail


def _pulse(args, scratch_db, **env):
    return subprocess.run(
        [str(PULSE), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PULSE_DATABASE_URL": scratch_db.url, "PULSE_SLOT": scratch_db.slot,
             "PULSE_PUBLICATION": scratch_db.publication, **env},
    )


def test_cli_exit_codes_and_output(scratch_db):
    ok = _pulse(["doctor"], scratch_db)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "wal_level" in ok.stdout and "publication" in ok.stdout
    assert "0 error(s)" in ok.stdout
    assert 'ALTER TABLE "public"."engagement_events" REPLICA IDENTITY FULL;' in ok.stdout
    # The password of the URL never reaches the output.
    password = scratch_db.url.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    assert password and password not in ok.stdout + ok.stderr

    bad = _pulse(["doctor", "--json", "--publication", "nope_" + uuid.uuid4().hex[:8]], scratch_db)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["status"] == "error"
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["publication"]["status"] == "error"
    assert "CREATE PUBLICATION" in checks["publication"]["fix"]
    assert checks["wal_level"]["status"] == "ok"
