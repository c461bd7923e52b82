"""The Redis sink's settings (`[redis]`, `PULSE_REDIS__*`)."""

from __future__ import annotations


from pydantic import Field, SecretStr, field_validator

from pulse.config_base import Section, redact_url


class RedisConfig(Section):
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


__all__ = ["RedisConfig"]
