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
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pulse.errors import ConfigError
from pulse.log import redact_text

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


def url_has_password(url: str) -> bool:
    """True when `url` carries a password: in its authority (even unencoded) or as a (ssl)password= parameter."""
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^@/?#]*(?::[^@]*)?)@", url)
    if m and ":" in m.group(1):
        return True
    return re.search(r"(?:^|[?&\s])(?:ssl)?password=", url, flags=re.IGNORECASE) is not None


def redact_url(url: str) -> str:
    """Return `url` with any password (in the authority or a `password=` parameter) replaced by `***`.

    Textual (pulse.log.redact_text), not parsed: a password holding an
    unencoded '/', '#' or '@' is hidden whole.
    """
    try:
        urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    return redact_text(url)


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
        description="A bucket starting more than this many seconds after the sink's clock is held "
        "(counted in the `future` stat) and enters the board when the clock reaches it; within it, it counts now.",
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
    group: str | None = Field(
        default=None,
        description="Consumer group of one `pulse consume` worker (its --group); unset: <group_prefix>-<sink>. "
        "Set it per worker, never for all of them: each sink needs its own group.",
    )
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

    def group_for(self, sink: str) -> str:
        """The consumer group of `pulse consume --sink sink`: `group` (--group), else <group_prefix>-<sink>."""
        return self.group or f"{self.group_prefix}-{sink}"


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
    spool_dir: Path | None = Field(
        default=None,
        description="Folder of Parquet files awaiting load. Unset: bigquery_batches/<project>.<dataset>.<table>/"
        "<slot> under the working directory for `pulse run`, .../<consumer group>/<topic>_<partition> for "
        "`pulse consume`, so two pipelines never share one. The folder records its owner (owner.json) and "
        "refuses to open for another table, slot, topic or group.",
    )
    write_linger_s: float = Field(
        default=1.0, ge=0, le=60,
        description="Batch mode, `pulse run`: seconds the sink gathers events (up to runtime.batch_max_events) "
        "into one spool file before writing it. A file per transaction under a trickle of small transactions "
        "made tens of thousands of files that every load had to combine; rows are loaded every "
        "load_interval_s anyway. 0: a file per write.",
    )
    load_interval_s: float = Field(
        default=60.0, ge=0.2, description="Seconds between load jobs (BigQuery allows 1,500 per table per day; "
        "load_jobs_per_day paces them further when they go faster)."
    )
    backfill_load_interval_s: float = Field(
        default=0.5, ge=0.2,
        description="While a backfill is being spooled (and for 30 s after its last chunk), seconds between "
        "load jobs instead of load_interval_s, so that a backfill does not wait a minute per load. Each load "
        "takes everything spooled, so a long backfill makes about one load job per load job's duration "
        "(never beyond load_jobs_per_day).",
    )
    load_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024,
        description="Load earlier than load_interval_s once the spool holds this many bytes; also the most "
        "Parquet bytes one load job takes, and the memory in which the process keeps the tables it just "
        "spooled for the loader (one budget for every BigQuery sink of the process: `pulse consume` has one "
        "per partition).",
    )
    load_max_files: int = Field(
        default=5_000, ge=1,
        description="Most spool files one load job takes. Each file is read and combined into the upload: "
        "an unbounded group of tiny files took minutes to combine, long enough for a restart to lose the "
        "work and start over (the chaos soak's loader never caught up).",
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
    maximum_bytes_billed: int | None = Field(
        default=1024**4, ge=100 * 1024**2,
        description="Every query job Pulse runs carries this maximumBytesBilled (bytes): BigQuery refuses to "
        "run a query that would bill more, and Pulse stops with an error naming the query (the spool keeps "
        "the rows). Default 1 TiB; unset: no limit. Load jobs bill no bytes (docs/sinks/bigquery.md, "
        "\"Cost model\").",
    )
    load_jobs_per_day: int = Field(
        default=1400, ge=1,
        description="Batch mode: most jobs that write the table (direct loads and MERGEs) in any 24 hours, paced "
        "by the state table. The loader may spend a fifth of it at once, the rest evenly over the day "
        "(widening the interval between loads), and never more (BigQuery allows 1,500 table operations "
        "per table per day).",
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

    Every event goes through a durable outbox first (the slot never waits on
    the endpoint): by default append-only segment files on this machine
    (`outbox = "local"`), never the source database; delivery lanes POST it
    from there.
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
        default=0.02, ge=0, description="Seconds a partly filled batch waits for more events before it is sent."
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
    outbox: Literal["auto", "local", "postgres", "kafka"] = Field(
        default="auto",
        description="Where events wait for delivery. auto: `local` under `pulse run`, `kafka` under `pulse consume`. "
                    "local: append-only segment files in outbox_dir (fsync'd per batch; nothing is written to the "
                    "source database). postgres: tables in Pulse's state schema (an INSERT and a DELETE per event "
                    "in the source database, and a ledger row of id ranges updated per delivery request; for "
                    "deployments that want no local state). kafka: no second outbox, "
                    "the topic is the log (offsets are committed only for acknowledged events). "
                    "`pulse verify --sink external` reads this to find the sink's books (with auto it needs the "
                    "local outbox folder).")
    outbox_dir: Path | None = Field(
        default=None,
        description="Folder of the local outbox. Unset: external_outbox/<slot>/<sink name> under the working "
                    "directory. Must survive restarts (a volume in a container).")
    outbox_max_bytes: int = Field(
        default=10 * 1024 ** 3, ge=1024 * 1024,
        description="Disk the local outbox may use (segments not yet delivered). What happens when it is full: "
                    "outbox_full.")
    outbox_full: Literal["pause", "dead-letter"] = Field(
        default="pause",
        description="When the local outbox is full: pause (stop taking events: the slot is held and WAL is "
                    "retained on the source until the endpoint drains the outbox) or dead-letter (new events go "
                    "to the dead-letter store, one insert each in Pulse's schema, replayable with `pulse dlq "
                    "replay`; the slot advances).")
    outbox_segment_bytes: int = Field(
        default=64 * 1024 * 1024, ge=64 * 1024,
        description="Size at which the local outbox starts a new segment file; a segment is deleted once "
                    "every event in it is delivered or dead-lettered.")
    inflight_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024 * 1024,
        description="Bytes of events read from the outbox (or, with outbox = kafka, taken from the topic) that "
                    "the delivery lanes may hold in memory.")
    compression: Literal["auto", "gzip", "none"] = Field(
        default="auto",
        description="Request body compression. auto: gzip once the endpoint says it accepts it (an "
                    "Accept-Encoding response header naming gzip, RFC 7694), back to none after a 415; gzip: "
                    "always; none: never.")
    snapshot: bool = Field(
        default=True,
        description="Send the rows copied by the initial snapshot (snapshot.mode = initial) to the endpoint too; "
                    "false: the endpoint gets only changes committed after the slot was created.")

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must look like whsec_<base64>")
        return value


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


class JsonlConfig(_Section):
    """The JSON-lines file sink (`--sink jsonl`; docs/writing-a-sink.md)."""

    path: str | None = Field(default=None, description="Folder of the segment files (one JSON line per event); "
                                                        "setting it enables the sink when no sink is named.")
    segment_bytes: int = Field(default=256 * 1024 * 1024, ge=1024,
                               description="A new segment file starts once the current one holds this many bytes.")


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
    "KafkaConfig",
    "LogConfig",
    "RedisConfig",
    "RuntimeConfig",
    "Settings",
    "load_settings",
    "redact_url",
]
