"""Kafka's settings (`[kafka]`, `PULSE_KAFKA__*`): the bus and its topics."""

from __future__ import annotations


from pydantic import Field

from pulse.config_base import Section


class KafkaConfig(Section):
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


__all__ = ["KafkaConfig"]
