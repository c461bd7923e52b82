"""Typed, layered configuration.

Precedence, highest first: CLI flags (passed as overrides) > environment
(`PULSE_...`) > a TOML file (`--config` or `PULSE_CONFIG`) > defaults.

Nested keys use `__` in the environment (`PULSE_RUNTIME__QUEUE_MAX_BYTES`).
The endpoint variables that are part of Pulse's contract keep their flat
names (`PULSE_DATABASE_URL`, `PULSE_REDIS_URL`, ...): `CONTRACT_ENV` maps them
onto the nested keys. Secrets are `SecretStr` and never printed.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pulse.errors import ConfigError

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


def redact_url(url: str) -> str:
    """Return `url` with any password (in the authority or a `password=` parameter) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    if "password=" in parts.query.lower():
        query = "&".join(
            f"{k}=***" if k.lower() == "password" else (f"{k}={v}" if sep else k)
            for k, sep, v in (item.partition("=") for item in parts.query.split("&"))
        )
        parts = parts._replace(query=query)
    return urlunsplit(parts)


class _Section(BaseModel):
    """A config section: an unknown key is a typo, rejected with its name (never silently ignored)."""

    model_config = ConfigDict(extra="forbid")


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
        return value

    def dsn(self) -> str:
        return self.url.get_secret_value()

    def safe_url(self) -> str:
        return redact_url(self.dsn())


class RedisConfig(_Section):
    """The Redis destination (real-time board)."""

    url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"), description="PULSE_REDIS_URL.")
    prefix: str = Field(
        default="pulse:",
        description="Key prefix for everything Pulse writes (PULSE_REDIS_PREFIX). On Redis Cluster put a hash "
        "tag in it, e.g. '{pulse}:', so every key of the board lives in one slot.",
    )
    window_s: int = Field(
        default=600, ge=60, le=86_400,
        description="Length of the rolling window in seconds; names the keys (600 -> top:10m).",
    )
    bucket_s: int = Field(
        default=10, ge=1, le=600,
        description="Bucket width in seconds: an event leaves the board between window_s and window_s + "
        "bucket_s after its event_ts. Must divide window_s.",
    )
    flush_interval_ms: int = Field(
        default=100, ge=0, le=200,
        description="Longest time pre-aggregated increments wait in memory before one atomic write "
        "(the worker also flushes whenever its queue is idle for 200 ms).",
    )
    max_pending_events: int = Field(
        default=50_000, ge=1, description="Flush as soon as this many events are pre-aggregated in memory."
    )
    future_skew_s: int = Field(
        default=60, ge=0,
        description="An event dated more than this many seconds after the sink's clock is rejected "
        "(not counted, counted in the `future` stat); within it, it counts in its own bucket.",
    )
    state_ttl_s: int = Field(
        default=3_600, ge=60,
        description="TTL of the board and its buckets, refreshed while the sink runs; must exceed "
        "window_s + bucket_s. A sink stopped longer than this leaves no stale board behind.",
    )
    meta_ttl_s: int = Field(
        default=7 * 86_400, ge=3_600,
        description="TTL of the meta (position, epoch) and stats hashes, refreshed while the sink runs.",
    )
    content_ttl_s: int = Field(
        default=86_400, ge=60, description="TTL of each content metadata hash (title, slug, type, length)."
    )
    socket_timeout_s: float = Field(
        default=5.0, gt=0, description="Socket connect/read timeout; a timeout is a transient error (retried)."
    )
    rebuild_pause_timeout_s: float = Field(
        default=120.0, gt=0, le=3_600,
        description="A rebuild (`pulse backfill --sinks redis`) pauses the live Redis writers while it takes "
        "its snapshot and swaps the window; the pause ends at the swap, or at the latest this many seconds "
        "(Redis' clock) after it was last renewed, so a rebuild killed mid-way never freezes the board. The "
        "rebuild renews it while it reads.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty (keys would collide with other applications)")
        return value

    def safe_url(self) -> str:
        return redact_url(self.url.get_secret_value())


class KafkaConfig(_Section):
    """The Kafka bus between separate workers."""

    bootstrap: str = Field(default="127.0.0.1:9092", description="Bootstrap servers (PULSE_KAFKA_BOOTSTRAP).")
    topic: str = Field(default="pulse.engagement.enriched", description="Topic of enriched events.")
    content_topic: str = Field(default="pulse.content", description="Compacted topic of content rows.")
    partitions: int = Field(default=6, ge=1, description="Partitions of the topics Pulse creates (its unit of scale-out).")
    replication_factor: int = Field(default=1, ge=1, description="Replication factor of the topics Pulse creates.")
    group_prefix: str = Field(default="pulse", description="Consumer groups are <prefix>-<sink>.")
    client_config: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka settings for every client, e.g. security.protocol=SASL_SSL, "
        "sasl.mechanism=PLAIN (secrets such as sasl.password belong in the environment: "
        "PULSE_KAFKA__CLIENT_CONFIG='{\"sasl.password\": \"...\"}').",
    )
    batch_max_messages: int = Field(default=5000, ge=1, description="Most messages a consumer hands a sink at once.")
    message_max_bytes: int = Field(
        default=1_000_000, ge=10_000, le=1_000_000_000,
        description="Largest message the producer sends (librdkafka's message.max.bytes); the topic's "
        "max.message.bytes, read at start, lowers it. An event above it, less 4 KiB for key and headers, is "
        "published with its raw_payload replaced by a marker and the problem payload_too_large, and kept in "
        "full in the dead-letter store (`pulse dlq --sink kafka`). Raise it (and the topic's limit) to replay.",
    )


class BigQueryConfig(_Section):
    """The BigQuery destination."""

    project: str = Field(default="pulse-local", description="GCP project id (PULSE_BIGQUERY_PROJECT).")
    dataset: str = Field(default="pulse", description="Dataset (PULSE_BIGQUERY_DATASET).")
    table: str = Field(default="engagement_events", description="Table of enriched events.")
    location: str | None = Field(default=None, description="Dataset location, e.g. EU; unset: BigQuery's default.")
    endpoint: str | None = Field(
        default=None, description="REST endpoint of an emulator (PULSE_BIGQUERY_ENDPOINT); unset means Google."
    )
    grpc_endpoint: str | None = Field(
        default=None, description="host:port of an emulator's Storage Write API; unset means Google."
    )
    credentials_file: Path | None = Field(
        default=None, description="Service-account JSON file; unset: application default credentials."
    )
    mode: Literal["batch", "stream"] = Field(default="batch", description="Load jobs (batch) or Storage Write API.")
    spool_dir: Path = Field(default=Path("bigquery_batches"), description="Folder of Parquet files awaiting load.")
    load_interval_s: float = Field(
        default=60.0, ge=0.2, description="Seconds between load jobs (BigQuery allows 1,500 per table per day)."
    )
    backfill_load_interval_s: float = Field(
        default=0.5, ge=0.2,
        description="While a backfill is being spooled (and for 30 s after its last chunk), seconds between "
        "load jobs instead of load_interval_s, so that a backfill does not wait a minute per load. Each load "
        "takes everything spooled, so a long backfill makes about one load job per load job's duration "
        "(mind the quota of 1,500 per table per day).",
    )
    load_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024,
        description="Load earlier than load_interval_s once the spool holds this many bytes; also the most "
        "Parquet bytes one load job takes.",
    )
    direct_load: bool = Field(
        default=True,
        description="Batch mode: load a group of fresh inserts (no id of it in the table yet) straight into the "
        "table, skipping the staging table and the MERGE; false always MERGEs.",
    )
    upload_in_process: bool = Field(
        default=True,
        description="Batch mode: run the loader inside the sink (`pulse run`); false when a separate "
        "`pulse upload` worker drains the spool.",
    )
    merge_interval_s: float = Field(
        default=10.0, ge=0.2,
        description="Stream mode: seconds between MERGEs of the changelog table into the table.",
    )
    changelog_retention_days: int = Field(
        default=7, ge=1, description="Stream mode: days the changelog table's partitions are kept."
    )
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="Deadline of one BigQuery request or job wait, retries included."
    )
    max_row_bytes: int | None = Field(
        default=None, ge=1024,
        description="Largest raw_payload written as is; a larger event is written with its raw_payload replaced "
        "by a marker and the problem payload_too_large, its full form kept in the dead-letter store "
        "(`pulse dlq --sink bigquery`). Unset: 9 MiB in stream mode (a Storage Write request carries at most "
        "10 MB), 99 MiB in batch mode (a load job's row is at most 100 MB).",
    )


class ExternalConfig(_Section):
    """The external HTTP system (docs/sinks/external.md).

    Every event goes through a durable outbox in Pulse's schema first (the
    slot never waits on the endpoint); delivery threads POST it from there.
    """

    url: str | None = Field(default=None, description="Endpoint events are POSTed to (PULSE_EXTERNAL_URL).")
    secret: SecretStr | None = Field(
        default=None, description="Standard Webhooks secret, whsec_<base64> (PULSE_EXTERNAL_SECRET)."
    )
    mode: Literal["cloudevents-batch", "single", "json-array"] = Field(
        default="cloudevents-batch",
        description="Body shape: a JSON array of CloudEvents (application/cloudevents-batch+json), one "
        "structured CloudEvent per request (application/cloudevents+json), or a plain JSON array of the "
        "enriched events (application/json).",
    )
    source: str = Field(default="/pulse/engagement_events", description="The CloudEvents `source` attribute.")
    batch_max_events: int = Field(default=500, ge=1, le=100_000, description="Most events in one request.")
    batch_max_bytes: int = Field(
        default=1_000_000, ge=1024, description="A request body stops growing past this many bytes (one event "
        "larger than this is still sent, alone)."
    )
    batch_max_age_s: float = Field(
        default=0.05, ge=0, description="Seconds a partly filled batch waits for more events before it is sent."
    )
    concurrency: int = Field(
        default=4, ge=1, le=256, description="Delivery lanes: content ids are hashed onto lanes; each lane sends "
        "one request at a time, in source order, so order per content id holds."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout_s: float = Field(default=15.0, gt=0, description="Seconds to wait for the response (and to "
                                  "send the body).")
    http2: bool = Field(default=False, description="Offer HTTP/2 (h2 via ALPN on https; plain http stays 1.1).")
    retry_initial_s: float = Field(default=0.5, gt=0, description="Backoff cap of the first retry; doubles per "
                                   "attempt (full jitter: the wait is uniform in [0, cap]).")
    retry_max_s: float = Field(default=60.0, gt=0, description="Largest backoff cap between two attempts.")
    retry_after_max_s: float = Field(
        default=600.0, gt=0, description="Longest Retry-After (429 / 503) honoured; longer values are clipped."
    )
    max_attempts: int = Field(
        default=50, ge=1, description="Attempts of one batch before its events go to the dead-letter store "
        "(failed probes of an open circuit do not count)."
    )
    max_age_s: float = Field(
        default=86_400.0, gt=0, description="Seconds an event may wait in the outbox before it goes to the "
        "dead-letter store with the last error."
    )
    breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive failed requests that open the circuit (all lanes pause)."
    )
    breaker_open_s: float = Field(
        default=5.0, gt=0, description="Seconds the circuit stays open before one probe request; doubles "
        "after each failed probe."
    )
    breaker_open_max_s: float = Field(default=60.0, gt=0, description="Longest open period between probes.")
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="Delivery lanes re-read the outbox at least this often (new events wake "
        "them at once; this is the backstop)."
    )
    user_agent: str = Field(default="pulse-external-sink", description="User-Agent header of every request.")

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must look like whsec_<base64>")
        return value


class RuntimeConfig(_Section):
    """The in-process pipeline (`pulse run`)."""

    sinks: list[str] = Field(default_factory=lambda: ["memory"], description="Sinks to run, by name.")
    queue_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024 * 1024, description="Bytes each sink's queue may hold before backpressure."
    )
    queue_max_events: int = Field(default=200_000, ge=100, description="Events each sink's queue may hold.")
    batch_max_events: int = Field(default=5_000, ge=1, description="Largest batch handed to a sink.")
    metrics_host: str = Field(default="127.0.0.1", description="Address the Prometheus endpoint binds to.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus port; 0 disables the endpoint.")
    shutdown_timeout_s: float = Field(default=30.0, gt=0, description="Seconds SIGTERM waits for sinks to drain.")


class TestSinksConfig(_Section):
    """Test doubles that `pulse run` can use (crash and recovery tests)."""

    pgtable_url: SecretStr | None = Field(
        default=None, description="Database of the `pgtable` sink (rows + position in one transaction)."
    )
    pgtable_table: str = Field(default="pulse_sink_events", description="Table of the `pgtable` sink.")


class LogConfig(_Section):
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
                return tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {self.path} does not exist", hint="fix --config / PULSE_CONFIG") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {self.path} is not valid TOML: {exc}", hint="fix the file") from exc


class Settings(BaseSettings):
    """All of Pulse's configuration."""

    model_config = SettingsConfigDict(env_prefix="PULSE_", env_nested_delimiter="__", extra="forbid")

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    bigquery: BigQueryConfig = Field(default_factory=BigQueryConfig)
    external: ExternalConfig = Field(default_factory=ExternalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    testsinks: TestSinksConfig = Field(default_factory=TestSinksConfig)
    log: LogConfig = Field(default_factory=LogConfig)

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
            env_settings,
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
        # pydantic-settings merges nested dicts from each source; init kwargs win.
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            env = _env_name_for(key)
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


def _env_name_for(dotted: str) -> str:
    parts = tuple(dotted.split(".")[:2])
    for env, path in CONTRACT_ENV.items():
        if path == parts:
            return env
    return "PULSE_" + "__".join(p.upper() for p in dotted.split("."))


__all__ = [
    "BigQueryConfig",
    "CONTRACT_ENV",
    "DatabaseConfig",
    "ExternalConfig",
    "KafkaConfig",
    "LogConfig",
    "RedisConfig",
    "RuntimeConfig",
    "Settings",
    "load_settings",
    "redact_url",
]
