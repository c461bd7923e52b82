"""The external sink's settings (`[external]`, `PULSE_EXTERNAL__*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from pulse.config_base import Section


class ExternalConfig(Section):
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


__all__ = ["ExternalConfig"]
