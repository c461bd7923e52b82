"""Helpers shared by the integration tests (bigquery)."""

from __future__ import annotations

from datetime import datetime, timezone

from pulse.config import Settings
from pulse.model import EnrichedEvent, Position
from tests.factories import make_event


def ensure_emulator_running() -> None:
    from pulse_dev import services as dev

    rows = {r["name"]: r for r in dev.status()}
    if not rows.get("bigquery", {}).get("running"):
        dev.up(("bigquery",))


def bq_settings(scratch_db, services, dataset, spool, **bigquery) -> Settings:
    return Settings(
        database=scratch_db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
        runtime={"sinks": ["bigquery"]},
        bigquery={"project": services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), "dataset": dataset,
                  "endpoint": services["PULSE_BIGQUERY_ENDPOINT"],
                  "grpc_endpoint": services.get("PULSE_BIGQUERY__GRPC_ENDPOINT"),
                  "spool_dir": str(spool), "load_interval_s": 0.5, "merge_interval_s": 0.5,
                  "request_timeout_s": 20, **bigquery},
    )


def bq_table_rows(client, dataset) -> list | None:
    try:
        return list(client.query(
            f"SELECT event_id, content_type, length_seconds, duration_ms, device, engagement_seconds, "
            f"engagement_pct, op FROM `{dataset}.engagement_events`").result())
    except Exception:  # table not there yet / emulator restarting
        return None


# The oracle: MISSION.md's rules in SQL, evaluated by PostgreSQL on the exact numeric values.
# engagement_seconds = duration_ms / 1000 (NULL when NULL or negative); engagement_pct = that over
# length_seconds rounded to 2 decimals half away from zero (NULL when either is NULL, length <= 0).
EXPECTED_SQL = """
SELECT e.id, c.content_type, c.length_seconds, e.duration_ms, e.device,
       CASE WHEN e.duration_ms >= 0 THEN e.duration_ms::numeric / 1000 END,
       CASE WHEN e.duration_ms >= 0 AND c.length_seconds > 0
            THEN round(e.duration_ms::numeric / (1000 * c.length_seconds), 2) END
FROM engagement_events e LEFT JOIN content c ON c.id = e.content_id
"""


def source_rows(cur) -> dict[int, tuple]:
    cur.execute(EXPECTED_SQL)
    return {r[0]: r[1:] for r in cur.fetchall()}


def bq_converged(client, dataset, cur):
    """True when the table holds exactly the source ids, once each."""
    rows = bq_table_rows(client, dataset)
    if rows is None:
        return False
    ids = [r[0] for r in rows]
    return len(ids) == len(set(ids)) and set(ids) == set(source_rows(cur))


def bq_event(i: int, pos: Position, payload: str | None, op: str = "insert") -> EnrichedEvent:
    return make_event(i, pos, at=datetime.now(timezone.utc), op=op, content_id=None, duration_ms=1000,
                      user_id=None, event_type="play", device="web", raw_payload=payload, content_slug=None,
                      content_title=None, content_type=None, length_seconds=None, engagement_seconds=1.0,
                      engagement_pct=None, problems=("null_content_id",))
