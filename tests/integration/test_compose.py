"""docker-compose.yml, validated without a Docker engine.

No Docker engine runs on the build machines, so this checks the file the way
an engine would read it: `docker-compose config` (Debian's docker-compose
package, v1.29, parses and interpolates offline) must accept it, and the
resolved configuration must hold what docs/deploy.md promises:

- every Pulse container runs a `pulse` verb that exists in this CLI, with
  options the verb accepts (parsed by the real Click command, not a regex);
- every long-running service has a health check, every other one is a
  one-shot that something waits for with `service_completed_successfully`;
- every published port binds 127.0.0.1;
- every Pulse container gets the same PULSE_ environment, and that
  environment loads into Pulse's settings (no unknown key, a valid secret);
- Kafka runs in KRaft mode, kafka-init makes the topics Pulse is configured
  for (partitions, a compacted content topic), PostgreSQL has wal_level=logical,
  the BigQuery spool is one volume shared by its writer and the uploader;
- no secret has a default in the file: each is `${VAR:?message}`, the file is
  rejected without it, and `docker/compose-env.py` (`make compose-env`)
  generates every one of them into a git-ignored `.env`;
- Redis requires a password that never appears on a command line
  (docker/redis/start.sh, run here with the real redis-server), and only the
  receiver gets the receiver's control token.

The health-check script the images run (docker/healthcheck.py) is exercised
here too. Without docker-compose this skips locally and fails under CI=true
(`apt-get install docker-compose`).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
COMPOSE_ENV = ROOT / "docker" / "compose-env.py"
REDIS_START = ROOT / "docker" / "redis" / "start.sh"

PULSE_IMAGE = "pulse-cdc:local"

# Verbs the compose file may use before they exist in the CLI, each with why.
# Empty today: every verb the file runs is implemented. An entry whose verb
# has landed fails `test_planned_verbs_are_not_implemented_yet`, so this list
# never claims something is missing when it is not.
PLANNED: dict[str, str] = {}

EXPECTED_SERVICES = {
    "postgres", "redis", "kafka", "kafka-init", "bigquery", "receiver", "db-init",
    "generator", "producer", "consumer-redis", "consumer-external", "consumer-bigquery", "uploader",
}
# Started only with `--profile monitoring` (docker-compose 1.29's `config` lists them anyway).
MONITORING = {"prometheus", "grafana"}
ONE_SHOTS = {"kafka-init", "db-init"}
PULSE_WORKERS = {"generator", "producer", "consumer-redis", "consumer-external", "consumer-bigquery", "uploader"}

# Variables the file interpolates; unset so the test sees the documented defaults,
# whatever the shell running it exports.
INTERPOLATED = re.compile(r"^(PULSE_|POSTGRES_)")


def _compose_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not INTERPOLATED.match(k)}


def _load_compose_env_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compose_env", COMPOSE_ENV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ENV_DIR = Path(tempfile.mkdtemp(prefix="pulse-compose-env-"))
atexit.register(shutil.rmtree, _ENV_DIR, True)
GENERATED_ENV = _ENV_DIR / ".env"  # what `make compose-env` writes, generated once for this module


def _generated_env() -> Path:
    if not GENERATED_ENV.exists():
        subprocess.run([sys.executable, str(COMPOSE_ENV), "--path", str(GENERATED_ENV)], check=True,
                       capture_output=True, timeout=60)
    return GENERATED_ENV


def _env_values(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _compose(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess:
    """`docker-compose config`, reading the secrets from `env_file` (default: a freshly generated .env).

    `--env-file` also keeps a developer's own `.env` in the checkout out of the test.
    """
    exe = shutil.which("docker-compose")
    need(exe is not None, "docker-compose (apt-get install docker-compose)")
    if env_file is None:
        env_file = _generated_env()
    return subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", str(env_file),
         "config", *args],
        cwd=ROOT, env=_compose_env(), capture_output=True, text=True, timeout=120,
    )


def _yaml_to_obj(text: str):
    """PyYAML if this interpreter has it, else the interpreter docker-compose runs on (it needs PyYAML)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        exe = shutil.which("docker-compose")
        assert exe is not None
        first = Path(exe).read_text(errors="replace").splitlines()[0]
        interpreter = first[2:].strip().split() if first.startswith("#!") else [sys.executable]
        out = subprocess.run(
            [*interpreter, "-c", "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
            input=text, capture_output=True, text=True, timeout=60, check=True,
        )
        return json.loads(out.stdout)
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def config() -> dict:
    proc = _compose()
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return _yaml_to_obj(proc.stdout)


@pytest.fixture(scope="module")
def raw_config() -> dict:
    """The file before interpolation (YAML anchors and merge keys resolved)."""
    return _yaml_to_obj(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def svcs(config) -> dict[str, dict]:
    return config["services"]


@pytest.fixture(scope="module")
def cli():
    import typer

    from pulse.cli.main import app

    return typer.main.get_command(app)


def _is_pulse(svc: dict) -> bool:
    return svc.get("image") == PULSE_IMAGE


def _command(svc: dict) -> list[str]:
    cmd = svc.get("command")
    assert isinstance(cmd, list), f"command must be an exec-form list, got {cmd!r}"
    return [str(c) for c in cmd]


def _port_entries(svc: dict) -> list[tuple[str | None, str]]:
    """(host_ip, text) of each published port, in the short (v1) or long (v2) form."""
    out = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip"), json.dumps(port)))
            continue
        text = str(port)
        parts = text.split("/")[0].split(":")
        out.append((parts[0] if len(parts) == 3 else None, text))
    return out


# -- the file as a whole ------------------------------------------------------------


def test_docker_compose_config_accepts_the_file_quietly():
    proc = _compose("-q")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr.upper(), proc.stderr


def test_the_services_of_the_design(svcs):
    assert set(svcs) == EXPECTED_SERVICES | MONITORING


def test_prometheus_and_grafana_start_only_with_the_monitoring_profile(svcs):
    for name in MONITORING:
        assert svcs[name].get("profiles") == ["monitoring"], name
    for name in EXPECTED_SERVICES:
        assert not svcs[name].get("profiles"), f"{name} must start with a plain `docker compose up`"
    # Every file they mount is in the repository (the rules, the scrape config, the dashboard).
    for name in MONITORING:
        for volume in svcs[name].get("volumes") or []:
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source.startswith(("/", ".")):
                assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
    config = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    for worker in ("producer", "consumer-redis", "consumer-external", "consumer-bigquery"):
        assert f"{worker}:9464" in config, f"prometheus.yml does not scrape {worker}"


# -- every Pulse container runs a real `pulse` command ------------------------------


def test_pulse_containers_are_the_pulse_image_built_from_the_dockerfile(svcs):
    pulse = {name for name, svc in svcs.items() if _is_pulse(svc)}
    assert pulse == PULSE_WORKERS | {"db-init", "receiver"}
    for name in pulse:
        build = svcs[name].get("build")
        assert build and build.get("dockerfile") == "Dockerfile", name
        assert Path(build["context"]).resolve() == ROOT, name
        assert "entrypoint" not in svcs[name], f"{name}: the image's ENTRYPOINT is `pulse`"


def test_every_pulse_command_is_a_verb_of_this_cli_with_options_it_accepts(svcs, cli):
    import click

    checked = []
    for name, svc in sorted(svcs.items()):
        if not _is_pulse(svc):
            continue
        argv = _command(svc)
        assert argv and not argv[0].startswith("-"), f"{name}: command must start with a verb: {argv}"
        if argv[0] in PLANNED:
            assert argv[0] not in cli.commands
            continue
        cmd, path, rest = cli, ["pulse"], list(argv)
        while isinstance(cmd, click.Group):
            assert rest, f"{name}: `{' '.join(path)}` needs a sub-command"
            sub = cmd.commands.get(rest[0])
            assert sub is not None, (
                f"{name}: `{' '.join(path)} {rest[0]}` is not a command of this CLI "
                f"(has {sorted(cmd.commands)}); add it to PLANNED only if it is really coming"
            )
            cmd, path, rest = sub, path + [rest.pop(0)], rest
        # Parse exactly as `pulse` would (types, ranges, required options), without running it.
        try:
            cmd.make_context(" ".join(path), list(rest))
        except click.ClickException as exc:
            pytest.fail(f"{name}: `{' '.join(path + rest)}` is rejected by the CLI: {exc.format_message()}")
        checked.append(name)
    assert set(checked) == PULSE_WORKERS | {"db-init", "receiver"}


def test_planned_verbs_are_not_implemented_yet(cli):
    landed = sorted(v for v in PLANNED if v in cli.commands)
    assert not landed, f"these verbs exist now; remove them from PLANNED: {landed}"


def test_the_workers_run_the_designed_verbs(svcs):
    assert _command(svcs["generator"])[0] == "generate"
    assert _command(svcs["producer"]) == ["produce"]
    assert _command(svcs["consumer-redis"]) == ["consume", "--sink", "redis"]
    assert _command(svcs["consumer-external"]) == ["consume", "--sink", "external"]
    assert _command(svcs["consumer-bigquery"]) == ["consume", "--sink", "bigquery"]
    assert _command(svcs["uploader"]) == ["upload"]
    assert _command(svcs["db-init"]) == ["db", "init"]
    assert _command(svcs["receiver"]) == ["receiver", "--host", "0.0.0.0", "--port", "8080"]


def test_there_is_exactly_one_producer(svcs):
    # One replication slot admits one reader: the producer is never scaled or duplicated.
    producers = [n for n, s in svcs.items() if _is_pulse(s) and _command(s)[0] in ("produce", "run")]
    assert producers == ["producer"]
    assert svcs["producer"].get("deploy", {}).get("replicas", 1) == 1


# -- health and start order -----------------------------------------------------------


def test_every_service_has_a_healthcheck_or_is_a_one_shot_that_is_waited_for(svcs):
    waited_for = {
        dep for svc in svcs.values()
        for dep, how in (svc.get("depends_on") or {}).items()
        if how.get("condition") == "service_completed_successfully"
    }
    for name, svc in svcs.items():
        if name in ONE_SHOTS:
            assert svc.get("restart") == "no", f"{name}: a one-shot must not restart"
            assert "healthcheck" not in svc, name
            assert name in waited_for, f"{name}: nothing waits for the one-shot to complete"
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and not svc["healthcheck"].get("disable"), (
            f"{name}: a long-running service needs a health check"
        )
        assert svc.get("restart") == "unless-stopped", name
    assert waited_for <= ONE_SHOTS


def test_depends_on_uses_conditions_that_the_targets_can_satisfy(svcs):
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, how in deps.items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            cond = how.get("condition")
            if cond == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep} to be healthy; it has no check"
            else:
                assert cond == "service_completed_successfully" and dep in ONE_SHOTS, (name, dep, cond)
    # The pipeline's order: schema and topics exist before anything streams.
    assert {"db-init", "kafka-init"} <= set(svcs["producer"]["depends_on"])
    assert set(svcs["generator"]["depends_on"]) == {"db-init"}
    for consumer in ("consumer-redis", "consumer-external", "consumer-bigquery"):
        assert "kafka-init" in svcs[consumer]["depends_on"], consumer


def test_worker_healthchecks_use_the_image_script_with_a_known_mode(svcs):
    modes = {"ready", "metrics", "http", "db-progress", "spool"}
    for name, svc in svcs.items():
        if not _is_pulse(svc) or name in ONE_SHOTS:
            continue
        test = svc["healthcheck"]["test"]
        assert test[:2] == ["CMD", "pulse-healthcheck"] and test[2] in modes, (name, test)
        if test[2] in ("metrics", "ready"):
            assert svc["environment"].get("PULSE_RUNTIME__METRICS_PORT") not in (None, "", "0"), name


def test_long_running_workers_are_checked_on_readyz(svcs):
    # /readyz means "doing its job" (pulse.health), not only "the port answers".
    for name in ("producer", "consumer-redis", "consumer-external", "consumer-bigquery", "uploader"):
        assert svcs[name]["healthcheck"]["test"][:3] == ["CMD", "pulse-healthcheck", "ready"], name


# -- network exposure -----------------------------------------------------------------


def test_every_published_port_binds_loopback_only(svcs):
    published = 0
    for name, svc in svcs.items():
        for host_ip, text in _port_entries(svc):
            assert host_ip == "127.0.0.1", f"{name}: port {text} must be published on 127.0.0.1 only"
            published += 1
        assert "network_mode" not in svc, f"{name}: host networking would bypass the loopback-only ports"
    assert published >= 5
    # Workers publish nothing: they scale with --scale, and their metrics stay on the compose network.
    for name in PULSE_WORKERS:
        assert not svcs[name].get("ports"), name


# -- one environment ---------------------------------------------------------------


# Keys one container has on top of the shared environment (least privilege: no worker gets them).
ONLY_IN = {"receiver": {"PULSE_RECEIVER__CONTROL_TOKEN"}}


def _pulse_env(svc: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items() if k.startswith("PULSE_")}


def test_all_pulse_containers_share_the_same_pulse_environment(svcs):
    pulse = {name: _pulse_env(svc) for name, svc in svcs.items() if _is_pulse(svc)}
    reference = pulse["producer"]
    for name, env in pulse.items():
        own = ONLY_IN.get(name, set())
        assert own <= set(env), f"{name}: misses {own - set(env)}"
        shared = {k: v for k, v in env.items() if k not in own}
        assert set(shared) == set(reference), f"{name}: PULSE_ keys differ: {set(shared) ^ set(reference)}"
        assert shared == reference, f"{name}: PULSE_ values differ from the producer's"
    assert not set(reference) & set().union(*ONLY_IN.values())
    token = _env_values(_generated_env())["PULSE_RECEIVER__CONTROL_TOKEN"]
    assert pulse["receiver"]["PULSE_RECEIVER__CONTROL_TOKEN"] == token
    for key in ("PULSE_DATABASE_URL", "PULSE_REDIS_URL", "PULSE_KAFKA_BOOTSTRAP", "PULSE_BIGQUERY_PROJECT",
                "PULSE_BIGQUERY_DATASET", "PULSE_BIGQUERY_ENDPOINT", "PULSE_EXTERNAL_URL",
                "PULSE_EXTERNAL_SECRET", "PULSE_SLOT", "PULSE_PUBLICATION", "PULSE_BIGQUERY__SPOOL_DIR"):
        assert key in reference, key


def test_the_pulse_environment_loads_into_pulse_settings(svcs, monkeypatch):
    from pulse.config import load_settings
    from pulse.sinks.external.signing import decode_secret

    env = _pulse_env(svcs["producer"])
    for key in list(os.environ):
        if key.startswith("PULSE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = load_settings()  # unknown keys are forbidden: a typo fails here, not in a container
    secrets = _env_values(_generated_env())
    assert cfg.database.url.get_secret_value() == (
        f"postgresql://pulse:{secrets['PULSE_DB_PASSWORD']}@postgres:5432/pulse")
    redis_url = cfg.redis.url
    assert getattr(redis_url, "get_secret_value", lambda: redis_url)() == (
        f"redis://:{secrets['PULSE_REDIS_PASSWORD']}@redis:6379/0")
    assert cfg.external.secret.get_secret_value() == secrets["PULSE_EXTERNAL_SECRET"]
    assert cfg.kafka.bootstrap == "kafka:9092"
    assert cfg.bigquery.endpoint == "http://bigquery:9050"
    assert str(cfg.bigquery.spool_dir) == "/var/lib/pulse/bigquery_batches"
    assert cfg.bigquery.upload_in_process is False  # the uploader worker loads, the consumer only spools
    assert cfg.external.url == "http://receiver:8080/"
    assert len(decode_secret(cfg.external.secret.get_secret_value())) >= 24
    assert cfg.runtime.metrics_port == 9464


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY")


def test_no_secret_has_a_default_in_the_file(raw_config):
    """Every secret is `${VAR:?message}`: no default, no literal, and the message says how to set it."""
    text = COMPOSE_FILE.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    refs = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", body)
    secret_refs = [(name, op, msg) for name, op, msg in refs if SECRET_NAME.search(name)]
    for name, op, msg in secret_refs:
        assert op == ":?", f"${{{name}}} must be ${{{name}:?message}} (no default, not even an empty one)"
        assert msg.startswith(f"{name} is not set; ") and "make compose-env" in msg, (name, msg)
    required = {name for name, _, _ in secret_refs}
    assert required == {"POSTGRES_PASSWORD", "PULSE_DB_PASSWORD", "PULSE_REDIS_PASSWORD", "PULSE_EXTERNAL_SECRET",
                        "PULSE_RECEIVER__CONTROL_TOKEN"}
    # Whatever the file requires, the generator writes (and nothing it does not need).
    assert set(_load_compose_env_script().SECRETS) == required
    assert "whsec_" not in body and "demo-password" not in body
    # A secret-named key is never given a literal value, in any service.
    raw = raw_config["services"]
    seen = 0
    for name, svc in raw.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key) or key in ("PULSE_DATABASE_URL", "PULSE_REDIS_URL"):
                assert "${" in str(value) and ":?" in str(value), (name, key, value)
                seen += 1
    assert seen >= 10
    assert "${PULSE_DB_PASSWORD:?" in raw["producer"]["environment"]["PULSE_DATABASE_URL"]
    assert "${PULSE_REDIS_PASSWORD:?" in raw["producer"]["environment"]["PULSE_REDIS_URL"]


def test_the_file_is_refused_while_any_secret_is_unset(tmp_path):
    generated = _env_values(_generated_env())
    for missing in generated:
        env_file = tmp_path / f"without-{missing}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in generated.items() if k != missing))
        proc = _compose("-q", env_file=env_file)
        assert proc.returncode != 0, f"accepted without {missing}"
        # The message of the variable that is missing (docker-compose ends its error with it).
        assert proc.stderr.rstrip().endswith(f"{missing} is not set; run make compose-env (writes .env with "
                                             "random secrets) or export it"), proc.stderr
    empty = tmp_path / "empty.env"
    empty.write_text("POSTGRES_PASSWORD=\n")  # `:?` refuses an empty value too
    proc = _compose("-q", env_file=empty)
    assert proc.returncode != 0 and "POSTGRES_PASSWORD" in proc.stderr


def test_compose_env_writes_private_random_secrets_and_keeps_existing_ones(tmp_path):
    path = tmp_path / ".env"
    first = subprocess.run([sys.executable, str(COMPOSE_ENV), "--path", str(path)], capture_output=True,
                           text=True, timeout=60, check=True)
    assert path.stat().st_mode & 0o777 == 0o600
    values = _env_values(path)
    assert len(set(values.values())) == len(values) == 5  # all set, all different
    for key, value in values.items():
        assert value not in first.stdout + first.stderr, f"{key} printed"  # names only, never values
        if key == "PULSE_EXTERNAL_SECRET":
            from pulse.sinks.external.signing import decode_secret

            assert len(decode_secret(value)) == 32
        else:
            assert re.fullmatch(r"[0-9a-f]{48}", value), key  # URL-, shell- and redis.conf-safe
    # A second run changes nothing; a run on a file missing one secret adds that one only.
    subprocess.run([sys.executable, str(COMPOSE_ENV), "--path", str(path)], check=True, capture_output=True)
    assert _env_values(path) == values
    kept = {k: v for k, v in values.items() if k != "PULSE_REDIS_PASSWORD"}
    path.write_text("".join(f"{k}={v}\n" for k, v in kept.items()))
    subprocess.run([sys.executable, str(COMPOSE_ENV), "--path", str(path)], check=True, capture_output=True)
    again = _env_values(path)
    assert {k: again[k] for k in kept} == kept and again["PULSE_REDIS_PASSWORD"] not in values.values()
    # Another run of the generator draws other values: nothing is fixed in the script.
    other = tmp_path / "other.env"
    subprocess.run([sys.executable, str(COMPOSE_ENV), "--path", str(other)], check=True, capture_output=True)
    assert not set(_env_values(other).values()) & set(values.values())


def test_the_generated_env_file_is_ignored_by_git_and_docker():
    assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", ".env"]).returncode == 0
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def _start_redis(tmp: Path, password: str | None, extra_env: dict[str, str] | None = None):
    """docker/redis/start.sh with the real redis-server; the image's entrypoint is a pass-through here."""
    server = shutil.which("redis-server")
    need(server is not None, "redis-server (apt-get install redis-server)")
    (tmp / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')
    (tmp / "docker-entrypoint.sh").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp}:{os.environ['PATH']}", **(extra_env or {})}
    env.pop("REDIS_PASSWORD", None)
    if password is not None:
        env["REDIS_PASSWORD"] = password
    sock = tmp / "r.sock"
    proc = subprocess.Popen(["sh", str(REDIS_START), "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, sock


def test_redis_requires_the_password_and_never_has_it_on_a_command_line(svcs):
    redis_svc = svcs["redis"]
    assert redis_svc["entrypoint"] == ["/bin/sh", "/pulse/redis-start.sh"]
    assert "./docker/redis/start.sh:/pulse/redis-start.sh:ro" in [
        v.replace(str(ROOT), ".") for v in redis_svc["volumes"]]
    assert redis_svc["environment"]["REDIS_PASSWORD"] == _env_values(_generated_env())["PULSE_REDIS_PASSWORD"]
    command = [str(c) for c in redis_svc["command"]]
    assert "--requirepass" not in command and "noeviction" in command and "--appendonly" in command
    health = redis_svc["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL" and "$REDIS_PASSWORD" in health[1] and "requirepass" not in health[1]

    password = "p" + os.urandom(12).hex()
    tmp = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))  # short: a unix socket path has ~100 bytes
    proc, sock = _start_redis(tmp, password)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        import redis

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=str(sock)).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=str(sock), password="wrong").ping()
        assert redis.Redis(unix_socket_path=str(sock), password=password).ping()
        # The password is in no process's argv: not redis-server's, not the shell's that started it.
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                assert password.encode() not in argv, pid
        # The compose health check, run as compose runs it: a sh -c line, redis-cli on the service socket.
        (tmp / "redis-cli").write_text(f'#!/bin/sh\nexec {shutil.which("redis-cli")} -s {sock} "$@"\n')
        (tmp / "redis-cli").chmod(0o755)
        line = health[1].replace("$$", "$")
        check_env = {**os.environ, "PATH": f"{tmp}:{os.environ['PATH']}"}
        ok = subprocess.run(["sh", "-c", line], env={**check_env, "REDIS_PASSWORD": password}, timeout=30)
        bad = subprocess.run(["sh", "-c", line], env={**check_env, "REDIS_PASSWORD": "wrong"}, timeout=30)
        assert (ok.returncode, bad.returncode != 0) == (0, True)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def test_redis_start_script_refuses_to_run_without_a_password():
    tmp = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    try:
        for password in (None, ""):
            proc, _ = _start_redis(tmp, password)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode != 0 and "make compose-env" in err
        proc, _ = _start_redis(tmp, 'a"b')
        _, err = proc.communicate(timeout=30)
        assert proc.returncode != 0 and "double quote" in err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the services themselves ------------------------------------------------------------


def test_postgres_has_logical_decoding_and_a_bounded_slot(svcs):
    pg = svcs["postgres"]
    command = " ".join(pg["command"]) if isinstance(pg["command"], list) else pg["command"]
    for setting in ("wal_level=logical", "max_replication_slots=16", "max_wal_senders=16",
                    "max_slot_wal_keep_size=4GB"):
        assert f"-c {setting}" in command, setting
    assert pg["image"].startswith("postgres:")
    assert any(v.endswith(":/docker-entrypoint-initdb.d:ro") for v in pg["volumes"])
    init = ROOT / "docker" / "postgres" / "10-pulse-role.sh"
    text = init.read_text()
    assert "LOGIN REPLICATION" in text and "SUPERUSER" not in text.upper().replace("NOT A SUPERUSER", "")


def test_kafka_runs_kraft_combined_with_single_broker_replication(svcs):
    kafka = svcs["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert kafka["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any("ZOOKEEPER" in k for k in env) and "zookeeper" not in svcs
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", key
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    import base64
    import uuid

    cluster = env["CLUSTER_ID"]
    uuid.UUID(bytes=base64.urlsafe_b64decode(cluster + "=" * (-len(cluster) % 4)))
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_kafka_init_creates_the_topics_pulse_is_configured_for(svcs):
    init = svcs["kafka-init"]
    env = {k: str(v) for k, v in init["environment"].items()}
    pulse_env = _pulse_env(svcs["producer"])
    assert env["BOOTSTRAP"] == pulse_env["PULSE_KAFKA_BOOTSTRAP"]
    assert env["EVENTS_TOPIC"] == pulse_env["PULSE_KAFKA__TOPIC"] == "pulse.engagement.enriched"
    assert env["CONTENT_TOPIC"] == pulse_env["PULSE_KAFKA__CONTENT_TOPIC"] == "pulse.content"
    assert env["PARTITIONS"] == pulse_env["PULSE_KAFKA__PARTITIONS"] == "6"
    assert str(svcs["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]) == env["PARTITIONS"]
    script = (ROOT / "docker" / "kafka" / "kafka-init.sh").read_text()
    content_create = script[script.index('--topic "$CONTENT_TOPIC"'):]
    assert "cleanup.policy=compact" in content_create.split("\n\n")[0]
    assert script.count("--if-not-exists") == 2
    subprocess.run(["bash", "-n", str(ROOT / "docker" / "kafka" / "kafka-init.sh")], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "docker" / "postgres" / "10-pulse-role.sh")], check=True)


def test_bigquery_emulator_runs_offline_on_the_documented_command(svcs):
    bq = svcs["bigquery"]
    assert bq["build"]["dockerfile"] == "docker/bigquery-emulator.Dockerfile"
    assert bq["command"] == ["start", "--rest-host", "0.0.0.0", "--rest-port", "9050", "--grpc-host", "0.0.0.0",
                             "--grpc-port", "9060", "--persistent", "--data-dir", "/data",
                             "--project", "pulse-local"]
    assert any(v.endswith(":/data:rw") or v.endswith(":/data") for v in bq["volumes"])
    dockerfile = (ROOT / "docker" / "bigquery-emulator.Dockerfile").read_text()
    for pin in ("duckdb==1.5.5", "duckdb-extension-spatial==1.5.5", "numpy", "bqemulator", "-c /tmp/constraints.txt"):
        assert pin in dockerfile, pin
    assert "install_spatial.py" in dockerfile and re.search(r"^USER (?!root)", dockerfile, re.M)
    assert svcs["producer"]["environment"]["PULSE_BIGQUERY_ENDPOINT"] == "http://bigquery:9050"


def test_the_spool_is_one_volume_shared_by_the_bigquery_consumer_and_the_uploader(config, svcs):
    spool = svcs["producer"]["environment"]["PULSE_BIGQUERY__SPOOL_DIR"]

    def mounts(name):
        return {v.split(":")[0] for v in svcs[name].get("volumes", []) if v.split(":")[1] == spool}

    assert mounts("consumer-bigquery") == mounts("uploader") == {"bigquery-batches"}
    assert "bigquery-batches" in config["volumes"]
    for name in PULSE_WORKERS - {"consumer-bigquery", "uploader"}:
        assert not mounts(name), name


def test_dockerfile_builds_pulse_pinned_and_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    # The official base by default; dev/docker-images.sh passes a local one (no registry).
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert "pip install $PIP_OPTIONS -c constraints.txt '.[all]'" in text
    assert re.search(r'^ARG PIP_OPTIONS=""$', text, re.M)  # PyPI by default
    assert 'python -c "import pulse.source._wire"' in text  # the image has the native reader
    assert re.findall(r"^USER (\S+)", text, re.M)[-1] == "pulse"
    assert re.findall(r"^ENTRYPOINT (.+)$", text, re.M)[-1].strip() == '["pulse"]'
    assert "docker/healthcheck.py /usr/local/bin/pulse-healthcheck" in text
    for path in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in path.split():
            assert (ROOT / item).exists(), item
    ignore = (ROOT / ".dockerignore").read_text().split()
    for needed in ("src", "pyproject.toml", "setup.py", "constraints.txt", "README.md", "docker"):
        assert needed not in ignore, needed


# -- the health-check script the images run ----------------------------------------------


def _health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True,
                          timeout=30, env={**_compose_env(), **(env or {})})


def test_healthcheck_spool_mode_flags_a_batch_that_waits_too_long(tmp_path):
    env = {"PULSE_BIGQUERY__SPOOL_DIR": str(tmp_path)}
    assert _health("spool", "--max-age", "60", env=env).returncode == 0  # empty spool: healthy
    batch = tmp_path / "0000000000000001-0000000000-0000000000000001-0000000000.parquet"
    batch.write_bytes(b"PAR1")
    assert _health("spool", "--max-age", "60", env=env).returncode == 0  # fresh: healthy
    old = time.time() - 120
    os.utime(batch, (old, old))
    proc = _health("spool", "--max-age", "60", env=env)
    assert proc.returncode == 1 and "waited" in proc.stderr
    proc = _health("spool", env={"PULSE_BIGQUERY__SPOOL_DIR": str(tmp_path / "missing")})
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_healthcheck_http_and_metrics_modes(tmp_path):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/readyz":
                body = b'{"ready": false, "checks": {"consumer": {"ok": false, "detail": "nothing committed"}}}'
                self.send_response(200 if ready["ok"] else 503)
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200 if self.path in ("/healthz", "/metrics") else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    ready = {"ok": True}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert _health("http", f"http://127.0.0.1:{port}/healthz").returncode == 0
        assert _health("http", f"http://127.0.0.1:{port}/other").returncode == 1
        assert _health("metrics", env={"PULSE_RUNTIME__METRICS_PORT": str(port)}).returncode == 0
        assert _health("ready", env={"PULSE_RUNTIME__METRICS_PORT": str(port)}).returncode == 0
        ready["ok"] = False
        proc = _health("ready", env={"PULSE_RUNTIME__METRICS_PORT": str(port)})
        assert proc.returncode == 1 and "consumer: nothing committed" in proc.stderr
        ready["ok"] = True
        old = tmp_path / "0000000000000001-0000000000-0000000000000001-0000000000.parquet"
        old.write_bytes(b"PAR1")
        os.utime(old, (time.time() - 120, time.time() - 120))
        proc = _health("ready", "--spool-max-age", "60",
                       env={"PULSE_RUNTIME__METRICS_PORT": str(port), "PULSE_BIGQUERY__SPOOL_DIR": str(tmp_path)})
        assert proc.returncode == 1 and "waited" in proc.stderr
    finally:
        server.shutdown()
        server.server_close()
    proc = _health("metrics", env={"PULSE_RUNTIME__METRICS_PORT": str(port)})
    assert proc.returncode == 1
    proc = _health("metrics")
    assert proc.returncode == 1 and "PULSE_RUNTIME__METRICS_PORT" in proc.stderr


def test_healthcheck_db_progress_mode_needs_new_events(scratch_db, tmp_path):
    state = tmp_path / "progress.json"
    env = {"PULSE_DATABASE_URL": scratch_db.url}
    args = ("db-progress", "--state-file", str(state))
    assert _health(*args, "--within", "60", env=env).returncode == 0  # first look: recorded, healthy
    time.sleep(1.2)
    proc = _health(*args, "--within", "1", env=env)
    assert proc.returncode == 1 and "no new engagement_events" in proc.stderr
    conn = scratch_db.connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO engagement_events (event_type, event_ts) VALUES ('play', now())")
    conn.close()
    assert _health(*args, "--within", "1", env=env).returncode == 0
    proc = _health(*args, env={"PULSE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert proc.returncode == 1 and "database" in proc.stderr


# -- Kafka over SASL/TLS, as docs/deploy.md tells it ------------------------------------


def _deploy_sasl_snippet() -> str:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    section = doc[doc.index("## Kafka over SASL/TLS: the settings and where the password goes"):]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_the_documented_kafka_sasl_snippet_reaches_librdkafka(tmp_path, monkeypatch, mechanism):
    """deploy.md's snippet, pasted into x-pulse-env: compose interpolates it, Pulse loads it, librdkafka takes it."""
    from confluent_kafka import Producer

    from pulse.config import load_settings
    from pulse.sinks.kafka.sink import client_config

    snippet = _deploy_sasl_snippet().replace("SCRAM-SHA-512", mechanism)
    text = COMPOSE_FILE.read_text()
    anchor = "x-pulse-env: &pulse-env\n"
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(text.replace(anchor, anchor + snippet))
    password = 'pw-' + os.urandom(8).hex()
    exe = shutil.which("docker-compose")
    need(exe is not None, "docker-compose (apt-get install docker-compose)")

    def config(extra: str) -> subprocess.CompletedProcess:
        (tmp_path / "run.env").write_text(_generated_env().read_text() + extra)
        return subprocess.run([exe, "--project-directory", str(ROOT), "-f", str(compose), "--env-file",
                               str(tmp_path / "run.env"), "config"], cwd=ROOT, env=_compose_env(),
                              capture_output=True, text=True, timeout=120)

    refused = config("KAFKA_USERNAME=alice\n")  # no password: refused, like every other secret
    assert refused.returncode != 0 and refused.stderr.rstrip().endswith("KAFKA_PASSWORD is not set")
    proc = config(f"KAFKA_USERNAME=alice\nKAFKA_PASSWORD={password}\n")
    assert proc.returncode == 0, proc.stderr
    env = _pulse_env(_yaml_to_obj(proc.stdout)["services"]["consumer-redis"])
    for key in list(os.environ):
        if key.startswith("PULSE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    conf = client_config(load_settings().kafka)
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanisms"] == mechanism
    assert (conf["sasl.username"], conf["sasl.password"]) == ("alice", password)
    producer = Producer({**conf, "socket.timeout.ms": 1000})  # raises if this librdkafka lacks SSL or SASL
    producer.flush(0)
    del producer
