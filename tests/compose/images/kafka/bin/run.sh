#!/bin/bash
# The apache/kafka image's start-up contract: server.properties from the KAFKA_*
# environment (KAFKA_ stripped, lower-cased, "___" -> "-", "__" -> "_", "_" -> "."),
# the storage formatted with CLUSTER_ID on first start, the broker as PID 1.
set -Eeuo pipefail
props=/opt/kafka/config/server.properties
# variables of the start scripts, not broker settings (as in the official image)
not_settings='^KAFKA_(VERSION|HEAP_OPTS|LOG4J_OPTS|OPTS|JMX_OPTS|JVM_PERFORMANCE_OPTS|GC_LOG_OPTS|LOG4J_ROOT_LOGLEVEL|LOG4J_LOGGERS|TOOLS_LOG4J_LOGLEVEL)='
{
    echo "# written by run.sh from the KAFKA_* environment"
    env | grep -E '^KAFKA_[A-Z0-9_]+=' | grep -Ev "$not_settings" | sort |
        while IFS='=' read -r name value; do
            key="${name#KAFKA_}"
            key="${key,,}"
            key="${key//___/-}"
            key="${key//__/@}"
            key="${key//_/.}"
            printf '%s=%s\n' "${key//@/_}" "$value"
        done
    grep -q '^KAFKA_LOG_DIRS=' <(env) || echo "log.dirs=/var/lib/kafka/data"
} >"$props"

: "${CLUSTER_ID:?CLUSTER_ID must be set (as for the official image)}"
kafka-storage.sh format --cluster-id "$CLUSTER_ID" --config "$props" --ignore-formatted

exec java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.xml \
    -cp '/opt/kafka/libs/*' kafka.Kafka "$props"
