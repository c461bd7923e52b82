"""What the board did not count shows in `pulse status`."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone

from pulse.runtime.pipeline import Pipeline
from pulse.sinks.redis.sink import RedisSink

from .pipeline_helpers import Running, insert_content, insert_events, settings_for, wait_for
from .pipeline_helpers import pulse_cmd, pulse_env
from .redis_helpers import redis_config


def test_late_and_future_events_are_counted_in_pulse_status(scratch_db, services, rprefix):
    prefix, _client = rprefix
    cur = scratch_db.connect().cursor()
    sink = RedisSink(redis_config(services["PULSE_REDIS_URL"], prefix))
    now = datetime.now(timezone.utc)
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        [c1] = insert_content(cur, 1)
        insert_events(cur, [c1], 3, event_ts=now - timedelta(minutes=30))  # older than the window
        insert_events(cur, [c1], 2, event_ts=now + timedelta(hours=2))  # beyond the allowed skew
        insert_events(cur, [c1], 4, event_ts=now)

        def reported() -> dict | None:
            out = subprocess.run(pulse_cmd("status", "--json"), env=pulse_env(scratch_db), capture_output=True,
                                 text=True)
            if out.returncode != 0:  # not healthy yet (no report in the first seconds)
                return None
            runtime = json.loads(out.stdout)["runtime"]
            details = runtime and runtime["sinks"]["redis"]["details"]
            return details if details and details["not counted"]["late"] >= 3 else None

        details = wait_for(reported, 30, "pulse status to show the late events")
    assert details["not counted"] == {"late": 3, "future": 2, "uncorrectable": 0}
