#!/bin/bash
# Writes server.properties from single-node defaults plus every KAFKA_* variable, as the official apache/kafka image
# does (KAFKA_FOO_BAR -> foo.bar, ___ -> -, __ -> _; the last occurrence of a key wins), formats the storage on first
# start (CLUSTER_ID, fixed by default) and runs the broker as the one process of the container.
set -euo pipefail
config=/opt/kafka/config/server.properties
{
  echo "process.roles=broker,controller"
  echo "node.id=1"
  echo "listeners=PLAINTEXT://:9092,CONTROLLER://:9093"
  echo "advertised.listeners=PLAINTEXT://localhost:9092"
  echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  echo "controller.listener.names=CONTROLLER"
  echo "controller.quorum.voters=1@localhost:9093"
  echo "inter.broker.listener.name=PLAINTEXT"
  echo "offsets.topic.replication.factor=1"
  echo "transaction.state.log.replication.factor=1"
  echo "transaction.state.log.min.isr=1"
  echo "share.coordinator.state.topic.replication.factor=1"
  echo "log.dirs=/var/lib/kafka/data"
  while IFS='=' read -r name value; do
    case "$name" in
      KAFKA_HEAP_OPTS | KAFKA_OPTS) ;;
      KAFKA_*)
        key=${name#KAFKA_}
        key=${key,,}
        key=${key//___/-}
        key=${key//__/%}
        key=${key//_/.}
        echo "${key//%/_}=$value"
        ;;
    esac
  done < <(env)
} > "$config"
log_dirs=$(sed -n 's/^log\.dirs=//p' "$config" | tail -n 1)
classpath="/opt/kafka/libs/*"
if [ ! -e "${log_dirs%%,*}/meta.properties" ]; then
  java -cp "$classpath" kafka.tools.StorageTool format -t "${CLUSTER_ID:-ZXZlbnRwaXBlLWRldnN0YQ}" -c "$config"
fi
# shellcheck disable=SC2086 # KAFKA_HEAP_OPTS and KAFKA_OPTS are word lists
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} -XX:+UseG1GC ${KAFKA_OPTS:-} \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp "$classpath" kafka.Kafka "$config"
