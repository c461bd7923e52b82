"""A fresh install with one extra: `pip install 'pulse-cdc[redis]'`, then `pulse run --sink redis` streams.

The venv is made in a temporary directory without pip (the test's own pip
installs into it with `--python`, which skips bootstrapping pip: 21-43 s
on the shared build machine, by its load; mostly unpacking wheels and the C build).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import pulse
from pulse.sinks.redis.board import Keys

from .pipeline_helpers import insert_content, insert_events, wait_for
from .pipeline_helpers import pulse_env, slot_streaming

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis_only_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("redis-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--disable-pip-version-check", "-c", "constraints.txt", ".[redis]"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return venv


def _py(venv: Path, code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60,
                          **kw)


def test_the_redis_extra_alone_installs_a_working_pulse(redis_only_venv, scratch_db, services):
    venv = redis_only_venv
    pulse_bin = str(venv / "bin" / "pulse")
    # What is (not) installed: the redis extra, the core's pyarrow; no BigQuery, Kafka, httpx or Faker.
    present = _py(venv, "import importlib.metadata as m, json\n"
                        "def has(d):\n"
                        "    try:\n        m.version(d)\n        return True\n"
                        "    except m.PackageNotFoundError:\n        return False\n"
                        "print(json.dumps({d: has(d) for d in ('redis', 'pyarrow', 'numpy', 'google-cloud-bigquery', "
                        "'confluent-kafka', 'httpx', 'Faker')}))")
    assert json.loads(present.stdout) == {"redis": True, "pyarrow": True, "numpy": True, "google-cloud-bigquery": False,
                                          "confluent-kafka": False, "httpx": False, "Faker": False}, present.stderr
    # One version, written once: the installed metadata, `pulse --version` and the source agree.
    version = subprocess.run([pulse_bin, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"pulse {pulse.__version__}", version.stderr
    meta = _py(venv, "import importlib.metadata as m; print(m.version('pulse-cdc'))")
    assert meta.stdout.strip() == pulse.__version__
    imported = _py(venv, "import pulse.runtime.pipeline, pulse.sinks.redis.sink")
    assert imported.returncode == 0, imported.stderr
    # `pulse board`'s page ships in the package (package data), byte for byte.
    assets = ("index.html", "board.css", "board.js")
    shipped = _py(venv, "import json; from pulse.board.server import asset\n"
                        f"print(json.dumps({{n: asset(n).decode() for n in {assets!r}}}))")
    assert shipped.returncode == 0, shipped.stderr
    static = Path(pulse.__file__).parent / "board" / "static"
    assert json.loads(shipped.stdout) == {n: (static / n).read_text() for n in assets}

    env = pulse_env(scratch_db, PULSE_REDIS_URL=services["PULSE_REDIS_URL"],
                    PULSE_REDIS_PREFIX=f"pkg_{uuid.uuid4().hex[:8]}:")
    # The generator is an extra: a clear error naming it, exit 3 (configuration).
    gen = subprocess.run([pulse_bin, "generate", "--count", "5"], env=env, capture_output=True, text=True, timeout=60)
    assert gen.returncode == 3, gen.stderr
    assert "pulse-cdc[generator]" in gen.stderr and "Traceback" not in gen.stderr

    import redis

    client = redis.Redis.from_url(services["PULSE_REDIS_URL"])
    keys = Keys(env["PULSE_REDIS_PREFIX"], 600)
    cur = scratch_db.connect().cursor()
    proc = subprocess.Popen([pulse_bin, "run", "--sink", "redis"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: slot_streaming(cur, scratch_db.slot) or proc.poll() is not None, 60, "replication start")
        assert proc.poll() is None, proc.stderr.read()
        [c1] = insert_content(cur, 1)
        insert_events(cur, [c1], 12)
        counted = wait_for(lambda: (client.zscore(keys.events, str(c1)) or 0) >= 12 or None, 30,
                           "12 events counted on the Redis board")
        assert counted
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        left = list(client.scan_iter(match=env["PULSE_REDIS_PREFIX"] + "*"))
        if left:
            client.delete(*left)
        client.close()
    assert proc.returncode == 0, proc.stderr.read()
