"""Private instances of the local services, for tests that stop, restart or kill them.

The shared services (`make services`) serve every test and every session on
the machine at once: a test that restarts PostgreSQL or stops Kafka must
never touch them. These helpers start an instance of its own, with the same
code as `pulse dev up` (`pulse_dev.services.start_*`), under a fresh folder
and on free ports, and remove it afterwards. The PostgreSQL folder lives
under /var/tmp: pytest's tmp folders are closed to the PostgreSQL OS user
that `pulse dev up` runs the server as when we are root.

Used by the fault tests in tests/integration and by bench/soak.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pulse_dev import services as dev


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    return dev._port_open(port)


def _wait(predicate, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _home(prefix: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"pulse-{prefix}-", dir="/var/tmp"))
    home.chmod(0o711)  # traversable by the PostgreSQL OS user, listable by nobody else
    return home


class PrivatePostgres:
    """A PostgreSQL cluster of one test: `url` (the `pulse` role), `superuser_url`, restart/stop/start."""

    def __init__(self) -> None:
        self.home = _home("pg")
        self.port = free_port()
        info = dev.start_postgres(self.port, self.home)
        self.data = Path(info.data_dir)
        self.bindir = Path(str(info.extra["bindir"]))
        self.os_user = info.extra["os_user"] if os.geteuid() == 0 else None
        self.log_file = Path(info.log_file)
        password = (self.home / "pg-password").read_text().strip()
        self.url = f"postgresql://{dev.PG_ROLE}:{password}@127.0.0.1:{self.port}/{dev.PG_DB}"
        parts = urlsplit(self.url)
        self.superuser_url = urlunsplit(parts._replace(netloc=f"postgres:{password}@127.0.0.1:{self.port}",
                                                       path="/postgres"))

    def pg_ctl(self, *args: str, timeout: float = 180) -> None:
        # -l: the restarted postmaster must not inherit our pipes (run() would wait for them).
        cmd = dev._as_user(self.os_user, [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                                          str(self.log_file), *args])
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            raise AssertionError(f"pg_ctl {' '.join(args)} failed: {out.stdout}{out.stderr}\nserver log:\n{tail}")

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m MODE` (fast: clean shutdown; immediate: a crash, recovery at start)."""
        self.pg_ctl("-m", mode, "-w", "-t", "120", "restart")
        _wait(lambda: port_open(self.port), "postgres after restart", 60)

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "-t", "120", "stop")

    def start(self) -> None:
        self.pg_ctl("-w", "-t", "120", "start")

    def terminate_walsenders(self, slot: str) -> int:
        """`pg_terminate_backend` of the walsender streaming `slot`; returns how many were ended."""
        import psycopg2

        conn = psycopg2.connect(self.superuser_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                            "WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
                return sum(1 for (ok,) in cur.fetchall() if ok)
        finally:
            conn.close()

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.pg_ctl("-m", "immediate", "-w", "stop", timeout=60)
            except AssertionError:
                pass
        shutil.rmtree(self.home, ignore_errors=True)


class PrivateRedis:
    """A redis-server of one test (same flags as `pulse dev up`: AOF every second)."""

    def __init__(self) -> None:
        self.home = _home("redis")
        self.port = free_port()
        self.info = dev.start_redis(self.port, self.home)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.pidfile = Path(self.info.data_dir) / "redis.pid"

    def stop(self, sig: int = 15) -> None:
        """SIGTERM: a clean shutdown (AOF flushed). 9 is a crash: the AOF (fsync every second, as
        `pulse dev up` sets it) may lose up to a second of acknowledged writes."""
        pid = dev._read_pid(self.pidfile)
        if pid and dev._alive(pid):
            os.kill(pid, sig)
            _wait(lambda: not dev._alive(pid), "redis to die", 30)
        self.pidfile.unlink(missing_ok=True)

    def start(self) -> None:
        dev.start_redis(self.port, self.home)

    def close(self) -> None:
        dev._stop_pid(dev._read_pid(self.pidfile), "redis")
        shutil.rmtree(self.home, ignore_errors=True)


class PrivateKafka:
    """A KRaft broker of one test, from the jars `pulse dev up` resolved."""

    def __init__(self) -> None:
        self.home = _home("kafka")
        self.port, self.controller_port = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._start()

    def _start(self) -> None:
        info = dev.start_kafka(self.port, self.controller_port, self.home)
        self.pid = info.pid
        _wait(self._ready, "kafka to answer metadata", 120)

    def _ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
            return True
        except Exception:
            return False

    def stop(self, sig: int = 15) -> None:
        """SIGTERM (clean broker shutdown) by default; 9 for a crash."""
        if self.pid and dev._alive(self.pid):
            os.kill(self.pid, sig)
            _wait(lambda: not dev._alive(self.pid), "kafka to stop", 120)

    def start(self) -> None:
        self._start()

    def close(self) -> None:
        dev._stop_pid(self.pid, "kafka")
        shutil.rmtree(self.home, ignore_errors=True)


class PrivateBigQuery:
    """A BigQuery emulator of one test (persistent, so a restart keeps the tables)."""

    PROJECT = dev.BQ_PROJECT

    def __init__(self) -> None:
        self.home = _home("bq")
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.rest_port}"
        self.grpc_endpoint = f"127.0.0.1:{self.grpc_port}"
        self._start()

    def _start(self) -> None:
        self.pid = dev.start_bigquery(self.rest_port, self.grpc_port, self.home).pid

    def stop(self, sig: int = 15, grace_s: float = 120) -> None:
        """Stop the emulator with `sig`; SIGKILL after `grace_s` if it is still there.

        On SIGTERM its web server finishes the requests in flight first: a load
        job took it past 30 s once on a loaded machine (the kafka soak stopped
        on it).
        """
        if self.pid and dev._alive(self.pid):
            os.kill(self.pid, sig)
            try:
                _wait(lambda: not dev._alive(self.pid), "the emulator to die", grace_s)
            except AssertionError:
                print(f"the emulator ignored signal {sig} for {grace_s:.0f} s: SIGKILL", file=sys.stderr)
                os.kill(self.pid, signal.SIGKILL)
                _wait(lambda: not dev._alive(self.pid), "the emulator to die after SIGKILL", 30)

    def start(self) -> None:
        self._start()

    def env(self, dataset: str) -> dict[str, str]:
        return {"PULSE_BIGQUERY_PROJECT": self.PROJECT, "PULSE_BIGQUERY_ENDPOINT": self.endpoint,
                "PULSE_BIGQUERY__GRPC_ENDPOINT": self.grpc_endpoint, "PULSE_BIGQUERY_DATASET": dataset}

    def close(self) -> None:
        dev._stop_pid(self.pid, "bigquery")
        shutil.rmtree(self.home, ignore_errors=True)


# -- pytest fixtures (import them into a test module by name) ----------------

import pytest  # noqa: E402

from tests.conftest import ScratchDb, need, unique  # noqa: E402


def _started(cls):
    try:
        return cls()
    except Exception as exc:  # a service that cannot start: skip locally, fail in CI
        need(False, f"a private {cls.__name__} could not be started: {exc}")
        raise


@pytest.fixture
def private_pg():
    pg = _started(PrivatePostgres)
    yield pg
    pg.close()


@pytest.fixture
def private_scratch_db(private_pg) -> ScratchDb:
    """`scratch_db`, on a private cluster the test may restart."""
    from pulse.config import DatabaseConfig
    from pulse.schema import init_database

    import psycopg2
    from psycopg2 import sql

    from pulse_dev.scratch import with_database

    name = unique("pulse_t")
    admin = psycopg2.connect(private_pg.url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin.close()
    db = ScratchDb(name=name, url=with_database(private_pg.url, name), admin_url=private_pg.url,
                   slot=unique("slot"), publication=unique("pub"))
    init_database(DatabaseConfig(url=db.url, publication=db.publication))
    yield db  # the whole cluster (slots included) is removed by private_pg


@pytest.fixture
def private_redis():
    r = _started(PrivateRedis)
    yield r
    r.close()


@pytest.fixture
def private_kafka():
    k = _started(PrivateKafka)
    yield k
    k.close()


@pytest.fixture
def private_bigquery():
    b = _started(PrivateBigQuery)
    yield b
    b.close()
