"""/readyz follows the replication connection: not ready while PostgreSQL is down, ready again after.

`pulse run --sink memory --metrics-port P` streams from a PRIVATE PostgreSQL cluster (own data
folder under /var/tmp, own port, removed afterwards; the shared cluster is never stopped). The
test stops that cluster (`pg_ctl stop -m fast`), polls /readyz until it answers 503 with the
probe's reason while /healthz still answers 200, starts the cluster again and polls until /readyz
is 200 and a new row is counted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import need
from tests.integration.pipeline_helpers import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class PrivatePostgres:
    """A throwaway cluster with wal_level=logical on its own port (run as services.py's OS user when root)."""

    def __init__(self) -> None:
        from pulse_dev import services as dev

        self.bindir = dev._pg_bindir()
        need(self.bindir is not None, "PostgreSQL server binaries (initdb): apt-get install postgresql")
        self.user = dev._pg_user()  # PostgreSQL refuses to run as root
        self._as_user = dev._as_user
        self.root = Path(tempfile.mkdtemp(prefix="pulse-health-pg-", dir="/var/tmp"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self.url = f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        subprocess.run(self._as_user(self.user, list(cmd)), check=True, capture_output=True, text=True)

    def init(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            subprocess.run(["chown", "-R", f"{self.user}:", str(self.root)], check=True)
        self.root.chmod(0o700)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                     f"unix_socket_directories = '{self.root}'\nwal_level = logical\n"
                     "max_replication_slots = 4\nmax_wal_senders = 4\nshared_buffers = 32MB\nfsync = off\n")

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._as_user(self.user, [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                                                     "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg():
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.remove()


def _insert_event(url: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                    "VALUES (gen_random_uuid(), %s, 'Health', 'podcast', 60, now()) RETURNING id", (secrets.token_hex(6),))
        content_id = cur.fetchone()[0]
        cur.execute("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, device, "
                    "raw_payload) VALUES (%s, gen_random_uuid(), 'play', now(), 'ios', '{}')", (content_id,))
    conn.close()


def _events_in(port: int) -> float:
    code, body = _get(port, "/metrics")
    if code != 200:
        return -1.0
    for line in body.decode().splitlines():
        if line.startswith("pulse_events_in_total "):
            return float(line.split()[1])
    return -1.0


def test_readyz_follows_postgres(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    from pulse.config import DatabaseConfig
    from pulse.schema import init_database

    init_database(DatabaseConfig(url=private_pg.url, publication="pulse_health"))
    port = _free_port()
    env = {**os.environ, "PULSE_DATABASE_URL": private_pg.url, "PULSE_SLOT": "pulse_health",
           "PULSE_PUBLICATION": "pulse_health", "PULSE_RUNTIME__METRICS_PORT": str(port),
           "PULSE_LOG__FORMAT": "json"}
    for key in ("PULSE_REDIS_URL", "PULSE_BIGQUERY_PROJECT", "PULSE_EXTERNAL_URL", "PULSE_KAFKA_BOOTSTRAP"):
        env.pop(key, None)
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pulse"), "run", "--sink", "memory"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            return _get(port, "/readyz")[0] == 200

        wait_for(ready, 60, "/readyz 200 while PostgreSQL is up", interval=0.2)
        body = json.loads(_get(port, "/readyz")[1])
        assert body["checks"]["replication"]["ok"] is True
        _insert_event(private_pg.url)
        wait_for(lambda: _events_in(port) >= 1, 30, "the first event counted", interval=0.2)

        private_pg.stop()
        wait_for(lambda: _get(port, "/readyz")[0] == 503, 30, "/readyz 503 after PostgreSQL stopped", interval=0.2)
        code, body = _get(port, "/readyz")
        check = json.loads(body)["checks"]["replication"]
        assert check["ok"] is False and "disconnected" in check["detail"], check
        assert _get(port, "/healthz") == (200, b"ok\n")  # alive: nothing to restart
        assert proc.poll() is None

        private_pg.start()
        wait_for(ready, 90, "/readyz 200 after PostgreSQL is back", interval=0.2)
        before = _events_in(port)
        _insert_event(private_pg.url)
        wait_for(lambda: _events_in(port) > before, 30, "an event after the restart counted", interval=0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
