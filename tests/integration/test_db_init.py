"""`pulse db init` from the command line: idempotent, and the opt-in replica identity."""

from __future__ import annotations

import subprocess
from .pipeline_helpers import pulse_cmd, pulse_env



def _identity(cur) -> str:
    cur.execute("SELECT relreplident FROM pg_class WHERE oid = 'engagement_events'::regclass")
    return cur.fetchone()[0]


def test_db_init_sets_replica_identity_full_only_when_asked(scratch_db):
    cur = scratch_db.connect().cursor()
    env = pulse_env(scratch_db)
    plain = subprocess.run(pulse_cmd("db", "init"), env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert _identity(cur) == "d" and "replica identity" not in plain.stdout
    full = subprocess.run(pulse_cmd("db", "init", "--replica-identity-full"), env=env, capture_output=True, text=True,
                          timeout=120)
    assert full.returncode == 0, full.stderr
    assert _identity(cur) == "f" and "replica identity FULL" in full.stdout
    again = subprocess.run(pulse_cmd("db", "init"), env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and _identity(cur) == "f"  # never undone by a plain init
