"""`pulse top --once` against a real Redis board holding Rich markup in its source strings."""

from __future__ import annotations

import os
import subprocess
import uuid

from pulse.sinks.redis.board import Keys
from .pipeline_helpers import pulse_cmd



def test_pulse_top_shows_a_device_named_like_markup(services):
    import redis

    prefix = f"pulse_t_{uuid.uuid4().hex[:8]}:"
    keys = Keys(prefix, 600)
    client = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    try:
        # Written by hand, as the sink would hold them: the oracle is these strings.
        client.zadd(keys.top, {"c1": 12.5})
        client.zadd(keys.top_type("video"), {"c1": 12.5})
        client.hset(keys.content("c1"), mapping={"title": "[bold]Episode[/", "content_type": "video"})
        client.zadd(keys.events, {"c1": 3})
        client.zadd(keys.devices, {"[/]": 3})
        client.zadd(keys.event_types, {"play": 3})
        proc = subprocess.run(pulse_cmd("top", "--once", "--prefix", prefix),
                              env={**os.environ, "PULSE_REDIS_URL": services["PULSE_REDIS_URL"], "COLUMNS": "200"},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "[/]" in proc.stdout
        assert "[bold]Episode[/" in proc.stdout
    finally:
        keys_left = list(client.scan_iter(match=prefix + "*"))
        if keys_left:
            client.delete(*keys_left)
        client.close()
