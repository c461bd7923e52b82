#!/usr/bin/env bash
# The apache/kafka image's configuration contract, for what docker-compose.yml uses: each KAFKA_X_Y
# variable is the broker property x.y (except the JVM's KAFKA_*_OPTS), CLUSTER_ID formats the log
# directory on the first start, then kafka.Kafka runs in the foreground.
set -euo pipefail
props=/opt/kafka/config/server.properties
: >"$props"
while IFS='=' read -r var value; do
    case "$var" in
        KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_LOG4J_OPTS) ;;
        KAFKA_*)
            key=${var#KAFKA_}
            key=${key,,}
            printf '%s=%s\n' "${key//_/.}" "$value" >>"$props" ;;
    esac
done < <(env)
: "${CLUSTER_ID:?CLUSTER_ID is not set}"
logdir=$(sed -n 's/^log\.dirs=//p' "$props")
logdir=${logdir:-/var/lib/kafka/data}
cp=(-cp '/opt/kafka/libs/*')
if [ ! -f "$logdir/meta.properties" ]; then
    java -Xmx256m "${cp[@]}" -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.properties \
        kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$props"
fi
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xmx1g} -XX:+UseG1GC -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
    "${cp[@]}" kafka.Kafka "$props"
