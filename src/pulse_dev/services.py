"""Local development services: real PostgreSQL, Redis, Kafka and BigQuery emulator.

`make services` (`pulse dev up`) installs what is missing (Debian packages,
Maven Central jars, the PyPI emulator), starts each service on 127.0.0.1
under the project-local `.pulse/` folder, and writes `.pulse/services.env`.
It is idempotent: a service that is already up is left alone. Ports avoid the
standard ones (a system PostgreSQL on 5432 or Redis on 6379 keeps running);
when a preferred port is taken by something else, the next free one is used
and recorded in `.pulse/services.json`. `pulse dev down` stops exactly the
processes it started, by PID.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from pulse.errors import ServiceError
from pulse.log import get_logger

log = get_logger(__name__)

PG_OS_USER = "pulse-pg"
PG_ROLE = "pulse"
PG_DB = "pulse"
BQ_PROJECT = "pulse-local"
KAFKA_VERSION_FILE = "dev/kafka/pom.xml"

PREFERRED_PORTS = {
    "postgres": 54329,
    "redis": 63790,
    "kafka": 39092,
    "kafka_controller": 39093,
    "bigquery_rest": 19050,
    "bigquery_grpc": 19060,
}


@dataclass
class ServiceInfo:
    name: str
    version: str
    port: int
    data_dir: str
    log_file: str
    pid: int | None = None
    extra: dict[str, int | str] = field(default_factory=dict)


def project_root() -> Path:
    """The checkout holding `pyproject.toml` (services live under its `.pulse/`)."""
    env = os.environ.get("PULSE_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").exists() and (candidate / "dev" / "kafka").exists():
            return candidate
    pkg = Path(__file__).resolve()
    for candidate in pkg.parents:
        if (candidate / "pyproject.toml").exists():
            return candidate
    raise ServiceError("cannot find the Pulse checkout", hint="run from the repository or set PULSE_PROJECT_ROOT")


def state_dir() -> Path:
    return project_root() / ".pulse"


# -- small helpers -----------------------------------------------------------


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return not _port_open(port)


def _pick_port(preferred: int, taken: set[int]) -> int:
    port = preferred
    while port in taken or not _port_free(port):
        port += 1
        if port > preferred + 200:
            raise ServiceError(f"no free port near {preferred}", hint="free a port or stop other services")
    taken.add(port)
    return port


def _wait(predicate, what: str, timeout: float, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = ""
    if log_file and log_file.exists():
        tail = "\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
    raise ServiceError(f"{what} did not become ready within {timeout:.0f}s{tail}", hint=f"see {log_file}")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log.debug("run", cmd=" ".join(cmd))
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise ServiceError(
            f"missing system packages: {' '.join(packages)}",
            hint=f"sudo apt-get install -y {' '.join(packages)}",
        )
    log.info("apt.install", packages=" ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    stamp = Path("/var/lib/apt/periodic/pulse-update-stamp")
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            check=True, env=env, capture_output=True, text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"apt-get install {' '.join(packages)} failed: {exc.stderr[-2000:]}") from exc


def _detach(cmd: list[str], log_file: Path, env: dict[str, str] | None = None, user: str | None = None) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_file, "ab")
    preexec = None
    if user is not None:
        pw = pwd.getpwnam(user)

        def preexec() -> None:  # pragma: no cover - runs in the child
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    proc = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=env, preexec_fn=preexec,
    )
    fh.close()
    return proc.pid


def _stop_pid(pid: int | None, name: str, timeout: float = 20.0) -> None:
    if not _alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        log.warning("service.kill", service=name, pid=pid)
        os.kill(pid, signal.SIGKILL)


# -- PostgreSQL --------------------------------------------------------------


def _pg_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _pg_user() -> str | None:
    """The OS user PostgreSQL runs as: a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER])
    return PG_OS_USER


def _as_user(user: str | None, cmd: list[str]) -> list[str]:
    return cmd if user is None else ["runuser", "-u", user, "--", *cmd]


def _pg_data_root(user: str | None, home: Path) -> Path:
    """`.pulse/pg`, or a private folder elsewhere when the checkout is not traversable by the PG user."""
    preferred = home / "pg"
    if user is None:
        return preferred
    preferred.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(_as_user(user, ["test", "-x", str(home)]), capture_output=True).returncode == 0
    if ok:
        return preferred
    # The checkout's parents are closed to other users (e.g. a home folder):
    # keep the cluster in a per-checkout folder the PG user can reach.
    import hashlib

    key = project_root() if home == state_dir() else home  # the checkout's cluster keeps its folder
    digest = hashlib.sha1(str(key).encode()).hexdigest()[:10]
    alt = Path("/var/tmp") / f"pulse-pg-{digest}"
    (preferred / "LOCATION").write_text(str(alt) + "\n")
    return alt


def start_postgres(port: int, home: Path | None = None) -> ServiceInfo:
    """Start (initialising if needed) a cluster under `home` (default: the checkout's `.pulse/`)."""
    home = home or state_dir()
    bindir = _pg_bindir()
    if bindir is None:
        _apt_install("postgresql")
        bindir = _pg_bindir()
        if bindir is None:
            raise ServiceError("postgresql installed but initdb not found", hint="check /usr/lib/postgresql")
    user = _pg_user()
    root = _pg_data_root(user, home)
    data = root / "data"
    run_dir = root / "run"
    log_file = home / "logs" / "postgres.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pw_file = home / "pg-password"
    if not pw_file.exists():
        pw_file.write_text(secrets.token_urlsafe(18) + "\n")
        pw_file.chmod(0o600)
    password = pw_file.read_text().strip()

    root.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not log_file.exists():
        log_file.touch()
    if user is not None:
        _run(["chown", "-R", f"{user}:", str(root), str(log_file)])
        root.chmod(0o700)

    if not (data / "PG_VERSION").exists():
        boot_pw = root / "bootstrap-password"
        boot_pw.write_text(password + "\n")
        if user is not None:
            _run(["chown", f"{user}:", str(boot_pw)])
        _run(_as_user(user, [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                             f"--pwfile={boot_pw}", "-E", "UTF8", "--locale=C.UTF-8"]))
        boot_pw.unlink()
        conf = data / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write(
                "\n# --- Pulse local development settings ---\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {port}\n"
                f"unix_socket_directories = '{run_dir}'\n"
                "wal_level = logical\n"
                "max_replication_slots = 32\n"
                "max_wal_senders = 32\n"
                "max_connections = 200\n"
                "max_slot_wal_keep_size = 4GB\n"
                "logical_decoding_work_mem = 64MB\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                "shared_buffers = 256MB\n"
                "wal_sender_timeout = 60s\n"
                "timezone = 'UTC'\n"
            )
        with open(data / "pg_hba.conf", "w") as fh:
            fh.write(
                "local all all scram-sha-256\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
                "host replication all 127.0.0.1/32 scram-sha-256\n"
            )
    else:
        # Keep the recorded port authoritative if it moved.
        _set_pg_port(data / "postgresql.conf", port)

    pidfile = data / "postmaster.pid"
    if not (_alive(_read_pid(pidfile)) and _port_open(port)):
        _run(_as_user(user, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-w", "-t", "60", "start"]))
    _wait(lambda: _port_open(port), "postgres", 60, log_file)
    _pg_bootstrap(port, password)
    version = _run([str(bindir / "postgres"), "--version"]).stdout.split()[2]
    return ServiceInfo("postgres", version, port, str(data), str(log_file), _read_pid(pidfile),
                       {"bindir": str(bindir), "os_user": user or pwd.getpwuid(os.geteuid()).pw_name})


def _set_pg_port(conf: Path, port: int) -> None:
    lines = conf.read_text().splitlines()
    out = [ln for ln in lines if not ln.startswith("port = ")]
    out.append(f"port = {port}")
    conf.write_text("\n".join(out) + "\n")


def _pg_bootstrap(port: int, password: str) -> None:
    """Create the `pulse` role (LOGIN REPLICATION CREATEDB) and database."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=password, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_ROLE,))
        if cur.fetchone() is None:
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN REPLICATION CREATEDB PASSWORD %s").format(sql.Identifier(PG_ROLE)),
                (password,),
            )
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(PG_DB), sql.Identifier(PG_ROLE)))
    conn.close()


def stop_postgres(info: dict) -> None:
    data = Path(info["data_dir"])
    bindir = Path(info["extra"]["bindir"])
    user = info["extra"].get("os_user")
    if (data / "postmaster.pid").exists():
        run_as = user if os.geteuid() == 0 and user != "root" else None
        subprocess.run(_as_user(run_as, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


# -- Redis -------------------------------------------------------------------


def start_redis(port: int, home: Path | None = None) -> ServiceInfo:
    home = home or state_dir()
    server = shutil.which("redis-server")
    if server is None:
        _apt_install("redis-server")
        server = shutil.which("redis-server")
        if server is None:
            raise ServiceError("redis-server installed but not on PATH")
    data = home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log_file = home / "logs" / "redis.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pidfile = data / "redis.pid"
    if not (_alive(_read_pid(pidfile)) and _port_open(port)):
        _run([server, "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes",
              "--pidfile", str(pidfile), "--dir", str(data), "--logfile", str(log_file),
              "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes"])
        _wait(lambda: _port_open(port) and _alive(_read_pid(pidfile)), "redis", 30, log_file)
    version = _run([server, "--version"]).stdout.split()[2].removeprefix("v=")
    return ServiceInfo("redis", version, port, str(data), str(log_file), _read_pid(pidfile))


# -- Kafka (KRaft, jars from Maven Central) ----------------------------------


def _kafka_libs() -> Path:
    libs = state_dir() / "kafka" / "libs"
    pom = project_root() / KAFKA_VERSION_FILE
    stamp = libs / ".pom-sha"
    import hashlib

    want = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        _apt_install("maven")
        mvn = shutil.which("mvn") or "mvn"
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    log.info("kafka.resolve", pom=str(pom))
    try:
        _run([mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
              f"-DoutputDirectory={libs}", "-DincludeScope=runtime"])
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"resolving Kafka from Maven Central failed: {exc.stdout[-2000:]}{exc.stderr[-2000:]}") from exc
    stamp.write_text(want + "\n")
    return libs


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        _apt_install("openjdk-17-jre-headless")
        java = shutil.which("java") or "java"
    return java


def start_kafka(port: int, controller_port: int, home: Path | None = None) -> ServiceInfo:
    """Start a KRaft broker under `home` (default `.pulse/`); the jars are the checkout's either way."""
    libs = _kafka_libs()
    java = _java()
    home = home or state_dir()
    root = home / "kafka"
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    log_file = home / "logs" / "kafka.log"
    pidfile = root / "kafka.pid"
    props = root / "server.properties"
    log4j = root / "log4j2.properties"
    props.write_text(
        "process.roles=broker,controller\n"
        "node.id=1\n"
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}\n"
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n"
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n"
        "controller.listener.names=CONTROLLER\n"
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
        "inter.broker.listener.name=PLAINTEXT\n"
        f"log.dirs={data}\n"
        "num.partitions=4\n"
        "offsets.topic.replication.factor=1\n"
        "offsets.topic.num.partitions=8\n"
        "transaction.state.log.replication.factor=1\n"
        "transaction.state.log.min.isr=1\n"
        "share.coordinator.state.topic.replication.factor=1\n"
        "share.coordinator.state.topic.min.isr=1\n"
        "group.initial.rebalance.delay.ms=0\n"
        "auto.create.topics.enable=false\n"
    )
    log4j.write_text(
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = info\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
    )
    cp = f"{libs}/*"
    if not (data / "meta.properties").exists():
        cluster_id = _run([java, "-cp", cp, "kafka.tools.StorageTool", "random-uuid"]).stdout.strip().splitlines()[-1]
        _run([java, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)])
    if not (_alive(_read_pid(pidfile)) and _port_open(port)):
        pid = _detach(
            [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={log4j}",
             "-cp", cp, "kafka.Kafka", str(props)],
            home / "logs" / "kafka.stdout",
        )
        pidfile.write_text(f"{pid}\n")
        _wait(lambda: _port_open(port), "kafka", 90, log_file)
    jar = next(libs.glob("kafka_2.13-*.jar"))
    version = jar.stem.removeprefix("kafka_2.13-")
    return ServiceInfo("kafka", version, port, str(data), str(log_file), _read_pid(pidfile),
                       {"controller_port": controller_port})


# -- BigQuery emulator (bqemulator from PyPI, offline) -----------------------


def _bq_home() -> Path:
    """A project-local HOME holding DuckDB's spatial extension, so nothing is downloaded."""
    home = state_dir() / "bigquery" / "home"
    ext_dir = home / ".duckdb" / "extensions"
    try:
        import duckdb
        import duckdb_extension_spatial  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ServiceError(
            "the BigQuery emulator's packages are not installed",
            hint="pip install -e '.[dev]' (make venv does it)",
        ) from exc
    version = "v" + duckdb.__version__
    src = Path(duckdb_extension_spatial.__file__).parent / "extensions" / version / "spatial.duckdb_extension"
    if not src.exists():
        found = list(Path(duckdb_extension_spatial.__file__).parent.rglob("spatial.duckdb_extension"))
        if not found:
            raise ServiceError("duckdb-extension-spatial ships no spatial.duckdb_extension")
        src = found[0]
    target = ext_dir / version / "linux_amd64" / "spatial.duckdb_extension"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return home


def start_bigquery(rest_port: int, grpc_port: int, base: Path | None = None) -> ServiceInfo:
    """Start the emulator with its data under `base` (default `.pulse/`)."""
    home = _bq_home()
    root = (base or state_dir()) / "bigquery"
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    log_file = (base or state_dir()) / "logs" / "bigquery.log"
    pidfile = root / "bqemulator.pid"
    exe = Path(sys.executable).parent / "bqemulator"
    if not (_alive(_read_pid(pidfile)) and _port_open(rest_port)):
        env = dict(os.environ, HOME=str(home))
        pid = _detach([str(exe), "start", "--rest-host", "127.0.0.1", "--rest-port", str(rest_port),
                       "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port), "--persistent",
                       "--data-dir", str(data), "--project", BQ_PROJECT, "--log-format", "json",
                       "--log-level", "warning"], log_file, env=env)
        pidfile.write_text(f"{pid}\n")
        _wait(lambda: _port_open(rest_port) and _port_open(grpc_port), "bigquery emulator", 90, log_file)
    version = metadata.version("bqemulator")
    return ServiceInfo("bigquery", f"bqemulator {version}", rest_port, str(data), str(log_file),
                       _read_pid(pidfile), {"grpc_port": grpc_port})


# -- orchestration -----------------------------------------------------------

ALL = ("postgres", "redis", "kafka", "bigquery")


def _load_state() -> dict:
    path = state_dir() / "services.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def _save_state(state: dict) -> None:
    path = state_dir() / "services.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def _ports(state: dict) -> dict[str, int]:
    """Ports recorded earlier are kept (data folders refer to them); new ones are chosen free."""
    recorded = state.get("ports", {})
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for name, preferred in PREFERRED_PORTS.items():
        if name in recorded:
            ports[name] = recorded[name]
            taken.add(recorded[name])
    for name, preferred in PREFERRED_PORTS.items():
        if name not in ports:
            ports[name] = _pick_port(preferred, taken)
    return ports


def _ours_running(state: dict, name: str) -> bool:
    info = state.get("services", {}).get(name)
    return bool(info) and _alive(info.get("pid"))


# Tools the tests use besides the services (no daemon): `docker-compose config`
# validates docker-compose.yml offline (--no-install-recommends keeps the
# Docker engine packages out); Chromium drives `pulse board` headless
# (tests/integration/test_board_browser.py); promtool, from Debian's
# prometheus package, checks deploy/prometheus/alerts.yml. The tests never
# use the package's daemon; on a host with systemd Debian starts it on :9090
# (`systemctl disable --now prometheus` if that port is wanted).
TOOLS = {"docker-compose": "docker-compose", "chromium": "chromium", "promtool": "prometheus"}


def ensure_tools() -> None:
    missing = [pkg for exe, pkg in TOOLS.items() if shutil.which(exe) is None]
    if missing:
        _apt_install(*missing)


def up(only: tuple[str, ...] = ALL) -> dict[str, ServiceInfo]:
    """Start the named services (idempotently) and write `.pulse/services.env`."""
    state_dir().mkdir(parents=True, exist_ok=True)
    ensure_tools()
    state = _load_state()
    ports = state.get("ports", {})
    # A recorded port now held by a foreign process (ours is gone) is re-picked.
    for name, port in list(ports.items()):
        owner = name.split("_")[0] if name.startswith(("kafka", "bigquery")) else name
        if not _ours_running(state, owner) and not _port_free(port):
            del ports[name]
    state["ports"] = ports = _ports({"ports": ports})
    _save_state(state)
    started: dict[str, ServiceInfo] = {}
    for name in only:
        if name == "postgres":
            info = start_postgres(ports["postgres"])
        elif name == "redis":
            info = start_redis(ports["redis"])
        elif name == "kafka":
            info = start_kafka(ports["kafka"], ports["kafka_controller"])
        elif name == "bigquery":
            info = start_bigquery(ports["bigquery_rest"], ports["bigquery_grpc"])
        else:
            raise ServiceError(f"unknown service {name!r}", hint=f"choose from {', '.join(ALL)}")
        started[name] = info
        state.setdefault("services", {})[name] = asdict(info)
        _save_state(state)
    write_env(state)
    return started


def endpoints(state: dict | None = None) -> dict[str, str]:
    """The PULSE_ environment for the running services."""
    state = state if state is not None else _load_state()
    ports = state.get("ports", {})
    env: dict[str, str] = {}
    pw_file = state_dir() / "pg-password"
    if "postgres" in state.get("services", {}) and pw_file.exists():
        pw = pw_file.read_text().strip()
        env["PULSE_DATABASE_URL"] = f"postgresql://{PG_ROLE}:{pw}@127.0.0.1:{ports['postgres']}/{PG_DB}"
    if "redis" in state.get("services", {}):
        env["PULSE_REDIS_URL"] = f"redis://127.0.0.1:{ports['redis']}/0"
    if "kafka" in state.get("services", {}):
        env["PULSE_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{ports['kafka']}"
    if "bigquery" in state.get("services", {}):
        env["PULSE_BIGQUERY_PROJECT"] = BQ_PROJECT
        env["PULSE_BIGQUERY_ENDPOINT"] = f"http://127.0.0.1:{ports['bigquery_rest']}"
        env["PULSE_BIGQUERY__GRPC_ENDPOINT"] = f"127.0.0.1:{ports['bigquery_grpc']}"
    return env


def write_env(state: dict) -> Path:
    path = state_dir() / "services.env"
    lines = ["# Written by `make services` (pulse dev up). `source` it to point a shell at the local services."]
    lines += [f"export {k}='{v}'" for k, v in endpoints(state).items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def down(only: tuple[str, ...] = ALL) -> list[str]:
    """Stop what `up` started, by PID; returns the names stopped."""
    state = _load_state()
    stopped: list[str] = []
    for name in reversed(ALL):
        if name not in only:
            continue
        info = state.get("services", {}).get(name)
        if not info:
            continue
        if name == "postgres":
            stop_postgres(info)
        elif name == "redis":
            pid = _read_pid(Path(info["data_dir"]) / "redis.pid") or info.get("pid")
            _stop_pid(pid, name)
        else:
            _stop_pid(info.get("pid"), name)
        stopped.append(name)
        state["services"].pop(name, None)
    _save_state(state)
    write_env(state)
    return stopped


def status() -> list[dict]:
    """Each recorded service with whether its process is alive and its port answers."""
    state = _load_state()
    rows = []
    for name in ALL:
        info = state.get("services", {}).get(name)
        if not info:
            rows.append({"name": name, "running": False})
            continue
        pid = info.get("pid")
        # The daemons' own pidfiles are the truth (they rewrite them on restart).
        if name == "postgres":
            pid = _read_pid(Path(info["data_dir"]) / "postmaster.pid")
        elif name == "redis":
            pid = _read_pid(Path(info["data_dir"]) / "redis.pid") or pid
        elif name == "kafka":
            pid = _read_pid(state_dir() / "kafka" / "kafka.pid") or pid
        elif name == "bigquery":
            pid = _read_pid(state_dir() / "bigquery" / "bqemulator.pid") or pid
        rows.append({**info, "pid": pid, "running": _alive(pid) and _port_open(info["port"])})
    return rows
