"""`make demo` end to end (the newcomer's first command), shortened."""

from __future__ import annotations

import os
import subprocess
from .pipeline_helpers import pulse_cmd



def test_demo_runs_the_whole_pipeline_and_cleans_up(services):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    out = subprocess.run(pulse_cmd("dev", "demo", "--rate", "50", "--seconds", "3"), env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for expected in ("pulse run (every configured destination: redis, bigquery, external)", "initial snapshot: done", "the live board",
                     "'signature_failures': 0", "engagement_events", "p99", "pulse run stopped (exit code 0)",
                     "demo slot pulse_demo dropped", "pulse verify", "bigquery: equal", "redis: equal",
                     "external: equal"):
        assert expected in text, f"{expected!r} missing from the demo's output: ...{text[-4000:]}"
    assert "'conflicts': 0" in text and "'order_violations': 0" in text
