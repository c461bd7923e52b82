"""Typed, layered configuration.

Precedence, highest first: CLI flags (passed as overrides) > environment
(`PULSE_...`) > a TOML file (`--config` or `PULSE_CONFIG`) > defaults.

Nested keys use `__` in the environment (`PULSE_RUNTIME__QUEUE_MAX_BYTES`).
The endpoint variables that are part of Pulse's contract keep their flat
names (`PULSE_DATABASE_URL`, `PULSE_REDIS_URL`, ...): `CONTRACT_ENV` maps them
onto the nested keys. Secrets are `SecretStr` and never printed.

Every variable also has a `_FILE` form (`PULSE_DATABASE_URL_FILE`,
`PULSE_EXTERNAL__SECRET_FILE`, ...), Docker / Kubernetes secrets style: the
value is the named file's content, trailing newline stripped, so a secret
never sits in the environment of every child process or on a command line.
Setting both a variable and its `_FILE` form is an error.

Unknown names are reported at start with the closest valid one: an unknown
TOML section or key is an error (a typo there would silently keep a default);
an unknown key under a known section in the environment
(`PULSE_REDIS__URLL`) is an error for the same reason; any other unknown
`PULSE_...` variable is a warning only, because the prefix is shared with
other software (PulseAudio reads `PULSE_SERVER`, `PULSE_SINK`, ...).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pulse.config_base import Section as _Section
from pulse.config_base import redact_url, url_has_password  # noqa: F401  (re-exported)
from pulse.errors import ConfigError
from pulse.sinks.bigquery.config import BigQueryConfig
from pulse.sinks.external.config import ExternalConfig
from pulse.sinks.jsonl.config import JsonlConfig
from pulse.sinks.kafka.config import KafkaConfig
from pulse.sinks.redis.config import RedisConfig

# Flat environment names that users and tests rely on (DESIGN.md), and the
# nested key each one sets.
CONTRACT_ENV: dict[str, tuple[str, str]] = {
    "PULSE_DATABASE_URL": ("database", "url"),
    "PULSE_SLOT": ("database", "slot"),
    "PULSE_PUBLICATION": ("database", "publication"),
    "PULSE_REDIS_URL": ("redis", "url"),
    "PULSE_REDIS_PREFIX": ("redis", "prefix"),
    "PULSE_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "PULSE_BIGQUERY_PROJECT": ("bigquery", "project"),
    "PULSE_BIGQUERY_DATASET": ("bigquery", "dataset"),
    "PULSE_BIGQUERY_ENDPOINT": ("bigquery", "endpoint"),
    "PULSE_EXTERNAL_URL": ("external", "url"),
    "PULSE_EXTERNAL_SECRET": ("external", "secret"),
}


# PULSE_ names that Pulse reads outside the settings.
OTHER_ENV: dict[str, str] = {
    "PULSE_CONFIG": "the TOML file (same as --config)",
    "PULSE_PROJECT_ROOT": "the checkout `pulse dev` manages",
}

FILE_SUFFIX = "_FILE"


class DatabaseConfig(_Section):
    """The source PostgreSQL database and Pulse's objects in it."""

    url: SecretStr = Field(
        default=SecretStr("postgresql://pulse@127.0.0.1:5432/pulse"),
        description="libpq URL of the source database (PULSE_DATABASE_URL).",
    )
    slot: str = Field(default="pulse", description="Logical replication slot name (PULSE_SLOT).")
    publication: str = Field(
        default="pulse", description="Publication covering the source tables (PULSE_PUBLICATION)."
    )
    state_schema: str = Field(default="pulse", description="Schema holding Pulse's own state tables.")
    source_schema: str = Field(default="public", description="Schema of the content and engagement_events tables.")
    protocol_version: Literal[1, 2] = Field(
        default=2, description="pgoutput protocol; 2 streams large transactions, 1 for PostgreSQL < 14."
    )
    status_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between standby status updates sent to the server."
    )
    native_reader: bool = Field(
        default=True,
        description="Read the replication stream with Pulse's C extension (`pulse.source._wire`) and decode "
        "runs of inserts into columns; false, or an install built without a C compiler, uses the "
        "pure-Python reader (same results, about half the throughput).",
    )
    heartbeat_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds of idleness after which a transactional heartbeat message is emitted, "
        "so the slot advances when the captured tables are quiet.",
    )
    ack_stall_warn_s: float = Field(
        default=60.0, gt=0, description="Warn when the acknowledged position has not moved for this long."
    )

    @field_validator("slot", "publication", "state_schema", "source_schema")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value or len(value) > 63 or not all(c.isalnum() or c == "_" for c in value):
            raise ValueError("must be 1-63 characters of letters, digits and '_'")
        if value[0].isdigit():
            raise ValueError("must not start with a digit")
        return value.lower()

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not (raw.startswith("postgresql://") or raw.startswith("postgres://")):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user@127.0.0.1:5432/db")
        rest = raw.split("://", 1)[1].split("?", 1)[0]
        if "@" in rest and "@" not in rest.split("/", 1)[0]:
            # libpq ends the user:password part at the first '/', so it would read part of the
            # password as a port or host (and echo it in its error): refuse, never echo it.
            raise ValueError("the part before '@' holds an unencoded '/' (in the password?): "
                             "percent-encode it as %2F ('#' as %23, '@' as %40)")
        return value

    def dsn(self) -> str:
        return self.url.get_secret_value()

    def safe_url(self) -> str:
        return redact_url(self.dsn())


class RuntimeConfig(_Section):
    """The in-process pipeline (`pulse run`)."""

    sinks: list[str] = Field(
        default_factory=list,
        description="Sinks to run, by name. Unset: every destination whose endpoint you configured "
        "(redis.url, bigquery.project, external.url, jsonl.path; a default value does not count); none configured is "
        "an error. Test doubles that keep nothing (memory) run only when named here or with --sink.",
    )
    queue_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024 * 1024, description="Bytes each sink's queue may hold before backpressure."
    )
    queue_max_events: int = Field(default=200_000, ge=100, description="Events each sink's queue may hold.")
    batch_max_events: int = Field(default=5_000, ge=1, description="Largest batch handed to a sink.")
    metrics_host: str = Field(default="127.0.0.1", description="Address the Prometheus endpoint binds to.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus port; 0 disables the endpoint.")
    ready_stall_s: float = Field(
        default=60.0, gt=0,
        description="/readyz turns not-ready when work waits this many seconds without progress (no acknowledgement "
                    "of the slot, no commit of the consumer, no successful load) or the main loop is silent as long.")
    shutdown_timeout_s: float = Field(default=30.0, gt=0, description="Seconds SIGTERM waits for sinks to drain.")


class SnapshotConfig(_Section):
    """The initial snapshot: the rows that exist before Pulse's slot (docs/architecture.md, "Initial snapshot")."""

    mode: Literal["initial", "never"] = Field(
        default="initial",
        description="initial: on the run that creates the slot, copy the rows that already exist to every "
                    "destination (BigQuery and the external system get the rows, the Redis board is rebuilt for "
                    "its window), consistently with the stream; never: start from the slot's creation.")
    chunk_size: int = Field(default=50_000, ge=1, le=1_000_000,
                            description="Rows read per chunk (one DBLog watermark window each; at most three "
                                        "chunks are in memory at once). 50,000: a chunk's fixed costs (two "
                                        "watermark commits, a spool file and its fsyncs) are shared by more "
                                        "rows; docs/benchmarks.md, \"Initial snapshot\".")
    rate_limit: float = Field(default=0.0, ge=0,
                              description="Most rows per second the snapshot reads; 0 = unlimited.")


class TestSinksConfig(_Section):
    """Test doubles that `pulse run` can use (crash and recovery tests)."""

    pgtable_url: SecretStr | None = Field(
        default=None, description="Database of the `pgtable` sink (rows + position in one transaction)."
    )
    pgtable_table: str = Field(default="pulse_sink_events", description="Table of the `pgtable` sink.")


class BackfillConfig(_Section):
    """`pulse backfill`: how the source range is read."""

    chunk_size: int = Field(default=10_000, ge=1, description="Rows per chunk (the memory bound of a backfill).")
    rate_limit: float = Field(default=0.0, ge=0, description="Rows per second read from the source; 0 = unlimited.")


class ReceiverConfig(_Section):
    """`pulse receiver`: the stand-in external endpoint (tests and the demo)."""

    host: str = Field(default="127.0.0.1", description="Address the receiver binds.")
    port: int = Field(default=8787, ge=0, le=65535, description="Port of the receiver (0: any free port).")
    control_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the receiver's control endpoints (/_control, /_reset, /stats, /events); "
                    "required unless it binds a loopback address.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1,
                                description="Request bodies larger than this are answered 413 (never read into "
                                            "memory).")


class BoardConfig(_Section):
    """`pulse board`: the live web page of the board and the pipeline (docs/board.md)."""

    host: str = Field(default="127.0.0.1", description="Address the board binds.")
    port: int = Field(default=8788, ge=0, le=65535, description="Port of the board (0: any free port).")
    token: SecretStr | None = Field(
        default=None,
        description="Access token of the page (open /?token=... once; a cookie keeps it) and its API "
                    "(Authorization: Bearer); required unless the board binds a loopback address.")
    interval_s: float = Field(default=0.5, ge=0.1, le=60,
                              description="Seconds between reads of the Redis board (one reader, whatever the "
                                          "number of open pages).")
    status_interval_s: float = Field(default=2.0, ge=0.5, le=300,
                                     description="Seconds between reads of Pulse's own status (the pipeline's "
                                                 "report, the slot, snapshot and backfill runs) in PostgreSQL.")


class VerifyConfig(_Section):
    """`pulse verify`: how destinations are compared with the source (docs/verify.md)."""

    bucket_s: int = Field(default=86_400, ge=1, description="Width of the first-level time buckets of event_ts, "
                                                            "in seconds.")
    fanout: int = Field(default=16, ge=2, description="Id ranges a differing bucket is split into, per step.")
    leaf_rows: int = Field(default=256, ge=1, description="A range with at most this many rows is compared row "
                                                         "by row.")
    settle_s: float = Field(default=30.0, ge=0, description="Seconds to wait for a running sink to catch up "
                                                            "before differing rows are checked again.")
    interval: str = Field(default="5m", description="Time between --watch rounds: 30s, 5m, 1h.")
    recent: str = Field(default="1h", description="With --watch and no --since: the range verified, back from now.")
    metrics_port: int | None = Field(default=None, ge=1, le=65535,
                                     description="With --watch: serve /metrics on 127.0.0.1:PORT.")


class LogConfig(_Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    format: Literal["console", "json"] = Field(default="console", description="console (key=value) or json lines.")


class _ContractEnvSource(PydanticBaseSettingsSource):
    """Reads the flat contract names (PULSE_DATABASE_URL, ...) into nested keys."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for env, (section, key) in CONTRACT_ENV.items():
            value = os.environ.get(env)
            if value is not None and value != "":
                out.setdefault(section, {})[key] = value
        return out


def _sections() -> dict[str, type[BaseModel]]:
    """Section name -> model class, in the order of `Settings`."""
    out = {}
    for name, field in Settings.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out[name] = field.annotation
    return out


def _is_mapping(model: type[BaseModel], key: str) -> bool:
    """A field whose value is a table of free-form keys (kafka.client_config)."""
    ann = model.model_fields[key].annotation
    return getattr(ann, "__origin__", None) is dict


def _closest(name: str, candidates: list[str]) -> str | None:
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def _did_you_mean(name: str, candidates: list[str], shape: str = "{}") -> str:
    close = _closest(name, candidates)
    return f"; did you mean {shape.format(close)}?" if close else ""


def _did_you_mean_env(name: str, known: list[str]) -> str:
    # Compared without the shared PULSE_ prefix, which would make every name look alike.
    close = _closest(name.removeprefix("PULSE_"), [k.removeprefix("PULSE_") for k in known])
    return f"; did you mean PULSE_{close}?" if close else ""


def _read_secret_file(var: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{var} names {path!r}, which cannot be read: {exc.strerror or exc}",
                          hint=f"point {var} at a readable file holding the value") from exc
    return text.rstrip("\r\n")


def _file_value(model: type[BaseModel], key: str, var: str, path: str) -> Any:
    text = _read_secret_file(var, path)
    if _is_mapping(model, key) or getattr(model.model_fields[key].annotation, "__origin__", None) is list:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"the file {var} names does not hold JSON: {exc}", hint="write the value as JSON") from exc
    return text


def env_key(name: str) -> tuple[str, str] | None:
    """The (section, key) an environment name sets (flat contract or nested form), or None."""
    name = name.upper()
    if name in CONTRACT_ENV:
        return CONTRACT_ENV[name]
    m = re.fullmatch(r"PULSE_([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
    if not m:
        return None
    sections = _sections()
    section, key = m.group(1).lower(), m.group(2).lower()
    if section in sections and key in sections[section].model_fields:
        return section, key
    return None


def env_names() -> list[str]:
    """Every environment name Pulse reads (without the `_FILE` forms)."""
    names = list(CONTRACT_ENV) + list(OTHER_ENV)
    for section, model in _sections().items():
        names += [f"PULSE_{section.upper()}__{key.upper()}" for key in model.model_fields]
    return names


def check_environment(environ: dict[str, str] | None = None) -> list[str]:
    """Warnings for unknown `PULSE_...` variables, each with the closest valid name.

    Raises ConfigError for an unknown key under a known section (`PULSE_REDIS__URLL`):
    that name can only be meant for Pulse.
    """
    environ = dict(os.environ if environ is None else environ)
    known = env_names()
    valid = set(known) | {n + FILE_SUFFIX for n in known if n not in OTHER_ENV}
    sections = _sections()
    warnings, errors = [], []
    for raw in sorted(environ):
        name = raw.upper()
        if not name.startswith("PULSE_") or name in valid:
            continue
        m = re.fullmatch(r"PULSE_([A-Z0-9_]+?)(?:__(.*))?", name)
        section = m.group(1).lower() if m else ""
        if m and section in sections and m.group(2) is None:
            continue  # a whole section as JSON (pydantic-settings' complex value)
        if m and section in sections:
            key = m.group(2).lower()
            if "__" in key and key.split("__", 1)[0] in sections[section].model_fields \
                    and _is_mapping(sections[section], key.split("__", 1)[0]):
                continue  # a key inside a free-form table (PULSE_KAFKA__CLIENT_CONFIG__...)
            errors.append(f"{raw} is not a setting of [{section}]" + _did_you_mean_env(name, sorted(valid)))
            continue
        warnings.append(f"{raw} is not a Pulse setting" + _did_you_mean_env(name, sorted(valid)) + " (ignored)")
    if errors:
        raise ConfigError("unknown configuration: " + "; ".join(errors),
                          hint="fix the variable's name (docs/configuration.md lists every one)")
    return warnings


def check_toml(data: dict[str, Any], path: Path) -> None:
    """Raise ConfigError, with the closest valid name, for an unknown section or key in a TOML file."""
    sections = _sections()
    dotted = [f"{s}.{k}" for s, m in sections.items() for k in m.model_fields]
    problems = []
    for section, body in data.items():
        if section not in sections:
            if isinstance(body, dict):
                problems.append(f"unknown section [{section}]" + _did_you_mean(section, list(sections), "[{}]"))
            else:
                close = _closest(section, [d.split(".", 1)[1] for d in dotted])
                where = next((d for d in dotted if d.endswith("." + close)), None) if close else None
                problems.append(f"unknown top-level key {section!r} (keys belong in a [section])"
                                + (f"; did you mean {where.split('.')[1]!r} in [{where.split('.')[0]}]?"
                                   if where else ""))
            continue
        if not isinstance(body, dict):
            problems.append(f"[{section}] must be a table, e.g. [{section}] on its own line")
            continue
        model = sections[section]
        for key in body:
            base = key[: -len(FILE_SUFFIX)] if key.lower().endswith(FILE_SUFFIX.lower()) else key
            if key in model.model_fields or base in model.model_fields:
                continue
            problems.append(f"unknown key {key!r} in [{section}]"
                            + _did_you_mean(key, list(model.model_fields), "{!r}"))
    if problems:
        raise ConfigError(f"config file {path}: " + "; ".join(problems),
                          hint="fix the file (docs/configuration.md lists every section and key)")


class _FileEnvSource(PydanticBaseSettingsSource):
    """`<NAME>_FILE` variables: the value is the named file's content (Docker / Kubernetes secrets)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        sections = _sections()
        for raw, path in os.environ.items():
            name = raw.upper()
            if not name.endswith(FILE_SUFFIX) or not name.startswith("PULSE_") or not path:
                continue
            base = name[: -len(FILE_SUFFIX)]
            target = env_key(base)
            if target is None:
                continue  # not one of ours: check_environment reports it
            if os.environ.get(base):
                raise ConfigError(f"both {base} and {raw} are set",
                                  hint=f"keep one: {raw} (the value in a file) or {base}")
            section, key = target
            out.setdefault(section, {}).setdefault(key, _file_value(sections[section], key, raw, path))
        return out


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, minus the `_FILE` forms (`_FileEnvSource` reads those)."""

    def _load_env_vars(self):  # type: ignore[override]
        env = super()._load_env_vars()
        return {k: v for k, v in env.items()
                if not (k.upper().endswith(FILE_SUFFIX) and env_key(k[: -len(FILE_SUFFIX)]) is not None)}


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {self.path} does not exist", hint="fix --config / PULSE_CONFIG") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {self.path} is not valid TOML: {exc}", hint="fix the file") from exc
        check_toml(data, self.path)
        sections = _sections()
        for section, body in data.items():
            for key in [k for k in body if k not in sections[section].model_fields]:
                # `url_file = "/run/secrets/db"`: the value is that file's content.
                base = key[: -len(FILE_SUFFIX)]
                if base in body:
                    raise ConfigError(f"config file {self.path}: both {base!r} and {key!r} in [{section}]",
                                      hint="keep one")
                body[base] = _file_value(sections[section], base, f"[{section}] {key}", body.pop(key))
        return data


class Settings(BaseSettings):
    """All of Pulse's configuration."""

    model_config = SettingsConfigDict(env_prefix="PULSE_", env_nested_delimiter="__", extra="forbid")

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    bigquery: BigQueryConfig = Field(default_factory=BigQueryConfig)
    external: ExternalConfig = Field(default_factory=ExternalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    jsonl: JsonlConfig = Field(default_factory=JsonlConfig)
    testsinks: TestSinksConfig = Field(default_factory=TestSinksConfig)
    backfill: BackfillConfig = Field(default_factory=BackfillConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    board: BoardConfig = Field(default_factory=BoardConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    def configured(self, section: str, key: str) -> bool:
        """True when the user set `section.key` (flag, environment, file), even to its default value."""
        return key in getattr(self, section).model_fields_set

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get("PULSE_CONFIG")
        return (
            init_settings,
            _ContractEnvSource(settings_cls),
            _FileEnvSource(settings_cls),
            _EnvSource(settings_cls),
            _TomlSource(settings_cls, Path(path) if path else None),
        )


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings, or raise ConfigError naming the bad key and the fix.

    `overrides` is a nested dict of CLI flags (`{"database": {"slot": "x"}}`);
    `config_file` wins over PULSE_CONFIG.
    """
    previous = os.environ.get("PULSE_CONFIG")
    if config_file is not None:
        os.environ["PULSE_CONFIG"] = str(config_file)
    try:
        check_environment()
        # pydantic-settings merges nested dicts from each source; init kwargs win.
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            env = env_name_for(key)
            problems.append(f"{key} ({env}): {err['msg']}")
        raise ConfigError(
            "invalid configuration: " + "; ".join(problems),
            hint="set the key in the environment, the TOML file or the CLI flag shown",
        ) from exc
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop("PULSE_CONFIG", None)
            else:
                os.environ["PULSE_CONFIG"] = previous


def env_name_for(dotted: str) -> str:
    """The environment name of a dotted key (the flat contract name when there is one)."""
    parts = tuple(dotted.split(".")[:2])
    for env, path in CONTRACT_ENV.items():
        if path == parts:
            return env
    return "PULSE_" + "__".join(p.upper() for p in dotted.split("."))


__all__ = [
    "BackfillConfig",
    "BoardConfig",
    "BigQueryConfig",
    "CONTRACT_ENV",
    "OTHER_ENV",
    "ReceiverConfig",
    "check_environment",
    "env_key",
    "env_name_for",
    "env_names",
    "url_has_password",
    "DatabaseConfig",
    "ExternalConfig",
    "JsonlConfig",
    "KafkaConfig",
    "LogConfig",
    "RedisConfig",
    "RuntimeConfig",
    "Settings",
    "load_settings",
    "redact_url",
]
