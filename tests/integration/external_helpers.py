"""Helpers shared by the integration tests (external)."""

from __future__ import annotations

import base64
from collections import defaultdict

from pulse.config import Settings
from pulse.receiver import Receiver
from pulse.sinks.external.sink import sink_key
from pulse.sinks.external.outbox import Outbox

SECRET = "whsec_" + base64.b64encode(b"pulse-integration-test-secret-32b").decode()


FAST = {  # test-speed timings; the policy is the same as in production, only faster
    "retry_initial_s": 0.02, "retry_max_s": 0.25, "retry_after_max_s": 0.5, "connect_timeout_s": 1.0,
    "read_timeout_s": 1.0, "breaker_open_s": 0.3, "breaker_open_max_s": 1.0, "batch_max_age_s": 0.02,
    "poll_interval_s": 0.5,
}


def settings(db, rec: Receiver, **external) -> Settings:
    return Settings(database=db.config(heartbeat_interval_s=1.0, status_interval_s=1.0),
                    external={"url": rec.url, "secret": SECRET, **FAST, **external},
                    runtime={"sinks": ["external"]})


def outbox_for(db, name: str = "external") -> Outbox:
    cfg = db.config()
    return Outbox(db.url, cfg.state_schema, sink_key(cfg, name))


def outbox_rows(cur) -> int:
    """Events waiting in the PostgreSQL outbox (outbox = postgres)."""
    cur.execute("SELECT count(*) FROM pulse.external_outbox")
    return cur.fetchone()[0]


def source_ids(cur) -> set[int]:
    cur.execute("SELECT id FROM engagement_events")
    return {r[0] for r in cur.fetchall()}


def received_by_event(rec: Receiver) -> dict[int, set[str]]:
    """event_id -> the CloudEvent ids it arrived under."""
    out: dict[int, set[str]] = defaultdict(set)
    for item in rec.events():
        out[item["event"]["data"]["event_id"]].add(item["id"])
    return out
