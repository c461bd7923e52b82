"""`pulse status` as a health probe: exit 1 when the slot is missing or inactive or the report is stale.

The oracle is the database itself: each state is set up by hand (a slot
created or held by a plain replication connection, a `runtime_status` row
with a chosen age), not by the pipeline whose health is judged.
"""

from __future__ import annotations

import json
import subprocess

import psycopg2
import psycopg2.extras
from psycopg2.extras import Json

from .pipeline_helpers import wait_for
from .pipeline_helpers import pulse_cmd, pulse_env


def _status(db, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(pulse_cmd("status", *args), env=pulse_env(db), capture_output=True, text=True,
                          timeout=60)


def _report(cur, slot: str, age_s: float) -> None:
    doc = {"pid": 4242, "events_in": 7, "pending_txns": 0, "lag_seconds": 0.0, "sinks": {}}
    cur.execute(
        "INSERT INTO pulse.runtime_status (slot_name, updated_at, doc) "
        "VALUES (%s, now() - make_interval(secs => %s), %s) "
        "ON CONFLICT (slot_name) DO UPDATE SET updated_at = EXCLUDED.updated_at, doc = EXCLUDED.doc",
        (slot, age_s, Json(doc)),
    )


def test_status_exits_1_without_a_slot_and_0_when_streaming_and_fresh(scratch_db):
    cur = scratch_db.connect().cursor()
    # 1. Nothing yet: no slot, no report.
    none = _status(scratch_db, "--json")
    assert none.returncode == 1, none.stderr
    doc = json.loads(none.stdout)
    assert doc["healthy"] is False
    assert any("does not exist" in p for p in doc["problems"])
    human = _status(scratch_db)
    assert human.returncode == 1 and "unhealthy" in human.stdout and "does not exist" in human.stdout

    # 2. A slot nobody reads, and a report five minutes old.
    cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (scratch_db.slot,))
    _report(cur, scratch_db.slot, 300)
    stale = _status(scratch_db, "--json")
    assert stale.returncode == 1
    problems = json.loads(stale.stdout)["problems"]
    assert any("not active" in p for p in problems)
    assert any("stale" in p for p in problems)

    # 3. A reader attached and a fresh report: healthy, exit 0; the same report is stale for a 0 s threshold.
    repl = psycopg2.connect(scratch_db.url, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        rcur = repl.cursor()
        rcur.start_replication(slot_name=scratch_db.slot, decode=False,
                               options={"proto_version": "1", "publication_names": scratch_db.publication})

        def active() -> bool:
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (scratch_db.slot,))
            return cur.fetchone()[0]

        wait_for(active, 30, "the slot to become active")
        _report(cur, scratch_db.slot, 1)
        ok = _status(scratch_db, "--json", "--stale-after", "60")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)["problems"] == []
        human = _status(scratch_db, "--stale-after", "60")
        assert human.returncode == 0 and "unhealthy" not in human.stdout
        strict = _status(scratch_db, "--json", "--stale-after", "0.5")
        assert strict.returncode == 1
        assert [p for p in json.loads(strict.stdout)["problems"] if "stale" in p]
    finally:
        repl.close()
