#!/usr/bin/env bash
# One-shot (compose service `kafka-init`): create Pulse's topics, idempotently.
#
#   pulse.engagement.enriched  PARTITIONS partitions, keyed by content_id (order per content id),
#                              time-based retention (7 days): consumers replay from here after a crash.
#   pulse.content              the same partition count (co-partitioned with the events: same key, same
#                              partitioner), cleanup.policy=compact: the latest row of every content id
#                              is kept forever, so a new consumer can rebuild its content view.
#
# Re-running it changes nothing; partitions can only be increased (see docs/deploy.md before doing so).
set -euo pipefail

BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
PARTITIONS="${PARTITIONS:-6}"
RF="${REPLICATION_FACTOR:-1}"
EVENTS_TOPIC="${EVENTS_TOPIC:-pulse.engagement.enriched}"
CONTENT_TOPIC="${CONTENT_TOPIC:-pulse.content}"
TOPICS=/opt/kafka/bin/kafka-topics.sh
# A managed Kafka: point COMMAND_CONFIG at a client .properties file (security.protocol, sasl.*, ssl.*).
EXTRA=()
if [[ -n "${COMMAND_CONFIG:-}" ]]; then EXTRA=(--command-config "$COMMAND_CONFIG"); fi

for _ in $(seq 1 60); do
  if "$TOPICS" --bootstrap-server "$BOOTSTRAP" "${EXTRA[@]}" --list >/dev/null 2>&1; then break; fi
  sleep 2
done

"$TOPICS" --bootstrap-server "$BOOTSTRAP" "${EXTRA[@]}" --create --if-not-exists --topic "$EVENTS_TOPIC" \
  --partitions "$PARTITIONS" --replication-factor "$RF" \
  --config retention.ms=604800000 --config min.insync.replicas="${MIN_ISR:-1}"

"$TOPICS" --bootstrap-server "$BOOTSTRAP" "${EXTRA[@]}" --create --if-not-exists --topic "$CONTENT_TOPIC" \
  --partitions "$PARTITIONS" --replication-factor "$RF" \
  --config cleanup.policy=compact --config min.compaction.lag.ms=60000 --config min.insync.replicas="${MIN_ISR:-1}"

"$TOPICS" --bootstrap-server "$BOOTSTRAP" "${EXTRA[@]}" --describe --topic "$EVENTS_TOPIC"
"$TOPICS" --bootstrap-server "$BOOTSTRAP" "${EXTRA[@]}" --describe --topic "$CONTENT_TOPIC"
